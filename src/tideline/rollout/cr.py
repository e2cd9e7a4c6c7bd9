"""The ModelRollout custom resource as a ``StatusStore`` of the one rollout reconciler.

A cluster keeps each rollout in a ``ModelRollout`` (``tideline.io/v1alpha1``, ``manifests/crds``): the spec is
what a person (or the loop) asked for, the **status subresource** is the reconciler's ``RolloutDoc`` — the
machine's status, the last metrics snapshot, the applied generation, the lease of the operator pod that
drives it, the events — and the manual request is the ``tideline.io/action`` annotation (``kubectl
tideline promote|rollback``). ``CRStatusStore`` maps one onto the other and keeps the store contract of
``tideline.rollout.status``:

* ``write`` is a merge patch of the status subresource carrying the ``resourceVersion`` the document was
  read at: the API server answers 409 when anything changed meanwhile, which is ``Lost`` (another reconcile
  acted; this one steps back);
* an answer that never came (a timeout, a dropped connection) is resolved by reading the object back: the
  status carries a unique ``writeId``, so a write that landed is recognised as ours; one that did not is
  ``StorageUnavailable`` (the API server is unreachable: nothing changed, the next tick tries again);
* a consumed manual request is removed from the annotations only after the status that consumed it landed
  (a patch with the new ``resourceVersion``: a request made meanwhile is kept for the next pass). A request
  whose removal was lost is seen again by the next pass, where the machine ignores it (Promoting, or the
  rollout already ended: recorded as an ignored request).

Only the injected client is used (``kubernetes.client.CustomObjectsApi`` or a test double): the library
needs no cluster to import.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tideline.errors import ConfigError, StorageUnavailable
from tideline.rollout import machine
from tideline.rollout.analysis import Thresholds
from tideline.rollout.guard import WatchSpec
from tideline.rollout.status import MAX_EVENTS, Lost, RolloutDoc

GROUP = "tideline.io"
VERSION = "v1alpha1"
PLURAL = "modelrollouts"
KIND = "ModelRollout"
ACTION_ANNOTATION = "tideline.io/action"
ACTIONS = {"promote": "promote", "rollback": "rollback", "abort": "rollback"}


# ---- CR <-> machine ------------------------------------------------------------------------------------------
def plain(obj: Any) -> Any:
    """kopf's Body/Spec views (Mappings) as plain dicts and lists."""
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def iso(t: float) -> str:
    """Epoch seconds ``t`` as an ISO-8601 UTC string ending in ``Z`` (the form Kubernetes uses)."""
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def _from_iso(s: str) -> float:
    return datetime.fromisoformat(str(s).replace("Z", "+00:00")).timestamp()


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
             "minLabelled": "min_labelled", "superiorityAlpha": "superiority_alpha"}
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
        wkw = {watch_names[k]: v for k, v in watch.items() if k in watch_names}
        if wkw.get("min_accuracy") == 0:  # minAccuracy 0: no floor (a CR field cannot be null)
            wkw["min_accuracy"] = None
        kw["watch"] = WatchSpec(**wkw)
    approval = strategy.get("approval") or {}
    if approval:
        akw: dict[str, Any] = {}
        if "required" in approval:
            akw["required"] = bool(approval["required"])
        if "timeoutSeconds" in approval:
            akw["timeout_s"] = float(approval["timeoutSeconds"])
        if "onTimeout" in approval:
            akw["on_timeout"] = str(approval["onTimeout"])
        kw["approval"] = machine.ApprovalSpec(**akw)
    try:
        return machine.RolloutSpec(
            name=name, target=str(spec["targetRef"]), candidate=str(spec["candidate"]), baseline=baseline,
            bars=str(spec["bars"]) if spec.get("bars") else None,
            shadow=machine.ShadowSpec(**shadow_kw),
            thresholds=Thresholds(**{names[k]: (None if k == "superiorityAlpha" and not v else v)  # 0: off
                                     for k, v in thr.items() if k in names}), **kw,
        )
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"invalid ModelRollout {name}: {e}") from e


