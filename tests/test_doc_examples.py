"""The runnable examples in the docstrings of the entry points people call first really run and hold."""

from __future__ import annotations

import doctest
import os
from types import ModuleType

import pytest

import tideline.config
import tideline.data
import tideline.evaluation
import tideline.features
import tideline.monitoring.skew
import tideline.policy
import tideline.registry.core

MODULES = [
    tideline.config,
    tideline.data,
    tideline.evaluation,
    tideline.features,
    tideline.monitoring.skew,
    tideline.policy,
    tideline.registry.core,
]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_docstring_examples_run(module: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    # the examples show the defaults: no settings file, no TIDELINE_* variables, no signing key
    for key in [k for k in os.environ if k.startswith("TIDELINE_")]:
        monkeypatch.delenv(key)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{module.__name__} has no docstring examples"
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples of {module.__name__} failed"
