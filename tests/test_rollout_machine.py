"""tideline.rollout.machine (pure transitions) and the controller's crash safety on a simulated world.

The property tests drive the REAL ``RolloutController`` over an in-memory store with compare-and-swap and
a simulated traffic world that can "crash" (kill the controller) after any number of applied actions.
After every single action the world must be valid (traffic only on ready models, no 100% canary), and
after every restart the world must converge to exactly what the persisted status says.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tideline.clock import FakeClock
from tideline.errors import AliasConflict
from tideline.monitoring.outcomes import LiveOutcomes
from tideline.rollout import machine as m
from tideline.rollout.analysis import AnalysisResult, MetricsSnapshot
from tideline.rollout.controller import RolloutController, load_rollout, request_action
from tideline.rollout.guard import WatchSpec
from tideline.store import NotFound, PreconditionFailed


def _res(verdict: str, labelled: int = 1000) -> AnalysisResult:
    return AnalysisResult(verdict, [], [f"fake {verdict}"], labelled)  # type: ignore[arg-type]


NO_WATCH = WatchSpec(duration_s=0)  # these tests end at Promoted; the guard's watch has its own tests
SPEC = m.RolloutSpec(watch=NO_WATCH, name="tideline", target="tideline", candidate="v2", baseline="v1",
                     shadow=m.ShadowSpec(min_duration_s=60, min_labelled=50), interval_s=30)


def _kinds(actions: list[m.Action]) -> list[str]:
    return [type(a).__name__ for a in actions if not isinstance(a, m.Event)]


# ---- pure transitions ----------------------------------------------------------------------------------
def test_happy_path_shadow_canary_steps_promote() -> None:
    st0 = m.RolloutStatus.initial(SPEC)
    s, acts = m.advance(SPEC, st0, None, 0.0)
    assert s.phase == m.Phase.SHADOW and _kinds(acts) == ["SetWeight", "MarkInRegistry", "SetShadow"]
    assert acts[2] == m.SetShadow("v2") and st0.phase == m.Phase.PENDING  # input untouched
    s, acts = m.advance(SPEC, s, _res("pass"), 30.0)
    assert s.phase == m.Phase.SHADOW and "shadow left" in s.message and acts == []
    s, acts = m.advance(SPEC, s, _res("pass", labelled=10), 60.0)
    assert s.phase == m.Phase.SHADOW and "labelled" in s.message
    late, _ = m.advance(SPEC, s, _res("pass", labelled=10), 3600.0)  # never enough labels: give up
    assert late.phase == m.Phase.ROLLED_BACK and "10/50 labelled" in late.message
    s, acts = m.advance(SPEC, s, _res("pass"), 90.0)
    assert (s.phase, s.weight, s.step_index) == (m.Phase.CANARY, 10, 0)
    assert _kinds(acts) == ["SetShadow", "MarkInRegistry", "DeployCanary", "SetWeight"]
    weights = []
    for t in (120.0, 150.0):
        s, acts = m.advance(SPEC, s, _res("pass"), t)
        weights.append(s.weight)
    assert weights == [25, 50]
    s, acts = m.advance(SPEC, s, _res("pass"), 180.0)
    assert s.phase == m.Phase.PROMOTING and s.weight == 0
    assert _kinds(acts) == ["SetShadow", "DeployCanary", "PromoteInRegistry", "SetActive"]
    assert m.PromoteInRegistry("v2", "v1") in acts
    s, acts = m.advance(SPEC, s, None, 181.0)
    assert s.phase == m.Phase.PROMOTED and _kinds(acts) == []
    assert len(s.analyses) == 6 and s.analyses[-1]["weight"] == 50
    # terminal phases are absorbing
    for action in (None, "promote", "rollback"):
        s2, acts = m.advance(SPEC, s, _res("fail"), 200.0, action)  # type: ignore[arg-type]
        assert s2 == s and acts == []


def test_a_clearly_better_candidate_skips_the_remaining_canary_steps() -> None:
    from tideline.rollout.analysis import Check

    def better(passed: bool | None) -> AnalysisResult:
        sup = Check("superiority", 40.0 if passed else 3.0, 20.0, passed, "sequential test: e-value ...")
        return AnalysisResult("pass", [sup], ["fake pass"], 1000)

    s, _ = m.advance(SPEC, m.RolloutStatus.initial(SPEC), None, 0.0)
    s, _ = m.advance(SPEC, s, better(True), 60.0)  # shadow: the traffic checks under real load come first
    assert (s.phase, s.weight) == (m.Phase.CANARY, 10)
    close, _ = m.advance(SPEC, s, better(None), 90.0)  # a close call walks the steps
    assert (close.phase, close.weight) == (m.Phase.CANARY, 25)
    s, acts = m.advance(SPEC, s, better(True), 90.0)
    assert s.phase == m.Phase.PROMOTING and "clearly better" in s.message and "remaining steps skipped" in s.message
    assert m.PromoteInRegistry("v2", "v1") in acts
    # a failed interval is never clearly better (AnalysisResult.clearly_better needs a pass)
    failed = AnalysisResult("fail", [m_check := better(True).checks[0]], ["5xx"], 1000)
    assert m_check.passed and not failed.clearly_better


def test_consecutive_failures_roll_back_and_a_pass_resets_them() -> None:
    s, _ = m.advance(SPEC, m.RolloutStatus.initial(SPEC), None, 0.0)
    s, _ = m.advance(SPEC, s, _res("fail"), 30.0)
    assert s.phase == m.Phase.SHADOW and s.failures == 1 and "1/2" in s.message
    s, _ = m.advance(SPEC, s, _res("pass"), 40.0)
    assert s.failures == 0
    s, _ = m.advance(SPEC, s, _res("fail"), 50.0)
    s, acts = m.advance(SPEC, s, _res("fail"), 60.0)
    assert s.phase == m.Phase.ROLLED_BACK and "2 consecutive failed analyses" in s.message
    assert _kinds(acts) == ["SetWeight", "SetShadow", "RemoveCanary", "RetireInRegistry"]
    assert acts[0] == m.SetWeight(0)  # traffic off before anything else


def test_inconclusive_limit_and_manual_actions() -> None:
    spec = m.RolloutSpec(watch=NO_WATCH, name="t", target="t", candidate="v2", baseline="v1", max_inconclusive=3,
                         shadow=m.ShadowSpec(0, 0))
    s, acts = m.advance(spec, m.RolloutStatus.initial(spec), None, 0.0)
    assert s.phase == m.Phase.CANARY and s.weight == 10  # shadow skipped
    for i in range(2):
        s, _ = m.advance(spec, s, _res("inconclusive"), 30.0 * (i + 1))
        assert s.phase == m.Phase.CANARY and s.inconclusive == i + 1 and s.failures == 0
    s, _ = m.advance(spec, s, _res("inconclusive"), 90.0)
    assert s.phase == m.Phase.ROLLED_BACK and "inconclusive" in s.message
    # manual promote straight from shadow deploys the candidate before promoting it
    s, _ = m.advance(SPEC, m.RolloutStatus.initial(SPEC), None, 0.0)
    s, acts = m.advance(SPEC, s, None, 5.0, "promote")
    assert s.phase == m.Phase.PROMOTING and "manual promotion" in s.message
    assert _kinds(acts).index("DeployCanary") < _kinds(acts).index("SetActive")
    s, acts = m.advance(SPEC, m.RolloutStatus.initial(SPEC), None, 0.0, "rollback")
    assert s.phase == m.Phase.ROLLED_BACK and "manual rollback" in s.message
    s, acts = m.advance(SPEC, m.RolloutStatus.initial(SPEC), None, 0.0, error="production moved")
    assert s.phase == m.Phase.FAILED and _kinds(acts)[0] == "SetWeight"


def test_steps_100_only_promotes_right_after_shadow_and_spec_validation() -> None:
    spec = m.RolloutSpec(watch=NO_WATCH, name="t", target="t", candidate="v2", baseline="v1", steps=(100,),
                         shadow=m.ShadowSpec(10, 0))
    s, _ = m.advance(spec, m.RolloutStatus.initial(spec), None, 0.0)
    s, _ = m.advance(spec, s, _res("pass"), 30.0)
    assert s.phase == m.Phase.PROMOTING
    for bad in ({"steps": (50, 10)}, {"steps": (0, 50)}, {"steps": ()}, {"candidate": "v1"},
                {"failure_limit": 0}, {"interval_s": 0}):
        with pytest.raises(ValueError):
            m.RolloutSpec(**{**dict(name="t", target="t", candidate="v2", baseline="v1"), **bad})
    assert m.parse_steps("10, 25,50,100") == (10, 25, 50, 100)
    assert m.RolloutSpec.from_dict(SPEC.to_dict()) == SPEC
    st_ = m.RolloutStatus(phase=m.Phase.CANARY, weight=25, step_index=1, candidate="v2", baseline="v1")
    assert m.RolloutStatus.from_dict(st_.to_dict()) == st_


@given(st.lists(st.tuples(st.sampled_from(["pass", "fail", "inconclusive", None]),
                          st.sampled_from([None, None, None, None, "promote", "rollback"]),
                          st.integers(0, 2000)), max_size=40))
@settings(max_examples=300, deadline=None, derandomize=True, database=None)
def test_random_sequences_keep_the_status_valid(seq: list[tuple[str | None, str | None, int]]) -> None:
    spec = m.RolloutSpec(watch=NO_WATCH, name="t", target="t", candidate="v2", baseline="v1", steps=(5, 50, 100),
                         shadow=m.ShadowSpec(45, 20), max_inconclusive=4)
    s, now = m.RolloutStatus.initial(spec), 0.0
    for verdict, action, labelled in seq:
        now += 30
        before = s
        s, acts = m.advance(spec, s, _res(verdict, labelled) if verdict else None, now, action)  # type: ignore[arg-type]
        assert m.validate_status(spec, s) == []
        if before.terminal:
            assert s == before and acts == []
        if s.phase != before.phase or s.weight != before.weight:
            assert s.generation == before.generation + 1
        sw = [a for a in acts if isinstance(a, m.SetWeight)]
        if s.phase == m.Phase.ROLLED_BACK and before.phase != s.phase:
            assert acts[0] == m.SetWeight(0)
        assert all(a.percent < 100 for a in sw)


@given(st.lists(st.tuples(st.sampled_from(["pass", "fail", "inconclusive", None]),
                          st.sampled_from([None, None, None, "approve", "approve", "promote", "rollback"]),
                          st.integers(0, 2000)), max_size=40),
       st.sampled_from(["rollback", "wait"]), st.sampled_from([(5, 50, 100), (100,)]))
@settings(max_examples=300, deadline=None, derandomize=True, database=None)
def test_random_sequences_with_approval_keep_the_status_valid(seq: list[tuple[str | None, str | None, int]],
                                                              on_timeout: str, steps: tuple[int, ...]) -> None:
    spec = m.RolloutSpec(watch=NO_WATCH, name="t", target="t", candidate="v2", baseline="v1", steps=steps,
                         shadow=m.ShadowSpec(45, 20), max_inconclusive=4,
                         approval=m.ApprovalSpec(required=True, timeout_s=300, on_timeout=on_timeout))  # type: ignore[arg-type]
    s, now = m.RolloutStatus.initial(spec), 0.0
    for verdict, action, labelled in seq:
        now += 30
        before = s
        s, acts = m.advance(spec, s, _res(verdict, labelled) if verdict else None, now, action,  # type: ignore[arg-type]
                            approver="alice")
        assert m.validate_status(spec, s) == []
        if s.phase == m.Phase.PROMOTING and before.phase != m.Phase.PROMOTING and action != "promote":
            assert before.phase == m.Phase.AWAITING_APPROVAL and action == "approve" and s.approved_by == "alice"
        assert all(a.percent < 100 for a in acts if isinstance(a, m.SetWeight))
        assert m.desired_actions(spec, s) is not None


APPROVAL = m.RolloutSpec(watch=NO_WATCH, name="tideline", target="tideline", candidate="v2", baseline="v1",
                         shadow=m.ShadowSpec(min_duration_s=60, min_labelled=50), interval_s=30, steps=(10, 50, 100),
                         approval=m.ApprovalSpec(required=True, timeout_s=600))


def _to_awaiting(spec: m.RolloutSpec) -> m.RolloutStatus:
    s, _ = m.advance(spec, m.RolloutStatus.initial(spec), None, 0.0)
    for t in (90.0, 120.0, 150.0):
        s, _ = m.advance(spec, s, _res("pass"), t)
    return s


def test_a_rollout_that_needs_approval_waits_with_its_traffic_then_promotes_when_approved() -> None:
    s = _to_awaiting(APPROVAL)
    assert (s.phase, s.weight, s.step_index) == (m.Phase.AWAITING_APPROVAL, 50, 1), s.message
    assert "kubectl tideline approve tideline" in s.message
    assert m.desired_actions(APPROVAL, s)[-1] == m.SetWeight(50)  # a restarted controller keeps its traffic
    s, acts = m.advance(APPROVAL, s, _res("pass"), 180.0)  # passing analyses never promote it by themselves
    assert s.phase == m.Phase.AWAITING_APPROVAL and _kinds(acts) == [] and s.analyses[-1]["phase"] == "AwaitingApproval"
    s, acts = m.advance(APPROVAL, s, None, 200.0, "approve", approver="alice")
    assert s.phase == m.Phase.PROMOTING and (s.approved_by, s.approved_at) == ("alice", 200.0)
    assert "approved by alice" in s.message and m.PromoteInRegistry("v2", "v1") in acts
    assert m.RolloutStatus.from_dict(s.to_dict()) == s  # who and when are stored


def test_no_approval_within_the_timeout_rolls_back_or_keeps_waiting() -> None:
    s = _to_awaiting(APPROVAL)
    s2, _ = m.advance(APPROVAL, s, None, 150.0 + 599)
    assert s2.phase == m.Phase.AWAITING_APPROVAL
    s2, acts = m.advance(APPROVAL, s, None, 150.0 + 600)
    assert s2.phase == m.Phase.ROLLED_BACK and "no approval within 600 s" in s2.message
    assert acts[0] == m.SetWeight(0) and m.RollbackInRegistry("v2") in acts
    wait = m.RolloutSpec.from_dict({**APPROVAL.to_dict(), "approval": {"required": True, "timeout_s": 600,
                                                                         "on_timeout": "wait"}})
    s = _to_awaiting(wait)
    s, _ = m.advance(wait, s, None, 150.0 + 5000)
    assert s.phase == m.Phase.AWAITING_APPROVAL and "past its 600 s timeout" in s.message
    s, _ = m.advance(wait, s, None, 150.0 + 5001, "approve", approver="bob")
    assert s.phase == m.Phase.PROMOTING and s.approved_by == "bob"


def test_a_failing_candidate_is_rolled_back_while_it_waits_and_a_stray_approval_changes_nothing() -> None:
    s = _to_awaiting(APPROVAL)
    for t in (180.0, 210.0):
        s, _ = m.advance(APPROVAL, s, _res("fail"), t)
    assert s.phase == m.Phase.ROLLED_BACK and "failed analyses" in s.message
    canary, _ = m.advance(APPROVAL, m.RolloutStatus.initial(APPROVAL), None, 0.0)
    after, acts = m.advance(APPROVAL, canary, None, 10.0, "approve", approver="eve")
    assert after == canary and [a.msg for a in acts if isinstance(a, m.Event)] == [
        "approval by eve ignored: the rollout is Shadow, not awaiting approval"]
    assert m.RolloutSpec.from_dict({k: v for k, v in SPEC.to_dict().items() if k != "approval"}).approval == \
        m.ApprovalSpec()  # a spec stored before approvals existed needs none


# ---- a simulated world + the real controller -------------------------------------------------------------
class Crash(BaseException):
    """The controller process dies (not an Exception: nothing in the controller may swallow it)."""


class MemStore:
    """In-memory Store with the two conditional writes the controller relies on."""

    uri = "mem://"

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, key: str) -> tuple[bytes, str]:
        if key not in self.data:
            raise NotFound(key)
        return self.data[key], hashlib.sha256(self.data[key]).hexdigest()

    def put(self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str:
        if if_none_match and key in self.data:
            raise PreconditionFailed(key)
        if if_match is not None and (key not in self.data or self.get(key)[1] != if_match):
            raise PreconditionFailed(key)
        self.data[key] = data
        return hashlib.sha256(data).hexdigest()

    def list(self, prefix: str) -> list[str]:
        return sorted(k for k in self.data if k.startswith(prefix))


@dataclass
class World:
    """Processes, router and registry as a backend sees them; checks its invariants after every action."""

    baseline: str = "v1"
    procs: dict[str, str | None] = field(default_factory=lambda: {"A": "v1", "B": None})
    router: dict[str, object] = field(default_factory=lambda: {"active": "A", "canary": None, "weight": 0,
                                                               "shadow": None})
    production: str = "v1"
    candidate_alias: str | None = "v2"
    statuses: dict[str, str] = field(default_factory=lambda: {"v1": "ACTIVE", "v2": "CANDIDATE"})
    crash_after: int | None = None
    applied: int = 0
    conflict_on_promote: bool = False
    log: list[str] = field(default_factory=list)

    def _step(self, what: str) -> None:
        if self.crash_after is not None and self.applied >= self.crash_after:
            raise Crash(what)
        self.applied += 1
        self.log.append(what)

    def check(self) -> None:
        r = self.router
        assert self.procs[r["active"]] is not None, "the active route points at no ready model"  # type: ignore[index]
        if r["weight"]:
            assert r["canary"] and self.procs[r["canary"]] is not None, "canary weight without a ready canary"  # type: ignore[index]
        assert 0 <= r["weight"] < 100, "100% canary must come only by promotion"  # type: ignore[operator]
        if r["shadow"]:
            assert self.procs[r["shadow"]] is not None  # type: ignore[index]
        assert self.production in ("v1", "v2")
        assert self.statuses.get(self.production) == "ACTIVE"

    def _slot_of(self, version: str) -> str | None:
        return next((k for k, v in self.procs.items() if v == version), None)

    def _free_slot(self) -> str:
        return "B" if self.router["active"] == "A" else "A"

    # Backend -----------------------------------------------------------------------------------------
    def deploy_canary(self, version: str) -> None:
        self._step(f"deploy {version}")
        if self._slot_of(version) is None:
            self.procs[self._free_slot()] = version
        self.check()

    def set_shadow(self, version: str | None) -> None:
        self._step(f"shadow {version}")
        if version is not None and self._slot_of(version) is None:
            self.procs[self._free_slot()] = version
        self.router["shadow"] = self._slot_of(version) if version else None
        self.check()

    def set_weight(self, percent: int) -> None:
        self._step(f"weight {percent}")
        if percent:
            slot = self._free_slot()
            assert self.procs[slot] is not None, "weight set before the canary was deployed"
            self.router["canary"] = slot
        self.router["weight"] = percent
        self.check()

    def remove_canary(self) -> None:
        self._step("remove canary")
        slot = self._free_slot()
        self.router.update(weight=0, canary=None, shadow=None if self.router["shadow"] == slot else self.router["shadow"])
        self.procs[slot] = None
        self.check()

    def set_active(self, version: str) -> None:
        self._step(f"active {version}")
        slot = self._slot_of(version)
        if slot is None:
            slot = self._free_slot()
            self.procs[slot] = version
        old = self.router["active"]
        self.router.update(active=slot, canary=None, weight=0, shadow=None)
        if old != slot:
            self.procs[old] = None  # type: ignore[index]
        self.check()

    def read_metrics(self) -> MetricsSnapshot:
        return MetricsSnapshot()

    def candidate_up(self, version: str) -> bool | None:
        return None

    def read_outcomes(self, candidate: str, baseline: str) -> LiveOutcomes | None:
        return None

    def read_paired_predictions(self, candidate: str) -> tuple[list[float], list[float]] | None:
        return None

    def promote(self, version: str, *, expected: str, reason: str) -> None:
        self._step(f"promote {version}")
        if self.production == version:
            return
        if self.conflict_on_promote or self.production != expected:
            raise AliasConflict(f"production is {self.production}, expected {expected}")
        self.statuses[self.production] = "RETIRED"
        self.production = version
        self.statuses[version] = "ACTIVE"
        self.candidate_alias = None
        self.check()

    def retire(self, version: str, *, reason: str) -> None:
        self._step(f"retire {version}")
        if self.production != version:
            self.candidate_alias = None
            self.statuses[version] = "RETIRED"
        self.check()

    def mark(self, version: str, status: str) -> None:
        self._step(f"mark {version} {status}")
        if self.production != version:
            self.statuses[version] = status
        self.check()


def _world_matches(w: World, status: m.RolloutStatus) -> None:
    """After convergence the world is exactly what the status says."""
    r = w.router
    p = status.phase
    if p == m.Phase.SHADOW:
        assert r["weight"] == 0 and r["shadow"] and w.procs[r["shadow"]] == "v2" and w.production == "v1"
    elif p == m.Phase.CANARY:
        assert r["weight"] == status.weight and w.procs[r["canary"]] == "v2" and r["shadow"] is None
        assert w.production == "v1"
    elif p in (m.Phase.PROMOTING, m.Phase.PROMOTED):
        assert w.production == "v2" and w.procs[r["active"]] == "v2" and r["weight"] == 0
        assert set(w.procs.values()) == {"v2", None}
    elif p == m.Phase.ROLLED_BACK:
        assert w.production == "v1" and w.procs[r["active"]] == "v1" and r["weight"] == 0
        assert r["shadow"] is None and w.statuses["v2"] == "RETIRED" and w.candidate_alias is None
        assert set(w.procs.values()) == {"v1", None}
    elif p == m.Phase.FAILED:
        assert r["weight"] == 0 and r["shadow"] is None


class ScriptedAnalyzer:
    def __init__(self, verdicts: list[str]) -> None:
        self.verdicts = list(verdicts)

    def __call__(self, inp: object, thr: object) -> AnalysisResult:
        return _res(self.verdicts.pop(0) if self.verdicts else "pass")


CTRL_SPEC = m.RolloutSpec(watch=NO_WATCH, name="tideline", target="tideline", candidate="v2", baseline="v1",
                          shadow=m.ShadowSpec(min_duration_s=30, min_labelled=10), steps=(10, 50, 100),
                          interval_s=30, max_inconclusive=5)


def _drive(verdicts: list[str], crashes: list[int], manual: list[tuple[int, str]], conflict: bool = False,
           ) -> tuple[World, m.RolloutStatus]:
    store, world, clock = MemStore(), World(conflict_on_promote=conflict), FakeClock(0.0)
    analyzer = ScriptedAnalyzer(verdicts)
    crash_iter = iter(crashes)
    manual_at = dict(manual)
    status = None
    for it in range(60):
        if it in manual_at:
            try:
                request_action(store, "tideline", manual_at[it])  # type: ignore[arg-type]
            except Exception:  # noqa: BLE001 - already terminal / not created yet
                pass
        world.crash_after = next(crash_iter, None)
        if world.crash_after is not None:
            world.crash_after += world.applied
        ctrl = RolloutController(CTRL_SPEC, world, store, clock, analyzer, owner=f"c{it}")  # type: ignore[arg-type]
        try:
            status = ctrl.reconcile_once()
        except Crash:
            world.check()
            clock.sleep(100)  # the dead controller's lease (3 intervals) runs out
            continue
        world.crash_after = None
        doc, _ = load_rollout(store, "tideline")
        assert m.validate_status(CTRL_SPEC, doc.status) == []
        if doc.applied_generation >= doc.status.generation:
            _world_matches(world, doc.status)
        if doc.status.terminal and doc.applied_generation >= doc.status.generation:
            break
        clock.sleep(30)
    assert status is not None
    doc, _ = load_rollout(store, "tideline")
    return world, doc.status


@given(verdicts=st.lists(st.sampled_from(["pass", "pass", "fail", "inconclusive"]), max_size=20),
       crashes=st.lists(st.integers(0, 5), max_size=12),
       manual=st.lists(st.tuples(st.integers(0, 30), st.sampled_from(["promote", "rollback"])), max_size=2),
       conflict=st.booleans())
@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
def test_crash_at_any_point_converges_to_a_consistent_end(verdicts: list[str], crashes: list[int],
                                                          manual: list[tuple[int, str]], conflict: bool) -> None:
    world, status = _drive(verdicts, crashes, manual, conflict)
    assert status.terminal, status
    _world_matches(world, status)
    if status.phase == m.Phase.PROMOTED:
        assert world.production == "v2" and not conflict
    else:
        assert world.production == "v1"  # production never moved unless the rollout promoted
    if conflict:
        assert status.phase in (m.Phase.FAILED, m.Phase.ROLLED_BACK)


def test_restart_after_every_single_action_of_a_full_rollout() -> None:
    """Kill the controller after the k-th applied action, for every k of a clean run; each run ends right."""
    clean, status = _drive([], [], [])
    assert status.phase == m.Phase.PROMOTED
    n = len(clean.log)
    assert n > 10
    for k in range(n):
        world, status = _drive([], [k], [])
        assert status.phase == m.Phase.PROMOTED, (k, status.message)
        _world_matches(world, status)
    bad, status = _drive(["pass", "pass", "fail", "fail"], [], [])
    assert status.phase == m.Phase.ROLLED_BACK
    for k in range(len(bad.log)):
        world, status = _drive(["pass", "pass", "fail", "fail"], [k], [])
        assert status.phase == m.Phase.ROLLED_BACK, (k, status.message)
        assert world.production == "v1"


def test_two_controllers_never_both_act() -> None:
    store, world, clock = MemStore(), World(), FakeClock(0.0)
    a = RolloutController(CTRL_SPEC, world, store, clock, ScriptedAnalyzer([]), owner="a")  # type: ignore[arg-type]
    b = RolloutController(CTRL_SPEC, world, store, clock, ScriptedAnalyzer([]), owner="b")  # type: ignore[arg-type]
    assert a.reconcile_once().phase == m.Phase.SHADOW
    applied = world.applied
    assert b.reconcile_once().phase == m.Phase.SHADOW and world.applied == applied  # b sees a's lease
    clock.sleep(30)
    a.reconcile_once()
    assert load_rollout(store, "tideline")[0].owner == "a"
    clock.sleep(200)  # a died: its lease expires and b takes over
    b.reconcile_once()
    assert load_rollout(store, "tideline")[0].owner == "b"


def test_production_moved_meanwhile_fails_the_rollout() -> None:
    world, status = _drive([], [], [], conflict=True)
    assert status.phase == m.Phase.FAILED and "AliasConflict" in status.message
    assert world.router["weight"] == 0 and world.procs[world.router["active"]] == "v1"  # type: ignore[index]


def test_tideline_rollout_approve_records_who_and_the_controller_promotes() -> None:
    """The local path (``tideline rollout approve``): refused while the rollout is not waiting, recorded with who
    once it is, and the next reconcile promotes."""
    from tideline.errors import PolicyError

    spec = m.RolloutSpec.from_dict({**CTRL_SPEC.to_dict(), "approval": {"required": True, "timeout_s": 3600}})
    store, world, clock = MemStore(), World(), FakeClock(0.0)
    analyzer = ScriptedAnalyzer(["pass"] * 20)
    ctrl = RolloutController(spec, world, store, clock, analyzer, owner="c")  # type: ignore[arg-type]
    ctrl.reconcile_once()
    with pytest.raises(PolicyError, match="not awaiting approval: it is Shadow"):
        request_action(store, "tideline", "approve", by="bob")
    for _ in range(10):
        clock.sleep(30)
        if ctrl.reconcile_once().phase == m.Phase.AWAITING_APPROVAL:
            break
    doc = request_action(store, "tideline", "approve", by="bob")
    assert doc.requested_action == "approve:bob"
    clock.sleep(30)
    st_ = ctrl.reconcile_once()
    assert st_.phase in (m.Phase.PROMOTING, m.Phase.PROMOTED) and st_.approved_by == "bob"
    doc, _ = load_rollout(store, "tideline")
    assert any(e["msg"] == "manual approve requested by bob" for e in doc.events)
