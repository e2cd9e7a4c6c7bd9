"""What a model's predictions rest on: feature importance per version, and how it changed.

* Tree families with exact SHAP values (lightgbm, xgboost: TreeSHAP computed by the library itself,
  ``Model.contributions``): a feature's importance is the mean absolute SHAP value over a sample of rows,
  in prediction units (``method = "tree_shap"``).
* The other families (sklearn's HistGradientBoosting, the torch net): permutation importance against the
  model's own predictions: the mean absolute change of the prediction when that feature's column is shuffled
  across the latest ``PERMUTATION_ROWS`` of the sample (``method = "permutation"``; same units). It needs no
  labels, so it can be measured on live bars whose outcomes are not known yet.

``importance(model, X)`` measures; ``compare(before, after)`` says what changed (rank correlation, the
features that moved most). The cycle stores each version's importance as the ``importance.json`` attachment
(measured on a sample of its hold-out); after a drift check the loop measures it again on the recent bars and
reports the change against the version's own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import pandas as pd
from scipy import stats

from tideline.documents import Document
from tideline.errors import DataError
from tideline.models.base import Model

IMPORTANCE_ATTACHMENT: Final = "importance.json"
SAMPLE_ROWS: Final = 2000
"""rows an importance is measured on (the latest, when there are more)"""
PERMUTATION_ROWS: Final = 1000
"""rows a permutation importance is measured on (it predicts the sample once per feature)"""


@dataclass
class Importance(Document):
    """Each input column's importance to one version's predictions, largest first."""

    method: str
    values: dict[str, float] = field(default_factory=dict)
    n_rows: int = 0

    @property
    def measure(self) -> str:
        """What a value is, in words (for a table title)."""
        return ("mean |SHAP value|" if self.method == "tree_shap"
                else "mean |change of the prediction| when shuffled")

    def top(self, n: int = 10) -> list[tuple[str, float]]:
        """The ``n`` most important features, largest first."""
        return sorted(self.values.items(), key=lambda kv: -kv[1])[:n]


@dataclass
class ImportanceChange(Document):
    """How a version's importance on new rows differs from its own (stored) one."""

    rank_correlation: float
    """Spearman correlation of the two importances over the shared features (1: same order)"""
    top_before: list[str]
    top_after: list[str]
    moved: list[dict[str, Any]]
    """the features whose share of the total importance changed most: feature, share before, share after"""

    def summary(self, against: str = "the version's own") -> str:
        """One line for a tick record or a report (``against``: what the earlier importance was)."""
        moves = ", ".join(f"{m['feature']} {m['before']:.0%} -> {m['after']:.0%}" for m in self.moved[:3])
        return (f"importance rank correlation {self.rank_correlation:.2f} with {against}"
                + (f"; moved most: {moves}" if moves else ""))


def _sample(X: pd.DataFrame, columns: list[str], n: int) -> np.ndarray:
    missing = [c for c in columns if c not in X.columns]
    if missing:
        raise DataError(f"cannot explain: the rows lack the model's columns {missing[:5]}")
    rows = X[columns].tail(n).to_numpy(dtype=np.float32)
    if len(rows) == 0:
        raise DataError("cannot explain: no rows")
    return rows


def importance(model: Model, X: pd.DataFrame, *, sample: int = SAMPLE_ROWS, seed: int = 0) -> Importance:
    """``model``'s feature importance on (the latest ``sample`` of) the rows ``X`` (see the module docstring).

    ``DataError`` when ``X`` lacks a model column or has no rows; ``ModelError`` when the model fails.
    """
    columns = list(model.columns)
    Xs = _sample(X, columns, sample)
    contrib = model.contributions(Xs)
    if contrib is not None:
        vals = np.mean(np.abs(contrib[:, :-1]), axis=0)
        return Importance("tree_shap", _values(columns, vals), len(Xs))
    Xs = Xs[-PERMUTATION_ROWS:]
    base = model.predict_array(Xs)
    rng = np.random.default_rng(seed)
    vals = np.zeros(len(columns))
    order = rng.permutation(len(Xs))
    for j in range(len(columns)):
        Xp = Xs.copy()
        Xp[:, j] = Xs[order, j]
        vals[j] = float(np.mean(np.abs(model.predict_array(Xp) - base)))
    return Importance("permutation", _values(columns, vals), len(Xs))


def _values(columns: list[str], vals: np.ndarray) -> dict[str, float]:
    pairs = sorted(zip(columns, (float(v) if np.isfinite(v) else 0.0 for v in vals), strict=True),
                   key=lambda kv: -kv[1])
    return dict(pairs)


def compare(before: Importance | Mapping[str, Any], after: Importance, *, top: int = 5) -> ImportanceChange:
    """What changed from ``before`` (an ``Importance`` or its stored dict) to ``after``."""
    b = before.values if isinstance(before, Importance) else dict(before.get("values") or {})
    shared = [c for c in after.values if c in b]
    if len(shared) < 2:
        raise DataError("cannot compare importances: fewer than two features in common")
    x = np.array([float(b[c]) for c in shared])
    y = np.array([after.values[c] for c in shared])
    rho = stats.spearmanr(x, y).statistic if x.std() > 0 and y.std() > 0 else float("nan")
    sx, sy = x / (x.sum() or 1.0), y / (y.sum() or 1.0)
    moved = sorted(range(len(shared)), key=lambda i: -abs(sy[i] - sx[i]))[:top]
    return ImportanceChange(
        rank_correlation=float(rho) if np.isfinite(rho) else 0.0,
        top_before=[c for c, _ in sorted(b.items(), key=lambda kv: -float(kv[1]))[:top]],
        top_after=[c for c, _ in after.top(top)],
        moved=[{"feature": shared[i], "before": round(float(sx[i]), 4), "after": round(float(sy[i]), 4)}
               for i in moved],
    )


__all__ = ["IMPORTANCE_ATTACHMENT", "PERMUTATION_ROWS", "SAMPLE_ROWS", "Importance", "ImportanceChange", "compare", "importance"]
