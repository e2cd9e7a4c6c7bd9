"""When to retrain: rules over the production model, recent bars, live outcomes and drift; a run lock.

Pure decision logic, separate from how a run is started (``run_if_needed`` takes a ``starter``). The clock
is always injected (``now``) and nothing here sleeps, so every rule is testable at any instant.

Rules (each returns a ``RuleResult`` with a human-readable reason, fired or not):

* ``no_production``     nothing is in production.
* ``model_age``         production is older than ``max_model_age_days`` (from its ``created_at``).
* ``new_data``          at least ``min_new_bars`` bars (all symbols together) after the end of production's
                        training window.
* ``performance_decay`` with at least ``min_live_samples`` live outcomes: live Sharpe below
                        ``min_live_sharpe``, or live directional accuracy below the baseline accuracy by more
                        than ``max_accuracy_drop`` (baseline: the live record's ``baseline_accuracy``, else
                        production's hold-out directional accuracy).
* ``drift``             the latest drift report of production has a drifted-feature share
                        >= ``drift_share_threshold``.
* ``regime_shift``      realized volatility of the last ``regime_short_window`` bars lies outside the central
                        band [low, high quantile] of the rolling volatility over production's training window
                        (the regime the model was trained in): "high" or "low" instead of "normal".
* ``cadence``           regime-adaptive schedule: production is at least ``cadence_<regime>_days`` old
                        (high 3 d, normal 7 d, low 14 d by default).
* ``experience``        at least ``min_new_experiences`` experiences (served predictions with realized outcomes,
                        ``tideline.monitoring.experience``) whose bar lies after production's training window.
* ``manual``            somebody asked, with a reason.

``RunLock`` keeps one retraining run at a time across processes and machines with the registry store's
conditional writes: create-only write of ``runs/lock.json``; an expired or released lock is taken over
by compare-and-swap on its etag, so two contenders never both win.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

import numpy as np
import pandas as pd

from tideline.clock import Now, aware, utcnow
from tideline.config import TRIGGER_RULES, Settings, TriggerConfig
from tideline.documents import Document
from tideline.errors import AliasConflict, ConfigError, PolicyError, TidelineError
from tideline.registry.core import ModelVersion, Registry
from tideline.store import RELEASED, Lease, NotFound, PreconditionFailed, Store, Unchanged, cas

log = logging.getLogger(__name__)

__all__ = [
    "DECISIONS_PREFIX",
    "TrainingWindow",
    "training_window",
    "LIVE_METRICS_ATTACHMENT",
    "DRIFT_ATTACHMENT",
    "LOCK_KEY",
    "LockInfo",
    "RegimeInfo",
    "RuleResult",
    "RunLock",
    "TriggerConfig",
    "TriggerContext",
    "TriggerReport",
    "build_context",
    "classify_regime",
    "evaluate",
    "run_if_needed",
]

LIVE_METRICS_ATTACHMENT: Final = "live-metrics.json"
DRIFT_ATTACHMENT: Final = "drift-latest.json"
LOCK_KEY: Final = "runs/lock.json"
DECISIONS_PREFIX: Final = "runs/decisions/"



def _parse_time(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        return None
    if pd.isna(ts):
        return None
    return aware(ts.to_pydatetime())


def _naive_utc(t: datetime) -> pd.Timestamp:
    """Bars carry tz-naive UTC timestamps."""
    return pd.Timestamp(aware(t).replace(tzinfo=None))


def _days(td: timedelta) -> float:
    return td.total_seconds() / 86400.0


# ---- context and results --------------------------------------------------------------------------------
@dataclass
class TriggerContext:
    """Everything the rules look at, gathered once (``build_context``) at the instant ``now``."""

    now: datetime
    production: ModelVersion | None = None
    bars: pd.DataFrame | None = None
    live_metrics: dict[str, Any] | None = None
    drift: dict[str, Any] | None = None
    manual: str | None = None
    notes: list[str] = field(default_factory=list)
    new_experiences: int | None = None
    """experiences whose bar lies after production's training window (None: not counted)"""

    def __post_init__(self) -> None:
        self.now = aware(self.now)


