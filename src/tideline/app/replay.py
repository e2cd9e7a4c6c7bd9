"""``tideline replay``: how a retraining policy would have done over real history, with the loop's own code.

Each policy gets its own registry (its clock is the replay's: versions are created and promoted at bar time),
and the loop (``tideline.loop.core.Loop``) walks the history: before each tick the market delivers the bars
since the last one into the loop's inbox (the ingest reads them as it reads a live feed), the tick monitors,
runs the trigger rules, picks the training window and retrains through the gate; between ticks the version in
production at that time predicts every bar, its position comes from its own stored rule (the one position
function), and the predictions go to the prediction log, so the loop's live outcomes, change points and
``performance_decay`` work without live traffic. Features of the predicted bars are computed once over the whole
history (each bar's features use only bars up to it: no look-ahead).

Policies:

* ``static``  — the first tick trains and promotes; no rule but ``no_production`` is on, so it never retrains.
* ``weekly`` / ``monthly`` — as ``static``, plus a forced retrain at the first bar of each new week / month
  (what a CronWorkflow running ``tideline loop --once --force`` does).
* ``loop``    — a tick every ``check_every`` bars with the trigger rules as configured.

A retrain is the retraining pipeline's steps in this process (``CycleRunner``: validate, features, every family,
walk-forward, hold-out, the gate, register). A candidate the gate approves while a version is in production is
promoted at once (a replay has no live traffic to roll it out on). With ``gate=False`` the best retrained family
is promoted even when the gate refuses it (its refusal is still recorded): what retraining without the gate
would have done.

Returns are net of costs (``evaluation.cost_bps`` per unit of turnover, switching versions included), next to
buy-and-hold over the same bars; a bar with nothing in production is flat.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd

from tideline.config import Settings
from tideline.errors import ConfigError, DataError
from tideline.evaluation import infer_periods_per_year, position_returns
from tideline.features import Dataset, build_dataset
from tideline.loop.core import Loop
from tideline.models import load_model
from tideline.monitoring.drift import PerformanceMonitor
from tideline.positions import PositionRule, positions, stored_rule
from tideline.registry import Registry, open_registry
from tideline.serving.predlog import PredictionLog

log = logging.getLogger(__name__)

POLICIES: Final = ("static", "weekly", "monthly", "loop")
DEFAULT_POLICIES: Final = ("static", "monthly", "loop")
ACCURACY_WINDOW: Final = 100
"""bar times of the rolling directional accuracy in a policy's result"""
SERIES_POINTS: Final = 400
"""points kept of each series (equity, accuracy) for a report"""


