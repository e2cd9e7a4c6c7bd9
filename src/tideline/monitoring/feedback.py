"""Live outcomes: join logged predictions with what the market did next, and measure each served version.

The predictor logs every prediction to the registry store (``tideline.monitoring.predictions``: layout,
columns and the one reader, ``read_predictions``). Once the bars after a prediction's bar exist, its realized
outcome is known:

* ``fwd_return`` = log(close[t+h] / close[t]) of the prediction's symbol, ``t`` = the bar it was made on
  (``bar_time``, matched **exactly** to a bar of that symbol), ``h`` = the version's label horizon
  (``feature_config["horizon"]``) — the same definition as ``tideline.features.compute_labels``;
* ``target`` = the version's label of it (``feature_config["label"]``: raw, vol-scaled, de-meaned, direction),
  computed by ``compute_labels`` itself;
* ``position`` = ``tideline.positions.positions`` of the prediction under the version's stored rule;
* ``next_return`` = log(close[t+1] / close[t]) (what the one-bar position earns);
* ``error`` = prediction - target; ``hit`` = the position's side is the target's (NaN while flat).

Each logged prediction gets a ``status``:

* ``realized``    its bar exists and so does the bar ``h`` bars later;
* ``pending``     its bar exists but the horizon has not elapsed in the data yet, or its bar is later than
                  the symbol's last bar (the data has not caught up yet);
* ``unknown_bar`` no bar of that symbol at exactly that time (a misaligned timestamp, an unknown symbol, a
                  prediction made without symbol/timestamp): counted and reported, never guessed.

Retried requests can log the same prediction twice: rows with the same (version, role, symbol, bar_time)
are de-duplicated, keeping the first by log ``time``, and counted.

Metrics reuse ``tideline.evaluation`` (same conventions as the offline evaluation: log returns, the version's
positions earning ``next_return`` net of ``cost_bps`` (and its slippage) per unit of turnover, equal weight over
the symbols present at a timestamp, Sharpe annualised with ``periods_per_year``). ``run_feedback`` stores
the result as the ``live-metrics.json`` attachment of each version, which the ``performance_decay``
trigger rule reads (``n``, ``sharpe``, ``directional_accuracy``, ``baseline_accuracy``), and runs
``drift.PerformanceMonitor`` over each version's absolute errors to find change points. A version stored with
its regime bounds (``evaluation.regime_thresholds``) also gets its live figures per volatility regime, each row
classed by its recent volatility against the training window's bounds, as on the hold-out (``live_regimes``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import pandas as pd

from tideline.clock import aware, utc_timestamp, utcnow
from tideline.config import LABELS, EvaluationConfig, FeatureConfig
from tideline.documents import Document
from tideline.errors import ConfigError, DataError, TidelineError
from tideline.evaluation import (
    Metrics,
    classify_volatility,
    evaluate_predictions,
    infer_periods_per_year,
    regime_metrics,
    strategy_returns,
)
from tideline.features import compute_labels
from tideline.models.base import output_kind
from tideline.monitoring.outcomes import LiveOutcomes, PairedOutcomes, WatchOutcomes
from tideline.monitoring.predictions import naive_utc, normalize_predictions, read_predictions, utc_bound
from tideline.monitoring.skew import VersionSkew, check_skew
from tideline.positions import PositionRule, positions, stored_rule

if TYPE_CHECKING:
    from tideline.monitoring.drift import ChangePoint
    from tideline.registry import Registry

log = logging.getLogger(__name__)

__all__ = [
    "LIVE_METRICS_ATTACHMENT",
    "FeedbackReport",
    "LiveMetrics",
    "LiveOutcomeSource",
    "join_outcomes",
    "live_metrics",
    "outcomes_from_log",
    "run_feedback",
]

LIVE_METRICS_ATTACHMENT: Final = "live-metrics.json"  # read by tideline.triggers (performance_decay)
STATUSES: Final[tuple[str, ...]] = ("realized", "pending", "unknown_bar")
DEDUP_KEY: Final[list[str]] = ["version", "role", "symbol", "bar_time"]
ALL_ROLES: Final = "all"


# ---- joining outcomes ----------------------------------------------------------------------------------
def _dedup(predictions: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept, dropped): duplicates on (version, role, symbol, bar_time) dropped, first by time kept.
    Rows without a symbol or bar_time are never duplicates of each other (they cannot be joined anyway)."""
    p = predictions.sort_values("time", kind="stable")
    keyed = p["symbol"].notna() & p["bar_time"].notna()
    dup = keyed & p.duplicated(subset=DEDUP_KEY, keep="first")
    return p.loc[~dup].sort_index(), p.loc[dup]


