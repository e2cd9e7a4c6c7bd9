"""``tideline loop`` killed at every step of a tick, restarted: it continues, and one decision makes one run
and one rollout. Also: the store unreachable during a tick, a retraining run whose process died (restarted
once), ended rollouts, the cooldown after the guard reverted, a candidate set outside the loop.

A kill is simulated in-process: the N-th write of the tick to the registry store raises ``Killed`` (a
BaseException, so no ``except Exception`` swallows it) and every later store call of that "process" fails the
same way — its ``finally`` blocks cannot release anything either, exactly as after a SIGKILL. The restarted
tick sees lock holders whose process is gone (``_holder_dead`` answers True: the dead "process" was this one).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tideline.config import load_settings
from tideline.data import synthetic_market, write_bars
from tideline.errors import StorageUnavailable
from tideline.loop import core
from tideline.loop.core import STATE_KEY, Loop, list_ticks
from tideline.loop.rollouts import DetachedRollouts
from tideline.registry import Registry
from tideline.registry.signing import Signing
from tideline.rollout import machine as m
from tideline.rollout.controller import load_rollout, rollout_key
from tideline.store import FileStore

NOW = datetime.now(UTC).replace(microsecond=0)
LATER = NOW + timedelta(days=30)  # production is 30 days old: model_age fires


class Killed(BaseException):
    pass


class KillingStore:
    """A store whose ``kill_at``-th write (put, put_file, delete) kills the process: that call and every later
    one raise Killed. ``down`` makes every call raise StorageUnavailable (an outage) instead."""

    def __init__(self, inner: FileStore, kill_at: int | None = None) -> None:
        self.inner, self.kill_at = inner, kill_at
        self.writes: list[str] = []
        self.dead = False
        self.down = False
        self.uri = inner.uri

    def _check(self) -> None:
        if self.dead:
            raise Killed("the process is dead")
        if self.down:
            raise StorageUnavailable("the registry store is unreachable: connection refused")

    def _write(self, key: str) -> None:
        self._check()
        self.writes.append(key)
        if self.kill_at is not None and len(self.writes) == self.kill_at:
            self.dead = True
            raise Killed(f"killed before write {self.kill_at} ({key})")

    def put(self, key: str, data: bytes, **kw: Any) -> str:
        self._write(key)
        return self.inner.put(key, data, **kw)

    def put_file(self, key: str, path: Path) -> None:
        self._write(key)
        self.inner.put_file(key, path)

    def delete(self, key: str) -> None:
        self._write(key)
        self.inner.delete(key)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def call(*a: Any, **kw: Any) -> Any:
            self._check()
            return attr(*a, **kw)

        return call


class Pipeline:
    """Registers a version and, like ``run_local``'s last step, names it the ``candidate`` (or promotes it)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.finished: list[str] = []

    def __call__(self, settings: Any, *, source: str | Path, rollout_mode: str, reason: str,
                 registry: Registry) -> dict[str, Any]:
        self.calls.append(reason)
        bars = pd.read_parquet(source)
        art = Path(settings.home) / f"art-{uuid.uuid4().hex[:8]}"
        art.mkdir(parents=True)
        (art / "model.txt").write_text("x")
        mv = registry.register(art, {"family": "lightgbm", "feature_config": {"horizon": 1},
                                     "training_window": {"start": str(bars["timestamp"].min()),
                                                         "end": str(bars["timestamp"].max())}})
        out = {"run_id": f"run{len(self.calls)}", "versions": {"lightgbm": mv.version}, "seconds": 1.0,
               "best": {"version": mv.version, "family": "lightgbm"}, "reasons": {"lightgbm": ["passed"]}}
        if rollout_mode == "direct":
            registry.promote(mv.version, reason="direct")
            out["promoted"] = mv.version
        else:
            registry.set_alias("candidate", mv.version, reason="approved", actor="pipeline")
            out["candidate"] = mv.version
        self.finished.append(mv.version)
        return out


