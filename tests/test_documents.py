"""tideline.documents: stored dataclasses get their JSON form and their load-time checks from pydantic."""

from __future__ import annotations

import doctest
import json

import pytest

import tideline.documents
from tideline.errors import RegistryError
from tideline.rollout import machine as m
from tideline.rollout.analysis import AnalysisResult, Check, Thresholds
from tideline.rollout.guard import WatchSpec
from tideline.rollout.status import RolloutDoc

SPEC = m.RolloutSpec(name="r", target="r", candidate="v2", baseline="v1", steps=(5, 50, 100),
                     thresholds=Thresholds(max_ks=0.3), watch=WatchSpec(duration_s=60))


def test_round_trips_are_exact_and_json() -> None:
    status = m.RolloutStatus.initial(SPEC)
    status.phase, status.analyses = m.Phase.CANARY, [{"verdict": "pass"}]
    result = AnalysisResult("fail", [Check("ks", float("nan"), 0.25, None, "too few")], ["why"], 3, 12.5)
    for doc in (SPEC, status, result, Thresholds()):
        d = doc.to_dict()
        assert json.loads(json.dumps(d, allow_nan=False)) == d  # plain JSON: no NaN, no tuples, no enums
        again = type(doc).from_dict(d)
        assert again == doc if doc is not result else again.checks[0].value is None and again.to_dict() == d
    assert SPEC.to_dict()["steps"] == [5, 50, 100] and status.to_dict()["phase"] == "Canary"
    assert result.to_dict()["checks"][0]["value"] is None  # NaN is stored as null


def test_a_stored_document_that_does_not_fit_is_refused_naming_the_field() -> None:
    d = SPEC.to_dict()
    with pytest.raises(ValueError, match=r"bad RolloutSpec: stepz: Unexpected keyword argument"):
        m.RolloutSpec.from_dict({**d, "stepz": [1]})
    with pytest.raises(ValueError, match=r"bad RolloutSpec: thresholds.max_ks: Input should be a valid number"):
        m.RolloutSpec.from_dict({**d, "thresholds": {"max_ks": "high"}})
    with pytest.raises(ValueError, match="already the baseline"):  # the class's own __post_init__ check
        m.RolloutSpec.from_dict({**d, "candidate": "v1"})
    with pytest.raises(ValueError, match="bad RolloutStatus: phase"):
        m.RolloutStatus.from_dict({"phase": "Sideways"})


def test_a_spec_stored_before_the_guard_keeps_meaning_no_watch() -> None:
    d = SPEC.to_dict()
    del d["watch"]
    assert m.RolloutSpec.from_dict(d).watch == WatchSpec(duration_s=0.0)


def test_a_corrupt_rollout_document_is_a_registry_error() -> None:
    doc = RolloutDoc(spec=SPEC, status=m.RolloutStatus.initial(SPEC))
    assert RolloutDoc.from_json(doc.to_json()).spec == SPEC
    bad = json.loads(doc.to_json())
    bad["status"]["weight"] = "lots"
    with pytest.raises(RegistryError, match="rollout document is corrupt: bad RolloutStatus: weight"):
        RolloutDoc.from_json(json.dumps(bad).encode())


def test_docstring_examples_run() -> None:
    result = doctest.testmod(tideline.documents)
    assert result.attempted > 0 and result.failed == 0
