"""Live outcomes: joining the prediction log with realized bars, live metrics, live-metrics.json, the CLI."""

from __future__ import annotations

import io
import json
import math
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from tideline.config import TriggerConfig
from tideline.data import synthetic_market, validate_bars, write_bars
from tideline.errors import ConfigError
from tideline.evaluation import infer_periods_per_year
from tideline.monitoring.feedback import (
    LIVE_METRICS_ATTACHMENT,
    join_outcomes,
    live_metrics,
    outcomes_from_log,
    run_feedback,
)
from tideline.monitoring.predictions import read_predictions
from tideline.registry import ModelVersion, Registry, open_registry
from tideline.triggers import build_context, evaluate

T0 = pd.Timestamp("2024-03-04 00:00:00")  # a Monday
LOGGED = pd.Timestamp("2024-03-10 12:00:00", tz="UTC")
CLOSES = {
    "AAA": [100.0, 101.0, 99.0, 102.0, 102.0, 104.0, 103.0, 105.0, 104.0, 106.0],
    "BBB": [50.0, 49.0, 49.5, 48.0, 48.5, 50.0, 51.0, 50.5, 52.0, 51.0],
}


# ---- helpers ------------------------------------------------------------------------------------------
def tiny_bars() -> pd.DataFrame:
    """2 symbols x 10 hourly bars with hand-picked closes."""
    frames = []
    for sym, closes in CLOSES.items():
        c = np.array(closes)
        frames.append(pd.DataFrame({"timestamp": pd.date_range(T0, periods=10, freq="1h"), "symbol": sym,
                                    "open": c, "high": c * 1.01, "low": c * 0.99, "close": c, "volume": 1e4}))
    return validate_bars(pd.concat(frames, ignore_index=True), mode="strict").clean


def lr(sym: str, t: int, h: int) -> float:
    """Hand-computed forward log return of ``sym`` from bar ``t`` over ``h`` bars."""
    return math.log(CLOSES[sym][t + h] / CLOSES[sym][t])


def pred_rows(items: list[tuple[str, int, float]], *, version: str = "v1", role: str = "active",
              start: pd.Timestamp = LOGGED) -> pd.DataFrame:
    """Log rows for (symbol, bar index, prediction), logged one second apart."""
    return pd.DataFrame({
        "request_id": [uuid.uuid4().hex for _ in items],
        "time": [start + pd.Timedelta(seconds=i) for i in range(len(items))],
        "symbol": [s for s, _, _ in items],
        "bar_time": [T0 + pd.Timedelta(hours=t) for _, t, _ in items],
        "feature_hash": "f" * 16,
        "prediction": [p for _, _, p in items],
        "version": version,
        "role": role,
    })


def write_log(reg: Registry, df: pd.DataFrame) -> list[str]:
    """Store ``df`` in the contract layout: predictions/<YYYY-MM-DD>/<role>-<version>-<uuid>.parquet."""
    keys = []
    day = pd.to_datetime(df["time"], utc=True).dt.strftime("%Y-%m-%d")
    for (d, role, version), part in df.groupby([day, df["role"], df["version"]], sort=True):
        buf = io.BytesIO()
        part.to_parquet(buf, index=False)
        key = f"predictions/{d}/{role}-{version}-{uuid.uuid4().hex}.parquet"
        reg.store.put(key, buf.getvalue())
        keys.append(key)
    return keys


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    return open_registry(f"file://{tmp_path / 'registry'}")


def register(reg: Registry, tmp_path: Path, *, horizon: int = 1, promote: bool = False,
             metrics: dict[str, Any] | None = None) -> ModelVersion:
    art = tmp_path / f"art-{uuid.uuid4().hex[:6]}"
    art.mkdir()
    (art / "model.json").write_text("{}")
    metrics = metrics or {"sharpe": 1.0, "directional_accuracy": 0.55, "cost_bps": 1.0}
    mv = reg.register(art, {"family": "xgboost", "feature_config": {"horizon": horizon}, "metrics": metrics})
    if promote:
        reg.promote(mv.version, reason="test")
    return mv


def market(n_symbols: int = 4, n_bars: int = 300, seed: int = 1) -> pd.DataFrame:
    return validate_bars(synthetic_market(n_symbols=n_symbols, n_bars=n_bars, seed=seed), mode="strict").clean


def forward(bars: pd.DataFrame, h: int) -> np.ndarray:
    """log(close[t+h]/close[t]) per symbol straight from the closes (NaN at each tail), bars' row order."""
    out = np.full(len(bars), np.nan)
    for _, g in bars.groupby("symbol", sort=False):
        c = g["close"].to_numpy()
        idx = g.index.to_numpy()
        out[idx[:-h]] = np.log(c[h:] / c[:-h])
    return out


