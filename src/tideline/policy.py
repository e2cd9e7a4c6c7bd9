"""The promotion gate: metrics in, a decision with human-readable reasons out. No I/O here.

A candidate is promoted only if every check passes:

* ``min_sharpe`` — hold-out Sharpe (net of costs) at least ``min_sharpe``;
* ``min_trades`` — enough position changes for the figures to mean something;
* ``max_drawdown`` — the hold-out equity curve never fell further than ``max_drawdown``;
* with a production model, measured on the same hold-out window:
  * ``vs_production`` — Sharpe beats production by ``min_relative_improvement`` (relative to
    ``max(|production|, 0.1)``), or stays within ``tolerance`` of it when a tolerance is set;
  * ``key_metric_floor`` — no key metric below ``key_metric_floor`` x production's value;
  * ``significance`` — the paired test (candidate minus production returns on the same periods) rejects
    "no better" at ``significance_alpha``. Not required when the candidate is accepted only by tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tideline.config import PolicyConfig
from tideline.documents import Document


@dataclass(frozen=True)
class Check:
    """One check of the gate: its name, whether it passed, and a human-readable detail."""
    name: str
    passed: bool
    detail: str


@dataclass
class PolicyDecision(Document):
    """The gate's verdict: ``approved`` only if every check passed; ``compared_to`` is the production version
    it was measured against (None without one).
    """
    approved: bool
    checks: list[Check] = field(default_factory=list)
    compared_to: str | None = None

    @property
    def reasons(self) -> list[str]:
        """Why: the failed checks when rejected, every check when approved."""
        failed = [c.detail for c in self.checks if not c.passed]
        return failed if failed else [c.detail for c in self.checks]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready decision: approved, compared_to, every check, and the derived ``reasons``."""
        return super().to_dict() | {"reasons": self.reasons}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PolicyDecision:
        """Read back ``to_dict`` output (``reasons`` is derived, so dropped); ``ValueError`` naming the field that
        is missing (``approved``) or mistyped."""
        return super().from_dict({k: v for k, v in d.items() if k != "reasons"})


@dataclass
class Evidence(Document):
    """What the gate weighs beside the hold-out figures, measured by the cycle over every candidate it tried.

    ``deflated_sharpe``: the probability (0-1) that the hold-out Sharpe is not the luck of picking the best of
    ``n_trials`` candidates (``tideline.evaluation.deflated_sharpe``); ``pbo``: the cycle's probability of
    backtest overfitting over the walk-forward folds (None when it cannot be measured); ``fold_sharpes``: the
    candidate's walk-forward Sharpe ratios; ``baseline``/``baseline_sharpe``/``p_value_vs_baseline``: the
    best naive strategy on the same hold-out and the paired test of the candidate against it;
    ``sharpe_per_period``: the candidate's hold-out Sharpe ratio per period (what a later cycle counts as a trial);
    ``earlier_trials``: how many of the ``n_trials`` are candidates (and their tuning trials) of earlier cycles
    since production last changed; ``tuning_trials``: how many are this cycle's tuning trials (``--tune``).
    """

    deflated_sharpe: float
    n_trials: int
    fold_sharpes: list[float]
    baseline: str | None = None
    baseline_sharpe: float | None = None
    p_value_vs_baseline: float | None = None
    pbo: float | None = None
    sharpe_per_period: float | None = None
    earlier_trials: int = 0
    tuning_trials: int = 0


def _get(metrics: Mapping[str, Any], name: str) -> float:
    v = metrics.get(name)
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")
    return f


def _fmt(x: float) -> str:
    return f"{x:.3f}" if math.isfinite(x) else "n/a"


