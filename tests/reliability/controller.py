"""The rollout controller killed at every crash point of a rollout, and SIGKILLed at every phase, restarted.

Two drills, each ending with the same consistency checks:

* **Exhaustive, in-process.** The REAL ``RolloutController`` (its ``run`` loop, the real ``analyze`` on
  simulated traffic counters, the real ``Registry`` with ``RegistryOps``) runs a rollout over a fast
  in-memory store with compare-and-swap and a simulated serving world (two predictor slots, a router
  with canary weight and shadow mirror, traffic served whenever the fake clock moves). A "kill" is an
  exception deriving from ``BaseException`` (no ``except Exception`` in the controller can swallow it)
  raised at crash point k. The crash points are every write of the rollout document (just before it
  lands and just after it landed), every backend action (before/after: set_weight, set_shadow,
  deploy_canary, remove_canary, set_active, promote, retire, mark) and every registry move (before/
  after: promote, set_alias, set_status, rollback). A clean run counts the N points of a rollout kind;
  then for every k in 1..N a fresh world (registry with production v1 + candidate v2, serving v1) runs the
  rollout, dies at point k, the fake clock moves past the dead controller's lease and a NEW controller
  (another owner id) resumes from the stored document and runs to the end. Three kinds: a good candidate
  (shadow -> canary 10/25/50 -> promoted), a bad one (5xx once it takes >= 25% of the traffic: fails in
  canary, rolled back) and a manual rollback requested when the document reaches canary 25%.
* **Real SIGKILL.** A child process runs the controller on a ``file://`` registry, a serving world kept in
  a JSON file and a clock kept in a file (every interval also sleeps a little real time; every serving
  action takes 30 ms, like starting a process), and is SIGKILLed as soon as the document reaches a
  phase (Shadow, each canary weight, Promoting; RolledBack for a bad candidate) -- usually while that
  phase's actions are being applied. The clock is moved past the lease and a new child resumes.

While running, every action is checked against the PERSISTED document (the world must never run ahead
of it: weight > 0 only at <= the stored canary weight, shadow only in Shadow (of the baseline: only in
Watching), promote only once the document says Promoting (of the baseline: Reverted), retire only once it
says RolledBack or Reverted, the active slot serves the candidate only once it is production) and the world's own invariants (canary weight < 100, traffic only on deployed
models, production unchanged unless promoting). At the end: the terminal phase expected for the kind,
``applied_generation >= generation``, a valid status, the registry (promoted: production v2, previous v1,
v2 ACTIVE, v1 RETIRED, no candidate/shadow alias; rolled back: production still v1, v2 RETIRED, no
candidate/shadow alias, no promote/rollback in the history; reverted by the guard: production v1 again,
previous v2, v2 RETIRED), the serving world (active = production, weight 0, no canary, no shadow, no
leftover candidate process), exactly one promote event (two when reverted), each phase
entered exactly once in the document's events, analyses never duplicated, and the sequence of phases
the document went through exactly the expected one. A run with any failed check is ``lost``.

Run alone from ``bench/``: ``python -m reliability.controller [--quick]`` (JSON lines).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reliability.kube import FakeCustomObjectsApi
from tideline.clock import FakeClock
from tideline.errors import TidelineError
from tideline.monitoring.outcomes import LiveOutcomes, WatchOutcomes
from tideline.registry import Registry
from tideline.registry.signing import Signing
from tideline.rollout import machine as m
from tideline.rollout.analysis import MetricsSnapshot, SeriesMetrics, Thresholds, analyze
from tideline.rollout.backends import BackendError, RegistryOps
from tideline.rollout.controller import (
    RolloutController,
    RolloutDoc,
    create_rollout,
    load_rollout,
    request_action,
    rollout_key,
)
from tideline.rollout.cr import ACTION_ANNOTATION, GROUP, KIND, PLURAL, VERSION, CRStatusStore, doc_from_cr, spec_to_cr
from tideline.rollout.guard import WatchSpec
from tideline.store import FileStore, NotFound, PreconditionFailed

AREA = "Faults"
NAME = "tideline"
KINDS = ("good", "bad", "manual", "guard")
T0 = 1_700_000_000.0
INTERVAL = 30.0
LEASE = 3 * INTERVAL
REQ_PER_INTERVAL = 400
BAD_FROM_WEIGHT = 25
SPEC = m.RolloutSpec(name=NAME, target=NAME, candidate="v2", baseline="v1",
                     shadow=m.ShadowSpec(min_duration_s=INTERVAL, min_labelled=100, max_duration_s=3600),
                     steps=(10, 25, 50, 100), interval_s=INTERVAL,
                     thresholds=Thresholds(min_requests=20, min_labelled=100), failure_limit=2,
                     max_inconclusive=20, watch=WatchSpec(duration_s=0))
SPEC_GUARD = dataclasses.replace(SPEC, watch=WatchSpec(duration_s=5 * INTERVAL, min_accuracy=None, min_outcomes=50))
"""the guard's kind: promoted, watched with v1 in shadow, found worse on the same requests, reverted."""


def spec_for(kind: str) -> m.RolloutSpec:
    return SPEC_GUARD if kind == "guard" else SPEC


EXPECTED_PATH = {
    "good": ["Pending", "Shadow", "Canary 10", "Canary 25", "Canary 50", "Promoting", "Promoted"],
    "bad": ["Pending", "Shadow", "Canary 10", "Canary 25", "RolledBack"],
    "manual": ["Pending", "Shadow", "Canary 10", "Canary 25", "RolledBack"],
    "guard": ["Pending", "Shadow", "Canary 10", "Canary 25", "Canary 50", "Promoting", "Watching", "Reverted"],
}
# document events that must appear exactly once (each phase entered once, one terminal event)
EXPECTED_ONCE = {
    "good": ["shadowing v2", "canary at 10%", "now 25%", "now 50%", "promoting v2", "promoted v2"],
    "bad": ["shadowing v2", "canary at 10%", "now 25%", "rolled back: 2 consecutive failed analyses"],
    "manual": ["shadowing v2", "canary at 10%", "now 25%", "manual rollback requested",
               "rolled back: manual rollback"],
    "guard": ["shadowing v2", "canary at 10%", "now 25%", "now 50%", "promoting v2", "watching it",
              "reverted to v1: guard:"],
}
MAX_ITERATIONS = 60


