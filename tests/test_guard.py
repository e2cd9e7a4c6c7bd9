"""The guard after a promotion: the paired e-process, the floors, the kill switch, and the machine's Watching /
Reverted phases driven by a real controller against a registry."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tideline.clock import FakeClock
from tideline.monitoring.outcomes import LiveOutcomes
from tideline.registry import Registry, Status
from tideline.registry.signing import Signing
from tideline.rollout import machine as m
from tideline.rollout.analysis import MetricsSnapshot, SeriesMetrics, Thresholds
from tideline.rollout.backends import RegistryOps
from tideline.rollout.controller import RolloutController, create_rollout, load_rollout
from tideline.rollout.guard import (
    WatchOutcomes,
    WatchSpec,
    e_process,
    guard_analyze,
    kill_switch_needed,
    per_bar_differences,
)
from tideline.store import FileStore

THR = Thresholds(min_requests=20)
OK_TRAFFIC = SeriesMetrics(requests=100.0)


def outcomes(prod: np.ndarray, prev: np.ndarray, per_bar: int = 4) -> WatchOutcomes:
    times = np.repeat(np.arange(len(prod) // per_bar), per_bar)[: len(prod)]
    return WatchOutcomes(times=times.tolist(), production_hits=prod.tolist(), previous_hits=prev.tolist())


# ---- the test statistic ---------------------------------------------------------------------------------
def test_per_bar_differences_average_a_bars_symbols_in_bar_order() -> None:
    w = WatchOutcomes(times=[2, 1, 1, 2], production_hits=[1, 0, 1, 1], previous_hits=[0, 1, 1, 1])
    assert per_bar_differences(w).tolist() == [0.5, -0.5]  # bar 1: (1-0 + 1-1)/2; bar 2: (0-1 + 1-1)/2


def test_e_process_grows_only_when_previous_is_better() -> None:
    assert e_process([0.0] * 50)[-1] == pytest.approx(1.0)
    assert e_process([-0.5] * 50)[-1] < 0.1
    assert e_process([0.5] * 50)[-1] > 1e3


def test_false_alarm_rate_stays_under_alpha_when_checked_after_every_bar() -> None:
    """Equally good versions, the test looked at after each of 500 bars (anytime-valid): at most alpha of the
    replays ever cross 1/alpha. A fixed-n test peeked at this often would alarm far more."""
    rng = np.random.default_rng(0)
    alpha, reps, bars, syms = 0.05, 400, 500, 4
    alarms = 0
    for _ in range(reps):
        prod = rng.random((bars, syms)) < 0.52
        prev = rng.random((bars, syms)) < 0.52
        d = (prev.astype(float) - prod).mean(axis=1)
        alarms += bool(e_process(d).max() >= 1 / alpha)
    assert alarms / reps <= alpha


def test_a_clearly_worse_production_is_caught_within_a_few_hundred_bars() -> None:
    rng = np.random.default_rng(1)
    bars, syms = 400, 4
    prod = (rng.random((bars, syms)) < 0.42).astype(float).ravel()
    prev = (rng.random((bars, syms)) < 0.58).astype(float).ravel()
    e = e_process(per_bar_differences(outcomes(prod, prev)))
    first = int(np.argmax(e >= 20))
    assert e.max() >= 20 and first < 250


# ---- one guard interval ---------------------------------------------------------------------------------
def test_guard_passes_an_equal_production_and_waits_without_outcomes() -> None:
    spec = WatchSpec(duration_s=100, min_accuracy=0.45, min_outcomes=50)
    same = np.tile([1.0, 0.0, 1.0, 1.0], 50)
    res = guard_analyze(outcomes(same, same), OK_TRAFFIC, spec, THR)
    assert res.verdict == "pass" and res.labelled == 200
    assert guard_analyze(None, OK_TRAFFIC, spec, THR).verdict == "inconclusive"
    assert guard_analyze(WatchOutcomes(), SeriesMetrics(), spec, THR).verdict == "inconclusive"


def test_guard_fails_a_worse_production_on_the_paired_test() -> None:
    rng = np.random.default_rng(2)
    prod = (rng.random(1600) < 0.45).astype(float)
    prev = (rng.random(1600) < 0.60).astype(float)
    res = guard_analyze(outcomes(prod, prev), OK_TRAFFIC, WatchSpec(duration_s=1, min_accuracy=None, min_outcomes=50), THR)
    assert res.verdict == "fail" and "production is worse" in res.reasons[0]
    assert not kill_switch_needed(res)


def test_floor_breach_reverts_and_both_under_the_floor_throws_the_kill_switch() -> None:
    spec = WatchSpec(duration_s=1, min_accuracy=0.45, min_outcomes=40)
    low = np.tile([1.0, 0.0, 0.0, 0.0, 0.0], 20)  # 0.20
    fine = np.tile([1.0, 1.0, 0.0, 0.0, 0.0], 20)  # 0.40: under the floor too
    res = guard_analyze(outcomes(low, fine, per_bar=5), OK_TRAFFIC, spec, THR)
    assert res.verdict == "fail" and kill_switch_needed(res)
    good_prev = np.tile([1.0, 1.0, 1.0, 0.0, 0.0], 20)  # 0.60
    res = guard_analyze(outcomes(low, good_prev, per_bar=5), OK_TRAFFIC, spec, THR)
    assert res.verdict == "fail" and not kill_switch_needed(res)
    few = guard_analyze(outcomes(low[:20], low[:20], per_bar=5), OK_TRAFFIC, spec, THR)
    assert next(c for c in few.checks if c.name == "production_floor").passed is None


def test_guard_fails_a_production_answering_5xx() -> None:
    same = np.ones(40)
    res = guard_analyze(outcomes(same, same), SeriesMetrics(requests=100, errors=5),
                        WatchSpec(duration_s=1, min_accuracy=None, min_outcomes=50), THR)
    assert res.verdict == "fail" and "5xx" in res.reasons[0]


def test_watch_spec_rejects_nonsense() -> None:
    for bad in ({"duration_s": -1}, {"alpha": 0}, {"alpha": 1.5}, {"min_accuracy": 2}, {"min_outcomes": 0}):
        with pytest.raises(ValueError):
            WatchSpec(**bad)


# ---- the machine ----------------------------------------------------------------------------------------
SPEC = m.RolloutSpec(name="t", target="t", candidate="v2", baseline="v1", shadow=m.ShadowSpec(min_duration_s=0),
                     steps=(100,), interval_s=10, watch=WatchSpec(duration_s=100, min_accuracy=None, min_outcomes=50))


def _promoting() -> m.RolloutStatus:
    st, _ = m.advance(SPEC, m.RolloutStatus.initial(SPEC), None, 0.0)
    assert st.phase == m.Phase.PROMOTING
    return st


def _fail_result() -> Any:
    rng = np.random.default_rng(3)
    return guard_analyze(outcomes((rng.random(1600) < 0.4).astype(float), (rng.random(1600) < 0.6).astype(float)),
                         OK_TRAFFIC, SPEC.watch, THR)


def test_promotion_is_watched_with_previous_in_shadow_then_promoted() -> None:
    st, actions = m.advance(SPEC, _promoting(), None, 1.0)
    assert st.phase == m.Phase.WATCHING and m.SetShadow("v1") in actions
    assert m.desired_actions(SPEC, st) == [m.SetShadow("v1")]
    st2, actions = m.advance(SPEC, st, None, 50.0)
    assert st2.phase == m.Phase.WATCHING and actions == []
    # the window is over, but only a guard analysis made after it may end the watch
    st3, actions = m.advance(SPEC, st2, None, 101.0)
    assert st3.phase == m.Phase.WATCHING and actions == []
    same = np.tile([1.0, 0.0, 1.0, 1.0], 50)
    ok = guard_analyze(outcomes(same, same), OK_TRAFFIC, SPEC.watch, THR)
    st4, actions = m.advance(SPEC, st3, ok, 102.0)
    assert st4.phase == m.Phase.PROMOTED and actions[:2] == [m.SetShadow(None), m.RemoveCanary()]
    assert "production held against v1" in st4.message
    assert m.desired_actions(SPEC, st4) == [m.SetShadow(None), m.RemoveCanary()]
    # with nothing to judge by twice the window, the promotion stands on the rollout's analyses, and says so
    st5, _ = m.advance(SPEC, st3, None, 202.0)
    assert st5.phase == m.Phase.PROMOTED and "no guard analysis could judge it" in st5.message


def test_a_failed_guard_analysis_reverts_to_previous() -> None:
    st, _ = m.advance(SPEC, _promoting(), None, 1.0)
    st, actions = m.advance(SPEC, st, _fail_result(), 20.0)
    assert st.phase == m.Phase.REVERTED and st.terminal and "reverted to v1: guard:" in st.message
    kinds = [type(a).__name__ for a in actions]
    assert kinds == ["SetShadow", "DeployCanary", "PromoteInRegistry", "SetActive", "RetireInRegistry", "Event"]
    assert m.PromoteInRegistry("v1", "v2") in actions and not st.kill_switch


def test_manual_rollback_during_the_watch_reverts_and_manual_promote_ends_it() -> None:
    st, _ = m.advance(SPEC, _promoting(), None, 1.0)
    back, _ = m.advance(SPEC, st, None, 2.0, "rollback")
    assert back.phase == m.Phase.REVERTED and "manual rollback" in back.message
    done, actions = m.advance(SPEC, st, None, 2.0, "promote")
    assert done.phase == m.Phase.PROMOTED and m.RemoveCanary() in actions


def test_without_a_watch_promoting_goes_straight_to_promoted() -> None:
    spec = m.RolloutSpec(name="t", target="t", candidate="v2", baseline="v1", shadow=m.ShadowSpec(min_duration_s=0),
                         steps=(100,), interval_s=10, watch=WatchSpec(duration_s=0))
    st, _ = m.advance(spec, m.RolloutStatus.initial(spec), None, 0.0)
    st, _ = m.advance(spec, st, None, 1.0)
    assert st.phase == m.Phase.PROMOTED


def test_spec_with_a_watch_round_trips() -> None:
    assert m.RolloutSpec.from_dict(SPEC.to_dict()) == SPEC


# ---- a real controller, a real registry ---------------------------------------------------------------
class WatchBackend(RegistryOps):
    """Serving as a record of what was asked; outcomes from ``self.watch``."""

    def __init__(self, registry: Registry) -> None:
        super().__init__(registry)
        self.world: dict[str, Any] = {"active": "v1", "shadow": None, "canary": None}
        self.watch: WatchOutcomes | None = None
        self.requests = 0.0

    def set_weight(self, percent: int) -> None:
        pass

    def set_shadow(self, version: str | None) -> None:
        self.world["shadow"] = version

    def deploy_canary(self, version: str) -> None:
        self.world["canary"] = version

    def remove_canary(self) -> None:
        self.world["canary"] = None

    def set_active(self, version: str) -> None:
        self.world.update(active=version, canary=None, shadow=None)

    def read_metrics(self) -> MetricsSnapshot:
        self.requests += 100
        return MetricsSnapshot({(self.world["active"], "active"): SeriesMetrics(requests=self.requests)})

    def candidate_up(self, version: str) -> bool | None:
        return True

    def read_outcomes(self, candidate: str, baseline: str) -> LiveOutcomes:
        return LiveOutcomes(watch=self.watch)

    def read_paired_predictions(self, candidate: str) -> None:
        return None


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    reg = Registry(FileStore(tmp_path / "reg"), signing=Signing.off())
    art = tmp_path / "art"
    art.mkdir()
    (art / "model.json").write_text("{}")
    for _ in range(2):
        reg.register(art, {"family": "lightgbm"})
    reg.promote("v1", reason="start")
    return reg


def _run(registry: Registry, backend: WatchBackend, on_sleep: Any = None, spec: m.RolloutSpec = SPEC
         ) -> m.RolloutStatus:
    clock = FakeClock(1000.0, on_sleep)
    create_rollout(registry.store, spec, clock.now())
    return RolloutController("t", backend, registry.store, clock).run(max_iterations=40)


def test_controller_reverts_a_promotion_the_guard_rejects(registry: Registry) -> None:
    backend = WatchBackend(registry)
    rng = np.random.default_rng(4)

    def traffic(_s: float) -> None:
        if load_rollout(registry.store, "t")[0].status.phase == m.Phase.WATCHING:
            assert backend.world == {"active": "v2", "shadow": "v1", "canary": None}
            n = 400 if backend.watch is None else len(backend.watch.times) + 400
            backend.watch = outcomes((rng.random(n) < 0.4).astype(float), (rng.random(n) < 0.6).astype(float))

    st = _run(registry, backend, traffic)
    assert st.phase == m.Phase.REVERTED, st.message
    assert registry.aliases()["production"] == "v1" and registry.aliases()["previous"] == "v2"
    assert registry.status("v2") == Status.RETIRED and registry.status("v1") == Status.ACTIVE
    assert backend.world["active"] == "v1" and backend.world["shadow"] is None
    assert registry.kill_switch() is None
    promotes = [e for e in registry.history() if e.action == "promote"]
    assert [e.version for e in promotes] == ["v1", "v2", "v1"] and "guard" in promotes[-1].reason


def test_controller_throws_the_kill_switch_when_both_fall_under_the_floor(registry: Registry) -> None:
    spec = dataclasses.replace(SPEC, watch=WatchSpec(duration_s=100, min_accuracy=0.45, min_outcomes=40))
    backend = WatchBackend(registry)
    backend.watch = outcomes(np.tile([1.0, 0, 0, 0, 0], 20), np.tile([1.0, 1, 0, 0, 0], 20), per_bar=5)
    st = _run(registry, backend, spec=spec)
    assert st.phase == m.Phase.REVERTED and st.kill_switch and "KILL SWITCH ON" in st.message
    ks = registry.kill_switch()
    assert ks is not None and "KILL SWITCH" in ks.reason
    assert any(e.action == "kill_switch_on" for e in registry.history())
    registry.set_kill_switch(False, reason="fixed by hand")
    assert registry.kill_switch() is None


def test_controller_promotes_when_the_watch_ends_quietly(registry: Registry) -> None:
    backend = WatchBackend(registry)
    same = np.tile([1.0, 0.0, 1.0, 1.0], 30)
    backend.watch = outcomes(same, same)
    st = _run(registry, backend)
    assert st.phase == m.Phase.PROMOTED and "watched" in st.message
    assert registry.aliases()["production"] == "v2"
    assert backend.world == {"active": "v2", "shadow": None, "canary": None}
