"""tideline.rollout.analysis: snapshots from Prometheus text, interval deltas, every check's three outcomes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tideline.rollout.analysis import (
    AnalysisInput,
    AnalysisResult,
    LiveOutcomes,
    MetricsSnapshot,
    SeriesMetrics,
    Thresholds,
    analyze,
    delta,
    js_distance,
    ks_statistic,
    p99_from_histogram,
)

PROM = """\
# HELP tideline_requests_total requests
# TYPE tideline_requests_total counter
tideline_requests_total{model="tideline",version="v1",role="active",code="200"} 990.0
tideline_requests_total{model="tideline",version="v1",role="active",code="500"} 10.0
tideline_requests_total{model="tideline",version="v1",role="active",code="400"} 5.0
tideline_requests_total{model="tideline",version="v2",role="canary",code="200"} 100.0
tideline_requests_total{model="other",version="v9",role="active",code="200"} 7.0
# TYPE tideline_request_duration_seconds histogram
tideline_request_duration_seconds_bucket{model="tideline",version="v1",role="active",le="0.01"} 900.0
tideline_request_duration_seconds_bucket{model="tideline",version="v1",role="active",le="0.1"} 1000.0
tideline_request_duration_seconds_bucket{model="tideline",version="v1",role="active",le="+Inf"} 1005.0
tideline_request_duration_seconds_count{model="tideline",version="v1",role="active"} 1005.0
tideline_request_duration_seconds_sum{model="tideline",version="v1",role="active"} 5.0
# TYPE tideline_model_info gauge
tideline_model_info{version="v1",role="active",ref="production"} 1.0
"""


def _series(requests: float, errors: float = 0.0, fast: float | None = None, le_fast: float = 0.05,
            slow_le: float = 1.0) -> SeriesMetrics:
    """``requests`` timed requests: ``fast`` of them under ``le_fast`` seconds, the rest under ``slow_le``."""
    fast = requests if fast is None else fast
    return SeriesMetrics(requests=requests, errors=errors,
                         buckets={le_fast: fast, slow_le: requests, math.inf: requests},
                         latency_count=requests, latency_sum=0.0)


def test_parse_prometheus_text_per_version_and_role() -> None:
    snap = MetricsSnapshot.parse(PROM, model="tideline")
    a = snap.series[("v1", "active")]
    assert (a.requests, a.errors, a.client_errors) == (1005.0, 10.0, 5.0)
    assert a.buckets == {0.01: 900.0, 0.1: 1000.0, math.inf: 1005.0}
    assert a.latency_count == 1005.0
    assert snap.series[("v2", "canary")].requests == 100.0
    assert ("v9", "active") not in snap.series  # other model filtered out
    assert snap.select("v2").requests == 100.0
    assert MetricsSnapshot.from_dict(snap.to_dict()).series == snap.series


def test_delta_is_the_interval_increase_and_handles_counter_resets() -> None:
    prev = MetricsSnapshot({("v1", "active"): _series(100, 1), ("v2", "canary"): _series(50, 0)})
    cur = MetricsSnapshot({("v1", "active"): _series(160, 4), ("v2", "canary"): _series(10, 2),
                           ("v3", "canary"): _series(5)})
    d = delta(prev, cur)
    assert (d.series[("v1", "active")].requests, d.series[("v1", "active")].errors) == (60, 3)
    # v2 went down: the process restarted, so its whole current count is this interval's increase
    assert (d.series[("v2", "canary")].requests, d.series[("v2", "canary")].errors) == (10, 2)
    assert d.series[("v3", "canary")].requests == 5  # new series
    assert delta(None, cur).series[("v1", "active")].requests == 160


def test_p99_from_histogram_interpolates_like_promql() -> None:
    assert p99_from_histogram({0.1: 50, 0.2: 100, math.inf: 100}) == pytest.approx(0.198)
    assert p99_from_histogram({0.1: 100, math.inf: 100}) == pytest.approx(0.099)
    assert p99_from_histogram({0.1: 10, 1.0: 20, math.inf: 1000}) == 1.0  # in +Inf: largest finite bound
    assert p99_from_histogram({0.1: 0, math.inf: 0}) is None
    assert p99_from_histogram({}) is None


def _check(res: AnalysisResult, name: str):  # noqa: ANN202
    return next(c for c in res.checks if c.name == name)


def test_error_rate_pass_fail_inconclusive() -> None:
    thr = Thresholds(max_error_rate=0.01, min_requests=20)
    ok = analyze(AnalysisInput(_series(1000, 5), _series(1000)), thr)
    assert ok.verdict == "pass" and _check(ok, "error_rate").passed is True
    bad = analyze(AnalysisInput(_series(1000, 50), _series(1000)), thr)
    assert bad.verdict == "fail" and _check(bad, "error_rate").passed is False
    assert "error rate 5.00%" in bad.reasons[0]
    few = analyze(AnalysisInput(_series(5, 5), _series(1000)), thr)
    assert few.verdict == "inconclusive" and _check(few, "error_rate").passed is None


def test_latency_pass_fail_inconclusive() -> None:
    thr = Thresholds(max_p99_latency_ms=250, min_requests=20)
    ok = analyze(AnalysisInput(_series(1000, fast=995), _series(1000)), thr)
    assert _check(ok, "p99_latency_ms").passed is True and ok.verdict == "pass"
    slow = analyze(AnalysisInput(_series(1000, fast=900, slow_le=2.0), _series(1000)), thr)
    c = _check(slow, "p99_latency_ms")
    assert c.passed is False and c.value > 250 and slow.verdict == "fail"
    few = analyze(AnalysisInput(_series(3), _series(1000)), thr)
    assert _check(few, "p99_latency_ms").passed is None


def _outcomes(rng: np.random.Generator, n: int, cand_acc: float, act_acc: float, cand_scale: float = 1.0,
              n_active: int | None = None) -> LiveOutcomes:
    na = n if n_active is None else n_active
    return LiveOutcomes(candidate_errors=rng.normal(0, cand_scale, n), active_errors=rng.normal(0, 1.0, na),
                        candidate_hits=(rng.random(n) < cand_acc).astype(float),
                        active_hits=(rng.random(na) < act_acc).astype(float))


def test_accuracy_and_ks_checks() -> None:
    rng = np.random.default_rng(0)
    thr = Thresholds(accuracy_margin=0.02, max_ks=0.25, min_labelled=50)
    traffic = (_series(1000), _series(1000))
    same = analyze(AnalysisInput(*traffic, outcomes=_outcomes(rng, 4000, 0.55, 0.55)), thr)
    assert same.verdict == "pass" and same.labelled == 4000
    assert _check(same, "directional_accuracy").passed is True and _check(same, "error_ks").passed is True
    worse = analyze(AnalysisInput(*traffic, outcomes=_outcomes(rng, 4000, 0.45, 0.56)), thr)
    acc = _check(worse, "directional_accuracy")
    assert worse.verdict == "fail" and acc.passed is False and acc.value < -0.02
    big_errors = analyze(AnalysisInput(*traffic, outcomes=_outcomes(rng, 4000, 0.55, 0.55, cand_scale=3.0)), thr)
    ks = _check(big_errors, "error_ks")
    assert ks.passed is False and ks.value > 0.25 and big_errors.verdict == "fail"
    # a candidate whose errors are much SMALLER differs too, but is not held against it
    small = analyze(AnalysisInput(*traffic, outcomes=_outcomes(rng, 4000, 0.55, 0.55, cand_scale=0.2)), thr)
    assert _check(small, "error_ks").passed is True and "smaller" in _check(small, "error_ks").reason
    few = analyze(AnalysisInput(*traffic, outcomes=_outcomes(rng, 10, 0.0, 1.0)), thr)
    assert _check(few, "directional_accuracy").passed is None and _check(few, "error_ks").passed is None
    assert few.verdict == "pass" and few.labelled == 10  # outcome checks lacking data never fail a verdict


def test_prediction_divergence_check() -> None:
    rng = np.random.default_rng(1)
    thr = Thresholds(max_prediction_divergence=0.35, min_labelled=50)
    traffic = (_series(1000), _series(1000))
    a = rng.normal(0, 0.01, 2000)
    close = analyze(AnalysisInput(*traffic, paired_predictions=(a + rng.normal(0, 0.001, a.size), a)), thr)
    assert _check(close, "prediction_divergence").passed is True and close.verdict == "pass"
    shifted = analyze(AnalysisInput(*traffic, paired_predictions=(a + 0.03, a)), thr)
    d = _check(shifted, "prediction_divergence")
    assert d.passed is False and d.value > 0.35 and shifted.verdict == "fail"
    nan = analyze(AnalysisInput(*traffic, paired_predictions=(np.full(100, np.nan), a[:100])), thr)
    assert _check(nan, "prediction_divergence").passed is False
    few = analyze(AnalysisInput(*traffic, paired_predictions=(a[:10], a[:10])), thr)
    assert _check(few, "prediction_divergence").passed is None and few.verdict == "pass"
    # a candidate that differs AND is clearly more accurate on realized outcomes (a retrain after the market
    # changed) is not failed for differing; one that differs and is merely as accurate still is
    better = analyze(AnalysisInput(*traffic, paired_predictions=(a + 0.03, a),
                                   outcomes=_outcomes(rng, 2000, 0.66, 0.40)), thr)
    d = _check(better, "prediction_divergence")
    assert d.passed is True and d.value > 0.35 and "more accurate" in d.reason and better.verdict == "pass"
    same = analyze(AnalysisInput(*traffic, paired_predictions=(a + 0.03, a),
                                 outcomes=_outcomes(rng, 2000, 0.55, 0.55)), thr)
    assert _check(same, "prediction_divergence").passed is False and same.verdict == "fail"


def test_unreachable_candidate_fails() -> None:
    res = analyze(AnalysisInput(_series(0), _series(1000), candidate_up=False), Thresholds())
    assert res.verdict == "fail" and "not reachable" in res.reasons[0]


def test_statistics_helpers() -> None:
    assert ks_statistic([1, 2, 3], [1, 2, 3]) == 0.0
    assert ks_statistic([0, 0, 0], [1, 1, 1]) == 1.0
    assert js_distance([1.0] * 10, [1.0] * 10) == 0.0
    assert js_distance(np.arange(100.0), np.arange(100.0) + 1000) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        ks_statistic([], [1])


def test_result_round_trip_and_threshold_validation() -> None:
    res = analyze(AnalysisInput(_series(1000, 50), _series(1000)), Thresholds())
    again = AnalysisResult.from_dict(res.to_dict())
    assert again.verdict == res.verdict and [c.name for c in again.checks] == [c.name for c in res.checks]
    assert Thresholds.from_dict(Thresholds(max_ks=0.3).to_dict()).max_ks == 0.3
    with pytest.raises(ValueError):
        Thresholds(max_error_rate=2)
    with pytest.raises(ValueError):
        Thresholds(min_requests=0)


# ---- ending a canary early for a clear winner: the sequential test --------------------------------------
def _paired(cand_acc: float, act_acc: float, bars: int, symbols: int = 8, seed: int = 0):
    from tideline.monitoring.outcomes import PairedOutcomes

    rng = np.random.default_rng(seed)
    times = np.repeat(np.arange(bars), symbols)
    return PairedOutcomes(times=times.tolist(),
                          candidate_hits=(rng.random(len(times)) < cand_acc).astype(float).tolist(),
                          active_hits=(rng.random(len(times)) < act_acc).astype(float).tolist())


def _traffic() -> SeriesMetrics:
    return SeriesMetrics(requests=100, errors=0, buckets={0.05: 100.0, math.inf: 100.0})


def test_a_clear_winner_is_found_and_a_close_call_is_not() -> None:
    thr = Thresholds(superiority_alpha=0.05, min_labelled=50)
    clear = _paired(0.68, 0.38, bars=60)
    res = analyze(AnalysisInput(_traffic(), _traffic(), LiveOutcomes(paired=clear)), thr)
    sup = next(c for c in res.checks if c.name == "superiority")
    assert res.verdict == "pass" and res.clearly_better and sup.value >= 20, sup.reason
    assert "clearly better" in sup.reason
    close = _paired(0.53, 0.51, bars=40, seed=1)
    res = analyze(AnalysisInput(_traffic(), _traffic(), LiveOutcomes(paired=close)), thr)
    assert res.verdict == "pass" and not res.clearly_better
    # too few pairs: not judged; switched off: no such check at all
    few = _paired(0.9, 0.1, bars=5)
    res = analyze(AnalysisInput(_traffic(), _traffic(), LiveOutcomes(paired=few)), thr)
    assert not res.clearly_better and "only 40 paired outcomes" in next(
        c for c in res.checks if c.name == "superiority").reason
    res = analyze(AnalysisInput(_traffic(), _traffic(), LiveOutcomes(paired=clear)), Thresholds())
    assert not res.clearly_better and all(c.name != "superiority" for c in res.checks)
    # a failing interval is never "clearly better", whatever the outcomes say
    broken = SeriesMetrics(requests=100, errors=50, buckets={0.05: 100.0, math.inf: 100.0})
    res = analyze(AnalysisInput(broken, _traffic(), LiveOutcomes(paired=clear)), thr)
    assert res.verdict == "fail" and not res.clearly_better
    with pytest.raises(ValueError, match="superiority_alpha"):
        Thresholds(superiority_alpha=1.0)


def _looks_cross(d: np.ndarray, alpha: float, every: int, symbols: int = 1) -> bool:
    """Whether the test, looked at after every ``every`` bars, ever finds the candidate better."""
    from tideline.monitoring.outcomes import PairedOutcomes
    from tideline.rollout.analysis import superiority_check

    for end in range(every, len(d) + 1, every):
        # d in [-1, 1] as hits: candidate hit = (1 + d) / 2 weight, active = (1 - d) / 2: their difference is d
        x = d[:end]
        p = PairedOutcomes(times=list(range(end)), candidate_hits=((1 + x) / 2).tolist(),
                           active_hits=((1 - x) / 2).tolist())
        if superiority_check(p, alpha, min_labelled=10).passed:
            return True
    return False


def test_the_sequential_test_keeps_its_false_promotion_bound_when_looked_at_every_interval() -> None:
    """No better candidate, checked every interval: the chance it is ever called better stays under alpha,
    also when the paired differences are autocorrelated (the blocks absorb the dependence); the same
    series without blocks would cross far more often."""
    from tideline.rollout import analysis

    rng = np.random.default_rng(11)
    alpha, runs, bars = 0.05, 300, 200
    crossed = crossed_unblocked = 0
    for _ in range(runs):
        e = rng.normal(0.0, 0.25, bars)
        d = np.empty(bars)
        d[0] = e[0]
        for t in range(1, bars):  # AR(1), phi 0.7: a candidate that is lucky for a while, then unlucky
            d[t] = 0.7 * d[t - 1] + e[t]
        d = np.clip(d, -1.0, 1.0)
        crossed += _looks_cross(d, alpha, every=10)
        ev = analysis.e_process(d)
        crossed_unblocked += bool(len(ev) and ev.max() >= 1 / alpha)
    assert crossed / runs <= alpha + 0.02, crossed
    assert crossed_unblocked > crossed  # what the blocks are for


def test_dependence_block_and_block_means() -> None:
    from tideline.rollout.analysis import block_means, dependence_block

    rng = np.random.default_rng(3)
    assert dependence_block(rng.normal(size=500)) <= 2  # independent steps: about 1
    ar = np.zeros(500)
    for t in range(1, 500):
        ar[t] = 0.8 * ar[t - 1] + rng.normal()
    assert dependence_block(ar) >= 3  # the Newey-West factor with its few lags (the true one is 9)
    assert dependence_block([1.0, 1.0]) == 1 and dependence_block([]) == 1
    assert block_means([1.0, 3.0, 5.0, 7.0, 9.0], 2).tolist() == [2.0, 6.0]
    assert len(block_means([1.0], 3)) == 0


def _paired_net(n_bars: int, cand_edge: float, seed: int = 0, per_bar: int = 4):
    """Paired outcomes on ``n_bars`` bars of ``per_bar`` symbols: both sides' net returns and hits; the candidate
    earns ``cand_edge`` more per prediction on average."""
    from tideline.monitoring.outcomes import PairedOutcomes

    rng = np.random.default_rng(seed)
    n = n_bars * per_bar
    times = np.repeat(np.arange(n_bars), per_bar)
    a = 0.002 * rng.standard_normal(n)
    c = a + cand_edge + 0.002 * rng.standard_normal(n)
    return PairedOutcomes(times=times.tolist(), candidate_hits=(c > 0).astype(float).tolist(),
                          active_hits=(a > 0).astype(float).tolist(), candidate_net=c.tolist(), active_net=a.tolist())


def test_models_whose_outputs_differ_in_kind_are_compared_on_hit_rate_and_net_pnl() -> None:
    """A policy (positions) against a return forecaster: errors and prediction distributions are not compared
    (their scales differ by kind), hit rate and net PnL on the same requests are."""
    paired = _paired_net(200, 0.0)
    rng = np.random.default_rng(1)
    # positions vs returns: "errors" of a position are ~1, a forecaster's ~1e-3: KS would fail on scale alone
    out = LiveOutcomes(candidate_errors=rng.choice([-1.0, 1.0], 800).tolist(),
                       active_errors=(1e-3 * rng.standard_normal(800)).tolist(),
                       candidate_hits=list(paired.candidate_hits), active_hits=list(paired.active_hits),
                       paired=paired, kinds=("position", "return"))
    inp = AnalysisInput(_series(500), _series(500), outcomes=out,
                        paired_predictions=(rng.choice([-1.0, 1.0], 800).tolist(), (1e-3 * rng.standard_normal(800)).tolist()))
    res = analyze(inp, Thresholds(min_labelled=50))
    by = {c.name: c for c in res.checks}
    assert by["error_ks"].passed is None and "not compared: the candidate answers positions" in by["error_ks"].reason
    assert by["prediction_divergence"].passed is None and by["prediction_divergence"].value is None
    assert by["directional_accuracy"].passed is True and by["net_pnl"].passed is True
    assert res.verdict == "pass", res.reasons
    # the same figures between two return forecasters: the KS check does judge them (and fails on the scale)
    same = analyze(AnalysisInput(_series(500), _series(500), outcomes=LiveOutcomes(
        out.candidate_errors, out.active_errors, out.candidate_hits, out.active_hits, paired=paired,
        kinds=("return", "return"))), Thresholds(min_labelled=50))
    assert next(c for c in same.checks if c.name == "error_ks").passed is False


def test_net_pnl_fails_a_significantly_worse_candidate_only() -> None:
    thr = Thresholds(min_labelled=50)

    def pnl(edge: float, seed: int = 0):
        paired = _paired_net(300, edge, seed)
        out = LiveOutcomes(candidate_hits=list(paired.candidate_hits), active_hits=list(paired.active_hits),
                           paired=paired, kinds=("position", "return"))
        return next(c for c in analyze(AnalysisInput(_series(500), _series(500), outcomes=out), thr).checks
                    if c.name == "net_pnl")

    worse = pnl(-0.001)
    assert worse.passed is False and worse.value < -2 and "significantly worse" in worse.reason
    assert pnl(0.001).passed is True and pnl(0.0005).passed is True
    # equal candidates: a false failure in at most a few percent of seeds
    fails = sum(pnl(0.0, seed).passed is False for seed in range(40))
    assert fails <= 4, fails
    few = _paired_net(5, 0.0)
    out = LiveOutcomes(paired=few, kinds=("position", "return"))
    check = next(c for c in analyze(AnalysisInput(_series(500), _series(500), outcomes=out), thr).checks
                 if c.name == "net_pnl")
    assert check.passed is None and "only 20 paired net returns" in check.reason