def join_outcomes(predictions: pd.DataFrame, bars: pd.DataFrame, horizon: int, *, label: str = "raw",
                  label_window: int = 20, rule: PositionRule | None = None,
                  vol_window: int | None = None) -> pd.DataFrame:
    """Each de-duplicated prediction with its realized outcome over ``horizon`` bars of its symbol.

    ``bars``: validated bars (``validate_bars(...).clean``; one bar per (symbol, timestamp)). Returns the
    prediction columns plus ``fwd_return``, ``target`` (the version's label ``label`` of it, as
    ``features.compute_labels`` defines it), ``vol`` (with ``vol_window``: the recent volatility the position
    rule and slippage use, as the ``rvol`` feature; also when ``rule`` needs it), ``position``
    (``tideline.positions.positions`` of the prediction under ``rule``), ``next_return``, ``outcome_time`` (time of the bar ``horizon``
    bars later), ``error``, ``hit`` (1.0/0.0; NaN unless realized) and ``status`` (realized / pending /
    unknown_bar, see the module doc), in the predictions' order. ``df.attrs``: ``horizon``,
    ``n_duplicates`` and ``duplicates`` (per (version, role): how many rows were dropped).
    """
    if int(horizon) != horizon or horizon < 1:
        raise ConfigError(f"horizon must be an integer >= 1, got {horizon!r}")
    horizon = int(horizon)
    missing = [c for c in ("timestamp", "symbol", "close") if c not in bars.columns]
    if missing:
        raise DataError(f"bars lack columns {missing}")
    preds = normalize_predictions(predictions)
    kept, dropped = _dedup(preds)

    b = bars.loc[:, ["timestamp", "symbol", "close"]].copy()
    b["timestamp"] = naive_utc(b["timestamp"])
    b["symbol"] = b["symbol"].astype(str)
    if b.duplicated(["symbol", "timestamp"]).any():
        raise DataError("bars have several rows for the same (symbol, timestamp)", hint="validate them first")
    b = b.sort_values(["symbol", "timestamp"], kind="stable").reset_index(drop=True)
    # positional shift within each symbol: the offline label definition (features.compute_labels)
    with np.errstate(divide="ignore", invalid="ignore"):
        b["_logc"] = np.log(b["close"].to_numpy(dtype=np.float64))
    by_sym = b.groupby("symbol", sort=False)
    b["fwd_return"] = by_sym["_logc"].shift(-horizon) - b["_logc"]
    b["next_return"] = by_sym["_logc"].shift(-1) - b["_logc"]
    b["outcome_time"] = by_sym["timestamp"].shift(-horizon)
    for c in ("fwd_return", "next_return"):
        b.loc[~np.isfinite(b[c].to_numpy(dtype=np.float64)), c] = np.nan
    b["target"] = compute_labels(b, horizon, label, label_window)["target"].to_numpy() if label != "raw" \
        else b["fwd_return"]
    if vol_window is None and rule is not None and rule.needs_volatility:
        vol_window = rule.vol_window
    if vol_window is not None:
        r1 = by_sym["_logc"].diff()
        b["vol"] = r1.groupby(b["symbol"], sort=False).transform(
            lambda x: x.rolling(vol_window, min_periods=vol_window).std())
    b = b.drop(columns="_logc")
    last_bar = b.groupby("symbol", sort=False)["timestamp"].max()

    right = b.rename(columns={"timestamp": "bar_time"}).drop(columns="close")
    right["_matched"] = True
    joined = kept.reset_index(names="_pos").merge(right, on=["symbol", "bar_time"], how="left",
                                                  validate="many_to_one", sort=False)
    joined = joined.sort_values("_pos", kind="stable").drop(columns="_pos").reset_index(drop=True)
    matched = joined["_matched"].eq(True).to_numpy()
    joined = joined.drop(columns="_matched")
    fwd = joined["fwd_return"].to_numpy(dtype=np.float64)
    sym_last = joined["symbol"].map(last_bar)
    beyond = (~matched & joined["bar_time"].notna().to_numpy() & sym_last.notna().to_numpy()
              & (joined["bar_time"] > sym_last).to_numpy())
    realized = matched & np.isfinite(fwd)
    status = np.where(realized, "realized", np.where(matched | beyond, "pending", "unknown_bar"))
    joined["status"] = status
    pred = joined["prediction"].to_numpy(dtype=np.float64)
    target = joined["target"].to_numpy(dtype=np.float64)
    pos = positions(pred, rule, joined["vol"].to_numpy(dtype=np.float64) if vol_window is not None else None)
    joined["position"] = pos
    joined["error"] = np.where(realized, pred - target, np.nan)
    # a hit: the position's side was the label's (a flat row is no bet)
    joined["hit"] = np.where(realized & np.isfinite(pred) & (pos != 0),
                             (np.sign(pos) == np.sign(target)).astype(np.float64), np.nan)
    for c in ("fwd_return", "next_return", "target", *(("vol",) if vol_window is not None else ())):
        joined[c] = joined[c].astype(np.float64)
    joined["outcome_time"] = joined["outcome_time"].astype("datetime64[ns]")

    per_key = dropped.groupby(["version", "role"], dropna=False).size()
    joined.attrs["horizon"] = horizon
    joined.attrs["n_duplicates"] = int(len(dropped))
    joined.attrs["duplicates"] = {(str(v), str(r)): int(n) for (v, r), n in per_key.items()}
    return joined


