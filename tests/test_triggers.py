"""Retrain triggers: every rule fires and stays quiet when it should, regimes, cadence, the run lock, runs, CLI."""

from __future__ import annotations

import json
import multiprocessing
import sys
import threading
import types
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from tideline.config import TRIGGER_RULES, Settings, TriggerConfig
from tideline.data import write_bars
from tideline.errors import ConfigError, PolicyError
from tideline.registry import FileStore, ModelVersion, Registry, open_registry
from tideline.triggers import (
    LOCK_KEY,
    RunLock,
    TriggerContext,
    build_context,
    classify_regime,
    evaluate,
    list_decisions,
    run_if_needed,
)

T0 = pd.Timestamp("2024-01-01 00:00:00")
TRAIN_BARS = 1500  # hourly bars per symbol inside the training window


# ---- helpers ------------------------------------------------------------------------------------------
def make_bars(n: int, *, n_symbols: int = 3, sigma: float = 0.01, tail: int = 0, tail_sigma: float = 0.01,
              start: pd.Timestamp = T0, seed: int = 0) -> pd.DataFrame:
    """Valid hourly bars; the last ``tail`` bars of each symbol have volatility ``tail_sigma``."""
    rng = np.random.default_rng(seed)
    ts = pd.date_range(start, periods=n, freq="1h")
    frames = []
    for i in range(n_symbols):
        s = np.full(n, sigma)
        if tail:
            s[-tail:] = tail_sigma
        close = 100.0 * np.exp(np.cumsum(rng.standard_normal(n) * s))
        open_ = np.r_[100.0, close[:-1]]
        frames.append(pd.DataFrame({
            "timestamp": ts, "symbol": f"S{i}", "open": open_, "high": np.maximum(open_, close) * 1.001,
            "low": np.minimum(open_, close) * 0.999, "close": close, "volume": 1e5,
        }))
    return pd.concat(frames, ignore_index=True)


def training_window(n_symbols: int = 3) -> dict[str, Any]:
    return {"start": str(T0), "end": str(T0 + pd.Timedelta(hours=TRAIN_BARS - 1)),
            "n_rows": TRAIN_BARS * n_symbols, "symbols": [f"S{i}" for i in range(n_symbols)]}


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    return open_registry(f"file://{tmp_path / 'registry'}")


def promote_version(reg: Registry, tmp_path: Path, **meta: Any) -> ModelVersion:
    art = tmp_path / f"art-{uuid.uuid4().hex[:6]}"
    art.mkdir()
    (art / "model.json").write_text("{}")
    base: dict[str, Any] = {"family": "xgboost", "training_window": training_window(),
                            "metrics": {"sharpe": 1.1, "directional_accuracy": 0.56}}
    mv = reg.register(art, base | meta)
    reg.promote(mv.version, reason="test")
    return mv


def created(mv: ModelVersion) -> datetime:
    return datetime.fromisoformat(mv.created_at)


def check(reg: Registry, *, days: float, bars: pd.DataFrame | None = None, manual: str | None = None,
          cfg: TriggerConfig | None = None):  # noqa: ANN201
    mv = reg.get("production") if "production" in reg.aliases() else None
    now = (created(mv) if mv else datetime(2024, 6, 1, tzinfo=UTC)) + timedelta(days=days)
    return evaluate(build_context(reg, bars=bars, now=now, manual=manual), cfg or TriggerConfig())


# ---- rules ----------------------------------------------------------------------------------------------
def test_no_production(reg: Registry, tmp_path: Path) -> None:
    rep = check(reg, days=0)
    r = rep.result("no_production")
    assert r.fired and "no model is in production" in r.reason
    assert rep.fired and rep.production is None
    # every other rule explains why it cannot fire
    assert all(x.reason for x in rep.results) and not any(x.fired for x in rep.results if x.name != "no_production")
    promote_version(reg, tmp_path)
    r = check(reg, days=0).result("no_production")
    assert not r.fired and r.reason == "v1 is in production"


def test_model_age(reg: Registry, tmp_path: Path) -> None:
    promote_version(reg, tmp_path)
    r = check(reg, days=3.2).result("model_age")
    assert not r.fired and r.reason == "model age 3.2 d < 7 d" and r.details["age_days"] == pytest.approx(3.2)
    r = check(reg, days=8).result("model_age")
    assert r.fired and r.reason == "model age 8.0 d >= 7 d"
    r = check(reg, days=2, cfg=TriggerConfig(max_model_age_days=1.5)).result("model_age")
    assert r.fired


