"""``tideline demo``: the continuous-learning loop on one machine, for real, in a few minutes.

The demo is a thin driver over ``tideline loop`` (``tideline.loop.core.Loop``): it makes the world and tells
the story; every decision comes from the loop's code. Nothing is simulated except the market and the clock.
A synthetic multi-symbol market whose hidden signal flips partway (a concept shift) is replayed bar by bar:

* **the world** (this module): the market delivers its bars as files into the loop's inbox (``loop.bars``),
  clients send one request per bar (one row per symbol) through the router to real predictor processes
  (kserve ``ModelServer``), which log every prediction to the registry store; some bars after the first
  promotion someone pushes a broken model (trained on shuffled labels) as the registry's ``candidate``.
* **the clock** is accelerated: the loop's clock is the latest delivered bar; the loop ticks every
  ``check_every`` bars; the rollout controller's clock advances by replaying ``interval_bars`` bars per
  analysis interval (``InlineRollouts``: the one controller, run in this process instead of a
  ``tideline rollout resume`` process).
* **the loop** (each tick): ingests the new file, joins realized outcomes to the prediction log, checks
  drift now and then, evaluates the trigger rules; the first tick finds nothing in production and the
  retraining pipeline (``kfp.local``) trains and promotes v1. After the shift the live record decays,
  ``performance_decay`` fires, the training window follows the live change detectors (a retrain waits for
  enough bars of the new regime), the pipeline retrains, the gate approves v2 and the loop starts its rollout
  (shadow -> canary 10/25/50 -> promoted -> watched by the guard with v1 in shadow). The pushed broken
  candidate is picked up by the loop and rolled out; the live accuracy check fails in shadow and the
  controller rolls it back. Production never changes.
* At the end: the prediction log joined with realized outcomes gives the live record per version, the
  static counterfactual (v1 never replaced) is predicted on the same bars, and ``tideline.app.report`` writes one
  self-contained HTML report. Exit 0 only if the story happened (``DemoResult.ok``).

Deterministic by seed: the market, the models, the request ids (the router's split hashes them) and every
decision point are functions of the seed and the bar index, not of wall time; figures can differ only in
latency.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tideline.clock import utcnow
from tideline.config import EvaluationConfig, LoopConfig, LoopRolloutConfig, Settings, TrainingConfig, TriggerConfig
from tideline.errors import ConfigError, TidelineError
from tideline.loop.alerts import list_alerts, process

log = logging.getLogger(__name__)

NAME = "tideline"
DEMO_FAMILIES: tuple[str, ...] = ("lightgbm", "xgboost", "sklearn")  # tabular: one request shape for all
# Calendar rules (model_age, cadence, new_data) mean nothing on an accelerated clock; the volatility rules
# (regime_shift, drift) would retrain on the synthetic market's volatility regimes, which do not hurt the model.
# Drift is still checked and reported; live performance decides.
_TRIGGER_RULES = ["no_production", "performance_decay", "manual"]


@dataclass(frozen=True)
class DemoConfig:
    """The story's shape, in bars (one bar = one hour of the synthetic market)."""

    seed: int = 7
    symbols: int = 8
    bars: int = 2000
    history: int = 800
    """bars before the live replay: v1's training data."""
    shift_at: int = 1150
    """bar index where the hidden signal flips."""
    signal_strength: float = 0.6
    families: tuple[str, ...] = ("lightgbm", "sklearn")
    check_every: int = 25
    """bars between feedback + trigger checks."""
    drift_every: int = 200
    """bars between drift checks."""
    metrics_window: int = 100
    """bars of live outcomes the decay rule judges."""
    min_window_bars: int = 100
    """bars of a new regime needed before a retrain learns from them (with production recalibrated on them as
    one candidate, 100 bars give the gate enough; a fresh model alone needed about 200)."""
    window_from: str = "start"
    """count them from where the change most likely began (``start``) or from its detection (``detection``)."""
    superiority_alpha: float | None = 0.05
    """a rollout whose sequential test finds the candidate clearly better promotes from its first passing canary
    step (``tideline.rollout.analysis``); None walks every step."""
    recalibrate: bool = True
    """production recalibrated on the window is one more candidate of a retrain (``training.recalibrate``)."""
    canary_steps: tuple[int, ...] = (25, 50, 100)
    """the rollouts' canary weights. The demo's clients send one request per bar, so a 10% step would see 2.5
    candidate requests per interval and often too few to judge."""
    lookback_bars: int = 800
    """training window when no change was detected."""
    interval_bars: int = 25
    """bars replayed per rollout analysis interval."""
    broken_after: int = 60
    """bars after the promotion before the broken candidate is rolled out."""
    flip: bool = True
    """False: the signal never flips (the same market otherwise): what the loop does when nothing changed —
    the false-alarm run of ``bench/bench_learning.py --no-flip``; the story's checks then fail by design."""
    revert_at: int | None = None
    """bar index where the signal flips back (a second shift, e.g. inside the retrained version's watch: the
    guard then finds it worse than the version it replaced and reverts); None: one shift only."""
    watch_intervals: int = 4
    """analysis intervals the guard watches a promotion (previous in shadow) before it stands."""
    cost_bps: float = 1.0
    request_bars: int = 128
    """bars of each symbol one request sends (the predictor computes the features; at least their warm-up)."""
    max_p99_latency_ms: float = 1000.0
    """the rollouts' latency limit. The demo's candidates are judged on accuracy and errors; with a few
    canary requests per interval p99 is the slowest one, so a tight limit would roll back on a machine
    that is merely busy."""

    def validate(self) -> None:
        """Check the story fits together: symbols 1..50, ``300 <= history < shift_at < bars`` (and
        ``shift_at < revert_at < bars``), enough bars after the shift, tabular demo families only, intervals >= 1.

        Raises ``ConfigError`` naming the first rule broken.
        """
        if self.symbols < 1 or self.symbols > 50:
            raise ConfigError("--symbols must be between 1 and 50")
        if not 300 <= self.history < self.shift_at < self.bars:
            raise ConfigError("need 300 <= history < shift_at < bars")
        if self.revert_at is not None and not self.shift_at < self.revert_at < self.bars:
            raise ConfigError("need shift_at < revert_at < bars")
        if self.bars - self.shift_at < (self.min_window_bars + (6 + self.watch_intervals) * self.interval_bars
                                         + self.broken_after):
            raise ConfigError("too few bars after the shift for a retrain, a rollout and the broken candidate")
        if not set(self.families) <= set(DEMO_FAMILIES) or not self.families:
            raise ConfigError(f"demo families must be among {', '.join(DEMO_FAMILIES)} (torch reads a "
                              "different request shape)")
        for k in ("check_every", "drift_every", "metrics_window", "min_window_bars", "lookback_bars",
                  "interval_bars", "watch_intervals"):
            if getattr(self, k) < 1:
                raise ConfigError(f"{k} must be >= 1")
        from tideline.config import FeatureConfig
        from tideline.features import feature_warmup

        warmup = feature_warmup(FeatureConfig())
        if not warmup <= self.request_bars <= self.history:
            raise ConfigError(f"request_bars must be between the features' warm-up ({warmup}) and history "
                              f"({self.history}); got {self.request_bars}")

    @classmethod
    def short(cls, seed: int = 7) -> DemoConfig:
        """A smaller story for tests (same steps, fewer bars and symbols)."""
        return cls(seed=seed, symbols=4, bars=1250, history=450, shift_at=700, families=("lightgbm",),
                   check_every=20, drift_every=200, metrics_window=80, min_window_bars=160, window_from="detection",
                   superiority_alpha=None, canary_steps=(10, 25, 50, 100), lookback_bars=450,
                   interval_bars=20, broken_after=40)


