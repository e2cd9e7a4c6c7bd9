"""Splits, the costed strategy, metrics, baselines and significance tests."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from tideline.errors import DataError
from tideline.evaluation import (
    Metrics,
    baseline_metrics,
    diebold_mariano,
    evaluate_predictions,
    holdout_split,
    infer_periods_per_year,
    paired_bootstrap_test,
    purged_walk_forward_splits,
    regime_metrics,
    strategy_returns,
    volatility_regimes,
)


def panel_times(n_times: int = 100, n_symbols: int = 3) -> np.ndarray:
    """Row timestamps of a (timestamp, symbol)-sorted panel."""
    ts = pd.date_range("2022-01-03", periods=n_times, freq="1h").to_numpy()
    return np.repeat(ts, n_symbols)


def tiny_meta(n_times: int, symbols: tuple[str, ...] = ("A", "B")) -> pd.DataFrame:
    ts = pd.date_range("2022-01-03", periods=n_times, freq="1D")
    return pd.DataFrame(
        {"timestamp": np.repeat(ts.to_numpy(), len(symbols)), "symbol": list(symbols) * n_times}
    )


# ----------------------------------------------------------------------------------------------- splits


@pytest.mark.parametrize("horizon,embargo", [(1, 0), (5, 2)])
def test_walk_forward_purged_ordered_contiguous(horizon: int, embargo: int) -> None:
    ts = panel_times(100, 3)
    uniq = np.unique(ts)
    splits = purged_walk_forward_splits(ts, n_splits=4, horizon=horizon, embargo=embargo)
    assert len(splits) == 4
    prev_end = None
    for sp in splits:
        test_t = np.unique(ts[sp.test_idx])
        train_t = np.unique(ts[sp.train_idx])
        start = int(np.searchsorted(uniq, test_t[0]))
        end = int(np.searchsorted(uniq, test_t[-1]))
        assert len(test_t) == end - start + 1  # contiguous block of unique times
        assert len(sp.test_idx) == 3 * len(test_t)  # every symbol of those times
        if prev_end is not None:
            assert start == prev_end + 1  # blocks follow each other in order
        prev_end = end
        assert train_t.max() < test_t.min()
        last_train = int(np.searchsorted(uniq, train_t.max()))
        assert start - last_train == horizon + embargo + 1  # exactly the purge removed
        assert train_t.min() == uniq[0]  # expanding window
    assert prev_end == len(uniq) - 1


def test_walk_forward_too_little_data() -> None:
    with pytest.raises(DataError):
        purged_walk_forward_splits(panel_times(8, 2), n_splits=4, horizon=3)
    with pytest.raises(DataError):
        purged_walk_forward_splits(panel_times(3, 2), n_splits=4, horizon=0)


def test_holdout_split_purge() -> None:
    ts = panel_times(100, 2)
    dev, hold = holdout_split(ts, 0.2, horizon=3, embargo=1)
    uniq = np.unique(ts)
    assert np.array_equal(np.unique(ts[hold]), uniq[80:])
    assert np.array_equal(np.unique(ts[dev]), uniq[: 80 - 4])
    assert len(np.intersect1d(dev, hold)) == 0
    with pytest.raises(DataError):
        holdout_split(panel_times(5, 2), 0.5, horizon=3)


# --------------------------------------------------------------------------------------------- strategy


def test_strategy_returns_hand_computed() -> None:
    meta = tiny_meta(3)  # rows: (t0,A) (t0,B) (t1,A) (t1,B) (t2,A) (t2,B)
    pred = np.array([1.0, -1.0, 1.0, 1.0, 0.0, 1.0])
    nr = np.array([0.01, 0.02, -0.01, 0.03, 0.05, -0.02])
    gross = strategy_returns(pred, nr, meta, cost_bps=0.0)
    np.testing.assert_allclose(gross.to_numpy(), [(0.01 - 0.02) / 2, (-0.01 + 0.03) / 2, (0 - 0.02) / 2])
    assert gross.index.is_monotonic_increasing and len(gross) == 3
    net = strategy_returns(pred, nr, meta, cost_bps=10.0)
    turnover = np.array([(1 + 1) / 2, (0 + 2) / 2, (1 + 0) / 2])  # start flat; B flips; A exits
    np.testing.assert_allclose(gross.to_numpy() - net.to_numpy(), 10.0 / 1e4 * turnover)
    # row order of the input does not matter
    perm = np.array([5, 0, 3, 1, 4, 2])
    net2 = strategy_returns(pred[perm], nr[perm], meta.iloc[perm].reset_index(drop=True), cost_bps=10.0)
    pd.testing.assert_series_equal(net, net2)


def test_metrics_perfect_predictor_and_costs() -> None:
    rng = np.random.default_rng(0)
    meta = tiny_meta(200, ("A", "B", "C"))
    y = rng.normal(0, 0.01, len(meta))
    m0 = evaluate_predictions(y, y, y, meta, cost_bps=0.0, periods_per_year=252)
    assert m0.directional_accuracy == 1.0 and m0.hit_rate == 1.0 and m0.rmse == 0.0
    assert m0.ic == pytest.approx(1.0)
    assert m0.win_rate == 1.0 and m0.max_drawdown == 0.0 and m0.profit_factor == 99.0 and m0.sortino == 99.0
    m5 = evaluate_predictions(y, y, y, meta, cost_bps=5.0, periods_per_year=252)
    gross = strategy_returns(y, y, meta, 0.0).to_numpy()
    net = strategy_returns(y, y, meta, 5.0).to_numpy()
    assert (gross - net).sum() == pytest.approx(5e-4 * m5.turnover * m5.n_obs)
    assert m5.total_return == pytest.approx(math.expm1(net.sum()))
    assert m5.total_return < m0.total_return and m5.n_obs == 200 and m5.cost_bps == 5.0
    assert m5.n_trades >= 3
    assert Metrics.from_dict(m5.to_dict()) == m5


@pytest.mark.parametrize("pred_value", [0.0, 0.3, -1.0])
def test_metrics_constant_predictions_are_finite(pred_value: float) -> None:
    rng = np.random.default_rng(1)
    meta = tiny_meta(50)
    y = rng.normal(0, 0.01, len(meta))
    m = evaluate_predictions(np.full(len(meta), pred_value), y, y, meta, cost_bps=1.0, periods_per_year=252)
    d = m.to_dict()
    assert all(math.isfinite(v) for v in d.values())
    assert m.ic == 0.0
    if pred_value == 0.0:
        assert m.n_trades == 0 and m.turnover == 0.0 and m.sharpe == 0.0 and m.directional_accuracy == 0.0
    else:
        assert m.n_trades == 2  # one entry per symbol


def test_metrics_tiny_and_empty_samples() -> None:
    meta = tiny_meta(1, ("A",))
    one, zero = np.array([0.1]), np.array([0.0])
    m = evaluate_predictions(one, zero, zero, meta, cost_bps=1.0, periods_per_year=252)
    assert all(math.isfinite(v) for v in m.to_dict().values())
    none = np.array([])
    empty = evaluate_predictions(none, none, none, tiny_meta(0), cost_bps=1.0, periods_per_year=252)
    assert empty.n_obs == 0 and empty.sharpe == 0.0


def test_baselines() -> None:
    rng = np.random.default_rng(2)
    meta = tiny_meta(100)
    nr = rng.normal(0.001, 0.01, len(meta))
    last = np.concatenate([[0.0, 0.0], nr[:-2]])  # previous bar's return of the same symbol
    base = baseline_metrics(nr, nr, last, meta, cost_bps=10.0, periods_per_year=252)
    assert set(base) == {"buy_and_hold", "always_long", "last_return_sign"}
    bh = base["buy_and_hold"]
    # long everything, one entry cost: per-period mean of next returns minus one unit of cost in total
    expected = nr.reshape(100, 2).mean(axis=1).sum() - 10.0 / 1e4
    assert bh.total_return == pytest.approx(math.expm1(expected))
    assert bh.n_trades == 2 and bh.directional_accuracy == 0.0
    al = base["always_long"]
    assert al.sharpe == bh.sharpe and al.directional_accuracy == pytest.approx(np.mean(nr > 0))
    mom = base["last_return_sign"]
    assert mom.n_trades > 2 and all(math.isfinite(v) for v in mom.to_dict().values())


def test_infer_periods_per_year() -> None:
    business_days = pd.bdate_range("2022-01-03", periods=300).to_numpy()
    assert infer_periods_per_year(business_days) == pytest.approx(252.0)
    crypto_hours = pd.date_range("2022-01-01", periods=24 * 60, freq="1h").to_numpy()
    assert infer_periods_per_year(crypto_hours) == pytest.approx(24 * 365.0)
    fx_hours = pd.date_range("2022-01-03", periods=24 * 90, freq="1h")
    fx_hours = fx_hours[fx_hours.dayofweek < 5].to_numpy()
    assert infer_periods_per_year(fx_hours) == pytest.approx(24 * 252.0)
    weekly = pd.date_range("2022-01-02", periods=60, freq="7D").to_numpy()
    assert infer_periods_per_year(weekly) == pytest.approx(365.25 / 7)
    assert infer_periods_per_year(np.repeat(business_days, 3)) == pytest.approx(252.0)  # panel rows


# ----------------------------------------------------------------------------------------- significance


def test_bootstrap_and_dm_detect_a_clear_winner() -> None:
    rng = np.random.default_rng(3)
    n = 500
    b = rng.normal(0, 0.01, n)
    a = b + 0.004 + rng.normal(0, 0.005, n)  # a beats b by a wide margin
    boot = paired_bootstrap_test(a, b, n_samples=500, seed=1)
    assert boot.p_value < 0.01 and boot.mean_diff > 0 and boot.ci_low > 0 and boot.n == n
    loss_b = rng.normal(0, 1.0, n) ** 2 + 0.5
    loss_a = loss_b - 0.3 + rng.normal(0, 0.2, n)
    dm = diebold_mariano(loss_a, loss_b, horizon=3)
    assert dm.p_value < 0.01 and dm.statistic < 0 and dm.mean_diff < 0 and dm.ci_high < 0


def test_bootstrap_and_dm_equal_series_are_not_significant() -> None:
    rng = np.random.default_rng(4)
    a = rng.normal(0, 0.01, 400)
    same = paired_bootstrap_test(a, a.copy(), n_samples=300)
    assert same.p_value == 1.0 and same.mean_diff == 0.0
    b = rng.permutation(a)  # same values, so the same mean, in another order
    assert 0.2 < paired_bootstrap_test(a, b, n_samples=500, block_size=5, seed=2).p_value < 0.8
    la = rng.normal(1, 0.3, 400)
    assert 0.3 < diebold_mariano(la, rng.permutation(la), horizon=2).p_value < 0.7
    assert diebold_mariano(la, la.copy()).p_value == 1.0
    # reproducible and finite on tiny inputs
    r1 = paired_bootstrap_test(a, b, n_samples=200, seed=9)
    assert r1 == paired_bootstrap_test(a, b, n_samples=200, seed=9)
    tiny = diebold_mariano(np.array([1.0]), np.array([2.0]))
    assert all(math.isfinite(v) for v in tiny.to_dict().values() if isinstance(v, float))


# ----------------------------------------------------------------------------------- errors, wins, regimes


def test_error_std_bias_and_average_win_and_loss_by_hand() -> None:
    meta = tiny_meta(4, ("A",))
    y = np.array([0.01, -0.02, 0.03, -0.01])
    pred = np.array([0.02, -0.01, 0.01, 0.01])  # errors 0.01, 0.01, -0.02, 0.02
    m = evaluate_predictions(pred, y, y, meta, cost_bps=0.0, periods_per_year=252)
    assert m.bias == pytest.approx(0.005) and m.error_std == pytest.approx(np.std([0.01, 0.01, -0.02, 0.02]))
    # long, short, long, long on 0.01, -0.02, 0.03, -0.01: +0.01, +0.02, +0.03, -0.01
    assert m.avg_win == pytest.approx(0.02) and m.avg_loss == pytest.approx(0.01)
    old = Metrics.from_dict({"sharpe": 1.0})  # a version stored before these figures reads them as 0
    assert (old.error_std, old.bias, old.avg_win, old.avg_loss) == (0.0, 0.0, 0.0, 0.0)


def test_regimes_follow_the_reference_quantiles_and_split_the_rows() -> None:
    ref = np.linspace(0.01, 0.02, 101)  # 10% quantile 0.011, 90% quantile 0.019
    vol = np.array([0.005, 0.015, 0.03, 0.011, 0.019, np.inf])
    assert volatility_regimes(vol, ref).tolist() == ["low", "normal", "high", "normal", "normal", "high"]
    assert volatility_regimes(vol, np.array([np.nan])).tolist() == ["normal"] * 6  # no reference: all normal

    rng = np.random.default_rng(0)
    n = 300
    meta = tiny_meta(n, ("A",))
    y = rng.normal(0, 0.01, n)
    regimes = np.array(["low"] * 100 + ["normal"] * 190 + ["high"] * 10, dtype=object)
    pred = np.where(regimes == "low", y, -y)  # right in calm markets, wrong otherwise
    out = regime_metrics(pred, y, y, meta, regimes, cost_bps=1.0, periods_per_year=252)
    assert set(out) == {"low", "normal"}  # 10 high rows are too few to judge
    assert out["low"].n_obs == 100 and out["normal"].n_obs == 190
    assert out["low"].directional_accuracy == 1.0 and out["normal"].directional_accuracy == 0.0
    assert out["low"].sharpe > 0 > out["normal"].sharpe
