"""Drift: injected shifts are found, same-distribution windows stay quiet, reports and registry attachments are
written, and the live-outcome change detectors find a jump without firing on a stationary stream."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import FAST_PARAMS
from tideline.config import DriftConfig, Settings, load_settings
from tideline.data import synthetic_market, write_bars
from tideline.errors import ConfigError, DataError, RegistryError
from tideline.monitoring.drift import (
    ChangePoint,
    DriftResult,
    PerformanceMonitor,
    amplify_moves,
    attachment_stamp,
    check_drift,
    drift_report_html,
    run_drift_check,
)

SHIFTED = {  # column -> (kind, how current differs)
    "a_mean": ("normal", "mean"), "b_scale": ("student_t", "scale"), "c_mean_t": ("student_t", "mean"),
    "d_scale_logn": ("lognormal", "scale"), "e_both": ("normal", "both"), "f_mass": ("discrete", "mass"),
}
STABLE = {"g": "normal", "h": "student_t", "i": "lognormal", "j": "uniform", "k": "discrete", "l": "normal"}


def _draw(rng: np.random.Generator, kind: str, n: int) -> np.ndarray:
    return {"normal": lambda: rng.standard_normal(n), "student_t": lambda: rng.standard_t(4, n),
            "lognormal": lambda: rng.lognormal(0, 0.5, n), "uniform": lambda: rng.uniform(-1, 1, n),
            "discrete": lambda: rng.integers(0, 4, n).astype(float)}[kind]()


def _frame(n: int, seed: int, shifted: bool) -> pd.DataFrame:
    """One sample of the generator; with ``shifted`` the SHIFTED columns move by realistic amounts."""
    rng = np.random.default_rng(seed)
    cols: dict[str, np.ndarray] = {}
    for name, (kind, how) in SHIFTED.items():
        x = _draw(rng, kind, n)
        if shifted:
            if how == "mean":
                x = x + 0.3 * (1.41 if kind == "student_t" else 1.0)  # 0.3 std (t4 has std sqrt(2))
            elif how == "scale":
                x = np.median(x) + (x - np.median(x)) * 1.4
            elif how == "both":
                x = x * 1.25 + 0.2
            else:
                x = np.where(rng.random(n) < 0.2, 3.0, x)  # a fifth of the mass moves to the top level
        cols[name] = x
    for name, kind in STABLE.items():
        cols[name] = _draw(rng, kind, n)
    df = pd.DataFrame(cols)
    df["prediction"] = rng.standard_normal(n) * 0.01
    return df


def test_injected_shifts_are_found_and_a_same_distribution_window_is_quiet():
    cfg = DriftConfig(sample_size=8000)
    ref = _frame(30_000, 0, shifted=False)
    res = check_drift(ref, _frame(30_000, 1, shifted=True), cfg=cfg)
    flagged = {c.column for c in res.columns if c.drifted}
    assert flagged == set(SHIFTED)  # recall 1, no false positive
    assert res.n_reference == res.n_current == 30_000
    assert res.n_reference_sampled == res.n_current_sampled == 8000
    assert res.drifted_share == pytest.approx(len(SHIFTED) / (len(SHIFTED) + len(STABLE)))
    assert res.dataset_drifted
    assert res.column("f_mass").method == "jensenshannon" and res.column("a_mean").method == "wasserstein"
    # mean shift of 0.3 std: the normed Wasserstein distance is about 0.3
    assert res.column("a_mean").score == pytest.approx(0.3, abs=0.05)
    assert [c.column for c in res.drifted_columns()][:1] != []
    assert all(c.severity >= 1 for c in res.drifted_columns())

    same = check_drift(ref, _frame(30_000, 2, shifted=False), cfg=cfg)
    assert same.n_drifted == 0 and not same.dataset_drifted
    assert max(c.score for c in same.columns if c.method == "wasserstein") < 0.05  # far below the 0.1 threshold

    d = res.to_dict()
    assert d["dataset_drifted"] is True and len(d["columns"]) == len(SHIFTED) + len(STABLE)
    json.dumps(d)  # JSON-able
    assert any("DRIFTED" in line for line in res.summary())


def test_sampling_is_seeded_and_bounded():
    ref, cur = _frame(20_000, 0, False), _frame(20_000, 1, True)
    a = check_drift(ref, cur, cfg=DriftConfig(sample_size=3000, seed=5))
    b = check_drift(ref, cur, cfg=DriftConfig(sample_size=3000, seed=5))
    c = check_drift(ref, cur, cfg=DriftConfig(sample_size=3000, seed=6))
    assert [x.score for x in a.columns] == [x.score for x in b.columns]
    assert [x.score for x in a.columns] != [x.score for x in c.columns]
    assert a.n_current_sampled == 3000 and a.n_current == 20_000


def test_prediction_drift_is_reported_apart_from_the_features():
    ref = _frame(10_000, 0, False)
    cur = _frame(10_000, 1, False)
    quiet = check_drift(ref, cur, cfg=DriftConfig())
    assert quiet.prediction is not None and not quiet.prediction.drifted
    cur["prediction"] = cur["prediction"] * 1.8 + 0.005  # the model now predicts bigger, more bullish moves
    loud = check_drift(ref, cur, cfg=DriftConfig())
    assert loud.prediction is not None and loud.prediction.drifted and loud.prediction_drifted
    assert "prediction" not in {c.column for c in loud.columns}
    assert loud.n_drifted == 0 and not loud.dataset_drifted  # features unchanged
    assert check_drift(ref, cur, cfg=DriftConfig(prediction_drift=False)).prediction is None
    assert check_drift(ref, cur.drop(columns="prediction"), cfg=DriftConfig()).prediction is None
    assert check_drift(ref, cur, cfg=DriftConfig(), prediction_column=None).prediction is None


def test_method_follows_sample_size_and_configuration():
    rng = np.random.default_rng(0)
    small_ref = pd.DataFrame({"x": rng.standard_normal(400)})
    # small samples: the KS p-value test (a distance would be too noisy); it still sees a 1-std shift
    res = check_drift(small_ref, pd.DataFrame({"x": rng.standard_normal(300) + 1.0}), cfg=DriftConfig())
    c = res.column("x")
    assert (c.method, c.kind, c.threshold) == ("ks", "p_value", 0.05)
    assert c.drifted and c.score < 1e-6
    res = check_drift(small_ref, pd.DataFrame({"x": rng.standard_normal(300)}), cfg=DriftConfig())
    assert res.column("x").method == "ks" and not res.column("x").drifted
    big = pd.DataFrame({"x": rng.standard_normal(5000)})
    assert check_drift(big, big.copy(), cfg=DriftConfig()).column("x").method == "wasserstein"
    assert check_drift(big, big.copy(), cfg=DriftConfig(min_rows_for_distance=10_000)).column("x").method == "ks"
    # a fixed method and its configured threshold
    cfg = DriftConfig(method="psi", thresholds={"psi": 0.25})
    c = check_drift(big, big + 0.5, cfg=cfg).column("x")
    assert (c.method, c.threshold, c.kind) == ("psi", 0.25, "distance")
    with pytest.raises(ValueError):
        DriftConfig(method="nonsense")
    with pytest.raises(ValueError):
        DriftConfig(thresholds={"nonsense": 0.1})


def test_column_selection_and_errors():
    ref = _frame(2000, 0, False)
    ref["timestamp"] = pd.date_range("2024-01-01", periods=2000, freq="h")
    ref["symbol"] = "A"
    ref["month_sin"] = 0.5
    cur = _frame(2000, 1, False)
    res = check_drift(ref, cur.assign(month_sin=-0.5), cfg=DriftConfig())
    names = {c.column for c in res.columns}
    assert not names & {"timestamp", "symbol", "prediction", "month_sin"}
    assert check_drift(ref, cur, columns=["a_mean", "g"], cfg=DriftConfig()).n_drifted == 0
    with pytest.raises(DataError, match="missing from the current"):
        check_drift(ref, cur.drop(columns=["g"]), cfg=DriftConfig())
    with pytest.raises(DataError, match="missing"):
        check_drift(ref, cur, columns=["nope"], cfg=DriftConfig())
    with pytest.raises(DataError, match="finite values"):
        check_drift(ref, cur.assign(g=np.nan), cfg=DriftConfig())


def test_html_report_is_written_and_matches_the_returned_figures(tmp_path):
    ref, cur = _frame(6000, 0, False), _frame(6000, 1, True)
    cfg = DriftConfig(report_sample_size=2000)
    res = drift_report_html(ref, cur, tmp_path / "sub" / "report.html", cfg=cfg)
    html = (tmp_path / "sub" / "report.html").read_text(encoding="utf-8")
    assert len(html) > 10_000 and "<html" in html.lower()
    assert res.n_reference_sampled == res.n_current_sampled == 2000
    assert {c.column for c in res.columns if c.drifted} == set(SHIFTED)
    # the report's own ValueDrift figures are the ones returned
    rv = res.to_dict()["report_values"]
    for c in [*res.columns, res.prediction]:
        assert c is not None
        assert rv[c.column] == pytest.approx(c.score, rel=1e-9, abs=1e-12)
    res2 = drift_report_html(ref, cur, str(tmp_path / "report2.html"), cfg=cfg)  # a str path works too
    assert (tmp_path / "report2.html").stat().st_size > 10_000 and res2.n_drifted == res.n_drifted


def test_amplify_moves_keeps_bars_valid():
    from tideline.data import validate_bars

    bars = synthetic_market(n_symbols=2, n_bars=300, seed=1)
    amp = amplify_moves(bars, 2.0)
    validate_bars(amp, mode="strict")
    r0 = np.diff(np.log(bars["close"].to_numpy()[:300]))
    r1 = np.diff(np.log(amp["close"].to_numpy()[:300]))
    np.testing.assert_allclose(r1, 2.0 * r0, rtol=1e-9, atol=1e-12)


# ---- end to end against a registry ---------------------------------------------------------------------
def _e2e_settings(tmp_path: Path) -> Settings:
    s = load_settings(registry=(tmp_path / "reg").as_uri())
    return s.model_copy(update={
        "training": s.training.model_copy(update={"params": FAST_PARAMS, "families": ["lightgbm"]}),
        "evaluation": s.evaluation.model_copy(update={"n_splits": 2, "bootstrap_samples": 200}),
        "policy": s.policy.model_copy(update={
            "min_sharpe": -100.0, "min_trades": 0, "max_drawdown": 10.0, "require_significance": False,
            "min_deflated_sharpe": 0.0, "require_baseline": False, "require_folds_agree": False,
            "min_relative_improvement": -100.0, "key_metric_floor": 0.0}),
    })


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A registry whose production model was trained on the first 1500 bars of a calm, stationary market;
    returns (settings, registry, the bars after training (with 100 bars of warm-up before))."""
    from tideline.registry import open_registry
    from tideline.training.cycle import CycleRunner

    tmp = tmp_path_factory.mktemp("drift-e2e")
    s = _e2e_settings(tmp)
    bars = synthetic_market(n_symbols=5, n_bars=2000, seed=3, regime_switch_prob=0.0)
    times = np.sort(bars["timestamp"].unique())
    write_bars(bars[bars["timestamp"] < times[1500]], tmp / "train.parquet")
    reg = open_registry(s.registry_uri())
    res = CycleRunner(s, reg).run(tmp / "train.parquet")
    assert res.promoted_version == reg.aliases()["production"]
    recent = bars[bars["timestamp"] >= times[1400]].reset_index(drop=True)
    return s, reg, recent


