"""One retraining cycle: load -> validate -> features -> train every family -> evaluate (purged
walk-forward + hold-out) -> compare with production on the same window -> register every candidate ->
promote the best one if, and only if, the policy passes.

Each step is a function here. ``CycleRunner`` runs them in-process (``tideline cycle``); the KFP
components call the same functions, one per task, with artifacts in between (``tideline.training.steps``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tideline import __version__
from tideline.config import FeatureConfig, Settings
from tideline.data import ValidationReport, load_bars, synthetic_market, validate_bars
from tideline.errors import AliasConflict, DataError, ModelError, TidelineError
from tideline.evaluation import (
    Metrics,
    Split,
    baseline_metrics,
    classify_volatility,
    deflated_sharpe,
    evaluate_predictions,
    holdout_split,
    infer_periods_per_year,
    paired_bootstrap_test,
    pbo_cscv,
    purged_walk_forward_splits,
    regime_metrics,
    regime_thresholds,
    sharpe_difference_test,
    sharpe_per_period,
    strategy_returns,
)
from tideline.features import Dataset, build_dataset, feature_config_hash
from tideline.models import (
    Market,
    Model,
    StoredSpec,
    explain,
    load_model,
    make_model,
    output_kind,
    read_meta,
    search_space,
)
from tideline.policy import Evidence, PolicyDecision, decide
from tideline.positions import PositionRule, fit_position_rule, stored_rule
from tideline.registry import ModelVersion, Registry
from tideline.training import tuning

log = logging.getLogger(__name__)

REFERENCE_ATTACHMENT = "reference.parquet"
REFERENCE_ROWS = 5000


class Reporter:
    """Progress callbacks; the CLI shows them as rich progress bars. The default does nothing."""

    @contextlib.contextmanager
    def stage(self, name: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
        """A context manager around one stage named ``name`` (``total`` steps when known).

        It yields ``advance(n=1)``, to be called as steps finish; the default ignores both.
        """
        yield lambda n=1: None


# ---- records ------------------------------------------------------------------------------------------
@dataclass
class Plan:
    """The evaluation windows of one dataset: development rows, hold-out rows, walk-forward folds."""

    dev: np.ndarray
    hold: np.ndarray
    splits: list[Split]
    periods_per_year: float


@dataclass
class FamilyResult:
    """What training one family produced: hold-out and walk-forward figures and hold-out predictions."""

    family: str
    holdout: Metrics
    walk_forward: dict[str, float]
    folds: list[dict[str, Any]]
    fit_seconds: float
    holdout_pred: np.ndarray = field(repr=False)
    reference: pd.DataFrame | None = field(default=None, repr=False)
    fold_returns: pd.Series | None = field(default=None, repr=False)
    """net strategy return per walk-forward test period, every fold in time order (what PBO is measured on)"""
    position: PositionRule = field(default_factory=PositionRule)
    """the final model's position rule (stored with its version)"""
    importance: dict[str, Any] | None = None
    """the final model's feature importance on its hold-out (``tideline.models.explain.Importance.to_dict``)"""
    fold_preds: list[np.ndarray] | None = field(default=None, repr=False)
    """each walk-forward fold's test predictions (what an ensemble of the families is scored on)"""
    fold_refs: list[np.ndarray | None] | None = field(default=None, repr=False)
    """each fold model's predictions its position rule was fitted on (None: the rule needs none)"""
    rule_ref: np.ndarray | None = field(default=None, repr=False)
    """the final model's predictions its position rule was fitted on (None: the rule needs none)"""
    members: list[str] | None = None
    """the families an ensemble averages (None: a trained family)"""
    tuning: dict[str, Any] | None = None
    """the family's tuning record (``tideline.training.tuning.Tuning.to_dict``; None: not tuned)"""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures (predictions, reference sample and fold returns left out); ``fit_seconds`` rounded."""
        return {"family": self.family, "holdout": self.holdout.to_dict(), "walk_forward": self.walk_forward,
                "folds": self.folds, "fit_seconds": round(self.fit_seconds, 3), "position": self.position.to_dict(),
                "importance": self.importance, "members": self.members, "tuning": self.tuning}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], holdout_pred: np.ndarray, reference: pd.DataFrame | None = None,
                  fold_returns: pd.Series | None = None) -> FamilyResult:
        """Rebuild from ``to_dict`` output plus the predictions, reference sample and fold returns it leaves out.

        Raises ``KeyError`` when a field is missing.
        """
        return cls(d["family"], Metrics.from_dict(d["holdout"]), dict(d["walk_forward"]), list(d["folds"]),
                   float(d["fit_seconds"]), holdout_pred, reference, fold_returns,
                   PositionRule.from_dict(d.get("position") or {}), d.get("importance"),
                   members=d.get("members"), tuning=d.get("tuning"))


@dataclass
class ProductionScore:
    """The production model measured on the same hold-out window (or why it could not be)."""

    version: str | None = None
    metrics: Metrics | None = None
    returns: pd.Series | None = field(default=None, repr=False)
    error: str | None = None
    model: Model | None = field(default=None, repr=False)
    """the production model, when it reads this window's features (what a recalibration starts from)"""
    manifest: ModelVersion | None = field(default=None, repr=False)


@dataclass
class CandidateResult:
    """One trained family judged against production: its figures, the policy decision, its version once registered."""
    family: str
    holdout: Metrics
    walk_forward: dict[str, float]
    folds: list[dict[str, Any]]
    decision: PolicyDecision
    p_value: float | None
    fit_seconds: float
    version: str | None = None
    promoted: bool = False
    evidence: Evidence | None = None
    position: PositionRule = field(default_factory=PositionRule)
    regimes: dict[str, Metrics] = field(default_factory=dict)
    """hold-out figures per volatility regime (``holdout_regimes``)"""
    tuning: dict[str, Any] | None = None
    """the family's tuning record (None: not tuned), stored in the version's manifest (``evaluation.tuning``)"""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record of the candidate (figures, p-value vs production, decision, version, promoted)."""
        return {
            "family": self.family,
            "version": self.version,
            "promoted": self.promoted,
            "holdout": self.holdout.to_dict(),
            "walk_forward": self.walk_forward,
            "folds": self.folds,
            "p_value_vs_production": self.p_value,
            "deflated_sharpe": self.evidence.deflated_sharpe if self.evidence else None,
            "pbo": self.evidence.pbo if self.evidence else None,
            "evidence": self.evidence.to_dict() if self.evidence else None,
            "position": self.position.to_dict(),
            "decision": self.decision.to_dict(),
            "fit_seconds": round(self.fit_seconds, 3),
            "regimes": {k: v.to_dict() for k, v in self.regimes.items()},
            "tuning": self.tuning,
        }


@dataclass
class CycleResult:
    """What one cycle did: every candidate, the baselines, production's score, what was promoted and why, timings."""
    candidates: list[CandidateResult]
    baselines: dict[str, Metrics]
    production_version: str | None
    production_metrics: Metrics | None
    production_error: str | None
    promoted_version: str | None
    data: dict[str, Any]
    timings: dict[str, float]
    promotion_note: str
    failures: dict[str, str] = field(default_factory=dict)  # family -> why its training failed

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary of the cycle (what ``tideline cycle`` prints); timings rounded to milliseconds."""
        return {
            "promoted_version": self.promoted_version,
            "promotion_note": self.promotion_note,
            "failures": dict(self.failures),
            "production_version": self.production_version,
            "production_holdout": self.production_metrics.to_dict() if self.production_metrics else None,
            "production_error": self.production_error,
            "candidates": [c.to_dict() for c in self.candidates],
            "baselines": {k: v.to_dict() for k, v in self.baselines.items()},
            "data": self.data,
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
        }


# ---- helpers ------------------------------------------------------------------------------------------
def code_version() -> str:
    """The git commit of the running code when there is one, else the package version."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        if out.returncode == 0 and out.stdout.strip():
            return f"{__version__}+{out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    return __version__


