"""The continuous-learning loop: one **tick** ingests new bars, monitors production, decides, retrains, rolls
out, and writes one record of what it saw, what it did and why.

A tick, in order (each step's outcome goes into the record; a step that fails records its one-line reason
and the steps that depend on it are skipped — production is never touched by a failed step):

1. **lease** — one tick at a time per registry: ``loop/lock.json`` (the run lock's create-only / compare-and-
   swap protocol). A holder whose process is gone (same host, dead pid) is taken over at once; another live
   tick makes this one wait (``wait_s``) and then record that it was busy.
2. **ingest** — new files of ``loop.bars`` into the bar store (``tideline.loop.ingest``).
3. **monitor** — realized outcomes joined to the prediction log since production was deployed
   (``live-metrics.json``: live accuracy, Sharpe, change points on live errors); a drift check of production
   every ``loop.drift_every_hours``.
4. **rollout** — a rollout in flight is checked; if its controller died (its lease ran out) it is restarted
   once per tick and that is recorded. While one is in flight nothing is retrained.
5. **decide + retrain** — the trigger rules (``tideline.triggers.run_if_needed``, under the retraining run
   lock); when one fires, the training window comes from the change points detected on production's live
   outcomes (``triggers.training_window``: only bars of the new regime once enough exist, else the latest
   ``loop.lookback_bars``) and the retraining pipeline runs on exactly those bars.
6. **roll out** — an approved candidate gets its rollout started (shadow, canary steps, automatic rollback:
   ``loop.rollout``); with nothing in production the pipeline promotes directly.

The clock is injected (``clock``): ``--now`` for a fixed instant, an accelerated clock for replays.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Protocol

import pandas as pd

from tideline.clock import Now, aware, utc_timestamp, utcnow
from tideline.config import Settings
from tideline.errors import AliasConflict, PolicyError, RunInProgress, TidelineError
from tideline.features import warmup_bars
from tideline.loop.ingest import ingest, stored_bars
from tideline.loop.schedule import Schedule
from tideline.registry import Registry
from tideline.store import NotFound, Unchanged, update_json
from tideline.triggers import (
    DRIFT_ATTACHMENT,
    LockInfo,
    RunLock,
    run_if_needed,
    training_window,
)

log = logging.getLogger(__name__)

TICKS_PREFIX: Final = "loop/ticks/"
LOCK_KEY: Final = "loop/lock.json"
STATE_KEY: Final = "loop/state.json"


# ---- what the loop drives ------------------------------------------------------------------------------------
class Pipeline(Protocol):
    """Runs the retraining pipeline on ``source`` (the training window's bars); ``run_local``'s summary."""

    def __call__(self, settings: Settings, *, source: str | Path, rollout_mode: str, reason: str) -> dict[str, Any]:
        ...


class Rollouts(Protocol):
    """Starts rollouts and keeps their controllers alive (one reconcile loop: ``tideline.rollout``)."""

    def latest(self) -> dict[str, Any] | None:
        """The latest rollout, running or ended (``rollouts.latest_rollout``), or None."""
        ...

    def publish_recent(self, bars: pd.DataFrame) -> None:
        """Put the recent bars where the rollouts' controller reads live outcomes from (every tick)."""
        ...

    def restart(self) -> str:
        """Start a new controller for the rollout in flight (the old one died); what was done."""
        ...

    def start(self, candidate: str, baseline: str, reason: str) -> str:
        """Create the rollout of ``candidate`` against ``baseline`` and start its controller; what was done."""
        ...


def local_pipeline(settings: Settings, *, source: str | Path, rollout_mode: str, reason: str) -> dict[str, Any]:
    """The retraining pipeline on this machine (``kfp.local``)."""
    from tideline.training.orchestration import run_local

    return run_local(settings, source=source, rollout_mode=rollout_mode, reason=reason)


# ---- the record of a tick ------------------------------------------------------------------------------------
@dataclass
class TickRecord:
    """The record of one tick: its id, the loop's time (``at``) and the wall time, every step's outcome, what
    it did, and ``outcome`` (``ok``, ``busy`` or ``failed``, with the error).
    """
    id: str
    at: str  # the loop's clock
    wall: str  # when it really ran
    steps: list[dict[str, Any]] = field(default_factory=list)
    did: list[str] = field(default_factory=list)
    outcome: str = "ok"  # ok | busy | failed
    error: str | None = None
    seconds: float = 0.0

    def step(self, name: str, outcome: str, summary: str, **detail: Any) -> dict[str, Any]:
        """Append one step's entry (name, outcome, one-line summary, details) and return it."""
        entry = {"step": name, "outcome": outcome, "summary": summary, **detail}
        self.steps.append(entry)
        return entry

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (what ``loop/ticks/`` holds); ``seconds`` rounded to milliseconds."""
        return {"id": self.id, "at": self.at, "wall": self.wall, "outcome": self.outcome, "error": self.error,
                "did": self.did, "steps": self.steps, "seconds": round(self.seconds, 3)}


def write_record(registry: Registry, rec: TickRecord) -> str:
    """Store ``rec`` under ``loop/ticks/`` (named by wall time and id, so keys sort by time) and return its key.

    The write is create-only; the store's errors (``StorageUnavailable`` ...) propagate.
    """
    key = f"{TICKS_PREFIX}{rec.wall.replace(':', '').replace('-', '')[:22]}-{rec.id}.json"
    registry.store.put(key, json.dumps(rec.to_dict(), indent=1, default=str).encode(), if_none_match=True)
    return key


def list_ticks(registry: Registry, limit: int = 20) -> list[dict[str, Any]]:
    """The latest tick records, newest first (unreadable ones are skipped)."""
    out = []
    for key in sorted(registry.store.list(TICKS_PREFIX), reverse=True)[:limit]:
        try:
            out.append(json.loads(registry.store.get(key)[0]))
        except (NotFound, ValueError):
            continue
    return out


# ---- the loop lease ----------------------------------------------------------------------------------------
def _holder_dead(info: LockInfo) -> bool:
    """True when the holder ran on this host and its process is gone (a killed tick)."""
    host, _, pid = info.owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class LoopLease:
    """One tick at a time: the run lock's protocol on ``loop/lock.json``, taking over a dead holder. Its
    times are real (wall clock), whatever clock the loop's decisions run on."""

    def __init__(self, registry: Registry, ttl_s: float) -> None:
        self.lock = RunLock(registry.store, ttl_s, clock=utcnow, key=LOCK_KEY)

    def acquire(self, tick_id: str, wait_s: float) -> LockInfo | None:
        """None when taken; else the live holder that kept it for ``wait_s`` seconds."""
        deadline = time.monotonic() + wait_s
        while True:
            if self.lock.acquire(tick_id, "loop tick"):
                return None
            holder = self.lock.current()
            if holder is not None and _holder_dead(holder):
                log.warning("loop lease held by %s, whose process is gone: taken over", holder.owner)
                self._take_over(holder)
                continue
            if time.monotonic() >= deadline:
                return holder or LockInfo("?", "", "", "", "another tick (the lock kept changing)")
            time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))

    def _take_over(self, dead: LockInfo) -> None:
        self.release_dead(self.lock, dead)

    @staticmethod
    def release_dead(lock: RunLock, dead: LockInfo) -> None:
        """Mark ``dead``'s hold of ``lock`` released (compare-and-swap: a lock that moved on is left alone)."""
        def release(doc: dict[str, Any] | None) -> tuple[dict[str, Any], None]:
            if doc is None or doc.get("run_id") != dead.run_id:
                raise Unchanged()
            return doc | {"released": True, "released_at": utcnow().isoformat(),
                          "released_by": "a later tick: the holder's process was gone"}, None

        with contextlib.suppress(AliasConflict):  # it kept changing: somebody else is acting on it
            update_json(lock.store, lock.key, release)

    def release(self, tick_id: str) -> None:
        """Release the lease held by ``tick_id``; one that ran out and was taken over is left alone (logged)."""
        try:
            self.lock.release(tick_id)
        except PolicyError as e:  # lease ran out and another tick took it: nothing of ours to release
            log.warning("%s", e)