def model_log(bars: pd.DataFrame, pred: np.ndarray, *, version: str, role: str = "active",
              start: pd.Timestamp = LOGGED) -> pd.DataFrame:
    """One logged prediction per bar, in bar-time order."""
    order = np.lexsort((bars["symbol"].to_numpy(), bars["timestamp"].to_numpy()))
    b = bars.iloc[order]
    return pd.DataFrame({
        "request_id": [uuid.uuid4().hex for _ in range(len(b))],
        "time": start + pd.to_timedelta(np.arange(len(b)), unit="s"),
        "symbol": b["symbol"].to_numpy(), "bar_time": b["timestamp"].to_numpy(),
        "feature_hash": "x", "prediction": np.asarray(pred)[order], "version": version, "role": role,
    })


# ---- join_outcomes --------------------------------------------------------------------------------------
@pytest.mark.parametrize("h", [1, 2])
def test_join_by_hand(h: int) -> None:
    bars = tiny_bars()
    preds = pred_rows([("AAA", 0, 0.01), ("BBB", 3, -0.02), ("AAA", 7, -0.005), ("BBB", 8, 0.03),
                       ("AAA", 9, 0.01)])
    j = join_outcomes(preds, bars, h)
    assert list(j["request_id"]) == list(preds["request_id"])  # the predictions' order
    expect_status = ["realized", "realized", "realized", "realized" if h == 1 else "pending", "pending"]
    assert list(j["status"]) == expect_status
    for i, (sym, t) in enumerate([("AAA", 0), ("BBB", 3), ("AAA", 7), ("BBB", 8), ("AAA", 9)]):
        row = j.iloc[i]
        if t + 1 < 10:
            assert row["next_return"] == pytest.approx(lr(sym, t, 1), abs=1e-15)
        else:
            assert np.isnan(row["next_return"])
        if t + h < 10:
            f = lr(sym, t, h)
            assert row["fwd_return"] == pytest.approx(f, abs=1e-15)
            assert row["error"] == pytest.approx(preds["prediction"].iloc[i] - f, abs=1e-15)
            assert row["hit"] == float(np.sign(preds["prediction"].iloc[i]) == np.sign(f))
            assert row["outcome_time"] == T0 + pd.Timedelta(hours=t + h)
        else:
            assert np.isnan(row["fwd_return"]) and np.isnan(row["error"]) and np.isnan(row["hit"])
            assert pd.isna(row["outcome_time"])
    # AAA predicted up at bar 0: 100 -> 101 (h=1) is a hit, 100 -> 99 (h=2) a miss;
    # BBB predicted down at bar 3: 48 -> 48.5 / 50, a miss either way
    assert j["hit"].iloc[0] == (1.0 if h == 1 else 0.0) and j["hit"].iloc[1] == 0.0
    assert j.attrs["horizon"] == h and j.attrs["n_duplicates"] == 0


def test_unknown_bars_are_counted_not_guessed() -> None:
    bars = tiny_bars()
    preds = pred_rows([("AAA", 2, 0.01), ("AAA", 4, 0.01), ("ZZZ", 2, 0.01), ("BBB", 1, -0.01),
                       ("BBB", 30, 0.02)])
    preds.loc[1, "bar_time"] += pd.Timedelta(minutes=30)  # misaligned: no bar at 04:30
    preds.loc[3, "symbol"] = None  # a request without a symbol
    before = T0 - pd.Timedelta(hours=5)
    preds = pd.concat([preds, pred_rows([("AAA", 0, 0.01)]).assign(bar_time=before)], ignore_index=True)
    j = join_outcomes(preds, bars, 1)
    assert list(j["status"]) == ["realized", "unknown_bar", "unknown_bar", "unknown_bar", "pending",
                                 "unknown_bar"]
    # nothing was guessed for them: no outcome at all
    unknown = j[j["status"] == "unknown_bar"]
    assert unknown[["fwd_return", "next_return", "error", "hit"]].isna().all().all()
    # a bar beyond the data (BBB bar 30) waits for data: pending, no outcome
    assert np.isnan(j["fwd_return"].iloc[4])
    m = live_metrics(j, cost_bps=0.0, periods_per_year=24 * 365)[("v1", "active")]
    assert (m.n, m.n_pending, m.n_unknown_bar) == (1, 1, 4)