def data_hash(bars: pd.DataFrame) -> str:
    """A content hash of the bars' values (32 hex characters; the index is ignored): same bars, same hash."""
    h = hashlib.sha256()
    h.update(pd.util.hash_pandas_object(bars, index=False).to_numpy().tobytes())
    return h.hexdigest()[:32]


def _ts(x: Any) -> str:
    return str(pd.Timestamp(x))


def _recent(idx: np.ndarray, cap: int | None) -> np.ndarray:
    """The most recent ``cap`` rows of ``idx`` (rows are sorted by time)."""
    return idx if cap is None or len(idx) <= cap else idx[-cap:]


def _inner_validation(ts: np.ndarray, idx: np.ndarray, horizon: int, frac: float = 0.1
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Split a training index into (fit, early-stopping) parts by time, purged by the horizon."""
    times = np.unique(ts[idx])
    n_val = max(1, int(len(times) * frac))
    if len(times) - n_val - horizon < 10:
        return idx, idx[:0]
    cut = times[-n_val]
    purge_from = times[-n_val - horizon]
    return idx[ts[idx] < purge_from], idx[ts[idx] >= cut]


# ---- steps --------------------------------------------------------------------------------------------
def load_and_validate(settings: Settings, source: str | Path | None = None, *,
                      synthetic: dict[str, Any] | None = None, quarantine: bool = False
                      ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read bars (a file, a directory, an S3 prefix or the synthetic market) and validate them."""
    if synthetic is not None:
        raw = synthetic_market(**synthetic)
        origin = f"synthetic({', '.join(f'{k}={v}' for k, v in synthetic.items())})"
    elif source is not None:
        raw = load_bars(source, endpoint_url=settings.endpoint_url())
        origin = str(source)
    else:
        raise DataError("no market data given: pass --data PATH or --synthetic")
    return validated(raw, origin, settings, quarantine=quarantine)


def min_history(cfg: FeatureConfig) -> int:
    """Bars a symbol needs for at least one complete, labelled row (feature warm-up + label horizon)."""
    from tideline.features import _warmup_bars

    return _warmup_bars(cfg) + 1


def validated(raw: pd.DataFrame, origin: str, settings: Settings, *, quarantine: bool = False
              ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The bars a cycle learns from, and what was found on the way (``info``: rows, problems, data quality
    per symbol). One rule for every caller: a cycle, a pipeline's validate task and ``data validate``."""
    bars, info, _ = check_bars(raw, origin, settings, quarantine=quarantine)
    return bars, info


def check_bars(raw: pd.DataFrame, origin: str, settings: Settings, *, quarantine: bool = False
               ) -> tuple[pd.DataFrame, dict[str, Any], ValidationReport]:
    """``validated`` plus the validation report (``ValidationError`` carries it when the data is refused)."""
    d = settings.data
    report = validate_bars(raw, mode="quarantine" if quarantine else "strict",
                           min_bars_per_symbol=min_history(settings.features), naive_timezone=d.naive_timezone,
                           min_quality=d.min_quality, jump_sigmas=d.jump_sigmas)
    bars = report.clean
    info = {
        "source": origin,
        "rows": int(len(bars)),
        "rows_input": int(report.n_input),
        "rows_quarantined": int(report.n_input - report.n_clean),
        "symbols": sorted(map(str, bars["symbol"].unique())),
        "start": _ts(bars["timestamp"].min()),
        "end": _ts(bars["timestamp"].max()),
        "data_hash": data_hash(bars),
        "problems": [p.message for p in report.problems],
        "data_quality": {"threshold": d.min_quality,
                         "symbols": {sym: q.to_dict() for sym, q in sorted(report.quality.items())}},
    }
    return bars, info, report


def make_dataset(bars: pd.DataFrame, cfg: FeatureConfig, min_rows: int = 200) -> Dataset:
    """Features and labels of validated ``bars`` (``build_dataset``), checked to be enough for a cycle.

    Raises ``DataError`` when a symbol has fewer bars than ``min_history(cfg)`` (up to five are named) or fewer
    than ``min_rows`` usable rows remain after the feature warm-up.
    """
    need = min_history(cfg)
    counts = bars.groupby("symbol", sort=True, observed=True).size()
    short = counts[counts < need].sort_values(kind="stable")
    if len(short):
        named = ", ".join(f"{sym} has {n} bar{'s' if n != 1 else ''}" for sym, n in short.head(5).items())
        more = f" (+{len(short) - 5} more)" if len(short) > 5 else ""
        raise DataError(f"too little history: {named}{more}; a cycle needs at least {need} bars per symbol "
                        f"(feature warm-up + horizon {cfg.horizon})",
                        hint="give more history, or --quarantine to set such symbols aside")
    ds = build_dataset(bars, cfg)
    if len(ds) < min_rows:
        raise DataError(f"only {len(ds)} usable rows after feature warm-up; a cycle needs at least {min_rows}",
                        hint="give more history")
    return ds


def plan_windows(ds: Dataset, settings: Settings) -> Plan:
    """Hold-out = the last ``holdout_fraction`` of time; purged walk-forward folds before it."""
    ev, h = settings.evaluation, settings.features.horizon
    ts = ds.meta["timestamp"].to_numpy()
    ppy = ev.periods_per_year or infer_periods_per_year(ts)
    dev, hold = holdout_split(ts, ev.holdout_fraction, h, ev.embargo_bars)
    splits = purged_walk_forward_splits(ts[dev], ev.n_splits, h, ev.embargo_bars)
    return Plan(dev, hold, splits, ppy)


def describe_plan(ds: Dataset, plan: Plan, settings: Settings) -> dict[str, Any]:
    """JSON-ready summary of the dataset and its plan: rows, features, horizon, hold-out window and folds."""
    ts = ds.meta["timestamp"].to_numpy()
    return {
        "dataset_rows": len(ds), "features": len(ds.spec.all_columns), "horizon": settings.features.horizon,
        "label": settings.features.label, "positions": settings.positions.rule,
        "slippage_vol": settings.evaluation.slippage_vol,
        "periods_per_year": plan.periods_per_year, "cost_bps": settings.evaluation.cost_bps,
        "holdout": {"start": _ts(ts[plan.hold][0]), "end": _ts(ts[plan.hold][-1]), "rows": int(len(plan.hold))},
        "training_end": _ts(ts[plan.dev][-1]), "training_rows": int(len(plan.dev)),
        "walk_forward_folds": len(plan.splits),
        "regime_thresholds": regime_bounds(ds, plan, settings),
    }


def regime_bounds(ds: Dataset, plan: Plan, settings: Settings) -> dict[str, Any] | None:
    """The volatility bounds of the regimes (``holdout_regimes``) measured on the development rows, as stored with
    every version (``evaluation.regime_thresholds``) so that live outcomes are split by the same rule: the
    feature and its window, the quantiles and the bounds. None without the feature."""
    col = f"rvol_{settings.positions.vol_window}"
    if col not in ds.X:
        return None
    tr = settings.triggers
    bounds = regime_thresholds(ds.X[col].to_numpy(dtype=np.float64)[plan.dev], tr.regime_low_quantile,
                               tr.regime_high_quantile)
    if bounds is None:
        return None
    return {"feature": col, "window": settings.positions.vol_window, "low_quantile": tr.regime_low_quantile,
            "high_quantile": tr.regime_high_quantile, "low": bounds[0], "high": bounds[1]}


def sign_rule(settings: Settings, plan: Plan) -> PositionRule:
    """The ``sign`` rule with the configured volatility sizing (what the baselines hold)."""
    return fit_position_rule(settings.positions.model_copy(update={"rule": "sign"}), None, plan.periods_per_year)


def _output(model: Model) -> str:
    """``model.output`` (``return`` for a stand-in that does not say)."""
    return str(getattr(model, "output", "return"))


def fitted_rule(family: str, settings: Settings, plan: Plan, rule_ref: np.ndarray | None) -> PositionRule:
    """The position rule of a ``family`` model whose rule was fitted on ``rule_ref``: the configured one, or for
    a policy (whose prediction already is a position) ``sign`` with the configured volatility sizing, so its
    positions go through the one position function like every other family's."""
    if output_kind(family) == "position":
        return sign_rule(settings, plan)
    return fit_position_rule(settings.positions, rule_ref, plan.periods_per_year)


def market_of(ds: Dataset, idx: np.ndarray, settings: Settings) -> Market:
    """The ``Market`` of rows ``idx``: next-bar returns, symbols, bar times, and each row's cost per unit of
    turnover as the evaluation charges it (``cost_bps`` plus the volatility-scaled slippage)."""
    cost = np.full(len(idx), settings.evaluation.cost_bps / 1e4)
    slip = settings.evaluation.slippage_vol
    if slip:
        col = f"rvol_{settings.positions.vol_window}"
        if col not in ds.X:
            raise DataError(f"the dataset has no {col} (positions.vol_window must be a feature window)")
        cost = cost + slip * np.nan_to_num(ds.X[col].to_numpy(dtype=np.float64)[idx], nan=0.0)
    return Market(ds.next_return[idx], ds.meta["symbol"].to_numpy()[idx], ds.meta["timestamp"].to_numpy()[idx], cost)


def _trading(ds: Dataset, idx: np.ndarray, settings: Settings, rule: PositionRule) -> dict[str, Any]:
    """The position rule, each row's recent volatility (when the rule or the slippage needs it), the slippage."""
    slip = settings.evaluation.slippage_vol
    vol = None
    if rule.needs_volatility or slip:
        if rule.vol_column not in ds.X:
            raise DataError(f"the dataset has no {rule.vol_column} (positions.vol_window must be a feature window)")
        vol = ds.X[rule.vol_column].to_numpy(dtype=np.float64)[idx]
    return {"rule": rule, "vol": vol, "slippage_vol": slip}


def _metrics(pred: np.ndarray, ds: Dataset, idx: np.ndarray, plan: Plan, settings: Settings,
             rule: PositionRule | None = None) -> Metrics:
    return evaluate_predictions(
        pred, ds.y[idx], ds.next_return[idx], ds.meta.iloc[idx].reset_index(drop=True),
        cost_bps=settings.evaluation.cost_bps, periods_per_year=plan.periods_per_year,
        **_trading(ds, idx, settings, rule or sign_rule(settings, plan)),
    )


def _returns(pred: np.ndarray, ds: Dataset, idx: np.ndarray, settings: Settings, plan: Plan,
             rule: PositionRule | None = None) -> pd.Series:
    """Net strategy returns per period (indexed by timestamp) of predictions ``pred`` for rows ``idx``."""
    return strategy_returns(pred, ds.next_return[idx], ds.meta.iloc[idx].reset_index(drop=True),
                            settings.evaluation.cost_bps,
                            **_trading(ds, idx, settings, rule or sign_rule(settings, plan)))


def holdout_returns(pred: np.ndarray, ds: Dataset, plan: Plan, settings: Settings,
                    rule: PositionRule | None = None) -> pd.Series:
    """Net strategy returns per hold-out period of predictions ``pred`` (one per hold-out row) under ``rule``."""
    return _returns(pred, ds, plan.hold, settings, plan, rule)


def baselines(ds: Dataset, plan: Plan, settings: Settings) -> dict[str, Metrics]:
    """Naive strategies scored on the hold-out rows, net of costs: ``buy_and_hold``, ``always_long`` and
    ``last_return_sign`` (see ``tideline.evaluation.baseline_metrics``).
    """
    hold = plan.hold
    last_ret = ds.X["ret_1"].to_numpy(dtype=np.float64) if "ret_1" in ds.X else np.zeros(len(ds))
    return baseline_metrics(
        ds.y[hold], ds.next_return[hold], last_ret[hold], ds.meta.iloc[hold].reset_index(drop=True),
        cost_bps=settings.evaluation.cost_bps, periods_per_year=plan.periods_per_year,
        **_trading(ds, hold, settings, sign_rule(settings, plan)),
    )


def fit_model(family: str, ds: Dataset, idx: np.ndarray, settings: Settings, cap: int | None,
              params: Mapping[str, Any] | None = None, factory: Callable[[], Model] | None = None,
              prepare: Callable[[Model], None] | None = None) -> Model:
    """Fit one family on rows ``idx`` (the latest ``cap``), early-stopping on their purged last 10%; ``params``
    (default: the configured ``training.params`` of the family) override the family's defaults; ``factory``
    makes the unfitted model instead (a recalibration of production); ``prepare`` is called on the unfitted
    model (a policy's warm start and experience, ``PolicyPrep``). A policy is given its rows' market."""
    ts = ds.meta["timestamp"].to_numpy()
    fit_idx, val_idx = _inner_validation(ts, _recent(idx, cap), settings.features.horizon)
    t = settings.training
    chosen = t.params.get(family) if params is None else dict(params)
    model = factory() if factory is not None else make_model(family, seed=t.seed, params=chosen,
                                                             n_threads=t.n_threads)
    kw: dict[str, Any] = {}
    if len(val_idx):
        kw = {"X_valid": ds.X.iloc[val_idx], "y_valid": ds.y[val_idx]}
    if _output(model) == "position":
        kw["market"] = market_of(ds, fit_idx, settings)
        if len(val_idx):
            kw["valid_market"] = market_of(ds, val_idx, settings)
    if prepare is not None:
        prepare(model)
    model.fit(ds.X.iloc[fit_idx], ds.y[fit_idx], ds.spec, **kw)
    notes = getattr(prepare, "notes", None)
    declined = (model.fit_info.get("warm_start") or {}).get("why_not")
    if notes is not None and declined:  # the policy looked at the previous version and started cold
        notes.append(f"cold start after all: {declined}")
    if notes:
        model.fit_info["preparation"] = list(notes)
        log.info("%s: %s", family, "; ".join(notes))
    return model


def position_rule(model: Model, ds: Dataset, idx: np.ndarray, settings: Settings, plan: Plan,
                  cap: int | None) -> PositionRule:
    """The configured position rule fitted for ``model`` trained on rows ``idx`` (capped like ``fit_model``):
    a ``zscore`` rule scales against the model's predictions on the purged inner validation rows its fit set
    aside (out of sample; the latest training rows when there were too few to set any aside)."""
    return fit_position_rule(settings.positions, rule_reference(model, ds, idx, settings, cap), plan.periods_per_year)


def rule_reference(model: Model, ds: Dataset, idx: np.ndarray, settings: Settings, cap: int | None
                   ) -> np.ndarray | None:
    """The predictions a ``zscore`` rule is fitted on (see ``position_rule``); None for a rule that needs none.
    The rows depend on ``idx``, ``cap`` and the horizon only, so every family's are the same rows."""
    if settings.positions.rule != "zscore" or _output(model) == "position":
        return None
    ts = ds.meta["timestamp"].to_numpy()
    recent = _recent(idx, cap)
    _, val_idx = _inner_validation(ts, recent, settings.features.horizon)
    rows = val_idx if len(val_idx) else recent[-max(1, len(recent) // 10):]
    return model.predict(ds.X.iloc[rows])


def reference_sample(model: Model, ds: Dataset, idx: np.ndarray, seed: int, n: int = REFERENCE_ROWS) -> pd.DataFrame:
    """A sample of the training rows' tabular features and the model's predictions (for drift checks)."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(idx, size=min(n, len(idx)), replace=False))
    ref = ds.X.iloc[pick][ds.spec.tabular].reset_index(drop=True)
    ref["prediction"] = model.predict(ds.X.iloc[pick])
    ref.insert(0, "timestamp", ds.meta["timestamp"].iloc[pick].to_numpy())
    ref.insert(1, "symbol", ds.meta["symbol"].iloc[pick].to_numpy())
    return ref


def family_failure(family: str, e: BaseException) -> str:
    """The one-line reason a family's training failed (logged; the others go on)."""
    text = " ".join(str(e).split())[:300]
    reason = f"{type(e).__name__}: {text}" if not isinstance(e, TidelineError) else text
    log.error("model family %s failed to train (the others go on): %s", family, reason)
    return reason


@dataclass
class WalkForward:
    """One family's purged walk-forward run: each fold's figures, net returns, test predictions and the
    predictions its position rule was fitted on (None: the rule needs none)."""

    folds: list[dict[str, Any]] = field(default_factory=list)
    returns: list[pd.Series] = field(default_factory=list)
    preds: list[np.ndarray] = field(default_factory=list)
    refs: list[np.ndarray | None] = field(default_factory=list)


def walk_forward(family: str, ds: Dataset, plan: Plan, settings: Settings, params: Mapping[str, Any] | None = None,
                 report: tuning.Report | None = None, advance: Callable[[int], None] | None = None,
                 factory: Callable[[], Model] | None = None) -> WalkForward:
    """Fit ``family`` (with ``params`` or ``factory``, see ``fit_model``) on each purged walk-forward fold of the
    development rows and score it on the fold's test rows; ``report(k, figures, returns)`` is called after each
    fold (tuning prunes through it)."""
    wf = WalkForward()
    cap = settings.training.cv_max_train_rows
    for k, sp in enumerate(plan.splits):
        tr, te = plan.dev[sp.train_idx], plan.dev[sp.test_idx]
        m = fit_model(family, ds, tr, settings, cap, params, factory)
        wf.refs.append(rule_reference(m, ds, tr, settings, cap))
        wf.preds.append(m.predict(ds.X.iloc[te]))
        fold, ret = _fold(family, k, wf.preds[-1], wf.refs[-1], sp, ds, plan, settings)
        wf.folds.append(fold)
        wf.returns.append(ret)
        if report is not None:
            report(k, fold, ret)
        if advance is not None:
            advance(1)
    return wf


def tune_family(family: str, ds: Dataset, plan: Plan, settings: Settings) -> tuple[tuning.Tuning, WalkForward]:
    """Tune ``family`` inside the purged walk-forward folds with the configured budget (``tideline.training.
    tuning``); the record and the chosen trial's walk-forward run. ``ModelError`` when no trial completes."""
    t = settings.training
    return tuning.tune(family, search_space(family),
                       lambda params, report: walk_forward(family, ds, plan, settings, params, report),
                       trials=t.tune_trials, objective=t.tune_objective, seed=t.seed,
                       base_params=t.params.get(family), timeout_s=t.tune_timeout_s)


def train_family(family: str, ds: Dataset, plan: Plan, settings: Settings,
                 advance: Callable[[int], None] | None = None,
                 factory: Callable[[], Model] | None = None,
                 prepare: Callable[[Model], None] | None = None) -> tuple[Model, FamilyResult]:
    """Purged walk-forward on the development rows (after tuning, when ``training.tune_trials`` is set and the
    family has a search space: the chosen trial's), then the final fit and its hold-out figures; ``factory``
    makes each unfitted model instead of the family (see ``recalibrated_result``); ``prepare`` is applied to
    the final fit only (a policy's warm start and experience: the folds' test rows lie before what the earlier
    version and the experiences saw, so the folds stay cold-started)."""
    advance = advance or (lambda n=1: None)
    t0 = time.perf_counter()
    t = settings.training
    params: Mapping[str, Any] | None = None
    record: tuning.Tuning | None = None
    if factory is None and t.tune_trials and search_space(family):
        record, wf = tune_family(family, ds, plan, settings)
        params = record.best_params
        advance(len(plan.splits))
    else:
        wf = walk_forward(family, ds, plan, settings, advance=advance, factory=factory)
    model = fit_model(family, ds, plan.dev, settings, t.max_train_rows, params, factory, prepare)
    rule_ref = rule_reference(model, ds, plan.dev, settings, t.max_train_rows)
    rule = fitted_rule(family, settings, plan, rule_ref)
    pred = model.predict(ds.X.iloc[plan.hold])
    hm = _metrics(pred, ds, plan.hold, plan, settings, rule)
    ref = reference_sample(model, ds, plan.dev, t.seed)
    imp = holdout_importance(model, ds, plan, settings)
    advance(1)
    wf_returns = pd.concat(wf.returns).sort_index() if wf.returns else None
    return model, FamilyResult(family, hm, _wf_summary(wf.folds), wf.folds, time.perf_counter() - t0, pred, ref,
                               wf_returns, rule, imp, wf.preds, wf.refs, rule_ref,
                               tuning=record.to_dict() if record else None)


def _fold(family: str, k: int, pred: np.ndarray, rule_ref: np.ndarray | None, sp: Split, ds: Dataset, plan: Plan,
          settings: Settings) -> tuple[dict[str, Any], pd.Series]:
    """One walk-forward fold's figures and net returns per test period, from its test predictions."""
    tr, te = plan.dev[sp.train_idx], plan.dev[sp.test_idx]
    ts = ds.meta["timestamp"].to_numpy()
    rule = fitted_rule(family, settings, plan, rule_ref)
    fm = _metrics(pred, ds, te, plan, settings, rule)
    return ({"fold": k, "train_rows": int(len(tr)), "test_rows": int(len(te)), "test_start": _ts(ts[te][0]),
             "test_end": _ts(ts[te][-1]), **fm.to_dict()}, _returns(pred, ds, te, settings, plan, rule))


def _wf_summary(folds: list[dict[str, Any]]) -> dict[str, float]:
    return {
        f"{key}_{stat}": float(fn([f[key] for f in folds]))
        for key in ("sharpe", "directional_accuracy", "ic")
        for stat, fn in (("mean", np.mean), ("std", np.std))
    } if folds else {}


ENSEMBLE = "ensemble"


def ensemble_result(results: Sequence[FamilyResult], ds: Dataset, plan: Plan, settings: Settings
                    ) -> FamilyResult | None:
    """The equal-weight ensemble of the trained families as one more candidate, from their results alone (no
    model is trained): each fold's and the hold-out's predictions are the mean of the members' on the same
    rows, its position rule is fitted on the mean of theirs, and it is scored exactly like a family (so the
    gate judges it like one, and its Sharpe is one more trial). None when ``training.ensemble`` is off or
    fewer than two families trained; its feature importance is measured once its model exists
    (``ensemble_model``)."""
    members = [r for r in results if r.members is None and output_kind(r.family) == "return"]
    if not settings.training.ensemble or len(members) < 2:
        return None
    if any(r.fold_preds is None or r.fold_refs is None for r in members):
        log.warning("no ensemble: a family's result lacks its fold predictions")
        return None
    t0 = time.perf_counter()

    def mean(arrays: Sequence[np.ndarray | None]) -> np.ndarray | None:
        return None if any(a is None for a in arrays) else np.mean(np.vstack(arrays), axis=0)

    folds, fold_returns, fold_preds, fold_refs = [], [], [], []
    for k, sp in enumerate(plan.splits):
        pred = mean([r.fold_preds[k] for r in members])  # type: ignore[index]
        assert pred is not None
        rref = mean([r.fold_refs[k] for r in members])  # type: ignore[index]
        fold, ret = _fold(ENSEMBLE, k, pred, rref, sp, ds, plan, settings)
        folds.append(fold)
        fold_returns.append(ret)
        fold_preds.append(pred)
        fold_refs.append(rref)
    rule_ref = mean([r.rule_ref for r in members])
    rule = fit_position_rule(settings.positions, rule_ref, plan.periods_per_year)
    pred = mean([r.holdout_pred for r in members])
    assert pred is not None
    hm = _metrics(pred, ds, plan.hold, plan, settings, rule)
    ref = None
    refs = [r.reference for r in members]
    if all(x is not None for x in refs):  # the same sampled rows (same seed and rows) for every family
        ref = refs[0].copy()  # type: ignore[union-attr]
        ref["prediction"] = np.mean(np.vstack([x["prediction"].to_numpy() for x in refs]), axis=0)  # type: ignore[union-attr]
    wf_returns = pd.concat(fold_returns).sort_index() if fold_returns else None
    return FamilyResult(ENSEMBLE, hm, _wf_summary(folds), folds, time.perf_counter() - t0, pred, ref, wf_returns,
                        rule, None, fold_preds, fold_refs, rule_ref, [r.family for r in members])


def ensemble_model(result: FamilyResult, models: Mapping[str, Model], ds: Dataset, plan: Plan,
                   settings: Settings) -> Model:
    """The ensemble ``result`` describes, built from its members' fitted ``models``; its feature importance is
    measured and put into ``result``."""
    from tideline.models.ensemble import EnsembleModel

    assert result.members is not None
    missing = [f for f in result.members if f not in models]
    if missing:
        raise ModelError(f"the ensemble's members {missing} did not reach this step")
    model = EnsembleModel.of([models[f] for f in result.members], seed=settings.training.seed)
    result.importance = holdout_importance(model, ds, plan, settings)
    return model


RECALIBRATED = "recalibrated"


def recalibrated_result(prod: ProductionScore, ds: Dataset, plan: Plan, settings: Settings
                        ) -> tuple[Model, FamilyResult] | None:
    """Production recalibrated on this window (``tideline.models.recalibrated``: ``a + b * production(x)``, the
    line fitted on each fold's training rows, then on all development rows) as one more candidate, judged and
    counted like a trained family. A warm start: after a change that flips or rescales what production
    learned, the line needs far fewer of the new regime's rows than a fresh model.

    None (with the reason logged) when ``training.recalibrate`` is off, there is no production model that reads
    this window's features, or production was not made entirely before the window: its training rows and
    the hold-out it was chosen on, their labels' horizon and the embargo must all end before the window's
    first bar, or the folds and the hold-out would score it on rows that fitted or picked it.
    """
    from tideline.models.recalibrated import RecalibratedModel

    if not settings.training.recalibrate or prod.model is None or prod.manifest is None:
        return None
    base, mv = prod.model, prod.manifest
    end = _base_training_end(base, mv)
    first, gap = _window_start_and_gap(ds, None, settings)
    if end is None or end + gap >= first:
        log.info("no recalibrated candidate: production %s was trained on rows up to %s, not entirely before "
                 "this window (from %s)", mv.version, end, first)
        return None
    seed = settings.training.seed

    def factory() -> Model:
        return RecalibratedModel.on(base, version=mv.version, training_end=str(end), seed=seed)

    try:
        return train_family(RECALIBRATED, ds, plan, settings, factory=factory)
    except Exception as e:  # noqa: BLE001 - like a family that fails: logged, and the other candidates go on
        family_failure(RECALIBRATED, e)
        return None


def _window_start_and_gap(ds: Dataset, idx: np.ndarray | None, settings: Settings
                          ) -> tuple[pd.Timestamp, pd.Timedelta]:
    """The first bar of rows ``idx`` (None: every row; naive UTC) and the gap a label needs before it: (horizon +
    embargo) bars."""
    ts = pd.DatetimeIndex(pd.to_datetime(ds.meta["timestamp"].to_numpy()))
    uniq = ts.unique().sort_values()
    step = (uniq[1:] - uniq[:-1]).min() if len(uniq) > 1 else pd.Timedelta(0)
    first = (ts if idx is None else pd.DatetimeIndex(ts[idx])).min()
    first = first.tz_localize(None) if first.tzinfo else first
    return first, (settings.features.horizon + settings.evaluation.embargo_bars) * step


@dataclass
class PolicyPrep:
    """What a policy's final fit starts from and fine-tunes on (``fit_model``'s ``prepare``): the newest version
    of its family whose training rows and hold-out ended before this hold-out (a warm start: its weights, and
    fewer steps), and the experience buffer's rows before the hold-out (``tideline.monitoring.experience.
    training_set``). Both must end ``horizon + embargo`` bars before the hold-out's first bar, or the hold-out
    would score a policy on rows that taught it. ``notes`` says what was used, and why not."""

    registry: Registry
    ds: Dataset
    plan: Plan
    settings: Settings
    notes: list[str] = field(default_factory=list)

    def __call__(self, model: Model) -> None:
        if _output(model) != "position":
            return
        first, gap = _window_start_and_gap(self.ds, self.plan.hold, self.settings)
        cutoff = first - gap
        self._warm_start(model, cutoff)
        self._experience(model, cutoff)

    def _warm_start(self, model: Model, cutoff: pd.Timestamp) -> None:
        earlier = [mv for mv in self.registry.list_versions() if mv.family == model.family]
        for mv in reversed(earlier):
            end = _base_training_end(None, mv)
            if end is None or end >= cutoff:
                continue
            try:
                with tempfile.TemporaryDirectory(prefix="tideline-warm-") as tmp:
                    previous = load_model(self.registry.fetch(mv.version, Path(tmp)))
            except TidelineError as e:
                self.notes.append(f"no warm start from {mv.version}: {e}")
                continue
            why = model.warm_start(previous, mv.version)
            self.notes.append(f"warm start from {mv.version} (trained on rows up to {end})" if why is None
                              else f"no warm start from {mv.version}: {why}")
            if why is None:
                return
        if earlier and not any(n.startswith("warm start") for n in self.notes):
            self.notes.append(f"cold start: no {model.family} version ended before {cutoff} (the hold-out's rows "
                              "must not have taught it)")

    def _experience(self, model: Model, cutoff: pd.Timestamp) -> None:
        from tideline.monitoring.experience import training_set

        columns = model._input_columns(StoredSpec.from_spec(self.ds.spec))
        try:
            got = training_set(self.registry, columns, feature_config_hash(self.settings.features), cutoff,
                               self.settings.experience)
        except TidelineError as e:
            self.notes.append(f"no experience fine-tuning: {e}")
            return
        if got is None:
            self.notes.append(f"no experiences before {cutoff} to fine-tune on")
            return
        X, rows = got
        cost = np.full(len(rows), self.settings.evaluation.cost_bps / 1e4)
        col = f"rvol_{self.settings.positions.vol_window}"
        if self.settings.evaluation.slippage_vol and col in X:
            cost = cost + self.settings.evaluation.slippage_vol * np.nan_to_num(X[col].to_numpy(np.float64), nan=0.0)
        model.fine_tune_on(X, Market(rows["next_return"].to_numpy(np.float64), rows["symbol"].to_numpy(),
                                     rows["bar_time"].to_numpy(), cost, rows["weight"].to_numpy(np.float64)))
        self.notes.append(f"fine-tuned on {len(rows):,} experiences before {cutoff}")


def _base_training_end(model: Model | None, mv: ModelVersion) -> pd.Timestamp | None:
    """Where the rows that made a version ended: its training rows and the hold-out it was chosen on (a window
    that overlaps either would score a model built on it on rows that fitted or picked it); the base's own when
    the version is a recalibration (its line is refitted, its base kept)."""
    if model is not None and model.family == RECALIBRATED:
        raws = [getattr(model, "base_training_end", None)]
    else:
        raws = [(mv.training_window or {}).get("end"), ((mv.evaluation or {}).get("holdout") or {}).get("end")]
    ends: list[pd.Timestamp] = []
    for raw in raws:
        try:
            t = pd.Timestamp(raw) if raw else pd.NaT
        except (TypeError, ValueError):
            t = pd.NaT
        if t is not pd.NaT:
            ends.append(t.tz_localize(None) if t.tzinfo else t)
    return max(ends) if raws[0] and ends else None  # no known training end: never offered


def holdout_importance(model: Model, ds: Dataset, plan: Plan, settings: Settings) -> dict[str, Any] | None:
    """The final model's feature importance on (the latest rows of) its hold-out (``tideline.models.explain``);
    None, with a warning, when it cannot be measured (a version is still registered without it)."""
    try:
        return explain.importance(model, ds.X.iloc[plan.hold], seed=settings.training.seed).to_dict()
    except TidelineError as e:
        log.warning("%s: no feature importance: %s", model.family, e)
        return None


def score_production(registry: Registry, ds: Dataset, plan: Plan, bars: pd.DataFrame, settings: Settings
                     ) -> ProductionScore:
    """Score the current production model on the same hold-out rows (sha256 verified on fetch)."""
    prod = registry.aliases().get("production")
    if prod is None:
        return ProductionScore()
    same_features: Model | None = None
    try:
        mv = registry.get(prod)
        with tempfile.TemporaryDirectory(prefix="tideline-prod-") as tmp:
            model = load_model(registry.fetch(prod, Path(tmp)))
        if mv.feature_config_hash != feature_config_hash(settings.features):
            # production was trained on another feature config: rebuild its features on these bars
            pds = build_dataset(bars, FeatureConfig.model_validate(mv.feature_config))
            key = pd.MultiIndex.from_frame(ds.meta[["timestamp", "symbol"]].iloc[plan.hold])
            pos = pd.MultiIndex.from_frame(pds.meta[["timestamp", "symbol"]]).get_indexer(key)
            if (pos < 0).any():
                raise ModelError(f"production features cannot be rebuilt for {int((pos < 0).sum())} hold-out rows")
            pred = model.predict(pds.X.iloc[pos])
        else:
            pred = model.predict(ds.X.iloc[plan.hold])
            if model.family != "torch" and _output(model) == "return":
                same_features = model
        rule = stored_rule(mv.position, mv.version)
        return ProductionScore(prod, _metrics(pred, ds, plan.hold, plan, settings, rule),
                               holdout_returns(pred, ds, plan, settings, rule), model=same_features, manifest=mv)
    except TidelineError as e:
        log.warning("production %s could not be evaluated: %s", prod, e)
        return ProductionScore(prod, error=str(e))


def judge(result: FamilyResult, prod: ProductionScore, ds: Dataset, plan: Plan, settings: Settings,
          evidence: Evidence | None = None) -> CandidateResult:
    """Significance against production on the same periods, then the promotion policy (with ``evidence``:
    the checks luck cannot pass, see ``judge_all``)."""
    p_value = None
    if prod.returns is not None:
        a, b = holdout_returns(result.holdout_pred, ds, plan, settings, result.position).align(prod.returns,
                                                                                               join="inner")
        p_value = _paired_p(a, b, settings)
    decision = decide(
        result.holdout.to_dict(), settings.policy, production=prod.metrics.to_dict() if prod.metrics else None,
        production_version=prod.version, p_value=p_value, production_error=prod.error, evidence=evidence,
    )
    return CandidateResult(result.family, result.holdout, result.walk_forward, result.folds, decision, p_value,
                           result.fit_seconds, evidence=evidence, position=result.position,
                           regimes=holdout_regimes(result.holdout_pred, ds, plan, settings, result.position),
                           tuning=result.tuning)


def holdout_regimes(pred: np.ndarray, ds: Dataset, plan: Plan, settings: Settings,
                    rule: PositionRule | None = None) -> dict[str, Metrics]:
    """Hold-out figures of ``pred`` per volatility regime: each hold-out row is ``low``, ``normal`` or ``high``
    by its recent volatility (``rvol_<positions.vol_window>``) against the quantiles of the development rows'
    (``triggers.regime_low_quantile`` / ``regime_high_quantile``, the regime rule of the triggers); a regime
    with fewer than 20 rows is left out (``regime_bounds``: the bounds, stored with the version for the live
    figures). Empty when the dataset has no such feature."""
    bounds = regime_bounds(ds, plan, settings)
    if bounds is None:
        return {}
    idx = plan.hold
    regimes = classify_volatility(ds.X[bounds["feature"]].to_numpy(dtype=np.float64)[idx],
                                  (bounds["low"], bounds["high"]))
    return regime_metrics(pred, ds.y[idx], ds.next_return[idx], ds.meta.iloc[idx].reset_index(drop=True), regimes,
                          cost_bps=settings.evaluation.cost_bps, periods_per_year=plan.periods_per_year,
                          **_trading(ds, idx, settings, rule or sign_rule(settings, plan)))


def _paired_p(a: pd.Series, b: pd.Series, settings: Settings) -> float:
    ev = settings.evaluation
    return paired_bootstrap_test(a.to_numpy(), b.to_numpy(), n_samples=ev.bootstrap_samples,
                                 block_size=ev.block_size, seed=settings.training.seed).p_value


BASELINES_TO_BEAT = ("buy_and_hold", "always_long")


def earlier_trials(registry: Registry) -> list[float]:
    """The hold-out Sharpe ratios (per period) of every candidate registered since production last changed
    (its last promotion or rollback; all of them when nothing was ever promoted): the trials earlier cycles
    already spent on the same question, so that retrying until one passes by luck is counted. A candidate
    stored without its per-period Sharpe (an older version) is not counted."""
    out = []
    for mv in _since_production_changed(registry):
        sr = ((mv.evaluation or {}).get("evidence") or {}).get("sharpe_per_period")
        if isinstance(sr, int | float) and math.isfinite(sr):
            out.append(float(sr))
    return out


def earlier_tuning_trials(registry: Registry) -> list[float]:
    """The walk-forward Sharpe ratios (per period) of the tuning trials of the same candidates as
    ``earlier_trials`` (``tuning.counted_sharpes`` of each version's stored record)."""
    return [sr for mv in _since_production_changed(registry)
            for sr in tuning.counted_sharpes((mv.evaluation or {}).get("tuning"))]


def _since_production_changed(registry: Registry) -> list[ModelVersion]:
    changed = [pd.Timestamp(e.at) for e in registry.history() if e.action in ("promote", "rollback")]
    since = max(changed) if changed else None
    return [mv for mv in registry.list_versions() if since is None or pd.Timestamp(mv.created_at) > since]


def judge_all(results: list[FamilyResult], prod: ProductionScore, base: Mapping[str, Metrics], ds: Dataset,
              plan: Plan, settings: Settings, earlier: Sequence[float] = (),
              earlier_tuning: Sequence[float] = ()) -> list[CandidateResult]:
    """Judge every trained family of one cycle: the policy with the evidence measured across all of them.

    Each candidate's deflated Sharpe counts every family tried (their hold-out Sharpe ratios are the trials),
    every tuning trial but the chosen ones (their walk-forward Sharpe ratios, ``tuning.counted_sharpes``, with
    the ``earlier_tuning`` ones: ``earlier_tuning_trials``; see ``deflated_sharpe``'s ``more_trials``) and
    the ``earlier`` trials (``earlier_trials``: candidates of earlier cycles since production last changed);
    the cycle's PBO is measured on the families' walk-forward returns over the periods they share; each is
    tested (paired, on the same hold-out periods: Sharpe ratio against Sharpe ratio) against the best of
    buy-and-hold and always-long.
    """
    hold = {r.family: holdout_returns(r.holdout_pred, ds, plan, settings, r.position) for r in results}
    tuned = [sr for r in results for sr in tuning.counted_sharpes(r.tuning)]
    trials = [sharpe_per_period(h.to_numpy()) for h in hold.values()] + [float(x) for x in earlier]
    more = tuned + [float(x) for x in earlier_tuning]  # measured on walk-forward periods: see deflated_sharpe
    wf = [r.fold_returns for r in results if r.fold_returns is not None and len(r.fold_returns)]
    pbo = pbo_cscv(pd.concat(wf, axis=1, join="inner").to_numpy()).pbo if len(wf) == len(results) else None
    named = [b for b in BASELINES_TO_BEAT if b in base]
    best = max(named, key=lambda b: base[b].sharpe) if named else None
    # buy-and-hold and always-long hold the same positions: long every symbol from its first hold-out bar
    long_only = holdout_returns(np.ones(len(plan.hold)), ds, plan, settings, sign_rule(settings, plan))
    out = []
    ev = settings.evaluation
    for r in results:
        cand = hold[r.family]
        a, b = cand.align(long_only, join="inner")
        # Sharpe against Sharpe: always-long carries the market's risk, so a test of mean returns would favour it
        p_base = sharpe_difference_test(a.to_numpy(), b.to_numpy(), n_samples=ev.bootstrap_samples,
                                        block_size=ev.block_size, seed=settings.training.seed).p_value if best else None
        dsr = deflated_sharpe(cand.to_numpy(), trials, more)
        evidence = Evidence(
            deflated_sharpe=dsr.value, n_trials=dsr.n_trials, sharpe_per_period=dsr.sharpe,
            earlier_trials=len(earlier) + len(earlier_tuning), tuning_trials=len(tuned),
            fold_sharpes=[float(f.get("sharpe", float("nan"))) for f in r.folds],
            baseline=best, baseline_sharpe=base[best].sharpe if best else None,
            p_value_vs_baseline=p_base, pbo=pbo,
        )
        out.append(judge(r, prod, ds, plan, settings, evidence))
    return out


def register_candidate(registry: Registry, model_dir: Path, cand: CandidateResult, *, info: dict[str, Any],
                       settings: Settings, base: Mapping[str, Metrics], prod: ProductionScore,
                       reference: pd.DataFrame | None = None,
                       importance: Mapping[str, Any] | None = None) -> ModelVersion:
    """Store one candidate: artifacts, lineage, metrics, evaluation and the policy decision; its drift
    reference sample and feature importance as attachments."""
    meta = read_meta(model_dir)
    mv = registry.register(model_dir, {
        "family": cand.family,
        "params": meta.get("params", {}),
        "features": list(meta.get("columns", [])),
        "feature_config": settings.features.model_dump(),
        "feature_config_hash": feature_config_hash(settings.features),
        "training_window": {"start": info["start"], "end": info["training_end"],
                            "n_rows": info["training_rows"], "symbols": info["symbols"]},
        "data_hash": info["data_hash"],
        "code_version": code_version(),
        "parent_version": prod.version,
        "metrics": cand.holdout.to_dict(),
        "evaluation": {
            "walk_forward": cand.walk_forward, "folds": cand.folds,
            "baselines": {k: v.to_dict() for k, v in base.items()},
            "production": prod.metrics.to_dict() if prod.metrics else None,
            "p_value_vs_production": cand.p_value, "holdout": info["holdout"],
            "evidence": cand.evidence.to_dict() if cand.evidence else None,
            "regimes": {k: v.to_dict() for k, v in cand.regimes.items()},
            "tuning": cand.tuning,
            "regime_thresholds": info.get("regime_thresholds"),
            "cost_bps": settings.evaluation.cost_bps, "source": info["source"],
            "learning": _learning(meta),
        },
        "decision": cand.decision.to_dict(),
        "position": cand.position.to_dict(),
    })
    if reference is not None:
        import io

        buf = io.BytesIO()
        reference.to_parquet(buf, index=False)
        registry.put_attachment(mv.version, REFERENCE_ATTACHMENT, buf.getvalue(), actor="cycle")
    if importance:
        registry.put_attachment(mv.version, explain.IMPORTANCE_ATTACHMENT,
                                json.dumps(dict(importance)).encode(), actor="cycle")
    cand.version = mv.version
    return mv


def _learning(meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """How a policy's final fit was prepared and ran (its ``fit_info``: warm start, experiences, steps), for the
    version's evaluation record; None for the other families."""
    if meta.get("output") != "position":
        return None
    fi = meta.get("fit_info") or {}
    return {k: fi.get(k) for k in ("preparation", "warm_start", "experience_rows", "timesteps", "valid_net_bps")}


def choose_best(candidates: list[CandidateResult]) -> CandidateResult | None:
    """The approved candidate with the best out-of-sample Sharpe: the mean over its walk-forward folds and the
    hold-out, each block weighing the same (``out_of_sample_sharpe``; the hold-out Sharpe breaks ties). One
    short hold-out alone picks by luck between candidates that all passed: a fresh model fitted on a few hundred
    rows and production recalibrated on them can swap places there and not over the folds."""
    approved = [c for c in candidates if c.decision.approved and c.version]
    if not approved:
        return None
    return max(approved, key=lambda c: (out_of_sample_sharpe(c), c.holdout.sharpe))


def out_of_sample_sharpe(c: CandidateResult) -> float:
    """Mean Sharpe of a candidate's out-of-sample blocks: each walk-forward fold's test rows and the hold-out."""
    blocks = [float(f["sharpe"]) for f in c.folds if math.isfinite(float(f.get("sharpe", math.nan)))]
    blocks.append(c.holdout.sharpe)
    finite = [b for b in blocks if math.isfinite(b)]
    return sum(finite) / len(finite) if finite else -math.inf


def promote_best(registry: Registry, candidates: list[CandidateResult], prod_version: str | None,
                 *, actor: str = "cycle") -> tuple[str | None, str]:
    """Promote the best approved candidate, only if production is still the one it was measured against."""
    best = choose_best(candidates)
    if best is None:
        return None, "no candidate passed the promotion policy; production unchanged"
    assert best.version is not None
    try:
        registry.promote(best.version, reason=f"{actor}: {best.family} passed the policy; hold-out Sharpe "
                                              f"{best.holdout.sharpe:.2f}", actor=actor, expected=prod_version)
    except AliasConflict as e:
        return None, f"not promoted: production moved during the cycle ({e})"
    best.promoted = True
    return best.version, f"promoted {best.version} ({best.family})"


# ---- the in-process cycle -----------------------------------------------------------------------------
class CycleRunner:
    """Runs one cycle against a registry with the given settings, all steps in this process."""

    def __init__(self, settings: Settings, registry: Registry, reporter: Reporter | None = None) -> None:
        self.s = settings
        self.registry = registry
        self.reporter = reporter or Reporter()
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def _timed(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0

    def run(self, source: str | Path | None = None, *, synthetic: dict[str, Any] | None = None,
            quarantine: bool = False, promote: bool = True) -> CycleResult:
        """Run one cycle on ``source`` (or ``synthetic`` market arguments) and return what it did.

        Every family is trained, judged and registered as a candidate; with ``promote`` the best approved one is
        promoted, and only if production is still the version it was measured against (otherwise nothing is
        promoted and ``promotion_note`` says why). A family that fails to train is recorded in ``failures``.

        Raises ``DataError`` (``ValidationError`` for refused bars) when no data is given, it cannot be read, or it is
        too short; ``ModelError`` when every family fails; the registry's errors (``RegistryError`` and its
        subclasses, e.g. ``StorageUnavailable``) when candidates cannot be stored.
        """
        t_start = time.perf_counter()
        rep, s = self.reporter, self.s
        with rep.stage("load + validate"), self._timed("load+validate"):
            bars, info = load_and_validate(s, source, synthetic=synthetic, quarantine=quarantine)
        with rep.stage("features + labels"), self._timed("features"):
            ds = make_dataset(bars, s.features)
        plan = plan_windows(ds, s)
        info.update(describe_plan(ds, plan, s))
        with self._timed("baselines"):
            base = baselines(ds, plan, s)
        with rep.stage("production on hold-out"), self._timed("production"):
            prod = score_production(self.registry, ds, plan, bars, s)

        trained: dict[str, tuple[Model, FamilyResult]] = {}
        failures: dict[str, str] = {}
        families = s.training.families
        with rep.stage("train + evaluate", total=len(families) * (len(plan.splits) + 1)) as advance:
            for fam in families:
                with self._timed(f"train:{fam}"):
                    prep = PolicyPrep(self.registry, ds, plan, s) if output_kind(fam) == "position" else None
                    try:
                        model, fr = train_family(fam, ds, plan, s, advance, prepare=prep)
                    except Exception as e:  # noqa: BLE001 - one family failing does not sink the others
                        failures[fam] = family_failure(fam, e)
                        continue
                trained[fam] = (model, fr)
        if not trained:
            raise ModelError("every model family failed to train: "
                             + "; ".join(f"{f}: {why}" for f, why in failures.items()))
        with self._timed("ensemble"):
            ens = ensemble_result([fr for _, fr in trained.values()], ds, plan, s)
            if ens is not None:
                trained[ENSEMBLE] = (ensemble_model(ens, {f: m for f, (m, _) in trained.items()}, ds, plan, s), ens)
        with self._timed("recalibrate"):
            recal = recalibrated_result(prod, ds, plan, s)
            if recal is not None:
                trained[RECALIBRATED] = recal
        candidates = judge_all([fr for _, fr in trained.values()], prod, base, ds, plan, s,
                               earlier_trials(self.registry), earlier_tuning_trials(self.registry))

        with rep.stage("register", total=len(candidates)) as advance, self._timed("register"):
            for c in candidates:
                model, fr = trained[c.family]
                with tempfile.TemporaryDirectory(prefix="tideline-model-") as tmp:
                    model.save(Path(tmp))
                    register_candidate(self.registry, Path(tmp), c, info=info, settings=s, base=base, prod=prod,
                                       reference=fr.reference, importance=fr.importance)
                advance(1)

        promoted, note = None, "no candidate passed the promotion policy; production unchanged"
        if promote:
            with self._timed("promote"):
                promoted, note = promote_best(self.registry, candidates, prod.version)
        elif choose_best(candidates) is not None:
            note = "promotion disabled (--no-promote); approved candidates stay CANDIDATE"
        self.timings["total"] = time.perf_counter() - t_start
        return CycleResult(candidates, base, prod.version, prod.metrics, prod.error, promoted, info,
                           dict(self.timings), note, failures)
