"""Test doubles of the Kubernetes API and a strict validator against the kserve / kubernetes SDK models."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import kserve.models as kserve_models
import kubernetes.client.models as k8s_models
from kubernetes.client.exceptions import ApiException


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


# -- a test double of kubernetes.client.CustomObjectsApi ---------------------------------------------
def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 (independent of the code under test)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(copy.deepcopy(target)) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


class FakeCustomObjectsApi:
    """In-memory stand-in for ``CustomObjectsApi``: stores objects, applies merge patches like the API
    server (resourceVersion precondition -> 409, status subresource separate from the main resource,
    404 for unknown objects) and records every call in ``calls``."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, str, str, dict[str, Any] | None]] = []  # (verb, plural, name, body)
        self._rv = 100
        self.fail_next: dict[str, ApiException] = {}  # verb -> error raised once

    def add(self, group: str, namespace: str, plural: str, obj: dict[str, Any]) -> None:
        obj = copy.deepcopy(obj)
        obj.setdefault("metadata", {})
        obj["metadata"]["resourceVersion"] = self._bump()
        obj["metadata"].setdefault("generation", 1)
        self.objects[(group, namespace, plural, obj["metadata"]["name"])] = obj

    def _bump(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _find(self, group: str, namespace: str, plural: str, name: str) -> dict[str, Any]:
        try:
            return self.objects[(group, namespace, plural, name)]
        except KeyError:
            raise ApiException(status=404, reason="Not Found") from None

    def _maybe_fail(self, verb: str) -> None:
        if verb in self.fail_next:
            raise self.fail_next.pop(verb)

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):  # noqa: ANN001, ANN201
        self.calls.append(("get", plural, name, None))
        self._maybe_fail("get")
        return copy.deepcopy(self._find(group, namespace, plural, name))

    def list_namespaced_custom_object(self, group, version, namespace, plural):  # noqa: ANN001, ANN201
        self.calls.append(("list", plural, namespace, None))
        return {"items": [copy.deepcopy(o) for (g, ns, p, _), o in sorted(self.objects.items())
                          if (g, ns, p) == (group, namespace, plural)]}

    def list_cluster_custom_object(self, group, version, plural):  # noqa: ANN001, ANN201
        self.calls.append(("list", plural, "*", None))
        return {"items": [copy.deepcopy(o) for (g, _, p, _), o in sorted(self.objects.items())
                          if (g, p) == (group, plural)]}

    def _patch(self, verb: str, group: str, namespace: str, plural: str, name: str, body: dict[str, Any],
               subresource: str | None) -> dict[str, Any]:
        json.dumps(body)  # what the client would send must be JSON
        self.calls.append((verb, plural, name, copy.deepcopy(body)))
        self._maybe_fail(verb)
        obj = self._find(group, namespace, plural, name)
        want_rv = (body.get("metadata") or {}).get("resourceVersion")
        if want_rv is not None and want_rv != obj["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        if subresource == "status":  # only .status changes through the status subresource
            new = dict(obj)
            new["status"] = merge_patch(obj.get("status") or {}, body.get("status") or {})
        else:  # the main resource ignores .status; metadata and spec merge
            new = merge_patch(obj, {k: v for k, v in body.items() if k != "status"})
            if (body.get("spec") is not None) and new.get("spec") != obj.get("spec"):
                new["metadata"]["generation"] = obj["metadata"].get("generation", 1) + 1
        new["metadata"] = dict(new["metadata"])
        new["metadata"]["resourceVersion"] = self._bump()
        self.objects[(group, namespace, plural, name)] = new
        return copy.deepcopy(new)

    def patch_namespaced_custom_object(self, group, version, namespace, plural, name, body):  # noqa: ANN001, ANN201
        return self._patch("patch", group, namespace, plural, name, body, None)

    def patch_namespaced_custom_object_status(self, group, version, namespace, plural, name, body):  # noqa: ANN001, ANN201
        return self._patch("patch_status", group, namespace, plural, name, body, "status")

    def patches(self, plural: str, verb: str = "patch") -> list[dict[str, Any]]:
        return [b for v, p, _, b in self.calls if v == verb and p == plural and b is not None]