@dataclass(frozen=True)
class RuleResult:
    """One rule's verdict: whether it fired, why (one line), and the figures it judged."""
    name: str
    fired: bool
    reason: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready verdict."""
        return {"name": self.name, "fired": self.fired, "reason": self.reason, "details": dict(self.details)}


@dataclass(frozen=True)
class RegimeInfo(Document):
    """Volatility regime of the last ``short_window`` bars against a reference distribution of rolling vol."""

    regime: str  # "high" | "normal" | "low"
    percentile: float  # median over symbols of the current vol's percentile in the reference
    current_vol: float  # median over symbols, per bar
    reference_vol: float  # median over symbols of the reference's median rolling vol
    reference: str  # "training window" | "trailing N bars"
    n_symbols: int


@dataclass
class TriggerReport:
    """Every rule's verdict at ``now`` (``evaluate``), the production version, the volatility regime, notes."""
    now: datetime
    production: str | None
    results: list[RuleResult]
    regime: RegimeInfo | None
    notes: list[str] = field(default_factory=list)

    @property
    def fired(self) -> bool:
        """True when at least one rule fired (a retrain is due)."""
        return any(r.fired for r in self.results)

    @property
    def reasons(self) -> list[str]:
        """``rule: reason`` of every rule that fired, in rule order."""
        return [f"{r.name}: {r.reason}" for r in self.results if r.fired]

    def result(self, name: str) -> RuleResult:
        """The verdict of rule ``name``; ``KeyError`` for a rule not in the report."""
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready report: time, production, fired, reasons, regime, every rule's verdict, notes."""
        return {
            "now": self.now.isoformat(),
            "production": self.production,
            "fired": self.fired,
            "reasons": self.reasons,
            "regime": self.regime.to_dict() if self.regime else None,
            "rules": [r.to_dict() for r in self.results],
            "notes": list(self.notes),
        }


# ---- regime -------------------------------------------------------------------------------------------------
def _percentile_of(ref: np.ndarray, x: float) -> float:
    return float((np.sum(ref < x) + 0.5 * np.sum(ref == x)) / len(ref))


def classify_regime(
    bars: pd.DataFrame | None, training_window: Mapping[str, Any] | None, cfg: TriggerConfig
) -> RegimeInfo | None:
    """Volatility regime now, relative to production's training window when the bars cover it.

    Per symbol: realized vol = std of the last ``regime_short_window`` log returns; reference = rolling vol
    (same window) over the bars inside the training window, or, when the bars do not cover it, over the
    ``regime_long_window`` bars before the last window. The median percentile over symbols is compared with
    the low/high quantiles. None when no symbol has enough bars.
    """
    if bars is None or len(bars) == 0:
        return None
    w = cfg.regime_short_window
    tw = training_window or {}
    start, end = _parse_time(tw.get("start")), _parse_time(tw.get("end"))
    use_training = start is not None and end is not None
    df = bars[["timestamp", "symbol", "close"]].sort_values(["symbol", "timestamp"], kind="stable")
    pct, cur_vols, ref_vols, sources = [], [], [], set()
    for _, g in df.groupby("symbol", sort=True):
        ts = pd.to_datetime(g["timestamp"]).to_numpy()
        r = np.diff(np.log(g["close"].to_numpy(dtype=float)))
        rts = ts[1:]
        if len(r) < w + 2:
            continue
        current = float(np.std(r[-w:], ddof=1))
        ref_r = None
        if use_training:
            assert start is not None and end is not None
            mask = (rts >= _naive_utc(start).to_datetime64()) & (rts <= _naive_utc(end).to_datetime64())
            if mask.sum() >= 2 * w:
                ref_r, src = r[mask], "training window"
        if ref_r is None:
            before = r[:-w][-cfg.regime_long_window:]
            if len(before) < 2 * w:
                continue
            ref_r, src = before, f"trailing {len(before)} bars"
        ref = pd.Series(ref_r).rolling(w).std(ddof=1).dropna().to_numpy()
        if len(ref) == 0:
            continue
        pct.append(_percentile_of(ref, current))
        cur_vols.append(current)
        ref_vols.append(float(np.median(ref)))
        sources.add(src)
    if not pct:
        return None
    p = float(np.median(pct))
    regime = "high" if p >= cfg.regime_high_quantile else "low" if p <= cfg.regime_low_quantile else "normal"
    source = "training window" if sources == {"training window"} else (
        sources.pop() if len(sources) == 1 else "mixed (training window / trailing bars)")
    return RegimeInfo(regime=regime, percentile=p, current_vol=float(np.median(cur_vols)),
                      reference_vol=float(np.median(ref_vols)), reference=source, n_symbols=len(pct))