def test_duplicates_keep_the_first_by_time() -> None:
    bars = tiny_bars()
    preds = pred_rows([("AAA", 1, 0.5), ("AAA", 1, -0.7), ("BBB", 2, 0.1), ("AAA", 1, 0.9)])
    # the retry logged first (earliest time) sits second in the frame
    preds.loc[1, "time"] = LOGGED - pd.Timedelta(seconds=10)
    preds.loc[3, "role"] = "shadow"  # same bar under another role is not a duplicate
    j = join_outcomes(preds, bars, 1)
    assert j.attrs["n_duplicates"] == 1 and j.attrs["duplicates"] == {("v1", "active"): 1}
    assert len(j) == 3
    active_aaa = j[(j["symbol"] == "AAA") & (j["role"] == "active")]
    assert list(active_aaa["prediction"]) == [-0.7]
    assert sorted(j["role"]) == ["active", "active", "shadow"]
    ms = live_metrics(j, cost_bps=0.0, periods_per_year=252)
    assert ms[("v1", "active")].n == 2 and ms[("v1", "active")].n_duplicates == 1
    assert ms[("v1", "shadow")].n == 1 and ms[("v1", "shadow")].n_duplicates == 0


def test_join_rejects_bad_horizon_and_bad_log() -> None:
    bars = tiny_bars()
    with pytest.raises(ConfigError):
        join_outcomes(pred_rows([("AAA", 1, 0.1)]), bars, 0)
    with pytest.raises(Exception, match="lacks columns"):
        join_outcomes(pred_rows([("AAA", 1, 0.1)]).drop(columns="bar_time"), bars, 1)


# ---- live_metrics ---------------------------------------------------------------------------------------
def test_live_metrics_by_hand() -> None:
    bars = tiny_bars()
    items = [("AAA", 0, 0.01), ("BBB", 0, 0.02), ("AAA", 1, -0.01), ("BBB", 1, -0.03),
             ("AAA", 2, 0.02), ("BBB", 2, -0.01), ("AAA", 9, 0.01)]  # the last is pending
    j = join_outcomes(pred_rows(items), bars, 1)
    cost, ppy = 10.0, 1000.0
    m = live_metrics(j, cost_bps=cost, periods_per_year=ppy)[("v1", "active")]
    real = items[:6]
    f = np.array([lr(s, t, 1) for s, t, _ in real])
    p = np.array([x for _, _, x in real])
    err = p - f
    # realized moves: AAA up, BBB down, AAA down, BBB up, AAA up, BBB down -> hits on rows 0, 2, 4, 5
    assert list(np.sign(f)) == [1, -1, -1, 1, 1, -1] and m.directional_accuracy == pytest.approx(4 / 6)
    assert m.n == 6 and m.n_pending == 1 and m.n_unknown_bar == 0
    assert m.directional_accuracy == pytest.approx(np.mean(np.sign(p) == np.sign(f)))
    assert m.baseline_accuracy == pytest.approx(np.mean(f > 0)) and m.baseline_accuracy == pytest.approx(0.5)
    assert m.mae == pytest.approx(np.mean(np.abs(err)))
    assert m.rmse == pytest.approx(np.sqrt(np.mean(err**2)))
    q = tuple(np.quantile(err, [0.05, 0.5, 0.95]))
    assert (m.error_p05, m.error_p50, m.error_p95) == pytest.approx(q)
    # the strategy by hand: per symbol sign(pred) held one bar, cost per unit turnover, starting flat
    net = []
    prev = {"AAA": 0.0, "BBB": 0.0}
    for t in range(3):
        legs = []
        for s, tt, x in real:
            if tt != t:
                continue
            pos = float(np.sign(x))
            legs.append(pos * lr(s, t, 1) - cost / 1e4 * abs(pos - prev[s]))
            prev[s] = pos
        net.append(np.mean(legs))
    net = np.array(net)
    assert m.strategy_return == pytest.approx(net.sum(), abs=1e-15)
    assert m.total_return == pytest.approx(math.expm1(net.sum()))
    assert m.sharpe == pytest.approx(net.mean() / net.std(ddof=1) * math.sqrt(ppy))
    assert m.n_periods == 3 and m.cost_bps == cost
    assert (m.error_std, m.bias) == pytest.approx((np.std(err), np.mean(err)))
    assert m.avg_win == pytest.approx(net[net > 0].mean() if (net > 0).any() else 0.0)
    assert m.avg_loss == pytest.approx(-net[net < 0].mean() if (net < 0).any() else 0.0)
    assert m.first_bar_time == str(T0) and m.last_bar_time == str(T0 + pd.Timedelta(hours=2))
    d = m.to_dict()
    assert d["n"] == 6 and set(d) >= {"n", "n_pending", "directional_accuracy", "baseline_accuracy", "mae",
                                      "rmse", "error_p05", "error_p50", "error_p95", "strategy_return",
                                      "sharpe"}