# ---- metrics ------------------------------------------------------------------------------------------
@dataclass
class LiveMetrics(Document):
    """Live quality of one version (and role) on its realized predictions.

    ``n`` realized outcomes (predictions whose horizon has elapsed), ``n_pending`` waiting for bars,
    ``n_unknown_bar`` unmatched, ``n_duplicates`` dropped retries. Accuracy counts rows with a non-zero
    realized move (as ``evaluation.evaluate_predictions``); ``baseline_accuracy`` is the always-long
    accuracy on the same rows (share of up moves). ``error_*`` are quantiles of prediction - target (the
    version's label). ``strategy_return`` is the summed net log return of the version's positions (its stored
    rule; ``exposure`` their mean size, ``long_share`` the share of them that are long) over ``n_periods``
    timestamps (``total_return`` the same as a simple return), ``sharpe`` annualised. Degenerate cases
    (no outcomes, no variance) give 0.0, like the offline metrics.
    """

    version: str
    role: str
    n: int = 0
    n_pending: int = 0
    n_unknown_bar: int = 0
    n_duplicates: int = 0
    directional_accuracy: float = 0.0
    baseline_accuracy: float = 0.0
    mae: float = 0.0
    rmse: float = 0.0
    error_p05: float = 0.0
    error_p50: float = 0.0
    error_p95: float = 0.0
    error_std: float = 0.0
    bias: float = 0.0
    avg_win: float = 0.0
    avg_loss: float = 0.0
    ic: float = 0.0
    strategy_return: float = 0.0
    total_return: float = 0.0
    sharpe: float = 0.0
    n_periods: int = 0
    cost_bps: float = 0.0
    periods_per_year: float = 0.0
    exposure: float = 0.0
    long_share: float = 0.0
    first_bar_time: str | None = None
    last_bar_time: str | None = None


def _fin(x: float) -> float:
    x = float(x)
    return x if math.isfinite(x) else 0.0


def _metrics_for(rows: pd.DataFrame, version: str, role: str, *, cost_bps: float, periods_per_year: float,
                 n_duplicates: int = 0, rule: PositionRule | None = None, slippage_vol: float = 0.0) -> LiveMetrics:
    st = rows["status"]
    m = LiveMetrics(version=version, role=role, n_pending=int((st == "pending").sum()),
                    n_unknown_bar=int((st == "unknown_bar").sum()), n_duplicates=int(n_duplicates),
                    cost_bps=float(cost_bps), periods_per_year=float(periods_per_year))
    r = rows.loc[(st == "realized") & np.isfinite(rows["prediction"].to_numpy(dtype=np.float64))]
    m.n = int(len(r))
    if m.n == 0:
        return m
    pred = r["prediction"].to_numpy(dtype=np.float64)
    y = r["target" if "target" in r else "fwd_return"].to_numpy(dtype=np.float64)
    meta = pd.DataFrame({"timestamp": r["bar_time"].to_numpy(), "symbol": r["symbol"].to_numpy()})
    trading = {"rule": rule, "slippage_vol": slippage_vol,
               "vol": r["vol"].to_numpy(dtype=np.float64) if "vol" in r else None}
    ev = evaluate_predictions(pred, y, r["next_return"].to_numpy(dtype=np.float64), meta, cost_bps=cost_bps,
                              periods_per_year=periods_per_year, **trading)
    m.exposure, m.long_share = ev.exposure, ev.long_share
    y = y[np.isfinite(y)]
    moved = y != 0
    m.directional_accuracy = ev.directional_accuracy
    m.baseline_accuracy = float(np.mean(y[moved] > 0)) if moved.any() else 0.0
    m.mae, m.rmse, m.ic, m.sharpe = ev.mae, ev.rmse, ev.ic, ev.sharpe
    m.error_std, m.bias, m.avg_win, m.avg_loss = ev.error_std, ev.bias, ev.avg_win, ev.avg_loss
    err = r["error"].to_numpy(dtype=np.float64) if "error" in r else pred - y
    err = err[np.isfinite(err)]
    q = np.quantile(err, [0.05, 0.5, 0.95]) if len(err) else [0.0, 0.0, 0.0]
    m.error_p05, m.error_p50, m.error_p95 = (_fin(v) for v in q)
    m.total_return = ev.total_return
    m.strategy_return = _fin(strategy_returns(pred, r["next_return"].to_numpy(dtype=np.float64), meta,
                                              cost_bps, **trading).sum())
    m.n_periods = int(ev.n_obs)
    m.first_bar_time, m.last_bar_time = str(r["bar_time"].min()), str(r["bar_time"].max())
    return m


def live_metrics(joined: pd.DataFrame, *, cost_bps: float, periods_per_year: float | None = None,
                 rule: PositionRule | None = None, slippage_vol: float = 0.0) -> dict[tuple[str, str], LiveMetrics]:
    """``LiveMetrics`` per (version, role) of a ``join_outcomes`` frame (several may be concatenated).

    ``periods_per_year``: annualisation (give ``infer_periods_per_year`` of the bars); None infers it from
    the predictions' own bar times, which undercounts when only some bars were predicted.
    """
    if cost_bps < 0:
        raise ConfigError("cost_bps must be >= 0")
    need = {"version", "role", "symbol", "bar_time", "prediction", "fwd_return", "next_return", "status"}
    if not need <= set(joined.columns):
        raise DataError(f"not a join_outcomes frame: lacks {sorted(need - set(joined.columns))}")
    if periods_per_year is None:
        bt = joined.loc[joined["status"] == "realized", "bar_time"].dropna().to_numpy()
        periods_per_year = infer_periods_per_year(bt)
    dups: Mapping[tuple[str, str], int] = joined.attrs.get("duplicates", {})
    out: dict[tuple[str, str], LiveMetrics] = {}
    if len(joined) == 0:
        return out
    for (v, r), rows in joined.groupby(["version", "role"], sort=True, dropna=False):
        key = (str(v), str(r))
        out[key] = _metrics_for(rows, *key, cost_bps=cost_bps, periods_per_year=periods_per_year,
                                n_duplicates=dups.get(key, 0), rule=rule, slippage_vol=slippage_vol)
    return out


