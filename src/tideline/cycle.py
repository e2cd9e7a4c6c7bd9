"""One retraining cycle on one machine: load -> validate -> features -> train every family ->
evaluate (purged walk-forward + hold-out) -> compare with production on the same window ->
register every candidate -> promote the best one if, and only if, the policy passes.

The same steps are the components of the KFP pipeline; here they run in-process.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tideline import __version__
from tideline.config import Settings
from tideline.data import load_bars, synthetic_market, validate_bars
from tideline.errors import AliasConflict, DataError, ModelError, TidelineError
from tideline.evaluation import (
    Metrics,
    baseline_metrics,
    evaluate_predictions,
    holdout_split,
    infer_periods_per_year,
    paired_bootstrap_test,
    purged_walk_forward_splits,
    strategy_returns,
)
from tideline.features import Dataset, FeatureSpec, build_dataset, feature_config_hash
from tideline.models import Model, load_model, make_model
from tideline.policy import PolicyDecision, decide
from tideline.registry import Registry

log = logging.getLogger(__name__)


class Reporter:
    """Progress callbacks; the CLI shows them as rich progress bars. The default does nothing."""

    @contextlib.contextmanager
    def stage(self, name: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
        yield lambda n=1: None


@dataclass
class CandidateResult:
    family: str
    holdout: Metrics
    walk_forward: dict[str, float]
    folds: list[dict[str, Any]]
    decision: PolicyDecision
    p_value: float | None
    fit_seconds: float
    version: str | None = None
    promoted: bool = False
    returns: pd.Series | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "version": self.version,
            "promoted": self.promoted,
            "holdout": self.holdout.to_dict(),
            "walk_forward": self.walk_forward,
            "folds": self.folds,
            "p_value_vs_production": self.p_value,
            "decision": self.decision.to_dict(),
            "fit_seconds": round(self.fit_seconds, 3),
        }


@dataclass
class CycleResult:
    candidates: list[CandidateResult]
    baselines: dict[str, Metrics]
    production_version: str | None
    production_metrics: Metrics | None
    production_error: str | None
    promoted_version: str | None
    data: dict[str, Any]
    timings: dict[str, float]
    promotion_note: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "promoted_version": self.promoted_version,
            "promotion_note": self.promotion_note,
            "production_version": self.production_version,
            "production_holdout": self.production_metrics.to_dict() if self.production_metrics else None,
            "production_error": self.production_error,
            "candidates": [c.to_dict() for c in self.candidates],
            "baselines": {k: v.to_dict() for k, v in self.baselines.items()},
            "data": self.data,
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
        }


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
    h = hashlib.sha256()
    h.update(pd.util.hash_pandas_object(bars, index=False).to_numpy().tobytes())
    return h.hexdigest()[:32]


def _recent(idx: np.ndarray, cap: int | None) -> np.ndarray:
    """The most recent ``cap`` rows of ``idx`` (rows are sorted by time)."""
    return idx if cap is None or len(idx) <= cap else idx[-cap:]


def _inner_validation(ts: np.ndarray, idx: np.ndarray, horizon: int, frac: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Split a training index into (fit, early-stopping) parts by time, purged by the horizon."""
    times = np.unique(ts[idx])
    n_val = max(1, int(len(times) * frac))
    if len(times) - n_val - horizon < 10:
        return idx, idx[:0]
    cut = times[-n_val]
    purge_from = times[-n_val - horizon]
    return idx[ts[idx] < purge_from], idx[ts[idx] >= cut]


