"""The guard after a promotion: is the new production worse than the version it replaced, on the same requests?

For a watch window after a rollout promotes its candidate, the version it replaced (``previous``, the
rollout's baseline) keeps running in shadow: every request reaches both, only production's answer is
served. Each analysis interval the guard judges production against previous on the *same* requests:

* **paired sequential test** — for each bar (in bar-time order) ``d_t`` = previous' directional hit rate
  minus production's over that bar's symbols, in [-1, 1]. Under "production is at least as good"
  (``E[d_t | past] <= 0``) every ``prod_{s<=t} (1 + lambda d_s)`` with ``0 <= lambda < 1`` is a nonnegative
  supermartingale, and so is their average over a fixed grid of ``lambda`` (a mixture e-process). By Ville's
  inequality the chance that it *ever* reaches ``1/alpha`` is at most ``alpha``: the test may be looked at
  every interval, for as long as the watch lasts, without inflating the false-alarm rate (no peeking
  problem). Reaching ``1/alpha`` rejects: the guard rolls back to previous.
  A bar's symbols share the bar's market, so they count as one step; labels whose horizon spans several
  bars overlap, which this sequential view does not model (horizon 1, the default, has no overlap).
* **absolute floors** — production's live directional accuracy over the watch below ``min_accuracy`` (after
  ``min_outcomes`` realized outcomes) rolls back too; if previous is under the floor as well, neither is fit
  to trade and the kill switch is thrown (every predictor answers a flat position) — loudly.
* **errors** — production's 5xx share over the interval above the rollout's ``max_error_rate``.

Pure: numbers in, an ``AnalysisResult`` out (``rollout.machine`` turns a failed one into the revert).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tideline.config import ROLLOUT_DEFAULTS as _D
from tideline.documents import Document
from tideline.monitoring.outcomes import WatchOutcomes
from tideline.rollout.analysis import (  # noqa: F401 - LAMBDAS and e_process are part of the guard's interface
    LAMBDAS,
    AnalysisResult,
    Check,
    SeriesMetrics,
    Thresholds,
    bar_differences,
    e_process,
)

FLOOR_PREVIOUS = "previous_floor"


@dataclass(frozen=True)
class WatchSpec(Document):
    """The guard's settings (part of a ``RolloutSpec``; ``duration_s == 0``: no watch, Promoting -> Promoted).
    Defaults: the ``[loop.rollout]`` settings' ``watch_*``."""

    duration_s: float = _D.watch_seconds
    alpha: float = _D.watch_alpha
    """false-alarm bound of the paired test over the whole watch (it rejects at e >= 1/alpha)."""
    min_accuracy: float | None = _D.watch_min_accuracy
    """absolute floor of production's live directional accuracy over the watch (None: no floor)."""
    min_outcomes: int = _D.watch_min_outcomes
    """realized outcomes before the floor judges."""

    def __post_init__(self) -> None:
        if self.duration_s < 0:
            raise ValueError("watch duration must be >= 0")
        if not 0 < self.alpha < 1:
            raise ValueError("watch alpha must be in (0, 1)")
        if self.min_accuracy is not None and not 0 <= self.min_accuracy <= 1:
            raise ValueError("watch min_accuracy must be in [0, 1]")
        if self.min_outcomes < 1:
            raise ValueError("watch min_outcomes must be >= 1")


def per_bar_differences(w: WatchOutcomes) -> np.ndarray:
    """``d_t``: previous' hit rate minus production's, one per bar, in bar order."""
    return bar_differences(w.times, w.previous_hits, w.production_hits)


def guard_analyze(w: WatchOutcomes | None, production: SeriesMetrics, spec: WatchSpec,
                  thr: Thresholds) -> AnalysisResult:
    """One guard interval. ``fail`` = roll back to previous (and, with a failed ``previous_floor`` check, throw
    the kill switch); ``pass`` = production holds so far; ``inconclusive`` = nothing to judge yet."""
    checks: list[Check] = []
    if production.requests >= thr.min_requests:
        rate = production.errors / production.requests if production.requests else 0.0
        checks.append(Check("error_rate", rate, thr.max_error_rate, rate <= thr.max_error_rate,
                            f"production 5xx share {rate:.3f} (limit {thr.max_error_rate})"))
    n = len(w.times) if w is not None else 0
    if w is None or n == 0:
        checks.append(Check("paired_e_value", None, 1 / spec.alpha, None,
                            "no realized outcomes of production and previous on the same requests yet"))
    else:
        d = per_bar_differences(w)
        e = e_process(d)
        e_max = float(e.max()) if len(e) else 1.0
        prod_acc = float(np.nanmean(np.asarray(w.production_hits, dtype=float)))
        prev_acc = float(np.nanmean(np.asarray(w.previous_hits, dtype=float)))
        worse = e_max >= 1 / spec.alpha
        checks.append(Check(
            "paired_e_value", e_max, 1 / spec.alpha, not worse,
            f"paired test over {len(d)} bars ({n} outcomes): production {prod_acc:.3f} vs previous {prev_acc:.3f} "
            f"directional accuracy on the same requests, e-value {e_max:.2f} "
            + (f">= {1 / spec.alpha:g}: production is worse (alpha {spec.alpha})" if worse
               else f"< {1 / spec.alpha:g}")))
        if spec.min_accuracy is not None:
            if n < spec.min_outcomes:
                checks.append(Check("production_floor", prod_acc, spec.min_accuracy, None,
                                    f"only {n} outcomes (< {spec.min_outcomes}) for the accuracy floor"))
            else:
                under = prod_acc < spec.min_accuracy
                checks.append(Check("production_floor", prod_acc, spec.min_accuracy, not under,
                                    f"production live accuracy {prod_acc:.3f} "
                                    f"{'under' if under else 'at or above'} the floor {spec.min_accuracy}"))
                if under:
                    prev_under = prev_acc < spec.min_accuracy
                    checks.append(Check(FLOOR_PREVIOUS, prev_acc, spec.min_accuracy, not prev_under,
                                        f"previous live accuracy {prev_acc:.3f} "
                                        f"{'also under' if prev_under else 'at or above'} the floor"))
    failed = [c for c in checks if c.passed is False]
    judged = [c for c in checks if c.passed is not None]
    verdict = "fail" if failed else ("pass" if judged and any(c.name == "paired_e_value" for c in judged)
                                     else "inconclusive")
    reasons = [c.reason for c in failed] if failed else [c.reason for c in checks]
    return AnalysisResult(verdict, checks, reasons, labelled=n)


def kill_switch_needed(res: AnalysisResult) -> bool:
    """True when the guard found both production and previous under the accuracy floor."""
    return any(c.name == FLOOR_PREVIOUS and c.passed is False for c in res.checks)