def test_live_metrics_on_a_synthetic_market() -> None:
    bars = market(n_symbols=5, n_bars=400, seed=3)
    h = 2
    fwd = forward(bars, h)
    rng = np.random.default_rng(0)
    perfect = np.nan_to_num(fwd, nan=0.001)
    noise = rng.standard_normal(len(bars)) * 0.01
    logs = pd.concat([model_log(bars, perfect, version="v1"),
                      model_log(bars, -perfect, version="v2"),
                      model_log(bars, noise, version="v3")], ignore_index=True)
    j = join_outcomes(logs, bars, h)
    ms = live_metrics(j, cost_bps=1.0, periods_per_year=infer_periods_per_year(bars["timestamp"].to_numpy()))
    good, flipped, rnd = ms[("v1", "active")], ms[("v2", "active")], ms[("v3", "active")]
    n_real = 5 * (400 - h)
    moved = fwd[np.isfinite(fwd)]
    for m in (good, flipped, rnd):
        assert m.n == n_real and m.n_pending == 5 * h and m.n_unknown_bar == 0
        assert m.baseline_accuracy == pytest.approx(np.mean(moved[moved != 0] > 0))
    assert good.directional_accuracy == 1.0 and good.mae == pytest.approx(0.0, abs=1e-15)
    assert flipped.directional_accuracy == 0.0
    assert abs(rnd.directional_accuracy - 0.5) < 0.05
    # the model that knows the future makes money, its mirror image loses it
    assert good.sharpe > 3 and flipped.sharpe < -3 and good.strategy_return > 0 > flipped.strategy_return


# ---- the prediction log ----------------------------------------------------------------------------------
def test_read_predictions_layout_and_bounds(reg: Registry) -> None:
    day1 = pred_rows([("AAA", 1, 0.1), ("BBB", 1, 0.2)], start=pd.Timestamp("2024-03-10 23:59:58", tz="UTC"))
    day2 = pred_rows([("AAA", 2, 0.3)], start=pd.Timestamp("2024-03-11 00:00:01", tz="UTC"), role="canary")
    day2["bar_time"] = day2["bar_time"].dt.tz_localize("UTC").dt.strftime("%Y-%m-%dT%H:%M:%SZ")  # as text
    write_log(reg, day1)
    write_log(reg, day2)
    reg.store.put("predictions/2024-03-11/broken-v1-x.parquet", b"not parquet")
    reg.store.put("predictions/README.txt", b"ignored: outside the layout")
    df = read_predictions(reg)
    assert len(df) == 3 and list(df["prediction"]) == [0.1, 0.2, 0.3]
    assert str(df["time"].dt.tz) == "UTC" and df["bar_time"].dtype == "datetime64[ns]"
    assert df["bar_time"].iloc[2] == T0 + pd.Timedelta(hours=2)
    assert df.attrs["unreadable"] == ["predictions/2024-03-11/broken-v1-x.parquet"]
    only2 = read_predictions(reg, since="2024-03-11T00:00:00Z")
    assert list(only2["prediction"]) == [0.3] and list(only2["role"]) == ["canary"]
    only1 = read_predictions(reg, until=datetime(2024, 3, 11, tzinfo=UTC))
    assert list(only1["prediction"]) == [0.1, 0.2]
    assert len(read_predictions(reg, since="2024-03-12")) == 0
    with pytest.raises(ConfigError):
        read_predictions(reg, since="yesterday-ish")


# ---- run_feedback, the attachment and the decay trigger ----------------------------------------------------
def test_run_feedback_writes_live_metrics_and_the_trigger_reads_them(reg: Registry, tmp_path: Path) -> None:
    bars = market(n_symbols=4, n_bars=300, seed=1)
    good = register(reg, tmp_path, horizon=1, promote=True)
    fwd1 = forward(bars, 1)
    logs = model_log(bars, np.nan_to_num(fwd1, nan=0.001), version=good.version)
    # a retry of the first 10 requests, logged later
    logs = pd.concat([logs, logs.iloc[:10].assign(time=logs["time"].iloc[:10] + pd.Timedelta(minutes=5),
                                                  prediction=-1.0)], ignore_index=True)
    write_log(reg, logs)
    now = datetime(2024, 3, 12, tzinfo=UTC)
    rep = run_feedback(reg, bars, now=now)
    m = rep.versions[good.version]
    assert m.n == 4 * 299 and m.n_pending == 4 and m.n_duplicates == 10
    assert m.directional_accuracy == 1.0 and rep.n_duplicates == 10
    assert rep.attachments == {good.version: LIVE_METRICS_ATTACHMENT}
    assert rep.periods_per_year == infer_periods_per_year(bars["timestamp"].to_numpy())
    assert m.periods_per_year == rep.periods_per_year
    rec = json.loads(reg.get_attachment(good.version, LIVE_METRICS_ATTACHMENT))
    for key in ("n", "directional_accuracy", "baseline_accuracy", "sharpe", "mae", "rmse", "n_pending",
                "error_p05", "error_p50", "error_p95", "strategy_return", "updated_at", "roles", "horizon",
                "change_points"):
        assert key in rec, key
    assert rec["n"] == m.n and rec["updated_at"] == now.isoformat() and rec["horizon"] == 1
    assert rec["roles"]["active"]["n"] == m.n and rec["sharpe"] == pytest.approx(m.sharpe)
    ctx = build_context(reg, now=now)
    assert ctx.live_metrics is not None and ctx.live_metrics["n"] == m.n
    r = evaluate(ctx, TriggerConfig()).result("performance_decay")
    assert not r.fired and r.details["baseline_source"] == "live baseline", r.reason

    # a bad live model in production: the decay rule fires on its record
    bad = register(reg, tmp_path, horizon=3)
    fwd3 = forward(bars, 3)
    write_log(reg, model_log(bars, -np.nan_to_num(fwd3, nan=0.001), version=bad.version, role="canary",
                             start=LOGGED + pd.Timedelta(hours=2)))
    rep = run_feedback(reg, bars, now=now)
    b = rep.versions[bad.version]
    assert rep.horizons == {good.version: 1, bad.version: 3}
    assert b.n == 4 * 297 and b.n_pending == 12 and b.directional_accuracy == 0.0 and b.sharpe < 0
    reg.promote(bad.version, reason="test")
    r = evaluate(build_context(reg, now=now), TriggerConfig()).result("performance_decay")
    assert r.fired and "live Sharpe" in r.reason and "live accuracy 0.000" in r.reason, r.reason
    # too few outcomes to judge: quiet
    strict = TriggerConfig(min_live_samples=5000)
    r = evaluate(build_context(reg, now=now), strict).result("performance_decay")
    assert not r.fired and "live outcomes <" in r.reason