class Kill(BaseException):
    """The controller process dies here (BaseException: no ``except Exception`` may swallow it)."""


# ---- an in-memory Store with the conditional writes the registry and the controller rely on ----------
class MemStore:
    uri = "mem://crash-harness"

    def __init__(self, data: dict[str, bytes] | None = None) -> None:
        self.data: dict[str, bytes] = dict(data or {})
        self.mtime: dict[str, float] = {k: time.time() for k in self.data}

    def copy(self) -> MemStore:
        return MemStore(self.data)

    def get(self, key: str) -> tuple[bytes, str]:
        try:
            d = self.data[key]
        except KeyError:
            raise NotFound(key) from None
        return d, hashlib.sha256(d).hexdigest()

    def put(self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str:
        if if_none_match and key in self.data:
            raise PreconditionFailed(key)
        if if_match is not None and (key not in self.data or self.get(key)[1] != if_match):
            raise PreconditionFailed(key)
        self.data[key] = bytes(data)
        self.mtime[key] = time.time()
        return hashlib.sha256(data).hexdigest()

    def list(self, prefix: str) -> list[str]:
        return sorted(k for k in self.data if k.startswith(prefix))

    def delete(self, key: str) -> None:
        self.data.pop(key, None)

    def exists(self, key: str) -> bool:
        return key in self.data

    def modified(self, key: str) -> float:
        if key not in self.data:
            raise NotFound(key)
        return self.mtime[key]

    def put_file(self, key: str, path: Path) -> None:
        self.put(key, Path(path).read_bytes())

    def get_file(self, key: str, path: Path) -> None:
        Path(path).write_bytes(self.get(key)[0])


# ---- crash points -------------------------------------------------------------------------------------
class Killer:
    """Counts crash points; raises Kill at point ``kill_at`` (1-based; None: never)."""

    def __init__(self, kill_at: int | None = None) -> None:
        self.kill_at = kill_at
        self.n = 0
        self.labels: list[str] = []
        self.killed_at: str | None = None

    def point(self, label: str) -> None:
        self.n += 1
        self.labels.append(label)
        if self.kill_at is not None and self.n == self.kill_at:
            self.killed_at = label
            raise Kill(f"killed at crash point {self.n}: {label}")


class Observer:
    """What the checks need to see during a run: the phases the document went through, violations."""

    def __init__(self, load: Callable[[], RolloutDoc], registry: Registry, serving: SimServing,
                 log_path: Path | None = None) -> None:
        self.load, self.registry, self.serving = load, registry, serving
        self.path: list[str] = []
        self.violations: list[str] = []
        self.log_path = log_path  # child mode: violations survive the process
        self.production_seen: set[str] = set()

    def violation(self, msg: str) -> None:
        self.violations.append(msg)
        if self.log_path is not None:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(msg) + "\n")

    def doc_written(self, data: bytes) -> None:
        self.status_written(json.loads(data)["status"])

    def status_written(self, st: dict[str, Any]) -> None:
        """A status landed (the document's, or a ModelRollout's status subresource: same phase/weight names)."""
        label = _label(st)
        if not self.path or self.path[-1] != label:
            self.path.append(label)

    def stored(self) -> m.RolloutStatus:
        return self.load().status

    def production(self) -> str | None:
        return self.registry.aliases().get("production")

    def justify(self, action: str, arg: Any = None) -> None:
        """An action must follow the PERSISTED document: the world never runs ahead of it."""
        st = self.stored()
        p = st.phase
        bad = None
        if action == "set_weight" and arg:
            if p != m.Phase.CANARY or arg > st.weight:
                bad = f"set_weight({arg}) while the stored document says {p.value} {st.weight}"
        elif action == "set_shadow" and arg is not None:
            if not ((p == m.Phase.SHADOW and arg == SPEC.candidate) or (p == m.Phase.WATCHING and arg == SPEC.baseline)):
                bad = f"set_shadow({arg}) while the stored document says {p.value}"
        elif action == "deploy_canary":
            if p not in (m.Phase.CANARY, m.Phase.PROMOTING, m.Phase.PROMOTED, m.Phase.REVERTED):
                bad = f"deploy_canary({arg}) while the stored document says {p.value}"
        elif action == "set_active" and arg == SPEC.candidate:
            if p not in (m.Phase.PROMOTING, m.Phase.PROMOTED) or self.production() != arg:
                bad = (f"set_active({arg}) while the stored document says {p.value}, "
                       f"production {self.production()}")
        elif action == "set_active" and arg == SPEC.baseline:
            if p != m.Phase.REVERTED or self.production() != arg:
                bad = (f"set_active({arg}) while the stored document says {p.value}, "
                       f"production {self.production()}")
        elif action == "promote":
            want = (m.Phase.PROMOTING, m.Phase.PROMOTED) if arg == SPEC.candidate else (m.Phase.REVERTED,)
            if p not in want:
                bad = f"promote({arg}) while the stored document says {p.value}"
        elif action == "retire":
            if p not in (m.Phase.ROLLED_BACK, m.Phase.REVERTED):
                bad = f"retire({arg}) while the stored document says {p.value}"
        elif action == "mark":
            want = {"SHADOW": m.Phase.SHADOW, "CANARY": m.Phase.CANARY}.get(arg)
            if p != want:
                bad = f"mark({arg}) while the stored document says {p.value}"
        if bad:
            self.violation("ahead of the document: " + bad)

    def check_world(self, after: str) -> None:
        prod = self.production()
        if prod is not None:
            self.production_seen.add(prod)
        for problem in self.serving.problems(prod):
            self.violation(f"after {after}: {problem}")


