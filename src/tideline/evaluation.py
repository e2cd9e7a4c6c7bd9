"""Honest evaluation: purged walk-forward splits, a costed long/short strategy, metrics, significance tests.

Conventions
- Rows are (timestamp, symbol) observations; several symbols share a timestamp, so splits are made over
  *unique* timestamps and a purge of ``horizon + embargo`` unique timestamps separates train from test.
- The strategy holds ``positions(pred, rule, vol)`` of each symbol for one bar (``tideline.positions``: the
  version's rule; ``sign(pred)`` without one) and earns that symbol's ``next_return`` (a log return). The
  portfolio return at ``t`` is the equal-weight mean over the symbols present at ``t``; averaging log returns
  instead of simple returns is a close approximation for bar-sized moves. Costs are ``cost_bps / 1e4`` per
  unit of turnover ``|position_t - position_prev|``, starting flat, plus ``slippage_vol`` times the symbol's
  recent per-bar volatility ``vol`` per unit of turnover.
- Portfolio returns are treated as log returns: equity is ``exp(cumsum(r))``.
- Every metric is a finite float: degenerate cases (no variance, no trades, tiny samples) give 0.0 and
  unbounded ratios are capped at :data:`RATIO_CAP`.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from tideline.documents import Document
from tideline.errors import DataError
from tideline.positions import PositionRule, positions

log = logging.getLogger(__name__)

RATIO_CAP = 99.0
"""Upper bound for profit factor and Sortino when there are no losses."""

_DAY = np.timedelta64(1, "D")


# ------------------------------------------------------------------------------------------------ splits


@dataclass
class Split:
    """Row positions of one fold."""

    train_idx: np.ndarray
    test_idx: np.ndarray


def _time_index(timestamps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique timestamps and each row's position among them."""
    ts = np.asarray(timestamps)
    if ts.ndim != 1 or len(ts) == 0:
        raise DataError("no timestamps to split")
    return np.unique(ts, return_inverse=True)


def purged_walk_forward_splits(
    timestamps: np.ndarray, n_splits: int, horizon: int, embargo: int = 0
) -> list[Split]:
    """Expanding-window folds over unique timestamps with a purge before each test block.

    Unique times are cut into ``n_splits + 1`` contiguous blocks; fold ``k`` tests on block ``k + 1`` and
    trains on every earlier time except the last ``horizon + embargo`` unique times before the test block,
    so no training label window (t .. t + horizon) reaches into the test period. Raises ``DataError`` for
    ``n_splits < 1``, a negative horizon or embargo, no timestamps, or too few of them for the folds.

    Twelve daily timestamps, two folds, a one-bar horizon (row positions; the purged row is left out):

    >>> import pandas as pd
    >>> ts = pd.date_range("2024-01-01", periods=12, freq="D").to_numpy()
    >>> [(s.train_idx.tolist(), s.test_idx.tolist()) for s in purged_walk_forward_splits(ts, 2, horizon=1)]
    [([0, 1, 2], [4, 5, 6, 7]), ([0, 1, 2, 3, 4, 5, 6], [8, 9, 10, 11])]
    """
    if n_splits < 1:
        raise DataError("n_splits must be >= 1")
    if horizon < 0 or embargo < 0:
        raise DataError("horizon and embargo must be >= 0")
    uniq, inv = _time_index(timestamps)
    n_u = len(uniq)
    gap = horizon + embargo
    blocks = np.array_split(np.arange(n_u), n_splits + 1)
    if len(blocks[0]) <= gap or any(len(b) == 0 for b in blocks):
        raise DataError(
            f"too little data for {n_splits} walk-forward folds: {n_u} distinct timestamps",
            hint=f"each of {n_splits + 1} blocks needs more than {gap} timestamps (horizon + embargo)",
        )
    splits = []
    for k in range(n_splits):
        block = blocks[k + 1]
        start, end = int(block[0]), int(block[-1]) + 1
        train = np.flatnonzero(inv < start - gap)
        test = np.flatnonzero((inv >= start) & (inv < end))
        splits.append(Split(train_idx=train, test_idx=test))
    log.debug("walk-forward: %d folds over %d timestamps, purge %d", n_splits, n_u, gap)
    return splits


