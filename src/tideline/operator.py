"""The ModelRollout operator: thin kopf handlers over ``tideline.rollout``.

Run it with ``kopf run -m tideline.operator --all-namespaces`` (in the cluster: the operator Deployment;
locally: with a kubeconfig). One reconcile of a ModelRollout:

1. read the recorded status (the CR's status subresource mirrors ``machine.RolloutStatus``);
2. if the machine's ``machineGeneration`` is ahead of ``appliedGeneration`` (an operator died between
   writing a status and applying its actions), re-apply ``machine.desired_actions`` (all idempotent);
3. when an analysis is due (every ``spec.analysis.intervalSeconds``), read the raw metrics through the
   KServe backend and run ``analysis.analyze``;
4. ``machine.advance`` with that analysis and the ``tideline.io/action`` annotation (promote|rollback);
5. write the new status FIRST (a merge patch of the status subresource that carries the
   ``resourceVersion`` it was computed from: a concurrent reconcile gets a 409 and backs off), THEN
   apply the actions through ``KServeBackend``, THEN record ``appliedGeneration``; a permanent error
   (production moved meanwhile, ...) fails the rollout, a transient one is retried on the next tick;
6. a consumed annotation is removed (kopf's ``patch``, applied after the handler returns).

A restarted operator therefore continues from the recorded status. kopf's own bookkeeping lives in
annotations (``tideline.io/...``), never in the status: its schema is closed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from tideline.errors import ConfigError, TidelineError
from tideline.registry import Registry, open_registry
from tideline.rollout import machine
from tideline.rollout.analysis import AnalysisInput, AnalysisResult, Thresholds, analyze
from tideline.rollout.backends import PERMANENT_ERRORS, BackendError, apply_action
from tideline.rollout.backends.kserve import KServeBackend, make_metrics_reader

log = logging.getLogger(__name__)

GROUP = "tideline.io"
VERSION = "v1alpha1"
PLURAL = "modelrollouts"
ACTION_ANNOTATION = "tideline.io/action"
ACTIONS = {"promote": "promote", "rollback": "rollback", "abort": "rollback"}
TICK_S = 5.0  # the timer's period; analyses run every spec.analysis.intervalSeconds (>= 5, the CRD's minimum)
MAX_EVENTS = 100


# -- CR <-> machine ------------------------------------------------------------------------------------
def _plain(obj: Any) -> Any:
    """kopf's Body/Spec views (Mappings) as plain dicts and lists."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def rollout_spec(name: str, spec: Mapping[str, Any], baseline: str) -> machine.RolloutSpec:
    """``machine.RolloutSpec`` from a ModelRollout's spec; unset fields take the machine's defaults."""
    strategy = spec.get("strategy") or {}
    shadow = strategy.get("shadow") or {}
    canary = strategy.get("canary") or {}
    analysis = spec.get("analysis") or {}
    thr = analysis.get("thresholds") or {}
    names = {"maxErrorRate": "max_error_rate", "maxP99LatencyMs": "max_p99_latency_ms",
             "accuracyMargin": "accuracy_margin", "maxKS": "max_ks",
             "maxPredictionDivergence": "max_prediction_divergence", "minRequests": "min_requests",
             "minLabelled": "min_labelled"}
    kw: dict[str, Any] = {}
    shadow_kw: dict[str, Any] = {}
    if "minDurationSeconds" in shadow:
        shadow_kw["min_duration_s"] = float(shadow["minDurationSeconds"])
    if "minLabelledSamples" in shadow:
        shadow_kw["min_labelled"] = int(shadow["minLabelledSamples"])
    if "steps" in canary:
        kw["steps"] = tuple(int(s) for s in canary["steps"])
    if "intervalSeconds" in analysis:
        kw["interval_s"] = float(analysis["intervalSeconds"])
    if "failureLimit" in analysis:
        kw["failure_limit"] = int(analysis["failureLimit"])
    if "maxInconclusive" in analysis:
        kw["max_inconclusive"] = int(analysis["maxInconclusive"])
    watch = strategy.get("watch") or {}
    watch_names = {"durationSeconds": "duration_s", "alpha": "alpha", "minAccuracy": "min_accuracy",
                   "minOutcomes": "min_outcomes"}
    if watch:
        kw["watch"] = machine.WatchSpec(**{watch_names[k]: v for k, v in watch.items() if k in watch_names})
    try:
        return machine.RolloutSpec(
            name=name, target=str(spec["targetRef"]), candidate=str(spec["candidate"]), baseline=baseline,
            bars=str(spec["bars"]) if spec.get("bars") else None,
            shadow=machine.ShadowSpec(**shadow_kw),
            thresholds=Thresholds(**{names[k]: v for k, v in thr.items() if k in names}), **kw,
        )
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"invalid ModelRollout {name}: {e}") from e