class CycleRunner:
    """Runs one cycle against a registry with the given settings."""

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

    # ---- steps -------------------------------------------------------------------------------------
    def load(self, source: str | Path | None, *, synthetic: dict[str, Any] | None = None,
             quarantine: bool = False) -> tuple[pd.DataFrame, dict[str, Any]]:
        with self._timed("load"):
            if synthetic is not None:
                raw = synthetic_market(**synthetic)
                origin = f"synthetic({', '.join(f'{k}={v}' for k, v in synthetic.items())})"
            elif source is not None:
                raw = load_bars(source, endpoint_url=self.s.endpoint_url())
                origin = str(source)
            else:
                raise DataError("no market data given: pass --data PATH or --synthetic")
        with self._timed("validate"):
            report = validate_bars(raw, mode="quarantine" if quarantine else "strict")
        bars = report.clean
        info = {
            "source": origin,
            "rows": int(len(bars)),
            "rows_input": int(report.n_input),
            "rows_quarantined": int(report.n_input - report.n_clean),
            "symbols": sorted(map(str, bars["symbol"].unique())),
            "start": str(bars["timestamp"].min()),
            "end": str(bars["timestamp"].max()),
            "data_hash": data_hash(bars),
            "problems": [p.message for p in report.problems],
        }
        return bars, info

    def features(self, bars: pd.DataFrame) -> Dataset:
        with self._timed("features"):
            ds = build_dataset(bars, self.s.features)
        if len(ds) < 200:
            raise DataError(
                f"only {len(ds)} usable rows after feature warm-up; a cycle needs at least 200",
                hint="give more history",
            )
        return ds

    def _fit(self, family: str, ds: Dataset, idx: np.ndarray, cap: int | None) -> Model:
        h = self.s.features.horizon
        ts = ds.meta["timestamp"].to_numpy()
        idx = _recent(idx, cap)
        fit_idx, val_idx = _inner_validation(ts, idx, h)
        model = make_model(
            family, seed=self.s.training.seed, params=self.s.training.params.get(family),
            n_threads=self.s.training.n_threads,
        )
        kw: dict[str, Any] = {}
        if len(val_idx):
            kw = {"X_valid": ds.X.iloc[val_idx], "y_valid": ds.y[val_idx]}
        return model.fit(ds.X.iloc[fit_idx], ds.y[fit_idx], ds.spec, **kw)

    def _evaluate(self, pred: np.ndarray, ds: Dataset, idx: np.ndarray, ppy: float) -> Metrics:
        return evaluate_predictions(
            pred, ds.y[idx], ds.next_return[idx], ds.meta.iloc[idx].reset_index(drop=True),
            cost_bps=self.s.evaluation.cost_bps, periods_per_year=ppy,
        )

    def _returns(self, pred: np.ndarray, ds: Dataset, idx: np.ndarray) -> pd.Series:
        return strategy_returns(pred, ds.next_return[idx], ds.meta.iloc[idx].reset_index(drop=True),
                                self.s.evaluation.cost_bps)

    def production(self, ds: Dataset, hold: np.ndarray, bars: pd.DataFrame, ppy: float
                   ) -> tuple[str | None, Metrics | None, pd.Series | None, str | None]:
        """Score the current production model on the same hold-out window."""
        try:
            prod = self.registry.aliases().get("production")
        except TidelineError:
            raise
        if prod is None:
            return None, None, None, None
        try:
            mv = self.registry.get(prod)
            with tempfile.TemporaryDirectory(prefix="tideline-prod-") as tmp:
                model = load_model(self.registry.fetch(prod, Path(tmp)))
            X = ds.X
            if mv.feature_config_hash != feature_config_hash(self.s.features):
                # production was trained on another feature config: rebuild its features on these bars
                from tideline.config import FeatureConfig

                pcfg = FeatureConfig.model_validate(mv.feature_config)
                pds = build_dataset(bars, pcfg)
                key = pd.MultiIndex.from_frame(ds.meta[["timestamp", "symbol"]].iloc[hold])
                pkey = pd.MultiIndex.from_frame(pds.meta[["timestamp", "symbol"]])
                pos = pkey.get_indexer(key)
                if (pos < 0).any():
                    raise ModelError(f"production features cannot be rebuilt for {int((pos < 0).sum())} hold-out rows")
                pred = model.predict(pds.X.iloc[pos])
            else:
                pred = model.predict(X.iloc[hold])
            return prod, self._evaluate(pred, ds, hold, ppy), self._returns(pred, ds, hold), None
        except TidelineError as e:
            log.warning("production %s could not be evaluated: %s", prod, e)
            return prod, None, None, str(e)

    # ---- the cycle ---------------------------------------------------------------------------------
    def run(self, source: str | Path | None = None, *, synthetic: dict[str, Any] | None = None,
            quarantine: bool = False, promote: bool = True) -> CycleResult:
        t_start = time.perf_counter()
        rep = self.reporter
        with rep.stage("load + validate"):
            bars, info = self.load(source, synthetic=synthetic, quarantine=quarantine)
        with rep.stage("features + labels"):
            ds = self.features(bars)
        ev, h = self.s.evaluation, self.s.features.horizon
        ts = ds.meta["timestamp"].to_numpy()
        ppy = ev.periods_per_year or infer_periods_per_year(ts)
        dev, hold = holdout_split(ts, ev.holdout_fraction, h, ev.embargo_bars)
        splits = purged_walk_forward_splits(ts[dev], ev.n_splits, h, ev.embargo_bars)
        info.update({
            "dataset_rows": len(ds), "features": len(ds.spec.all_columns), "horizon": h,
            "periods_per_year": ppy, "cost_bps": ev.cost_bps,
            "holdout": {"start": str(pd.Timestamp(ts[hold][0])), "end": str(pd.Timestamp(ts[hold][-1])),
                        "rows": int(len(hold))},
            "walk_forward_folds": len(splits),
        })

        with self._timed("baselines"):
            last_ret = ds.X["ret_1"].to_numpy(dtype=np.float64) if "ret_1" in ds.X else np.zeros(len(ds))
            baselines = baseline_metrics(
                ds.y[hold], ds.next_return[hold], last_ret[hold], ds.meta.iloc[hold].reset_index(drop=True),
                cost_bps=ev.cost_bps, periods_per_year=ppy,
            )
        with rep.stage("production on hold-out"), self._timed("production"):
            prod_version, prod_metrics, prod_returns, prod_error = self.production(ds, hold, bars, ppy)

        candidates: list[CandidateResult] = []
        models: dict[str, Model] = {}
        families = self.s.training.families
        with rep.stage("train + evaluate", total=len(families) * (len(splits) + 1)) as advance:
            for fam in families:
                t0 = time.perf_counter()
                folds: list[dict[str, Any]] = []
                for k, sp in enumerate(splits):
                    tr, te = dev[sp.train_idx], dev[sp.test_idx]
                    m = self._fit(fam, ds, tr, self.s.training.cv_max_train_rows)
                    fm = self._evaluate(m.predict(ds.X.iloc[te]), ds, te, ppy)
                    folds.append({"fold": k, "train_rows": int(len(tr)), "test_rows": int(len(te)),
                                  "test_start": str(pd.Timestamp(ts[te][0])), "test_end": str(pd.Timestamp(ts[te][-1])), **fm.to_dict()})
                    advance(1)
                model = self._fit(fam, ds, dev, self.s.training.max_train_rows)
                pred = model.predict(ds.X.iloc[hold])
                hm = self._evaluate(pred, ds, hold, ppy)
                rets = self._returns(pred, ds, hold)
                advance(1)
                self.timings[f"train:{fam}"] = time.perf_counter() - t0
                wf = {
                    f"{key}_{stat}": float(fn([f[key] for f in folds]))
                    for key in ("sharpe", "directional_accuracy", "ic")
                    for stat, fn in (("mean", np.mean), ("std", np.std))
                } if folds else {}
                p_value = None
                if prod_returns is not None:
                    a, b = rets.align(prod_returns, join="inner")
                    p_value = paired_bootstrap_test(
                        a.to_numpy(), b.to_numpy(), n_samples=ev.bootstrap_samples,
                        block_size=ev.block_size, seed=self.s.training.seed,
                    ).p_value
                decision = decide(
                    hm.to_dict(), self.s.policy, production=prod_metrics.to_dict() if prod_metrics else None,
                    production_version=prod_version, p_value=p_value, production_error=prod_error,
                )
                candidates.append(CandidateResult(fam, hm, wf, folds, decision, p_value,
                                                  time.perf_counter() - t0, returns=rets))
                models[fam] = model

        with rep.stage("register", total=len(candidates)) as advance, self._timed("register"):
            common = {
                "feature_config": self.s.features.model_dump(),
                "feature_config_hash": feature_config_hash(self.s.features),
                "training_window": {"start": info["start"], "end": str(pd.Timestamp(ts[dev][-1])),
                                    "n_rows": int(len(dev)), "symbols": info["symbols"]},
                "data_hash": info["data_hash"],
                "code_version": code_version(),
                "parent_version": prod_version,
            }
            for c in candidates:
                with tempfile.TemporaryDirectory(prefix="tideline-model-") as tmp:
                    models[c.family].save(Path(tmp))
                    mv = self.registry.register(Path(tmp), {
                        **common,
                        "family": c.family,
                        "params": models[c.family].params,
                        "features": list(models[c.family].columns),
                        "metrics": c.holdout.to_dict(),
                        "evaluation": {
                            "walk_forward": c.walk_forward, "folds": c.folds,
                            "baselines": {k: v.to_dict() for k, v in baselines.items()},
                            "production": prod_metrics.to_dict() if prod_metrics else None,
                            "p_value_vs_production": c.p_value,
                            "holdout": info["holdout"], "cost_bps": ev.cost_bps,
                        },
                        "decision": c.decision.to_dict(),
                    })
                c.version = mv.version
                advance(1)

        promoted, note = None, "no candidate passed the promotion policy; production unchanged"
        approved = [c for c in candidates if c.decision.approved]
        if approved and promote:
            best = max(approved, key=lambda c: (c.holdout.sharpe, c.walk_forward.get("sharpe_mean", -math.inf)))
            assert best.version is not None
            with self._timed("promote"):
                try:
                    self.registry.promote(
                        best.version, reason=f"cycle: {best.family} passed the policy; "
                                             f"hold-out Sharpe {best.holdout.sharpe:.2f}",
                        actor="cycle", expected=prod_version,
                    )
                    best.promoted, promoted = True, best.version
                    note = f"promoted {best.version} ({best.family})"
                except AliasConflict as e:
                    note = f"not promoted: production moved during the cycle ({e})"
        elif approved:
            note = "promotion disabled (--no-promote); approved candidates stay CANDIDATE"
        self.timings["total"] = time.perf_counter() - t_start
        return CycleResult(candidates, baselines, prod_version, prod_metrics, prod_error, promoted,
                           info, dict(self.timings), note)