# ---- the serving world --------------------------------------------------------------------------------
def _series(requests: float, errors: float) -> SeriesMetrics:
    # every request answered in ~10 ms: Prometheus buckets are cumulative
    return SeriesMetrics(requests, errors, 0.0, {0.005: 0.0, 0.025: requests, float("inf"): requests},
                         requests, requests * 0.01)


class SimServing:
    """Two predictor slots (A, B) behind a router: ``active``, ``canary`` (+ weight), ``shadow``.

    Each process counts the requests it answered (per route) like a predictor's /metrics. With ``path``
    the state lives in a JSON file (written atomically), so it outlives a SIGKILLed controller;
    ``action_delay`` is real seconds each action takes (starting a predictor is not instant)."""

    def __init__(self, *, bad_version: str | None = None, path: Path | None = None,
                 action_delay: float = 0.0, before_action: Callable[[], None] | None = None) -> None:
        self.path, self.action_delay, self.before_action = path, action_delay, before_action
        self.st: dict[str, Any] = {
            "procs": {"A": {"version": "v1", "pid": 1, "counts": {}}, "B": None},
            "router": {"active": "A", "canary": None, "weight": 0, "shadow": None},
            "next_pid": 2, "bad_version": bad_version, "served": 0, "actions": 0,
        }
        if path is not None:
            if path.exists():
                self.st = json.loads(path.read_text())
            else:
                self._save()

    # persistence
    def _load(self) -> None:
        if self.path is not None:
            self.st = json.loads(self.path.read_text())

    def _save(self) -> None:
        if self.path is not None:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.st))
            os.replace(tmp, self.path)

    def _act(self, fn: Callable[[dict[str, Any]], None]) -> None:
        if self.before_action is not None:
            self.before_action()
        self._load()
        if self.action_delay:
            time.sleep(self.action_delay)
        fn(self.st)
        self.st["actions"] += 1
        self._save()

    # helpers
    def _slot_of(self, st: dict[str, Any], version: str) -> str | None:
        return next((s for s, p in st["procs"].items() if p is not None and p["version"] == version), None)

    def _free(self, st: dict[str, Any]) -> str:
        return "B" if st["router"]["active"] == "A" else "A"

    def _start(self, st: dict[str, Any], slot: str, version: str) -> None:
        st["procs"][slot] = {"version": version, "pid": st["next_pid"], "counts": {}}
        st["next_pid"] += 1

    # actions (idempotent, like LocalBackend's)
    def deploy_canary(self, version: str) -> None:
        def f(st: dict[str, Any]) -> None:
            slot = self._free(st)
            p = st["procs"][slot]
            if p is None or p["version"] != version:
                if st["router"]["canary"] == slot or st["router"]["shadow"] == slot:
                    st["router"].update(weight=0, canary=None, shadow=None)
                self._start(st, slot, version)
        self._act(f)

    def set_shadow(self, version: str | None) -> None:
        def f(st: dict[str, Any]) -> None:
            if version is None:
                st["router"]["shadow"] = None
                return
            slot = self._free(st)
            p = st["procs"][slot]
            if p is None or p["version"] != version:
                self._start(st, slot, version)
            st["router"]["shadow"] = slot
        self._act(f)

    def set_weight(self, percent: int) -> None:
        def f(st: dict[str, Any]) -> None:
            if percent == 0:
                st["router"]["weight"] = 0
                return
            slot = self._free(st)
            if st["procs"][slot] is None:
                raise BackendError(f"cannot send {percent}% to the canary: no ready candidate predictor")
            st["router"].update(canary=slot, weight=int(percent))
        self._act(f)

    def remove_canary(self) -> None:
        def f(st: dict[str, Any]) -> None:
            slot = self._free(st)
            r = st["router"]
            r.update(weight=0, canary=None)  # traffic off first, then the process
            if r["shadow"] == slot:
                r["shadow"] = None
            st["procs"][slot] = None
        self._act(f)

    def set_active(self, version: str) -> None:
        def f(st: dict[str, Any]) -> None:
            r = st["router"]
            slot = self._slot_of(st, version)
            if slot is None:
                slot = self._free(st)
                r.update(canary=None, weight=0, shadow=None)
                self._start(st, slot, version)
            r.update(active=slot, canary=None, weight=0, shadow=None)  # one atomic switch
            st["procs"]["B" if slot == "A" else "A"] = None  # then the old active stops
        self._act(f)

    # traffic
    def serve(self, seconds: float) -> None:
        self._load()
        st, r = self.st, self.st["router"]
        n = int(round(REQ_PER_INTERVAL * seconds / INTERVAL))
        canary = int(round(n * r["weight"] / 100)) if r["canary"] else 0

        def count(slot: str, route: str, k: int, errors: int = 0) -> None:
            c = st["procs"][slot]["counts"].setdefault(route, [0, 0])
            c[0] += k
            c[1] += errors

        if canary:
            p = st["procs"][r["canary"]]
            errs = canary // 5 if p["version"] == st["bad_version"] and r["weight"] >= BAD_FROM_WEIGHT else 0
            count(r["canary"], "canary", canary, errs)
        count(r["active"], "active", n - canary)
        if r["shadow"]:
            count(r["shadow"], "shadow", n - canary)
        st["served"] += n
        self._save()

    def metrics(self) -> MetricsSnapshot:
        self._load()
        snap = MetricsSnapshot()
        for p in self.st["procs"].values():
            if p is None:
                continue
            for route, (k, e) in p["counts"].items():
                snap = snap.merge(MetricsSnapshot({(p["version"], route): _series(k, e)}))
        return snap

    def candidate_up(self, version: str) -> bool | None:
        self._load()
        slot = self._free(self.st)
        p = self.st["procs"][slot]
        return True if p is not None and p["version"] == version else None

    def shadowing(self) -> bool:
        self._load()
        return self.st["router"]["shadow"] is not None

    # invariants
    def problems(self, production: str | None) -> list[str]:
        st, r = self.st, self.st["router"]
        out = []
        active = st["procs"].get(r["active"])
        if active is None:
            out.append("the active route points at no running predictor")
        elif active["version"] != production and {active["version"], production} != {SPEC.baseline,
                                                                                      SPEC.candidate}:
            # (between a registry move and the slot switch, promotion or revert, the two may differ)
            out.append(f"active serves {active['version']} but production is {production}")
        if not 0 <= r["weight"] < 100:
            out.append(f"canary weight {r['weight']}%")
        if r["weight"]:
            p = st["procs"].get(r["canary"]) if r["canary"] else None
            if p is None or p["version"] != SPEC.candidate:
                out.append(f"{r['weight']}% to a canary slot that serves {p and p['version']}")
        if r["shadow"] and st["procs"].get(r["shadow"]) is None:
            out.append("shadow mirrors to no running predictor")
        return out

    def summary(self) -> dict[str, Any]:
        self._load()
        r = self.st["router"]
        procs = {s: (p["version"] if p else None) for s, p in self.st["procs"].items()}
        return {"active": procs[r["active"]], "canary": procs[r["canary"]] if r["canary"] else None,
                "weight": r["weight"], "shadow": procs[r["shadow"]] if r["shadow"] else None,
                "running": sorted(v for v in procs.values() if v)}