@dataclass
class DemoResult:
    """What a demo run produced: ``ok`` (every check passed), the checks, the HTML report and JSON record
    paths, the wall seconds and the record itself.
    """
    ok: bool
    checks: list[dict[str, Any]]
    report: Path
    record_path: Path
    seconds: float
    record: dict[str, Any] = field(repr=False, default_factory=dict)


# ---- the timeline ------------------------------------------------------------------------------------
_STYLE = {"shift": "bold red", "train": "cyan", "serve": "green", "trigger": "yellow", "retrain": "cyan",
          "gate": "magenta", "rollout": "blue", "promoted": "bold green", "rolled_back": "bold red",
          "drift": "yellow", "info": "dim"}


class Timeline:
    """Events, printed as they happen (rich) and kept for the report."""

    def __init__(self, console: Any | None) -> None:
        self.console = console
        self.t0 = time.monotonic()
        self.events: list[dict[str, Any]] = []

    def add(self, kind: str, text: str, *, bar_time: Any = None, version: str | None = None) -> None:
        """Record one event (bar time, wall seconds since start, kind, version, text); print it if a console is set."""
        wall = round(time.monotonic() - self.t0, 2)
        bt = None if bar_time is None else pd.Timestamp(bar_time).isoformat()
        self.events.append({"time": bt, "wall": wall, "kind": kind, "version": version, "text": text})
        log.info("%s %s", kind, text)
        if self.console is not None:
            from rich.markup import escape

            when = pd.Timestamp(bar_time).strftime("%Y-%m-%d %H:%M") if bar_time is not None else " " * 16
            self.console.print(f"[dim]{wall:7.1f}s[/] [dim]{when}[/] [{_STYLE.get(kind, 'white')}]"
                               f"{kind:<11}[/] {escape(text)}", highlight=False)