def test_run_drift_check_stores_results_and_sees_a_volatility_regime_change(trained):
    s, reg, recent = trained
    prod = reg.aliases()["production"]
    from datetime import UTC, datetime

    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    quiet = run_drift_check(reg, recent, cfg=s.drift, write=True, now=now)
    assert quiet.version == prod
    assert not quiet.result.dataset_drifted
    assert quiet.result.prediction is not None and not quiet.result.prediction.drifted
    assert quiet.attachments == {"json": "drift-20260102T030405Z.json", "html": "drift-20260102T030405Z.html",
                                 "latest": "drift-latest.json"}
    att = reg.attachments(prod)
    assert set(quiet.attachments.values()) <= set(att) and "reference.parquet" in att
    for name in quiet.attachments.values():
        assert re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", name)
    stored = json.loads(reg.get_attachment(prod, "drift-20260102T030405Z.json"))
    assert stored == json.loads(reg.get_attachment(prod, "drift-latest.json"))
    assert stored["version"] == prod and stored["dataset_drifted"] is False
    assert stored["checked_at"].startswith("2026-01-02T03:04:05")
    back = DriftResult.from_dict(stored)
    assert back.columns == quiet.result.columns and back.prediction == quiet.result.prediction
    assert back.dataset_drifted == quiet.result.dataset_drifted
    assert len(stored["columns"]) == quiet.result.to_dict()["n_columns"] > 40
    assert b"<html" in reg.get_attachment(prod, "drift-20260102T030405Z.html")[:2000].lower()
    ref = pd.read_parquet(io.BytesIO(reg.get_attachment(prod, "reference.parquet")))
    assert quiet.result.n_reference == len(ref)

    # without the HTML report (a replay's loop): the same figures, stored as JSON only
    later = datetime(2026, 1, 2, 3, 5, 5, tzinfo=UTC)
    plain = run_drift_check(reg, recent, cfg=s.drift, write=True, now=later, html=False)
    assert plain.attachments == {"json": "drift-20260102T030505Z.json", "latest": "drift-latest.json"}
    assert plain.result.columns == quiet.result.columns and plain.result.prediction == quiet.result.prediction
    assert plain.result.drifted_share == quiet.result.drifted_share
    assert "drift-20260102T030505Z.html" not in reg.attachments(prod)
    assert json.loads(reg.get_attachment(prod, "drift-latest.json"))["checked_at"].startswith("2026-01-02T03:05:05")

    # the same window with every price move 1.8x larger: a volatility regime change
    n_att = len(reg.attachments(prod))
    loud = run_drift_check(reg, amplify_moves(recent, 1.8), cfg=s.drift, write=False)
    assert loud.attachments == {} and len(reg.attachments(prod)) == n_att  # nothing written
    r = loud.result
    assert r.dataset_drifted and r.drifted_share > 0.4
    for col in ("rvol_20", "pvol_20", "gkvol_60", "hl_range", "ret_1"):
        assert r.column(col).drifted, col
    for col in ("vz_20", "dlogv", "cs_rank_ret_1"):  # volume and cross-sectional ranks do not move
        assert not r.column(col).drifted, col
    assert r.prediction is not None and r.prediction.drifted
    # drift detected: the model's feature importance measured again on the loud window, against its own
    ch = r.extra["importance_change"]
    assert "error" not in ch and -1 <= ch["rank_correlation"] <= 1 and len(ch["moved"]) == 5
    assert ch["summary"].startswith("importance rank correlation") and ch["top_before"]
    assert "importance_change" not in quiet.result.extra  # no drift, nothing to explain


