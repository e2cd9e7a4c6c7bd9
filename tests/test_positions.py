"""Labels, the one position function and the costs (issue 19, part 2): definitions by hand, no look-ahead,
bad settings, and the same rule wherever a version's predictions become positions (evaluation, registry,
predictor, live outcomes)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import FAST_PARAMS, NO_LUCK_CHECKS
from test_features import _perturb_after, make_bars
from tideline.config import LABELS, FeatureConfig, PositionConfig, load_settings
from tideline.data import synthetic_market, validate_bars
from tideline.errors import ConfigError, DataError
from tideline.evaluation import evaluate_predictions, position_returns, strategy_returns
from tideline.features import build_dataset, compute_labels
from tideline.models import load_model
from tideline.monitoring.feedback import live_metrics, version_scoring
from tideline.positions import PositionRule, fit_position_rule, positions, stored_rule
from tideline.registry import open_registry


# ---- labels -------------------------------------------------------------------------------------------
def test_label_definitions_by_hand() -> None:
    h, w = 2, 5
    bars = make_bars(3, 120, seed=11)
    raw = compute_labels(bars, h)
    assert np.array_equal(raw["target"].to_numpy(), raw["fwd_return"].to_numpy(), equal_nan=True)
    s0 = bars[bars["symbol"] == "S00"]
    logc = np.log(s0["close"].to_numpy())
    r1 = np.concatenate([[np.nan], np.diff(logc)])
    fwd = raw.loc[s0.index, "fwd_return"].to_numpy()
    t = 40  # any bar past the window and before the tail
    past = r1[t - w + 1:t + 1]
    vs = compute_labels(bars, h, "vol_scaled", w).loc[s0.index, "target"].to_numpy()
    assert vs[t] == pytest.approx(fwd[t] / (past.std(ddof=1) * np.sqrt(h)))
    assert np.isnan(vs[: w]).all()  # the window is not full before bar w
    dr = compute_labels(bars, h, "demeaned_rolling", w).loc[s0.index, "target"].to_numpy()
    assert dr[t] == pytest.approx(fwd[t] - h * past.mean())
    cs = compute_labels(bars, h, "demeaned_cross_section")
    by_time = cs.groupby(bars["timestamp"].to_numpy())["target"].sum(min_count=1).dropna()
    np.testing.assert_allclose(by_time.to_numpy(), 0.0, atol=1e-12)
    d = compute_labels(bars, h, "direction")["target"].to_numpy()
    f = raw["fwd_return"].to_numpy()
    assert np.array_equal(d, np.sign(f), equal_nan=True)


@pytest.mark.parametrize("label", LABELS)
def test_every_label_is_free_of_look_ahead(label: str) -> None:
    """A label at t may use bars up to t + h and no further: perturbing every bar after a cutoff leaves the
    labels of bars ending by the cutoff bit-identical."""
    h = 3
    bars = make_bars(3, 220, seed=4)
    cutoff = bars["timestamp"].unique()[150]
    a = compute_labels(bars, h, label, 10)["target"].to_numpy()
    b = compute_labels(_perturb_after(bars, cutoff), h, label, 10)["target"].to_numpy()
    safe = (bars["timestamp"] <= cutoff - pd.Timedelta(hours=h)).to_numpy()
    assert np.array_equal(a[safe].view(np.uint64), b[safe].view(np.uint64))
    assert not np.allclose(a[~safe], b[~safe], equal_nan=True)


def test_nonsensical_label_settings_are_one_line_errors() -> None:
    one = make_bars(1, 200, seed=2)
    with pytest.raises(ConfigError, match=r"features.label=demeaned_cross_section needs two or more symbols; "
                                          r"the data has 1"):
        build_dataset(one, FeatureConfig(label="demeaned_cross_section"))
    with pytest.raises(ConfigError, match="invalid setting features.label"):
        load_settings(features={"label": "tomorrow"})
    with pytest.raises(ConfigError, match=r"positions.vol_window=30 must be one of features.vol_windows"):
        load_settings(positions={"vol_window": 30})


def test_cycle_with_a_nonsensical_label_registers_nothing(tmp_path: Path, capsys, monkeypatch) -> None:
    from tideline.cli import main

    csv = tmp_path / "one.csv"
    validate_bars(synthetic_market(1, 600, seed=1, freq="1D")).clean.to_csv(csv, index=False)
    reg = (tmp_path / "reg").as_uri()
    monkeypatch.setenv("TIDELINE_FEATURES__LABEL", "demeaned_cross_section")
    code = main(["cycle", "--data", str(csv), "--registry", reg])
    o, e = capsys.readouterr()
    assert code != 0
    errors = [ln for ln in e.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "features.label=demeaned_cross_section needs two or more symbols" in errors[0], e
    assert "Traceback" not in o + e
    assert open_registry(reg).list_versions() == []


# ---- the position function ------------------------------------------------------------------------------
def test_zscore_positions_do_not_collapse_to_the_drift() -> None:
    """A model that learnt only the drift predicts about its mean everywhere: sign() holds it long on every
    bar, the z-score rule fitted on its own predictions trades only its rare strong views, both ways."""
    rng = np.random.default_rng(0)
    drift_only = 0.001 + 1e-5 * rng.standard_normal(5000)
    assert positions(drift_only).mean() == 1.0
    rule = fit_position_rule(PositionConfig(rule="zscore", band=1.0), drift_only[:1000], 252)
    pos = positions(drift_only[1000:], rule)
    assert 0.25 < np.abs(pos).mean() < 0.4  # |z| >= 1: about 32% of bars
    assert 0.4 < (pos[pos != 0] > 0).mean() < 0.6
    flat = fit_position_rule(PositionConfig(rule="zscore"), np.full(100, 0.001), 252)
    assert flat.scale == 0 and not positions(drift_only, flat).any()  # never varies: never trades
    with pytest.raises(DataError, match="out-of-sample predictions"):
        fit_position_rule(PositionConfig(rule="zscore"), np.array([0.1]), 252)


def test_volatility_target_sizes_and_caps() -> None:
    rule = fit_position_rule(PositionConfig(vol_target=0.16, max_leverage=2.0), None, 256)
    assert rule.vol_target == pytest.approx(0.01)  # per bar
    pos = positions(np.array([1.0, -1.0, 1.0, 1.0]), rule, np.array([0.02, 0.005, np.nan, 0.0]))
    np.testing.assert_allclose(pos, [0.5, -2.0, 0.0, 0.0])  # capped at 2; unknown volatility: flat
    with pytest.raises(DataError, match="rvol_20"):
        positions(np.ones(2), rule)


def test_slippage_scales_with_volatility_and_turnover() -> None:
    meta = pd.DataFrame({"timestamp": pd.date_range("2024-01-01", periods=4, freq="D"), "symbol": "A"})
    nr = np.array([0.01, -0.02, 0.0, 0.01])
    vol = np.array([0.01, 0.02, 0.01, 0.03])
    pos = np.array([1.0, -1.0, -1.0, 0.5])
    turnover = np.array([1.0, 2.0, 0.0, 1.5])
    net = position_returns(pos, nr, meta, 2.0, vol=vol, slippage_vol=0.1).to_numpy()
    np.testing.assert_allclose(net, pos * nr - turnover * (2e-4 + 0.1 * vol))
    m = evaluate_predictions(pos, nr, nr, meta, cost_bps=2.0, periods_per_year=252, vol=vol, slippage_vol=0.1)
    assert m.exposure == 1.0 and m.long_share == 0.5  # no rule: sign(pred), two longs and two shorts
    with pytest.raises(DataError, match="volatility"):
        strategy_returns(pos, nr, meta, 1.0, slippage_vol=0.1)


def test_stored_rule_round_trip_and_bad_entries() -> None:
    r = PositionRule(rule="zscore", center=0.1, scale=0.2, band=0.5, vol_target=0.01, n_reference=9)
    assert stored_rule(r.to_dict()) == r
    assert stored_rule({}) == PositionRule() and stored_rule(None).rule == "sign"
    with pytest.raises(DataError, match="v7 has an unreadable position rule"):
        stored_rule({"rule": "martingale"}, "v7")


# ---- one rule everywhere: cycle -> registry -> predictor and live outcomes ---------------------------------
@pytest.fixture(scope="module")
def zscore_cycle(tmp_path_factory: pytest.TempPathFactory):
    from tideline.training.cycle import CycleRunner


    root = tmp_path_factory.mktemp("positions")
    s = load_settings(registry=(root / "reg").as_uri(), training={"families": ["lightgbm"], "params": {
        "lightgbm": FAST_PARAMS["lightgbm"]}}, policy=NO_LUCK_CHECKS,
        positions={"rule": "zscore", "band": 0.5, "vol_target": 0.1, "max_leverage": 3.0},
        evaluation={"slippage_vol": 0.05}, features={"label": "vol_scaled"})
    reg = open_registry(s.registry_uri())
    res = CycleRunner(s, reg).run(synthetic={"n_symbols": 4, "n_bars": 1200, "seed": 5})
    return s, reg, res


def test_the_cycle_stores_the_rule_it_evaluated_with(zscore_cycle) -> None:
    s, reg, res = zscore_cycle
    cand = res.candidates[0]
    mv = reg.get(cand.version)
    rule = stored_rule(mv.position)
    assert rule == cand.position and rule.rule == "zscore" and rule.band == 0.5 and rule.n_reference > 0
    assert rule.vol_target == pytest.approx(0.1 / np.sqrt(res.data["periods_per_year"]))
    assert mv.feature_config["label"] == "vol_scaled" and mv.metrics["slippage_vol"] == 0.05
    assert 0 < cand.holdout.exposure < 3 and 0 <= cand.holdout.long_share <= 1
    assert res.to_dict()["candidates"][0]["position"] == rule.to_dict()
    sc = version_scoring(mv)
    assert (sc.label, sc.rule, sc.slippage_vol) == ("vol_scaled", rule, 0.05)


def test_the_predictor_answers_the_stored_rule_positions(zscore_cycle) -> None:
    from tideline.serving.predictor import TidelinePredictor

    s, reg, res = zscore_cycle
    v = res.candidates[0].version
    p = TidelinePredictor("tideline", reg, ref=v)
    p.load()
    ds = build_dataset(validate_bars(synthetic_market(4, 400, seed=9)).clean, s.features)
    cols = list(p.serving.active.columns)
    rows = ds.X[cols].iloc[:50]
    body = {"instances": [{k: float(x) for k, x in r.items()} for r in rows.to_dict("records")]}

    async def ask():
        return await p.predict(await p.preprocess(body))

    out = asyncio.run(ask())
    with __import__("tempfile").TemporaryDirectory() as tmp:
        model = load_model(reg.fetch(v, Path(tmp) / "m"))
    rule = stored_rule(reg.get(v).position)
    want = positions(model.predict_array(rows.to_numpy(np.float32)), rule,
                     rows[rule.vol_column].to_numpy(np.float32).astype(np.float64))
    np.testing.assert_allclose(out["positions"], want, rtol=1e-6)
    size = np.abs(np.asarray(out["positions"]))
    assert ((size > 0) & (size != 1)).any()  # sized to the volatility target, not just signs
    p.stop()


def test_live_outcomes_score_with_the_versions_rule(zscore_cycle) -> None:
    """Live metrics of the same predictions differ when the stored rule differs: they follow the rule."""
    s, reg, res = zscore_cycle
    mv = reg.get(res.candidates[0].version)
    sc = version_scoring(mv)
    bars = validate_bars(synthetic_market(4, 400, seed=9)).clean
    ds = build_dataset(bars, s.features)
    with __import__("tempfile").TemporaryDirectory() as tmp:
        model = load_model(reg.fetch(mv.version, Path(tmp) / "m"))
    pred = model.predict(ds.X)
    log = pd.DataFrame({"time": pd.Timestamp("2025-01-01", tz="UTC"), "request_id": "r", "version": mv.version,
                        "role": "active", "symbol": ds.meta["symbol"].astype(str), "bar_time":
                        pd.to_datetime(ds.meta["timestamp"]).dt.tz_localize("UTC"), "prediction": pred,
                        "feature_hash": "x"})
    joined = sc.join(log, bars)
    ok = joined["status"] == "realized"
    vol = ds.X[sc.rule.vol_column].to_numpy()
    np.testing.assert_allclose(joined["vol"].to_numpy()[ok.to_numpy()], vol[ok.to_numpy()], rtol=1e-5)
    np.testing.assert_allclose(joined["position"].to_numpy(), positions(pred, sc.rule, joined["vol"].to_numpy()))
    np.testing.assert_allclose(joined.loc[ok, "target"].to_numpy(), ds.y[ok.to_numpy()], rtol=1e-9)
    by_rule = live_metrics(joined, cost_bps=1.0, periods_per_year=252, **sc.trading())
    by_sign = live_metrics(joined, cost_bps=1.0, periods_per_year=252)
    a, b = by_rule[(mv.version, "active")], by_sign[(mv.version, "active")]
    assert a.exposure < b.exposure == 1.0 and a.strategy_return != b.strategy_return


def test_the_zscore_state_sees_only_the_training_rows() -> None:
    """The rule's center and scale come from predictions on rows the model was trained up to (its purged inner
    validation), never from the window it is then evaluated on: changing every later row changes nothing."""
    from tideline.training.cycle import make_dataset, plan_windows, position_rule

    s = load_settings(positions={"rule": "zscore"})
    ds = make_dataset(validate_bars(synthetic_market(3, 700, seed=4)).clean, s.features)
    plan = plan_windows(ds, s)

    class Echo:  # predicts a feature: any change of a row shows in its prediction
        def predict(self, X: pd.DataFrame) -> np.ndarray:
            return X["ret_1"].to_numpy(dtype=np.float64)

    before = position_rule(Echo(), ds, plan.dev, s, plan, None)
    ds.X.loc[ds.X.index[plan.hold], "ret_1"] = 1e6
    after = position_rule(Echo(), ds, plan.dev, s, plan, None)
    assert before == after and before.n_reference > 0
    ds.X.loc[ds.X.index[plan.dev[-5:]], "ret_1"] = 1e6  # the last training rows are in its reference
    assert position_rule(Echo(), ds, plan.dev, s, plan, None) != before