def test_new_data(reg: Registry, tmp_path: Path) -> None:
    promote_version(reg, tmp_path)
    end = T0 + pd.Timedelta(hours=TRAIN_BARS - 1)
    # training bars + 4 x 3000 new bars after the window = 12,000 new bars across symbols
    many = make_bars(TRAIN_BARS + 3000, n_symbols=4)
    r = check(reg, days=1, bars=many).result("new_data")
    assert r.fired and r.details["new_bars"] == 12_000 and r.details["symbols_with_new_bars"] == 4
    assert "12,000 new bars" in r.reason and ">= 10,000" in r.reason
    few = make_bars(TRAIN_BARS + 1000, n_symbols=4)
    r = check(reg, days=1, bars=few).result("new_data")
    assert not r.fired and r.details["new_bars"] == 4000 and "< 10,000" in r.reason
    assert pd.Timestamp(r.details["training_end"]).tz_localize(None) == end
    r = check(reg, days=1).result("new_data")
    assert not r.fired and r.reason == "no recent bars given"


def test_performance_decay(reg: Registry, tmp_path: Path) -> None:
    mv = promote_version(reg, tmp_path)
    r = check(reg, days=1).result("performance_decay")
    assert not r.fired and r.reason == "no live outcomes yet"

    def live(**kw: Any) -> None:
        reg.put_attachment(mv.version, "live-metrics.json", json.dumps(kw).encode())

    live(sharpe=0.1, directional_accuracy=0.55, baseline_accuracy=0.55, n=500)
    r = check(reg, days=1).result("performance_decay")
    assert r.fired and "live Sharpe 0.10 < 0.3" in r.reason
    live(sharpe=1.4, directional_accuracy=0.545, baseline_accuracy=0.56, n=500)
    r = check(reg, days=1).result("performance_decay")
    assert not r.fired and "drop 0.015" in r.reason
    live(sharpe=1.4, directional_accuracy=0.51, baseline_accuracy=0.56, n=500)
    r = check(reg, days=1).result("performance_decay")
    assert r.fired and "0.050 below" in r.reason
    # no live baseline: production's hold-out accuracy (0.56) is the baseline
    live(sharpe=1.4, directional_accuracy=0.50, n=500)
    r = check(reg, days=1).result("performance_decay")
    assert r.fired and r.details["baseline_source"] == "hold-out accuracy"
    # too few outcomes to judge, however bad they look
    live(sharpe=-3.0, directional_accuracy=0.3, baseline_accuracy=0.56, n=50)
    r = check(reg, days=1).result("performance_decay")
    assert not r.fired and r.reason == "only 50 live outcomes < 200 needed to judge"


def test_drift(reg: Registry, tmp_path: Path) -> None:
    mv = promote_version(reg, tmp_path)
    r = check(reg, days=1).result("drift")
    assert not r.fired and r.reason == "no drift report for v1 yet"
    reg.put_attachment(mv.version, "drift-latest.json",
                       json.dumps({"dataset_drifted": True, "drifted_share": 0.4}).encode())
    r = check(reg, days=1).result("drift")
    assert r.fired and r.reason == "40% of features drifted >= 30%" and r.details["dataset_drifted"] is True
    reg.put_attachment(mv.version, "drift-latest.json",
                       json.dumps({"dataset_drifted": False, "drifted_share": 0.1}).encode())
    r = check(reg, days=1).result("drift")
    assert not r.fired and r.reason == "10% of features drifted < 30%"


def test_corrupt_attachment_is_a_note_not_a_crash(reg: Registry, tmp_path: Path) -> None:
    mv = promote_version(reg, tmp_path)
    reg.put_attachment(mv.version, "drift-latest.json", b"{not json")
    rep = check(reg, days=1)
    assert not rep.result("drift").fired and any("drift-latest.json" in n for n in rep.notes)