def _version_rows(joined: pd.DataFrame) -> pd.DataFrame:
    """A version's predictions over all its roles, one per (symbol, bar_time) (the first logged): the
    version's own record, whichever slot served it."""
    j = joined.sort_values("time", kind="stable")
    keyed = j["symbol"].notna() & j["bar_time"].notna()
    return j.loc[~(keyed & j.duplicated(subset=["symbol", "bar_time"], keep="first"))].sort_index()


# ---- the feedback run ------------------------------------------------------------------------------------
@dataclass
class FeedbackReport:
    """What one ``run_feedback`` found: metrics per (version, role) and per version, change points."""

    at: datetime
    since: str | None
    n_predictions: int
    n_duplicates: int
    periods_per_year: float
    metrics: dict[tuple[str, str], LiveMetrics] = field(default_factory=dict)
    versions: dict[str, LiveMetrics] = field(default_factory=dict)
    horizons: dict[str, int] = field(default_factory=dict)
    change_points: dict[str, list[ChangePoint]] = field(default_factory=dict)
    monitored: dict[str, int] = field(default_factory=dict)  # version -> errors fed to the monitor
    unknown_examples: list[dict[str, Any]] = field(default_factory=list)
    attachments: dict[str, str] = field(default_factory=dict)  # version -> attachment written
    skipped: dict[str, str] = field(default_factory=dict)  # version -> why it was not measured
    notes: list[str] = field(default_factory=list)
    skew: dict[str, VersionSkew] = field(default_factory=dict)  # version -> its training/serving skew check
    regimes: dict[str, dict[str, Metrics]] = field(default_factory=dict)  # version -> live figures per regime

    @property
    def n_realized(self) -> int:
        """Realized outcomes over every version (each version's predictions counted once, whatever the role)."""
        return sum(m.n for m in self.versions.values())

    @property
    def n_pending(self) -> int:
        """Predictions still waiting for their outcome bars, over every (version, role)."""
        return sum(m.n_pending for m in self.metrics.values())

    @property
    def n_unknown_bar(self) -> int:
        """Predictions whose bar is not in the bars, over every (version, role)."""
        return sum(m.n_unknown_bar for m in self.metrics.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready report: counts, horizons, metrics per version and per (version, role), change points ..."""
        return {
            "at": self.at.isoformat(),
            "since": self.since,
            "n_predictions": self.n_predictions,
            "n_realized": self.n_realized,
            "n_pending": self.n_pending,
            "n_unknown_bar": self.n_unknown_bar,
            "n_duplicates": self.n_duplicates,
            "periods_per_year": self.periods_per_year,
            "horizons": dict(self.horizons),
            "versions": {v: m.to_dict() for v, m in self.versions.items()},
            "metrics": [m.to_dict() for _, m in sorted(self.metrics.items())],
            "change_points": {v: [c.to_dict() for c in cps] for v, cps in self.change_points.items()},
            "monitored": dict(self.monitored),
            "unknown_examples": list(self.unknown_examples),
            "attachments": dict(self.attachments),
            "skipped": dict(self.skipped),
            "notes": list(self.notes),
            "skew": {v: k.to_dict() for v, k in self.skew.items()},
            "regimes": {v: {g: m.to_dict() for g, m in r.items()} for v, r in self.regimes.items()},
        }

    def summary(self) -> str:
        """Human-readable lines: the counts, each (version, role)'s live figures, change points, skips, attachments."""
        lines = [f"{self.n_predictions:,} logged predictions: {self.n_realized:,} realized, "
                 f"{self.n_pending:,} pending, {self.n_unknown_bar:,} with an unknown bar, "
                 f"{self.n_duplicates:,} duplicates dropped"]
        for (v, r), m in sorted(self.metrics.items()):
            lines.append(f"{v} {r}: n={m.n:,} pending={m.n_pending:,} accuracy={m.directional_accuracy:.3f} "
                         f"(baseline {m.baseline_accuracy:.3f}) MAE={m.mae:.4g} Sharpe={m.sharpe:.2f}")
        for v, cps in self.change_points.items():
            if cps:
                lines.append(f"{v}: {len(cps)} change point(s) in live errors, first at "
                             f"{cps[0].timestamp or cps[0].index}")
        for v, why in self.skipped.items():
            lines.append(f"{v}: skipped ({why})")
        lines += [f"skew {k.summary()}" for k in self.skew.values()]
        if self.attachments:
            lines.append("stored " + ", ".join(f"{v}/{a}" for v, a in sorted(self.attachments.items())))
        return "\n".join(lines)


@dataclass(frozen=True)
class VersionScoring:
    """How a version's live predictions are scored: its label (horizon, definition), position rule and costs,
    all as stored with it (``version_scoring``)."""

    version: str
    horizon: int
    label: str
    label_window: int
    rule: PositionRule
    cost_bps: float
    slippage_vol: float
    regime_bounds: tuple[int, float, float] | None = None
    """(volatility window, low, high) of the version's regimes (``evaluation.regime_thresholds``), when stored"""

    def join(self, predictions: pd.DataFrame, bars: pd.DataFrame, *, regimes: bool = False) -> pd.DataFrame:
        """``join_outcomes`` with this version's label and position rule; with ``regimes`` also the recent
        volatility its regime bounds need (``live_regimes``)."""
        window = self.rule.vol_window if self.slippage_vol else None
        if regimes and self.regime_bounds is not None and window in (None, self.regime_bounds[0]):
            window = self.regime_bounds[0]
        return join_outcomes(predictions, bars, self.horizon, label=self.label, label_window=self.label_window,
                             rule=self.rule, vol_window=window)

    def trading(self) -> dict[str, Any]:
        """The position rule and slippage keyword arguments of ``live_metrics``."""
        return {"rule": self.rule, "slippage_vol": self.slippage_vol}


def version_scoring(mv: Any, cost_bps: float | None = None) -> VersionScoring:
    """A version's ``VersionScoring`` from its manifest (defaults for what an older version did not store);
    ``cost_bps`` overrides the stored cost. Raises ``DataError`` naming the version for an unreadable entry."""
    fc = mv.feature_config or {}
    h = fc.get("horizon", FeatureConfig().horizon)
    if isinstance(h, bool) or not isinstance(h, (int, float)) or int(h) != h or h < 1:
        raise DataError(f"{mv.version} has an invalid feature_config horizon {h!r}")
    label, window = fc.get("label", "raw"), fc.get("label_window", FeatureConfig().label_window)
    if label not in LABELS or isinstance(window, bool) or not isinstance(window, int) or window < 2:
        raise DataError(f"{mv.version} has an invalid label {label!r} (window {window!r})")
    metrics = mv.metrics or {}
    slip = metrics.get("slippage_vol", 0.0)
    if not _cost_like(slip):
        raise DataError(f"{mv.version} has an invalid slippage_vol {slip!r}")
    if cost_bps is None:
        c = metrics.get("cost_bps")
        cost_bps = float(c) if _cost_like(c) else float(EvaluationConfig().cost_bps)
    return VersionScoring(str(mv.version), int(h), str(label), int(window),
                          stored_rule(getattr(mv, "position", None), str(mv.version)), float(cost_bps), float(slip),
                          _regime_bounds((getattr(mv, "evaluation", None) or {}).get("regime_thresholds")))


def _regime_bounds(d: Any) -> tuple[int, float, float] | None:
    """(window, low, high) of a stored ``regime_thresholds`` entry; None when absent or not usable (an older
    version: no live figures per regime)."""
    if not isinstance(d, Mapping):
        return None
    w, lo, hi = d.get("window"), d.get("low"), d.get("high")
    if isinstance(w, bool) or not isinstance(w, int) or w < 2:
        return None
    if not all(_cost_like(x) for x in (lo, hi)) or lo > hi:
        return None
    return int(w), float(lo), float(hi)


def live_regimes(rows: pd.DataFrame, sc: VersionScoring, periods_per_year: float) -> dict[str, Metrics]:
    """Live figures of a version's realized rows (``sc.join(..., regimes=True)``) per volatility regime:
    each row's recent volatility (as the ``rvol`` feature, from the bars) against the bounds stored with the
    version, scored like the hold-out's (``evaluation.regime_metrics``: a regime with fewer than 20 rows is
    left out). Empty for a version stored without bounds."""
    if sc.regime_bounds is None or "vol" not in rows:
        return {}
    r = rows.loc[(rows["status"] == "realized") & np.isfinite(rows["prediction"].to_numpy(dtype=np.float64))]
    if r.empty:
        return {}
    vol = r["vol"].to_numpy(dtype=np.float64)
    meta = pd.DataFrame({"timestamp": r["bar_time"].to_numpy(), "symbol": r["symbol"].to_numpy()})
    return regime_metrics(r["prediction"].to_numpy(dtype=np.float64),
                          r["target" if "target" in r else "fwd_return"].to_numpy(dtype=np.float64),
                          r["next_return"].to_numpy(dtype=np.float64), meta,
                          classify_volatility(vol, sc.regime_bounds[1:]), cost_bps=sc.cost_bps,
                          periods_per_year=periods_per_year, vol=vol, **sc.trading())


def net_returns(rows: pd.DataFrame, sc: VersionScoring) -> np.ndarray:
    """Each realized row's net return of its position (``join_outcomes``' ``position`` x ``next_return``, less the
    version's unit cost and slippage times the turnover from the version's previous row of the symbol; a
    symbol's first row starts flat), in ``rows``' order: what ``tideline.evaluation`` charges, per row."""
    if rows.empty:
        return np.zeros(0)
    order = np.lexsort((pd.DatetimeIndex(rows["bar_time"]).asi8, rows["symbol"].astype(str).to_numpy()))
    pos = rows["position"].to_numpy(dtype=np.float64)[order]
    sym = rows["symbol"].astype(str).to_numpy()[order]
    prev = np.r_[0.0, pos[:-1]]
    prev[np.r_[True, sym[1:] != sym[:-1]]] = 0.0
    unit = np.full(len(pos), sc.cost_bps / 1e4)
    if sc.slippage_vol and "vol" in rows:
        unit = unit + sc.slippage_vol * np.nan_to_num(rows["vol"].to_numpy(dtype=np.float64)[order], nan=0.0)
    nr = np.nan_to_num(rows["next_return"].to_numpy(dtype=np.float64)[order], nan=0.0)
    out = np.empty(len(pos))
    out[order] = pos * nr - unit * np.abs(pos - prev)
    return out


def _cost_like(c: Any) -> bool:
    return isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) and c >= 0