# ---- wrappers: the crash points -----------------------------------------------------------------------
class CountingStore:
    """The controller's store: every write of the rollout document is two crash points."""

    def __init__(self, inner: Any, killer: Killer, obs: Observer) -> None:
        self.inner, self.killer, self.obs = inner, killer, obs
        self.uri = inner.uri

    def put(self, key: str, data: bytes, **kw: Any) -> str:
        if key != rollout_key(NAME):
            return self.inner.put(key, data, **kw)  # type: ignore[no-any-return]
        self.killer.point("before document write")
        etag = self.inner.put(key, data, **kw)
        self.obs.doc_written(data)
        self.killer.point("after document write")
        return etag  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class CountingKubeApi:
    """The cluster status store's API client: every write of the ModelRollout (its status, the removal of a
    consumed request) is two crash points; ``lose_at``: the answer of that ModelRollout write is lost after it
    landed (the client sees a dropped connection), instead of a kill."""

    def __init__(self, inner: FakeCustomObjectsApi, killer: Killer, obs: Observer, lose_at: int | None = None) -> None:
        self.inner, self.killer, self.obs, self.lose_at = inner, killer, obs, lose_at
        self.writes = 0

    def _write(self, what: str, verb: str, fn: Callable[[], Any]) -> Any:
        self.writes += 1
        if self.lose_at is not None and self.writes == self.lose_at:
            self.inner.lose_next.add(verb)
        self.killer.point(f"before {what}")
        try:
            out = fn()
        finally:  # a lost answer landed all the same
            if verb == "patch_status":
                self.obs.status_written(self.inner.objects[(GROUP, NS, PLURAL, NAME)].get("status") or {})
        self.killer.point(f"after {what}")
        return out

    def patch_namespaced_custom_object_status(self, group, version, namespace, plural, name, body):  # noqa: ANN001, ANN201
        return self._write("document write", "patch_status", lambda: self.inner.patch_namespaced_custom_object_status(
            group, version, namespace, plural, name, body))

    def patch_namespaced_custom_object(self, group, version, namespace, plural, name, body):  # noqa: ANN001, ANN201
        return self._write("request removal", "patch", lambda: self.inner.patch_namespaced_custom_object(
            group, version, namespace, plural, name, body))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


NS = "tideline"


class DocPlace:
    """Status store 1: the rollout document in the registry store (the embedded default)."""

    label = "the rollout document in the registry store"

    def __init__(self, store: MemStore, registry: Registry) -> None:
        self.store, self.registry = store, registry

    def create(self, spec: m.RolloutSpec, now: float) -> None:
        create_rollout(self.store, spec, now)

    def load(self) -> RolloutDoc:
        return load_rollout(self.store, NAME)[0]

    def request(self, action: str) -> None:
        request_action(self.store, NAME, action)

    def pending_request(self) -> str | None:
        return self.load().requested_action

    def status_store(self, killer: Killer, obs: Observer, lose_at: int | None = None) -> Any:
        return CountingStore(self.store, killer, obs)


class CRPlace:
    """Status store 2: a ModelRollout's status subresource, through an API double that behaves like the API
    server where it matters (resourceVersion -> 409 on a stale write, the status subresource, lost answers)."""

    label = "a ModelRollout's status subresource"

    def __init__(self, store: MemStore, registry: Registry) -> None:
        self.registry = registry
        self.api = FakeCustomObjectsApi()

    def _production(self) -> str | None:
        return self.registry.aliases().get("production")

    def create(self, spec: m.RolloutSpec, now: float) -> None:
        self.api.add(GROUP, NS, PLURAL, {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": {"name": NAME, "namespace": NS},
            # the registry the operator would open (this drill hands the reconciler the in-memory one)
            "spec": spec_to_cr(spec, registry="s3://tideline-models/registry", mode="Serverless",
                               metrics_source="pods")})
        if self.load().spec != spec:  # the CR carries the whole spec
            raise AssertionError(f"the ModelRollout spec does not round-trip: {self.load().spec} != {spec}")

    def load(self) -> RolloutDoc:
        return doc_from_cr(self.api.objects[(GROUP, NS, PLURAL, NAME)], self._production)

    def request(self, action: str) -> None:  # what `kubectl tideline rollback` does
        self.api.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, NAME,
                                                {"metadata": {"annotations": {ACTION_ANNOTATION: action}}})

    def pending_request(self) -> str | None:
        meta = self.api.objects[(GROUP, NS, PLURAL, NAME)]["metadata"]
        return (meta.get("annotations") or {}).get(ACTION_ANNOTATION)

    def status_store(self, killer: Killer, obs: Observer, lose_at: int | None = None) -> Any:
        return CRStatusStore(CountingKubeApi(self.api, killer, obs, lose_at), NS, NAME, baseline=self._production)


PLACES: dict[str, type[DocPlace] | type[CRPlace]] = {"document": DocPlace, "cr": CRPlace}