# ---- rules --------------------------------------------------------------------------------------------------
def _age_days(ctx: TriggerContext) -> float | None:
    if ctx.production is None:
        return None
    created = _parse_time(ctx.production.created_at)
    return None if created is None else _days(ctx.now - created)


def rule_no_production(ctx: TriggerContext, cfg: TriggerConfig) -> RuleResult:
    """Fires when nothing is in production (the first model must be trained)."""
    if ctx.production is None:
        return RuleResult("no_production", True, "no model is in production")
    return RuleResult("no_production", False, f"{ctx.production.version} is in production",
                      {"version": ctx.production.version})


def rule_model_age(ctx: TriggerContext, cfg: TriggerConfig) -> RuleResult:
    """Fires when production is at least ``max_model_age_days`` old (never without a readable ``created_at``)."""
    age = _age_days(ctx)
    if age is None:
        why = "no model in production" if ctx.production is None else "production has no valid created_at"
        return RuleResult("model_age", False, why)
    assert ctx.production is not None
    d = {"age_days": round(age, 4), "max_days": cfg.max_model_age_days, "version": ctx.production.version}
    if age >= cfg.max_model_age_days:
        return RuleResult("model_age", True, f"model age {age:.1f} d >= {cfg.max_model_age_days:g} d", d)
    return RuleResult("model_age", False, f"model age {age:.1f} d < {cfg.max_model_age_days:g} d", d)


def rule_new_data(ctx: TriggerContext, cfg: TriggerConfig) -> RuleResult:
    """Fires when the recent bars hold at least ``min_new_bars`` bars (all symbols) after production's training
    window ended; never without production, its window end, or bars.
    """
    if ctx.production is None:
        return RuleResult("new_data", False, "no model in production")
    end = _parse_time(ctx.production.training_window.get("end"))
    if end is None:
        return RuleResult("new_data", False, f"{ctx.production.version} has no training window end")
    if ctx.bars is None:
        return RuleResult("new_data", False, "no recent bars given", {"training_end": end.isoformat()})
    ts = pd.to_datetime(ctx.bars["timestamp"])
    new = ctx.bars.loc[ts > _naive_utc(end)]
    n = int(len(new))
    d = {"new_bars": n, "min_new_bars": cfg.min_new_bars, "training_end": end.isoformat(),
         "symbols_with_new_bars": int(new["symbol"].nunique()) if n else 0,
         "latest_bar": str(ts.max()) if len(ts) else None}
    if n >= cfg.min_new_bars:
        return RuleResult("new_data", True,
                          f"{n:,} new bars since the training window ended ({end:%Y-%m-%d %H:%M}) "
                          f">= {cfg.min_new_bars:,}", d)
    return RuleResult("new_data", False,
                      f"{n:,} new bars since the training window ended ({end:%Y-%m-%d %H:%M}) "
                      f"< {cfg.min_new_bars:,}", d)


def _num(d: Mapping[str, Any], key: str) -> float | None:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
        return None
    return float(v)