_FIELDS = {  # RolloutStatus field -> CR status field
    "phase": "phase", "weight": "weight", "step_index": "step", "failures": "failures",
    "inconclusive": "inconclusive", "started_at": "startedAt", "phase_since": "phaseSince",
    "last_analysis_at": "lastAnalysisAt", "analyses": "lastAnalyses", "message": "message",
    "candidate": "candidate", "baseline": "baseline", "generation": "machineGeneration",
    "kill_switch": "killSwitch",
}


def status_to_cr(st: machine.RolloutStatus) -> dict[str, Any]:
    """The CR status fields that mirror a RolloutStatus (None clears a field in a merge patch)."""
    d = st.to_dict()
    out: dict[str, Any] = {_FIELDS[k]: d[k] for k in _FIELDS if k != "analyses"}
    out["lastAnalyses"] = [
        {**{k: v for k, v in a.items() if v is not None}, "time": _iso(float(a["at"]))} for a in st.analyses
    ]
    return out


def status_from_cr(cr: Mapping[str, Any]) -> machine.RolloutStatus:
    d = {k: cr[v] for k, v in _FIELDS.items() if v in cr and k != "analyses"}
    d["analyses"] = [{k: v for k, v in a.items() if k != "time"} for a in cr.get("lastAnalyses") or []]
    for a in d["analyses"]:
        for key in ("labelled", "weight"):
            a.setdefault(key, 0)
        for c in a.get("checks", []):
            c.setdefault("value", None)
            c.setdefault("passed", None)
    return machine.RolloutStatus.from_dict(d)


def advance(spec: machine.RolloutSpec, status: machine.RolloutStatus, analysis: AnalysisResult | None,
            now: float, action: str | None, error: str | None = None
            ) -> tuple[machine.RolloutStatus, list[machine.Action]]:
    """The one call into the state machine."""
    return machine.advance(spec, status, analysis, now, action, error=error)  # type: ignore[arg-type]


def _conditions(st: machine.RolloutStatus, now: float) -> list[dict[str, Any]]:
    done = st.terminal
    ok = st.phase == machine.Phase.PROMOTED
    return [
        {"type": "Progressing", "status": "False" if done else "True", "reason": st.phase.value,
         "message": st.message, "lastTransitionTime": _iso(st.phase_since or now)},
        {"type": "Succeeded", "status": ("True" if ok else "False") if done else "Unknown",
         "reason": st.phase.value, "message": st.message, "lastTransitionTime": _iso(st.phase_since or now)},
    ]


# -- the reconciler ------------------------------------------------------------------------------------
class Conflict(Exception):
    """The object changed since it was read (HTTP 409): this reconcile backs off."""