class Rollouts(DetachedRollouts):
    """The loop's real rollout driver (rollout documents in the store), with the controller process counted
    instead of started."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.spawned = 0

    def _spawn(self) -> int:
        self.spawned += 1
        return 0


def build(root: Path, tmp: Path, *, kill_at: int | None = None, now: datetime = LATER,
          pipeline: Pipeline | None = None) -> tuple[Loop, KillingStore, Pipeline, Rollouts]:
    s = load_settings(registry=root.as_uri(), home=tmp / "home",
                      loop={"bars": str(tmp / "inbox"), "min_window_bars": 50, "lookback_bars": 300,
                            "monitor_bars": 100},
                      triggers={"enabled": ["no_production", "model_age", "manual"], "max_model_age_days": 7})
    store = KillingStore(FileStore(root), kill_at)
    reg = Registry(store, signing=Signing.off())  # type: ignore[arg-type]
    pipe = pipeline or Pipeline()
    rolls = Rollouts(s, reg)

    def run(settings: Any, **kw: Any) -> dict[str, Any]:
        return pipe(settings, registry=reg, **kw)

    return Loop(s, reg, rollouts=rolls, pipeline=run, clock=lambda: now, workdir=tmp / "work"), store, pipe, rolls


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with production v1 (the loop's first tick) and the inbox it was trained from."""
    tmp = tmp_path_factory.mktemp("loop-kills")
    (tmp / "inbox").mkdir()
    path = write_bars(synthetic_market(n_symbols=3, n_bars=400, seed=2), tmp / "inbox" / "history.parquet")
    os.utime(path, (NOW.timestamp() - 3600,) * 2)
    loop, _, _, _ = build(tmp / "reg", tmp, now=NOW)
    assert loop.tick()["outcome"] == "ok" and loop.registry.aliases()["production"] == "v1"
    return tmp


def fresh(base: Path, tmp: Path) -> Path:
    shutil.copytree(base / "reg", tmp / "reg")
    shutil.copytree(base / "inbox", tmp / "inbox")
    shutil.copytree(base / "home", tmp / "home", dirs_exist_ok=True)
    return tmp / "reg"


def writes_of_a_retraining_tick(base: Path, tmp: Path) -> list[str]:
    loop, store, pipe, rolls = build(fresh(base, tmp), tmp)
    rec = loop.tick()
    assert rec["outcome"] == "ok" and pipe.finished == ["v2"] and rolls.spawned == 1, rec
    return store.writes