def rule_performance_decay(ctx: TriggerContext, cfg: TriggerConfig) -> RuleResult:
    """Fires when production's live record, over at least ``min_live_samples`` outcomes, has a Sharpe below
    ``min_live_sharpe`` or an accuracy more than ``max_accuracy_drop`` below its baseline (the live always-long
    accuracy, else the hold-out accuracy).
    """
    name = "performance_decay"
    if ctx.production is None:
        return RuleResult(name, False, "no model in production")
    live = ctx.live_metrics
    n = _num(live, "n") if live else None
    if not live or n is None or n <= 0:
        return RuleResult(name, False, "no live outcomes yet")
    if n < cfg.min_live_samples:
        return RuleResult(name, False, f"only {int(n)} live outcomes < {cfg.min_live_samples} needed to judge",
                          {"n": int(n), "min_live_samples": cfg.min_live_samples})
    sharpe, acc = _num(live, "sharpe"), _num(live, "directional_accuracy")
    base = _num(live, "baseline_accuracy")
    base_src = "live baseline"
    if base is None:
        base, base_src = _num(ctx.production.metrics or {}, "directional_accuracy"), "hold-out accuracy"
    d: dict[str, Any] = {"n": int(n), "live_sharpe": sharpe, "live_accuracy": acc, "baseline_accuracy": base,
                         "baseline_source": base_src, "min_live_sharpe": cfg.min_live_sharpe,
                         "max_accuracy_drop": cfg.max_accuracy_drop}
    fired, parts = [], []
    if sharpe is not None:
        if sharpe < cfg.min_live_sharpe:
            fired.append(f"live Sharpe {sharpe:.2f} < {cfg.min_live_sharpe:g}")
        else:
            parts.append(f"live Sharpe {sharpe:.2f} >= {cfg.min_live_sharpe:g}")
    if acc is not None and base is not None:
        drop = base - acc
        d["accuracy_drop"] = drop
        if drop > cfg.max_accuracy_drop:
            fired.append(f"live accuracy {acc:.3f} is {drop:.3f} below the {base_src} {base:.3f} "
                         f"(> {cfg.max_accuracy_drop:g})")
        else:
            parts.append(f"live accuracy {acc:.3f} vs {base_src} {base:.3f} (drop {drop:.3f} "
                         f"<= {cfg.max_accuracy_drop:g})")
    if sharpe is None and (acc is None or base is None):
        return RuleResult(name, False, "live outcomes carry neither a Sharpe nor an accuracy with a baseline", d)
    suffix = f" over {int(n)} live outcomes"
    if fired:
        return RuleResult(name, True, "; ".join(fired) + suffix, d)
    return RuleResult(name, False, "; ".join(parts) + suffix, d)


def rule_drift(ctx: TriggerContext, cfg: TriggerConfig) -> RuleResult:
    """Fires when production's latest drift report has a drifted share at or above ``drift_share_threshold``."""
    if ctx.production is None:
        return RuleResult("drift", False, "no model in production")
    rep = ctx.drift
    if not rep:
        return RuleResult("drift", False, f"no drift report for {ctx.production.version} yet")
    share = _num(rep, "drifted_share")
    d = {"drifted_share": share, "threshold": cfg.drift_share_threshold,
         "dataset_drifted": rep.get("dataset_drifted"), "report_at": rep.get("at") or rep.get("created_at")}
    if share is None:
        return RuleResult("drift", False, "drift report has no drifted_share", d)
    if share >= cfg.drift_share_threshold:
        return RuleResult("drift", True, f"{share:.0%} of features drifted >= {cfg.drift_share_threshold:.0%}", d)
    return RuleResult("drift", False, f"{share:.0%} of features drifted < {cfg.drift_share_threshold:.0%}", d)


def rule_regime_shift(ctx: TriggerContext, cfg: TriggerConfig, regime: RegimeInfo | None) -> RuleResult:
    """Fires when the recent realized volatility falls outside the ``[regime_low_quantile,
    regime_high_quantile]`` band of the training window's rolling volatility (judged only when the bars cover
    that window).
    """
    name = "regime_shift"
    if ctx.production is None:
        return RuleResult(name, False, "no model in production")
    if ctx.bars is None:
        return RuleResult(name, False, "no recent bars given")
    if regime is None:
        return RuleResult(name, False, f"too few bars to estimate volatility (need > {2 * cfg.regime_short_window + 1}"
                                       " per symbol)")
    d = regime.to_dict() | {"low_quantile": cfg.regime_low_quantile, "high_quantile": cfg.regime_high_quantile}
    if regime.reference != "training window":
        return RuleResult(name, False, "the recent bars do not cover production's training window, so the "
                                       "training regime is unknown", d)
    desc = (f"realized vol of the last {cfg.regime_short_window} bars is at the {regime.percentile:.0%} point of "
            f"the training window's rolling vol")
    band = f"normal band {cfg.regime_low_quantile:.0%}-{cfg.regime_high_quantile:.0%}"
    if regime.regime != "normal":
        return RuleResult(name, True, f"{desc}: {regime.regime} regime, outside the {band} it was trained in", d)
    return RuleResult(name, False, f"{desc}: inside the {band} (normal regime, as in training)", d)


