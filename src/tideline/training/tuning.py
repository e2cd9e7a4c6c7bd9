"""Hyperparameter tuning of one family inside the purged walk-forward folds (Optuna; off by default).

``training.tune_trials`` (``--tune N``) gives each family a budget of N trials. A trial draws parameters from
the family's search space (``Model.search_space``; Optuna's TPE sampler, seeded, so a run is repeatable),
fits the family on every purged walk-forward fold of the development rows, exactly as an untuned family is
evaluated, and scores it by the mean fold objective: net Sharpe (costs counted) or IC. After each fold the
running mean is reported, and the median pruner stops a trial that is already below the median of earlier
trials at the same fold. The hold-out is never seen: the gate judges the chosen parameters on it afterwards.

Every trial is kept (``Tuning``): its parameters, state (complete, pruned, failed), objective and the
per-period Sharpe of its net fold returns. The record is stored in the version's manifest
(``evaluation.tuning``), and each trial other than the chosen one enters the deflated Sharpe as one more
candidate tried (``counted_sharpes``): a family tuned with 20 trials must clear a higher bar than one that
was not.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from tideline.documents import Document
from tideline.errors import ModelError
from tideline.evaluation import sharpe_per_period
from tideline.models import Dim

log = logging.getLogger(__name__)

OBJECTIVES = ("sharpe", "ic")
"""What a trial maximises: the mean over folds of the net annualised Sharpe, or of the information coefficient."""

Report = Callable[[int, Mapping[str, Any], pd.Series], None]
"""Called after each fold with its index, its figures (``sharpe``, ``ic``, ...) and its net returns per period."""
Out = TypeVar("Out")


@dataclass
class TrialRecord(Document):
    """One trial: the parameters it tried, how it ended (``complete``, ``pruned`` or ``failed``), its objective
    over the ``folds`` it ran, the per-period Sharpe of its net fold returns and its run time."""

    number: int
    state: str
    params: dict[str, Any]
    value: float | None = None
    folds: int = 0
    sharpe_per_period: float | None = None
    seconds: float = 0.0
    error: str | None = None


@dataclass
class Tuning(Document):
    """A family's tuning: the budget, the search space, every trial, and the trial that was chosen."""

    family: str
    objective: str
    budget: int
    space: dict[str, Dim]
    sampler: str
    pruner: str
    trials: list[TrialRecord] = field(default_factory=list)
    best_trial: int | None = None
    best_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    """the chosen trial's parameters merged over the configured ones (what the final model is fitted with)"""
    seconds: float = 0.0

    def summary(self) -> str:
        """One line: trials by state, the chosen one and its objective."""
        states = {s: sum(t.state == s for t in self.trials) for s in ("complete", "pruned", "failed")}
        told = ", ".join(f"{n} {s}" for s, n in states.items() if n)
        value = "n/a" if self.best_value is None else f"{self.best_value:.3f}"
        return (f"{len(self.trials)} trials ({told}) in {self.seconds:.0f} s; chosen #{self.best_trial}, "
                f"mean fold {self.objective} {value}")


def counted_sharpes(record: Mapping[str, Any] | None) -> list[float]:
    """The per-period Sharpe ratios a tuning record adds to the deflated Sharpe's trials: every trial that ran
    at least one fold, the chosen one excepted (its model is the candidate, counted as such). A stored
    record that cannot be read adds nothing (a warning says so)."""
    if not record:
        return []
    try:
        t = Tuning.from_dict(record)
    except ValueError as e:
        log.warning("a stored tuning record is not readable, its trials are not counted: %s", e)
        return []
    return [float(r.sharpe_per_period) for r in t.trials
            if r.number != t.best_trial and r.sharpe_per_period is not None and math.isfinite(r.sharpe_per_period)]


def describe(record: Mapping[str, Any]) -> str:
    """A stored tuning record in one line: ``Tuning.summary`` and the chosen values of the searched parameters
    (or why the record cannot be read)."""
    try:
        t = Tuning.from_dict(record)
    except ValueError as e:
        return f"tuning record not readable ({e})"
    chosen = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in t.best_params.items() if k in t.space)
    return f"{t.summary()}: {chosen}"