def spec_to_cr(spec: machine.RolloutSpec, *, registry: str, mode: str, metrics_source: str) -> dict[str, Any]:
    """The ModelRollout spec of a ``RolloutSpec`` (the inverse of ``rollout_spec``): what the loop creates."""
    t = spec.thresholds
    out: dict[str, Any] = {
        "targetRef": spec.target, "candidate": spec.candidate, "baseline": spec.baseline, "registry": registry,
        "mode": mode, "metricsSource": metrics_source,
        "strategy": {
            "shadow": {"minDurationSeconds": int(round(spec.shadow.min_duration_s)),
                       "minLabelledSamples": int(spec.shadow.min_labelled)},
            "canary": {"steps": [int(s) for s in spec.steps]},
            "watch": {"durationSeconds": int(round(spec.watch.duration_s)), "alpha": float(spec.watch.alpha),
                      "minOutcomes": int(spec.watch.min_outcomes),
                      "minAccuracy": float(spec.watch.min_accuracy or 0.0)},  # 0: no floor
            "approval": {"required": bool(spec.approval.required),
                         "timeoutSeconds": int(round(spec.approval.timeout_s)), "onTimeout": spec.approval.on_timeout},
        },
        "analysis": {
            "intervalSeconds": int(round(spec.interval_s)), "failureLimit": int(spec.failure_limit),
            "maxInconclusive": int(spec.max_inconclusive),
            "thresholds": {"maxErrorRate": float(t.max_error_rate), "maxP99LatencyMs": float(t.max_p99_latency_ms),
                           "accuracyMargin": float(t.accuracy_margin), "maxKS": float(t.max_ks),
                           "maxPredictionDivergence": float(t.max_prediction_divergence),
                           "minRequests": int(t.min_requests), "minLabelled": int(t.min_labelled),
                           "superiorityAlpha": float(t.superiority_alpha or 0.0)},  # 0: off (no null in a CR)
        },
    }
    if spec.bars:
        out["bars"] = spec.bars
    return out


FIELDS = {  # RolloutStatus field -> CR status field
    "phase": "phase", "weight": "weight", "step_index": "step", "failures": "failures",
    "inconclusive": "inconclusive", "started_at": "startedAt", "phase_since": "phaseSince",
    "last_analysis_at": "lastAnalysisAt", "analyses": "lastAnalyses", "message": "message",
    "candidate": "candidate", "baseline": "baseline", "generation": "machineGeneration",
    "kill_switch": "killSwitch", "approved_by": "approvedBy", "approved_at": "approvedAt",
}


def status_to_cr(st: machine.RolloutStatus) -> dict[str, Any]:
    """The CR status fields that mirror a RolloutStatus (None clears a field in a merge patch)."""
    d = st.to_dict()
    out: dict[str, Any] = {FIELDS[k]: d[k] for k in FIELDS if k != "analyses"}
    out["lastAnalyses"] = [
        {**{k: v for k, v in a.items() if v is not None}, "time": iso(float(a["at"]))} for a in st.analyses
    ]
    return out


def status_from_cr(cr: Mapping[str, Any]) -> machine.RolloutStatus:
    """The ``RolloutStatus`` a ModelRollout's status fields hold (the inverse of ``status_to_cr``).

    Raises ``ValueError`` when a field does not fit the status's types.
    """
    d = {k: cr[v] for k, v in FIELDS.items() if v in cr and k != "analyses"}
    d["analyses"] = [{k: v for k, v in a.items() if k != "time"} for a in cr.get("lastAnalyses") or []]
    for a in d["analyses"]:
        for key in ("labelled", "weight"):
            a.setdefault(key, 0)
        for c in a.get("checks", []):
            c.setdefault("value", None)
            c.setdefault("passed", None)
    return machine.RolloutStatus.from_dict(d)


def conditions(st: machine.RolloutStatus, now: float) -> list[dict[str, Any]]:
    """The ``Progressing`` and ``Succeeded`` conditions of a status (Kubernetes style: True/False/Unknown)."""
    done = st.terminal
    ok = st.phase == machine.Phase.PROMOTED
    since = iso(st.phase_since or now)
    return [
        {"type": "Progressing", "status": "False" if done else "True", "reason": st.phase.value,
         "message": st.message, "lastTransitionTime": since},
        {"type": "Succeeded", "status": ("True" if ok else "False") if done else "Unknown",
         "reason": st.phase.value, "message": st.message, "lastTransitionTime": since},
    ]


