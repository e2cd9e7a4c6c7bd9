"""The loop's tick: what it decides from what it sees, with the pipeline and the rollout driver replaced by
recorders (the real ones have their own tests), and its record, lease and CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tideline.config import load_settings
from tideline.data import synthetic_market, write_bars
from tideline.errors import DataError
from tideline.features import warmup_bars
from tideline.loop.core import LOCK_KEY, Loop, list_ticks
from tideline.registry import open_registry

NOW = datetime.now(UTC).replace(microsecond=0)  # model ages count from the versions' real creation


class Pipeline:
    """Registers a version (a stand-in artifact) and promotes it (direct) or names it the candidate."""

    def __init__(self, registry: Any, tmp: Path, *, approve: bool = True, fail: str | None = None) -> None:
        self.registry, self.tmp, self.approve, self.fail = registry, tmp, approve, fail
        self.calls: list[dict[str, Any]] = []

    def __call__(self, settings: Any, *, source: str | Path, rollout_mode: str, reason: str) -> dict[str, Any]:
        bars = pd.read_parquet(source)
        self.calls.append({"rows": len(bars), "start": bars["timestamp"].min(), "mode": rollout_mode,
                           "reason": reason})
        if self.fail:
            raise DataError(self.fail)
        art = self.tmp / f"art-{uuid.uuid4().hex[:8]}"
        art.mkdir()
        (art / "model.txt").write_text("x")
        mv = self.registry.register(art, {"family": "lightgbm", "feature_config": {"horizon": 1},
                                          "training_window": {"start": str(bars["timestamp"].min()),
                                                              "end": str(bars["timestamp"].max())}})
        out = {"run_id": f"run{len(self.calls)}", "versions": {"lightgbm": mv.version}, "seconds": 1.0,
               "best": {"version": mv.version, "family": "lightgbm"} if self.approve else {},
               "reasons": {"lightgbm": ["passed"] if self.approve else ["Sharpe below 0.5"]}}
        if self.approve and rollout_mode == "direct":
            self.registry.promote(mv.version, reason="direct")
            out["promoted"] = mv.version
        elif self.approve:
            out["candidate"] = mv.version
        return out


class Rollouts:
    def __init__(self) -> None:
        self.started: list[tuple[str, str]] = []
        self.flight: dict[str, Any] | None = None
        self.restarts = 0

    def latest(self) -> dict[str, Any] | None:
        return self.flight

    def publish_recent(self, bars: Any) -> None:
        self.published = len(bars)

    def restart(self) -> str:
        self.restarts += 1
        return "restarted the controller"

    def start(self, candidate: str, baseline: str, reason: str) -> str:
        self.started.append((candidate, baseline))
        return f"started rollout of {candidate}"


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Any]:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    market = synthetic_market(n_symbols=3, n_bars=400, seed=2)
    path = write_bars(market, inbox / "history.parquet")
    os.utime(path, (NOW.timestamp() - 3600,) * 2)
    s = load_settings(registry=(tmp_path / "reg").as_uri(), home=tmp_path / "home",
                      loop={"bars": str(inbox), "min_window_bars": 50, "lookback_bars": 300, "monitor_bars": 100},
                      triggers={"enabled": ["no_production", "model_age", "manual"], "max_model_age_days": 7})
    reg = open_registry(s.registry_uri())
    return {"settings": s, "registry": reg, "inbox": inbox, "market": market, "tmp": tmp_path}


def make_loop(w: dict[str, Any], *, now: datetime = NOW, **pipeline_kw: Any) -> tuple[Loop, Pipeline, Rollouts]:
    pipe, rolls = Pipeline(w["registry"], w["tmp"], **pipeline_kw), Rollouts()
    loop = Loop(w["settings"], w["registry"], rollouts=rolls, pipeline=pipe, clock=lambda: now,
                workdir=w["tmp"] / "work")
    return loop, pipe, rolls


def steps(rec: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {s["step"]: (s["outcome"], s["summary"]) for s in rec["steps"]}


def test_first_tick_ingests_and_trains_production_on_the_lookback_window(world: dict[str, Any]) -> None:
    loop, pipe, rolls = make_loop(world)
    rec = loop.tick()
    st = steps(rec)
    assert rec["outcome"] == "ok", rec
    assert st["ingest"][0] == "ok" and "1 new file(s), 1200 bar(s) added" in st["ingest"][1]
    assert st["decide"][0] == "retrain" and "no_production" in st["decide"][1]
    (call,) = pipe.calls
    # loop.lookback_bars per symbol, with the features' warm-up bars before them
    assert call["mode"] == "direct" and call["rows"] == 3 * (300 + warmup_bars(world["settings"].features))
    assert world["registry"].aliases()["production"] == "v1"
    assert any("promoted v1" in d for d in rec["did"]) and rolls.started == []
    assert list_ticks(world["registry"])[0]["id"] == rec["id"]


def test_a_quiet_tick_records_every_rule_and_does_nothing(world: dict[str, Any]) -> None:
    make_loop(world)[0].tick()
    loop, pipe, rolls = make_loop(world, now=NOW + timedelta(days=1))
    rec = loop.tick()
    st = steps(rec)
    assert st["ingest"][1].startswith("0 new file(s)") and st["decide"][0] == "no_retrain"
    rules = next(s for s in rec["steps"] if s["step"] == "decide")["rules"]
    assert {r["name"] for r in rules} == {"no_production", "model_age", "manual"}
    assert all(not r["fired"] and r["reason"] for r in rules)
    assert pipe.calls == [] and rolls.started == [] and rec["did"] == []


def test_a_fired_rule_retrains_and_the_approved_candidate_is_rolled_out(world: dict[str, Any]) -> None:
    make_loop(world)[0].tick()
    loop, pipe, rolls = make_loop(world, now=NOW + timedelta(days=30))  # production is 30 days old
    rec = loop.tick()
    st = steps(rec)
    assert st["decide"][0] == "retrain" and "model_age" in st["decide"][1]
    assert pipe.calls[0]["mode"] == "rollout" and st["retrain"][0] == "approved"
    assert rolls.started == [("v2", "v1")] and st["rollout"][0] == "started"
    assert world["registry"].aliases()["production"] == "v1"  # the rollout, not the loop, promotes


def test_a_rejected_candidate_is_recorded_and_nothing_rolls_out(world: dict[str, Any]) -> None:
    make_loop(world)[0].tick()
    loop, _, rolls = make_loop(world, now=NOW + timedelta(days=30), approve=False)
    st = steps(loop.tick())
    assert st["retrain"][0] == "rejected" and "Sharpe below 0.5" in st["retrain"][1]
    assert rolls.started == [] and "rollout" not in st


def test_a_rollout_in_flight_blocks_retraining_and_a_dead_controller_is_restarted(world: dict[str, Any]) -> None:
    make_loop(world)[0].tick()
    loop, pipe, rolls = make_loop(world, now=NOW + timedelta(days=30))
    rolls.flight = {"name": "tideline", "id": "v9@1", "phase": "Canary", "weight": 25, "candidate": "v9",
                    "baseline": "v1", "terminal": False, "message": "", "controller_alive": True}
    st = steps(loop.tick())
    assert st["rollout"][0] == "in_flight" and "decide" not in st and pipe.calls == []
    rolls.flight["controller_alive"] = False
    rec = loop.tick()
    assert steps(rec)["rollout"][0] == "restarted" and rolls.restarts == 1 and rec["did"]


def test_a_failing_retrain_is_one_line_and_leaves_production_and_the_locks(world: dict[str, Any]) -> None:
    make_loop(world)[0].tick()
    loop, _, rolls = make_loop(world, now=NOW + timedelta(days=30), fail="market data failed validation: x")
    rec = loop.tick()
    st = steps(rec)
    assert st["retrain"][0] == "failed" and "market data failed validation" in st["retrain"][1]
    assert world["registry"].aliases()["production"] == "v1" and rolls.started == []
    store = world["registry"].store
    assert json.loads(store.get(LOCK_KEY)[0])["released"] and json.loads(store.get("runs/lock.json")[0])["released"]


def test_a_broken_file_is_refused_and_the_tick_goes_on(world: dict[str, Any]) -> None:
    make_loop(world)[0].tick()
    bad = world["market"].head(10).copy()
    bad.loc[bad.index[2], "low"] = 0.0
    write_bars(bad, world["inbox"] / "broken.csv")
    os.utime(world["inbox"] / "broken.csv", (NOW.timestamp(),) * 2)
    rec = make_loop(world, now=NOW + timedelta(hours=2))[0].tick()
    st = steps(rec)
    assert st["ingest"][0] == "refused" and "broken.csv" in st["ingest"][1] and "non_positive_price" in st["ingest"][1]
    assert st["decide"][0] == "no_retrain" and world["registry"].aliases()["production"] == "v1"


def test_one_tick_at_a_time_and_a_dead_holder_is_taken_over(world: dict[str, Any]) -> None:
    reg = world["registry"]
    held = {"run_id": "other", "reason": "loop tick", "acquired_at": NOW.isoformat(),
            "expires_at": (datetime.now(UTC) + timedelta(hours=1)).isoformat()}
    import socket

    reg.store.put(LOCK_KEY, json.dumps({**held, "owner": f"{socket.gethostname()}:{os.getpid()}"}).encode())
    loop, pipe, _ = make_loop(world)
    rec = loop.tick()
    assert rec["outcome"] == "busy" and pipe.calls == []  # a live holder: this tick does nothing
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    reg.store.put(LOCK_KEY, json.dumps({**held, "owner": f"{socket.gethostname()}:{dead.stdout.strip()}"}).encode())
    rec = loop.tick()
    assert rec["outcome"] == "ok" and len(pipe.calls) == 1  # its process is gone: taken over


def test_cli_once_status_and_history(world: dict[str, Any], capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from tideline import loop as loop_pkg
    from tideline.cli import main

    pipe = Pipeline(world["registry"], world["tmp"])
    monkeypatch.setattr(loop_pkg.core, "local_pipeline", pipe)
    cfg = world["tmp"] / "settings.json"
    cfg.write_text(json.dumps(world["settings"].model_dump(mode="json")))
    base = ["--config", str(cfg)]
    assert main([*base, "loop", "--once", "--now", NOW.isoformat(), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["outcome"] == "ok" and rec["at"] == NOW.isoformat()
    assert main([*base, "loop", "status", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["production"] == "v1" and doc["last_tick"]["id"] == rec["id"] and doc["rollout"] is None
    assert main([*base, "loop", "history"]) == 0
    text = capsys.readouterr().out
    assert f"tick {rec['id']}" in text and "promoted v1" in text


def test_retraining_waits_for_the_exchange_to_close(world: dict[str, Any]) -> None:
    open_at = datetime(2026, 12, 2, 15, 0, tzinfo=UTC)  # a Wednesday, 10:00 in New York
    os.utime(world["inbox"] / "history.parquet", (open_at.timestamp() - 3600,) * 2)
    world["settings"] = world["settings"].model_copy(update={"loop": world["settings"].loop.model_copy(
        update={"schedule": world["settings"].loop.schedule.model_copy(update={"calendar": "XNYS",
                                                                                "retrain": "closed"})})})
    loop, pipe, _ = make_loop(world, now=open_at)
    st = steps(loop.tick())
    assert st["retrain"][0] == "deferred" and "XNYS is in session" in st["retrain"][1] and pipe.calls == []
    loop, pipe, _ = make_loop(world, now=open_at + timedelta(hours=7))  # 22:00 UTC: after the close
    st = steps(loop.tick())
    assert st["retrain"][0] == "approved" and len(pipe.calls) == 1


def test_accelerated_clock_for_replays_runs_faster_than_the_wall() -> None:
    import time as _time

    from tideline.cli.loop import AcceleratedClock

    start = datetime(2024, 1, 2, 9, 30, tzinfo=UTC)
    clock = AcceleratedClock(start, 3600.0)
    first = clock()
    _time.sleep(0.02)
    second = clock()
    assert start <= first < second and (second - first) >= timedelta(seconds=0.02 * 3600)