class Reconciler:
    """Reconciles ModelRollouts; everything it touches is injected (tests pass test doubles)."""

    def __init__(
        self,
        custom_api: Any,
        core_api: Any = None,
        *,
        open_registry_fn: Callable[[str], Registry] | None = None,
        clock: Callable[[], float] = time.time,
        default_registry: str | None = None,
        metrics_reader_factory: Callable[[str, str, str], Any] | None = None,
    ) -> None:
        self.custom_api = custom_api
        self.core_api = core_api
        self.clock = clock
        self.default_registry = default_registry if default_registry is not None else os.environ.get(
            "TIDELINE_REGISTRY", "")
        self._open = open_registry_fn or (lambda uri: open_registry(uri, endpoint_url=os.environ.get(
            "AWS_ENDPOINT_URL")))
        self._reader_factory = metrics_reader_factory or (lambda source, ns, isvc: make_metrics_reader(
            source, core_api=self.core_api, namespace=ns, isvc_name=isvc))
        self._registries: dict[str, Registry] = {}
        self._readers: dict[tuple[str, str], Any] = {}
        self._outcomes: dict[tuple[str, str], Any] = {}
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()

    # helpers
    def _lock(self, key: tuple[str, str]) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def _registry(self, uri: str) -> Registry:
        if not uri:
            raise ConfigError("no registry: set spec.registry or the operator's TIDELINE_REGISTRY")
        if uri not in self._registries:
            self._registries[uri] = self._open(uri)
        return self._registries[uri]

    def _write_status(self, ns: str, name: str, rv: str | None, status: dict[str, Any]) -> str | None:
        body: dict[str, Any] = {"status": status}
        if rv:
            body["metadata"] = {"resourceVersion": rv}
        try:
            obj = self.custom_api.patch_namespaced_custom_object_status(GROUP, VERSION, ns, PLURAL, name, body)
        except Exception as e:
            if getattr(e, "status", None) == 409:
                raise Conflict(f"{ns}/{name} changed meanwhile") from e
            raise
        return ((obj or {}).get("metadata") or {}).get("resourceVersion")

    def forget(self, namespace: str, name: str) -> None:
        self._outcomes.pop((namespace, name), None)
        self._readers.pop((namespace, name), None)
        with self._guard:
            self._locks.pop((namespace, name), None)

    # the handler body
    def reconcile(self, body: Mapping[str, Any], patch: Any = None, logger: logging.Logger | None = None) -> None:
        body = _plain(body)
        meta = body.get("metadata") or {}
        key = (meta.get("namespace") or "default", meta["name"])
        with self._lock(key):
            self._reconcile(body, patch, logger or log)

    def _reconcile(self, body: dict[str, Any], patch: Any, logger: logging.Logger) -> None:
        meta = body["metadata"]
        ns, name = meta.get("namespace") or "default", meta["name"]
        rv = meta.get("resourceVersion")
        spec_cr = body.get("spec") or {}
        cr_status = body.get("status") or {}
        events = list(cr_status.get("events") or [])
        now = self.clock()
        requested = (meta.get("annotations") or {}).get(ACTION_ANNOTATION)
        action = ACTIONS.get(str(requested).strip().lower()) if requested is not None else None

        def consume_annotation() -> None:
            if requested is not None and patch is not None:
                patch.setdefault("metadata", {}).setdefault("annotations", {})[ACTION_ANNOTATION] = None

        def event(msg: str) -> None:
            events.append({"time": _iso(now), "message": msg})
            del events[:-MAX_EVENTS]
            logger.info("rollout %s/%s: %s", ns, name, msg)

        extra: dict[str, Any] = {"observedGeneration": meta.get("generation", 0)}
        if requested is not None and action is None:
            event(f"ignored {ACTION_ANNOTATION}={requested!r}: use promote or rollback")

        status = status_from_cr(cr_status) if cr_status.get("phase") else None
        applied = int(cr_status.get("appliedGeneration") or 0)
        settled = status is not None and status.terminal and status.generation <= applied
        if settled:
            assert status is not None
            if requested is not None:
                event(f"ignored {ACTION_ANNOTATION}={requested}: the rollout is {status.phase.value}")
                self._write_status(ns, name, rv, {**extra, "events": events})
                consume_annotation()
            return

        # spec -> RolloutSpec (a bad spec fails the rollout with a one-line message)
        try:
            registry = self._registry(str(spec_cr.get("registry") or self.default_registry))
            baseline = (status.baseline if status is not None and status.baseline else None) \
                or spec_cr.get("baseline") or registry.aliases().get("production")
            if not baseline:
                raise ConfigError("nothing is in production: a rollout needs a baseline",
                                  hint="promote the first version directly (tideline models promote)")
            spec = rollout_spec(name, spec_cr, str(baseline))
            if status is None:
                status = machine.RolloutStatus.initial(spec)
            started = pd.Timestamp(status.started_at, unit="s", tz="UTC") if status.started_at else None
            backend = self._backend(ns, name, spec_cr, spec, registry, started)
        except TidelineError as e:
            st = status or machine.RolloutStatus(candidate=str(spec_cr.get("candidate", "")))
            st = dataclasses.replace(st, phase=machine.Phase.FAILED, message=f"failed: {e}",
                                     phase_since=now, generation=st.generation + 1)
            event(st.message)
            self._write_status(ns, name, rv, {**status_to_cr(st), **extra, "events": events,
                                              "conditions": _conditions(st, now),
                                              "appliedGeneration": st.generation})
            consume_annotation()
            return

        try:
            # 2. an earlier reconcile wrote a status whose actions did not all land: finish them first
            if status.generation > applied:
                for a in machine.desired_actions(spec, status):
                    apply_action(backend, a, spec)
                rv = self._write_status(ns, name, rv, {**extra, "appliedGeneration": status.generation})
                applied = status.generation
                if status.terminal:
                    return  # a manual action on a finished rollout is answered on the next tick
            # 3. analysis, when one is due
            analysis = None
            if status.phase in (machine.Phase.SHADOW, machine.Phase.CANARY) and action is None:
                last = status.last_analysis_at if status.last_analysis_at is not None else status.phase_since
                if last is None or now - last >= spec.interval_s - 0.5:
                    analysis = self._analyze(backend, spec, status)
            # 4-5. advance, persist, apply
            new, actions = advance(spec, status, analysis, now, action)
            rv = self._commit(ns, name, rv, new, actions, extra, events, event, now)
            consume_annotation()
            try:
                self._apply(backend, spec, actions)
            except PERMANENT_ERRORS as e:
                failed, more = advance(spec, new, None, self.clock(), None, error=str(e))
                rv = self._commit(ns, name, rv, failed, more, extra, events, event, now)
                self._apply(backend, spec, [a for a in more if not isinstance(a, machine.Event)])
                new = failed
            rv = self._write_status(ns, name, rv, {"appliedGeneration": new.generation})
            if new.phase == machine.Phase.PROMOTING:  # promotion actions landed: finish it
                done, more = advance(spec, new, None, self.clock(), None)
                rv = self._commit(ns, name, rv, done, more, extra, events, event, now)
                self._apply(backend, spec, more)
                self._write_status(ns, name, rv, {"appliedGeneration": done.generation})
        except Conflict as e:
            logger.info("rollout %s/%s: %s; retrying on the next tick", ns, name, e)
        except BackendError as e:  # transient: desired_actions are re-applied on the next tick
            logger.warning("rollout %s/%s: %s; retrying on the next tick", ns, name, e)

    def _commit(self, ns: str, name: str, rv: str | None, st: machine.RolloutStatus,
                actions: list[machine.Action], extra: dict[str, Any], events: list[dict[str, Any]],
                event: Callable[[str], None], now: float) -> str | None:
        for a in actions:
            if isinstance(a, machine.Event):
                event(a.msg)
        return self._write_status(ns, name, rv, {**status_to_cr(st), **extra, "events": events,
                                                 "conditions": _conditions(st, now)})

    @staticmethod
    def _apply(backend: KServeBackend, spec: machine.RolloutSpec, actions: list[machine.Action]) -> None:
        for a in actions:
            apply_action(backend, a, spec)

    def _backend(self, ns: str, name: str, spec_cr: Mapping[str, Any], spec: machine.RolloutSpec,
                 registry: Registry, started: Any = None) -> KServeBackend:
        source = str(spec_cr.get("metricsSource") or "pods")
        reader = self._readers.get((ns, name))
        if reader is None:
            reader = self._readers[(ns, name)] = self._reader_factory(source, ns, spec.target)
        outcomes = None
        if spec.bars:  # live outcomes: the prediction log joined with realized returns from these bars
            outcomes = self._outcomes.get((ns, name))
            if outcomes is None:
                from tideline.feedback import outcomes_from_log

                outcomes = self._outcomes[(ns, name)] = outcomes_from_log(
                    registry, spec.bars, since=started, endpoint_url=os.environ.get("AWS_ENDPOINT_URL"))
        return KServeBackend(
            self.custom_api, ns, spec.target, registry, str(spec_cr.get("mode") or "Serverless"), reader,
            versions=[spec.candidate], baseline=spec.baseline, window_s=int(spec.interval_s),
            outcomes_reader=outcomes,
        )

    @staticmethod
    def _analyze(backend: KServeBackend, spec: machine.RolloutSpec, st: machine.RolloutStatus
                 ) -> AnalysisResult | None:
        """One interval's analysis, or None when the metrics could not be read (nothing is made up)."""
        try:
            snap = backend.read_metrics()
            up = backend.candidate_up(spec.candidate)
        except BackendError as e:
            log.warning("rollout %s: no analysis this interval: %s", spec.name, e)
            return None
        shadow = st.phase == machine.Phase.SHADOW
        inp = AnalysisInput(
            candidate=snap.select(spec.candidate, ["shadow"] if shadow else ["active", "canary"]),
            active=snap.select(spec.baseline, ["active"]),
            outcomes=backend.read_outcomes(spec.candidate, spec.baseline),
            paired_predictions=backend.read_paired_predictions(spec.candidate) if shadow else None,
            candidate_up=None if shadow else up,
        )
        return analyze(inp, spec.thresholds)


