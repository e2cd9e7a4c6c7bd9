"""The one position function: how a model's predictions become holdings.

Evaluation (hold-out, walk-forward, baselines), the predictor's answers, live outcomes, rollout analysis and
the demo's replays all call ``positions`` with the ``PositionRule`` stored with the version
(``ModelVersion.position``); a version stored without one holds ``sign(prediction)``.

* ``sign``: +1 / -1 on the prediction's sign (0 for an exact 0).
* ``zscore``: ``z = (prediction - center) / scale``, where center and scale are the mean and standard deviation
  of the model's own out-of-sample predictions at training time (``fit_position_rule``: the purged inner
  validation rows its fit set aside); flat while ``|z| < band``, else the sign of ``z``. A model that only
  learnt the drift predicts about ``center`` everywhere and stays flat instead of always long; one whose
  predictions never vary (scale 0) is always flat.
* ``vol_target`` (per bar): each position is scaled by ``vol_target / recent volatility`` of its symbol (the
  ``rvol_{vol_window}`` feature: the standard deviation of the last ``vol_window`` one-bar log returns, known at
  the bar's close), capped at ``max_leverage``; a row with unknown volatility is flat.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from tideline.config import PositionConfig
from tideline.documents import Document
from tideline.errors import DataError


@dataclass
class PositionRule(Document):
    """A fitted position rule (see the module doc); ``vol_target`` is per bar (annualised / sqrt(periods))."""

    rule: Literal["sign", "zscore"] = "sign"
    center: float = 0.0
    scale: float = 1.0
    band: float = 0.0
    vol_target: float | None = None
    max_leverage: float = 1.0
    vol_window: int = 20
    n_reference: int = 0

    @property
    def vol_column(self) -> str:
        """The feature holding each row's recent volatility."""
        return f"rvol_{self.vol_window}"

    @property
    def needs_volatility(self) -> bool:
        """Whether ``positions`` needs each row's recent volatility."""
        return self.vol_target is not None


SIGN = PositionRule()
"""The rule of a version stored without one."""


def stored_rule(stored: Mapping[str, Any] | None, version: str = "the version") -> PositionRule:
    """The rule stored with a version (``ModelVersion.position``); ``sign`` when none was stored. Raises
    ``DataError`` naming the version when the stored rule cannot be read."""
    if not stored:
        return SIGN
    try:
        return PositionRule.from_dict(stored)
    except (TypeError, ValueError) as e:
        raise DataError(f"{version} has an unreadable position rule: {' '.join(str(e).split())[:200]}") from None


def fit_position_rule(config: PositionConfig, reference: np.ndarray | None, periods_per_year: float) -> PositionRule:
    """The rule of ``config`` for a model whose out-of-sample predictions are
    ``reference`` (needed by ``zscore`` only); the annualised volatility target becomes a per-bar one."""
    vt = None
    if config.vol_target is not None:
        vt = float(config.vol_target) / math.sqrt(max(float(periods_per_year), 1.0))
    base = dict(vol_target=vt, max_leverage=float(config.max_leverage), vol_window=int(config.vol_window))
    if config.rule == "sign":
        return PositionRule(rule="sign", **base)
    ref = np.asarray(reference if reference is not None else [], dtype=np.float64)
    ref = ref[np.isfinite(ref)]
    if len(ref) < 2:
        raise DataError(f"positions.rule=zscore needs the model's out-of-sample predictions to scale against; "
                        f"{len(ref)} were available", hint="give more history, or positions.rule = 'sign'")
    sd = float(ref.std(ddof=1))
    return PositionRule(rule="zscore", center=float(ref.mean()), scale=sd if sd > 1e-15 else 0.0,
                        band=float(config.band), n_reference=int(len(ref)), **base)


def positions(pred: np.ndarray, rule: PositionRule | None = None, vol: np.ndarray | None = None) -> np.ndarray:
    """The position of each prediction under ``rule`` (None: ``sign``); ``vol``: each row's recent per-bar
    volatility, required when the rule targets a volatility. NaN predictions are flat.

    >>> positions(np.array([0.3, -0.1, 0.0, np.nan]))
    array([ 1., -1.,  0.,  0.])
    >>> z = PositionRule(rule="zscore", center=0.1, scale=0.2, band=0.5)
    >>> positions(np.array([0.3, 0.15, -0.1]), z)
    array([ 1.,  0., -1.])
    >>> positions(np.array([1.0, -1.0]), PositionRule(vol_target=0.01, max_leverage=2.0), np.array([0.02, 0.001]))
    array([ 0.5, -2. ])
    """
    rule = rule or SIGN
    p = np.nan_to_num(np.asarray(pred, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if rule.rule == "sign":
        pos = np.sign(p)
    elif rule.scale > 0:
        z = (p - rule.center) / rule.scale
        pos = np.where(np.abs(z) >= rule.band, np.sign(z), 0.0)
    else:
        pos = np.zeros_like(p)
    if rule.vol_target is not None:
        if vol is None:
            raise DataError(f"this version sizes positions to a volatility target and needs {rule.vol_column} "
                            "of every row")
        v = np.asarray(vol, dtype=np.float64)
        if v.shape != pos.shape:
            raise DataError(f"length mismatch: {len(pos)} predictions, {len(v)} volatilities")
        with np.errstate(divide="ignore", invalid="ignore"):
            size = np.where(np.isfinite(v) & (v > 0), np.minimum(rule.vol_target / v, rule.max_leverage), 0.0)
        pos = pos * size
    return pos + 0.0  # no negative zeros