def _snapshot_to_cr(snap: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if snap is None:
        return None
    return {"series": [{**{k: v for k, v in s.items() if k != "buckets"},
                        "buckets": [{"le": str(le), "count": float(c)} for le, c in s.get("buckets", [])]}
                       for s in snap.get("series", [])]}


def _snapshot_from_cr(snap: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not snap:
        return None
    return {"series": [{**{k: v for k, v in s.items() if k != "buckets"},
                        "buckets": [[b["le"], b["count"]] for b in s.get("buckets", [])]}
                       for s in snap.get("series", [])]}


def doc_to_cr_status(doc: RolloutDoc, write_id: str, observed_generation: int) -> dict[str, Any]:
    """The whole status subresource of a ``RolloutDoc`` (a merge patch: None clears a field)."""
    st = doc.status
    return {
        **status_to_cr(st),
        "appliedGeneration": int(doc.applied_generation),
        "snapshot": _snapshot_to_cr(doc.snapshot),
        "snapshotAt": doc.snapshot_at,
        "owner": doc.owner,
        "leaseUntil": float(doc.lease_until),
        "applyFailures": int(doc.apply_failures),
        "events": [{"time": iso(float(e["at"])), "message": str(e["msg"])} for e in doc.events[-MAX_EVENTS:]],
        "conditions": conditions(st, st.phase_since or 0.0),
        "observedGeneration": int(observed_generation),
        "writeId": write_id,
    }


def doc_from_cr(obj: Mapping[str, Any], baseline: Callable[[], str | None]) -> RolloutDoc:
    """The ``RolloutDoc`` a ModelRollout holds; ``baseline`` names production when the CR does not (yet)."""
    meta = obj.get("metadata") or {}
    name = str(meta.get("name", ""))
    spec_cr = obj.get("spec") or {}
    cr = obj.get("status") or {}
    base = cr.get("baseline") or spec_cr.get("baseline") or baseline()
    if not base:
        raise ConfigError("nothing is in production: a rollout needs a baseline",
                          hint="promote the first version directly (tideline models promote)")
    spec = rollout_spec(name, spec_cr, str(base))
    status = status_from_cr(cr) if cr.get("phase") else machine.RolloutStatus.initial(spec)
    raw = (meta.get("annotations") or {}).get(ACTION_ANNOTATION)
    requested = None if raw is None else ACTIONS.get(str(raw).strip().lower(), str(raw))
    return RolloutDoc(
        spec=spec, status=status, snapshot=_snapshot_from_cr(cr.get("snapshot")), snapshot_at=cr.get("snapshotAt"),
        applied_generation=int(cr.get("appliedGeneration") or 0), requested_action=requested,
        owner=cr.get("owner"), lease_until=float(cr.get("leaseUntil") or 0.0),
        apply_failures=int(cr.get("applyFailures") or 0),
        events=[{"at": _from_iso(e["time"]), "msg": e["message"]} for e in cr.get("events") or []],
    )


def api_reason(e: BaseException) -> str:
    """One line for a Kubernetes client error: ``HTTP 409 <message>`` or the transport error's first line."""
    status = getattr(e, "status", None)
    reason = getattr(e, "reason", None)
    body = getattr(e, "body", None)
    msg = None
    if isinstance(body, (str, bytes)):
        try:
            msg = json.loads(body).get("message")
        except (ValueError, AttributeError):
            msg = None
    if status:
        return f"HTTP {status} {msg or reason or ''}".strip()
    return str(e).splitlines()[0] if str(e) else type(e).__name__


# ---- the store -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Token:
    """What a ``CRStatusStore`` write is conditioned on: the ``resourceVersion`` read, the pending action and
    the object's generation."""
    resource_version: str
    action: str | None
    """the ``tideline.io/action`` annotation as it was read (removed once a write consumed it)"""
    generation: int = 0


class CRStatusStore:
    """One ModelRollout's status subresource as the reconciler's ``StatusStore`` (see the module docstring)."""

    def __init__(self, api: Any, namespace: str, name: str, *,
                 baseline: Callable[[], str | None] = lambda: None) -> None:
        self.api, self.namespace, self.name, self.baseline = api, namespace, name, baseline

    def _where(self) -> str:
        return f"ModelRollout {self.namespace}/{self.name}"

    def get(self) -> dict[str, Any]:
        """The ModelRollout as plain dicts.

        Raises ``ConfigError`` when it does not exist (404), ``StorageUnavailable`` when the API cannot be read.
        """
        try:
            return plain(self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.name))
        except Exception as e:  # ApiException and transport errors
            if getattr(e, "status", None) == 404:
                raise ConfigError(f"no {self._where()}") from e
            raise StorageUnavailable(f"cannot read {self._where()}: {api_reason(e)}") from e

    def load(self) -> tuple[RolloutDoc, Token]:
        """The ``RolloutDoc`` the ModelRollout holds and the ``Token`` for the next write.

        Raises ``ConfigError`` when the ModelRollout is missing or invalid, or nothing is in production to serve as
        its baseline; ``StorageUnavailable`` when the API cannot be read.
        """
        obj = self.get()
        meta = obj.get("metadata") or {}
        raw = (meta.get("annotations") or {}).get(ACTION_ANNOTATION)
        return doc_from_cr(obj, self.baseline), Token(str(meta.get("resourceVersion", "")), raw,
                                                      int(meta.get("generation") or 0))

    def _landed(self, write_id: str) -> str | None:
        """The resourceVersion if the status in place is our write ``write_id``, else None."""
        obj = self.get()
        if ((obj.get("status") or {}).get("writeId")) == write_id:
            return str(obj["metadata"]["resourceVersion"])
        return None

    def _patch_status(self, body: dict[str, Any], write_id: str) -> str:
        try:
            obj = self.api.patch_namespaced_custom_object_status(GROUP, VERSION, self.namespace, PLURAL, self.name,
                                                                 body)
            return str(((obj or {}).get("metadata") or {}).get("resourceVersion", ""))
        except Exception as e:  # a 409, or an answer that never came
            conflict = getattr(e, "status", None) == 409
            rv = self._landed(write_id)  # StorageUnavailable when the API server cannot be read either
            if rv is not None:
                return rv
            if conflict:
                raise Lost() from None
            raise StorageUnavailable(f"cannot write the status of {self._where()}: {api_reason(e)}") from e

    def write(self, doc: RolloutDoc, token: Token) -> Token:
        """Write ``doc`` into the status subresource if the object is still at ``token``'s resourceVersion,
        and remove the action annotation once the request is consumed; the new token.

        Raises ``Lost`` on a conflict (409) that was not our own write, ``StorageUnavailable`` when the API
        cannot be reached (a write that landed although its answer was lost counts as written).
        """
        write_id = uuid.uuid4().hex
        body = {"metadata": {"resourceVersion": token.resource_version},
                "status": doc_to_cr_status(doc, write_id, token.generation)}
        rv = self._patch_status(body, write_id)
        action = token.action
        if action is not None and doc.requested_action is None:  # consumed: remove the annotation
            try:
                obj = self.api.patch_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, self.name,
                    {"metadata": {"resourceVersion": rv, "annotations": {ACTION_ANNOTATION: None}}})
                rv = str(((obj or {}).get("metadata") or {}).get("resourceVersion", rv))
                action = None
            except Exception:  # noqa: BLE001 - a new request came meanwhile (409) or the answer was lost: the next
                pass  # load reads the object again (a stale request is ignored by the machine or recorded as such)
        return dataclasses.replace(token, resource_version=rv, action=action)

    def fail_invalid(self, message: str, now: float) -> None:
        """A ModelRollout the reconciler cannot run (invalid spec, no production): Failed, one line, no action."""
        obj = self.get()
        cr = obj.get("status") or {}
        st = status_from_cr(cr) if cr.get("phase") else machine.RolloutStatus(
            candidate=str((obj.get("spec") or {}).get("candidate", "")))
        if st.terminal:
            return
        st = dataclasses.replace(st, phase=machine.Phase.FAILED, message=f"failed: {message}", phase_since=now,
                                 generation=st.generation + 1)
        events = [*(cr.get("events") or []), {"time": iso(now), "message": st.message}][-MAX_EVENTS:]
        write_id = uuid.uuid4().hex
        meta = obj.get("metadata") or {}
        self._patch_status({"metadata": {"resourceVersion": meta.get("resourceVersion")},
                            "status": {**status_to_cr(st), "appliedGeneration": st.generation, "events": events,
                                       "conditions": conditions(st, now), "writeId": write_id,
                                       "observedGeneration": int(meta.get("generation") or 0)}}, write_id)
