"""Model families behind one interface: fit / predict / save / load, safe on-disk formats only.

``make_model(family, seed=...)`` builds one, ``load_model(directory)`` reads any saved one back. The family
classes are imported lazily (``from tideline.models import XGBoostModel`` works) so that importing this
package does not import torch or the tree libraries.
"""

from __future__ import annotations

import importlib
from typing import Any

from tideline.models.base import (
    FAMILIES,
    FORMAT_VERSION,
    META_FILE,
    POLICY_FAMILIES,
    Dim,
    Market,
    Model,
    SpecLike,
    StoredSpec,
    default_params,
    load_model,
    make_model,
    model_class,
    output_kind,
    read_meta,
    search_space,
)

_LAZY = {
    "XGBoostModel": "tideline.models.trees",
    "LightGBMModel": "tideline.models.trees",
    "SklearnModel": "tideline.models.trees",
    "SKOPS_ALLOWED_TYPES": "tideline.models.trees",
    "SequenceModel": "tideline.models.sequence",
    "EnsembleModel": "tideline.models.ensemble",
    "RecalibratedModel": "tideline.models.recalibrated",
    "PolicyModel": "tideline.models.reinforcement",
}

__all__ = [
    "FAMILIES",
    "FORMAT_VERSION",
    "META_FILE",
    "POLICY_FAMILIES",
    "Dim",
    "Market",
    "Model",
    "SpecLike",
    "StoredSpec",
    "default_params",
    "load_model",
    "make_model",
    "model_class",
    "output_kind",
    "read_meta",
    "search_space",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tideline.models' has no attribute {name!r}")