def test_killed_at_every_write_of_a_tick_the_loop_continues_with_one_run_and_one_rollout(
        base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writes = writes_of_a_retraining_tick(base, tmp_path / "clean")
    kinds = {k.split("/")[0] for k in writes}
    assert len(writes) >= 12 and {"loop", "runs", "rollouts", "state.json"} <= kinds | {"state.json"}, writes
    for n in range(1, len(writes) + 1):
        tmp = tmp_path / f"kill{n}"
        root = fresh(base, tmp)
        pipe = Pipeline()
        loop, store, _, _ = build(root, tmp, kill_at=n, pipeline=pipe)
        with pytest.raises(Killed):
            loop.tick()
        killed_in_pipeline = len(pipe.calls) > len(pipe.finished)
        # the restart: a new process; the dead one's lock holders are recognised as dead
        monkeypatch.setattr(core, "_holder_dead", lambda info: True)
        spawned = 0
        for _ in range(3):  # a few ticks: the first may only clean up after the dead one
            loop2, store2, _, rolls2 = build(root, tmp, pipeline=pipe)
            rec = loop2.tick()
            spawned += rolls2.spawned
            assert rec["outcome"] == "ok", (n, writes[n - 1], rec)
        monkeypatch.undo()
        where = f"killed before write {n} ({writes[n - 1]})"
        reg = loop2.registry
        # one decision -> one finished run (a run killed inside its pipeline is restarted once) ...
        assert len(pipe.finished) == 1, (where, pipe.calls, pipe.finished)
        assert len(pipe.calls) == 1 + killed_in_pipeline, (where, pipe.calls)
        if killed_in_pipeline:
            assert pipe.calls[-1].startswith("restart of run "), (where, pipe.calls)
        cand = pipe.finished[0]
        # ... and one rollout, of that run's candidate, never two; production untouched
        doc, _ = load_rollout(reg.store, "tideline")
        assert doc.spec.candidate == cand and doc.spec.baseline == "v1", where
        assert reg.store.list("rollouts/history/") == [], (where, "a second rollout replaced the first")
        assert reg.aliases()["production"] == "v1" and reg.aliases().get("candidate") == cand, where
        assert spawned >= 1 or rolls2.latest()["controller_alive"] is False, where
        assert list_ticks(reg, limit=50), where


def test_store_unreachable_during_a_tick_is_one_line_and_no_partial_record(base: Path, tmp_path: Path) -> None:
    root = fresh(base, tmp_path)
    loop, store, pipe, rolls = build(root, tmp_path)
    store.down = True
    with pytest.raises(StorageUnavailable, match="unreachable"):
        loop.tick()
    store.down = False
    assert pipe.calls == [] and rolls.spawned == 0
    assert [t for t in list_ticks(loop.registry) if t["at"] == LATER.isoformat()] == []  # nothing half-written
    rec = build(root, tmp_path)[0].tick()  # the next tick retries
    assert rec["outcome"] == "ok" and any("started rollout" in d for d in rec["did"])


def test_a_run_that_died_twice_is_not_restarted_again_and_the_loop_cools_down(
        base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = fresh(base, tmp_path)
    store = FileStore(root)
    lock = {"run_id": "dead1", "reason": "restart of run dead0; model_age: ...", "owner": "somewhere:1",
            "acquired_at": LATER.isoformat(), "expires_at": (LATER + timedelta(hours=6)).isoformat()}
    store.put("runs/lock.json", json.dumps(lock).encode())
    store.put(STATE_KEY, json.dumps({"running": {"tick": "t", "lake": "x", "reason": "r"}}).encode())
    monkeypatch.setattr(core, "_holder_dead", lambda info: info.run_id == "dead1")
    loop, _, pipe, rolls = build(root, tmp_path)
    rec = loop.tick()
    st = {s["step"]: s for s in rec["steps"]}
    assert st["retrain"]["outcome"] == "died_twice" and pipe.calls == [] and rolls.spawned == 0
    state = json.loads(store.get(STATE_KEY)[0])
    assert state["cooldown_until"] and not state["running"]
    rec = build(root, tmp_path, now=LATER + timedelta(hours=1))[0].tick()
    assert {s["step"]: s["outcome"] for s in rec["steps"]}["cooldown"] == "waiting"


def _end_rollout(reg: Registry, phase: m.Phase, kill_switch: bool = False) -> None:
    doc, etag = load_rollout(reg.store, "tideline")
    doc.status.phase, doc.status.message, doc.status.kill_switch = phase, f"ended {phase.value}", kill_switch
    doc.applied_generation = doc.status.generation
    reg.store.put(rollout_key("tideline"), doc.to_json(), if_match=etag)


def test_an_ended_rollout_is_recorded_once_and_a_revert_starts_the_cooldown(base: Path, tmp_path: Path) -> None:
    root = fresh(base, tmp_path)
    loop, _, pipe, rolls = build(root, tmp_path)
    assert any("started rollout" in d for d in loop.tick()["did"])
    rec = build(root, tmp_path)[0].tick()
    assert {s["step"]: s["outcome"] for s in rec["steps"]}["rollout"] == "restarted"  # no controller ran (counted)
    _end_rollout(loop.registry, m.Phase.REVERTED, kill_switch=True)
    rec = build(root, tmp_path, now=LATER + timedelta(hours=1))[0].tick()
    st = {s["step"]: s for s in rec["steps"]}
    assert st["rollout"]["outcome"] == "reverted" and "cooling down until" in st["rollout"]["summary"]
    assert st["cooldown"]["outcome"] == "waiting" and any("KILL SWITCH ON" in d for d in rec["did"])
    rec = build(root, tmp_path, now=LATER + timedelta(hours=2))[0].tick()
    st = {s["step"]: s["outcome"] for s in rec["steps"]}
    assert "rollout" not in st and st["cooldown"] == "waiting"  # recorded once
    rec = build(root, tmp_path, now=LATER + timedelta(hours=26))[0].tick()
    assert "cooldown" not in {s["step"] for s in rec["steps"]}


def test_a_candidate_set_outside_the_loop_is_rolled_out(base: Path, tmp_path: Path) -> None:
    root = fresh(base, tmp_path)
    loop, _, pipe, rolls = build(root, tmp_path, now=NOW + timedelta(hours=1))  # no rule fires yet
    art = tmp_path / "art"
    art.mkdir()
    (art / "m.txt").write_text("x")
    v = loop.registry.register(art, {"family": "lightgbm"}).version
    loop.registry.set_alias("candidate", v, reason="pushed by a person")
    rec = loop.tick()
    st = {s["step"]: s for s in rec["steps"]}
    assert st["rollout"]["outcome"] == "started" and pipe.calls == [] and rolls.spawned == 1
    assert load_rollout(loop.registry.store, "tideline")[0].spec.candidate == v
