"""Test doubles of the Kubernetes API and a strict validator against the kserve / kubernetes SDK models."""

from __future__ import annotations

import re
from typing import Any

import kserve.models as kserve_models
import kubernetes.client.models as k8s_models


# -- strict validation against the SDK's generated models ------------------------------------------
class SchemaViolation(AssertionError):
    pass


_PRIMITIVES = {
    "str": (str,), "int": (int,), "float": (int, float), "bool": (bool,),
    "datetime": (str,), "date": (str,), "ResourceQuantity": (str, int, float), "V1Time": (str,),
}


def _model(name: str) -> type:
    cls = getattr(kserve_models, name, None) or getattr(k8s_models, name, None)
    if cls is None or not hasattr(cls, "openapi_types"):
        raise SchemaViolation(f"no SDK model for type {name!r}")
    return cls


def validate(value: Any, type_name: str, path: str = "$", *, partial: bool = False) -> None:
    """Reject unknown fields, wrong types and missing required fields, recursively, using ``openapi_types``/``attribute_map``.

    ``partial``: a JSON merge patch (``None`` deletes a field, required fields may be absent). Items of a
    list are always complete objects (a merge patch replaces a list whole), so required fields are
    checked there: the generated constructors raise ValueError on a missing required field (and on
    values outside an enum they know).
    """
    if value is None:
        if partial:
            return
        raise SchemaViolation(f"{path}: null")
    m = re.fullmatch(r"list\[(.+)\]", type_name)
    if m:
        if not isinstance(value, list):
            raise SchemaViolation(f"{path}: expected a list for {type_name}, got {type(value).__name__}")
        for i, v in enumerate(value):
            validate(v, m.group(1), f"{path}[{i}]", partial=False)
        return
    m = re.fullmatch(r"dict\(str, (.+)\)", type_name)
    if m:
        if not isinstance(value, dict):
            raise SchemaViolation(f"{path}: expected a map for {type_name}")
        for k, v in value.items():
            if not isinstance(k, str):
                raise SchemaViolation(f"{path}: non-string key {k!r}")
            validate(v, m.group(1), f"{path}.{k}", partial=partial)
        return
    if type_name == "object":
        return
    if type_name in _PRIMITIVES:
        ok = isinstance(value, _PRIMITIVES[type_name])
        if ok and type_name in ("int", "float") and isinstance(value, bool):
            ok = False
        if not ok:
            raise SchemaViolation(f"{path}: expected {type_name}, got {type(value).__name__} {value!r}")
        return
    cls = _model(type_name)
    if not isinstance(value, dict):
        raise SchemaViolation(f"{path}: expected an object ({type_name}), got {type(value).__name__}")
    by_json = {j: a for a, j in cls.attribute_map.items()}
    for key, v in value.items():
        if key not in by_json:
            raise SchemaViolation(f"{path}: unknown field {key!r} in {type_name}")
        validate(v, cls.openapi_types[by_json[key]], f"{path}.{key}", partial=partial)
    if not partial:  # required fields: the generated constructor raises ValueError on a missing one
        try:
            cls(**{by_json[k]: v for k, v in value.items()})
        except ValueError as e:
            raise SchemaViolation(f"{path}: {type_name}: {e}") from e


def validate_isvc(obj: dict[str, Any], *, partial: bool = False) -> None:
    validate(obj, "V1beta1InferenceService", partial=partial)


# -- the test double of kubernetes.client.CustomObjectsApi lives with the crash drills that also use it ------
from reliability.kube import FakeCustomObjectsApi, LostAnswer, merge_patch  # noqa: E402,F401
