"""The rollout controller: the ONE reconciler over analysis (pure), the machine (pure), a traffic backend and a
status store — the embedded default's ``run`` loop and the kopf operator (``tideline.k8s.operator``) both call
``reconcile_once``, like Flagger's and Argo Rollouts' one scheduler over many traffic providers.

State is one ``RolloutDoc`` (spec, status, the last metrics snapshot, the last applied generation, a pending
manual request, the controller lease, events) in a ``StatusStore`` (``tideline.rollout.status``): a
document ``rollouts/<name>.json`` in the registry store, or a ModelRollout's status subresource
(``tideline.rollout.cr``), always written with compare-and-swap. Each ``reconcile_once``:

1. loads the document; if another controller holds an unexpired lease it only reports the status;
2. takes or renews its lease (CAS: of two controllers racing, exactly one wins; the other steps back);
3. if the last transition's actions were not confirmed applied (``applied_generation < generation``:
   the previous controller died or an action failed) re-applies ``desired_actions(status)`` — all
   idempotent — before anything else;
4. once per interval (however often it is called), reads the backend's cumulative counters, takes the
   increase since the stored snapshot (``analysis.delta``: the one place increases are computed), analyzes;
5. ``advance``-s the machine, persists the new status (CAS) BEFORE applying the returned actions, then
   applies them and records the new ``applied_generation``.

A permanent error while applying (production moved meanwhile, a version was deleted) fails the rollout;
other errors are retried on the next interval, ``max_apply_failures`` times in a row at most.

The registry store being unreachable (StorageUnavailable: S3 down, after the store's own retries with
backoff) is not an apply failure and never changes the rollout: nothing can be read or recorded, so the
controller makes no new decision and the world stays as the stored document says. If the outage hit
while a transition's actions were being applied, ``applied_generation < generation`` marks them as
unconfirmed and the next pass re-applies them (all idempotent); production moves only by the
PromoteInRegistry action of a Promoting document, never because of an outage. ``run`` rides over an
outage, skipping the interval and trying again on the next one, for ``max_store_failures`` passes in a
row; then it stops with a one-line StorageUnavailable ("... unreachable for 3 passes in a row ...").
Starting the controller again once the store is back resumes the rollout from the stored document.
A compare-and-swap write whose response was lost but which landed is recognised (the document carries a
unique ``write_id``) and counted as written.

The clock is injected: tests and demos run a fake clock whose ``sleep`` only moves time forward.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from tideline.clock import Clock, SystemClock
from tideline.errors import StorageUnavailable
from tideline.rollout import machine as m
from tideline.rollout.analysis import AnalysisInput, AnalysisResult, MetricsSnapshot, Thresholds, analyze, delta
from tideline.rollout.backends import PERMANENT_ERRORS, Backend, apply_action
from tideline.rollout.guard import guard_analyze
from tideline.rollout.status import (  # noqa: F401  (re-exported: callers import them from here)
    MAX_EVENTS,
    DocStatusStore,
    Lost,
    RolloutDoc,
    StatusStore,
    create_rollout,
    list_rollouts,
    load_rollout,
    request_action,
    rollout_key,
)
from tideline.store import RELEASED, Store

log = logging.getLogger(__name__)

Analyzer = Callable[[AnalysisInput, Thresholds], AnalysisResult]


class _Lost(Exception):
    """Our compare-and-swap write lost: another controller acted."""


# ---- the controller ----------------------------------------------------------------------------------
def _status_store(store: Store | StatusStore, name: str, spec: m.RolloutSpec | None, clock: Clock) -> StatusStore:
    if hasattr(store, "load") and hasattr(store, "write"):
        return store  # type: ignore[return-value]
    return DocStatusStore(store, name, spec, clock=clock.now)  # type: ignore[arg-type]


class RolloutController:
    """The one rollout reconciler: the local ``run`` loop and the kopf operator both call ``reconcile_once``.

    ``store`` is a registry ``Store`` (the rollout document in it: ``DocStatusStore``) or any ``StatusStore``
    (on a cluster: ``tideline.rollout.cr.CRStatusStore``, the ModelRollout's status subresource)."""

    def __init__(self, spec: m.RolloutSpec | str, backend: Backend, store: Store | StatusStore,
                 clock: Clock | None = None, analyzer: Analyzer = analyze, *, owner: str | None = None,
                 lease_s: float | None = None, max_apply_failures: int = 3, max_store_failures: int = 3) -> None:
        self.name = spec if isinstance(spec, str) else spec.name
        self._spec = None if isinstance(spec, str) else spec
        self.backend = backend
        self.clock = clock or SystemClock()
        self.statuses = _status_store(store, self.name, self._spec, self.clock)
        self.analyzer = analyzer
        self.owner = owner or f"controller-{uuid.uuid4().hex[:12]}"
        self.lease_s = lease_s
        self.max_apply_failures = max_apply_failures
        self.max_store_failures = max(1, int(max_store_failures))
        self.last_analysis: AnalysisResult | None = None

    # -- store ----------------------------------------------------------------------------------------
    def _write(self, doc: RolloutDoc, token: Any) -> Any:
        try:
            return self.statuses.write(doc, token)
        except Lost:
            raise _Lost() from None

    def status(self) -> m.RolloutStatus:
        """The rollout's stored status, as it is now (``StatusStore.load``'s errors propagate)."""
        return self.statuses.load()[0].status

    # -- one pass -------------------------------------------------------------------------------------
    def reconcile_once(self) -> m.RolloutStatus:
        """One pass (see the module docstring) and the status after it.

        Losing a compare-and-swap to another controller is not an error: the stored status is returned. Raises
        ``StorageUnavailable`` when the store cannot be reached (nothing changed), and the status store's errors
        (e.g. ``ConfigError`` for a rollout that does not exist, ``RegistryError`` for a corrupt document).
        """
        doc, token = self.statuses.load()
        try:
            return self._reconcile(doc, token)
        except _Lost:
            log.info("rollout %s: another controller acted first; stepping back", self.name)
            return self.statuses.load()[0].status

    def _reconcile(self, doc: RolloutDoc, etag: Any) -> m.RolloutStatus:
        now = self.clock.now()
        spec = doc.spec
        lease = self.lease_s if self.lease_s is not None else 3 * spec.interval_s
        if doc.lease.held_by_other(self.owner, now):
            return doc.status  # another live controller owns this rollout
        if doc.status.terminal and doc.requested_action is not None:
            # a request that came after the end, or one whose removal was lost after the write that consumed it
            doc.add_event(now, f"ignored a manual {doc.requested_action}: the rollout is {doc.status.phase.value}")
            doc.requested_action = None
            etag = self._write(doc, etag)
        if doc.status.terminal and doc.applied_generation >= doc.status.generation:
            if doc.owner == self.owner:
                doc.lease = RELEASED
                self._write(doc, etag)
            return doc.status
        # the lease: taken, or renewed once half an interval of it has gone (not on every pass of a fast ticker)
        if doc.lease.due(self.owner, now, lease, slack=0.5 * spec.interval_s):
            doc.lease = doc.lease.taken(self.owner, now, lease)
            etag = self._write(doc, etag)
        before = doc.to_dict()

        if doc.applied_generation < doc.status.generation:  # recover: finish what the last pass started
            log.info("rollout %s: re-applying the actions of %s (generation %d)", self.name,
                     doc.status.phase.value, doc.status.generation)
            done, etag = self._apply(doc, etag, m.desired_actions(spec, doc.status))
            if not done or doc.status.terminal:
                return doc.status
            before = doc.to_dict()

        action, approver = doc.requested_action, None
        if action is not None and action.split(":", 1)[0] == "approve":  # "approve:<who>"
            action, _, who = action.partition(":")
            approver = who.strip() or None
        if action is not None and action not in ("promote", "rollback", "approve"):
            doc.add_event(now, f"ignored the manual request {action!r}: use promote, rollback or approve")
            action = None
        analysis = None
        if doc.status.phase in (m.Phase.SHADOW, m.Phase.CANARY, m.Phase.AWAITING_APPROVAL, m.Phase.WATCHING):
            analysis = self._analyze(doc, now)  # waiting for approval: still analysed (a failing one rolls back)
        new, actions = m.advance(spec, doc.status, analysis, now, action, approver=approver)  # type: ignore[arg-type]
        if action:
            doc.add_event(now, f"manual {action} requested" + (f" by {approver}" if approver else ""))
        doc.requested_action = None
        if new.message != doc.status.message:
            doc.add_event(now, new.message)
        doc.status = new
        if doc.to_dict() != before:
            etag = self._write(doc, etag)  # persisted BEFORE the actions are applied
        if actions:
            self._apply(doc, etag, actions)
        elif doc.applied_generation < new.generation:
            doc.applied_generation = new.generation
            self._write(doc, etag)
        return doc.status

    def _analyze(self, doc: RolloutDoc, now: float) -> AnalysisResult | None:
        spec = doc.spec
        prev = MetricsSnapshot.from_dict(doc.snapshot) if doc.snapshot is not None else None
        due = doc.snapshot_at is None or now - doc.snapshot_at >= 0.9 * spec.interval_s
        if prev is not None and not due:
            return None  # an analysis is due once per interval, however often the reconciler runs
        cur = self.backend.read_metrics()
        if prev is None:
            doc.snapshot, doc.snapshot_at = cur.to_dict(), now
            return None
        d = delta(prev, cur)
        doc.snapshot, doc.snapshot_at = cur.to_dict(), now
        if doc.status.phase == m.Phase.WATCHING:  # the guard: production (the candidate) vs previous
            outcomes = self.backend.read_outcomes(spec.candidate, spec.baseline)
            res = guard_analyze(outcomes.watch if outcomes is not None else None, d.select(spec.candidate),
                                spec.watch, spec.thresholds)
            res.at = now
            self.last_analysis = res
            return res
        shadow = doc.status.phase == m.Phase.SHADOW
        # by version: a backend labels a role by process (local) or by slot (KServe); a version's counters
        # only grow while it serves, so the interval's increase is the candidate's own traffic either way
        inp = AnalysisInput(
            candidate=d.select(spec.candidate), active=d.select(spec.baseline),
            outcomes=self.backend.read_outcomes(spec.candidate, spec.baseline),
            paired_predictions=self.backend.read_paired_predictions(spec.candidate) if shadow else None,
            candidate_up=self.backend.candidate_up(spec.candidate),
        )
        res = self.analyzer(inp, spec.thresholds)
        res.at = now
        self.last_analysis = res
        return res

    def _apply(self, doc: RolloutDoc, etag: str, actions: list[m.Action]) -> tuple[bool, str]:
        """Apply actions; record success (applied_generation) or the failure. Returns (done, etag)."""
        now = self.clock.now()
        try:
            for a in actions:
                apply_action(self.backend, a, doc.spec)
        except PERMANENT_ERRORS as e:
            return self._fail(doc, etag, f"{type(e).__name__}: {e}"), etag
        except StorageUnavailable:
            raise  # not the backend's failure: run() rides over it; the next pass re-applies
        except Exception as e:  # noqa: BLE001 - any backend failure is retried, a bounded number of times
            doc.apply_failures += 1
            log.warning("rollout %s: applying %s failed (%d/%d): %s", self.name, doc.status.phase.value,
                        doc.apply_failures, self.max_apply_failures, e)
            doc.add_event(now, f"applying {doc.status.phase.value} failed ({doc.apply_failures}/"
                               f"{self.max_apply_failures}): {e}")
            if doc.apply_failures >= self.max_apply_failures and not doc.status.terminal:
                return self._fail(doc, etag, f"could not apply {doc.status.phase.value}: {e}"), etag
            self._write(doc, etag)
            return False, etag
        self._snapshot_after_change(doc, now)
        doc.applied_generation = doc.status.generation
        doc.apply_failures = 0
        etag = self._write(doc, etag)
        return True, etag

    def _snapshot_after_change(self, doc: RolloutDoc, now: float) -> None:
        """A new phase/weight starts its first interval from fresh counters (no mixing of steps)."""
        if doc.status.phase in (m.Phase.SHADOW, m.Phase.CANARY, m.Phase.WATCHING):
            try:
                doc.snapshot, doc.snapshot_at = self.backend.read_metrics().to_dict(), now
            except Exception as e:  # noqa: BLE001 - the next pass takes it instead
                log.warning("rollout %s: reading metrics failed: %s", self.name, e)
                doc.snapshot, doc.snapshot_at = None, None

    def _fail(self, doc: RolloutDoc, etag: str, why: str) -> bool:
        now = self.clock.now()
        new, actions = m.advance(doc.spec, doc.status, None, now, error=why)
        if new.generation == doc.status.generation:  # already terminal: nothing more to do
            return False
        doc.status = new
        doc.apply_failures = 0
        doc.add_event(now, new.message)
        etag = self._write(doc, etag)
        try:
            for a in actions:
                apply_action(self.backend, a, doc.spec)
        except Exception as e:  # noqa: BLE001 - recorded; the next pass re-applies desired_actions
            log.error("rollout %s: applying Failed's actions failed: %s", self.name, e)
            doc.add_event(now, f"applying Failed's actions failed: {e}")
            self._write(doc, etag)
            return False
        doc.applied_generation = new.generation
        self._write(doc, etag)
        return True

    # -- loop ------------------------------------------------------------------------------------------
    def run(self, until_terminal: bool = True, max_iterations: int | None = None,
            on_status: Callable[[m.RolloutStatus], None] | None = None) -> m.RolloutStatus:
        """Reconcile every ``interval_s`` (on the injected clock) until terminal or ``max_iterations``."""
        status = self.status() if max_iterations == 0 else None
        interval = self._spec.interval_s if self._spec is not None else None
        doc: RolloutDoc | None
        outages = 0
        i = 0
        while max_iterations is None or i < max_iterations:
            i += 1
            gen_before = status.generation if status is not None else -1
            try:
                status = self.reconcile_once()
                latest = self.statuses.load()[0]
                doc = latest if status.terminal and until_terminal else None
                interval = latest.spec.interval_s
            except StorageUnavailable as e:
                outages += 1
                if outages >= self.max_store_failures:
                    raise StorageUnavailable(
                        f"rollout {self.name}: the registry store is unreachable for {outages} passes in a row; "
                        f"the rollout is left as it was: {e.message}",
                        hint="run the controller again once the store is back; it resumes from the stored status",
                    ) from e
                log.warning("rollout %s: the registry store is unreachable (pass %d/%d), nothing changed; "
                            "trying again in %.0f s: %s", self.name, outages, self.max_store_failures,
                            interval or 30.0, e.message)
                self.clock.sleep(interval or 30.0)
                continue
            outages = 0
            if on_status is not None:
                on_status(status)
            if doc is not None:
                if doc.applied_generation >= status.generation:
                    break
                if doc.apply_failures >= self.max_apply_failures:  # give up; the events say why
                    log.error("rollout %s ended %s but its actions could not be applied", self.name,
                              status.phase.value)
                    break
            if status.phase in (m.Phase.PENDING, m.Phase.PROMOTING) and status.generation != gen_before:
                continue  # progress that needs no waiting (start, finish a promotion)
            self.clock.sleep(interval)
        if status is None:
            status = self.status()
        return status