# ---- the loop ------------------------------------------------------------------------------------------------
class Loop:
    """The continuous-learning loop over one registry: each ``tick`` ingests, monitors, decides, retrains and
    rolls out (see the module docstring). ``rollouts`` starts rollouts (None: none are started), ``pipeline`` runs
    a retrain (default ``kfp.local`` in this process), ``clock`` is the loop's time.
    """
    def __init__(self, settings: Settings, registry: Registry, *, rollouts: Rollouts | None,
                 pipeline: Pipeline | None = None, clock: Now = utcnow, workdir: Path | None = None,
                 drift_html: Path | None = None) -> None:
        self.s = settings
        self.registry = registry
        self.rollouts = rollouts
        self.pipeline = pipeline or local_pipeline
        self.clock = clock
        self.workdir = Path(workdir or Path(settings.home) / "loop")
        self.drift_html = drift_html

    # -- one tick --------------------------------------------------------------------------------------------
    def tick(self, *, wait_s: float = 0.0, force: str | None = None) -> dict[str, Any]:
        """One tick; ``force`` (a reason) retrains whatever the rules say (a scheduled retrain), unless a
        rollout is in flight, the loop cools down, or a run holds the run lock."""
        now = aware(self.clock())
        rec = TickRecord(id=uuid.uuid4().hex[:12], at=now.isoformat(), wall=utcnow().isoformat())
        t0 = time.perf_counter()
        lease = LoopLease(self.registry, self.s.loop.lease_seconds)
        holder = lease.acquire(rec.id, wait_s)
        if holder is not None:
            rec.outcome = "busy"
            rec.step("lease", "busy", f"another tick holds the loop ({holder.owner}, since {holder.acquired_at})")
            rec.seconds = time.perf_counter() - t0
            write_record(self.registry, rec)
            return rec.to_dict()
        try:
            self._run(rec, now, force)
        except TidelineError as e:
            rec.outcome, rec.error = "failed", str(e)
            log.error("loop tick %s failed: %s", rec.id, e)
        finally:
            lease.release(rec.id)
        rec.seconds = time.perf_counter() - t0
        write_record(self.registry, rec)
        return rec.to_dict()

    def _run(self, rec: TickRecord, now: datetime, force: str | None = None) -> None:
        cfg = self.s.loop
        if cfg.bars:
            rep = ingest(self.registry.store, cfg.bars, now=now.timestamp(), settle_s=cfg.settle_seconds,
                         restatements=cfg.restatements, endpoint_url=self.s.endpoint_url(),
                         naive_timezone=self.s.data.naive_timezone)
            rec.step("ingest", "refused" if rep.refused else "ok", rep.summary(), report=rep.to_dict())
        bars = stored_bars(self.registry.store)
        if len(bars) == 0:
            rec.step("monitor", "skipped", "no bars stored yet: nothing to monitor or learn from")
            return
        recent = _recent(bars, cfg.monitor_bars + 200)  # for the rollouts' live outcomes
        _write_atomic(recent, recent_bars_path(self.s))
        if self.rollouts is not None:
            self.rollouts.publish_recent(recent)
        production = self.registry.aliases().get("production")
        live = self._monitor(rec, bars, production, now)
        if self.s.experience.enabled:
            self._experience(rec, bars, now)
        state = self._state()
        if self._rollout_in_flight(rec, state, now):
            return
        if self._cooling_down(rec, state, now):
            return
        restart_of = self._dead_run(rec, state, now)
        if restart_of is False:
            return
        if production and self._pick_up_candidate(rec, production):
            return
        self._decide(rec, bars, production, live, now, state, restart_of=restart_of or None, force=force)

    def _dead_run(self, rec: TickRecord, state: dict[str, Any], now: datetime) -> str | bool:
        """A retraining run whose process died (it still holds the run lock) is restarted once: its lock is
        released and this tick decides again (its run's reason names the dead one). A restart that died too is
        not restarted again: the loop cools down. Returns the dead run's id, "" when none, False to stop."""
        lock = RunLock(self.registry.store, self.s.triggers.lock_ttl_seconds, clock=self.clock)
        holder = lock.current(now)
        if holder is None or not _holder_dead(holder):
            return ""
        LoopLease.release_dead(lock, holder)
        if not state.get("running"):  # its pipeline had returned (the candidate is named): nothing to redo
            rec.step("retrain", "released", f"retraining run {holder.run_id} died after its pipeline finished: "
                     "its lock is released, its result stands")
            return ""
        state["running"] = None
        self._save_state(state)
        if holder.reason.startswith("restart of run "):
            until = now + timedelta(hours=self.s.loop.cooldown_hours)
            state |= {"cooldown_until": until.isoformat(),
                      "cooldown_reason": f"retraining run {holder.run_id} (itself a restart) died too"}
            self._save_state(state)
            rec.step("retrain", "died_twice", f"retraining run {holder.run_id}, the restart of a run that died, "
                     f"died too (its process is gone): not restarted again; cooling down until {until.isoformat()}")
            return False
        rec.did.append(f"retraining run {holder.run_id} had died (its process is gone): restarted once")
        rec.step("retrain", "restarting", f"retraining run {holder.run_id} ({holder.reason[:120]}) died with its "
                 "process: the rules decide again and a run starts as its restart")
        return holder.run_id

    # -- the loop's own memory (what it has seen of ended rollouts, the cooldown) ----------------------------
    def _state(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.registry.store.get(STATE_KEY)[0]))
        except NotFound:
            return {}
        except ValueError as e:
            log.warning("loop state unreadable (%s): starting from an empty one", e)
            return {}

    def _save_state(self, state: dict[str, Any]) -> None:
        self.registry.store.put(STATE_KEY, json.dumps(state, indent=1).encode())

    def _cooling_down(self, rec: TickRecord, state: dict[str, Any], now: datetime) -> bool:
        until = state.get("cooldown_until")
        if not until or now >= datetime.fromisoformat(until):
            return False
        rec.step("cooldown", "waiting", f"cooling down until {until} after {state.get('cooldown_reason', 'a revert')}"
                 ": no retrain or rollout before then")
        return True

    def _pick_up_candidate(self, rec: TickRecord, production: str) -> bool:
        """A ``candidate`` set outside the loop (a cluster pipeline run, a person) gets its rollout started."""
        if self.rollouts is None:
            return False
        cand = self.registry.aliases().get("candidate")
        if not cand or cand == production:
            return False
        last = self.rollouts.latest()
        if last is not None and last["candidate"] == cand:
            return False  # its rollout ran already (it keeps the alias only while running)
        self._start_rollout(rec, cand, production, f"candidate {cand} set in the registry")
        return True

    # -- monitor ---------------------------------------------------------------------------------------------
    def _monitor(self, rec: TickRecord, bars: pd.DataFrame, production: str | None,
                 now: datetime) -> dict[str, Any] | None:
        if production is None:
            rec.step("monitor", "skipped", "nothing in production yet")
            return None
        from tideline.monitoring.feedback import run_feedback

        since = self._deployed_at(production)
        try:
            # the whole record since the deployment: change points (and so the training window) ...
            whole = run_feedback(self.registry, bars, since=since, now=now, write=False,
                                 skew_sample=self.s.loop.skew_sample)
            # ... and the latest monitor_bars (what the decay rule judges: live-metrics.json)
            fb = run_feedback(self.registry, _recent(bars, self.s.loop.monitor_bars), since=since, now=now)
        except TidelineError as e:
            rec.step("monitor", "failed", f"live outcomes: {e}")
            return None
        m = fb.versions.get(production)
        cps = [c.to_dict() for c in whole.change_points.get(production, [])]
        summary = (f"{production}: {m.n} live outcome(s) in the latest {self.s.loop.monitor_bars} bars, directional "
                   f"accuracy {_fmt(m.directional_accuracy)}, Sharpe {_fmt(m.sharpe)}" if m and m.n else
                   f"{production}: no realized outcomes yet")
        if cps:
            summary += f"; {len(cps)} change point(s) in its live errors, the latest at {cps[-1].get('timestamp')}"
        skew = {v: k.to_dict() for v, k in whole.skew.items()}
        differ = {v: k for v, k in whole.skew.items() if k.mismatched}
        if differ:
            summary += "; training/serving skew: " + "; ".join(k.summary() for k in differ.values())
        rec.step("monitor", "ok", summary, version=production, predictions=whole.n_predictions, change_points=cps,
                 live={"n": m.n, "directional_accuracy": m.directional_accuracy, "sharpe": m.sharpe} if m else None,
                 skew=skew, skew_mismatched=sum(k.mismatched for k in whole.skew.values()))
        if self.s.loop.drift_checks:
            self._maybe_drift(rec, bars, production, now)
        return {"change_points": cps}

    def _experience(self, rec: TickRecord, bars: pd.DataFrame, now: datetime) -> None:
        """Add the predictions whose outcomes are now known to the experience buffer (a failure is recorded and
        the tick goes on: the buffer catches up on the next one)."""
        from tideline.monitoring.experience import collect

        try:
            res = collect(self.registry, bars, self.s.experience, now=now)
        except TidelineError as e:
            rec.step("experience", "failed", f"experience buffer: {e}")
            return
        rec.step("experience", "ok", res.summary(), added=res.added, pending=res.pending, skew=res.skew,
                 quarantined=res.quarantined, skew_examples=res.skew_examples)

    def _deployed_at(self, production: str) -> datetime:
        """When production was last promoted (its live record starts there)."""
        for ev in reversed(self.registry.history()):
            at = utc_timestamp(ev.at) if ev.action in ("promote", "rollback") and ev.version == production else None
            if at is not None:
                return at.to_pydatetime()
        return datetime(1970, 1, 1, tzinfo=UTC)

    def _maybe_drift(self, rec: TickRecord, bars: pd.DataFrame, production: str, now: datetime) -> None:
        from tideline.monitoring.drift import run_drift_check

        last = self._attachment(production, DRIFT_ATTACHMENT)
        last_at = utc_timestamp(last["checked_at"]) if last and last.get("checked_at") else None
        if last_at is not None:
            if now - last_at.to_pydatetime() < timedelta(hours=self.s.loop.drift_every_hours):
                return
        recent = _recent(bars, self.s.loop.monitor_bars + 100)
        try:
            out = run_drift_check(self.registry, recent, cfg=self.s.drift, now=now, html_out=self.drift_html,
                                  html=self.s.loop.drift_html)
        except TidelineError as e:
            rec.step("drift", "failed", f"drift check of {production}: {e}")
            return
        res = out.result
        thr = self.s.triggers.drift_share_threshold
        rule = (f", the rule fires at {thr}" if "drift" in self.s.triggers.enabled
                else f"; the drift rule, off here, would fire at {thr}")
        imp = res.extra.get("importance_change") or {}
        rec.step("drift", "ok", f"{production}: {len(res.drifted_columns())} of {len(res.columns)} features "
                 f"drifted (share {res.drifted_share:.2f}{rule})"
                 + (f"; {imp.get('summary') or 'importance not measured: ' + str(imp.get('error'))}" if imp else ""),
                 importance_change=imp or None,
                 share=res.drifted_share, drifted=[c.column for c in res.drifted_columns()],
                 columns=len(res.columns), threshold=self.s.triggers.drift_share_threshold)

    def _attachment(self, version: str, name: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.registry.get_attachment(version, name))
        except (TidelineError, ValueError, NotFound):
            return None

    # -- rollouts --------------------------------------------------------------------------------------------
    def _rollout_in_flight(self, rec: TickRecord, state: dict[str, Any], now: datetime) -> bool:
        if self.rollouts is None:
            return False
        try:
            act = self.rollouts.latest()
        except TidelineError as e:
            rec.step("rollout", "failed", f"rollout status: {e}")
            return True  # unknown: do not start another
        if act is None:
            return False
        if act["terminal"]:
            if state.get("seen_rollout") != act["id"]:
                self._rollout_ended(rec, state, act, now)
            return False
        what = f"rollout {act['name']} of {act['candidate']} in flight: {act['phase']} {act.get('weight', 0)}%"
        if not act.get("controller_alive", True):
            try:
                done = self.rollouts.restart()
            except TidelineError as e:  # a cluster's operator is restarted by Kubernetes, not by the loop
                rec.step("rollout", "stalled", f"{what}; {e}")
                return True
            rec.did.append(done)
            rec.step("rollout", "restarted", f"{what}; its controller had died: {done}")
        else:
            rec.step("rollout", "in_flight", f"{what}; nothing is retrained meanwhile")
        return True

    def _rollout_ended(self, rec: TickRecord, state: dict[str, Any], act: dict[str, Any], now: datetime) -> None:
        phase = act["phase"]
        summary = f"rollout {act['name']} of {act['candidate']} ended {phase}: {act['message']}"
        state["seen_rollout"] = act["id"]
        if phase == "Reverted":
            until = now + timedelta(hours=self.s.loop.cooldown_hours)
            state["cooldown_until"] = until.isoformat()
            state["cooldown_reason"] = f"the guard reverted {act['candidate']} to {act['baseline']}"
            summary += f"; cooling down until {until.isoformat()}"
        if act.get("kill_switch"):
            log.error("KILL SWITCH ON: %s", act["message"])
            rec.did.append(f"KILL SWITCH ON: every predictor answers flat ({act['message']})")
        self._save_state(state)
        rec.step("rollout", phase.lower(), summary, kill_switch=bool(act.get("kill_switch")))

    # -- decide, retrain, roll out -----------------------------------------------------------------------------
    def _decide(self, rec: TickRecord, bars: pd.DataFrame, production: str | None,
                live: dict[str, Any] | None, now: datetime, state: dict[str, Any],
                restart_of: str | None = None, force: str | None = None) -> None:
        times = pd.DatetimeIndex(bars["timestamp"].unique()).sort_values()
        recent = _recent(bars, self.s.loop.monitor_bars)

        def retrain(*, settings: Settings, reason: str) -> dict[str, Any]:
            cfg = settings.loop
            allowed, why = Schedule(cfg.schedule).may_retrain(now)
            if not allowed:
                return {"deferred": {"reason": why}}
            win = training_window(live, times, min_bars=cfg.min_window_bars, from_start=cfg.window_from == "start",
                                  lookback_bars=cfg.lookback_bars or len(times))
            if not win.ready:
                return {"deferred": win.to_dict()}
            window = bars
            if win.start is not None:  # from the window's start, with the features' warm-up bars before it
                pos = max(0, int(times.searchsorted(win.start)) - warmup_bars(settings.features))
                window = bars[bars["timestamp"] >= times[pos]]
            lake = self.workdir / "lake" / f"{now:%Y%m%dT%H%M%S}-{rec.id}.parquet"
            lake.parent.mkdir(parents=True, exist_ok=True)
            window.to_parquet(lake, index=False)
            mode = "rollout" if production else "direct"
            # the loop's memory that a pipeline is running: a run that dies before clearing it is restarted once
            self._save_state(state | {"running": {"tick": rec.id, "lake": str(lake), "reason": reason[:200]}})
            try:
                res = self.pipeline(settings, source=lake, rollout_mode=mode, reason=reason[:200])
            finally:  # returned or failed (not killed): nothing to restart
                self._save_state(state | {"running": None})
            return {"window": win.to_dict(), "rows": len(window), **{k: res.get(k) for k in (
                "run_id", "versions", "decision", "best", "reasons", "candidate", "promoted", "seconds",
                "submitted", "source", "failures")}}

        try:
            note = f"restart of run {restart_of}" if restart_of else force
            decision = run_if_needed(self.registry, self.s, starter=retrain, bars=recent, now=now, clock=self.clock,
                                     note=note, force=bool(restart_of or force))
        except RunInProgress as e:
            rec.step("retrain", "busy", str(e))
            return
        except TidelineError as e:
            rec.step("retrain", "failed", f"the retraining run failed: {e}")
            return
        report = decision["report"]
        rules = [{"name": r["name"], "fired": r["fired"], "reason": r["reason"]} for r in report["rules"]
                 if r["reason"] != "rule disabled"]
        if not decision["started"]:
            rec.step("decide", "busy" if report["fired"] else "no_retrain", decision["reason"], rules=rules)
            return
        rec.step("decide", "retrain", decision["reason"], rules=rules)
        res = decision["result"] or {}
        if "deferred" in res:
            rec.step("retrain", "deferred", f"deferred: {res['deferred']['reason']}", window=res["deferred"])
            return
        if res.get("submitted"):  # a cluster run: its gate names the candidate, a later tick rolls it out
            rec.did.append(f"submitted retraining run {res.get('run_id')} on {res['rows']:,} bars "
                           f"({res['window']['reason']})")
            rec.step("retrain", "submitted", f"Kubeflow Pipelines run {res.get('run_id')} on {res.get('source')}: "
                     "its gate names the candidate, which a later tick rolls out", run_id=res.get("run_id"),
                     window=res.get("window"))
            return
        rec.did.append(f"retrained on {res['rows']:,} bars ({res['window']['reason']}): run {res.get('run_id')}")
        best = res.get("best") or {}
        rec.step("retrain", "approved" if best else "rejected",
                 _gate_summary(res), run_id=res.get("run_id"), versions=res.get("versions"),
                 window=res.get("window"), failures=res.get("failures") or {})
        if res.get("promoted"):
            rec.did.append(f"promoted {res['promoted']} (nothing was in production)")
        elif res.get("candidate") and production:
            self._start_rollout(rec, res["candidate"], production, decision["reason"])

    def _start_rollout(self, rec: TickRecord, candidate: str, baseline: str, reason: str) -> None:
        if self.rollouts is None:
            rec.step("rollout", "skipped", f"{candidate} is approved; no rollout driver: start it with "
                     "`tideline rollout start`")
            return
        try:
            done = self.rollouts.start(candidate, baseline, reason)
        except TidelineError as e:
            rec.step("rollout", "failed", f"could not start the rollout of {candidate}: {e}")
            return
        rec.did.append(done)
        rec.step("rollout", "started", done)