def _change_points(rows: pd.DataFrame, monitor_kwargs: Mapping[str, Any]) -> tuple[list[ChangePoint], int]:
    """Changes in the realized absolute errors and in the direction hits (a flipped signal barely moves the
    errors' size but turns hits into misses), each watched by its own monitor; sorted by time."""
    from tideline.monitoring.drift import PerformanceMonitor

    r = rows.loc[rows["status"] == "realized"].sort_values(["bar_time", "symbol"], kind="stable")
    index = pd.DatetimeIndex(r["bar_time"])
    found: list[ChangePoint] = []
    for name, values in (("abs_error", np.abs(r["error"].to_numpy(dtype=np.float64))),
                         ("hit", r["hit"].to_numpy(dtype=np.float64))):
        monitor = PerformanceMonitor(**dict(monitor_kwargs))
        found += [dataclasses.replace(c, series=name) for c in monitor.detect(pd.Series(values, index=index))]
    found.sort(key=lambda c: (c.index, c.series))
    return found, len(r)


def run_feedback(registry: Registry, bars: pd.DataFrame, *, cost_bps: float | None = None, since: Any = None,
                 until: Any = None, write: bool = True, now: datetime | None = None,
                 periods_per_year: float | None = None,
                 monitor_kwargs: Mapping[str, Any] | None = None, skew_sample: int = 0) -> FeedbackReport:
    """Join the prediction log with ``bars``, measure every served (version, role), store the results.

    Per version: the horizon is its ``feature_config["horizon"]``; ``cost_bps`` None means the cost the
    version was evaluated with (its ``metrics["cost_bps"]``, else the default); ``periods_per_year`` None
    is inferred from the bars. With ``write`` each version with realized outcomes gets the attachment
    ``live-metrics.json`` (the version's record over all roles at top level, ``roles`` per role, change
    points, ``updated_at``); a version without any keeps its previous record. Versions in the log that
    are not in the registry are skipped (their horizon is unknown) and listed in ``skipped``. With ``skew_sample``
    the latest that many predictions of each version have their features recomputed from ``bars``
    (``tideline.monitoring.skew``; ``skew``, and in the stored record): ``bars`` must reach back over the requests'
    windows (and, for features clients sent, start where the clients' history starts).
    """
    at = aware(now or utcnow())
    since_ts = utc_bound(since, "since")
    log_df = read_predictions(registry, since=since_ts, until=until)
    if bars is None or len(bars) == 0:
        raise DataError("no bars to join the predictions with")
    ppy = float(periods_per_year) if periods_per_year else infer_periods_per_year(
        pd.to_datetime(bars["timestamp"]).to_numpy())
    report = FeedbackReport(at=at, since=None if since_ts is None else since_ts.isoformat(),
                            n_predictions=len(log_df), n_duplicates=0, periods_per_year=ppy)
    for key in log_df.attrs.get("unreadable", []):
        report.notes.append(f"skipped unreadable prediction log object {key}")
    if len(log_df) == 0:
        report.notes.append("no logged predictions" + (f" since {report.since}" if report.since else ""))
        return report
    no_version = log_df["version"].isna()
    if no_version.any():
        report.notes.append(f"{int(no_version.sum())} logged prediction(s) without a version were ignored")
        log_df = log_df.loc[~no_version]
    monitor_kwargs = dict(monitor_kwargs or {})
    report.skew = check_skew(registry, log_df, bars, sample=skew_sample)
    for version, preds in log_df.groupby("version", sort=True):
        v = str(version)
        try:
            mv = registry.get(v)
        except TidelineError as e:
            report.skipped[v] = f"not in the registry: {e}"
            log.warning("feedback: %s skipped: %s", v, e)
            continue
        try:
            sc = version_scoring(mv, cost_bps)
        except TidelineError as e:
            report.skipped[v] = str(e)
            log.warning("feedback: %s skipped: %s", v, e)
            continue
        report.horizons[v] = sc.horizon
        joined = sc.join(preds, bars, regimes=True)
        report.n_duplicates += joined.attrs["n_duplicates"]
        per_role = live_metrics(joined, cost_bps=sc.cost_bps, periods_per_year=ppy, **sc.trading())
        report.metrics.update(per_role)
        whole = _metrics_for(_version_rows(joined), v, ALL_ROLES, cost_bps=sc.cost_bps, periods_per_year=ppy,
                             n_duplicates=joined.attrs["n_duplicates"], **sc.trading())
        # pending / unknown counts of the version: every role's rows (the same bar may wait in two roles)
        whole.n_pending = sum(m.n_pending for m in per_role.values())
        whole.n_unknown_bar = sum(m.n_unknown_bar for m in per_role.values())
        report.versions[v] = whole
        regimes = live_regimes(_version_rows(joined), sc, ppy)
        if regimes:
            report.regimes[v] = regimes
        unknown = joined.loc[joined["status"] == "unknown_bar"]
        room = max(0, 5 - len(report.unknown_examples))
        report.unknown_examples.extend(
            {"version": v, "role": rr, "symbol": s, "bar_time": None if pd.isna(t) else str(t)}
            for rr, s, t in unknown[["role", "symbol", "bar_time"]].head(room).itertuples(index=False,
                                                                                          name=None))
        cps, fed = _change_points(_version_rows(joined), monitor_kwargs)
        report.change_points[v], report.monitored[v] = cps, fed
        if write:
            if whole.n == 0:
                report.notes.append(f"{v}: no realized outcomes yet; its {LIVE_METRICS_ATTACHMENT} was left "
                                    "as it was")
                continue
            record = live_record(whole, per_role, cps, horizon=sc.horizon, updated_at=at, since=report.since,
                                 monitored=fed)
            if v in report.skew:
                record["skew"] = report.skew[v].to_dict()
            if regimes:
                record["regimes"] = {g: m.to_dict() for g, m in regimes.items()}
            registry.put_attachment(v, LIVE_METRICS_ATTACHMENT,
                                    json.dumps(record, indent=1, default=str).encode(), actor="feedback")
            report.attachments[v] = LIVE_METRICS_ATTACHMENT
    return report