def test_run_feedback_since_no_write_unknown_versions_and_pending_only(reg: Registry, tmp_path: Path) -> None:
    bars = tiny_bars()
    v1 = register(reg, tmp_path, horizon=1)
    early = pred_rows([("AAA", 0, 0.01), ("BBB", 0, 0.01)], version=v1.version,
                      start=pd.Timestamp("2024-03-09 10:00", tz="UTC"))
    late = pred_rows([("BBB", 3, 0.02), ("AAA", 9, 0.01)], version=v1.version,
                     start=pd.Timestamp("2024-03-11 10:00", tz="UTC"))
    ghost = pred_rows([("AAA", 2, 0.01)], version="v99")
    write_log(reg, pd.concat([early, late, ghost], ignore_index=True))
    rep = run_feedback(reg, bars, write=False, now=datetime(2024, 3, 12, tzinfo=UTC))
    assert rep.versions[v1.version].n == 3 and rep.versions[v1.version].n_pending == 1
    assert "v99" in rep.skipped and "v99" not in rep.versions
    assert rep.attachments == {} and LIVE_METRICS_ATTACHMENT not in reg.attachments(v1.version)
    rep = run_feedback(reg, bars, since="2024-03-11", now=datetime(2024, 3, 12, tzinfo=UTC))
    assert rep.n_predictions == 2 and rep.versions[v1.version].n == 1
    assert rep.attachments == {v1.version: LIVE_METRICS_ATTACHMENT}
    # only pending outcomes in the window: the stored record is left as it was
    rep = run_feedback(reg, bars, since="2024-03-11T10:00:00.500Z", now=datetime(2024, 3, 13, tzinfo=UTC))
    assert rep.versions[v1.version].n == 0 and rep.attachments == {}
    rec = json.loads(reg.get_attachment(v1.version, LIVE_METRICS_ATTACHMENT))
    assert rec["n"] == 1 and rec["updated_at"] == datetime(2024, 3, 12, tzinfo=UTC).isoformat()
    assert "1 pending" in rep.summary() and json.loads(json.dumps(rep.to_dict()))["n_pending"] == 1


def test_version_record_spans_roles_once_per_bar(reg: Registry, tmp_path: Path) -> None:
    bars = tiny_bars()
    v1 = register(reg, tmp_path, horizon=1)
    shadow = pred_rows([("AAA", t, 0.01) for t in range(0, 5)], version=v1.version, role="shadow")
    active = pred_rows([("AAA", t, -0.01) for t in range(3, 10)], version=v1.version, role="active",
                       start=LOGGED + pd.Timedelta(hours=1))
    write_log(reg, pd.concat([shadow, active], ignore_index=True))
    rep = run_feedback(reg, bars, now=datetime(2024, 3, 12, tzinfo=UTC))
    assert rep.metrics[(v1.version, "shadow")].n == 5 and rep.metrics[(v1.version, "active")].n == 6
    whole = rep.versions[v1.version]
    # bars 3 and 4 were predicted in both slots: counted once, with the first logged (shadow) prediction
    assert whole.n == 9 and whole.n_pending == 1
    # accuracy over bars that moved (3 -> 4 is flat: 102 -> 102), predicted up on bars 0-4, down on 5-8
    c = CLOSES["AAA"]
    hits = [(c[t + 1] > c[t]) == (t < 5) for t in range(9) if c[t + 1] != c[t]]
    assert len(hits) == 8 and whole.directional_accuracy == pytest.approx(np.mean(hits))
    rec = json.loads(reg.get_attachment(v1.version, LIVE_METRICS_ATTACHMENT))
    assert rec["n"] == 9 and set(rec["roles"]) == {"active", "shadow"} and rec["roles"]["active"]["n"] == 6