# -- kopf wiring ---------------------------------------------------------------------------------------
_reconciler: Reconciler | None = None


def _get_reconciler() -> Reconciler:
    global _reconciler
    if _reconciler is None:
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        _reconciler = Reconciler(client.CustomObjectsApi(), client.CoreV1Api())
    return _reconciler


def on_startup(settings: Any, **_: Any) -> None:
    """kopf keeps its progress and diff-base in annotations: the status schema is closed."""
    import kopf

    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.posting.level = logging.INFO


def on_reconcile(body: Mapping[str, Any], patch: Any, logger: logging.Logger, **_: Any) -> None:
    """create / resume / timer / annotation change: one reconcile (returns nothing: no kopf status)."""
    _get_reconciler().reconcile(body, patch, logger)


def on_delete(body: Mapping[str, Any], **_: Any) -> None:
    meta = body.get("metadata") or {}
    if _reconciler is not None:
        _reconciler.forget(meta.get("namespace") or "default", meta.get("name", ""))


def _register() -> None:
    try:
        import kopf
    except ImportError:  # pragma: no cover - kopf is a dependency
        return
    kopf.on.startup()(on_startup)
    kopf.on.create(GROUP, VERSION, PLURAL, id="create")(on_reconcile)
    kopf.on.resume(GROUP, VERSION, PLURAL, id="resume")(on_reconcile)
    kopf.on.field(GROUP, VERSION, PLURAL, id="action",
                  field=("metadata", "annotations", ACTION_ANNOTATION))(on_reconcile)
    kopf.timer(GROUP, VERSION, PLURAL, id="tick", interval=TICK_S, initial_delay=TICK_S)(on_reconcile)
    kopf.on.delete(GROUP, VERSION, PLURAL, id="forget", optional=True)(on_delete)


_register()