def decide(
    candidate: Mapping[str, Any],
    cfg: PolicyConfig,
    *,
    production: Mapping[str, Any] | None = None,
    production_version: str | None = None,
    p_value: float | None = None,
    production_error: str | None = None,
    evidence: Evidence | None = None,
) -> PolicyDecision:
    """Decide whether ``candidate`` (hold-out metrics) may replace ``production`` (same window).

    Pure: no I/O, never raises. ``approved`` only when every check passes; a metric that is missing or not a
    number counts as NaN and fails its check, and ``production_error`` (production could not be scored on the
    window) fails ``vs_production``. ``p_value`` is the paired test's, candidate against production. With
    ``evidence`` (what a cycle measures) the candidate must also beat the best baseline (``vs_baseline``),
    its walk-forward folds must agree (``walk_forward``), its deflated Sharpe reach
    ``cfg.min_deflated_sharpe`` (``deflated_sharpe``) and, when ``cfg.max_pbo`` is set, the cycle's PBO stay
    under it (``overfitting``) - with or without a production model.

    >>> from tideline.config import PolicyConfig
    >>> cand = {"sharpe": 1.2, "n_trades": 80, "max_drawdown": 0.1, "directional_accuracy": 0.53}
    >>> d = decide(cand, PolicyConfig())
    >>> d.approved, [c.name for c in d.checks]
    (True, ['finite_metrics', 'min_sharpe', 'min_trades', 'max_drawdown'])
    >>> d = decide(cand, PolicyConfig(), production={"sharpe": 1.0}, production_version="v3", p_value=0.2)
    >>> d.approved, d.compared_to
    (False, 'v3')
    >>> d.reasons
    ['improvement over production not significant (p=0.200 >= 0.1)']
    >>> decide({**cand, "win_rate": 0.48}, PolicyConfig(min_win_rate=0.5)).reasons
    ['hold-out win rate 0.480 < floor 0.5']
    """
    checks: list[Check] = []
    sharpe = _get(candidate, "sharpe")
    finite = all(math.isfinite(_get(candidate, k)) for k in ("sharpe", "max_drawdown", "directional_accuracy"))
    checks.append(Check("finite_metrics", finite, "metrics are finite" if finite else "metrics are not finite"))

    checks.append(
        Check(
            "min_sharpe",
            sharpe >= cfg.min_sharpe,
            f"hold-out Sharpe {_fmt(sharpe)} {'>=' if sharpe >= cfg.min_sharpe else '<'} minimum {cfg.min_sharpe}",
        )
    )
    trades = _get(candidate, "n_trades")
    ok = trades >= cfg.min_trades
    checks.append(Check("min_trades", ok, f"{int(trades) if math.isfinite(trades) else 0} trades "
                                          f"{'>=' if ok else '<'} minimum {cfg.min_trades}"))
    dd = _get(candidate, "max_drawdown")
    ok = dd <= cfg.max_drawdown
    checks.append(Check("max_drawdown", ok, f"max drawdown {_fmt(dd)} {'<=' if ok else '>'} limit {cfg.max_drawdown}"))
    for name, label, floor in (("min_win_rate", "win rate", cfg.min_win_rate),
                               ("min_profit_factor", "profit factor", cfg.min_profit_factor)):
        if floor is not None:
            x = _get(candidate, name.removeprefix("min_"))
            ok = x >= floor
            checks.append(Check(name, ok, f"hold-out {label} {_fmt(x)} {'>=' if ok else '<'} floor {floor}"))

    if evidence is not None:
        checks.extend(_evidence_checks(sharpe, evidence, cfg))

    if production_error is not None:
        checks.append(
            Check("vs_production", False, f"production {production_version} could not be evaluated: {production_error}")
        )
    elif production is not None:
        p_sharpe = _get(production, "sharpe")
        scale = max(abs(p_sharpe), 0.1)
        need = p_sharpe + cfg.min_relative_improvement * scale
        beats = sharpe >= need
        within = cfg.tolerance > 0 and sharpe >= p_sharpe - cfg.tolerance * scale
        if beats:
            detail = (f"Sharpe {_fmt(sharpe)} beats production {production_version} ({_fmt(p_sharpe)}) by the "
                      f"required {cfg.min_relative_improvement:.0%}")
        elif within:
            detail = (f"Sharpe {_fmt(sharpe)} within {cfg.tolerance:.0%} tolerance of production "
                      f"{production_version} ({_fmt(p_sharpe)})")
        else:
            detail = (f"Sharpe {_fmt(sharpe)} does not beat production {production_version} ({_fmt(p_sharpe)}) "
                      f"by {cfg.min_relative_improvement:.0%} (needs {_fmt(need)})")
        checks.append(Check("vs_production", beats or within, detail))

        low = []
        for m in cfg.key_metrics:
            c, p = _get(candidate, m), _get(production, m)
            if not (math.isfinite(c) and math.isfinite(p)):
                continue
            floor = cfg.key_metric_floor * p if p > 0 else p
            if c < floor:
                low.append(f"{m} {_fmt(c)} < {_fmt(floor)}")
        checks.append(
            Check(
                "key_metric_floor",
                not low,
                f"key metrics below {cfg.key_metric_floor:.0%} of production: {', '.join(low)}"
                if low
                else f"no key metric below {cfg.key_metric_floor:.0%} of production",
            )
        )

        if cfg.require_significance and not (within and not beats):
            sig = p_value is not None and math.isfinite(p_value) and p_value < cfg.significance_alpha
            pv = "n/a" if p_value is None else f"{p_value:.3f}"
            checks.append(
                Check(
                    "significance",
                    sig,
                    f"improvement over production significant (p={pv} < {cfg.significance_alpha})"
                    if sig
                    else f"improvement over production not significant (p={pv} >= {cfg.significance_alpha})",
                )
            )

    return PolicyDecision(
        approved=all(c.passed for c in checks), checks=checks, compared_to=production_version
    )