@dataclass(frozen=True)
class ReplayConfig:
    """What to replay: the policies, the bars before the replay starts, the loop policy's tick spacing, the gate."""

    policies: tuple[str, ...] = DEFAULT_POLICIES
    history: int | None = None
    """bar times before the first tick (the first training window); None: a third of them, at least 300"""
    check_every: int = 5
    """bars between the ``loop`` policy's ticks"""
    gate: bool = True
    """False: promote the best retrained family even when the gate refuses it"""

    def check(self) -> None:
        """``ConfigError`` for an unknown policy or a tick spacing below one bar (before any data is read)."""
        bad = [p for p in self.policies if p not in POLICIES]
        if bad or not self.policies:
            raise ConfigError(f"unknown polic{'ies' if len(bad) > 1 else 'y'} {', '.join(bad) or '(none)'}",
                              hint=f"choose among {', '.join(POLICIES)}")
        if self.check_every < 1:
            raise ConfigError("--check-every must be >= 1")

    def validate(self, n_times: int) -> int:
        """The first tick's bar index; ``ConfigError`` naming what does not fit."""
        self.check()
        start = self.history if self.history is not None else max(300, n_times // 3)
        if not 0 < start < n_times - 1:
            what = f"--history {start}" if self.history is not None else \
                f"the default history ({start} bar times before the first tick: a third, at least 300)"
            raise ConfigError(f"{what} leaves nothing to replay: the data has {n_times} bar times",
                              hint="pass a smaller --history" if n_times > 2 else None)
        return start


class ReplayClock:
    """The replay's time: the bar the market delivered last (aware UTC). The loop, its triggers and the
    policy's registry all read it."""

    def __init__(self, t: pd.Timestamp) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return pd.Timestamp(self.t).tz_localize("UTC").to_pydatetime()


class InstantRollouts:
    """The loop's rollout driver in a replay: an approved candidate is promoted at once (no live traffic)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.last: dict[str, Any] | None = None

    def latest(self) -> dict[str, Any] | None:
        """The last rollout (always ended)."""
        return self.last

    def publish_recent(self, bars: pd.DataFrame) -> None:
        """Nothing to publish: no rollout reads live outcomes here."""

    def restart(self) -> str:
        """Never needed: no controller runs."""
        return "nothing to restart"

    def start(self, candidate: str, baseline: str, reason: str) -> str:
        """Promote ``candidate`` over ``baseline`` now."""
        self.registry.promote(candidate, reason=f"replay: {reason}"[:300], actor="replay", expected=baseline)
        msg = f"promoted {candidate} over {baseline} at once (a replay has no live traffic to roll it out on)"
        self.last = {"id": uuid.uuid4().hex[:8], "name": f"replay-{candidate}", "candidate": candidate,
                     "baseline": baseline, "phase": "Promoted", "terminal": True, "message": msg}
        return msg


class InProcessPipeline:
    """The retraining pipeline's steps in this process (``CycleRunner``), answering as ``run_local`` does."""

    def __init__(self, registry: Registry, *, gate: bool = True) -> None:
        self.registry = registry
        self.gate = gate
        self.runs: list[dict[str, Any]] = []

    def __call__(self, settings: Settings, *, source: str | Path, rollout_mode: str, reason: str) -> dict[str, Any]:
        from tideline.training.cycle import CycleRunner, choose_best

        t0 = time.perf_counter()
        res = CycleRunner(settings, self.registry).run(source, promote=False)
        best = choose_best(res.candidates)
        overridden = False
        if best is None and not self.gate:
            stored = [c for c in res.candidates if c.version]
            best = max(stored, key=lambda c: c.holdout.sharpe) if stored else None
            overridden = best is not None
        run_id = uuid.uuid4().hex[:12]
        out: dict[str, Any] = {
            "mode": "replay", "run_id": run_id, "reason": reason,
            "versions": {c.family: c.version for c in res.candidates},
            "decision": {c.family: c.decision.to_dict() for c in res.candidates},
            "best": {"version": best.version, "family": best.family} if best else {},
            "reasons": {c.family: list(c.decision.reasons) for c in res.candidates},
            "failures": dict(res.failures), "gate_overridden": overridden,
        }
        if best is not None and rollout_mode == "direct":
            assert best.version is not None
            self.registry.promote(best.version, reason=f"replay: {reason}"[:300], actor="replay")
            out["promoted"] = best.version
        elif best is not None:
            out["candidate"] = best.version  # the loop starts its rollout: InstantRollouts promotes it
        out["seconds"] = round(time.perf_counter() - t0, 3)
        self.runs.append(out)
        return out


@dataclass
class PolicyResult:
    """One policy over the replay: net figures, what the loop did, and the series for a report."""

    policy: str
    metrics: dict[str, float]
    retrains: int
    promotions: int
    gate_refusals: int
    flat_bars: int
    ticks: int
    seconds: float
    retrains_not_run: dict[str, int] = field(default_factory=dict)
    """ticks whose retrain did not get to the gate, by outcome (``failed``: the cycle refused the data or broke;
    ``deferred``: the training window after a change was still too short)"""
    first_not_run: str | None = None
    """why the first of those did not run (the loop's words)"""
    events: list[dict[str, Any]] = field(default_factory=list)
    changes: list[dict[str, Any]] = field(default_factory=list)
    equity: list[tuple[str, float]] = field(default_factory=list)
    """(bar time, cumulative net log return), at most ``SERIES_POINTS``"""
    accuracy: list[tuple[str, float | None]] = field(default_factory=list)
    """(bar time, directional accuracy of the positions taken over the last ``ACCURACY_WINDOW`` bar times;
    None where none was taken)"""
    decisions: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


@dataclass
class ReplayResult:
    """Every policy's result next to buy-and-hold over the same replayed bars."""

    data: dict[str, Any]
    buy_and_hold: dict[str, float]
    policies: dict[str, PolicyResult]
    gate: bool
    buy_and_hold_equity: list[tuple[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (what ``tideline replay --json`` prints and ``write_replay_report`` reads)."""
        return {"data": self.data, "gate": self.gate, "buy_and_hold": self.buy_and_hold,
                "buy_and_hold_equity": self.buy_and_hold_equity,
                "policies": {k: v.to_dict() for k, v in self.policies.items()}}


# ---- the run -------------------------------------------------------------------------------------------------
def tick_points(policy: str, times: pd.DatetimeIndex, start: int, check_every: int) -> list[tuple[int, bool]]:
    """(bar index, forced) of each tick of ``policy``: the first at ``start``, then as the policy says."""
    if policy == "static":
        return [(start, False)]
    if policy == "loop":
        return [(k, False) for k in range(start, len(times), check_every)]
    period = times.to_period("W" if policy == "weekly" else "M")
    new = np.flatnonzero(period[1:] != period[:-1]) + 1
    return [(start, False)] + [(int(k), True) for k in new if k > start]


def _policy_settings(settings: Settings, policy: str, home: Path, uri: str, inbox: Path) -> Settings:
    """The loop's settings for one policy: its inbox and registry; only ``no_production`` for the calendar
    policies; no skew check (the replay computes the features it logs with the training code itself); a drift
    check only where the drift rule can act on it, its figures stored without Evidently's HTML report (the
    same figures, seconds saved a tick)."""
    triggers = settings.triggers if policy == "loop" else settings.triggers.model_copy(
        update={"enabled": ["no_production"]})
    loop = settings.loop.model_copy(update={
        "bars": str(inbox), "settle_seconds": 0.0, "pipeline": "local", "rollouts": "local", "skew_sample": 0,
        "drift_html": False, **({} if "drift" in triggers.enabled else {"drift_checks": False})})
    return settings.model_copy(update={"registry": uri, "home": home, "loop": loop, "triggers": triggers})


def run_replay(bars: pd.DataFrame, settings: Settings, cfg: ReplayConfig, workdir: Path, *,
               progress: Callable[[str], None] | None = None) -> ReplayResult:
    """Replay ``bars`` (validated) under every policy of ``cfg``; each policy's registry and loop state live
    under ``workdir/<policy>`` (wiped first)."""
    say = progress or (lambda _m: None)
    bars = bars.sort_values(["symbol", "timestamp"], kind="stable").reset_index(drop=True)
    times = pd.DatetimeIndex(sorted(bars["timestamp"].unique()))
    start = cfg.validate(len(times))
    ds = build_dataset(bars, settings.features)
    meta_t = pd.DatetimeIndex(ds.meta["timestamp"])
    live = np.flatnonzero(meta_t >= times[start])
    if len(live) == 0:
        raise DataError("no bar after the replay's start has features and an outcome")
    ppy = settings.evaluation.periods_per_year or infer_periods_per_year(times.to_numpy())
    hold = position_returns(np.ones(len(live)), ds.next_return[live], ds.meta.iloc[live].reset_index(drop=True),
                            settings.evaluation.cost_bps)
    data = {"symbols": sorted(map(str, bars["symbol"].unique())), "bars": len(bars),
            "start": str(times[0]), "end": str(times[-1]), "replay_start": str(times[start]),
            "replayed_rows": int(len(live)), "periods_per_year": ppy,
            "families": list(settings.training.families), "cost_bps": settings.evaluation.cost_bps,
            "accuracy_window": ACCURACY_WINDOW}
    out = ReplayResult(data, _figures(hold.to_numpy(), ppy), {}, cfg.gate, _equity(hold))
    for policy in cfg.policies:
        say(f"{policy}: replaying {len(times) - start} bar times from {times[start]:%Y-%m-%d}")
        out.policies[policy] = _replay_policy(policy, bars, ds, live, times, start, settings, cfg,
                                              workdir / policy, ppy, say)
    return out


def _replay_policy(policy: str, bars: pd.DataFrame, ds: Dataset, live: np.ndarray, times: pd.DatetimeIndex,
                   start: int, settings: Settings, cfg: ReplayConfig, home: Path, ppy: float,
                   say: Callable[[str], None]) -> PolicyResult:
    t0 = time.perf_counter()
    if home.exists():
        shutil.rmtree(home)
    inbox = home / "inbox"
    inbox.mkdir(parents=True)
    clock = ReplayClock(times[start])
    uri = (home / "registry").resolve().as_uri()
    registry = open_registry(uri, clock=clock)
    s = _policy_settings(settings, policy, home, uri, inbox)
    pipeline = InProcessPipeline(registry, gate=cfg.gate)
    rollouts = InstantRollouts(registry)
    loop = Loop(s, registry, rollouts=rollouts, pipeline=pipeline, clock=clock, workdir=home / "loop")
    predlog = PredictionLog(registry.store, flush_rows=1 << 30, flush_seconds=1e9)
    meta_t = pd.DatetimeIndex(ds.meta["timestamp"]).to_numpy()
    pos = np.zeros(len(ds), dtype=np.float64)
    served = np.zeros(len(ds), dtype=bool)
    models: dict[str, tuple[Any, PositionRule]] = {}
    points = tick_points(policy, times, start, cfg.check_every)
    decisions: list[dict[str, Any]] = []
    delivered: pd.Timestamp | None = None
    for i, (k, forced) in enumerate(points):
        t = times[k]
        _deliver(bars, inbox, delivered, t)
        delivered = t
        clock.t = t
        predlog.flush()
        rec = loop.tick(force=f"scheduled {policy} retrain" if forced else None)
        decisions.append(_decision(rec))
        end = times[points[i + 1][0]] if i + 1 < len(points) else None
        rows = np.flatnonzero((meta_t >= t.to_datetime64()) & (
            meta_t < end.to_datetime64() if end is not None else True))
        prod = registry.aliases().get("production")
        if prod is None or len(rows) == 0:
            continue
        if prod not in models:
            models[prod] = _load(registry, prod)
        model, rule = models[prod]
        X = ds.X.iloc[rows][list(model.columns)].to_numpy(np.float64)  # what the predictor passes
        pred = np.asarray(model.predict_array(X), dtype=np.float64)
        vol = ds.X[rule.vol_column].to_numpy(np.float64)[rows] if rule.needs_volatility else None
        pos[rows] = positions(pred, rule, vol)
        served[rows] = True
        # logged as of the interval's last bar (one object per tick; never before the bar it predicts)
        predlog.record(request_id=f"replay-{policy}-{k}", X=X,
                       symbols=list(ds.meta["symbol"].to_numpy()[rows].astype(str)),
                       bar_times=meta_t[rows].astype("datetime64[us]"), predictions=pred, version=prod,
                       role="active", at=pd.Timestamp(meta_t[rows].max()).tz_localize("UTC").to_pydatetime())
    predlog.flush()
    r = position_returns(pos[live], ds.next_return[live], ds.meta.iloc[live].reset_index(drop=True),
                         settings.evaluation.cost_bps)
    figures = _figures(r.to_numpy(), ppy)
    figures["turnover"] = float(np.abs(np.diff(np.r_[0.0, pos[live]])).mean()) if len(live) else 0.0
    figures["exposure"] = float(np.abs(pos[live]).mean())
    hits = np.sign(pos[live]) == np.sign(ds.y[live])
    took = pos[live] != 0
    figures["directional_accuracy"] = float(hits[took].mean()) if took.any() else float("nan")
    events = [{"time": e.at, "action": e.action, "version": e.version, "reason": e.reason}
              for e in registry.history() if e.action in ("promote", "rollback")]
    retrains = [d for d in decisions if d["retrain"] in ("approved", "rejected")]
    not_run = [d for d in decisions if d["retrain"] and d["retrain"] not in ("approved", "rejected")]
    res = PolicyResult(
        policy=policy, metrics=figures, retrains=len(retrains), promotions=len(events),
        # refused by the gate: rejected, or (--no-gate) promoted over the gate's refusal
        gate_refusals=sum(1 for r in pipeline.runs if not r["best"] or r["gate_overridden"]),
        flat_bars=int(len(np.unique(meta_t[live][~served[live]]))), ticks=len(points),
        retrains_not_run=dict(Counter(d["retrain"] for d in not_run)),
        first_not_run=not_run[0]["retrain_summary"] if not_run else None,
        seconds=round(time.perf_counter() - t0, 2), events=events,
        changes=_changes(ds, live, pos, served),
        equity=_equity(r), accuracy=_rolling_accuracy(ds, live, pos, served),
        decisions=[d for d in decisions if d["retrain"] or d["rollout"]])
    say(f"{policy}: {res.retrains} retrain(s), {res.promotions} promotion(s), Sharpe {figures['sharpe']:.2f}, "
        f"{res.seconds:.0f} s")
    return res


def _deliver(bars: pd.DataFrame, inbox: Path, after: pd.Timestamp | None, upto: pd.Timestamp) -> None:
    """The market's feed: bars in (after, upto] as one file in the inbox, stamped with the time of its last bar."""
    from tideline.data import write_bars

    m = bars["timestamp"] <= upto
    if after is not None:
        m &= bars["timestamp"] > after
    if not m.any():
        return
    name = f"bars-{upto:%Y%m%dT%H%M%S}.parquet"
    tmp = write_bars(bars.loc[m].reset_index(drop=True), inbox / f".{name}.tmp.parquet")
    os.replace(tmp, inbox / name)
    stamp = pd.Timestamp(upto).tz_localize("UTC").timestamp()
    os.utime(inbox / name, (stamp, stamp))


def _load(registry: Registry, version: str) -> tuple[Any, PositionRule]:
    with tempfile.TemporaryDirectory(prefix="tideline-replay-") as tmp:
        model = load_model(registry.fetch(version, Path(tmp) / "m"))
    return model, stored_rule(registry.get(version).position, version)


def _decision(rec: dict[str, Any]) -> dict[str, Any]:
    steps = {s["step"]: s for s in rec["steps"]}
    decide = steps.get("decide", {})
    retrain = steps.get("retrain", {})
    return {"at": rec["at"], "outcome": rec["outcome"], "decide": decide.get("outcome"),
            "reason": decide.get("summary"), "retrain": retrain.get("outcome"),
            "window": (retrain.get("window") or {}).get("reason"),
            "retrain_summary": retrain.get("summary"),
            "rollout": steps.get("rollout", {}).get("outcome"), "error": rec.get("error")}


def _figures(r: np.ndarray, ppy: float) -> dict[str, float]:
    from tideline.evaluation import _series_metrics

    return {k: round(float(v), 6) for k, v in _series_metrics(np.asarray(r, dtype=np.float64), ppy).items()}


def _thin(n: int) -> np.ndarray:
    """Positions of at most ``SERIES_POINTS`` (+1: the last is always kept) of ``n`` evenly spaced points."""
    if n == 0:
        return np.zeros(0, dtype=np.intp)
    return np.unique(np.r_[np.arange(0, n, max(1, -(-n // SERIES_POINTS))), n - 1])


def _equity(r: pd.Series) -> list[tuple[str, float]]:
    """The cumulative net log return, thinned (``_thin``)."""
    cum = np.cumsum(r.to_numpy())
    return [(str(r.index[i]), round(float(cum[i]), 6)) for i in _thin(len(cum))]


def _rolling_accuracy(ds: Dataset, live: np.ndarray, pos: np.ndarray, served: np.ndarray
                      ) -> list[tuple[str, float | None]]:
    """Directional accuracy of the positions taken over the last ``ACCURACY_WINDOW`` bar times, per bar time."""
    t = pd.DatetimeIndex(ds.meta["timestamp"].to_numpy()[live])
    took = served[live] & (pos[live] != 0)
    hit = pd.Series(np.where(took, (np.sign(pos[live]) == np.sign(ds.y[live])).astype(np.float64), np.nan), index=t)
    per_bar = hit.groupby(level=0).agg(["sum", "count"])
    roll = per_bar.rolling(ACCURACY_WINDOW, min_periods=1).sum()
    acc = (roll["sum"] / roll["count"]).where(roll["count"] > 0)
    return [(str(acc.index[i]), None if pd.isna(acc.iloc[i]) else round(float(acc.iloc[i]), 4))
            for i in _thin(len(acc))]


def _changes(ds: Dataset, live: np.ndarray, pos: np.ndarray, served: np.ndarray) -> list[dict[str, Any]]:
    """Change points in the policy's own live errors (the loop's detectors) and its accuracy before and after."""
    rows = live[served[live] & (pos[live] != 0)]
    if len(rows) < 50:
        return []
    t = pd.DatetimeIndex(ds.meta["timestamp"].to_numpy()[rows])
    hit = (np.sign(pos[rows]) == np.sign(ds.y[rows])).astype(np.float64)
    found = PerformanceMonitor().detect(pd.Series(1.0 - hit, index=t))
    out = []
    for c in found[:10]:
        at = pd.Timestamp(c.timestamp) if c.timestamp else t[min(c.index, len(t) - 1)]
        before, after = hit[t < at], hit[t >= at]
        out.append({"at": str(at), "detector": c.detector, "accuracy_before": _mean(before),
                    "accuracy_after": _mean(after)})
    return out


def _mean(x: np.ndarray) -> float | None:
    return round(float(x.mean()), 4) if len(x) else None


__all__ = ["DEFAULT_POLICIES", "POLICIES", "InProcessPipeline", "InstantRollouts", "PolicyResult", "ReplayClock",
           "ReplayConfig", "ReplayResult", "run_replay", "tick_points"]