def test_missing_reference_is_a_clear_error(trained, tmp_path):
    s, reg, recent = trained
    prod = reg.aliases()["production"]
    mv = reg.get(prod)
    model_dir = reg.fetch(prod, tmp_path / "m")
    bare = reg.register(model_dir, {"family": mv.family, "features": mv.features,
                                    "feature_config": mv.feature_config})
    with pytest.raises(RegistryError, match="no reference.parquet"):
        run_drift_check(reg, recent, version=bare.version, cfg=s.drift)
    assert not any(n.startswith("drift-") for n in reg.attachments(bare.version))


def test_cli_drift_check(trained, tmp_path, capsys):
    from tideline import cli
    s, reg, recent = trained
    path = tmp_path / "recent.csv"
    write_bars(amplify_moves(recent, 1.8), path)
    base = ["--registry", s.registry_uri()]
    code = cli.main([*base, "drift", "check", "--data", str(path), "--no-write", "--json",
                     "--html-out", str(tmp_path / "r.html")])
    o, e = capsys.readouterr()
    assert code == 0, e
    d = json.loads(o)
    assert d["dataset_drifted"] is True and d["attachments"] == {}
    assert (tmp_path / "r.html").stat().st_size > 10_000
    code = cli.main([*base, "drift", "check", "--data", str(path)])
    o, e = capsys.readouterr()
    assert code == 0, e
    assert "DATASET DRIFTED" in o and "rvol_" in o and "drift-latest.json" in o
    code = cli.main([*base, "drift", "check", "--synthetic", "--data", str(path)])
    assert code == 2
    bad = tmp_path / "bad.csv"
    recent.assign(close=-1.0).to_csv(bad, index=False)
    assert cli.main([*base, "drift", "check", "--data", str(bad), "--no-write"]) == 3