def holdout_split(
    timestamps: np.ndarray, fraction: float, horizon: int, embargo: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(dev_idx, holdout_idx): the last ``fraction`` of unique times, with a purge gap before it."""
    if not 0.0 < fraction < 1.0:
        raise DataError("hold-out fraction must be between 0 and 1")
    uniq, inv = _time_index(timestamps)
    n_u = len(uniq)
    n_hold = max(1, int(round(fraction * n_u)))
    start = n_u - n_hold
    gap = horizon + embargo
    if start - gap <= 0:
        raise DataError(
            f"too little data for a {fraction:.0%} hold-out: {n_u} distinct timestamps",
            hint=f"need more than {n_hold + gap} timestamps",
        )
    return np.flatnonzero(inv < start - gap), np.flatnonzero(inv >= start)


# ------------------------------------------------------------------------------------------------ strategy


def _portfolio(
    pos: np.ndarray, next_return: np.ndarray, meta: pd.DataFrame, cost_bps: float, *,
    vol: np.ndarray | None = None, slippage_vol: float = 0.0,
) -> pd.DataFrame:
    """Per-timestamp gross, turnover, net, trade count, exposure and long count of holding positions ``pos``
    (index: timestamp)."""
    pos = np.asarray(pos, dtype=np.float64)
    nr = np.asarray(next_return, dtype=np.float64)
    if not (len(pos) == len(nr) == len(meta)):
        raise DataError(f"length mismatch: positions {len(pos)}, returns {len(nr)}, meta {len(meta)}")
    if len(pos) == 0:
        return pd.DataFrame({k: [] for k in ("gross", "turnover", "net", "trades", "exposure", "long")},
                            index=pd.DatetimeIndex([], name="timestamp"))
    if slippage_vol and vol is None:
        raise DataError("slippage scaled by volatility needs each row's recent volatility")
    nr = np.nan_to_num(nr, nan=0.0, posinf=0.0, neginf=0.0)
    ts = meta["timestamp"].to_numpy()
    sym = pd.factorize(meta["symbol"].to_numpy())[0]
    order = np.lexsort((ts, sym))  # by symbol, then time
    pos_s = pos[order]
    prev = np.empty_like(pos_s)
    prev[0] = 0.0
    prev[1:] = pos_s[:-1]
    first = np.ones(len(order), dtype=bool)
    first[1:] = sym[order][1:] != sym[order][:-1]
    prev[first] = 0.0  # each symbol starts flat
    turnover = np.empty_like(pos)
    turnover[order] = np.abs(pos_s - prev)
    unit_cost = np.full(len(pos), cost_bps / 1e4)
    if slippage_vol:
        unit_cost = unit_cost + slippage_vol * np.nan_to_num(np.asarray(vol, dtype=np.float64), nan=0.0)
    # per timestamp by bincount (a pandas groupby costs ~10 ms a call, and a cycle or a replay makes thousands)
    codes, uniques = pd.factorize(ts, sort=True)
    keep = codes >= 0  # a row without a timestamp belongs to no bar (as a groupby drops it)
    codes, k = codes[keep], len(uniques)
    n = np.bincount(codes, minlength=k).astype(np.float64)

    def mean(x: np.ndarray) -> np.ndarray:
        return np.bincount(codes, weights=x[keep], minlength=k) / n

    def count(x: np.ndarray) -> np.ndarray:
        return np.bincount(codes, weights=x[keep].astype(np.float64), minlength=k).astype(np.int64)

    gross = mean(pos * nr)
    return pd.DataFrame({
        "gross": gross, "turnover": mean(turnover), "trades": count(turnover > 0), "exposure": mean(np.abs(pos)),
        "long": count(pos > 0), "net": gross - mean(turnover * unit_cost),
    }, index=pd.Index(uniques, name="timestamp"))


def position_returns(
    pos: np.ndarray, next_return: np.ndarray, meta: pd.DataFrame, cost_bps: float, *,
    vol: np.ndarray | None = None, slippage_vol: float = 0.0,
) -> pd.Series:
    """Net portfolio return per timestamp (sorted) of holding positions ``pos`` of each symbol for one bar, net
    of costs and slippage (positions of several versions' rules may be mixed)."""
    return _portfolio(pos, next_return, meta, cost_bps, vol=vol, slippage_vol=slippage_vol)["net"].rename("return")


def strategy_returns(
    pred: np.ndarray, next_return: np.ndarray, meta: pd.DataFrame, cost_bps: float, *,
    rule: PositionRule | None = None, vol: np.ndarray | None = None, slippage_vol: float = 0.0,
) -> pd.Series:
    """Net portfolio return per timestamp (sorted) of holding ``positions(pred, rule, vol)`` of each symbol for
    one bar, net of costs and slippage."""
    return position_returns(positions(pred, rule, vol), next_return, meta, cost_bps, vol=vol,
                            slippage_vol=slippage_vol)


# ------------------------------------------------------------------------------------------------- metrics


@dataclass
class Metrics(Document):
    """Prediction and strategy quality on one evaluation window."""

    directional_accuracy: float = 0.0
    hit_rate: float = 0.0
    rmse: float = 0.0
    mae: float = 0.0
    ic: float = 0.0
    sharpe: float = 0.0
    sortino: float = 0.0
    max_drawdown: float = 0.0
    win_rate: float = 0.0
    profit_factor: float = 0.0
    turnover: float = 0.0
    n_trades: int = 0
    total_return: float = 0.0
    annual_return: float = 0.0
    n_obs: int = 0
    cost_bps: float = 0.0
    exposure: float = 0.0
    long_share: float = 0.0
    slippage_vol: float = 0.0
    error_std: float = 0.0
    """standard deviation of the forecast error ``pred - y``"""
    bias: float = 0.0
    """mean forecast error ``pred - y`` (> 0: the model forecasts too high)"""
    avg_win: float = 0.0
    """mean net return of the periods that gained"""
    avg_loss: float = 0.0
    """mean net loss (a positive number) of the periods that lost"""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Metrics:
        """Inverse of ``to_dict``: unknown keys are ignored (figures of other versions) and missing or null ones
        keep their default (0; ``to_dict`` writes a non-finite figure as null).

        Raises ``ValueError`` naming the field for a value that is not a number.
        """
        names = {f.name for f in fields(cls)}
        return super().from_dict({k: v for k, v in d.items() if k in names and v is not None})


def _finite(x: float, default: float = 0.0) -> float:
    x = float(x)
    return x if math.isfinite(x) else default


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3:
        return 0.0
    ra, rb = stats.rankdata(a), stats.rankdata(b)
    sa, sb = ra.std(), rb.std()
    if sa == 0 or sb == 0:
        return 0.0
    return _finite(np.mean((ra - ra.mean()) * (rb - rb.mean())) / (sa * sb))


def _series_metrics(r: np.ndarray, periods_per_year: float) -> dict[str, float]:
    """Sharpe, Sortino, drawdown, win rate, profit factor and returns of a per-period log-return series."""
    n = len(r)
    keys = ("sharpe", "sortino", "max_drawdown", "win_rate", "profit_factor", "total_return", "annual_return")
    out = dict.fromkeys(keys, 0.0)
    if n == 0:
        return out
    ann = math.sqrt(max(periods_per_year, 0.0))
    mean = float(r.mean())
    sd = float(r.std(ddof=1)) if n > 1 else 0.0
    if sd > 1e-15:
        out["sharpe"] = _finite(mean / sd * ann)
    downside = float(np.sqrt(np.mean(np.minimum(r, 0.0) ** 2)))
    if downside > 1e-15:
        out["sortino"] = _finite(min(mean / downside * ann, RATIO_CAP))
    elif mean > 0:
        out["sortino"] = RATIO_CAP
    cum = np.concatenate([[0.0], np.cumsum(r)])
    out["max_drawdown"] = _finite(float(np.max(1.0 - np.exp(cum - np.maximum.accumulate(cum)))))
    out["win_rate"] = float(np.mean(r > 0))
    gains, losses = float(r[r > 0].sum()), float(-r[r < 0].sum())
    if losses > 0:
        out["profit_factor"] = _finite(min(gains / losses, RATIO_CAP))
    elif gains > 0:
        out["profit_factor"] = RATIO_CAP
    out["total_return"] = _finite(math.expm1(min(float(cum[-1]), 700.0)))
    out["annual_return"] = _finite(math.expm1(min(mean * periods_per_year, 700.0)))
    return out


def evaluate_predictions(
    pred: np.ndarray,
    y: np.ndarray,
    next_return: np.ndarray,
    meta: pd.DataFrame,
    *,
    cost_bps: float,
    periods_per_year: float,
    rule: PositionRule | None = None,
    vol: np.ndarray | None = None,
    slippage_vol: float = 0.0,
) -> Metrics:
    """Score predictions ``pred`` of the label ``y`` and the costed strategy ``positions(pred, rule, vol)``.

    ``meta`` has a ``timestamp`` and a ``symbol`` per row; ``next_return`` is what holding the row's position
    for one bar earns. Every metric is finite (see the module docstring). Raises ``DataError`` when the
    lengths differ.

    One symbol, six daily bars (here the label horizon is one bar, so ``y`` is also the next-bar return):

    >>> import numpy as np, pandas as pd
    >>> meta = pd.DataFrame({"timestamp": pd.date_range("2024-01-01", periods=6, freq="D"), "symbol": "AAA"})
    >>> y = np.array([0.01, -0.02, 0.015, 0.005, -0.01, 0.02])
    >>> pred = np.array([0.002, -0.001, 0.001, -0.003, -0.002, 0.004])
    >>> m = evaluate_predictions(pred, y, y, meta, cost_bps=1.0, periods_per_year=252)
    >>> round(m.directional_accuracy, 3), m.n_trades, m.turnover, round(m.total_return, 4)
    (0.833, 5, 1.5, 0.0715)
    """
    pred = np.asarray(pred, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(pred) != len(y):
        raise DataError(f"length mismatch: pred {len(pred)}, y {len(y)}")
    if len(pred) != len(meta):
        raise DataError(f"length mismatch: pred {len(pred)}, meta {len(meta)}")
    pos = positions(pred, rule, vol)
    port = _portfolio(pos, next_return, meta, cost_bps, vol=vol, slippage_vol=slippage_vol)
    ok = np.isfinite(pred) & np.isfinite(y)
    p, t = pred[ok], y[ok]
    m = Metrics(cost_bps=float(cost_bps), n_obs=len(port), slippage_vol=float(slippage_vol))
    nz = t != 0
    if nz.any():
        m.directional_accuracy = float(np.mean(np.sign(p[nz]) == np.sign(t[nz])))
    if len(p):
        err = p - t
        m.rmse = _finite(np.sqrt(np.mean(err**2)))
        m.mae = _finite(np.mean(np.abs(err)))
        m.ic = _spearman(p, t)
        m.error_std = _finite(np.std(err))
        m.bias = _finite(np.mean(err))
    nr = np.nan_to_num(np.asarray(next_return, dtype=np.float64), nan=0.0)
    active = pos != 0
    if active.any():
        m.hit_rate = float(np.mean(pos[active] * nr[active] > 0))
        m.long_share = float(np.mean(pos[active] > 0))
    m.exposure = _finite(float(np.mean(np.abs(pos)))) if len(pos) else 0.0
    for k, v in _series_metrics(port["net"].to_numpy(), periods_per_year).items():
        setattr(m, k, v)
    if len(port):
        m.turnover = _finite(port["turnover"].mean())
        m.n_trades = int(port["trades"].sum())
        net = port["net"].to_numpy()
        if (net > 0).any():
            m.avg_win = _finite(net[net > 0].mean())
        if (net < 0).any():
            m.avg_loss = _finite(-net[net < 0].mean())
    return m


REGIMES = ("low", "normal", "high")
"""volatility regimes, as ``tideline.triggers`` names them"""


def volatility_regimes(vol: np.ndarray, reference: np.ndarray, *, low_quantile: float = 0.1,
                       high_quantile: float = 0.9) -> np.ndarray:
    """Each row's volatility regime (one of :data:`REGIMES`, as an object array): ``low`` below the
    ``low_quantile`` of the ``reference`` volatilities (say, the training window's), ``high`` above its
    ``high_quantile``, else ``normal`` (also a missing volatility, and every row when there is no finite
    reference). The rule of the triggers' regime detector, applied row by row.

    >>> volatility_regimes(np.array([0.5, 5.0, 9.5, np.nan]), np.arange(1.0, 11.0)).tolist()
    ['low', 'normal', 'high', 'normal']
    """
    return classify_volatility(vol, regime_thresholds(reference, low_quantile, high_quantile))


def regime_thresholds(reference: np.ndarray, low_quantile: float = 0.1, high_quantile: float = 0.9
                      ) -> tuple[float, float] | None:
    """The (low, high) volatility bounds of ``volatility_regimes``: those quantiles of the finite ``reference``
    volatilities; None when there is none."""
    ref = np.asarray(reference, dtype=np.float64)
    ref = ref[np.isfinite(ref)]
    if len(ref) == 0:
        return None
    lo, hi = np.quantile(ref, [low_quantile, high_quantile])
    return float(lo), float(hi)


def classify_volatility(vol: np.ndarray, thresholds: tuple[float, float] | None) -> np.ndarray:
    """Each row's regime against ``(low, high)`` bounds (``regime_thresholds``): ``low`` below the first,
    ``high`` above the second, else ``normal`` (a missing volatility too; every row when there are no bounds).
    """
    v = np.asarray(vol, dtype=np.float64)
    out = np.full(len(v), "normal", dtype=object)
    if thresholds is None:
        return out
    lo, hi = thresholds
    with np.errstate(invalid="ignore"):
        out[v < lo] = "low"
        out[v > hi] = "high"
    return out


def regime_metrics(pred: np.ndarray, y: np.ndarray, next_return: np.ndarray, meta: pd.DataFrame,
                   regimes: np.ndarray, *, min_rows: int = 20, **kw: Any) -> dict[str, Metrics]:
    """``evaluate_predictions`` on the rows of each regime that has at least ``min_rows`` of them (``kw``: its
    keyword arguments; a ``vol`` of one value per row is split with the rows). The rows of one regime are
    scored as one series: a position held into a bar of another regime and out again counts its turnover at
    the regime's next bar, so costs are not lost, only moved."""
    out: dict[str, Metrics] = {}
    regimes = np.asarray(regimes, dtype=object)
    vol = kw.pop("vol", None)
    for name in REGIMES:
        idx = np.flatnonzero(regimes == name)
        if len(idx) < min_rows:
            continue
        out[name] = evaluate_predictions(
            np.asarray(pred)[idx], np.asarray(y)[idx], np.asarray(next_return)[idx],
            meta.iloc[idx].reset_index(drop=True), vol=None if vol is None else np.asarray(vol)[idx], **kw)
    return out


def baseline_metrics(
    y: np.ndarray,
    next_return: np.ndarray,
    last_return: np.ndarray,
    meta: pd.DataFrame,
    *,
    cost_bps: float,
    periods_per_year: float,
    rule: PositionRule | None = None,
    vol: np.ndarray | None = None,
    slippage_vol: float = 0.0,
) -> dict[str, Metrics]:
    """Naive strategies on the same window, net of costs; ``rule``/``vol``/``slippage_vol`` as for the
    candidates (give a ``sign`` rule: a volatility target sizes the baselines' positions too, and then
    buy-and-hold is rebalanced to it).

    - ``buy_and_hold``: long every symbol from its first bar, one entry cost, never rebalanced. It is not
      a forecaster, so its prediction metrics (accuracy, hit rate, rmse, mae, ic) are 0.
    - ``always_long``: the same positions, scored as a forecaster predicting ``+median(|y|)`` every bar.
    - ``last_return_sign``: momentum; position = sign of the last 1-bar return, which is also the forecast.
    """
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    finite_y = np.abs(y[np.isfinite(y)])
    up = float(np.median(finite_y)) if len(finite_y) and np.median(finite_y) > 0 else 1e-6
    long_pred = np.full(n, up)
    kw: dict[str, Any] = dict(cost_bps=cost_bps, periods_per_year=periods_per_year, rule=rule, vol=vol,
                              slippage_vol=slippage_vol)
    always = evaluate_predictions(long_pred, y, next_return, meta, **kw)
    hold = Metrics.from_dict(always.to_dict())
    for k in ("directional_accuracy", "hit_rate", "rmse", "mae", "ic"):
        setattr(hold, k, 0.0)
    momentum = evaluate_predictions(
        np.nan_to_num(np.asarray(last_return, dtype=np.float64), nan=0.0),
        y,
        next_return,
        meta,
        **kw,
    )
    return {"buy_and_hold": hold, "always_long": always, "last_return_sign": momentum}


def infer_periods_per_year(timestamps: np.ndarray) -> float:
    """Bars per year from the data's own spacing.

    Rule, with ``d`` the median spacing of unique timestamps:
    - ``d >= 2 days`` (weekly, monthly bars): ``365.25 days / d``;
    - otherwise ``bars per active calendar day * active days per year``, where active days per year is 365
      when more than 10% of bars fall on a weekend (24/7 markets such as crypto) and 252 otherwise
      (stocks, FX). Daily stock bars give 252, hourly FX about 24 * 252, hourly crypto 24 * 365.
    Fewer than two timestamps: 252.

    >>> import pandas as pd
    >>> infer_periods_per_year(pd.date_range("2024-01-01", periods=100, freq="B").to_numpy())
    252.0
    >>> infer_periods_per_year(pd.date_range("2024-01-01", periods=24 * 14, freq="h").to_numpy())
    8760.0
    """
    ts = np.unique(np.asarray(timestamps).astype("datetime64[ns]"))
    if len(ts) < 2:
        log.warning("cannot infer bar frequency from %d timestamp(s); assuming 252 periods per year", len(ts))
        return 252.0
    d = np.median(np.diff(ts)) / _DAY
    if d >= 2.0:
        return float(365.25 / d)
    days = ts.astype("datetime64[D]")
    n_days = len(np.unique(days))
    bars_per_day = len(ts) / n_days
    dow = (days.view(np.int64) + 3) % 7  # Monday = 0
    weekend_share = float(np.mean(dow >= 5))
    days_per_year = 365.0 if weekend_share > 0.10 else 252.0
    return float(bars_per_day * days_per_year)


# -------------------------------------------------------------------------------------------- significance


@dataclass
class SignificanceResult(Document):
    """Outcome of a one-sided test that ``a`` beats ``b``."""

    method: str
    statistic: float
    p_value: float
    mean_diff: float
    ci_low: float
    ci_high: float
    n: int


def _stationary_indices(n: int, n_samples: int, block: float, rng: np.random.Generator) -> np.ndarray:
    """Politis-Romano stationary bootstrap indices ``(n_samples, n)`` with mean block length ``block``."""
    p = 1.0 / max(block, 1.0)
    new_block = rng.random((n_samples, n)) < p
    new_block[:, 0] = True
    starts = rng.integers(0, n, size=(n_samples, n))
    t = np.broadcast_to(np.arange(n), (n_samples, n))
    last = np.maximum.accumulate(np.where(new_block, t, 0), axis=1)  # where the current block began
    rows = np.arange(n_samples)[:, None]
    return (starts[rows, last] + (t - last)) % n


def paired_bootstrap_test(
    returns_a: np.ndarray,
    returns_b: np.ndarray,
    *,
    n_samples: int = 1000,
    block_size: float | None = None,
    seed: int = 0,
) -> SignificanceResult:
    """One-sided stationary bootstrap test of H0: mean(a - b) <= 0 on the paired difference series.

    The bootstrap distribution of the mean difference is centred on the observed mean to get the null;
    ``p = (1 + #{centred >= observed}) / (1 + n_samples)``. ``ci_low``/``ci_high``: 95% percentile interval
    of the mean difference. Default mean block length: ``sqrt(n)``. Deterministic for a given ``seed``.
    Raises ``DataError`` when the series differ in length; fewer than two finite pairs give ``p_value`` 1.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> b = rng.normal(0.0, 0.01, 500)
    >>> a = b + 0.002 + rng.normal(0.0, 0.001, 500)
    >>> r = paired_bootstrap_test(a, b, n_samples=500, seed=0)
    >>> r.method, r.n, round(r.mean_diff, 3), r.p_value < 0.01
    ('stationary_bootstrap', 500, 0.002, True)
    >>> paired_bootstrap_test(b, a, n_samples=500, seed=0).p_value
    1.0
    """
    a, b = _paired(returns_a, returns_b)
    mean = float((a - b).mean()) if len(a) else 0.0
    return _paired_bootstrap("stationary_bootstrap", a, b, lambda x, y: (x - y).mean(axis=1), mean, min_n=2,
                             n_samples=n_samples, block_size=block_size, seed=seed)


def _paired(returns_a: np.ndarray, returns_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two return series on the same periods, the pairs with a non-finite value dropped; ``DataError`` when
    they differ in length."""
    a = np.asarray(returns_a, dtype=np.float64)
    b = np.asarray(returns_b, dtype=np.float64)
    if len(a) != len(b):
        raise DataError(f"paired series differ in length: {len(a)} vs {len(b)}")
    ok = np.isfinite(a - b)
    return a[ok], b[ok]


def _paired_bootstrap(method: str, a: np.ndarray, b: np.ndarray,
                      stat: Callable[[np.ndarray, np.ndarray], np.ndarray], observed: float, *, min_n: int,
                      n_samples: int, block_size: float | None, seed: int) -> SignificanceResult:
    """One-sided test of H0: ``stat <= 0`` by resampling ``a`` and ``b`` with the same stationary-bootstrap
    indices; ``stat`` maps ``(k, n)`` resamples of both to ``k`` values. The bootstrap distribution is
    centred on ``observed`` to get the null; fewer than ``min_n`` pairs give ``p_value`` 1."""
    n = len(a)
    if n < min_n:
        return SignificanceResult(method, 0.0, 1.0, observed, observed, observed, n)
    block = float(block_size) if block_size else math.sqrt(n)
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_samples, 4_000_000 // n))
    boot = np.empty(n_samples)
    for s in range(0, n_samples, chunk):
        k = min(chunk, n_samples - s)
        idx = _stationary_indices(n, k, block, rng)
        boot[s : s + k] = stat(a[idx], b[idx])
    centred = boot - observed
    tol = 1e-12 * max(1.0, abs(observed))
    p = (1.0 + float(np.sum(centred >= observed - tol))) / (1.0 + n_samples)
    sd = float(boot.std(ddof=1))
    statistic = observed / sd if sd > 0 else 0.0
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return SignificanceResult(method, _finite(statistic), float(min(p, 1.0)), observed, float(lo), float(hi), n)


def _sharpe_rows(x: np.ndarray) -> np.ndarray:
    sd = x.std(axis=1, ddof=1)
    return np.where(sd > 1e-12, x.mean(axis=1) / np.where(sd > 1e-12, sd, 1.0), 0.0)


def sharpe_difference_test(
    returns_a: np.ndarray,
    returns_b: np.ndarray,
    *,
    n_samples: int = 1000,
    block_size: float | None = None,
    seed: int = 0,
) -> SignificanceResult:
    """One-sided paired stationary bootstrap test of H0: Sharpe(a) <= Sharpe(b), on the same periods.

    What "beats a baseline" means for strategies that carry different risk: always-long earns the market's
    drift with the market's volatility, so a test of mean returns would favour it; this compares Sharpe
    ratios. Both series are resampled with the same indices (Politis-Romano, mean block ``sqrt(n)`` by
    default), the bootstrap distribution of the difference is centred on the observed one to get the null,
    ``p = (1 + #{centred >= observed}) / (1 + n_samples)``. ``mean_diff`` is the observed per-period Sharpe
    difference, ``ci_low``/``ci_high`` its 95% percentile interval. Pairs with a non-finite value are
    dropped; fewer than three give ``p_value`` 1. Raises ``DataError`` when the series differ in length.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> market = rng.normal(0.0008, 0.01, 750)  # the baseline: the drift, with the market's risk
    >>> hedged = rng.normal(0.0004, 0.002, 750)  # less return, far less risk: a better Sharpe ratio
    >>> sharpe_difference_test(hedged, market, n_samples=500).p_value < 0.05
    True
    >>> paired_bootstrap_test(hedged, market, n_samples=500).p_value > 0.3  # a test of means would not see it
    True
    """
    a, b = _paired(returns_a, returns_b)
    observed = sharpe_per_period(a) - sharpe_per_period(b) if len(a) >= 3 else 0.0
    return _paired_bootstrap("sharpe_difference_bootstrap", a, b, lambda x, y: _sharpe_rows(x) - _sharpe_rows(y),
                             observed, min_n=3, n_samples=n_samples, block_size=block_size, seed=seed)


def diebold_mariano(loss_a: np.ndarray, loss_b: np.ndarray, horizon: int = 1) -> SignificanceResult:
    """One-sided Diebold-Mariano test that ``a`` has lower expected loss than ``b``.

    ``d = loss_a - loss_b``; long-run variance by Newey-West (Bartlett weights, lag ``horizon - 1``); the
    statistic gets the Harvey-Leybourne-Newbold small-sample correction and a t(n-1) p-value
    (small p: ``a`` is better). ``mean_diff`` is mean(loss_a - loss_b), negative when ``a`` is better.
    """
    la = np.asarray(loss_a, dtype=np.float64)
    lb = np.asarray(loss_b, dtype=np.float64)
    if len(la) != len(lb):
        raise DataError(f"paired losses differ in length: {len(la)} vs {len(lb)}")
    d = la - lb
    d = d[np.isfinite(d)]
    n = len(d)
    h = max(int(horizon), 1)
    if n < 3:
        mean = float(d.mean()) if n else 0.0
        return SignificanceResult("diebold_mariano", 0.0, 1.0, mean, mean, mean, n)
    mean = float(d.mean())
    dc = d - mean
    var = float(np.dot(dc, dc) / n)
    for k in range(1, min(h, n)):
        w = 1.0 - k / h  # Bartlett weight for lag k with bandwidth h - 1
        var += 2.0 * w * float(np.dot(dc[k:], dc[:-k]) / n)
    if var <= 0:
        var = float(np.dot(dc, dc) / n)
    se = math.sqrt(var / n)
    tcrit = float(stats.t.ppf(0.975, n - 1))
    if se <= 1e-300:
        p = 0.0 if mean < 0 else 1.0
        stat = math.copysign(1e12, mean) if mean != 0 else 0.0
        return SignificanceResult("diebold_mariano", stat, p, mean, mean, mean, n)
    correction = math.sqrt(max((n + 1 - 2 * h + h * (h - 1) / n) / n, 1e-12))
    stat = mean / se * correction
    p = float(stats.t.cdf(stat, df=n - 1))
    return SignificanceResult(
        "diebold_mariano", _finite(stat), _finite(p, 1.0), mean, mean - tcrit * se, mean + tcrit * se, n
    )


# ------------------------------------------------------------------------------------------- overfitting
EULER_GAMMA: float = 0.5772156649015329


def sharpe_per_period(returns: np.ndarray) -> float:
    """The Sharpe ratio of a return series per period (not annualised; ``ddof=1``), non-finite values dropped;
    0 for a flat or too short series. What ``deflated_sharpe`` takes as a trial's Sharpe ratio.

    >>> round(sharpe_per_period(np.array([0.01, 0.02, 0.0, float("nan")])), 3)
    1.0
    """
    r = np.asarray(returns, dtype=np.float64)
    r = r[np.isfinite(r)]
    sd = float(r.std(ddof=1)) if len(r) > 1 else 0.0
    return float(r.mean()) / sd if sd > 1e-12 else 0.0


def expected_max_sharpe(sharpe_variance: float, n_trials: int) -> float:
    """The Sharpe ratio the best of ``n_trials`` skill-less strategies reaches by luck (the False Strategy
    theorem, Bailey & Lopez de Prado 2014): ``sqrt(V) * ((1 - g) * Z(1 - 1/N) + g * Z(1 - 1/(N e)))``, with
    ``V`` the variance of the trials' Sharpe ratios, ``g`` Euler's constant and ``Z`` the normal quantile.
    One trial (or no spread between them) gives 0: nothing was selected.

    >>> round(expected_max_sharpe(0.5 / 250, 100), 4)  # the paper's example: 100 trials, V = 1/2 a year
    0.1132
    """
    n = int(n_trials)
    if n <= 1 or not sharpe_variance > 0:
        return 0.0
    z = stats.norm.ppf
    return float(math.sqrt(sharpe_variance)
                 * ((1 - EULER_GAMMA) * z(1 - 1 / n) + EULER_GAMMA * z(1 - 1 / (n * math.e))))


def probabilistic_sharpe(sharpe: float, n_obs: int, skew: float = 0.0, kurtosis: float = 3.0,
                         benchmark: float = 0.0) -> float:
    """The probability that the true Sharpe ratio exceeds ``benchmark``, given ``sharpe`` measured on
    ``n_obs`` returns with that ``skew`` and (non-excess) ``kurtosis`` (Bailey & Lopez de Prado 2012). Both
    ratios per period, not annualised. Fewer than two returns give 0.

    >>> sr0 = expected_max_sharpe(0.5 / 250, 100)  # the 2014 paper's DSR example: SR 2.5 a year, 5 years
    >>> round(probabilistic_sharpe(2.5 / 250 ** 0.5, 1250, skew=-3, kurtosis=10, benchmark=sr0), 4)
    0.9004
    """
    if n_obs < 2 or not math.isfinite(sharpe):
        return 0.0
    var = 1.0 - skew * sharpe + (kurtosis - 1.0) / 4.0 * sharpe**2
    diff = sharpe - benchmark
    if not var > 0:  # heavy skew against a large Sharpe: the estimate's error is undefined; only the sign counts
        return 1.0 if diff > 0 else 0.0
    return float(stats.norm.cdf(diff * math.sqrt(n_obs - 1) / math.sqrt(var)))


@dataclass
class DeflatedSharpe(Document):
    """The deflated Sharpe ratio of one strategy among ``n_trials``: ``value`` is the probability (0-1) that
    its true Sharpe exceeds what the best of that many skill-less trials would show (``benchmark``).
    ``sharpe`` and ``benchmark`` are per period; ``kurtosis`` is non-excess (3 for normal returns).
    """

    value: float
    sharpe: float
    benchmark: float
    n_trials: int
    n_obs: int
    skew: float
    kurtosis: float


def deflated_sharpe(returns: np.ndarray, trial_sharpes: Sequence[float],
                    more_trials: Sequence[float] = ()) -> DeflatedSharpe:
    """The deflated Sharpe ratio (Bailey & Lopez de Prado 2014) of ``returns`` (one per period), the one picked
    among the trials whose per-period Sharpe ratios are ``trial_sharpes`` (every candidate tried, the picked
    one included): the probabilistic Sharpe ratio against ``expected_max_sharpe`` of those trials, counting
    the returns' skew and kurtosis. Non-finite returns are dropped; a flat or too short series gives 0.

    ``more_trials`` are trials measured another way (tuning trials, on the walk-forward folds): they count in
    the number of trials, and the variance is the larger of the candidates' and of theirs, each measured within
    its own periods (pooling them would count the gap between the two periods' levels as dispersion), so that
    counting more trials never lowers the bar.

    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> good = rng.normal(0.003, 0.01, 1000)  # a Sharpe of about 4.7 a year on daily bars
    >>> d = deflated_sharpe(good, [0.3, 0.0, 0.02, -0.01])
    >>> d.n_trials, d.value > 0.95
    (4, True)
    >>> deflated_sharpe(rng.normal(0.0, 0.01, 1000), [0.05, 0.0, 0.02, -0.01]).value < 0.95
    True
    """
    r = np.asarray(returns, dtype=np.float64)
    r = r[np.isfinite(r)]
    trials = np.asarray([s for s in trial_sharpes if math.isfinite(s)], dtype=np.float64)
    more = np.asarray([s for s in more_trials if math.isfinite(s)], dtype=np.float64)
    n_trials = max(len(trials) + len(more), 1)
    variance = max((float(t.var(ddof=1)) if len(t) > 1 else 0.0) for t in (trials, more))
    benchmark = expected_max_sharpe(variance, n_trials)
    sharpe = sharpe_per_period(r)
    if sharpe == 0.0:
        return DeflatedSharpe(0.0, 0.0, benchmark, n_trials, len(r), 0.0, 3.0)
    skew = _finite(float(stats.skew(r)))
    kurt = _finite(float(stats.kurtosis(r, fisher=False)), 3.0)
    value = probabilistic_sharpe(sharpe, len(r), skew, kurt, benchmark)
    return DeflatedSharpe(value, sharpe, benchmark, n_trials, len(r), skew, kurt)


@dataclass
class OverfitProbability(Document):
    """The probability of backtest overfitting by combinatorially symmetric cross-validation: ``pbo`` is the
    share of the ``n_splits`` in/out-of-sample splits where the in-sample best of ``n_strategies`` ranked at
    or below the median out of sample; ``median_logit`` the median of the logits of its out-of-sample rank
    (positive: the in-sample winner tends to stay above the median). ``pbo`` is None with fewer than two
    strategies or too few rows for two blocks (``reason`` says which).
    """

    pbo: float | None
    n_strategies: int
    n_blocks: int
    n_splits: int
    median_logit: float | None = None
    reason: str = ""


def pbo_cscv(returns: np.ndarray, n_blocks: int = 16) -> OverfitProbability:
    """The probability of backtest overfitting (Bailey, Borwein, Lopez de Prado & Zhu 2017) of picking the
    best column of ``returns`` (rows: periods in time order, columns: the strategies tried; rows with a
    non-finite value are dropped). The rows are cut into ``n_blocks`` contiguous blocks (fewer, and even,
    when the rows are few: at least two rows a block); every half of the blocks is once the in-sample set,
    the other half out of sample; the strategy with the best in-sample Sharpe ratio is ranked out of sample.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> noise = rng.normal(0.0, 0.01, (800, 6))
    >>> 0.2 < pbo_cscv(noise).pbo < 0.8  # luck: the in-sample winner is a coin flip out of sample
    True
    >>> skill = noise + np.array([0.003, 0, 0, 0, 0, 0])
    >>> pbo_cscv(skill).pbo
    0.0
    """
    m = np.asarray(returns, dtype=np.float64)
    if m.ndim != 2:
        raise DataError(f"pbo_cscv needs a 2-d array of returns (periods x strategies), got {m.ndim}-d")
    m = m[np.all(np.isfinite(m), axis=1)]
    t, n = m.shape
    s = min(int(n_blocks), t // 2)
    s -= s % 2
    if n < 2 or s < 2:
        why = "fewer than two strategies" if n < 2 else f"{t} periods: too few for two blocks"
        return OverfitProbability(None, n, max(s, 0), 0, None, why)
    blocks = np.array_split(np.arange(t), s)
    cnt = np.array([len(b) for b in blocks], dtype=np.float64)
    sums = np.stack([m[b].sum(axis=0) for b in blocks])  # (s, n)
    sq = np.stack([(m[b] ** 2).sum(axis=0) for b in blocks])
    combos = np.array([[i in c for i in range(s)] for c in itertools.combinations(range(s), s // 2)],
                      dtype=np.float64)  # (k, s): 1 = in sample

    def sharpe(mask: np.ndarray) -> np.ndarray:
        k = (mask @ cnt)[:, None]
        mean = (mask @ sums) / k
        var = ((mask @ sq) - k * mean**2) / np.maximum(k - 1, 1)
        return np.where(var > 1e-24, mean / np.sqrt(np.maximum(var, 1e-24)), 0.0)

    sr_in, sr_out = sharpe(combos), sharpe(1.0 - combos)
    best = np.argmax(sr_in, axis=1)
    chosen = sr_out[np.arange(len(best)), best][:, None]
    rank = (sr_out < chosen).sum(axis=1) + 0.5 * ((sr_out == chosen).sum(axis=1) - 1) + 1  # 1 = worst
    omega = rank / (n + 1)
    logits = np.log(omega / (1 - omega))
    return OverfitProbability(float(np.mean(logits <= 0)), n, s, len(combos), float(np.median(logits)))