def test_change_points_in_live_errors(reg: Registry, tmp_path: Path) -> None:
    bars = market(n_symbols=4, n_bars=600, seed=2)
    steady = register(reg, tmp_path, horizon=1)
    breaks = register(reg, tmp_path, horizon=1)
    fwd = np.nan_to_num(forward(bars, 1), nan=0.0)
    rng = np.random.default_rng(5)
    small = rng.standard_normal(len(bars)) * 0.001
    times = np.sort(bars["timestamp"].unique())
    switch = pd.Timestamp(times[300])
    after = bars["timestamp"].to_numpy() >= switch.to_datetime64()
    big = np.where(after, rng.standard_normal(len(bars)) * 0.05, small)
    write_log(reg, pd.concat([model_log(bars, fwd + small, version=steady.version),
                              model_log(bars, fwd + big, version=breaks.version)], ignore_index=True))
    rep = run_feedback(reg, bars, now=datetime(2024, 3, 12, tzinfo=UTC))
    assert rep.monitored[steady.version] == rep.versions[steady.version].n == 4 * 599
    assert rep.change_points[steady.version] == []
    cps = rep.change_points[breaks.version]
    assert cps and cps[0].timestamp >= switch and cps[0].timestamp <= switch + pd.Timedelta(hours=30)
    rec = json.loads(reg.get_attachment(breaks.version, LIVE_METRICS_ATTACHMENT))
    assert rec["change_points"] and rec["change_points"][0]["detector"] in ("adwin", "page_hinkley")


# ---- CLI --------------------------------------------------------------------------------------------------
def cli_app() -> typer.Typer:
    """The root options of ``tideline`` plus the feedback command (the lead wires it into tideline.cli)."""
    from tideline.cli import root
    from tideline.cli.feedback import feedback

    app = typer.Typer()
    app.callback()(root._root)
    app.command("feedback")(feedback)
    return app