def _suggest(trial: Any, name: str, dim: Dim) -> Any:
    if dim.kind == "float":
        return trial.suggest_float(name, dim.low, dim.high, log=dim.log)
    if dim.kind == "int":
        return trial.suggest_int(name, int(dim.low or 0), int(dim.high or 0), log=dim.log)
    if dim.kind == "choice":
        return trial.suggest_categorical(name, list(dim.choices or []))
    raise ModelError(f"unknown search dimension kind {dim.kind!r} for {name}")


def tune(family: str, space: Mapping[str, Dim], run: Callable[[dict[str, Any], Report], Out], *, trials: int,
         objective: str = "sharpe", seed: int = 0, base_params: Mapping[str, Any] | None = None,
         timeout_s: float | None = None) -> tuple[Tuning, Out]:
    """Tune ``family`` over ``space`` with a budget of ``trials`` (and ``timeout_s``, when given).

    ``run(params, report)`` evaluates one parameter set on the walk-forward folds, calling ``report`` after
    each fold, and returns its output; the chosen trial's output is returned with the record, so the folds
    need not be run again. ``report`` raises Optuna's ``TrialPruned`` when the pruner stops the trial.

    Raises ``ModelError`` for an unknown objective, an empty space, or when no trial completes (naming the
    last trial's error).
    """
    import optuna

    if objective not in OBJECTIVES:
        raise ModelError(f"unknown tuning objective {objective!r}; known: {list(OBJECTIVES)}")
    if not space:
        raise ModelError(f"{family} has no search space to tune")
    if trials < 1:
        raise ModelError(f"a tuning budget must be at least one trial, not {trials}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    base = dict(base_params or {})
    record = Tuning(family, objective, trials, dict(space), f"TPE(seed={seed})",
                    "median(n_startup_trials=5, n_warmup_steps=1)")
    best: dict[str, Any] = {}
    t_start = time.perf_counter()

    def trial_fn(trial: Any) -> float:
        drawn = {name: _suggest(trial, name, dim) for name, dim in space.items()}
        rec = TrialRecord(trial.number, "failed", drawn)
        values: list[float] = []
        rets: list[pd.Series] = []

        def report(k: int, fold: Mapping[str, Any], ret: pd.Series) -> None:
            v = float(fold.get(objective, math.nan))
            values.append(v)
            rets.append(ret)
            trial.report(float(np.nanmean(values)) if np.isfinite(values).any() else -math.inf, k)
            if trial.should_prune():
                raise optuna.TrialPruned()

        t0 = time.perf_counter()
        try:
            out = run({**base, **drawn}, report)
            value = float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
            if not math.isfinite(value):
                raise ModelError(f"objective {objective} is not finite on any fold")
            rec.state, rec.value = "complete", value
            if not best or value > best["value"]:
                best.update(value=value, number=trial.number, out=out)
            return value
        except optuna.TrialPruned:
            rec.state = "pruned"
            rec.value = float(np.nanmean(values)) if np.isfinite(values).any() else None
            raise
        except Exception as e:  # noqa: BLE001 - a trial's failure is recorded; the search goes on
            rec.error = " ".join(f"{type(e).__name__}: {e}".split())[:300]
            log.warning("tuning %s: trial %d failed: %s", family, trial.number, rec.error)
            return math.nan  # Optuna records a NaN as a failed trial
        finally:
            rec.folds = len(values)
            if rets:
                sr = sharpe_per_period(pd.concat(rets).sort_index().to_numpy())
                rec.sharpe_per_period = sr if math.isfinite(sr) else None
            rec.seconds = round(time.perf_counter() - t0, 3)
            record.trials.append(rec)

    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    study.optimize(trial_fn, n_trials=trials, timeout=timeout_s)
    record.seconds = round(time.perf_counter() - t_start, 3)
    if not best:
        last = next((t.error for t in reversed(record.trials) if t.error), "every trial was pruned")
        raise ModelError(f"tuning {family}: none of its {len(record.trials)} trials completed ({last})")
    record.best_trial, record.best_value = int(best["number"]), float(best["value"])
    chosen = next(t for t in record.trials if t.number == record.best_trial)
    record.best_params = {**base, **chosen.params}
    log.info("tuned %s: %s", family, record.summary())
    return record, best["out"]