def recent_bars_path(settings: Settings) -> Path:
    """Where each tick leaves the latest bars, for the live outcomes of the rollouts it starts."""
    return Path(settings.home) / "loop" / "recent-bars.parquet"


def _write_atomic(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def _recent(bars: pd.DataFrame, n: int) -> pd.DataFrame:
    """The latest ``n`` bar times of every symbol."""
    times = bars["timestamp"].drop_duplicates().sort_values()
    start = times.iloc[max(0, len(times) - n)]
    return bars[bars["timestamp"] >= start].reset_index(drop=True)


def _fmt(x: Any) -> str:
    return "-" if x is None or x != x else f"{x:.3f}"


def _gate_summary(res: dict[str, Any]) -> str:
    best = res.get("best") or {}
    versions = res.get("versions") or {}
    reg = ", ".join(f"{v} ({f})" for f, v in versions.items()) or "nothing"
    if best:
        why = "; ".join((res.get("reasons") or {}).get(best.get("family"), [])[-2:])
        return f"registered {reg}; {best.get('version')} ({best.get('family')}) approved: {why}"
    reasons = res.get("reasons") or {}
    return f"registered {reg}; every candidate rejected: " + "; ".join(
        f"{fam}: {', '.join(r[:2])}" for fam, r in reasons.items())