def test_cli_feedback(reg: Registry, tmp_path: Path) -> None:
    bars = market(n_symbols=3, n_bars=200, seed=4)
    mv = register(reg, tmp_path, horizon=1, promote=True)
    write_log(reg, model_log(bars, np.nan_to_num(forward(bars, 1), nan=0.0), version=mv.version))
    data = tmp_path / "bars.csv"
    write_bars(bars, data)
    runner = CliRunner()
    res = runner.invoke(cli_app(), ["--registry", reg.store.uri, "feedback", "--data", str(data), "--json",
                                    "--no-write"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    whole = d["versions"][mv.version]
    assert whole["n"] == 3 * 199 and whole["directional_accuracy"] == 1.0
    assert d["attachments"] == {} and LIVE_METRICS_ATTACHMENT not in reg.attachments(mv.version)
    res = runner.invoke(cli_app(), ["--registry", reg.store.uri, "feedback", "--data", str(data),
                                    "--cost-bps", "2"])
    assert res.exit_code == 0, res.output
    for word in ("live outcomes", "accuracy", "baseline", "Sharpe", "change points", mv.version, "597"):
        assert word in res.stdout, word
    rec = json.loads(reg.get_attachment(mv.version, LIVE_METRICS_ATTACHMENT))
    assert rec["cost_bps"] == 2.0 and rec["n"] == 597
    res = runner.invoke(cli_app(), ["--registry", reg.store.uri, "feedback", "--data", str(data),
                                    "--since", "not a time"])
    assert isinstance(res.exception, ConfigError)


def test_cli_feedback_wired_into_tideline(reg: Registry, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from tideline import cli

    names = {c.name or (c.callback.__name__ if c.callback else None) for c in cli.app.registered_commands}
    assert "feedback" in names
    bars = tiny_bars()
    mv = register(reg, tmp_path, horizon=2)
    write_log(reg, pred_rows([("AAA", 0, 0.01), ("BBB", 9, 0.01)], version=mv.version))
    data = tmp_path / "bars.parquet"
    write_bars(bars, data)
    rc = cli.main(["--registry", reg.store.uri, "feedback", "--data", str(data), "--json"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert d["versions"][mv.version]["n"] == 1 and d["versions"][mv.version]["n_pending"] == 1
    assert cli.main(["--registry", reg.store.uri, "feedback", "--data", str(data), "--since", "nope"]) == 2


# ---- live outcomes for the rollout analysis -------------------------------------------------------------
def test_outcomes_from_log_by_hand(reg: Registry, tmp_path: Path) -> None:
    base = register(reg, tmp_path, horizon=1).version
    cand = register(reg, tmp_path, horizon=2).version
    other = register(reg, tmp_path, horizon=1).version
    since = LOGGED - pd.Timedelta(minutes=1)
    log = pd.concat([
        pred_rows([("AAA", t, 0.01) for t in range(6)] + [("BBB", t, -0.01) for t in range(4)], version=base),
        pred_rows([("AAA", 0, -0.02), ("AAA", 1, 0.02), ("AAA", 2, 0.02)], version=cand, role="shadow",
                  start=LOGGED + pd.Timedelta(minutes=1)),
        pred_rows([("BBB", 6, 0.03), ("AAA", 9, 0.01), ("ZZZ", 1, 0.5)], version=cand, role="canary",
                  start=LOGGED + pd.Timedelta(minutes=2)),
        pred_rows([("AAA", 0, 0.05)], version=cand, role="canary",  # a retry: the first one is kept
                  start=LOGGED + pd.Timedelta(minutes=3)),
        pred_rows([("AAA", 7, 1.0)], version=base, start=since - pd.Timedelta(hours=1)),  # before since
        pred_rows([("AAA", 1, 1.0)], version=other),  # another version: ignored
    ], ignore_index=True)
    write_log(reg, log)
    bars = tiny_bars()

    def expect(items: list[tuple[str, int, float]], h: int) -> tuple[list[float], list[float]]:
        y = [lr(s_, t, h) for s_, t, _ in items]
        return ([p - yy for (_, _, p), yy in zip(items, y, strict=True)],
                [float(np.sign(p) == np.sign(yy)) for (_, _, p), yy in zip(items, y, strict=True)])

    base_items = [("AAA", t, 0.01) for t in range(6)] + [("BBB", t, -0.01) for t in range(4)]
    cand_items = [("AAA", 0, -0.02), ("AAA", 1, 0.02), ("AAA", 2, 0.02), ("BBB", 6, 0.03)]  # AAA 9: pending

    unpaired = outcomes_from_log(reg, bars, since=since, min_pairs=100)
    o = unpaired(cand, base)
    ce, ch = expect(cand_items, 2)
    be, bh = expect(base_items, 1)
    assert sorted(o.candidate_errors) == pytest.approx(sorted(ce)) and sorted(o.candidate_hits) == sorted(ch)
    assert sorted(o.active_errors) == pytest.approx(sorted(be)) and sorted(o.active_hits) == sorted(bh)
    assert unpaired.last_report == {"candidate": 4, "baseline": 10, "paired": False, "common": 3,
                                    "watch_pairs": None, "logged": len(log) - 2}  # the old row and the other version dropped

    # paired: only the bars both versions predicted (the shadowed AAA 0..2), from a bars FILE this time
    path = write_bars(bars, tmp_path / "recent.parquet")
    paired = outcomes_from_log(reg, str(path), since=since, min_pairs=3)
    o = paired(cand, base)
    ce, ch = expect(cand_items[:3], 2)
    be, bh = expect(base_items[:3], 1)
    assert sorted(o.candidate_errors) == pytest.approx(sorted(ce)) and sorted(o.active_errors) == pytest.approx(sorted(be))
    assert sorted(o.candidate_hits) == sorted(ch) and sorted(o.active_hits) == sorted(bh)
    assert paired.last_report["paired"] is True and paired.last_error is None
    # the pairs themselves, in bar order, for the rollout's sequential test (AAA bars 0..2, each side's hit)
    assert o.paired is not None and list(o.paired.times) == [(T0 + pd.Timedelta(hours=t)).value for t in range(3)]
    assert list(o.paired.candidate_hits) == ch and list(o.paired.active_hits) == bh
    assert unpaired(cand, base).paired is None

    assert o.watch is None  # the candidate is not production: no guard's watch yet

    # a bars source that cannot be read: no outcomes this interval (inconclusive), never an exception
    broken = outcomes_from_log(reg, str(tmp_path / "missing.parquet"), since=since)
    assert broken(cand, base) is None and broken.last_error


def test_watch_outcomes_pair_production_and_previous_since_the_promotion(reg: Registry, tmp_path: Path) -> None:
    """The guard's input: once the candidate is production, its outcomes and the baseline's (in shadow) on the
    same (symbol, bar), counting only predictions logged after the registry promoted it, in bar order."""
    base = register(reg, tmp_path, horizon=1, promote=True).version
    cand = register(reg, tmp_path, horizon=1).version
    before = pd.Timestamp.now(tz="UTC") - pd.Timedelta(minutes=5)
    reg.promote(cand, reason="test")
    after = pd.Timestamp.now(tz="UTC") + pd.Timedelta(seconds=1)
    log = pd.concat([
        pred_rows([("AAA", t, 0.01) for t in range(3)], version=cand, role="shadow", start=before),
        pred_rows([("AAA", t, 0.01) for t in range(3)], version=base, start=before),
        pred_rows([("BBB", 5, 0.02), ("AAA", 4, -0.01), ("AAA", 3, 0.01), ("BBB", 7, 0.01)], version=cand,
                  start=after),
        pred_rows([("AAA", 3, -0.01), ("AAA", 4, -0.01), ("BBB", 5, -0.02)], version=base, role="shadow",
                  start=after),
    ], ignore_index=True)
    write_log(reg, log)
    src = outcomes_from_log(reg, tiny_bars(), since=before - pd.Timedelta(minutes=1))
    w = src(cand, base).watch
    assert w is not None and src.last_report["watch_pairs"] == 3  # BBB 7 has no previous, bars 0..2 came before
    assert list(w.times) == sorted(w.times)
    expect_prod = [float(np.sign(p) == np.sign(lr(s_, t, 1))) for s_, t, p in
                   [("AAA", 3, 0.01), ("AAA", 4, -0.01), ("BBB", 5, 0.02)]]
    expect_prev = [float(np.sign(p) == np.sign(lr(s_, t, 1))) for s_, t, p in
                   [("AAA", 3, -0.01), ("AAA", 4, -0.01), ("BBB", 5, -0.02)]]
    assert list(w.production_hits) == expect_prod and list(w.previous_hits) == expect_prev


def test_live_figures_per_volatility_regime_use_the_bounds_stored_with_the_version(reg: Registry,
                                                                                   tmp_path: Path) -> None:
    from tideline.evaluation import evaluate_predictions

    bars = market(n_symbols=4, n_bars=400, seed=2)
    art = tmp_path / "art"
    art.mkdir()
    (art / "model.json").write_text("{}")
    # recent volatility as the rvol_20 feature: the std of the last 20 one-bar log returns, per symbol
    vol = bars.groupby("symbol", sort=False)["close"].transform(
        lambda c: np.log(c).diff().rolling(20, min_periods=20).std()).to_numpy()
    lo, hi = np.nanquantile(vol, [0.2, 0.8])
    bounds = {"feature": "rvol_20", "window": 20, "low_quantile": 0.2, "high_quantile": 0.8, "low": lo, "high": hi}
    mv = reg.register(art, {"family": "xgboost", "feature_config": {"horizon": 1},
                            "metrics": {"cost_bps": 1.0}, "evaluation": {"regime_thresholds": bounds}})
    old = register(reg, tmp_path)  # an older version, stored without bounds
    fwd = np.nan_to_num(forward(bars, 1), nan=0.001)
    noisy = np.where(np.random.default_rng(0).random(len(fwd)) < 0.7, fwd, -fwd)  # right 70% of the time
    write_log(reg, pd.concat([model_log(bars, noisy, version=mv.version),
                              model_log(bars, noisy, version=old.version, role="shadow")], ignore_index=True))
    rep = run_feedback(reg, bars, now=datetime(2024, 3, 12, tzinfo=UTC))
    assert old.version not in rep.regimes  # no bounds stored: nothing made up
    got = rep.regimes[mv.version]
    assert set(got) == {"low", "normal", "high"}
    # the high-volatility regime by hand: the realized rows whose recent volatility is above the bound
    nxt = forward(bars, 1)
    high = np.isfinite(nxt) & (vol > hi)
    meta = bars.loc[high, ["timestamp", "symbol"]].reset_index(drop=True)
    want = evaluate_predictions(noisy[high], nxt[high], nxt[high], meta, cost_bps=1.0,
                                periods_per_year=rep.periods_per_year)
    assert got["high"].directional_accuracy == pytest.approx(want.directional_accuracy)
    assert got["high"].sharpe == pytest.approx(want.sharpe)
    rec = json.loads(reg.get_attachment(mv.version, LIVE_METRICS_ATTACHMENT))
    assert rec["regimes"]["high"]["directional_accuracy"] == pytest.approx(want.directional_accuracy)
    assert "regimes" not in json.loads(reg.get_attachment(old.version, LIVE_METRICS_ATTACHMENT))
    assert set(rep.to_dict()["regimes"][mv.version]) == {"low", "normal", "high"}
    data = tmp_path / "bars.csv"
    write_bars(bars, data)
    res = CliRunner().invoke(cli_app(), ["--registry", reg.store.uri, "feedback", "--data", str(data), "--no-write"])
    assert res.exit_code == 0, res.output
    assert "by volatility regime" in res.stdout and "high" in res.stdout