def live_record(whole: LiveMetrics, per_role: Mapping[tuple[str, str], LiveMetrics], change_points: list[Any],
                *, horizon: int, updated_at: datetime, since: str | None, monitored: int) -> dict[str, Any]:
    """The ``live-metrics.json`` document of one version. Top level: the version over all roles, with the
    keys ``triggers.rule_performance_decay`` reads (``n``, ``sharpe``, ``directional_accuracy``,
    ``baseline_accuracy``); ``roles``: the same per role."""
    top = whole.to_dict()
    top.pop("role")
    return top | {
        "horizon": horizon,
        "updated_at": updated_at.isoformat(),
        "since": since,
        "roles": {r: m.to_dict() for (_, r), m in sorted(per_role.items())},
        "change_points": [c.to_dict() for c in change_points],
        "n_monitored": monitored,
        "source": "tideline.monitoring.feedback",
    }


# ---- live outcomes for a rollout's analysis ---------------------------------------------------------------
class LiveOutcomeSource:
    """``outcomes_from_log``'s provider: ``provider(candidate, baseline) -> LiveOutcomes | None``.

    Each call reads the prediction log (``since`` onwards, every role), keeps the rows of the two versions,
    joins them with the bars (``join_outcomes``, each version with its own label horizon) and returns the
    realized errors and direction hits of the candidate (any role: shadow copies and canary answers) and of
    the baseline. A version's rows are one per (symbol, bar_time), the first logged.

    Paired when possible: if both versions have realized outcomes on at least ``min_pairs`` common
    (symbol, bar_time) keys (always the case in shadow, where the same requests reach both), only those
    common bars are compared, so both sides face the same market; otherwise (a canary splits the
    requests, so each bar was usually predicted by one version only) every realized row of each side.

    ``bars``: a DataFrame of bars, or a source for ``tideline.data.load_bars`` (CSV, Parquet, a directory,
    ``s3://``), re-read at most every ``refresh_s`` seconds (the recent bars keep arriving); validated in
    quarantine mode (bad rows are dropped, never guessed). Never raises: a failure (unreadable bars, a
    store error) is logged, kept in ``last_error`` and answered with None, which leaves the outcome checks
    inconclusive for that interval. ``last_report`` holds the counts of the last call.
    """

    def __init__(self, registry: Registry, bars: pd.DataFrame | str | Any, *, since: Any = None,
                 until: Any = None, min_pairs: int = 50, refresh_s: float = 30.0,
                 endpoint_url: str | None = None) -> None:
        self.registry = registry
        self.since = utc_bound(since, "since")
        self.until = utc_bound(until, "until")
        self.min_pairs = int(min_pairs)
        self.refresh_s = float(refresh_s)
        self.endpoint_url = endpoint_url
        self._source = None if isinstance(bars, pd.DataFrame) else str(bars)
        self._bars: pd.DataFrame | None = self._clean(bars) if isinstance(bars, pd.DataFrame) else None
        self._bars_at = float("-inf")
        self._scoring: dict[str, VersionScoring] = {}
        self.last_error: str | None = None
        self.last_report: dict[str, Any] = {}

    @staticmethod
    def _clean(raw: pd.DataFrame) -> pd.DataFrame:
        from tideline.data import validate_bars

        return validate_bars(raw, mode="quarantine").clean

    def bars(self) -> pd.DataFrame:
        """The bars to join with, validated in quarantine mode: a given frame (validated once, when given), or
        the source, read again once the copy is ``refresh_s`` old. Raises ``load_bars``' errors (``DataError``,
        ``StorageUnavailable``), which the provider call catches.
        """
        import time as _time

        if self._source is not None and (self._bars is None or _time.monotonic() - self._bars_at >= self.refresh_s):
            from tideline.data import load_bars

            self._bars = self._clean(load_bars(self._source, endpoint_url=self.endpoint_url))
            self._bars_at = _time.monotonic()
        assert self._bars is not None
        return self._bars

    def _scored(self, version: str) -> VersionScoring:
        if version not in self._scoring:
            self._scoring[version] = version_scoring(self.registry.get(version))
        return self._scoring[version]

    def _realized(self, log_df: pd.DataFrame, version: str, bars: pd.DataFrame) -> pd.DataFrame:
        rows = log_df.loc[log_df["version"] == version]
        if len(rows) == 0:
            return rows.assign(error=pd.Series([], dtype=np.float64), hit=pd.Series([], dtype=np.float64))
        sc = self._scored(version)
        joined = _version_rows(sc.join(rows, bars))
        ok = (joined["status"] == "realized") & np.isfinite(joined["prediction"].to_numpy(dtype=np.float64))
        real = joined.loc[ok]
        return real.assign(net=net_returns(real, sc))

    def __call__(self, candidate: str, baseline: str) -> Any:
        try:
            bars = self.bars()
            log_df = read_predictions(self.registry, since=self.since, until=self.until)
            log_df = log_df.loc[log_df["version"].isin([candidate, baseline])]
            cand = self._realized(log_df, candidate, bars)
            base = self._realized(log_df, baseline, bars)
            kinds = (output_kind(self.registry.get(candidate).family), output_kind(self.registry.get(baseline).family))
            watch = self._watch(log_df, candidate, baseline, bars)
        except (TidelineError, OSError, ValueError, KeyError) as e:
            self.last_error = f"{type(e).__name__}: {e}"
            log.warning("live outcomes unavailable this interval: %s", self.last_error)
            return None
        self.last_error = None
        key = ["symbol", "bar_time"]
        common = cand[key].merge(base[key], on=key, how="inner")
        paired = len(common) >= self.min_pairs and self.min_pairs > 0
        pairs = None
        if paired:
            cand = cand.merge(common, on=key, how="inner")
            base = base.merge(common, on=key, how="inner")
            both = cand[[*key, "hit", "net"]].merge(base[[*key, "hit", "net"]], on=key, suffixes=("_c", "_a"))
            both = both.sort_values("bar_time", kind="stable")
            pairs = PairedOutcomes(times=both["bar_time"].astype("int64").tolist(),  # ns: sortable, like the watch
                                   candidate_hits=both["hit_c"].to_numpy(dtype=np.float64).tolist(),
                                   active_hits=both["hit_a"].to_numpy(dtype=np.float64).tolist(),
                                   candidate_net=both["net_c"].to_numpy(dtype=np.float64).tolist(),
                                   active_net=both["net_a"].to_numpy(dtype=np.float64).tolist())
        self.last_report = {"candidate": int(len(cand)), "baseline": int(len(base)), "paired": paired,
                            "watch_pairs": None if watch is None else len(watch.times),
                            "common": int(len(common)), "logged": int(len(log_df))}
        return LiveOutcomes(
            candidate_errors=cand["error"].to_numpy(dtype=np.float64).tolist(),
            active_errors=base["error"].to_numpy(dtype=np.float64).tolist(),
            candidate_hits=cand["hit"].to_numpy(dtype=np.float64).tolist(),
            active_hits=base["hit"].to_numpy(dtype=np.float64).tolist(),
            paired=pairs, watch=watch, kinds=kinds,
        )

    def _watch(self, log_df: pd.DataFrame, candidate: str, baseline: str, bars: pd.DataFrame) -> Any:
        """Once ``candidate`` is production: its outcomes and ``baseline``'s on the same (symbol, bar) keys,
        counting only predictions logged since the registry promoted it (the guard's watch), in bar order."""
        promoted_at = None
        for ev in reversed(self.registry.history()):
            if ev.alias == "production" and ev.action in ("promote", "rollback"):
                if ev.version == candidate:
                    promoted_at = utc_timestamp(ev.at)
                break  # production's latest move: the candidate's, or it is not production
        if promoted_at is None:
            return None
        after = log_df.loc[log_df["time"] >= promoted_at]
        prod = self._realized(after, candidate, bars)
        prev = self._realized(after, baseline, bars)
        key = ["symbol", "bar_time"]
        both = prod[[*key, "hit"]].merge(prev[[*key, "hit"]], on=key, how="inner", suffixes=("_prod", "_prev"))
        both = both.sort_values(["bar_time", "symbol"], kind="stable")
        return WatchOutcomes(times=both["bar_time"].astype("int64").tolist(),
                             production_hits=both["hit_prod"].to_numpy(dtype=np.float64).tolist(),
                             previous_hits=both["hit_prev"].to_numpy(dtype=np.float64).tolist())


def outcomes_from_log(registry: Registry, bars: pd.DataFrame | str | Any, *, since: Any = None,
                      until: Any = None, min_pairs: int = 50, refresh_s: float = 30.0,
                      endpoint_url: str | None = None) -> LiveOutcomeSource:
    """The live-outcome provider a rollout backend calls each analysis interval (see ``LiveOutcomeSource``):
    ``outcomes_from_log(registry, "recent.parquet", since=rollout_start)(candidate, baseline)``."""
    return LiveOutcomeSource(registry, bars, since=since, until=until, min_pairs=min_pairs, refresh_s=refresh_s,
                             endpoint_url=endpoint_url)