# ---- change detection on live outcomes -----------------------------------------------------------------
def test_monitor_finds_a_jump_in_errors_within_a_bounded_delay():
    for seed in range(3):
        rng = np.random.default_rng(100 + seed)
        errors = np.abs(rng.standard_normal(3000)) * 0.01
        errors[1500:] *= 1.6  # the live model's absolute errors grow by 60% at index 1500
        idx = pd.date_range("2025-01-01", periods=3000, freq="h")
        mon = PerformanceMonitor()
        changes = mon.detect(pd.Series(errors, index=idx))
        assert changes, seed
        first = changes[0]
        assert isinstance(first, ChangePoint)
        assert 1500 <= first.index <= 1500 + 250, (seed, first)
        assert first.timestamp == idx[first.index]
        # where it began: much closer to the jump than the detection (the centred cumulative sum's peak)
        assert abs(first.start - idx[1500]) <= pd.Timedelta(hours=60), (seed, first.start)
        assert first.to_dict()["start"] == str(first.start)
        assert first.detector in PerformanceMonitor.DETECTORS
        assert len(changes) == 1  # one change, one alarm (the monitor re-learns its baseline after it)


def test_monitor_stays_quiet_on_a_long_stationary_stream():
    rng = np.random.default_rng(0)
    for x in (rng.standard_normal(30_000) * 0.003 + 0.0002,  # strategy returns
              np.abs(rng.standard_t(5, 30_000))):  # heavy-tailed absolute errors
        mon = PerformanceMonitor()
        assert mon.detect(x) == []
        assert mon.n == 30_000 and mon.calibrated


def test_monitor_update_api_and_each_detector_alone():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.standard_normal(800), rng.standard_normal(800) - 1.0])  # PnL mean drops 1 std
    for det in ("adwin", "page_hinkley"):
        mon = PerformanceMonitor(detectors=[det], warmup=50)
        fired_at = [i for i, v in enumerate(x) if mon.update(v)]
        assert fired_at and 800 <= fired_at[0] <= 950, (det, fired_at)
        assert all(c.detector == det for c in mon.changes)
    mon = PerformanceMonitor(warmup=10)
    assert mon.update(float("nan")) is False and mon.n == 1 and not mon.calibrated
    with pytest.raises(ConfigError):
        PerformanceMonitor(detectors=["cusum9000"])
    with pytest.raises(ConfigError):
        PerformanceMonitor(warmup=1)


def test_attachment_stamp_is_utc():
    from datetime import datetime, timedelta, timezone

    t = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone(timedelta(hours=2)))
    assert attachment_stamp(t) == "20260301T100000Z"
    assert attachment_stamp(datetime(2026, 3, 1, 12, 0, 0)) == "20260301T120000Z"