def _evidence_checks(sharpe: float, ev: Evidence, cfg: PolicyConfig) -> list[Check]:
    """The checks that luck cannot pass: the best baseline beaten, the folds agreeing, the deflated Sharpe."""
    checks: list[Check] = []
    if cfg.require_baseline and ev.baseline is not None:
        b = ev.baseline_sharpe if ev.baseline_sharpe is not None else float("nan")
        p = ev.p_value_vs_baseline
        ok = math.isfinite(sharpe) and sharpe > b and p is not None and p < cfg.significance_alpha
        pv = "n/a" if p is None else f"{p:.3f}"
        checks.append(Check("vs_baseline", ok, (
            f"hold-out Sharpe {_fmt(sharpe)} {'beats' if ok else 'does not significantly beat'} {ev.baseline} "
            f"({_fmt(b)}; paired test p={pv} {'<' if ok else 'vs'} {cfg.significance_alpha})")))
    if cfg.require_folds_agree:
        checks.append(_folds_check(ev.fold_sharpes, cfg.min_positive_folds))
    if cfg.min_deflated_sharpe > 0:
        ok = ev.deflated_sharpe >= cfg.min_deflated_sharpe
        checks.append(Check("deflated_sharpe", ok, (
            f"deflated Sharpe {ev.deflated_sharpe:.3f} {'>=' if ok else '<'} {cfg.min_deflated_sharpe} "
            f"({ev.n_trials} candidates tried"
            + (f", {ev.earlier_trials} of them in earlier cycles since production last changed" if ev.earlier_trials
               else "") + ")")))
    if cfg.max_pbo is not None:
        ok = ev.pbo is not None and ev.pbo <= cfg.max_pbo
        pbo = "n/a" if ev.pbo is None else f"{ev.pbo:.2f}"
        checks.append(Check("overfitting", ok, f"probability of backtest overfitting {pbo} "
                                               f"{'<=' if ok else 'not <='} {cfg.max_pbo}"))
    return checks


def _folds_check(fold_sharpes: list[float], min_positive: float) -> Check:
    """Walk-forward agreement: mean fold Sharpe above 0 and more than ``min_positive`` of the folds positive."""
    folds = [f for f in fold_sharpes if math.isfinite(f)]
    if not folds:
        return Check("walk_forward", False, "no walk-forward fold to judge the candidate on")
    mean, positive = sum(folds) / len(folds), sum(f > 0 for f in folds)
    ok = mean > 0 and positive / len(folds) > min_positive
    return Check("walk_forward", ok, (
        f"walk-forward folds {'agree' if ok else 'do not agree'}: mean Sharpe {_fmt(mean)} "
        f"({'>' if mean > 0 else '<='} 0), {positive} of {len(folds)} positive "
        f"({'>' if positive / len(folds) > min_positive else '<='} {min_positive:.0%})"))