class CountingRegistry:
    """The registry as the backend sees it: every alias/status move is two crash points."""

    def __init__(self, inner: Registry, killer: Killer, obs: Observer) -> None:
        self.inner, self.killer, self.obs = inner, killer, obs

    def _move(self, what: str, fn: Callable[..., Any], *a: Any, **kw: Any) -> Any:
        self.killer.point(f"before registry {what}")
        out = fn(*a, **kw)
        prod = self.obs.production()
        if prod is not None:
            self.obs.production_seen.add(prod)
        self.killer.point(f"after registry {what}")
        return out

    def promote(self, *a: Any, **kw: Any) -> Any:
        return self._move("promote", self.inner.promote, *a, **kw)

    def set_alias(self, *a: Any, **kw: Any) -> Any:
        return self._move("set_alias", self.inner.set_alias, *a, **kw)

    def set_status(self, *a: Any, **kw: Any) -> Any:
        return self._move("set_status", self.inner.set_status, *a, **kw)

    def rollback(self, *a: Any, **kw: Any) -> Any:
        return self._move("rollback", self.inner.rollback, *a, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class SimBackend(RegistryOps):
    """``Backend`` over the simulated serving world; every action is two crash points and is checked
    against the persisted document."""

    def __init__(self, registry: Registry, serving: SimServing, killer: Killer, obs: Observer,
                 worse_in_watch: bool = False) -> None:
        super().__init__(CountingRegistry(registry, killer, obs))  # type: ignore[arg-type]
        self.serving, self.killer, self.obs = serving, killer, obs
        self.worse_in_watch = worse_in_watch

    def _do(self, what: str, arg: Any, fn: Callable[[], None]) -> None:
        self.killer.point(f"before {what}")
        self.obs.justify(what, arg)
        fn()
        self.obs.check_world(what)
        self.killer.point(f"after {what}")

    # traffic
    def set_weight(self, percent: int) -> None:
        self._do("set_weight", percent, lambda: self.serving.set_weight(percent))

    def set_shadow(self, version: str | None) -> None:
        self._do("set_shadow", version, lambda: self.serving.set_shadow(version))

    def deploy_canary(self, version: str) -> None:
        self._do("deploy_canary", version, lambda: self.serving.deploy_canary(version))

    def remove_canary(self) -> None:
        self._do("remove_canary", None, self.serving.remove_canary)

    def set_active(self, version: str) -> None:
        self._do("set_active", version, lambda: self.serving.set_active(version))

    # registry
    def promote(self, version: str, *, expected: str, reason: str) -> None:
        self._do("promote", version,
                 lambda: RegistryOps.promote(self, version, expected=expected, reason=reason))

    def retire(self, version: str, *, reason: str) -> None:
        self._do("retire", version, lambda: RegistryOps.retire(self, version, reason=reason))

    def mark(self, version: str, status: str) -> None:
        self._do("mark", status, lambda: RegistryOps.mark(self, version, status))

    # metrics (not crash points)
    def read_metrics(self) -> MetricsSnapshot:
        return self.serving.metrics()

    def candidate_up(self, version: str) -> bool | None:
        return self.serving.candidate_up(version)

    def read_outcomes(self, candidate: str, baseline: str) -> LiveOutcomes:
        # 200 labelled outcomes per side, the same directional accuracy (0.6) and error distribution
        hits = [1.0 if i % 5 < 3 else 0.0 for i in range(200)]
        errs = [((i * 37) % 101 - 50) / 1000 for i in range(200)]
        watch = None
        if self.worse_in_watch and self.registry.aliases().get("production") == candidate:
            # after the promotion: on the same 50 bars x 4 symbols, production 0.3 vs previous 0.7 accuracy
            watch = WatchOutcomes(times=[i // 4 for i in range(200)],
                                  production_hits=[1.0 if i % 10 < 3 else 0.0 for i in range(200)],
                                  previous_hits=[1.0 if i % 10 < 7 else 0.0 for i in range(200)])
        return LiveOutcomes(errs, errs, hits, hits, watch=watch)

    def read_paired_predictions(self, candidate: str) -> tuple[list[float], list[float]] | None:
        if not self.serving.shadowing():
            return None
        preds = [((i * 53) % 97 - 48) / 1000 for i in range(200)]
        return preds, [p + 0.0001 for p in preds]


# ---- the world of one run -----------------------------------------------------------------------------
def base_registry(work: Path, store: Any) -> Registry:
    """Production v1 (ACTIVE), candidate v2 (alias ``candidate``)."""
    reg = Registry(store, signing=Signing.off())
    art = work / "artifact"
    art.mkdir(parents=True, exist_ok=True)
    (art / "model.json").write_text('{"kind": "crash-harness"}')
    for _ in range(2):
        reg.register(art, {"family": "lightgbm"})
    reg.promote("v1", reason="start", actor="bench")
    reg.set_alias("candidate", "v2", reason="start", actor="bench")
    return reg


@dataclass
class Outcome:
    points: int
    killed_at: str | None
    problems: list[str] = field(default_factory=list)
    phase: str = ""
    labels: list[str] = field(default_factory=list)
    """the crash points the first controller went through, in order"""
    killed_again_at: str | None = None
    """where the restarted controller was killed too (``kill_again``)"""


def check_end(kind: str, load: Callable[[], RolloutDoc], reg: Registry, serving: SimServing, obs: Observer,
              base_events: int, *, check_path: bool = True, pending: Callable[[], str | None] | None = None) -> list[str]:
    """Every consistency check of a finished run; returns the problems (empty: consistent)."""
    out = list(obs.violations)
    doc = load()
    st = doc.status
    want = {"good": m.Phase.PROMOTED, "guard": m.Phase.REVERTED}.get(kind, m.Phase.ROLLED_BACK)
    if st.phase != want:
        out.append(f"ended {st.phase.value} ({st.message}), expected {want.value}")
    if doc.applied_generation < st.generation:
        out.append(f"applied_generation {doc.applied_generation} < generation {st.generation}")
    out += [f"status: {p}" for p in m.validate_status(spec_for(kind), st)]
    request = pending() if pending is not None else doc.requested_action
    if request:
        out.append(f"a manual {request} is still pending")
    aliases, statuses = reg.aliases(), {v: s.value for v, s in reg.statuses().items()}
    if want == m.Phase.PROMOTED:
        exp_alias, exp_status = {"production": "v2", "previous": "v1"}, {"v1": "RETIRED", "v2": "ACTIVE"}
    elif want == m.Phase.REVERTED:
        exp_alias, exp_status = {"production": "v1", "previous": "v2"}, {"v1": "ACTIVE", "v2": "RETIRED"}
    else:
        exp_alias, exp_status = {"production": "v1"}, {"v1": "ACTIVE", "v2": "RETIRED"}
    if aliases != exp_alias:
        out.append(f"registry aliases {aliases}, expected {exp_alias}")
    if statuses != exp_status:
        out.append(f"registry statuses {statuses}, expected {exp_status}")
    events = reg.history()[base_events:]
    promotes = [e for e in events if e.action == "promote"]
    rollbacks = [e for e in events if e.action == "rollback"]
    n_promote = {m.Phase.PROMOTED: 1, m.Phase.REVERTED: 2}.get(want, 0)
    if len(promotes) != n_promote or rollbacks:
        out.append(f"{len(promotes)} promote / {len(rollbacks)} rollback events in the registry history, "
                   f"expected {n_promote} / 0")
    if want == m.Phase.ROLLED_BACK and obs.production_seen - {"v1"}:
        out.append(f"production moved during a rolled-back rollout: {sorted(obs.production_seen)}")
    srv = serving.summary()
    exp_srv = {"active": exp_alias["production"], "canary": None, "weight": 0, "shadow": None,
               "running": [exp_alias["production"]]}
    if srv != exp_srv:
        out.append(f"serving {srv}, expected {exp_srv}")
    msgs = [e["msg"] for e in doc.events]
    for marker in EXPECTED_ONCE[kind]:
        n = sum(marker in msg for msg in msgs)
        if n != 1:
            out.append(f"event {marker!r} recorded {n} times")
    ats = [a["at"] for a in st.analyses]
    if any(b <= a for a, b in zip(ats, ats[1:], strict=False)):
        out.append(f"analyses duplicated or out of order: {ats}")
    if check_path and obs.path != EXPECTED_PATH[kind]:
        out.append(f"document went through {obs.path}, expected {EXPECTED_PATH[kind]}")
    return out


def run_one(kind: str, kill_at: int | None, base: MemStore,
            controller_cls: type[RolloutController] = RolloutController,
            kill_again: int | None = None, place: str = "document", lose_at: int | None = None) -> Outcome:
    """One rollout of ``kind`` from scratch, killed at crash point ``kill_at``, resumed by a new controller
    (which is itself killed at its crash point ``kill_again`` if given, and a third one resumes). ``place``
    is the status store (``document`` or ``cr``); ``lose_at`` loses the answer of that ModelRollout write."""
    store = base.copy()
    reg = Registry(store, signing=Signing.off())
    base_events = len(reg.history())
    serving = SimServing(bad_version=SPEC.candidate if kind == "bad" else None)
    where = PLACES[place](store, reg)
    obs = Observer(where.load, reg, serving)
    requested = [False]

    def tick(seconds: float) -> None:  # time passes: clients send traffic; the operator may act
        serving.serve(seconds)
        if kind == "manual" and not requested[0]:
            st = where.load().status
            if st.phase == m.Phase.CANARY and st.weight == 25:
                where.request("rollback")
                requested[0] = True

    clock = FakeClock(T0, on_sleep=tick)
    where.create(spec_for(kind), clock.now())
    killers = [Killer(kill_at), Killer(kill_again), Killer(None)]
    for i, killer in enumerate(killers):
        ctrl = controller_cls(NAME, SimBackend(reg, serving, killer, obs, kind == "guard"),
                              where.status_store(killer, obs, lose_at if i == 0 else None),
                              clock, analyze, owner=f"controller-{i + 1}")
        try:
            ctrl.run(max_iterations=MAX_ITERATIONS)
            break
        except Kill:
            clock.sleep(LEASE + 1)  # the dead controller's lease runs out
        except TidelineError as e:
            obs.violation(f"controller {i + 1} stopped: {type(e).__name__}: {e}")
            break
    problems = check_end(kind, where.load, reg, serving, obs, base_events, pending=where.pending_request)
    if kill_at is not None and killers[0].killed_at is None:
        problems.append(f"crash point {kill_at} was never reached ({killers[0].n} points)")
    phase = where.load().status.phase.value
    return Outcome(killers[0].n, killers[0].killed_at, problems, phase, list(killers[0].labels),
                   killers[1].killed_at)


@dataclass
class Tally:
    kind: str
    points: int = 0
    runs: int = 0
    kills: int = 0
    lost: int = 0
    double_kills: int = 0
    """runs whose restarted controller was killed too (a third one resumed)"""
    lost_answers: int = 0
    """runs (no kill) where the answer of one ModelRollout write was lost after it landed"""
    by_label: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def crash_sweep(kind: str, work: Path, *, quick: bool,
                controller_cls: type[RolloutController] = RolloutController, base: MemStore | None = None,
                double: bool = False, place: str = "document", lost_answers: bool = False) -> Tally:
    """Kill at every crash point of a ``kind`` rollout (quick: every 3rd one, plus the last). With ``double``
    every point is also tried a second time with the restarted controller killed too, at its 1st..6th
    crash point in turn (while it re-applies the dead one's unconfirmed actions); a third one resumes.
    ``place``: the status store. ``lost_answers`` (cr only): also one run per ModelRollout write whose answer
    is lost after it landed (no kill)."""
    if base is None:
        base = MemStore()
        base_registry(work, base)
    clean = run_one(kind, None, base, controller_cls, place=place)
    t = Tally(kind, points=clean.points)
    if clean.problems:
        t.problems.append(f"{kind}, no kill: " + "; ".join(clean.problems[:3]))
    ks = list(range(1, clean.points + 1))
    if quick:
        ks = sorted(set(ks[::3]) | {ks[-1]})
    runs = [(k, None) for k in ks] + ([(k, (k - 1) % 6 + 1) for k in ks] if double else [])
    for k, again in runs:
        o = run_one(kind, k, base, controller_cls, kill_again=again, place=place)
        t.runs += 1
        t.kills += 1
        if o.killed_again_at:
            t.kills += 1
            t.double_kills += 1
        if o.killed_at:
            label = o.killed_at.split(" ", 1)[1] if " " in o.killed_at else o.killed_at
            t.by_label[label] = t.by_label.get(label, 0) + 1
        if o.problems:
            t.lost += 1
            if len(t.problems) < 6:
                again_txt = f", again at {o.killed_again_at}" if o.killed_again_at else ""
                t.problems.append(f"{kind} k={k} ({o.killed_at}{again_txt}): " + "; ".join(o.problems[:3]))
    if lost_answers and place == "cr":
        writes = sum(1 for lab in clean.labels if lab in ("before document write", "before request removal"))
        for w in range(1, writes + 1):
            o = run_one(kind, None, base, controller_cls, place=place, lose_at=w)
            t.runs += 1
            t.lost_answers += 1
            if o.problems:
                t.lost += 1
                if len(t.problems) < 6:
                    t.problems.append(f"{kind}, answer of ModelRollout write {w} lost: " + "; ".join(o.problems[:3]))
    return t


# ---- real SIGKILL: the controller in a child process ---------------------------------------------------
class FileClock:
    """A fake clock kept in a file (shared by the successive controller processes of one run);
    ``sleep`` serves the interval's traffic, moves the time and sleeps ``real`` real seconds."""

    def __init__(self, path: Path, on_sleep: Callable[[float], None] | None = None,
                 real: float = 0.0) -> None:
        self.path, self.on_sleep, self.real = path, on_sleep, real
        if not path.exists():
            self.set(T0)

    def now(self) -> float:
        return float(self.path.read_text())

    def set(self, t: float) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(repr(float(t)))
        os.replace(tmp, self.path)

    def sleep(self, seconds: float) -> None:
        if self.on_sleep is not None:
            self.on_sleep(seconds)
        self.set(self.now() + seconds)
        if self.real:
            time.sleep(self.real)


PAUSE_ENV = "TIDELINE_DRILL_PAUSE_AT"


def _child(root: str, kind: str, owner: str) -> None:
    """The controller process of the real-SIGKILL drill (runs until the rollout ends or it is killed).
    With ``$TIDELINE_DRILL_PAUSE_AT`` (a label such as ``Canary 25``) it stops before its next action or
    interval once the document shows that label, so the parent's SIGKILL lands there however busy the
    machine is (a state lasts ~0.1 s otherwise: a descheduled parent could miss it)."""
    d = Path(root)
    store = FileStore(d / "reg")
    reg = Registry(store, signing=Signing.off())
    target = os.environ.get(PAUSE_ENV)
    doc_path = store.root / "rollouts" / f"{NAME}.json"

    def pause() -> None:
        with contextlib.suppress(OSError, ValueError):
            if target and _label(json.loads(doc_path.read_bytes())["status"]) == target:
                time.sleep(600)  # the parent kills this process here

    serving = SimServing(path=d / "serving.json", action_delay=0.03, before_action=pause)
    obs = Observer(lambda: load_rollout(store, NAME)[0], reg, serving, log_path=d / "violations.jsonl")
    clock = FileClock(d / "clock.txt", on_sleep=lambda s: (pause(), serving.serve(s)), real=0.04)
    backend = SimBackend(reg, serving, Killer(None), obs, kind == "guard")
    ctrl = RolloutController(NAME, backend, store, clock, analyze, owner=owner)
    ctrl.run(max_iterations=MAX_ITERATIONS)


def _spawn(root: Path, kind: str, owner: str, pause_at: str | None = None) -> subprocess.Popen[bytes]:
    tests_dir = Path(__file__).resolve().parents[1]  # on sys.path: import reliability.controller
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from reliability.controller import _child; "
            "_child(sys.argv[2], sys.argv[3], sys.argv[4])")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tests_dir)}
    env.pop(PAUSE_ENV, None)
    if pause_at:
        env[PAUSE_ENV] = pause_at
    logf = open(root / f"{owner}.log", "ab")  # noqa: SIM115 - closed by the caller via the process
    try:
        return subprocess.Popen([sys.executable, "-c", code, str(tests_dir), str(root), kind, owner], cwd=tests_dir,
                                env=env, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    finally:
        logf.close()


def _label(st: dict[str, Any]) -> str:
    return st["phase"] + (f" {st['weight']}" if st["phase"] == "Canary" else "")


def sigkill_one(kind: str, target: str, root: Path) -> tuple[list[str], str]:
    """Start the rollout in a child; SIGKILL it as soon as the document reaches ``target``; resume in a new
    child; check the end. Returns (problems, where the kill landed)."""
    root.mkdir(parents=True)
    store = FileStore(root / "reg")
    reg = base_registry(root, store)
    base_events = len(reg.history())
    serving = SimServing(bad_version=SPEC.candidate if kind == "bad" else None, path=root / "serving.json")
    clock = FileClock(root / "clock.txt")
    create_rollout(store, spec_for(kind), clock.now())
    doc_path = store.root / "rollouts" / f"{NAME}.json"
    problems: list[str] = []
    proc = _spawn(root, kind, "controller-1", pause_at=target)
    where = "never reached"
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                d = json.loads(doc_path.read_bytes())
                lab = _label(d["status"])
                if not seen or seen[-1] != lab:
                    seen.append(lab)
                if lab == target:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(10)
                    after = load_rollout(store, NAME)[0]
                    pending = after.applied_generation < after.status.generation
                    where = (f"{_label(after.status.to_dict())}, "
                             + ("its actions not yet confirmed" if pending else "its actions applied"))
                    break
                if d["status"]["phase"] in ("Promoted", "RolledBack", "Reverted", "Failed"):
                    break
            if proc.poll() is not None:
                break
            time.sleep(0.002)
        if proc.poll() is None or proc.returncode != -signal.SIGKILL:
            problems.append(f"the controller was not killed at {target} (saw {seen}, exit {proc.poll()})")
            return problems, where
        clock.set(clock.now() + LEASE + 1)  # the dead controller's lease runs out
        proc = _spawn(root, kind, "controller-2")
        try:
            rc = proc.wait(120)
        except subprocess.TimeoutExpired:
            rc = None
        if rc != 0:
            tail = (root / "controller-2.log").read_text(errors="replace").strip().splitlines()[-3:]
            problems.append(f"the resumed controller exited {rc}: {' | '.join(tail)}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    obs = Observer(lambda: load_rollout(store, NAME)[0], reg, serving)
    vpath = root / "violations.jsonl"
    if vpath.exists():
        obs.violations = [json.loads(x) for x in vpath.read_text().splitlines() if x.strip()]
    obs.production_seen = {e.version for e in reg.history()[base_events:]
                           if e.alias == "production" and e.version}
    obs.production_seen.add("v1")
    problems += check_end(kind, lambda: load_rollout(store, NAME)[0], reg, serving, obs, base_events,
                          check_path=False)
    return problems, where


# ---- scenarios ----------------------------------------------------------------------------------------
def _row(scenario: str, times: int, unit: str, result: str, lost: int, ok: bool, t0: float) -> dict[str, Any]:
    return {"area": AREA, "scenario": scenario, "times": int(times), "unit": unit, "result": result,
            "lost": int(lost), "ok": bool(ok and lost == 0), "seconds": round(time.monotonic() - t0, 1)}


def crash_points_row(quick: bool, work: Path, place: str = "document") -> dict[str, Any]:
    t0 = time.monotonic()
    base = MemStore()
    base_registry(work / "base", base)
    # every crash point even in the quick form (~200 runs take a few seconds); the full one adds double kills
    tallies = [crash_sweep(kind, work, quick=False, base=base, double=not quick, place=place,
                           lost_answers=place == "cr") for kind in KINDS]
    kills = sum(t.kills for t in tallies)
    runs = sum(t.runs for t in tallies)
    doubles = sum(t.double_kills for t in tallies)
    lost_answers = sum(t.lost_answers for t in tallies)
    lost = sum(t.lost for t in tallies)
    problems = [p for t in tallies for p in t.problems]
    labels: dict[str, int] = {}
    for t in tallies:
        for k, v in t.by_label.items():
            labels[k] = labels.get(k, 0) + v
    per_kind = ", ".join(f"{t.kind} {t.points}" for t in tallies)
    top = ", ".join(f"{v} at {k}" for k, v in sorted(labels.items(), key=lambda kv: -kv[1])[:4])
    ok = not problems and lost == 0 and runs > 0 and all(t.points > 20 for t in tallies)
    result = (f"{runs - lost}/{runs} runs ended consistent (crash points: {per_kind}; {top}, ...)"
              + (f"; in {doubles} of them the restarted controller was killed too, at its 1st-6th point, "
                 "and a third resumed" if doubles else "")
              + (f"; {lost_answers} more runs lost the answer of one ModelRollout write each (landed, never "
                 "answered)" if lost_answers else "")
              + ": terminal phase, applied_generation, registry aliases/statuses/history, serving, "
                "one promote (two when the guard reverted), "
                "each phase entered once, exact phase path; 0 actions ahead of the persisted document")
    if problems:
        result = f"{runs - lost}/{runs} runs consistent; FAILED: " + " | ".join(problems[:4])
    n = "/".join(str(t.points) for t in tallies)
    scenario = (f"controller killed at every crash point of a rollout ({n} points x 4 rollout kinds: good, "
                f"bad in canary, manual rollback, reverted by the guard in its watch), restarted"
                + ("" if quick else " (+ killed again while recovering)") + f"; status in {PLACES[place].label}")
    return _row(scenario, kills, "kills", result, lost, ok, t0)


def sigkill_row(quick: bool, work: Path) -> dict[str, Any]:
    t0 = time.monotonic()
    targets = ([("good", "Canary 25"), ("good", "Promoting")] if quick else
               [("good", "Shadow"), ("good", "Canary 10"), ("good", "Canary 25"), ("good", "Canary 50"),
                ("good", "Promoting"), ("bad", "Canary 25"), ("bad", "RolledBack")])
    lost, problems, wheres = 0, [], []
    for i, (kind, target) in enumerate(targets):
        probs, where = sigkill_one(kind, target, work / f"sigkill-{i}")
        wheres.append(f"{kind} {where}")
        if probs:
            lost += 1
            problems.append(f"{kind} at {target}: " + "; ".join(probs[:3]))
    mid = sum("not yet confirmed" in w for w in wheres)
    result = (f"{len(targets) - lost}/{len(targets)} resumed to a consistent end "
              f"({', '.join(t for _, t in targets)}; {mid} kills landed while the phase's actions were being "
              f"applied); file:// registry, a new process each time")
    if problems:
        result += "; FAILED: " + " | ".join(problems[:4])
    return _row("controller process SIGKILLed at each phase of a rollout, restarted", len(targets), "kills",
                result, lost, not problems, t0)


def scenarios(quick: bool, work: Path) -> list[dict[str, Any]]:
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    return [crash_points_row(quick, work / "points"), crash_points_row(quick, work / "points-cr", "cr"),
            sigkill_row(quick, work / "sigkill")]


__all__ = ["Kill", "MemStore", "SimServing", "crash_sweep", "run_one", "scenarios", "sigkill_one"]

if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="tideline-controller-") as tmp:
        for row in scenarios("--quick" in sys.argv[1:], Path(tmp)):
            print(json.dumps(row), flush=True)