def cadence_days(regime: str | None, cfg: TriggerConfig) -> float:
    """The retraining cadence in days for a volatility regime (``high``, ``low``; anything else is normal)."""
    return {"high": cfg.cadence_high_days, "low": cfg.cadence_low_days}.get(regime or "normal",
                                                                            cfg.cadence_normal_days)


def rule_cadence(ctx: TriggerContext, cfg: TriggerConfig, regime: RegimeInfo | None) -> RuleResult:
    """Fires when production is at least as old as the cadence of the current volatility regime."""
    age = _age_days(ctx)
    if age is None:
        return RuleResult("cadence", False, "no model in production")
    name = regime.regime if regime else None
    days = cadence_days(name, cfg)
    label = f"{name} volatility" if name else "regime unknown (no recent bars), normal"
    d = {"age_days": round(age, 4), "cadence_days": days, "regime": name}
    if age >= days:
        return RuleResult("cadence", True, f"model age {age:.1f} d >= {days:g} d cadence ({label} regime)", d)
    return RuleResult("cadence", False, f"model age {age:.1f} d < {days:g} d cadence ({label} regime)", d)


def rule_experience(ctx: TriggerContext, cfg: TriggerConfig) -> RuleResult:
    """Fires when at least ``min_new_experiences`` experiences have a bar after production's training window
    ended; never without production, its window end, or a count."""
    if ctx.production is None:
        return RuleResult("experience", False, "no model in production")
    end = _parse_time(ctx.production.training_window.get("end"))
    if end is None:
        return RuleResult("experience", False, f"{ctx.production.version} has no training window end")
    if ctx.new_experiences is None:
        return RuleResult("experience", False, "the experience buffer was not counted",
                          {"training_end": end.isoformat()})
    n = int(ctx.new_experiences)
    d = {"new_experiences": n, "min_new_experiences": cfg.min_new_experiences, "training_end": end.isoformat()}
    verb = ">=" if n >= cfg.min_new_experiences else "<"
    return RuleResult("experience", n >= cfg.min_new_experiences,
                      f"{n:,} new experiences since the training window ended ({end:%Y-%m-%d %H:%M}) {verb} "
                      f"{cfg.min_new_experiences:,}", d)


def rule_manual(ctx: TriggerContext, cfg: TriggerConfig) -> RuleResult:
    """Fires when a manual request (a non-blank reason) was given."""
    if ctx.manual and ctx.manual.strip():
        return RuleResult("manual", True, f"requested: {ctx.manual.strip()}")
    return RuleResult("manual", False, "no manual request")


def evaluate(ctx: TriggerContext, cfg: TriggerConfig | None = None) -> TriggerReport:
    """Every rule, in a fixed order; disabled rules are listed as not fired."""
    cfg = cfg or TriggerConfig()
    regime = classify_regime(ctx.bars, ctx.production.training_window if ctx.production else None, cfg)
    rules: dict[str, Callable[[], RuleResult]] = {
        "no_production": lambda: rule_no_production(ctx, cfg),
        "model_age": lambda: rule_model_age(ctx, cfg),
        "new_data": lambda: rule_new_data(ctx, cfg),
        "performance_decay": lambda: rule_performance_decay(ctx, cfg),
        "drift": lambda: rule_drift(ctx, cfg),
        "regime_shift": lambda: rule_regime_shift(ctx, cfg, regime),
        "cadence": lambda: rule_cadence(ctx, cfg, regime),
        "experience": lambda: rule_experience(ctx, cfg),
        "manual": lambda: rule_manual(ctx, cfg),
    }
    assert tuple(rules) == TRIGGER_RULES
    enabled = set(cfg.enabled)
    results = []
    for name, fn in rules.items():
        if name not in enabled:
            results.append(RuleResult(name, False, "rule disabled"))
        else:
            results.append(fn())
    return TriggerReport(now=ctx.now, production=ctx.production.version if ctx.production else None,
                         results=results, regime=regime, notes=list(ctx.notes))


