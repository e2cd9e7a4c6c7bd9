"""A test double of the Kubernetes API server for custom objects (no API server can run here).

Used by the tests (``tests/kube_doubles.py`` re-exports it) and by the crash drills of the rollout
reconciler on its cluster status store (``reliability.controller``, ModelRollout status subresource).
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.exceptions import ApiException


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


class LostAnswer(ConnectionError):
    """The request reached the API server (and was applied), its answer did not reach the client."""


class FakeCustomObjectsApi:
    """In-memory stand-in for ``CustomObjectsApi`` that behaves like the API server where it matters:
    merge patches with a ``resourceVersion`` precondition (409 on a stale one), the status subresource
    apart from the main resource (each ignores the other's fields), ``metadata.generation`` bumped by spec
    changes only, 404 for unknown objects, 409 AlreadyExists on create, label selectors on list. Every call
    is recorded in ``calls``. Faults: ``fail_next[verb]`` raises an error once (nothing applied);
    ``lose_next[verb]`` applies the request and then raises ``LostAnswer`` (the answer never came)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, str, str, dict[str, Any] | None]] = []  # (verb, plural, name, body)
        self._rv = 100
        self.fail_next: dict[str, ApiException] = {}  # verb -> error raised once
        self.lose_next: set[str] = set()  # verbs whose next answer is lost after the change landed
        self.on_call: Any = None  # optional hook(verb, plural, name) run before each call (crash points)

    def _hook(self, verb: str, plural: str, name: str) -> None:
        if self.on_call is not None:
            self.on_call(verb, plural, name)

    def _answer(self, verb: str, obj: dict[str, Any]) -> dict[str, Any]:
        if verb in self.lose_next:
            self.lose_next.discard(verb)
            raise LostAnswer(f"{verb}: connection reset before the answer")
        return copy.deepcopy(obj)

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
        self._hook("get", plural, name)
        self.calls.append(("get", plural, name, None))
        self._maybe_fail("get")
        return copy.deepcopy(self._find(group, namespace, plural, name))

    def list_namespaced_custom_object(self, group, version, namespace, plural, label_selector=None):  # noqa: ANN001, ANN201
        self._hook("list", plural, namespace)
        self.calls.append(("list", plural, namespace, None))
        self._maybe_fail("list")
        want = dict(kv.split("=", 1) for kv in label_selector.split(",")) if label_selector else {}
        return {"items": [copy.deepcopy(o) for (g, ns, p, _), o in sorted(self.objects.items())
                          if (g, ns, p) == (group, namespace, plural)
                          and all((o["metadata"].get("labels") or {}).get(k) == v for k, v in want.items())]}

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):  # noqa: ANN001, ANN201
        self._hook("create", plural, (body.get("metadata") or {}).get("name", ""))
        json.dumps(body)
        self.calls.append(("create", plural, body["metadata"]["name"], copy.deepcopy(body)))
        self._maybe_fail("create")
        key = (group, namespace, plural, body["metadata"]["name"])
        if key in self.objects:
            raise ApiException(status=409, reason="AlreadyExists")
        obj = copy.deepcopy(body)
        obj.pop("status", None)  # a create never sets the status subresource
        obj["metadata"] = {**obj["metadata"], "namespace": namespace, "resourceVersion": self._bump(), "generation": 1,
                           "creationTimestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                           "uid": f"uid-{self._rv}"}
        self.objects[key] = obj
        return self._answer("create", obj)

    def list_cluster_custom_object(self, group, version, plural):  # noqa: ANN001, ANN201
        self.calls.append(("list", plural, "*", None))
        return {"items": [copy.deepcopy(o) for (g, _, p, _), o in sorted(self.objects.items())
                          if (g, p) == (group, plural)]}

    def _patch(self, verb: str, group: str, namespace: str, plural: str, name: str, body: dict[str, Any],
               subresource: str | None) -> dict[str, Any]:
        self._hook(verb, plural, name)
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
        return self._answer(verb, new)

    def patch_namespaced_custom_object(self, group, version, namespace, plural, name, body):  # noqa: ANN001, ANN201
        return self._patch("patch", group, namespace, plural, name, body, None)

    def patch_namespaced_custom_object_status(self, group, version, namespace, plural, name, body):  # noqa: ANN001, ANN201
        return self._patch("patch_status", group, namespace, plural, name, body, "status")

    def patches(self, plural: str, verb: str = "patch") -> list[dict[str, Any]]:
        return [b for v, p, _, b in self.calls if v == verb and p == plural and b is not None]