def test_regime_classification_on_a_volatility_jump() -> None:
    cfg = TriggerConfig()
    tw = training_window()
    calm = make_bars(TRAIN_BARS + 40)
    jump = make_bars(TRAIN_BARS + 40, tail=30, tail_sigma=0.04)
    quiet = make_bars(TRAIN_BARS + 40, tail=30, tail_sigma=0.002)
    assert classify_regime(calm, tw, cfg).regime == "normal"  # type: ignore[union-attr]
    hi = classify_regime(jump, tw, cfg)
    assert hi is not None and hi.regime == "high" and hi.reference == "training window"
    assert hi.current_vol == pytest.approx(0.04, rel=0.35) and hi.reference_vol == pytest.approx(0.01, rel=0.2)
    assert classify_regime(quiet, tw, cfg).regime == "low"  # type: ignore[union-attr]
    # without a training window the trailing bars are the reference
    tr = classify_regime(jump, None, cfg)
    assert tr is not None and tr.regime == "high" and tr.reference.startswith("trailing")
    assert classify_regime(make_bars(30), tw, cfg) is None  # too short to say


def test_regime_on_synthetic_market_turbulence() -> None:
    """On the synthetic market (Markov vol regimes) a window inside a turbulent stretch reads high."""
    from tideline.data import synthetic_market

    df = synthetic_market(n_symbols=3, n_bars=4000, seed=3, regime_switch_prob=0.004)
    cfg = TriggerConfig()
    close = df.pivot(index="timestamp", columns="symbol", values="close")
    vol = np.log(close).diff().rolling(20).std().median(axis=1)
    hot_end = vol.iloc[200:].idxmax()  # the calmest / most turbulent 20-bar windows after warm-up
    calm_end = vol.iloc[200:].idxmin()
    tw = {"start": str(df["timestamp"].min()), "end": str(df["timestamp"].max())}
    assert classify_regime(df[df["timestamp"] <= hot_end], tw, cfg).regime == "high"  # type: ignore[union-attr]
    assert classify_regime(df[df["timestamp"] <= calm_end], tw, cfg).regime == "low"  # type: ignore[union-attr]


def test_regime_shift_rule(reg: Registry, tmp_path: Path) -> None:
    promote_version(reg, tmp_path)
    r = check(reg, days=1, bars=make_bars(TRAIN_BARS + 40, tail=30, tail_sigma=0.04)).result("regime_shift")
    assert r.fired and "high regime" in r.reason and r.details["regime"] == "high"
    r = check(reg, days=1, bars=make_bars(TRAIN_BARS + 40)).result("regime_shift")
    assert not r.fired and "normal regime, as in training" in r.reason
    # the recent bars start after the training window: no comparison possible
    later = make_bars(500, start=T0 + pd.Timedelta(hours=TRAIN_BARS), tail=30, tail_sigma=0.04)
    r = check(reg, days=1, bars=later).result("regime_shift")
    assert not r.fired and "do not cover" in r.reason


def test_adaptive_cadence(reg: Registry, tmp_path: Path) -> None:
    promote_version(reg, tmp_path)
    high = make_bars(TRAIN_BARS + 40, tail=30, tail_sigma=0.04)
    low = make_bars(TRAIN_BARS + 40, tail=30, tail_sigma=0.002)
    normal = make_bars(TRAIN_BARS + 40)
    r = check(reg, days=4, bars=high).result("cadence")
    assert r.fired and r.details["cadence_days"] == 3 and "high volatility regime" in r.reason
    r = check(reg, days=2, bars=high).result("cadence")
    assert not r.fired
    r = check(reg, days=10, bars=low).result("cadence")
    assert not r.fired and r.details["cadence_days"] == 14 and r.reason.startswith("model age 10.0 d < 14 d")
    r = check(reg, days=15, bars=low).result("cadence")
    assert r.fired
    assert not check(reg, days=4, bars=normal).result("cadence").fired
    r = check(reg, days=8, bars=normal).result("cadence")
    assert r.fired and r.details["cadence_days"] == 7
    r = check(reg, days=8).result("cadence")  # no bars: regime unknown, normal cadence
    assert r.fired and "regime unknown" in r.reason


def test_manual_and_disabled_rules(reg: Registry, tmp_path: Path) -> None:
    promote_version(reg, tmp_path)
    r = check(reg, days=1).result("manual")
    assert not r.fired and r.reason == "no manual request"
    rep = check(reg, days=1, manual="new feature set")
    assert rep.result("manual").fired and rep.reasons == ["manual: requested: new feature set"]
    cfg = TriggerConfig(enabled=["manual"])
    rep = check(reg, days=30, cfg=cfg)  # model_age would fire, but it is disabled
    assert not rep.fired and rep.result("model_age").reason == "rule disabled"
    assert [r.name for r in rep.results] == list(TRIGGER_RULES)