# ---- what a retrain should learn from ------------------------------------------------------------------
@dataclass(frozen=True)
class TrainingWindow:
    """Where a retrain's data starts. ``ready`` False: not enough bars after a detected change yet."""

    start: pd.Timestamp | None  # None: from the start of the available history (within the lookback)
    bars_after: int
    ready: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready window (``start`` as a string, or None)."""
        return {"start": None if self.start is None else str(self.start), "bars_after": self.bars_after,
                "ready": self.ready, "reason": self.reason}


def training_window(live_metrics: Mapping[str, Any] | None, bar_times: Any, *, min_bars: int,
                    lookback_bars: int, from_start: bool = False) -> TrainingWindow:
    """Regime-aware training window from production's live record.

    When the live monitor (``live-metrics.json`` ``change_points``: ADWIN / Page-Hinkley on realized errors)
    found a change, the market the model was trained on is gone: retrain on the bars after the last change
    (dated when it was detected; with ``from_start``, where it most likely began, its ``start``, when the
    monitor estimated one) only (detections less than ``min_bars`` apart count as one change, dated by the first), once there are
    at least ``min_bars`` of them (before that a retrain would learn the old regime: not ready). Without a detected change: the latest ``lookback_bars``. ``bar_times``: the
    distinct bar times available now (any order).
    """
    if min_bars < 1 or lookback_bars < 1:
        raise ConfigError("training_window needs min_bars >= 1 and lookback_bars >= 1")
    times = pd.DatetimeIndex(pd.to_datetime(pd.Index(bar_times).unique())).sort_values()
    if len(times) == 0:
        return TrainingWindow(None, 0, False, "no bars yet")
    changes = []
    for c in (live_metrics or {}).get("change_points") or []:
        when = (c.get("start") if from_start else None) or c.get("timestamp") if isinstance(c, Mapping) else None
        ts = _parse_time(when) if when else None
        if ts is not None:
            changes.append(_naive_utc(ts))
    if changes:
        # the last change, moved back over earlier detections less than min_bars before it: two detectors
        # (or one restarted after an alarm) often date the same change a few bars apart
        changes.sort()
        start = changes[-1]
        for prev in reversed(changes[:-1]):
            if int(((times > prev) & (times <= start)).sum()) >= min_bars:
                break
            start = prev
        after = int((times > start).sum())
        if after < min_bars:
            return TrainingWindow(start, after, False, f"live errors changed at {start}; only {after} bars "
                                  f"since (need {min_bars} to learn the new regime)")
        return TrainingWindow(start, after, True, f"the {after} bars since live errors changed at {start}")
    start = times[max(0, len(times) - lookback_bars)]
    after = int((times >= start).sum())
    return TrainingWindow(start, after, True, f"the latest {after} bars (no change detected in live errors)")


# ---- context from the registry ---------------------------------------------------------------------------
def _read_json_attachment(registry: Registry, version: str, name: str, notes: list[str]) -> dict[str, Any] | None:
    if name not in registry.attachments(version):
        return None
    try:
        data = json.loads(registry.get_attachment(version, name))
    except (TidelineError, ValueError) as e:
        notes.append(f"ignored attachment {name} of {version}: {e}")
        log.warning("ignored attachment %s of %s: %s", name, version, e)
        return None
    if not isinstance(data, dict):
        notes.append(f"ignored attachment {name} of {version}: not a JSON object")
        return None
    return data


def build_context(registry: Registry, *, bars: pd.DataFrame | None = None, now: datetime | None = None,
                  manual: str | None = None) -> TriggerContext:
    """Production version, its live metrics and latest drift report (attachments), the experiences since its
    training window ended, the given bars."""
    from tideline.monitoring.experience import new_since

    notes: list[str] = []
    prod_id = registry.aliases().get("production")
    production = live = drift = None
    experiences = None
    if prod_id is not None:
        production = registry.get(prod_id)
        live = _read_json_attachment(registry, prod_id, LIVE_METRICS_ATTACHMENT, notes)
        drift = _read_json_attachment(registry, prod_id, DRIFT_ATTACHMENT, notes)
        end = _parse_time(production.training_window.get("end"))
        if end is not None:
            experiences = new_since(registry, end)
    return TriggerContext(now=now or utcnow(), production=production, bars=bars, live_metrics=live, drift=drift,
                          manual=manual, notes=notes, new_experiences=experiences)


# ---- run lock ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LockInfo(Document):
    """The run lock's document: which run holds it, why, when it was taken and expires, who (``host:pid``),
    and whether it was released (when, and by whom when not by its holder).
    """
    run_id: str
    reason: str
    acquired_at: str
    expires_at: str
    owner: str
    released: bool = False
    released_at: str | None = None
    released_by: str | None = None

    @property
    def lease(self) -> Lease:
        """The run's lease (``tideline.store.Lease``): held by ``run_id`` until ``expires_at``, unless released;
        a lock whose expiry cannot be read holds nothing."""
        exp = _parse_time(self.expires_at)
        return RELEASED if self.released or exp is None else Lease(self.run_id, exp.timestamp())

    @classmethod
    def from_json(cls, raw: bytes) -> LockInfo | None:
        """The stored lock; ``None`` for one that cannot be parsed (it counts as expired)."""
        try:
            d = json.loads(raw)
            if isinstance(d, dict):
                d.pop(cas.WRITE_ID, None)  # the compare-and-swap's mark, not a field of the lock
            return cls.from_dict(d)
        except ValueError as e:
            log.warning("a run lock is unreadable (%s); it counts as expired", e)
            return None


class RunLock:
    """One retraining run at a time, on any ``Store`` (a directory or S3): ``runs/lock.json``.

    The lock document carries the run's ``Lease``, written with the store's compare-and-swap
    (``tideline.store.cas``): of two contenders exactly one wins; a released or expired lock is taken over.
    ``release`` writes a released tombstone, only for the owning run.
    """

    def __init__(self, store: Store, ttl: float | timedelta = 6 * 3600.0, *, clock: Now = utcnow,
                 key: str = LOCK_KEY) -> None:
        self.store = store
        self.ttl = ttl if isinstance(ttl, timedelta) else timedelta(seconds=float(ttl))
        if self.ttl <= timedelta(0):
            raise ConfigError("run lock TTL must be positive")
        self.clock = clock
        self.key = key

    def _read(self) -> LockInfo | None:
        try:
            raw, _ = self.store.get(self.key)
        except NotFound:
            return None
        return LockInfo.from_json(raw)

    def current(self, now: datetime | None = None) -> LockInfo | None:
        """The lock held right now (neither released nor expired), or None."""
        info = self._read()
        now = aware(now or self.clock())
        if info is None or not info.lease.live(now.timestamp()):
            return None
        return info

    def acquire(self, run_id: str, reason: str = "", now: datetime | None = None) -> bool:
        """Take the lock for ``run_id``; False when another run holds it (True if ``run_id`` already does)."""
        now = aware(now or self.clock())
        info = LockInfo(run_id=run_id, reason=reason, acquired_at=now.isoformat(),
                        expires_at=(now + self.ttl).isoformat(), owner=f"{socket.gethostname()}:{os.getpid()}")

        def take(held: LockInfo | None) -> tuple[dict[str, Any], bool]:
            if held is not None and held.lease.live(now.timestamp()):
                raise Unchanged(held.run_id == run_id)
            if held is not None:
                log.info("run lock taken over by %s (was %s, %s)", run_id, held.run_id,
                         "released" if held.released else "expired")
            return info.to_dict(), True

        try:
            taken: bool = cas.update(self.store, self.key, take, load=LockInfo.from_json, dump=cas.dumps)
        except AliasConflict:
            return False
        if taken:
            log.info("run lock taken by %s", run_id)
        return taken

    def release(self, run_id: str, now: datetime | None = None) -> bool:
        """Release the lock held by ``run_id``; PolicyError when another run holds it; False if none held."""
        now = aware(now or self.clock())

        def tombstone(held: LockInfo | None) -> tuple[dict[str, Any], bool]:
            if held is None or held.released:
                raise Unchanged(False)
            if held.run_id != run_id:
                raise PolicyError(f"run lock is held by run {held.run_id} (since {held.acquired_at}), "
                                  f"not by {run_id}: refusing to release it")
            return dataclasses.replace(held, released=True, released_at=now.isoformat()).to_dict(), True

        released: bool = cas.update(self.store, self.key, tombstone, load=LockInfo.from_json, dump=cas.dumps,
                                    conflict=f"could not release the run lock of {run_id}: it kept changing")
        if released:
            log.info("run lock released by %s", run_id)
        return released


# ---- decide and start ---------------------------------------------------------------------------------------
def _record(store: Store, now: datetime, run_id: str, decision: dict[str, Any]) -> str | None:
    key = f"{DECISIONS_PREFIX}{now:%Y%m%dT%H%M%S%fZ}-{run_id}.json"
    try:
        store.put(key, json.dumps(decision, indent=1, default=str).encode(), if_none_match=True)
    except (TidelineError, PreconditionFailed) as e:  # the decision itself stands; recording is best effort
        log.warning("could not record the trigger decision at %s: %s", key, e)
        return None
    return key


def list_decisions(store: Store, limit: int = 20) -> list[dict[str, Any]]:
    """The most recent recorded decisions, newest first."""
    out = []
    for key in sorted(store.list(DECISIONS_PREFIX), reverse=True)[:limit]:
        try:
            out.append(json.loads(store.get(key)[0]))
        except (NotFound, ValueError):
            continue
    return out


def run_if_needed(registry: Registry, settings: Settings, *, starter: Callable[..., dict[str, Any]],
                  force: bool = False, manual: str | None = None, bars: pd.DataFrame | None = None,
                  now: datetime | None = None, clock: Now = utcnow, note: str | None = None,
                  **start_kwargs: Any) -> dict[str, Any]:
    """Evaluate the rules; when one fires (or ``force``), start one run under the run lock.

    ``note`` leads the run's reason (e.g. "restart of run <id>" for a run restarted after its process died).

    Returns ``{"started", "reason", "run_id", "forced", "report", "result", "decision_key", "at"}``. A run
    already holding the lock means ``started: False`` with the holder in the reason. The decision (started
    or not) is written to ``runs/decisions/`` in the registry store. The starter's errors propagate after
    the lock is released and the failure recorded.
    """
    cfg = settings.triggers
    now = aware(now or clock())
    report = evaluate(build_context(registry, bars=bars, now=now, manual=manual), cfg)
    run_id = uuid.uuid4().hex[:12]
    decision: dict[str, Any] = {"at": now.isoformat(), "run_id": None, "forced": bool(force), "started": False,
                                "report": report.to_dict(), "result": None}
    if not report.fired and not force:
        decision["reason"] = "no rule fired: " + "; ".join(f"{r.name}: {r.reason}" for r in report.results)
        decision["decision_key"] = _record(registry.store, now, "skip", decision)
        return decision
    reason = "; ".join(report.reasons) if report.fired else "forced run (no rule fired)"
    if force and report.fired:
        reason = "forced run; " + reason
    if note:
        reason = f"{note}; {reason}"
    lock = RunLock(registry.store, cfg.lock_ttl_seconds, clock=clock)
    if not lock.acquire(run_id, reason, now):
        holder = lock.current(now)
        who = f"run {holder.run_id} since {holder.acquired_at}" if holder else "another run"
        decision["reason"] = f"a run is already in progress ({who})"
        decision["wanted"] = reason
        decision["decision_key"] = _record(registry.store, now, "busy", decision)
        return decision
    decision |= {"run_id": run_id, "started": True, "reason": reason}
    try:
        decision["result"] = starter(settings=settings, reason=reason, **start_kwargs)
    except BaseException as e:
        decision["error"] = f"{type(e).__name__}: {e}"
        raise
    finally:
        try:
            lock.release(run_id)
        except PolicyError as e:  # the lock expired during the run and another run took it
            decision["lock_warning"] = str(e)
            log.warning("%s", e)
        decision["decision_key"] = _record(registry.store, now, run_id, decision)
    return decision
