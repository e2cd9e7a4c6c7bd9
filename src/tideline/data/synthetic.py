"""A synthetic market with a planted, regime-dependent signal, for demos and tests.

Per bar ``t`` and symbol ``i`` the log return is

    r[t+1] = mu[t+1] + sigma[t+1] * (rho_i * m[t+1] + sqrt(1 - rho_i^2) * (k[t+1] * P[t] + sqrt(1 - k^2) * e))

with a market factor ``m``, a shared 3-state Markov regime (calm / normal / turbulent) setting drift ``mu``
and volatility ``sigma``, and a predictor built only from what bar ``t`` shows::

    P[t] = w_ret * z[t] + w_ret_x_volume * z[t] * tanh(vz[t]) + w_clv * (clv[t] - 0.5) * 3

where ``z = r / sigma`` (the 1-bar log return in units of the regime volatility), ``vz`` the z-score of
log volume against the last 20 bars (current bar included) and ``clv = (close - low) / (high - low)``.
``k`` is the signal strength; at every index in ``shifts`` its sign flips (and its size changes a little).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.signal import lfilter

from tideline.data.schema import BAR_COLUMNS
from tideline.errors import ConfigError

log = logging.getLogger(__name__)

# regime: calm, normal, turbulent
_REGIMES = ("calm", "normal", "turbulent")
_VOL_MULT = np.array([0.6, 1.0, 2.0])
_DRIFT_SIGMAS = np.array([0.02, 0.0, -0.03])  # drift per bar in units of the bar's volatility
_VOLUME_SHIFT = np.array([-0.2, 0.0, 0.4])  # log-volume level per regime

_WEIGHTS = {"ret": -0.45, "ret_x_volume": 0.55, "clv": -0.45}  # segment 0 signs; flipped at each shift
_CLV_SCALE = 3.0
_VOLUME_WINDOW = 20
_VOLUME_PHI = 0.6


def _rolling_z(x: np.ndarray, window: int) -> np.ndarray:
    """z-score of each row of ``x`` (time x symbols) against the last ``window`` rows, current included."""
    t = x.shape[0]
    c1 = np.cumsum(x, axis=0)
    c2 = np.cumsum(x * x, axis=0)
    s1 = c1.copy()
    s2 = c2.copy()
    s1[window:] -= c1[:-window]
    s2[window:] -= c2[:-window]
    mean = s1 / window
    var = (s2 - window * mean * mean) / (window - 1)
    z = np.zeros_like(x)
    if t >= window:
        sd = np.sqrt(np.maximum(var[window - 1 :], 1e-12))
        z[window - 1 :] = (x[window - 1 :] - mean[window - 1 :]) / sd
    return z


def _segments(n_bars: int, shifts: Sequence[int] | None) -> list[int]:
    if shifts is None:
        return []
    out = sorted({int(s) for s in shifts})
    bad = [s for s in out if not 0 < s < n_bars]
    if bad:
        raise ConfigError(f"shift indices must lie in 1..{n_bars - 1}: got {bad}")
    return out


def synthetic_market(
    n_symbols: int = 20,
    n_bars: int = 50_000,
    *,
    seed: int = 0,
    freq: str = "1h",
    start: str = "2020-01-01",
    shifts: Sequence[int] | None = None,
    regime_switch_prob: float = 0.002,
    signal_strength: float = 0.2,
) -> pd.DataFrame:
    """``n_symbols`` x ``n_bars`` bars with a planted signal whose sign flips at each ``shifts`` index.

    Deterministic for a given seed; sorted by (symbol, timestamp); always passes strict validation.
    ``df.attrs["shift_times"]`` holds the shift timestamps (ISO strings, UTC) and ``df.attrs["signal"]``
    the coefficients per segment (JSON-able, so Parquet writing keeps working).
    """
    if n_symbols < 1 or n_bars < 2:
        raise ConfigError("synthetic_market needs n_symbols >= 1 and n_bars >= 2")
    if not 0 <= regime_switch_prob < 1:
        raise ConfigError("regime_switch_prob must be in [0, 1)")
    if not 0 <= signal_strength < 0.95:
        raise ConfigError("signal_strength must be in [0, 0.95)")
    shift_idx = _segments(n_bars, shifts)
    try:
        times = pd.date_range(start=start, periods=n_bars, freq=freq)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"bad start/freq for synthetic_market: {e}") from None
    if times.tz is not None:
        times = times.tz_convert("UTC").tz_localize(None)

    rng = np.random.default_rng(seed)
    T, N = n_bars, n_symbols

    # shared Markov regimes: at each switch move to one of the two other states
    switch = rng.random(T) < regime_switch_prob
    switch[0] = False
    step = rng.integers(1, 3, size=T)
    state = (1 + np.cumsum(np.where(switch, step, 0))) % 3

    # per-symbol constants
    base_sigma = 0.004 * rng.uniform(0.7, 1.4, N)
    rho = rng.uniform(0.35, 0.65, N)
    price0 = np.exp(rng.uniform(np.log(10.0), np.log(500.0), N))
    volume_level = np.log(rng.uniform(2e4, 2e6, N))

    sigma = base_sigma[None, :] * _VOL_MULT[state][:, None]  # (T, N)
    mu = sigma * _DRIFT_SIGMAS[state][:, None]

    # exogenous shocks
    market = rng.standard_normal(T)
    eps = rng.standard_normal((T, N))
    gap = 0.05 * sigma * rng.standard_normal((T, N))
    wick_up = sigma * rng.exponential(0.5, (T, N))
    wick_dn = sigma * rng.exponential(0.5, (T, N))
    eta = rng.standard_normal((T, N))

    # log volume: AR(1) with shocks, busier on big idiosyncratic moves and in turbulent regimes
    shock = 0.35 * eta + 0.15 * (np.abs(eps) - 0.8)
    lv = lfilter([1.0], [1.0, -_VOLUME_PHI], shock, axis=0)
    lv = lv + volume_level[None, :] + _VOLUME_SHIFT[state][:, None]
    vz = _rolling_z(lv, _VOLUME_WINDOW)
    tvz = np.tanh(vz)

    # signal strength per bar (the bar whose return is generated)
    seg_starts = [0, *shift_idx]
    strengths = [signal_strength]  # sign alternates; size varies a little after the first shift
    for j in range(1, len(shift_idx) + 1):
        strengths.append((-1) ** j * min(0.9, signal_strength * rng.uniform(0.8, 1.2)))
    k = np.empty(T)
    for s, e, kk in zip(seg_starts, [*shift_idx, T], strengths, strict=True):
        k[s:e] = kk

    idio = np.sqrt(1.0 - rho**2)[None, :]
    noise = mu + sigma * (rho[None, :] * market[:, None] + idio * np.sqrt(1.0 - k**2)[:, None] * eps)
    gain = sigma * idio * k[:, None]  # how P[t] enters r[t+1]
    coef_ret = (_WEIGHTS["ret"] + _WEIGHTS["ret_x_volume"] * tvz) / sigma  # P's return part per unit r
    w_clv = _WEIGHTS["clv"] * _CLV_SCALE

    # the only sequential part: r[t+1] depends on bar t through P[t]
    r = np.empty((T, N))
    r[0] = noise[0]
    body_all = np.empty((T, N))
    for t in range(T - 1):
        rt = r[t]
        b = rt - gap[t]
        body_all[t] = b
        clv = (np.maximum(b, 0.0) + wick_dn[t]) / (np.abs(b) + wick_up[t] + wick_dn[t])
        p = rt * coef_ret[t] + w_clv * (clv - 0.5)
        r[t + 1] = noise[t + 1] + gain[t + 1] * p
    body_all[T - 1] = r[T - 1] - gap[T - 1]

    # prices from returns; bars consistent by construction
    close = price0[None, :] * np.exp(np.cumsum(r, axis=0))
    prev_close = np.vstack([price0[None, :], close[:-1]])
    open_ = prev_close * np.exp(gap)
    high = open_ * np.exp(np.maximum(body_all, 0.0) + wick_up)
    low = open_ * np.exp(np.minimum(body_all, 0.0) - wick_dn)
    high = np.maximum(high, np.maximum(open_, close))
    low = np.minimum(low, np.minimum(open_, close))
    volume = np.maximum(np.round(np.exp(lv)), 1.0)

    names = [f"SYM{i:03d}" for i in range(N)] if N <= 1000 else [f"SYM{i:05d}" for i in range(N)]
    df = pd.DataFrame(
        {
            "timestamp": np.tile(times.to_numpy(dtype="datetime64[ns]"), N),
            "symbol": pd.Series(np.repeat(np.array(names, dtype=object), T), dtype=str),
            "open": open_.T.ravel(),
            "high": high.T.ravel(),
            "low": low.T.ravel(),
            "close": close.T.ravel(),
            "volume": volume.T.ravel(),
        },
        columns=BAR_COLUMNS,
    )
    shift_times = [times[s].isoformat() for s in shift_idx]
    ends = [*shift_idx, T]
    signal: dict[str, Any] = {
        "predictor": "P = ret*z + ret_x_volume*z*tanh(vz) + clv*(clv-0.5)*3; next return gets k*P",
        "definitions": {
            "z": "1-bar log return / regime volatility (proxy: 1-bar return / its rolling std)",
            "vz": f"z-score of log volume over the last {_VOLUME_WINDOW} bars, current included",
            "clv": "(close - low) / (high - low)",
        },
        "segments": [
            {
                "start_index": int(s),
                "end_index": int(e),
                "start": times[s].isoformat(),
                "strength": float(kk),
                "weights": {name: float(w * np.sign(kk)) if kk else float(w) for name, w in _WEIGHTS.items()},
            }
            for s, e, kk in zip(seg_starts, ends, strengths, strict=True)
        ],
        "regime_share": {name: float(np.mean(state == i)) for i, name in enumerate(_REGIMES)},
    }
    df.attrs["shift_times"] = shift_times
    df.attrs["shift_index"] = [int(s) for s in shift_idx]
    df.attrs["signal"] = signal
    df.attrs["seed"] = int(seed)
    log.debug("synthetic market: %d symbols x %d bars, shifts at %s", N, T, shift_times)
    return df