# ---- the world: market, features, registry -------------------------------------------------------------
class World:
    """The demo's world: the settings, a file registry under ``home``, the seeded synthetic market, its
    features and the request body of every live bar. Building it creates ``home/lake`` and ``home/inbox``.
    """
    def __init__(self, cfg: DemoConfig, home: Path) -> None:
        from tideline.data import synthetic_market
        from tideline.features import build_dataset
        from tideline.registry import open_registry

        self.cfg = cfg
        self.home = home
        self.settings = Settings(
            registry=(home / "registry").resolve().as_uri(), home=home,
            evaluation=EvaluationConfig(cost_bps=cfg.cost_bps),
            training=TrainingConfig(families=list(cfg.families), seed=cfg.seed, recalibrate=cfg.recalibrate),
            triggers=TriggerConfig(enabled=_TRIGGER_RULES, min_live_samples=min(200, cfg.symbols * 40)),
            loop=LoopConfig(
                bars=str(home / "inbox"), settle_seconds=0.0, monitor_bars=cfg.metrics_window,
                drift_every_hours=float(cfg.drift_every), min_window_bars=cfg.min_window_bars,
                window_from=cfg.window_from,
                lookback_bars=cfg.lookback_bars,
                # one analysis interval = 1 s of the controller's clock = interval_bars replayed bars
                rollout=LoopRolloutConfig(
                    name=NAME, shadow_seconds=2.0, min_labelled=cfg.symbols * 15, steps=list(cfg.canary_steps),
                    interval_seconds=1.0, failure_limit=2, max_inconclusive=8, max_error_rate=0.01,
                    max_p99_latency_ms=cfg.max_p99_latency_ms, min_requests=2, accuracy_margin=0.05,
                    min_outcomes=cfg.symbols * 10, watch_seconds=float(cfg.watch_intervals),
                    superiority_alpha=cfg.superiority_alpha,
                    watch_min_accuracy=0.45, watch_min_outcomes=cfg.symbols * 20)),
        )
        self.registry = open_registry(self.settings.registry_uri())
        self.market = synthetic_market(n_symbols=cfg.symbols, n_bars=cfg.bars, seed=cfg.seed,
                                       shifts=([cfg.shift_at] + ([cfg.revert_at] if cfg.revert_at else []))
                                       if cfg.flip else [],
                                       signal_strength=cfg.signal_strength)
        self.times = pd.DatetimeIndex(sorted(self.market["timestamp"].unique()))
        self.shift_time = self.times[cfg.shift_at]
        self.revert_time = self.times[cfg.revert_at] if cfg.revert_at else None
        self.ds = build_dataset(self.market, self.settings.features)
        self.columns = list(self.ds.spec.tabular)
        first_feature_time = pd.Timestamp(self.ds.meta["timestamp"].min())
        self.warmup_bars = int((self.times < first_feature_time).sum())
        # the live bars: every bar time from the end of the history that has features and a label
        meta_times = pd.DatetimeIndex(self.ds.meta["timestamp"])
        labelled = set(meta_times)
        self.live_times = [t for t in self.times[cfg.history:] if t in labelled]
        self._live_set = set(self.live_times)
        self._fragments, self._symbol_rows = self._bar_fragments()
        (home / "lake").mkdir(parents=True, exist_ok=True)
        (home / "inbox").mkdir(parents=True, exist_ok=True)
        self.live_bars_path = home / "lake" / "live-bars.parquet"
        self.delivered: pd.Timestamp | None = None

    def _bar_fragments(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Every bar of the market as its JSON object (what a client sends), and each symbol's bar positions."""
        m = self.market.sort_values(["symbol", "timestamp"], kind="stable").reset_index(drop=True)
        stamps = m["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S").to_numpy()
        frags = np.array([json.dumps({"symbol": s, "timestamp": t, "open": o, "high": h, "low": lo, "close": c,
                                      "volume": v})
                          for s, t, o, h, lo, c, v in zip(m["symbol"].astype(str), stamps, *(
                              m[k].to_numpy(np.float64).tolist() for k in ("open", "high", "low", "close", "volume")),
                              strict=True)], dtype=object)
        times = m["timestamp"].to_numpy()
        rows = {str(s): np.flatnonzero(m["symbol"].to_numpy() == s) for s in m["symbol"].unique()}
        return frags, {s: (idx, times[idx]) for s, idx in rows.items()}

    def body(self, t: pd.Timestamp) -> bytes:
        """The JSON request body of bar time ``t``: each symbol's last ``request_bars`` bars up to ``t`` (the
        predictor computes the features); ``KeyError`` for a bar not sent live."""
        if t not in self._live_set:
            raise KeyError(t)
        n, parts = self.cfg.request_bars, []
        for idx, times in self._symbol_rows.values():
            end = int(np.searchsorted(times, np.datetime64(t), side="right"))
            parts.extend(self._fragments[idx[max(0, end - n):end]])
        return ('{"instances":[' + ",".join(parts) + "]}").encode()

    def bars_until(self, t: pd.Timestamp, start: pd.Timestamp | None = None) -> pd.DataFrame:
        """The market's bars up to ``t`` (and from ``start``, when given), both ends included."""
        m = self.market["timestamp"] <= t
        if start is not None:
            m &= self.market["timestamp"] >= start
        return self.market.loc[m].reset_index(drop=True)

    def write_live_bars(self, t: pd.Timestamp) -> None:
        """Atomically (re)write ``live_bars_path`` with every bar up to ``t`` (the rollouts' live outcomes)."""
        from tideline.data import write_bars

        tmp = self.live_bars_path.with_suffix(".tmp.parquet")
        write_bars(self.bars_until(t), tmp)
        os.replace(tmp, self.live_bars_path)

    def deliver(self, t: pd.Timestamp) -> None:
        """The market's data feed: the bars after the last delivery up to ``t`` land in the loop's inbox as
        one file (written, then renamed into place; stamped with the time of its last bar)."""
        from tideline.data import write_bars

        if self.delivered is not None and t <= self.delivered:
            return
        m = self.market["timestamp"] <= t
        if self.delivered is not None:
            m &= self.market["timestamp"] > self.delivered
        name = f"bars-{pd.Timestamp(t):%Y%m%dT%H%M}.parquet"
        tmp = write_bars(self.market.loc[m].reset_index(drop=True), self.home / "lake" / f".{name}")
        os.replace(tmp, self.home / "inbox" / name)
        stamp = pd.Timestamp(t).tz_localize("UTC").timestamp() if pd.Timestamp(t).tzinfo is None \
            else pd.Timestamp(t).timestamp()
        os.utime(self.home / "inbox" / name, (stamp, stamp))
        self.delivered = pd.Timestamp(t)


# ---- traffic -------------------------------------------------------------------------------------------
class Traffic:
    """Replays bars through the router, one request per bar; remembers every answer."""

    def __init__(self, world: World, port: int) -> None:
        self.world = world
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.pos = 0  # index into world.live_times of the next bar to send
        self.statuses: dict[int, int] = {}
        self.rows_answered = 0
        self.answered: set[tuple[str, str]] = set()  # (request id, version) of every answer the client got
        self.failures: list[str] = []

    @property
    def done(self) -> bool:
        """True once every live bar has been sent."""
        return self.pos >= len(self.world.live_times)

    @property
    def now(self) -> pd.Timestamp:
        """The last bar sent (the live clock)."""
        return self.world.live_times[max(0, self.pos - 1)]

    def send(self, n_bars: int) -> int:
        """Send up to ``n_bars`` bars, one POST each, in order; returns how many were sent.

        A connection error or a non-200 answer is recorded in ``failures`` (the status in ``statuses``), never raised.
        """
        sent = 0
        while sent < n_bars and not self.done:
            t = self.world.live_times[self.pos]
            try:
                self.conn.request("POST", f"/v1/models/{NAME}:predict", self.world.body(t),
                                  {"content-type": "application/json", "x-request-id": f"bar-{self.pos:06d}"})
                r = self.conn.getresponse()
                data = r.read()
            except (OSError, http.client.HTTPException) as e:
                self.failures.append(f"bar {t}: {type(e).__name__}: {e}")
                self.conn.close()
                self.pos += 1
                sent += 1
                continue
            self.statuses[r.status] = self.statuses.get(r.status, 0) + 1
            if r.status == 200:
                doc = json.loads(data)
                self.rows_answered += len(doc["predictions"])
                self.answered.add((f"bar-{self.pos:06d}", doc["model_version"]))
            else:
                self.failures.append(f"bar {t}: HTTP {r.status}: {data[:200]!r}")
            self.pos += 1
            sent += 1
        return sent

    def close(self) -> None:
        """Close the client connection."""
        self.conn.close()


def wait_logged(registry: Any, traffic: Traffic, since: float, timeout: float = 20.0) -> int:
    """Wait until the prediction log holds every row the client was answered with (logged after ``since``):
    the predictors flush their logs in batches, and feedback must not judge a half-written record."""
    from tideline.monitoring.predictions import read_predictions

    deadline = time.monotonic() + timeout
    while True:
        df = read_predictions(registry, since=pd.Timestamp(since, unit="s", tz="UTC"))
        n = 0
        if len(df):
            pairs = pd.MultiIndex.from_arrays([df["request_id"].astype(str), df["version"].astype(str)])
            n = int(pairs.isin(list(traffic.answered)).sum())
        if n >= traffic.rows_answered or time.monotonic() > deadline:
            return n
        time.sleep(0.1)


# ---- the story -----------------------------------------------------------------------------------------
class InlineRollouts:
    """The loop's rollout driver for the demo: the one rollout controller (``tideline.rollout``), run in this
    process on an accelerated clock: each analysis interval replays ``interval_bars`` bars of traffic. The
    loop starts a rollout; the demo then lets its controller run (as ``tideline rollout resume`` would)."""

    def __init__(self, demo: Demo) -> None:
        self.demo = demo
        self.pending: tuple[str, str] | None = None

    @property
    def _registry(self) -> Any:
        return self.demo.world.registry

    def latest(self) -> dict[str, Any] | None:
        """The latest rollout of the demo's model, running or ended (``latest_rollout``), or None."""
        from tideline.loop.rollouts import latest_rollout

        return latest_rollout(self._registry, NAME, now=time.time())

    def publish_recent(self, bars: Any) -> None:
        """Nothing to do: the controller reads the world's live bars (``live_bars_path``)."""

    def restart(self) -> str:
        """Mark the rollout in flight to be run again by this process's controller; what was done."""
        self.pending = ("?", "?")
        return f"the controller of rollout {NAME} will be run again"

    def start(self, candidate: str, baseline: str, reason: str) -> str:
        """Create the rollout of ``candidate`` against ``baseline`` and set the ``candidate`` alias; the
        demo runs its controller afterwards (``run_pending``). Returns what was done.

        Raises ``ConfigError`` for invalid rollout settings, ``PolicyError`` while a rollout of that name is still
        running, and the registry's errors (e.g. ``VersionNotFound`` for an unknown candidate).
        """
        from tideline.loop.rollouts import rollout_spec
        from tideline.rollout.controller import create_rollout

        w = self.demo.world
        spec = rollout_spec(w.settings.loop.rollout, candidate, baseline, str(w.live_bars_path))
        create_rollout(self._registry.store, spec, time.time())
        self._registry.set_alias("candidate", candidate, reason=f"loop: {reason}"[:300], actor="loop")
        self.pending = (candidate, baseline)
        return (f"started rollout {NAME}: {candidate} vs production {baseline} (shadow, canary "
                f"{'/'.join(map(str, spec.canary_weights))}%, then {spec.watch.duration_s:g} intervals watched "
                f"with {baseline} in shadow)")

    def run_pending(self) -> dict[str, Any] | None:
        """Run the controller of the rollout the loop started, to its end."""
        if self.pending is None:
            return None
        self.pending = None
        return self.demo.run_controller()


class Demo:
    """The demo's story: builds the world, drives ``tideline loop``'s ``Loop`` on an accelerated clock, serves
    live traffic through real predictors and records what happened. ``cfg`` is validated first (``ConfigError``).
    """
    def __init__(self, cfg: DemoConfig, home: Path, console: Any | None = None) -> None:
        cfg.validate()
        self.cfg = cfg
        self.home = home
        self.console = console
        self.tl = Timeline(console)
        self.triggers: list[dict[str, Any]] = []
        self.rollouts: list[dict[str, Any]] = []
        self.retrain_runs: list[dict[str, Any]] = []
        self.ticks: list[dict[str, Any]] = []
        self.drift: dict[str, Any] = {}
        self.change_points: set[tuple[str, str, str]] = set()
        self.broken: str | None = None
        self.announced: set[pd.Timestamp] = set()
        self.started = utcnow()
        self.log_since = time.time()

    # -- what the loop drives --------------------------------------------------------------------------------
    def _pipeline(self, settings: Settings, *, source: str | Path, rollout_mode: str, reason: str) -> dict[str, Any]:
        """The loop's retraining pipeline: ``kfp.local`` (every step a task), as ``tideline loop`` runs it."""
        from tideline.training.orchestration import run_local

        res = run_local(settings, source=source, rollout_mode=rollout_mode, reason=reason)
        at = self.traffic_now()
        self.retrain_runs.append({**{k: res.get(k) for k in ("run_id", "versions", "decision", "best", "reasons",
                                                             "candidate", "promoted", "seconds")},
                                  "bar_time": None if at is None else at.isoformat(), "why": reason})
        return res

    def now(self) -> datetime:
        """The loop's clock: the latest bar the market has delivered (an accelerated clock)."""
        t = self.traffic.now if self.traffic is not None else self.world.times[self.cfg.history - 1]
        return pd.Timestamp(t).tz_localize("UTC").to_pydatetime()

    def traffic_now(self) -> pd.Timestamp | None:
        """The last bar sent, once traffic flows; None before."""
        return self.traffic.now if getattr(self, "traffic", None) is not None else None

    def tick(self) -> dict[str, Any]:
        """One tick of the loop: the market delivers its bars, the predictors' logs are flushed, the loop acts."""
        w = self.world
        w.deliver(self.traffic.now if self.traffic is not None else w.times[self.cfg.history - 1])
        if self.traffic is not None:
            w.write_live_bars(self.traffic.now)
            wait_logged(w.registry, self.traffic, self.log_since)
        rec = self.loop.tick()
        self.ticks.append(rec)
        self._tell(rec)
        if self.rollouts_driver.pending is not None:
            self.rollouts_driver.run_pending()
        process(w.registry, w.settings)  # the alerts this tick called for, as `tideline loop` raises them
        return rec

    def _tell(self, rec: dict[str, Any]) -> None:
        """The story of one tick record (every decision in it is the loop's)."""
        at = pd.Timestamp(rec["at"]).tz_convert("UTC").tz_localize(None)
        if rec["outcome"] != "ok":
            self.tl.add("info", f"loop tick {rec['outcome']}: {rec.get('error') or rec['steps'][-1]['summary']}",
                        bar_time=at)
        for st in rec["steps"]:
            name, outcome, summary = st["step"], st["outcome"], st["summary"]
            if name == "drift" and outcome == "ok":
                self.drift = {"html_path": str(self.home / "report" / "evidently-drift.html"),
                              "share": round(float(st["share"]), 3), "drifted": st["drifted"], "summary": summary,
                              "importance_change": st.get("importance_change")}
                note = "" if st["drifted"] else " - the shift flips the signal, not the features: drift alone " \
                                                "cannot see it"
                self.tl.add("drift", summary + note, bar_time=at)
            elif name == "monitor" and st.get("skew"):
                self.skew_checked += sum(k["checked"] for k in st["skew"].values())
                self.skew_mismatched += int(st.get("skew_mismatched") or 0)
                if st.get("skew_mismatched"):
                    self.tl.add("drift", summary, bar_time=at)
            if name == "monitor":  # the record since the deployment: every change point, each tick again
                self.change_points.update((str(c.get("detector")), str(c.get("series")), str(c.get("timestamp")))
                                          for c in st.get("change_points") or [])
            if name == "monitor" and st.get("change_points") and not self.change_announced:
                self.change_announced = True
                cps = st["change_points"]
                found = ", ".join(sorted({f"{c['detector']} on {c['series'] or 'outcomes'}" for c in cps}))
                self.tl.add("drift", f"live change detectors ({found}) find a change in production's live "
                            f"outcomes, dated {cps[-1].get('timestamp')}", bar_time=at)
            elif name == "decide":
                rules = st.get("rules") or []
                fired = [r for r in rules if r["fired"]]
                self.triggers.append({"time": at.isoformat(), "fired": bool(fired),
                                      "reasons": [r["reason"] for r in fired], "rules": rules})
                if bool(fired) != self.fired_once:
                    self.fired_once = bool(fired)
                    decay = next((r["reason"] for r in rules if r["name"] == "performance_decay"), "")
                    self.tl.add("trigger", "; ".join(f"{r['name']}: {r['reason']}" for r in fired) if fired
                                else f"no rule fires any more: {decay}", bar_time=at)
            elif name == "retrain":
                if outcome == "deferred":
                    self.tl.add("retrain", summary, bar_time=at)
                elif st.get("window"):
                    self.tl.add("retrain", f"pipeline retrains on {st['window']['reason']}", bar_time=at)
                    self.tl.add("gate", summary, bar_time=at)
            elif name == "rollout" and outcome == "started":
                self.tl.add("rollout", summary, bar_time=at)
            elif name == "cooldown":
                self.tl.add("info", summary, bar_time=at)
        for did in rec["did"]:
            if did.startswith("promoted"):
                self.tl.add("promoted", did, bar_time=at)

    def run_controller(self) -> dict[str, Any]:
        """The rollout the loop started, run by the one rollout controller; time passes as bars are replayed."""
        from tideline.clock import FakeClock
        from tideline.monitoring.feedback import outcomes_from_log
        from tideline.rollout import machine as m
        from tideline.rollout.controller import RolloutController, load_rollout

        w, tr, cfg = self.world, self.traffic, self.cfg
        doc, _ = load_rollout(w.registry.store, NAME)
        spec = doc.spec
        label = "broken" if spec.candidate == self.broken else "retrained"
        self.backend.outcomes = outcomes_from_log(w.registry, str(w.live_bars_path),
                                                  since=pd.Timestamp(time.time(), unit="s", tz="UTC"), refresh_s=0)
        steps: list[dict[str, Any]] = []

        def on_sleep(seconds: float) -> None:  # the controller's clock: time passes as bars are replayed
            tr.send(int(round(seconds * cfg.interval_bars)))
            self._announce_shifts()
            w.write_live_bars(tr.now)
            wait_logged(w.registry, tr, self.log_since)

        def on_status(st: m.RolloutStatus) -> None:
            if not steps or (steps[-1]["phase"], steps[-1]["weight"]) != (st.phase.value, st.weight):
                steps.append({"time": tr.now.isoformat(), "wall": round(time.monotonic() - self.tl.t0, 2),
                              "phase": st.phase.value, "weight": st.weight})
                if st.phase.value in ("Shadow", "Canary", "Watching"):
                    self.tl.add("rollout", f"{st.phase.value}{' ' + str(st.weight) + '%' if st.weight else ''}: "
                                f"{st.message}", bar_time=tr.now, version=spec.candidate)

        ctrl = RolloutController(NAME, self.backend, w.registry.store, FakeClock(time.time(), on_sleep))
        status = ctrl.run(max_iterations=80, on_status=on_status)
        doc, _ = load_rollout(w.registry.store, NAME)
        kind = {"Promoted": "promoted", "RolledBack": "rolled_back", "Reverted": "rolled_back"}.get(
            status.phase.value, "rollout")
        self.tl.add(kind, f"{label} {spec.candidate}: {status.phase.value}: {status.message}", bar_time=tr.now,
                    version=spec.candidate)
        rec = {"name": NAME, "label": label, "candidate": spec.candidate, "baseline": spec.baseline,
               "phase": status.phase.value, "message": status.message, "steps": steps,
               "analyses": list(doc.status.analyses), "promoted_at_pos": tr.pos}
        self.rollouts.append(rec)
        return rec

    def _announce_shifts(self) -> None:
        """The story's narrator (the platform is never told)."""
        w, now = self.world, self.traffic.now
        for t, text in ((w.shift_time, "the hidden signal flips"), (w.revert_time, "the hidden signal flips back")):
            if t is not None and now >= t and t not in self.announced:
                self.announced.add(t)
                self.tl.add("shift", f"{text} (the platform is not told)", bar_time=t)

    def _broken_candidate(self) -> str:
        """Someone pushes a model trained on shuffled labels of the latest window: it learned nothing. It is
        registered and set as the registry's ``candidate``; the loop picks it up and rolls it out."""
        from tideline.features import feature_config_hash
        from tideline.models import make_model

        w, tr = self.world, self.traffic
        meta_t = pd.DatetimeIndex(w.ds.meta["timestamp"])
        recent = (meta_t <= tr.now - pd.Timedelta(hours=w.settings.features.horizon)) & (
            meta_t > w.times[max(0, w.times.searchsorted(tr.now) - self.cfg.min_window_bars)])
        y = np.random.default_rng(self.cfg.seed).permutation(w.ds.y[recent])
        model = make_model("lightgbm", seed=self.cfg.seed, n_threads=1)
        model.fit(w.ds.X.loc[recent, w.columns], y, w.ds.spec)
        art = self.home / "lake" / "broken-model"
        shutil.rmtree(art, ignore_errors=True)
        model.save(art)
        cfg = w.settings.features
        mv = w.registry.register(art, {"family": "lightgbm", "features": model.columns,
                                       "feature_config": cfg.model_dump(),
                                       "feature_config_hash": feature_config_hash(cfg),
                                       "extra": {"note": "deliberately broken: trained on shuffled labels"}})
        w.registry.set_alias("candidate", mv.version, reason="demo: a broken model is pushed", actor="demo")
        self.tl.add("train", f"{mv.version}: a deliberately broken candidate (LightGBM on shuffled labels of the "
                    "latest bars) is pushed to the registry as `candidate`", bar_time=tr.now, version=mv.version)
        return mv.version

    # -- the run --------------------------------------------------------------------------------------------
    def run(self, report_path: Path) -> DemoResult:
        """Play the whole story and write the HTML report to ``report_path`` (its JSON record beside it).

        The predictors and router it starts are shut down whatever happens. Returns a ``DemoResult`` whose ``ok``
        says whether every check passed. Raises ``TidelineError`` when the loop's first tick promotes nothing, and
        lets the errors of the loop's parts (registry, serving) through.
        """
        from tideline.loop.core import Loop
        from tideline.rollout.backends.local import LocalBackend, default_predictor_factory

        cfg = self.cfg
        t_start = time.monotonic()
        self.world = w = World(cfg, self.home)
        self.fired_once = False
        self.change_announced = False
        self.skew_checked = 0  # predictions whose features the loop recomputed from its stored bars
        self.skew_mismatched = 0
        self.traffic = None  # type: ignore[assignment]
        self.rollouts_driver = InlineRollouts(self)
        self.loop = Loop(w.settings, w.registry, rollouts=self.rollouts_driver, pipeline=self._pipeline,
                         clock=self.now, workdir=self.home / "loop", drift_html=self.home / "report" /
                         "evidently-drift.html")
        self.tl.add("info", f"synthetic market: {cfg.symbols} symbols x {cfg.bars} hourly bars, seed {cfg.seed}; "
                    f"{len(w.live_times)} bars replayed live from {w.live_times[0]:%Y-%m-%d}; the hidden "
                    "signal flips at a time the platform is not told. Every decision below is `tideline loop`'s")
        self.tl.add("train", f"the market delivers its first {cfg.history} bars; the loop's first tick finds "
                    "nothing in production", bar_time=w.times[cfg.history - 1])
        self.tick()
        v1 = w.registry.aliases().get("production")
        if not v1:
            raise TidelineError(f"the loop's first tick promoted nothing: {self.ticks[-1]['steps']}")
        self.v1 = v1
        self.backend = LocalBackend(
            w.registry, NAME, home=self.home, ready_timeout=120,
            predictor_factory=default_predictor_factory(
                w.settings.registry_uri(), NAME, extra_args=["--log-flush-seconds", "0.2"],
                env=lambda version, role: {"OMP_NUM_THREADS": "1"}))
        try:
            st = self.backend.start_serving(v1, port=0)
            self.traffic = Traffic(w, int(st["router"]["port"]))
            self.tl.add("serve", f"{v1} serves live traffic through the router (predictor pid "
                        f"{st['active']['pid']}, router port {st['router']['port']})", version=v1,
                        bar_time=w.live_times[0])
            self._replay()
        finally:
            if self.traffic is not None:
                self.traffic.close()
            self.backend.shutdown()
            self.backend.close()
        record = self._record(time.monotonic() - t_start)
        from tideline.app.report import write_report

        report_path.parent.mkdir(parents=True, exist_ok=True)
        record_path = report_path.with_suffix(".json")
        record_path.write_text(json.dumps(record, indent=1, default=str))
        write_report(record, report_path)
        ok = all(c["ok"] for c in record["checks"])
        return DemoResult(ok, record["checks"], report_path, record_path, record["seconds"], record)

    def _replay(self) -> None:
        """Traffic flows bar by bar; every ``check_every`` bars the loop ticks. The demo only makes the world:
        the market, the clients, and one broken model pushed some bars after the first promotion."""
        cfg, w, tr = self.cfg, self.world, self.traffic
        while not tr.done:
            tr.send(cfg.check_every)
            self._announce_shifts()
            if tr.done:
                break
            promoted = [r for r in self.rollouts if r["label"] == "retrained" and r["phase"] == "Promoted"]
            if promoted and self.broken is None and self.cfg.revert_at is None and tr.pos - promoted[0]["promoted_at_pos"] >= cfg.broken_after:
                self.broken = self._broken_candidate()
            self.tick()
        w.write_live_bars(tr.now)
        wait_logged(w.registry, tr, self.log_since)
        self.tl.add("info", f"replay finished: {tr.pos} bars, {tr.rows_answered} predictions served, "
                    f"statuses {dict(sorted(tr.statuses.items()))}; {len(self.ticks)} loop ticks", bar_time=tr.now)

    # -- the record -----------------------------------------------------------------------------------------
    def _record(self, seconds: float) -> dict[str, Any]:
        from tideline.evaluation import position_returns
        from tideline.monitoring.feedback import join_outcomes, version_scoring
        from tideline.monitoring.predictions import read_predictions

        cfg, w, tr = self.cfg, self.world, self.traffic
        logdf = read_predictions(w.registry, since=pd.Timestamp(self.log_since, unit="s", tz="UTC"))
        # what the client was answered with (a mirrored shadow request is logged by the candidate too)
        pairs = pd.MultiIndex.from_arrays([logdf["request_id"].astype(str), logdf["version"].astype(str)])
        served = logdf.loc[pairs.isin(list(tr.answered))].copy()
        bars = w.bars_until(w.times[-1])
        # each version's predictions scored as stored with it: its label, its position rule
        parts = [version_scoring(w.registry.get(str(v))).join(g, bars) for v, g in served.groupby("version")]
        joined = pd.concat(parts, ignore_index=True) if parts else join_outcomes(served, bars,
                                                                                 w.settings.features.horizon)
        joined = joined.loc[joined["status"] == "realized"].copy()
        joined["bar_time"] = pd.to_datetime(joined["bar_time"])
        # the static counterfactual: v1 on the same rows
        static = self._static_predictions()
        key = pd.MultiIndex.from_arrays([pd.DatetimeIndex(w.ds.meta["timestamp"]), w.ds.meta["symbol"].astype(str)])
        nxt = pd.Series(w.ds.next_return, index=key)
        jkey = pd.MultiIndex.from_arrays([joined["bar_time"], joined["symbol"].astype(str)])
        joined["next_return"] = nxt.reindex(jkey).to_numpy()
        joined["static"] = static.reindex(jkey).to_numpy()
        spos = joined["static"].to_numpy(dtype=np.float64)
        joined["static_hit"] = np.where(spos != 0, (np.sign(spos) == np.sign(joined["target"])).astype(float), np.nan)
        joined = joined.dropna(subset=["next_return", "static"]).sort_values(["bar_time", "symbol"])
        meta = pd.DataFrame({"timestamp": joined["bar_time"].to_numpy(), "symbol": joined["symbol"].to_numpy()})
        live_ret = position_returns(joined["position"].to_numpy(), joined["next_return"].to_numpy(), meta,
                                    cfg.cost_bps)
        static_ret = position_returns(joined["static"].to_numpy(), joined["next_return"].to_numpy(), meta,
                                      cfg.cost_bps)
        live_rows = []
        for t, g in joined.groupby("bar_time", sort=True):
            versions = g["version"].value_counts()
            live_rows.append({
                "time": pd.Timestamp(t).isoformat(), "version": str(versions.index[0]),
                "versions": {str(k): int(v) for k, v in versions.items()}, "n": int(len(g)),
                "hits": int(g["hit"].sum()), "strategy_return": float(live_ret.get(t, 0.0)),
                "static_hits": int(g["static_hit"].sum()), "static_return": float(static_ret.get(t, 0.0)),
            })
        learning = learning_quality(live_rows, w.shift_time, window=cfg.metrics_window)
        reg = w.registry
        versions = []
        statuses = reg.statuses()
        for mv in reg.list_versions():
            versions.append({"version": mv.version, "family": mv.family, "status": str(getattr(
                statuses.get(mv.version), "value", statuses.get(mv.version))), "created_at": mv.created_at,
                "metrics": {k: v for k, v in (mv.metrics or {}).items() if isinstance(v, (int, float))},
                "note": (mv.extra or {}).get("note", "")})
        history = [e.model_dump() for e in reg.history()]
        checks = self._checks(tr, served, learning)
        return {
            "title": "tideline demo: continuous learning through a regime shift",
            "seed": cfg.seed, "seconds": round(seconds, 1), "started_at": self.started.isoformat(),
            "cores": os.cpu_count(), "config": asdict(cfg) | {"families": ", ".join(cfg.families)},
            "market": {"symbols": sorted(w.market["symbol"].astype(str).unique()), "freq": "1h",
                       "start": w.times[0].isoformat(), "end": w.times[-1].isoformat(),
                       "live_start": w.live_times[0].isoformat(), "shift_times": [t.isoformat() for t in (w.shift_time, w.revert_time) if t is not None]},
            "live": live_rows, "events": self.tl.events, "triggers": self.triggers, "rollouts": self.rollouts,
            "retrains": self.retrain_runs, "loop_ticks": len(self.ticks),
            "change_points": [{"detector": d, "series": se, "timestamp": t} for d, se, t in sorted(self.change_points)],
            "registry": {"aliases": reg.aliases(), "versions": versions, "history": history},
            "alerts": [{k: a.to_dict()[k] for k in ("kind", "severity", "title", "occurrences", "created_at")}
                       for a in reversed(list_alerts(reg, include_resolved=True))],
            "experience": _experience(reg, w.settings),
            "drift": self.drift, "importance": _importance(reg), "learning": learning, "checks": checks,
            "traffic": {"requests": sum(tr.statuses.values()), "statuses": tr.statuses,
                        "rows_answered": tr.rows_answered, "rows_logged": int(len(served)),
                        "failures": tr.failures[:10]},
        }

    def _static_predictions(self) -> pd.Series:
        """The positions v1 (never replaced) would have taken on the live rows, under its stored rule."""
        import tempfile

        from tideline.models import load_model
        from tideline.positions import positions, stored_rule

        w = self.world
        with tempfile.TemporaryDirectory() as tmp:
            model = load_model(w.registry.fetch(self.v1, Path(tmp) / "m"))
        rule = stored_rule(w.registry.get(self.v1).position, self.v1)
        live = pd.DatetimeIndex(w.ds.meta["timestamp"]) >= w.live_times[0]
        pred = model.predict_array(w.ds.X.loc[live, model.columns].to_numpy(np.float32))
        vol = w.ds.X.loc[live, rule.vol_column].to_numpy(np.float64) if rule.needs_volatility else None
        meta = w.ds.meta.loc[live]
        return pd.Series(positions(pred, rule, vol), index=pd.MultiIndex.from_arrays([pd.DatetimeIndex(meta["timestamp"]),
                                                                meta["symbol"].astype(str)]))

    def _checks(self, tr: Traffic, served: pd.DataFrame, learning: dict[str, Any]) -> list[dict[str, Any]]:
        retrained = [r for r in self.rollouts if r["label"] == "retrained"]
        promoted = [r for r in retrained if any(s["phase"] in ("Promoting", "Watching") for s in r["steps"])]
        broken = [r for r in self.rollouts if r["label"] == "broken"]
        # a rule other than no_production (the first tick's) fired once production served
        fired = [t for t in self.triggers if any(r["fired"] and r["name"] != "no_production" for r in t["rules"])]
        bad = {s: n for s, n in tr.statuses.items() if s >= 500}
        post_live, post_static = learning.get("post_shift_live_accuracy"), learning.get("post_shift_static_accuracy")
        checks = [
            {"name": "retrain triggered by the live record", "ok": bool(fired),
             "detail": fired[0]["reasons"][0] if fired else "no rule fired"},
            {"name": "retrained model promoted through a rollout", "ok": bool(promoted),
             "detail": promoted[0]["message"] if promoted else "; ".join(r["message"] for r in self.rollouts)
             or "no rollout"},
            {"name": "the guard watched the promotion with the previous version in shadow",
             "ok": bool(promoted) and any(s["phase"] == "Watching" for s in promoted[0]["steps"]),
             "detail": promoted[0]["message"] if promoted else "no promotion"},
        ]
        if self.cfg.revert_at is not None:  # the signal flips back inside the watch: the guard must revert
            reverted = [r for r in retrained if r["phase"] == "Reverted"]
            checks.append({"name": "the guard reverted the promotion that decayed", "ok": bool(reverted),
                           "detail": reverted[0]["message"] if reverted else
                           "; ".join(f"{r['candidate']} {r['phase']}" for r in retrained) or "no rollout"})
        else:
            stood = [r for r in promoted if r["phase"] == "Promoted"]
            checks += [
                {"name": "the promotion stood the guard's watch", "ok": bool(stood),
                 "detail": stood[0]["message"] if stood else "; ".join(r["message"] for r in promoted) or "-"},
                {"name": "broken candidate rolled back", "ok": bool(broken) and broken[0]["phase"] == "RolledBack",
                 "detail": broken[0]["message"] if broken else "never rolled out"},
                {"name": "the retrained system beats the static model after the shift",
                 "ok": post_live is not None and post_static is not None and post_live > post_static,
                 "detail": f"live {post_live} vs static {post_static}"},
            ]
        checks += [
            {"name": "no 5xx or failed request seen by the client", "ok": not bad and not tr.failures,
             "detail": f"{sum(tr.statuses.values())} requests, statuses {dict(sorted(tr.statuses.items()))}"},
            {"name": "every served prediction logged", "ok": len(served) == tr.rows_answered,
             "detail": f"{len(served)} logged of {tr.rows_answered} answered"},
            {"name": "served features match the stored bars (training/serving skew)",
             "ok": self.skew_checked > 0 and self.skew_mismatched == 0,
             "detail": f"{self.skew_mismatched} of {self.skew_checked} sampled predictions differ from the features "
                       "the loop recomputed from its stored bars"},
        ]
        return checks


def _experience(reg: Any, settings: Any) -> dict[str, Any]:
    """The experience buffer the loop filled from the served predictions (``tideline experience stats``)."""
    from tideline.monitoring.experience import stats

    st = stats(reg, settings.experience.annotate_quantile).to_dict()
    return {"registry": settings.registry_uri(),
            **{k: st[k] for k in ("rows", "versions", "roles", "reward_bps", "hit_rate", "regimes", "tags",
                                  "quarantined")}}


def _importance(reg: Any) -> dict[str, Any]:
    """Every version's stored feature importance, production's name and the first version's (for the report)."""
    from tideline.errors import TidelineError
    from tideline.models.explain import IMPORTANCE_ATTACHMENT

    versions: dict[str, Any] = {}
    for mv in reg.list_versions():
        try:
            versions[mv.version] = json.loads(reg.get_attachment(mv.version, IMPORTANCE_ATTACHMENT))
        except (TidelineError, ValueError):
            continue
    return {"versions": versions, "production": reg.aliases().get("production"),
            "first": next(iter(versions), None)}


def learning_quality(live_rows: list[dict[str, Any]], shift_time: pd.Timestamp, *, window: int,
                     tolerance: float = 0.02) -> dict[str, Any]:
    """Accuracy before / after the shift (live vs static), per window after it, and the bars the live system
    took to come back within ``tolerance`` of its pre-shift accuracy (rolling ``window``-bar accuracy)."""
    if not live_rows:
        return {}
    df = pd.DataFrame(live_rows)
    df["time"] = pd.to_datetime(df["time"])
    pre, post = df.loc[df["time"] < shift_time], df.loc[df["time"] >= shift_time]

    def acc(d: pd.DataFrame, col: str = "hits") -> float | None:
        n = d["n"].sum()
        return round(float(d[col].sum() / n), 4) if n else None

    pre_acc = acc(pre)
    windows = []
    for k in range(0, len(post), window):
        part = post.iloc[k:k + window]
        windows.append({"label": f"{k}-{k + len(part)} bars after the shift", "live": acc(part),
                        "static": acc(part, "static_hits")})
    recovery = None
    if pre_acc is not None and len(post) >= window:
        hits = post["hits"].rolling(window).sum()
        n = post["n"].rolling(window).sum()
        rolling = (hits / n).to_numpy()
        # recovered: the trailing window lies entirely after the shift and is within tolerance again
        ok = np.flatnonzero(rolling >= pre_acc - tolerance)
        if len(ok):
            recovery = int(ok[0] + 1)
    return {"window_bars": window, "tolerance": tolerance, "pre_shift_accuracy": pre_acc,
            "post_shift_live_accuracy": acc(post), "post_shift_static_accuracy": acc(post, "static_hits"),
            "recovery_bars": recovery, "windows": windows}


def run_demo(cfg: DemoConfig, home: Path, *, report: Path | None = None, console: Any | None = None,
             on_done: Callable[[DemoResult], None] | None = None) -> DemoResult:
    """Run the story under ``home`` (wiped first: the demo owns it); write the report (default
    ``home/report/tideline-demo.html``)."""
    home = home.resolve()
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    result = Demo(cfg, home, console).run(report or home / "report" / "tideline-demo.html")
    if on_done is not None:
        on_done(result)
    return result
