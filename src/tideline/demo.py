"""``tideline demo``: the whole continuous-learning loop on one machine, for real, in a few minutes.

Nothing here is simulated except the market and the clock. A synthetic multi-symbol market whose hidden
signal flips partway (a concept shift) is replayed bar by bar as live traffic:

1. v1 is trained by the retraining pipeline (``kfp.local``, every step a task) on the history before the
   live period and promoted; real predictor processes (kserve ``ModelServer``) serve it behind the router.
2. Each bar, one request per bar (one row per symbol, with symbol and bar time) goes through the router;
   the predictors log every prediction to the registry store. Every ``check_every`` bars the outcomes of
   the bars that have since closed are joined to the log (``tideline.feedback``), a drift check runs now and
   then (Evidently), and the trigger rules are evaluated (``tideline.triggers.run_if_needed``).
3. After the shift the live record decays; ``performance_decay`` fires. The training window follows the
   live change detector (``triggers.training_window``): a retrain waits until enough bars of the new regime
   exist, then the pipeline retrains, the gate judges v2 against production on the same hold-out, and v2
   goes through a rollout (shadow -> canary 10/25/50 -> promoted) run by the real controller, whose clock
   advances by replaying bars (``interval_bars`` per analysis interval).
4. A deliberately broken candidate (trained on shuffled labels) is rolled out; the live accuracy check
   fails in shadow and the controller rolls it back. Production never changes.
5. At the end: the prediction log is joined with realized outcomes for the live record per version, the
   static counterfactual (v1 never replaced) is predicted on the same bars, and ``tideline.report`` writes
   one self-contained HTML report. Exit 0 only if the story happened (``DemoResult.ok``).

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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tideline.config import EvaluationConfig, Settings, TrainingConfig, TriggerConfig
from tideline.errors import ConfigError, TidelineError

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
    min_window_bars: int = 200
    """bars of a new regime needed before a retrain learns from them."""
    lookback_bars: int = 800
    """training window when no change was detected."""
    interval_bars: int = 25
    """bars replayed per rollout analysis interval."""
    broken_after: int = 60
    """bars after the promotion before the broken candidate is rolled out."""
    cost_bps: float = 1.0
    max_p99_latency_ms: float = 1000.0
    """the rollouts' latency limit. The demo's candidates are judged on accuracy and errors; with a few
    canary requests per interval p99 is the slowest one, so a tight limit would roll back on a machine
    that is merely busy."""

    def validate(self) -> None:
        if self.symbols < 1 or self.symbols > 50:
            raise ConfigError("--symbols must be between 1 and 50")
        if not 300 <= self.history < self.shift_at < self.bars:
            raise ConfigError("need 300 <= history < shift_at < bars")
        if self.bars - self.shift_at < self.min_window_bars + 6 * self.interval_bars + self.broken_after:
            raise ConfigError("too few bars after the shift for a retrain, a rollout and the broken candidate")
        if not set(self.families) <= set(DEMO_FAMILIES) or not self.families:
            raise ConfigError(f"demo families must be among {', '.join(DEMO_FAMILIES)} (torch reads a "
                              "different request shape)")
        for k in ("check_every", "drift_every", "metrics_window", "min_window_bars", "lookback_bars",
                  "interval_bars"):
            if getattr(self, k) < 1:
                raise ConfigError(f"{k} must be >= 1")

    @classmethod
    def short(cls, seed: int = 7) -> DemoConfig:
        """A smaller story for tests (same steps, fewer bars and symbols)."""
        return cls(seed=seed, symbols=4, bars=1250, history=450, shift_at=700, families=("lightgbm",),
                   check_every=20, drift_every=200, metrics_window=80, min_window_bars=160, lookback_bars=450,
                   interval_bars=20, broken_after=40)


@dataclass
class DemoResult:
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
    def __init__(self, cfg: DemoConfig, home: Path) -> None:
        from tideline.data import synthetic_market
        from tideline.features import build_dataset
        from tideline.registry import open_registry

        self.cfg = cfg
        self.home = home
        self.settings = Settings(
            registry=(home / "registry").resolve().as_uri(), home=home,
            evaluation=EvaluationConfig(cost_bps=cfg.cost_bps),
            training=TrainingConfig(families=list(cfg.families), seed=cfg.seed),
            triggers=TriggerConfig(enabled=_TRIGGER_RULES, min_live_samples=min(200, cfg.symbols * 40)),
        )
        self.registry = open_registry(self.settings.registry_uri())
        self.market = synthetic_market(n_symbols=cfg.symbols, n_bars=cfg.bars, seed=cfg.seed,
                                       shifts=[cfg.shift_at], signal_strength=cfg.signal_strength)
        self.times = pd.DatetimeIndex(sorted(self.market["timestamp"].unique()))
        self.shift_time = self.times[cfg.shift_at]
        self.ds = build_dataset(self.market, self.settings.features)
        self.columns = list(self.ds.spec.tabular)
        first_feature_time = pd.Timestamp(self.ds.meta["timestamp"].min())
        self.warmup_bars = int((self.times < first_feature_time).sum())
        # the live bars: every bar time from the end of the history that has features and a label
        meta_times = pd.DatetimeIndex(self.ds.meta["timestamp"])
        labelled = set(meta_times)
        self.live_times = [t for t in self.times[cfg.history:] if t in labelled]
        self._bodies = self._request_bodies(meta_times)
        (home / "lake").mkdir(parents=True, exist_ok=True)
        self.live_bars_path = home / "lake" / "live-bars.parquet"

    def _request_bodies(self, meta_times: pd.DatetimeIndex) -> dict[pd.Timestamp, bytes]:
        X = self.ds.X[self.columns].to_numpy(np.float64)
        syms = self.ds.meta["symbol"].astype(str).to_numpy()
        out: dict[pd.Timestamp, bytes] = {}
        live = set(self.times[self.cfg.history:])
        for t, idx in pd.Series(np.arange(len(meta_times)), index=meta_times).groupby(level=0):
            if t not in live:
                continue
            rows = []
            for i in idx.to_numpy():
                row = dict(zip(self.columns, X[i].tolist(), strict=True))
                row["symbol"], row["timestamp"] = syms[i], pd.Timestamp(t).isoformat()
                rows.append(row)
            out[pd.Timestamp(t)] = json.dumps({"instances": rows}).encode()
        return out

    def body(self, t: pd.Timestamp) -> bytes:
        return self._bodies[t]

    def bars_until(self, t: pd.Timestamp, start: pd.Timestamp | None = None) -> pd.DataFrame:
        m = self.market["timestamp"] <= t
        if start is not None:
            m &= self.market["timestamp"] >= start
        return self.market.loc[m].reset_index(drop=True)

    def write_live_bars(self, t: pd.Timestamp) -> None:
        from tideline.data import write_bars

        tmp = self.live_bars_path.with_suffix(".tmp.parquet")
        write_bars(self.bars_until(t), tmp)
        os.replace(tmp, self.live_bars_path)

    def lake(self, name: str, end: pd.Timestamp, start: pd.Timestamp | None) -> Path:
        """The bars a retrain reads: [start - feature warm-up, end] (warm-up rows carry no training row)."""
        from tideline.data import write_bars

        s = None
        if start is not None:
            pos = max(0, int(self.times.searchsorted(start)) - self.warmup_bars)
            s = self.times[pos]
        return write_bars(self.bars_until(end, s), self.home / "lake" / f"{name}.parquet")


# ---- traffic -------------------------------------------------------------------------------------------
class Traffic:
    """Replays bars through the router, one request per bar; remembers every answer."""

    def __init__(self, world: World, port: int) -> None:
        self.world = world
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.pos = 0  # index into world.live_times of the next bar to send
        self.sent_at: dict[int, float] = {}
        self.statuses: dict[int, int] = {}
        self.rows_answered = 0
        self.answered: set[tuple[str, str]] = set()  # (request id, version) of every answer the client got
        self.failures: list[str] = []

    @property
    def done(self) -> bool:
        return self.pos >= len(self.world.live_times)

    @property
    def now(self) -> pd.Timestamp:
        """The last bar sent (the live clock)."""
        return self.world.live_times[max(0, self.pos - 1)]

    def send(self, n_bars: int) -> int:
        sent = 0
        while sent < n_bars and not self.done:
            t = self.world.live_times[self.pos]
            self.sent_at[self.pos] = time.time()
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

    def since_wall(self, bars_back: int) -> float:
        """Wall time at which the bar ``bars_back`` bars before the live clock was sent."""
        return self.sent_at.get(max(0, self.pos - bars_back), self.sent_at.get(0, time.time()))

    def close(self) -> None:
        self.conn.close()


def wait_logged(registry: Any, traffic: Traffic, since: float, timeout: float = 20.0) -> int:
    """Wait until the prediction log holds every row the client was answered with (logged after ``since``):
    the predictors flush their logs in batches, and feedback must not judge a half-written record."""
    from tideline.feedback import load_prediction_log

    deadline = time.monotonic() + timeout
    while True:
        df = load_prediction_log(registry, since=pd.Timestamp(since, unit="s", tz="UTC"))
        n = 0
        if len(df):
            pairs = pd.MultiIndex.from_arrays([df["request_id"].astype(str), df["version"].astype(str)])
            n = int(pairs.isin(list(traffic.answered)).sum())
        if n >= traffic.rows_answered or time.monotonic() > deadline:
            return n
        time.sleep(0.1)


# ---- the story -----------------------------------------------------------------------------------------
class Demo:
    def __init__(self, cfg: DemoConfig, home: Path, console: Any | None = None) -> None:
        cfg.validate()
        self.cfg = cfg
        self.home = home
        self.console = console
        self.tl = Timeline(console)
        self.triggers: list[dict[str, Any]] = []
        self.rollouts: list[dict[str, Any]] = []
        self.retrain_runs: list[dict[str, Any]] = []
        self.drift: dict[str, Any] = {}
        self.started = datetime.now(UTC)
        self.log_since = time.time()

    # -- pieces ---------------------------------------------------------------------------------------------
    def _pipeline(self, lake: Path, *, direct: bool, reason: str) -> dict[str, Any]:
        from tideline.orchestration import run_local

        w = self.world
        res = run_local(w.settings, source=lake, families=list(self.cfg.families),
                        rollout_mode="direct" if direct else "rollout", reason=reason)
        self.retrain_runs.append({k: res.get(k) for k in ("run_id", "versions", "decision", "best", "reasons",
                                                           "candidate", "promoted", "seconds")})
        best = res.get("best") or {}
        versions = res.get("versions") or {}
        reasons = res.get("reasons") or {}
        if best:
            why = (f"{best.get('version')} ({best.get('family')}) approved: "
                   + "; ".join(reasons.get(best.get("family"), [])[-3:]))
        else:
            why = "rejected: " + "; ".join(f"{fam}: {', '.join(r[:2])}" for fam, r in reasons.items())
        self.tl.add("gate", f"pipeline run {res['run_id'][-8:]} ({res['seconds']:.0f} s) registered "
                    f"{', '.join(f'{v} ({f})' for f, v in versions.items())}; {why}",
                    bar_time=self.traffic_now(), version=best.get("version"))
        return res

    def traffic_now(self) -> pd.Timestamp | None:
        return self.traffic.now if getattr(self, "traffic", None) is not None else None

    def _feedback(self) -> None:
        from tideline.feedback import run_feedback

        w, tr = self.world, self.traffic
        since = max(tr.since_wall(self.cfg.metrics_window), self.prod_since)
        wait_logged(w.registry, tr, self.log_since)
        run_feedback(w.registry, w.bars_until(tr.now), since=pd.Timestamp(since, unit="s", tz="UTC"),
                     cost_bps=self.cfg.cost_bps)

    def _drift_check(self) -> None:
        from tideline.drift import run_drift_check

        w = self.world
        recent = w.bars_until(self.traffic.now, w.times[max(0, w.times.searchsorted(self.traffic.now)
                                                           - self.cfg.drift_every - w.warmup_bars)])
        html = self.home / "report" / "evidently-drift.html"
        try:
            out = run_drift_check(w.registry, recent, cfg=w.settings.drift, html_out=html)
        except TidelineError as e:
            self.tl.add("drift", f"drift check skipped: {e}", bar_time=self.traffic.now)
            return
        res = out.result
        drifted = [c.column for c in res.drifted_columns()]
        share = round(res.drifted_share, 3)
        self.drift = {"html_path": str(html), "share": share, "drifted": drifted,
                      "summary": f"{out.version} at {self.traffic.now:%Y-%m-%d %H:%M}: {len(drifted)} of "
                                 f"{len(res.columns)} features drifted (share {share:.2f}; the drift rule, off in "
                                 f"the demo, would fire at {res.drift_share_threshold:.2f})"}
        note = "" if drifted else " - the shift flips the signal, not the features: drift alone cannot see it"
        self.tl.add("drift", self.drift["summary"] + note, bar_time=self.traffic.now, version=out.version)

    def _check_triggers(self) -> dict[str, Any] | None:
        """Evaluate the rules; on a fire, retrain if the window is ready. Returns the pipeline result."""
        from tideline.feedback import run_feedback
        from tideline.triggers import run_if_needed, training_window

        w, tr = self.world, self.traffic
        result: dict[str, Any] = {}

        def starter(*, settings: Settings, reason: str) -> dict[str, Any]:
            # the decay rule judged the recent window; the change detectors look at everything production
            # has answered since it was deployed
            prod = w.registry.aliases()["production"]
            since_deploy = run_feedback(w.registry, w.bars_until(tr.now), write=False, cost_bps=self.cfg.cost_bps,
                                        since=pd.Timestamp(self.prod_since, unit="s", tz="UTC"))
            cps = [c.to_dict() for c in since_deploy.change_points.get(prod, [])]
            win = training_window({"change_points": cps}, w.times[w.times <= tr.now],
                                  min_bars=self.cfg.min_window_bars, lookback_bars=self.cfg.lookback_bars)
            if cps and not self.change_announced:
                self.change_announced = True
                found = ", ".join(sorted({f"{c['detector']} on {c['series'] or 'outcomes'}" for c in cps}))
                self.tl.add("drift", f"live change detectors ({found}) find a change in {prod}'s live outcomes, "
                            f"dated {win.start}", bar_time=tr.now, version=prod)
            if not win.ready:
                self.tl.add("retrain", f"deferred: {win.reason}", bar_time=tr.now)
                return {"deferred": win.to_dict()}
            self.tl.add("retrain", f"pipeline retrains on {win.reason}", bar_time=tr.now)
            lake = w.lake(f"retrain-{tr.pos:05d}", tr.now, win.start)
            result.update(self._pipeline(lake, direct=False, reason=reason[:200]))
            return {"window": win.to_dict(), "run_id": result.get("run_id")}

        bars = w.bars_until(tr.now, w.times[max(0, w.times.searchsorted(tr.now) - 300)])
        decision = run_if_needed(w.registry, w.settings, starter=starter, bars=bars)
        rep = decision["report"]
        entry = {"time": tr.now.isoformat(), "fired": rep["fired"], "reasons": rep["reasons"],
                 "rules": [{"name": r["name"], "fired": r["fired"], "reason": r["reason"]} for r in rep["rules"]
                           if r["reason"] != "rule disabled"]}
        self.triggers.append(entry)
        if rep["fired"] != self.fired_once:
            self.fired_once = rep["fired"]
            self.tl.add("trigger", "; ".join(rep["reasons"]) if rep["fired"] else
                        "no rule fires any more: " + next(r["reason"] for r in rep["rules"]
                                                           if r["name"] == "performance_decay"), bar_time=tr.now)
        return result or None

    def _rollout(self, candidate: str, label: str) -> dict[str, Any]:
        from tideline.feedback import outcomes_from_log
        from tideline.rollout import machine as m
        from tideline.rollout.analysis import Thresholds
        from tideline.rollout.controller import FakeClock, RolloutController, create_rollout, load_rollout

        w, tr, cfg = self.world, self.traffic, self.cfg
        baseline = w.registry.aliases()["production"]
        spec = m.RolloutSpec(
            name=NAME, target=NAME, candidate=candidate, baseline=baseline,
            shadow=m.ShadowSpec(min_duration_s=2.0, min_labelled=cfg.symbols * 15, max_duration_s=12.0),
            steps=(10, 25, 50, 100), interval_s=1.0, failure_limit=2, max_inconclusive=8,
            bars=str(w.live_bars_path),
            thresholds=Thresholds(max_error_rate=0.01, max_p99_latency_ms=cfg.max_p99_latency_ms,
                                  min_requests=2, min_labelled=cfg.symbols * 10, accuracy_margin=0.05),
        )
        since = time.time()
        self.backend.outcomes = outcomes_from_log(w.registry, str(w.live_bars_path),
                                                  since=pd.Timestamp(since, unit="s", tz="UTC"), refresh_s=0)
        w.registry.set_alias("candidate", candidate, reason=f"demo: roll out {label}", actor="demo")
        create_rollout(w.registry.store, spec, time.time())
        steps: list[dict[str, Any]] = []
        self.tl.add("rollout", f"{label} {candidate} vs production {baseline}: shadow, then canary "
                    f"{'/'.join(map(str, spec.canary_weights))}%; one analysis every {cfg.interval_bars} bars",
                    bar_time=tr.now, version=candidate)

        def on_sleep(seconds: float) -> None:  # the controller's clock: time passes as bars are replayed
            tr.send(int(round(seconds * cfg.interval_bars)))
            w.write_live_bars(tr.now)
            wait_logged(w.registry, tr, self.log_since)

        def on_status(st: m.RolloutStatus) -> None:
            if not steps or (steps[-1]["phase"], steps[-1]["weight"]) != (st.phase.value, st.weight):
                steps.append({"time": tr.now.isoformat(), "wall": round(time.monotonic() - self.tl.t0, 2),
                              "phase": st.phase.value, "weight": st.weight})
                if st.phase.value in ("Shadow", "Canary"):
                    self.tl.add("rollout", f"{st.phase.value}{' ' + str(st.weight) + '%' if st.weight else ''}: "
                                f"{st.message}", bar_time=tr.now, version=candidate)

        ctrl = RolloutController(NAME, self.backend, w.registry.store, FakeClock(time.time(), on_sleep))
        status = ctrl.run(max_iterations=60, on_status=on_status)
        doc, _ = load_rollout(w.registry.store, NAME)
        kind = {"Promoted": "promoted", "RolledBack": "rolled_back"}.get(status.phase.value, "rollout")
        self.tl.add(kind, f"{label} {candidate}: {status.phase.value}: {status.message}", bar_time=tr.now,
                    version=candidate)
        if kind == "promoted":
            self.prod_since = time.time()
        rec = {"name": NAME, "label": label, "candidate": candidate, "baseline": baseline,
               "phase": status.phase.value, "message": status.message, "steps": steps,
               "analyses": list(doc.status.analyses)}
        self.rollouts.append(rec)
        return rec

    def _broken_candidate(self) -> str:
        """Trained on shuffled labels of the latest window: it learned nothing, and it is registered as is."""
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
        self.tl.add("train", f"{mv.version}: a deliberately broken candidate (LightGBM on shuffled labels of the "
                    "latest bars) is registered", bar_time=tr.now, version=mv.version)
        return mv.version

    # -- the run --------------------------------------------------------------------------------------------
    def run(self, report_path: Path) -> DemoResult:
        from tideline.rollout.backends.local import LocalBackend, default_predictor_factory

        cfg = self.cfg
        t_start = time.monotonic()
        self.world = w = World(cfg, self.home)
        self.fired_once = False
        self.change_announced = False
        self.traffic = None  # type: ignore[assignment]
        self.tl.add("info", f"synthetic market: {cfg.symbols} symbols x {cfg.bars} hourly bars, seed {cfg.seed}; "
                    f"{len(w.live_times)} bars replayed live from {w.live_times[0]:%Y-%m-%d}; the hidden "
                    "signal flips at a time the platform is not told")
        lake = w.lake("history", w.times[cfg.history - 1], None)
        self.tl.add("train", f"the retraining pipeline trains {', '.join(cfg.families)} on the first "
                    f"{cfg.history} bars", bar_time=w.times[cfg.history - 1])
        res = self._pipeline(lake, direct=True, reason="initial training")
        v1 = res.get("promoted")
        if not v1:
            raise TidelineError(f"the first pipeline run promoted nothing: {res.get('reasons')}")
        self.v1 = v1
        self.backend = LocalBackend(
            w.registry, NAME, home=self.home, ready_timeout=120,
            predictor_factory=default_predictor_factory(
                w.settings.registry_uri(), NAME, extra_args=["--log-flush-seconds", "0.2"],
                env=lambda version, role: {"OMP_NUM_THREADS": "1"}))
        try:
            st = self.backend.start_serving(v1, port=0)
            self.traffic = Traffic(w, int(st["router"]["port"]))
            self.prod_since = time.time()
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
        from tideline.report import write_report

        report_path.parent.mkdir(parents=True, exist_ok=True)
        record_path = report_path.with_suffix(".json")
        record_path.write_text(json.dumps(record, indent=1, default=str))
        write_report(record, report_path)
        ok = all(c["ok"] for c in record["checks"])
        return DemoResult(ok, record["checks"], report_path, record_path, record["seconds"], record)

    def _replay(self) -> None:
        cfg, w, tr = self.cfg, self.world, self.traffic
        shift_announced = promoted_at = broken_done = None
        next_drift = cfg.drift_every
        while not tr.done:
            tr.send(cfg.check_every)
            w.write_live_bars(tr.now)
            if shift_announced is None and tr.now >= w.shift_time:
                shift_announced = True
                self.tl.add("shift", "the hidden signal flips (the platform is not told)", bar_time=w.shift_time)
            if tr.done:
                break
            self._feedback()
            if tr.pos >= next_drift:
                next_drift += cfg.drift_every
                self._drift_check()
            if promoted_at is not None and not broken_done and tr.pos - promoted_at >= cfg.broken_after:
                broken_done = True
                self._rollout(self._broken_candidate(), "broken")
                continue
            res = self._check_triggers()
            if res and res.get("candidate"):
                rec = self._rollout(res["candidate"], "retrained")
                if rec["phase"] == "Promoted":
                    promoted_at = tr.pos
        self._feedback()
        self.tl.add("info", f"replay finished: {tr.pos} bars, {tr.rows_answered} predictions served, "
                    f"statuses {dict(sorted(tr.statuses.items()))}", bar_time=tr.now)

    # -- the record -----------------------------------------------------------------------------------------
    def _record(self, seconds: float) -> dict[str, Any]:
        from tideline.evaluation import strategy_returns
        from tideline.feedback import join_outcomes, load_prediction_log

        cfg, w, tr = self.cfg, self.world, self.traffic
        h = w.settings.features.horizon
        logdf = load_prediction_log(w.registry, since=pd.Timestamp(self.log_since, unit="s", tz="UTC"))
        # what the client was answered with (a mirrored shadow request is logged by the candidate too)
        pairs = pd.MultiIndex.from_arrays([logdf["request_id"].astype(str), logdf["version"].astype(str)])
        served = logdf.loc[pairs.isin(list(tr.answered))].copy()
        joined = join_outcomes(served, w.bars_until(w.times[-1]), h)
        joined = joined.loc[joined["status"] == "realized"].copy()
        joined["bar_time"] = pd.to_datetime(joined["bar_time"])
        # the static counterfactual: v1 on the same rows
        static = self._static_predictions()
        key = pd.MultiIndex.from_arrays([pd.DatetimeIndex(w.ds.meta["timestamp"]), w.ds.meta["symbol"].astype(str)])
        nxt = pd.Series(w.ds.next_return, index=key)
        jkey = pd.MultiIndex.from_arrays([joined["bar_time"], joined["symbol"].astype(str)])
        joined["next_return"] = nxt.reindex(jkey).to_numpy()
        joined["static"] = static.reindex(jkey).to_numpy()
        joined["static_hit"] = (np.sign(joined["static"]) == np.sign(joined["fwd_return"])).astype(float)
        joined = joined.dropna(subset=["next_return", "static"]).sort_values(["bar_time", "symbol"])
        meta = pd.DataFrame({"timestamp": joined["bar_time"].to_numpy(), "symbol": joined["symbol"].to_numpy()})
        live_ret = strategy_returns(joined["prediction"].to_numpy(), joined["next_return"].to_numpy(), meta,
                                    cfg.cost_bps)
        static_ret = strategy_returns(joined["static"].to_numpy(), joined["next_return"].to_numpy(), meta,
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
                       "live_start": w.live_times[0].isoformat(), "shift_times": [w.shift_time.isoformat()]},
            "live": live_rows, "events": self.tl.events, "triggers": self.triggers, "rollouts": self.rollouts,
            "retrains": self.retrain_runs,
            "registry": {"aliases": reg.aliases(), "versions": versions, "history": history},
            "drift": self.drift, "learning": learning, "checks": checks,
            "traffic": {"requests": sum(tr.statuses.values()), "statuses": tr.statuses,
                        "rows_answered": tr.rows_answered, "rows_logged": int(len(served)),
                        "failures": tr.failures[:10]},
        }

    def _static_predictions(self) -> pd.Series:
        import tempfile

        from tideline.models import load_model

        w = self.world
        with tempfile.TemporaryDirectory() as tmp:
            model = load_model(w.registry.fetch(self.v1, Path(tmp) / "m"))
        live = pd.DatetimeIndex(w.ds.meta["timestamp"]) >= w.live_times[0]
        pred = model.predict_array(w.ds.X.loc[live, model.columns].to_numpy(np.float32))
        meta = w.ds.meta.loc[live]
        return pd.Series(pred, index=pd.MultiIndex.from_arrays([pd.DatetimeIndex(meta["timestamp"]),
                                                                meta["symbol"].astype(str)]))

    def _checks(self, tr: Traffic, served: pd.DataFrame, learning: dict[str, Any]) -> list[dict[str, Any]]:
        promoted = [r for r in self.rollouts if r["label"] == "retrained" and r["phase"] == "Promoted"]
        broken = [r for r in self.rollouts if r["label"] == "broken"]
        fired = [t for t in self.triggers if t["fired"]]
        bad = {s: n for s, n in tr.statuses.items() if s >= 500}
        post_live, post_static = learning.get("post_shift_live_accuracy"), learning.get("post_shift_static_accuracy")
        return [
            {"name": "retrain triggered", "ok": bool(fired),
             "detail": fired[0]["reasons"][0] if fired else "no rule fired"},
            {"name": "retrained model promoted", "ok": bool(promoted),
             "detail": promoted[0]["message"] if promoted else "; ".join(r["message"] for r in self.rollouts)
             or "no rollout"},
            {"name": "broken candidate rolled back", "ok": bool(broken) and broken[0]["phase"] == "RolledBack",
             "detail": broken[0]["message"] if broken else "never rolled out"},
            {"name": "no 5xx or failed request seen by the client", "ok": not bad and not tr.failures,
             "detail": f"{sum(tr.statuses.values())} requests, statuses {dict(sorted(tr.statuses.items()))}"},
            {"name": "every served prediction logged", "ok": len(served) == tr.rows_answered,
             "detail": f"{len(served)} logged of {tr.rows_answered} answered"},
            {"name": "the retrained system beats the static model after the shift",
             "ok": post_live is not None and post_static is not None and post_live > post_static,
             "detail": f"live {post_live} vs static {post_static}"},
        ]


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