def test_report_is_json(reg: Registry, tmp_path: Path) -> None:
    promote_version(reg, tmp_path)
    rep = check(reg, days=8, bars=make_bars(TRAIN_BARS + 40, tail=30, tail_sigma=0.04))
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["fired"] and d["production"] == "v1" and d["regime"]["regime"] == "high"
    assert {r["name"] for r in d["rules"]} == set(TRIGGER_RULES)
    assert all(r["reason"] for r in d["rules"])
    assert {x.split(":")[0] for x in d["reasons"]} == {"model_age", "regime_shift", "cadence"}


def test_context_is_plain_data() -> None:
    """Rules run on a hand-built context too (no registry), with a naive now taken as UTC."""
    ctx = TriggerContext(now=datetime(2024, 1, 1), manual="x")
    assert ctx.now.tzinfo is UTC
    assert evaluate(ctx).reasons == ["no_production: no model is in production", "manual: requested: x"]


# ---- run lock -------------------------------------------------------------------------------------------
NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path):  # noqa: ANN201
    if request.param == "file":
        return FileStore(tmp_path / "store")
    import boto3

    endpoint = request.getfixturevalue("s3_server")
    bucket = f"lock-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return open_registry(f"s3://{bucket}/reg", endpoint_url=endpoint).store


def _race(contenders: int, fn) -> list[Any]:  # noqa: ANN001
    barrier = threading.Barrier(contenders)
    results: list[Any] = [None] * contenders

    def go(i: int) -> None:
        barrier.wait()
        results[i] = fn(i)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(contenders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_lock_race_threads_exactly_one_wins(store) -> None:  # noqa: ANN001
    wins = _race(6, lambda i: RunLock(store, 3600).acquire(f"run{i}", "race", NOW))
    assert sum(wins) == 1
    holder = RunLock(store, 3600).current(NOW)
    assert holder is not None and holder.run_id == f"run{wins.index(True)}"


def test_expired_lock_taken_over_by_exactly_one(store) -> None:  # noqa: ANN001
    lock = RunLock(store, ttl=60)
    assert lock.acquire("old", "first", NOW)
    assert not lock.acquire("early", "too soon", NOW + timedelta(seconds=30))
    later = NOW + timedelta(seconds=61)
    assert lock.current(later) is None  # expired: nobody holds it
    wins = _race(5, lambda i: RunLock(store, ttl=60).acquire(f"new{i}", "takeover", later))
    assert sum(wins) == 1
    assert lock.current(later).run_id == f"new{wins.index(True)}"  # type: ignore[union-attr]
    with pytest.raises(PolicyError, match="held by run new"):
        lock.release("old")  # the expired owner may not release the new holder's lock


def test_lock_release_and_reacquire(store) -> None:  # noqa: ANN001
    lock = RunLock(store, ttl=600)
    assert lock.acquire("a", "x", NOW)
    assert lock.acquire("a", "x", NOW)  # re-entrant for the same run
    with pytest.raises(PolicyError, match="not by b"):
        lock.release("b", NOW)
    assert lock.current(NOW).run_id == "a"  # type: ignore[union-attr]
    assert lock.release("a", NOW) is True
    assert lock.current(NOW) is None and lock.release("a", NOW) is False
    assert lock.acquire("b", "y", NOW + timedelta(seconds=1))  # a released lock is free at once
    assert lock.current(NOW + timedelta(seconds=1)).run_id == "b"  # type: ignore[union-attr]


def test_unreadable_lock_counts_as_expired(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "s")
    store.put(LOCK_KEY, b"garbage")
    assert RunLock(store, 60).acquire("r", "x", NOW)


def _proc_acquire(root: str, i: int, start: Any, out: Any) -> None:
    start.wait()
    out.put((i, RunLock(FileStore(Path(root)), 3600).acquire(f"p{i}", "race", NOW)))


def test_lock_race_processes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_proc_acquire, args=(str(tmp_path / "s"), i, start, out)) for i in range(4)]
    for p in procs:
        p.start()
    start.set()
    res = dict(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert sum(res.values()) == 1


# ---- run_if_needed ---------------------------------------------------------------------------------------
class FakeStarter:
    def __init__(self, block: threading.Event | None = None, fail: bool = False) -> None:
        self.calls: list[dict[str, Any]] = []
        self.block, self.fail = block, fail
        self.entered = threading.Event()

    def __call__(self, **kw: Any) -> dict[str, Any]:
        self.calls.append(kw)
        self.entered.set()
        if self.block is not None:
            assert self.block.wait(30)
        if self.fail:
            raise RuntimeError("pipeline submission failed")
        return {"run": f"r{len(self.calls)}", "mode": kw.get("mode")}


def settings_for(reg: Registry) -> Settings:
    return Settings(registry=reg.store.uri, triggers=TriggerConfig())


def test_run_if_needed_starts_once_and_records(reg: Registry, tmp_path: Path) -> None:
    mv = promote_version(reg, tmp_path)
    s, starter = settings_for(reg), FakeStarter()
    now = created(mv) + timedelta(days=1)
    d = run_if_needed(reg, s, starter=starter, now=now, mode="kfp", host="http://kfp")
    assert d["started"] is False and d["reason"].startswith("no rule fired") and starter.calls == []
    d = run_if_needed(reg, s, starter=starter, now=now + timedelta(days=7), mode="kfp", host="http://kfp",
                      source="s3://b/bars", synthetic=None)
    assert d["started"] is True and d["result"] == {"run": "r1", "mode": "kfp"}
    assert len(starter.calls) == 1
    call = starter.calls[0]
    assert call["settings"] is s and call["mode"] == "kfp" and call["host"] == "http://kfp"
    assert call["source"] == "s3://b/bars" and "model_age: model age 8.0 d >= 7 d" in call["reason"]
    assert RunLock(reg.store).current(now + timedelta(days=7)) is None  # released after the run
    recorded = list_decisions(reg.store)
    assert [x["started"] for x in recorded] == [True, False]  # newest first
    assert recorded[0]["run_id"] == d["run_id"] and recorded[0]["result"]["run"] == "r1"


def test_run_if_needed_force(reg: Registry, tmp_path: Path) -> None:
    mv = promote_version(reg, tmp_path)
    starter = FakeStarter()
    d = run_if_needed(reg, settings_for(reg), starter=starter, force=True, now=created(mv) + timedelta(hours=1))
    assert d["started"] and d["forced"] and d["reason"] == "forced run (no rule fired)"
    assert starter.calls[0]["reason"] == "forced run (no rule fired)"


def test_run_if_needed_refuses_a_second_concurrent_run(reg: Registry) -> None:
    s = settings_for(reg)  # empty registry: no_production fires
    gate = threading.Event()
    first = FakeStarter(block=gate)
    out: dict[str, Any] = {}
    t = threading.Thread(target=lambda: out.update(run_if_needed(reg, s, starter=first, now=NOW)))
    t.start()
    try:
        assert first.entered.wait(30)
        second = FakeStarter()
        d = run_if_needed(reg, s, starter=second, now=NOW + timedelta(minutes=5), force=True)
        holder = RunLock(reg.store).current(NOW)
        assert holder is not None
        assert d["started"] is False and second.calls == []
        assert d["reason"] == f"a run is already in progress (run {holder.run_id} since {NOW.isoformat()})"
    finally:
        gate.set()
        t.join(30)
    assert out["started"] is True and len(first.calls) == 1
    third = FakeStarter()
    assert run_if_needed(reg, s, starter=third, now=NOW + timedelta(minutes=10))["started"]
    assert len(third.calls) == 1


def test_run_if_needed_releases_the_lock_when_the_starter_fails(reg: Registry) -> None:
    s = settings_for(reg)
    with pytest.raises(RuntimeError, match="submission failed"):
        run_if_needed(reg, s, starter=FakeStarter(fail=True), now=NOW)
    assert RunLock(reg.store).current(NOW) is None
    last = list_decisions(reg.store, limit=1)[0]
    assert last["started"] is True and "pipeline submission failed" in last["error"]


# ---- CLI --------------------------------------------------------------------------------------------------
def cli_app() -> typer.Typer:
    """The root options of ``tideline`` plus the trigger group (the lead wires it into tideline.cli too)."""
    from tideline.cli import root
    from tideline.cli.trigger import trigger_app

    app = typer.Typer()
    app.callback()(root._root)
    app.add_typer(trigger_app, name="trigger")
    return app


def test_cli_check_json(reg: Registry, tmp_path: Path) -> None:
    mv = promote_version(reg, tmp_path)
    data = tmp_path / "bars.csv"
    write_bars(make_bars(TRAIN_BARS + 40, tail=30, tail_sigma=0.04), data)
    now = (created(mv) + timedelta(days=4)).isoformat()
    runner = CliRunner()
    res = runner.invoke(cli_app(), ["--registry", reg.store.uri, "trigger", "check", "--data", str(data),
                                    "--now", now, "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    fired = {r["name"] for r in d["rules"] if r["fired"]}
    assert fired == {"regime_shift", "cadence"} and d["regime"]["regime"] == "high"
    # nothing fires: still exit 0, and the table lists every rule
    res = runner.invoke(cli_app(), ["--registry", reg.store.uri, "trigger", "check",
                                    "--now", (created(mv) + timedelta(days=1)).isoformat()])
    assert res.exit_code == 0, res.output
    assert "retrain: no" in res.stdout and all(name in res.stdout for name in TRIGGER_RULES)


def test_cli_run_calls_start_retrain(reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    fake = types.ModuleType("tideline.training.orchestration")
    fake.start_retrain = lambda settings, **kw: calls.append(kw) or {"run_id": "kfp-123"}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tideline.training.orchestration", fake)
    runner = CliRunner()
    args = ["--registry", reg.store.uri, "trigger", "run", "--synthetic", "--symbols", "2", "--bars", "400",
            "--mode", "kfp", "--host", "http://ml-pipeline:8888", "--json"]
    res = runner.invoke(cli_app(), args)
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["started"] and d["result"] == {"run_id": "kfp-123"}
    assert calls == [{"mode": "kfp", "host": "http://ml-pipeline:8888", "reason": d["reason"], "source": None,
                      "synthetic": {"n_symbols": 2, "n_bars": 400, "seed": 7}}]
    assert d["reason"].startswith("no_production")


def test_cli_start_kwargs_fit_the_real_start_retrain() -> None:
    """The keyword arguments `trigger run` passes bind to tideline.training.orchestration.start_retrain."""
    import inspect

    orchestration = pytest.importorskip("tideline.training.orchestration")
    sig = inspect.signature(orchestration.start_retrain)
    sig.bind(settings=Settings(), reason="r", mode="kfp", host="http://h", source=None,
             synthetic={"n_symbols": 2, "n_bars": 400, "seed": 7})


# ---- the training window after a detected change ------------------------------------------------------------
def test_training_window_follows_the_last_detected_change() -> None:
    from tideline.triggers import training_window

    times = pd.date_range("2024-01-01", periods=500, freq="h")
    # nothing detected: the latest lookback bars
    w = training_window({"change_points": []}, times, min_bars=100, lookback_bars=300)
    assert w.ready and w.start == times[200] and w.bars_after == 300 and "no change" in w.reason
    w = training_window(None, times[:50], min_bars=100, lookback_bars=300)
    assert w.ready and w.start == times[0] and w.bars_after == 50
    # a change 80 bars ago: too little of the new regime yet
    cps = [{"timestamp": str(times[100]), "detector": "adwin"}, {"timestamp": str(times[419]), "detector": "page_hinkley"}]
    w = training_window({"change_points": cps}, times, min_bars=100, lookback_bars=300)
    assert not w.ready and w.start == times[419] and w.bars_after == 80 and "need 100" in w.reason
    # enough bars after the LAST change (timezone-aware stamps are read as UTC)
    cps[1]["timestamp"] = (times[380].tz_localize("UTC")).isoformat()
    w = training_window({"change_points": cps}, times, min_bars=100, lookback_bars=300)
    assert w.ready and w.start == times[380] and w.bars_after == 119
    # detections a few bars apart are one change, dated by the first of them
    cps.append({"timestamp": str(times[400]), "detector": "adwin"})
    w = training_window({"change_points": cps}, times, min_bars=100, lookback_bars=300)
    assert w.ready and w.start == times[380] and w.bars_after == 119
    # dated where it most likely began (the monitor's estimate), not when it was detected
    cps = [{"timestamp": str(times[450]), "start": str(times[390]), "detector": "adwin"}]
    w = training_window({"change_points": cps}, times, min_bars=100, lookback_bars=300, from_start=True)
    assert w.ready and w.start == times[390] and w.bars_after == 109
    w = training_window({"change_points": cps}, times, min_bars=100, lookback_bars=300)  # the default: detection
    assert not w.ready and w.start == times[450] and w.bars_after == 49
    assert training_window({}, [], min_bars=1, lookback_bars=1).ready is False
    with pytest.raises(ConfigError):
        training_window({}, times, min_bars=0, lookback_bars=10)
