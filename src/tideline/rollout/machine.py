"""The rollout state machine. Pure: ``advance`` maps (spec, status, analysis, time, manual action) to a new
status and the idempotent actions that make the world match it.

Phases::

    Pending -> Shadow -> Canary[w0] -> Canary[w1] -> ... -> Promoting -> [Watching ->] Promoted
                 |           |                                                 |
                 +-----------+--> RolledBack (failure_limit consecutive        +--> Reverted (the guard: production
                                  failed analyses, max_inconclusive                 worse than previous on the same
                                  inconclusive ones in a row, or a manual           requests, under the floors, or a
                                  rollback)                                         manual rollback)
    any non-terminal --(a permanent error applying an action, e.g. production moved meanwhile)--> Failed

* Pending -> Shadow on the first call (``SetShadow(candidate)``: every request is mirrored to the
  candidate, whose answers are thrown away). With ``shadow.min_duration_s == 0`` the shadow phase is
  skipped and the rollout starts at the first canary step.
* Shadow -> Canary when a *passing* analysis arrives after at least ``min_duration_s`` in shadow and
  with at least ``min_labelled`` labelled live outcomes for the candidate (``SetShadow(None)``,
  ``DeployCanary``, ``SetWeight(steps[0])``).
* Canary step i -> i+1 on every passing interval; a passing interval whose sequential test finds the
  candidate clearly better (``AnalysisResult.clearly_better``, with ``thresholds.superiority_alpha`` set)
  skips the remaining steps to Promoting. Steps are canary weights in percent; a final 100 means
  "promote" — the canary slot never gets 100% as a canary: traffic goes to 100% by *promotion*.
* Promoting: ``PromoteInRegistry(candidate, expected_production=baseline)`` (compare-and-swap), then
  ``SetActive(candidate)`` (the slot serving the candidate becomes the active one, all traffic, the canary
  slot is emptied and its weight is 0). The next call, made once those actions were applied, moves to
  Promoted. A manual ``promote`` jumps here from any non-terminal phase. Promoting is the point of no
  return: a manual rollback arriving then is ignored (undo with ``tideline models rollback``).
* RolledBack: ``SetWeight(0)`` first, then ``SetShadow(None)``, ``RemoveCanary``, ``RetireInRegistry``
  (candidate alias cleared, status RETIRED). Production never moved, so it is left alone.
* Watching (only with ``spec.watch.duration_s > 0``): the candidate is production; the baseline (previous)
  is shadowed on every request (``SetShadow(baseline)``) and the guard (``tideline.rollout.guard``) judges
  production against it on the same requests each interval. A failed guard analysis -> Reverted: previous is
  promoted back (compare-and-swap against the candidate) and made active, the candidate retired, and with
  both under the accuracy floor the kill switch is thrown (``KillSwitch``: every predictor answers flat).
  The window ends -> Promoted (shadow off, the slot stopped). A manual rollback reverts; a manual promote
  ends the watch.
* Promoted, RolledBack, Reverted and Failed are terminal and absorbing.

Crash safety: the controller persists the new status BEFORE applying the actions, every action is
idempotent, and ``desired_actions(spec, status)`` rebuilds the complete action list for any persisted
status. A controller killed at any point re-applies that list on restart and ends consistent. The
orders above keep traffic on ready models at every intermediate point: weights only go up after the
canary is deployed, the canary is removed only after its weight is 0, and the active slot changes only
to a deployed, ready candidate.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, Literal

from tideline.config import ROLLOUT_DEFAULTS as _D
from tideline.config import LoopRolloutConfig
from tideline.documents import Document
from tideline.rollout.analysis import AnalysisResult, Thresholds
from tideline.rollout.guard import WatchSpec, kill_switch_needed


class Phase(str, Enum):
    """The phases of a rollout (see the module docstring); the value is the name stored and shown."""
    PENDING = "Pending"
    SHADOW = "Shadow"
    CANARY = "Canary"
    AWAITING_APPROVAL = "AwaitingApproval"
    PROMOTING = "Promoting"
    WATCHING = "Watching"
    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"
    REVERTED = "Reverted"
    FAILED = "Failed"

    @property
    def terminal(self) -> bool:
        """True for Promoted, RolledBack, Reverted and Failed: nothing moves after them."""
        return self in TERMINAL


TERMINAL: frozenset[Phase] = frozenset({Phase.PROMOTED, Phase.ROLLED_BACK, Phase.REVERTED, Phase.FAILED})
MAX_ANALYSES = 10
ManualAction = Literal["promote", "rollback", "approve"]


# ---- spec ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShadowSpec(Document):
    """The shadow phase (defaults: the ``[loop.rollout]`` settings, like every default of a spec)."""

    min_duration_s: float = _D.shadow_seconds
    """0 skips the shadow phase."""
    min_labelled: int = _D.min_labelled
    """labelled live outcomes the candidate needs before it may take real traffic (0: none)."""
    max_duration_s: float = _D.shadow_max_seconds
    """still short of ``min_labelled`` after this long in shadow: roll back (0: wait forever)."""


@dataclass(frozen=True)
class ApprovalSpec(Document):
    """A person approves the promotion (Flagger's confirm-promotion gate, a model registry's approval status):
    once the analysis would promote, the rollout waits in AwaitingApproval (the candidate keeps its traffic and
    its analysis: a failing one is still rolled back) until approved (``kubectl tideline approve``, ``tideline
    rollout approve``); after ``timeout_s`` without one it rolls back (``on_timeout="rollback"``) or keeps waiting
    (``"wait"``)."""

    required: bool = _D.approval_required
    timeout_s: float = _D.approval_timeout_seconds
    on_timeout: Literal["rollback", "wait"] = _D.approval_on_timeout

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError("approval.timeout_s must be > 0")


@dataclass(frozen=True)
class RolloutSpec(Document):
    """What a rollout does: ``candidate`` against ``baseline`` on ``target``, the shadow phase, canary steps,
    interval, thresholds, limits, the bars for outcome checks and the guard's watch. Frozen; the defaults are
    the ``[loop.rollout]`` settings. Raises ``ValueError`` for an inconsistent spec (no name or target, the
    candidate is the baseline, steps not strictly increasing in 1..100, non-positive interval, bad limits).
    """
    name: str
    target: str
    """the served model (the predictor's --name / the InferenceService)."""
    candidate: str
    baseline: str
    """the production version when the rollout started (promotion is a CAS against it)."""
    shadow: ShadowSpec = ShadowSpec()
    steps: tuple[int, ...] = tuple(_D.steps)
    interval_s: float = _D.interval_seconds
    thresholds: Thresholds = Thresholds()
    failure_limit: int = _D.failure_limit
    """consecutive failed analyses that roll back."""
    max_inconclusive: int = _D.max_inconclusive
    """consecutive inconclusive analyses that roll back (0: never)."""
    bars: str | None = None
    """recent bars (a ``tideline.data.load_bars`` source) to join live predictions with for the outcome
    checks (accuracy, error KS); None: those checks stay inconclusive. Kept in the spec so a restarted
    controller uses the same source."""
    watch: WatchSpec = WatchSpec()
    """the guard after promotion (``duration_s == 0``: none)."""
    approval: ApprovalSpec = ApprovalSpec()
    """a person approves the promotion (``required``), or not."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(int(s) for s in self.steps))
        if not self.name or not self.target:
            raise ValueError("a rollout needs a name and a target")
        if self.candidate == self.baseline:
            raise ValueError(f"candidate {self.candidate} is already the baseline")
        if not self.steps:
            raise ValueError("at least one canary step is needed (100 alone promotes right after shadow)")
        if any(not 0 < s <= 100 for s in self.steps) or list(self.steps) != sorted(set(self.steps)):
            raise ValueError(f"steps must be strictly increasing percentages in 1..100, got {list(self.steps)}")
        if self.interval_s <= 0:
            raise ValueError("interval_s must be positive")
        if self.failure_limit < 1 or self.max_inconclusive < 0:
            raise ValueError("failure_limit must be >= 1 and max_inconclusive >= 0")
        if self.shadow.min_duration_s < 0 or self.shadow.min_labelled < 0 or self.shadow.max_duration_s < 0:
            raise ValueError("shadow minimums must be >= 0")

    @property
    def canary_weights(self) -> tuple[int, ...]:
        """The weights the canary slot takes; a trailing 100 means promotion, not a canary weight."""
        return tuple(s for s in self.steps if s < 100)

    @classmethod
    def from_settings(cls, cfg: LoopRolloutConfig, *, candidate: str, baseline: str, bars: str | None = None,
                      name: str | None = None) -> RolloutSpec:
        """The rollout of ``candidate`` against ``baseline`` that the ``[loop.rollout]`` settings describe.

        Raises ``ValueError`` for an inconsistent spec (e.g. a candidate that is the baseline).
        """
        return cls(
            name=name or cfg.name, target=name or cfg.name, candidate=candidate, baseline=baseline,
            shadow=ShadowSpec(min_duration_s=cfg.shadow_seconds, min_labelled=cfg.min_labelled,
                              max_duration_s=cfg.shadow_max_seconds),
            steps=tuple(cfg.steps), interval_s=cfg.interval_seconds, failure_limit=cfg.failure_limit,
            max_inconclusive=cfg.max_inconclusive, bars=bars,
            watch=WatchSpec(duration_s=cfg.watch_seconds, alpha=cfg.watch_alpha, min_accuracy=cfg.watch_min_accuracy,
                            min_outcomes=cfg.watch_min_outcomes),
            approval=ApprovalSpec(required=cfg.approval_required, timeout_s=cfg.approval_timeout_seconds,
                                  on_timeout=cfg.approval_on_timeout),
            thresholds=Thresholds(max_error_rate=cfg.max_error_rate, max_p99_latency_ms=cfg.max_p99_latency_ms,
                                  accuracy_margin=cfg.accuracy_margin, max_ks=cfg.max_ks,
                                  max_prediction_divergence=cfg.max_prediction_divergence,
                                  min_requests=cfg.min_requests, min_labelled=cfg.min_outcomes,
                                  superiority_alpha=cfg.superiority_alpha))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RolloutSpec:
        """The stored spec (``Document.from_dict``); a document without a watch was written before the guard
        existed and keeps meaning none."""
        return super().from_dict({"watch": {"duration_s": 0.0}, **d})


# ---- status --------------------------------------------------------------------------------------------
@dataclass
class RolloutStatus(Document):
    """Where a rollout stands: phase, canary weight and step, failure counters, times, the recent analyses."""
    phase: Phase = Phase.PENDING
    weight: int = 0
    """traffic share of the canary slot (0 outside Canary; after promotion the candidate IS the active)."""
    step_index: int = -1
    failures: int = 0
    """consecutive failed analyses."""
    inconclusive: int = 0
    """consecutive inconclusive analyses."""
    started_at: float | None = None
    phase_since: float | None = None
    last_analysis_at: float | None = None
    analyses: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""
    candidate: str = ""
    baseline: str = ""
    generation: int = 0
    """bumped whenever the desired state of the world changes."""
    kill_switch: bool = False
    """the guard threw the kill switch (Reverted with both versions under the floor)."""
    approved_by: str | None = None
    """who approved the promotion (``ApprovalSpec.required``), and when (``approved_at``, epoch seconds)."""
    approved_at: float | None = None

    @property
    def terminal(self) -> bool:
        """True once the phase is terminal (Promoted, RolledBack, Reverted, Failed)."""
        return self.phase in TERMINAL

    @classmethod
    def initial(cls, spec: RolloutSpec) -> RolloutStatus:
        """The Pending status of a new rollout of ``spec`` (waiting for the controller)."""
        return cls(candidate=spec.candidate, baseline=spec.baseline, message="waiting for the controller")


# ---- actions -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Action:
    """Base of the machine's actions: frozen, idempotent requests a backend applies (``apply_action``)."""
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready action: ``kind`` (the class name) plus its fields."""
        return {"kind": type(self).__name__, **asdict(self)}


@dataclass(frozen=True)
class SetShadow(Action):
    """Mirror every request to ``version`` (answers discarded); None stops the mirror."""
    version: str | None


@dataclass(frozen=True)
class DeployCanary(Action):
    """Start (or keep) a ready predictor for ``version`` in the canary slot, weight unchanged."""

    version: str


@dataclass(frozen=True)
class SetWeight(Action):
    """Send ``percent`` of live traffic to the canary slot."""
    percent: int


@dataclass(frozen=True)
class RemoveCanary(Action):
    """Weight 0 (if not already), then stop the canary slot."""


@dataclass(frozen=True)
class SetActive(Action):
    """Make the slot serving ``version`` the active one (all traffic); empty the canary slot."""

    version: str


@dataclass(frozen=True)
class MarkInRegistry(Action):
    """Registry status of the candidate (SHADOW/CANARY); the ``shadow`` alias follows the shadow phase."""

    version: str
    status: str


@dataclass(frozen=True)
class PromoteInRegistry(Action):
    """Make ``version`` production, compare-and-swap against ``expected_production``."""
    version: str
    expected_production: str


@dataclass(frozen=True)
class RetireInRegistry(Action):
    """RollbackInRegistry: candidate/shadow aliases that point at ``version`` cleared, status RETIRED.

    Production is not touched (it never moved during the rollout)."""

    version: str


@dataclass(frozen=True)
class KillSwitch(Action):
    """Every predictor answers a flat position (``on``) until someone lifts it; ``reason`` says why."""

    on: bool
    reason: str


@dataclass(frozen=True)
class Event(Action):
    """No change to the world: a message for the log (``msg``)."""
    msg: str


RollbackInRegistry = RetireInRegistry


def _promote_actions(spec: RolloutSpec) -> list[Action]:
    c = spec.candidate
    return [SetShadow(None), DeployCanary(c), PromoteInRegistry(c, spec.baseline), SetActive(c)]


def _rollback_actions(spec: RolloutSpec) -> list[Action]:
    return [SetWeight(0), SetShadow(None), RemoveCanary(), RetireInRegistry(spec.candidate)]


def _revert_actions(spec: RolloutSpec) -> list[Action]:
    b = spec.baseline
    return [SetShadow(None), DeployCanary(b), PromoteInRegistry(b, spec.candidate), SetActive(b),
            RetireInRegistry(spec.candidate)]


def desired_actions(spec: RolloutSpec, status: RolloutStatus) -> list[Action]:
    """Every idempotent action that brings the world to what ``status`` says (used after a restart)."""
    c = spec.candidate
    p = status.phase
    if p == Phase.PENDING:
        return []
    if p == Phase.WATCHING:  # entered only once Promoting's actions were applied
        return [SetShadow(spec.baseline)]
    if p == Phase.PROMOTED and spec.watch.duration_s > 0:
        return [SetShadow(None), RemoveCanary()]
    if p == Phase.REVERTED:
        kill = [KillSwitch(True, status.message)] if status.kill_switch else []
        return [*_revert_actions(spec), *kill]
    if p == Phase.SHADOW:
        return [SetWeight(0), MarkInRegistry(c, "SHADOW"), SetShadow(c)]
    if p == Phase.CANARY or (p == Phase.AWAITING_APPROVAL and status.weight > 0):
        return [SetShadow(None), MarkInRegistry(c, "CANARY"), DeployCanary(c), SetWeight(status.weight)]
    if p == Phase.AWAITING_APPROVAL:  # it passed its shadow and had no canary step: still in shadow
        return [SetWeight(0), MarkInRegistry(c, "SHADOW"), SetShadow(c)]
    if p in (Phase.PROMOTING, Phase.PROMOTED):
        return _promote_actions(spec)
    if p == Phase.ROLLED_BACK:
        return _rollback_actions(spec)
    return [SetWeight(0), SetShadow(None), RemoveCanary()]  # Failed: back to the active slot only


# ---- transitions ---------------------------------------------------------------------------------------
def _enter(st: RolloutStatus, phase: Phase, now: float, message: str, *, weight: int = 0,
           step_index: int = -1) -> None:
    st.phase, st.phase_since, st.message = phase, now, message
    st.weight, st.step_index = weight, step_index
    st.generation += 1
    if not phase.terminal:  # a new step starts with a clean slate; terminal phases keep the counts
        st.failures = st.inconclusive = 0


def _to_canary_or_promote(spec: RolloutSpec, st: RolloutStatus, now: float, why: str,
                          actions: list[Action]) -> None:
    weights = spec.canary_weights
    if not weights:
        _promote_or_await(spec, st, now, why, actions)
        return
    _enter(st, Phase.CANARY, now, f"{why}; canary at {weights[0]}%", weight=weights[0], step_index=0)
    actions += [SetShadow(None), MarkInRegistry(spec.candidate, "CANARY"), DeployCanary(spec.candidate),
                SetWeight(weights[0]), Event(st.message)]


def _promote_or_await(spec: RolloutSpec, st: RolloutStatus, now: float, why: str, actions: list[Action]) -> None:
    """Promote, or with ``spec.approval.required`` wait for a person in AwaitingApproval (traffic as it is)."""
    if not spec.approval.required:
        _start_promotion(spec, st, now, why, actions)
        return
    _enter(st, Phase.AWAITING_APPROVAL, now, f"{why}; waiting for approval (kubectl tideline approve {spec.name}, "
           f"tideline rollout approve --name {spec.name}) for at most {spec.approval.timeout_s:g} s, then "
           f"{'roll back' if spec.approval.on_timeout == 'rollback' else 'keep waiting'}",
           weight=st.weight, step_index=st.step_index)
    actions.append(Event(st.message))


def _start_promotion(spec: RolloutSpec, st: RolloutStatus, now: float, why: str, actions: list[Action]) -> None:
    _enter(st, Phase.PROMOTING, now, f"{why}; promoting {spec.candidate}", weight=0)
    actions += [*_promote_actions(spec), Event(st.message)]


def _roll_back(spec: RolloutSpec, st: RolloutStatus, now: float, why: str, actions: list[Action]) -> None:
    _enter(st, Phase.ROLLED_BACK, now, f"rolled back: {why}", weight=0)
    actions += [*_rollback_actions(spec), Event(st.message)]


def advance(
    spec: RolloutSpec,
    status: RolloutStatus,
    analysis: AnalysisResult | None,
    now: float,
    action: ManualAction | None = None,
    *,
    error: str | None = None,
    approver: str | None = None,
) -> tuple[RolloutStatus, list[Action]]:
    """One step of the machine. Returns a new status (the input is not changed) and the actions to apply.

    ``analysis`` is the result of the interval that just ended (None: no analysis this call).
    ``action`` is a manual request (``approve``: by ``approver``, only while AwaitingApproval; otherwise it is
    ignored with an event); ``error`` reports a permanent failure applying the last actions.
    """
    if action not in (None, "promote", "rollback", "approve"):
        raise ValueError(f"unknown manual action {action!r}")
    st = copy.deepcopy(status)
    actions: list[Action] = []
    if st.phase.terminal:
        return st, actions
    if st.started_at is None:
        st.started_at = now
    if error is not None:
        _enter(st, Phase.FAILED, now, f"failed: {error}", weight=0)
        return st, [*desired_actions(spec, st), Event(st.message)]
    if st.phase == Phase.PROMOTING:
        # The point of no return: production has (or is about to have) moved in the registry. A manual
        # request here is ignored; undo a promotion with `tideline models rollback` once Promoted.
        if spec.watch.duration_s > 0:
            _enter(st, Phase.WATCHING, now, f"promoted {spec.candidate} (was {spec.baseline}); watching it for "
                   f"{spec.watch.duration_s:g} s with {spec.baseline} in shadow"
                   + (f"; manual {action} ignored: the promotion was already under way" if action else ""))
            return st, [SetShadow(spec.baseline), Event(st.message)]
        _enter(st, Phase.PROMOTED, now, f"promoted {spec.candidate} (was {spec.baseline})"
               + (f"; manual {action} ignored: the promotion was already under way" if action else ""), weight=0)
        return st, [Event(st.message)]
    if st.phase == Phase.WATCHING:
        return _watch(spec, st, analysis, now, action)
    if action == "approve":
        who = approver or "unknown"
        if st.phase != Phase.AWAITING_APPROVAL:
            return st, [Event(f"approval by {who} ignored: the rollout is {st.phase.value}, not awaiting approval")]
        st.approved_by, st.approved_at = who, now
        _start_promotion(spec, st, now, f"approved by {who}", actions)
        return st, actions
    if action == "rollback":
        _roll_back(spec, st, now, "manual rollback", actions)
        return st, actions
    if action == "promote":
        _start_promotion(spec, st, now, "manual promotion", actions)
        return st, actions

    if st.phase == Phase.PENDING:
        if spec.shadow.min_duration_s > 0:
            _enter(st, Phase.SHADOW, now, f"shadowing {spec.candidate} next to {spec.baseline}")
            actions += [SetWeight(0), MarkInRegistry(spec.candidate, "SHADOW"), SetShadow(spec.candidate),
                        Event(st.message)]
        else:
            _to_canary_or_promote(spec, st, now, "shadow skipped", actions)
        return st, actions
    if st.phase == Phase.AWAITING_APPROVAL:
        waited = now - (st.phase_since if st.phase_since is not None else now)
        if waited >= spec.approval.timeout_s:
            if spec.approval.on_timeout == "rollback":
                _roll_back(spec, st, now, f"no approval within {spec.approval.timeout_s:g} s", actions)
                return st, actions
            st.message = (f"waiting for approval for {waited:.0f} s, past its {spec.approval.timeout_s:g} s "
                          "timeout (on_timeout: wait)")
    if analysis is None:
        return st, actions

    # Shadow, Canary or AwaitingApproval with a fresh analysis.
    st.last_analysis_at = now
    rec = analysis.to_dict()
    rec["at"] = now
    rec["phase"] = st.phase.value
    rec["weight"] = st.weight
    st.analyses = [*st.analyses, rec][-MAX_ANALYSES:]
    reasons = "; ".join(analysis.reasons) or analysis.verdict
    if analysis.verdict == "fail":
        st.failures += 1
        st.inconclusive = 0
        if st.failures >= spec.failure_limit:
            _roll_back(spec, st, now, f"{st.failures} consecutive failed analyses ({reasons})", actions)
        else:
            st.message = f"analysis failed ({st.failures}/{spec.failure_limit}): {reasons}"
        return st, actions
    if analysis.verdict == "inconclusive":
        st.inconclusive += 1
        if spec.max_inconclusive and st.inconclusive >= spec.max_inconclusive:
            _roll_back(spec, st, now, f"{st.inconclusive} inconclusive analyses in a row ({reasons})", actions)
        else:
            st.message = f"analysis inconclusive ({st.inconclusive}): {reasons}"
        return st, actions

    st.failures = st.inconclusive = 0
    if st.phase == Phase.AWAITING_APPROVAL:  # still passing: it waits for a person, never promotes itself
        return st, actions
    if st.phase == Phase.SHADOW:
        waited = now - (st.phase_since if st.phase_since is not None else now)
        if waited < spec.shadow.min_duration_s:
            st.message = f"shadow passing; {spec.shadow.min_duration_s - waited:.0f}s of shadow left"
        elif analysis.labelled < spec.shadow.min_labelled:
            if spec.shadow.max_duration_s and waited >= spec.shadow.max_duration_s:
                _roll_back(spec, st, now, f"only {analysis.labelled}/{spec.shadow.min_labelled} labelled "
                                          f"outcomes after {waited:.0f}s of shadow", actions)
            else:
                st.message = (f"shadow passing; waiting for labelled outcomes "
                              f"({analysis.labelled}/{spec.shadow.min_labelled})")
        else:
            _to_canary_or_promote(spec, st, now, f"shadow passed after {waited:.0f}s", actions)
        return st, actions
    # Canary
    weights = spec.canary_weights
    nxt = st.step_index + 1
    if nxt >= len(weights):
        _promote_or_await(spec, st, now, f"canary passed at {st.weight}%", actions)
    elif analysis.clearly_better:  # a clear winner: the remaining steps would only delay it (analysis docstring)
        why = next(c.reason for c in analysis.checks if c.name == "superiority")
        _promote_or_await(spec, st, now, f"canary passed at {st.weight}% and the candidate is clearly better "
                                         f"({why}); the remaining steps skipped", actions)
    else:
        prev = st.weight
        _enter(st, Phase.CANARY, now, f"canary passed at {prev}%; now {weights[nxt]}%",
               weight=weights[nxt], step_index=nxt)
        actions += [SetWeight(weights[nxt]), Event(st.message)]
    return st, actions


def _watch(spec: RolloutSpec, st: RolloutStatus, analysis: AnalysisResult | None, now: float,
           action: ManualAction | None) -> tuple[RolloutStatus, list[Action]]:
    actions: list[Action] = []
    if action == "rollback":
        _revert(spec, st, now, "manual rollback during the watch", actions, kill=False)
        return st, actions
    if action == "promote":
        _enter(st, Phase.PROMOTED, now, f"promoted {spec.candidate}: watch ended by hand", weight=0)
        return st, [SetShadow(None), RemoveCanary(), Event(st.message)]
    if analysis is not None:
        st.last_analysis_at = now
        rec = analysis.to_dict() | {"at": now, "phase": st.phase.value, "weight": 0}
        st.analyses = [*st.analyses, rec][-MAX_ANALYSES:]
        reasons = "; ".join(analysis.reasons) or analysis.verdict
        if analysis.verdict == "fail":
            kill = kill_switch_needed(analysis)
            _revert(spec, st, now, f"guard: {reasons}", actions, kill=kill)
            return st, actions
        st.message = f"watching {spec.candidate}: {reasons}"
    since = st.phase_since if st.phase_since is not None else now
    watched = now - since
    if watched >= spec.watch.duration_s:
        # the watch ends with a passing guard analysis made at or after the window's end (one that saw it
        # all: time spent with no controller running is not time watched); with none by twice the window,
        # the promotion stands on the rollout's own analyses, and the message says so
        guard = [a for a in st.analyses if a.get("phase") == Phase.WATCHING.value]
        vouched = bool(guard) and guard[-1]["verdict"] == "pass" and guard[-1]["at"] >= since + spec.watch.duration_s
        if vouched or watched >= 2 * spec.watch.duration_s:
            why = ("production held against " + spec.baseline + " (" + "; ".join(guard[-1]["reasons"]) + ")"
                   if vouched else "no guard analysis could judge it (" + (
                       "; ".join(guard[-1]["reasons"]) if guard else "none ran") + "): it stands on the rollout's "
                   "analyses")
            _enter(st, Phase.PROMOTED, now, f"promoted {spec.candidate}: {watched:.0f} s watched, {why}", weight=0)
            actions += [SetShadow(None), RemoveCanary(), Event(st.message)]
    return st, actions


def _revert(spec: RolloutSpec, st: RolloutStatus, now: float, why: str, actions: list[Action], *,
            kill: bool) -> None:
    msg = f"reverted to {spec.baseline}: {why}"
    if kill:
        msg += f"; KILL SWITCH ON: {spec.baseline} is under the floor too, every predictor answers flat"
    _enter(st, Phase.REVERTED, now, msg, weight=0)
    st.kill_switch = kill
    actions += _revert_actions(spec)
    if kill:
        actions.append(KillSwitch(True, msg))
    actions.append(Event(st.message))


def validate_status(spec: RolloutSpec, st: RolloutStatus) -> list[str]:
    """Internal consistency of a status; returns the problems (empty when valid)."""
    problems = []
    weights = spec.canary_weights
    if st.phase == Phase.CANARY or (st.phase == Phase.AWAITING_APPROVAL and st.weight > 0):
        if not 0 <= st.step_index < len(weights) or st.weight != weights[st.step_index]:
            problems.append(f"canary weight {st.weight} / step {st.step_index} not in {list(weights)}")
    elif st.weight != 0:
        problems.append(f"weight {st.weight} outside the canary phase")
    if not 0 <= st.weight < 100:
        problems.append(f"canary weight {st.weight} out of range (100% comes only by promotion)")
    if st.failures >= spec.failure_limit and not st.terminal:
        problems.append("failure limit reached without rollback")
    if len(st.analyses) > MAX_ANALYSES:
        problems.append("too many analyses kept")
    if (st.candidate, st.baseline) != (spec.candidate, spec.baseline):
        problems.append("status and spec disagree on the versions")
    return problems


def parse_steps(text: str | Sequence[int]) -> tuple[int, ...]:
    """``"10,25,50,100"`` -> (10, 25, 50, 100)."""
    if isinstance(text, str):
        try:
            return tuple(int(x) for x in text.replace(" ", "").split(",") if x)
        except ValueError:
            raise ValueError(f"steps must be comma-separated integers, got {text!r}") from None
    return tuple(int(x) for x in text)
