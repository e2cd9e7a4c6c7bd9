"""Features and labels for bar data, computed per symbol with no look-ahead.

Every feature at row ``t`` uses only bars of the same symbol at times ``<= t`` (cross-sectional ranks use
other symbols' features at the same timestamp, which obey the same rule). Features are scale-free (log
returns, ratios, z-scores), warm-up rows are NaN and never back-filled, and ``inf`` becomes NaN.

The work is a loop over symbols (not rows) with vectorised numpy / pandas rolling inside each symbol, so
each symbol's values depend on nothing but its own past.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pandas.api.indexers import BaseIndexer
from scipy.stats import rankdata

from tideline.config import LABELS, FeatureConfig
from tideline.documents import Document
from tideline.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FEATURES_VERSION = 1
"""Bumped whenever a feature's definition changes; part of :func:`feature_config_hash`."""

SEQ_CHANNELS: tuple[str, ...] = ("ret", "range", "vz")
"""Sequence channels: 1-bar log return, log(high/low), log-volume z-score over 20 bars."""

_SEQ_VZ_WINDOW = 20
_PRICE_COLUMNS = ("open", "high", "low", "close", "volume")
_LN2 = math.log(2.0)


@dataclass
class FeatureSpec(Document):
    """Which columns a model consumes: tabular features plus a lagged sequence block."""

    tabular: list[str]
    sequence: list[str]
    channels: list[str]
    seq_len: int

    @property
    def all_columns(self) -> list[str]:
        """Tabular then sequence columns (the order of ``Dataset.X``)."""
        return [*self.tabular, *self.sequence]

    def sequence_array(self, X: pd.DataFrame) -> np.ndarray:
        """The sequence block as float32 ``(n, seq_len, n_channels)``, oldest bar first."""
        missing = [c for c in self.sequence if c not in X.columns]
        if missing:
            raise DataError(f"feature frame lacks {len(missing)} sequence columns, e.g. {missing[0]}")
        arr = X[self.sequence].to_numpy(dtype=np.float32)
        # columns are grouped by channel, each channel oldest -> newest
        return np.ascontiguousarray(arr.reshape(len(X), len(self.channels), self.seq_len).transpose(0, 2, 1))


def sequence_columns(channels: list[str] | tuple[str, ...], seq_len: int) -> list[str]:
    """``seq_{channel}_l{lag}`` for each channel, lags from ``seq_len-1`` (oldest) down to 0 (newest)."""
    return [f"seq_{ch}_l{k}" for ch in channels for k in range(seq_len - 1, -1, -1)]


@dataclass
class Dataset:
    """Model-ready rows sorted by (timestamp, symbol): features, forward-return label, next-bar return."""

    X: pd.DataFrame
    y: np.ndarray
    next_return: np.ndarray
    meta: pd.DataFrame
    spec: FeatureSpec
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.X)

    def subset(self, idx: np.ndarray | list[int] | slice) -> Dataset:
        """Rows at positions ``idx`` (index reset)."""
        if isinstance(idx, slice):
            idx = np.arange(len(self))[idx]
        idx = np.asarray(idx)
        return Dataset(
            X=self.X.iloc[idx].reset_index(drop=True),
            y=self.y[idx],
            next_return=self.next_return[idx],
            meta=self.meta.iloc[idx].reset_index(drop=True),
            spec=self.spec,
            info=dict(self.info),
        )


# ----------------------------------------------------------------------------------------------- helpers


LABEL_FIELDS = frozenset({"label", "label_window"})
"""What the models learn, not what they see: stored with the version, left out of the features' hash."""


def feature_config_hash(cfg: FeatureConfig) -> str:
    """First 16 hex chars of sha256 over canonical JSON of the config's feature fields (plus
    :data:`FEATURES_VERSION`); the label fields are left out: two configs that differ only in the label compute
    the same features (and versions stored before labels were configurable keep their hash)."""
    payload = {"features_version": FEATURES_VERSION, "config": cfg.model_dump(mode="json", exclude=set(LABEL_FIELDS))}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def stored_feature_config(version: str, stored: dict[str, Any] | None, stored_hash: str) -> FeatureConfig:
    """The feature config a version was trained with, as stored with it; ``DataError`` naming the version when
    it does not load or does not match its stored hash (the features would not be the ones it learned from)."""
    try:
        cfg = FeatureConfig.model_validate(stored or {})
    except ValueError as e:
        raise DataError(f"{version}'s stored feature config does not load: {' '.join(str(e).split())[:200]}") \
            from None
    if stored_hash and feature_config_hash(cfg) != stored_hash:
        raise DataError(f"{version}'s stored feature config does not match its hash {stored_hash}")
    return cfg


def _check_cfg(cfg: FeatureConfig) -> None:
    for name in ("return_windows", "sma_windows"):
        if not getattr(cfg, name) or min(getattr(cfg, name)) < 1:
            raise ConfigError(f"features.{name} must be a non-empty list of windows >= 1")
    for name in ("vol_windows", "volume_windows"):
        if not getattr(cfg, name) or min(getattr(cfg, name)) < 2:
            raise ConfigError(f"features.{name} must be a non-empty list of windows >= 2")
    if cfg.rsi_window < 2 or cfg.bollinger_window < 2:
        raise ConfigError("features.rsi_window and features.bollinger_window must be >= 2")


def _ref_window(windows: list[int], preferred: int) -> int:
    """``preferred`` if configured, else the middle of the sorted windows."""
    ws = sorted(set(windows))
    return preferred if preferred in ws else ws[len(ws) // 2]


def _lag(x: np.ndarray, k: int) -> np.ndarray:
    """``x`` shifted ``k`` bars later (``k`` > 0: past values; ``k`` < 0: future values)."""
    out = np.full_like(x, np.nan)
    if k == 0:
        out[:] = x
    elif k > 0 and k < len(x):
        out[k:] = x[:-k]
    elif k < 0 and -k < len(x):
        out[:k] = x[-k:]
    return out


def _div(num: np.ndarray, den: np.ndarray, neutral: float) -> np.ndarray:
    """num/den; ``neutral`` where den == 0, NaN where either is NaN."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = num / den
    out[(den == 0) & np.isfinite(num)] = neutral
    return out


def _prepare(bars: pd.DataFrame, columns: tuple[str, ...] = _PRICE_COLUMNS
             ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray | None]:
    """Arrays sorted by (symbol, timestamp), segment starts/ends, and the sort order if one was needed."""
    missing = [c for c in ("timestamp", "symbol", *columns) if c not in bars.columns]
    if missing:
        raise DataError(f"bars lack columns {missing}")
    if len(bars) == 0:
        raise DataError("no bars to compute features from")
    ts = bars["timestamp"].to_numpy()
    if not np.issubdtype(ts.dtype, np.datetime64):
        raise DataError("bars.timestamp must be datetime64 (validate the bars first)")
    ts = ts.astype("datetime64[ns]").view(np.int64)
    codes, _ = pd.factorize(bars["symbol"], sort=True)
    dc, dt = np.diff(codes), np.diff(ts)
    order: np.ndarray | None = None
    if not bool(np.all((dc > 0) | ((dc == 0) & (dt >= 0)))):
        log.debug("bars not sorted by (symbol, timestamp); sorting a copy")
        order = np.lexsort((ts, codes))
        codes, ts = codes[order], ts[order]
    arrays = {"ts": ts, "code": codes}
    for col in columns:
        a = bars[col].to_numpy(dtype=np.float64)
        arrays[col] = a[order] if order is not None else a
    cut = np.flatnonzero(np.diff(codes)) + 1
    starts = np.concatenate([[0], cut]).astype(np.int64)
    ends = np.concatenate([cut, [len(codes)]]).astype(np.int64)
    return arrays, starts, ends, order


# ----------------------------------------------------------------------------------------- per symbol


def _tabular_names(cfg: FeatureConfig) -> list[str]:
    vw = sorted(set(cfg.vol_windows))
    bw = cfg.bollinger_window
    names = [f"ret_{w}" for w in sorted(set(cfg.return_windows))]
    for w in vw:
        names += [f"rvol_{w}", f"pvol_{w}", f"gkvol_{w}"]
    names += ["vol_ratio", "ret_z"]
    names += [f"rsi_{cfg.rsi_window}", "macd", "macd_signal", "macd_hist", f"roc_{cfg.rsi_window}"]
    for w in sorted(set(cfg.sma_windows)):
        names += [f"sma_ratio_{w}", f"ema_ratio_{w}"]
    names += [f"bb_pctb_{bw}", f"bb_width_{bw}", f"stoch_{bw}", f"dist_high_{bw}", f"dist_low_{bw}"]
    names += [f"vz_{w}" for w in sorted(set(cfg.volume_windows))]
    names += ["dlogv", "hl_range", "clv", "body", "upper_wick", "lower_wick", "gap"]
    return names


@dataclass(frozen=True)
class _Segments:
    """The symbols of (symbol, time)-sorted rows: per row, where its symbol's bars start and its position
    there. The features of every symbol are computed in one pass over the rows, each window and each
    exponential average restarting at its symbol's first bar — the same bits as one symbol at a time."""

    start: np.ndarray
    pos: np.ndarray
    code: np.ndarray
    starts: np.ndarray
    ends: np.ndarray

    @classmethod
    def of(cls, starts: np.ndarray, ends: np.ndarray) -> _Segments:
        lengths = ends - starts
        start = np.repeat(starts, lengths)
        return cls(start, np.arange(int(lengths.sum())) - start, np.repeat(np.arange(len(starts)), lengths),
                   starts.astype(np.int64), ends.astype(np.int64))


    @property
    def one(self) -> bool:
        """A single symbol."""
        return len(self.starts) == 1


class _SegmentWindow(BaseIndexer):
    """Trailing windows of ``window_size`` rows that never reach back past their symbol's first bar (pandas
    restarts its running sums at such a window, so each symbol gets exactly its own bits)."""

    def __init__(self, start: np.ndarray, window_size: int) -> None:
        super().__init__(window_size=window_size)
        self.seg_start = start

    def get_window_bounds(self, num_values: int = 0, min_periods: int | None = None, center: bool | None = None,
                          closed: str | None = None, step: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        end = np.arange(1, num_values + 1, dtype=np.int64)
        return np.maximum(end - self.window_size, self.seg_start).astype(np.int64), end


_FEW_SEGMENTS = 32

try:  # the kernel behind pandas' ewm().mean(); the public groupby-ewm below gives the same bits, slower
    from pandas._libs.window.aggregations import ewm as _ewm_kernel
    from pandas.core.window.ewm import get_center_of_mass as _center_of_mass
except ImportError:  # pragma: no cover - a pandas that moved them
    _ewm_kernel = None


def _rolling(x: np.ndarray, w: int, how: str, seg: _Segments) -> np.ndarray:
    """pandas' rolling ``how`` (mean, std, max, min) over ``w`` bars of each symbol."""
    if seg.one:
        return getattr(pd.Series(x, copy=False).rolling(w, min_periods=w), how)().to_numpy()
    return getattr(pd.Series(x, copy=False).rolling(_SegmentWindow(seg.start, w), min_periods=w), how)().to_numpy()


def _ewm(x: np.ndarray, min_periods: int, seg: _Segments, **kw: float) -> np.ndarray:
    """pandas' ``ewm(adjust=False).mean()`` of each symbol, from its first bar."""
    if _ewm_kernel is not None:  # pandas' own kernel over every symbol's bounds at once (what groupby-ewm runs)
        com = _center_of_mass(None, kw.get("span"), None, kw.get("alpha"))
        vals = np.where(np.isinf(x), np.nan, np.asarray(x, dtype=np.float64))
        return _ewm_kernel(vals, seg.starts, seg.ends, max(int(min_periods), 1), com, False, False, None, True)
    return pd.Series(x, copy=False).groupby(seg.code, sort=False).ewm(
        adjust=False, min_periods=min_periods, **kw).mean().to_numpy()


def _lag_at(x: np.ndarray, k: int, seg: _Segments, rows: np.ndarray) -> np.ndarray:
    """``_slag(x, k, seg)[rows]`` without shifting the whole array."""
    return np.where(seg.pos[rows] >= k, x[np.maximum(rows - k, 0)], np.nan)


def _slag(x: np.ndarray, k: int, seg: _Segments) -> np.ndarray:
    """``x`` shifted ``k`` >= 0 bars later within each symbol (NaN for its first ``k`` bars)."""
    out = _lag(x, k)
    out[seg.pos < k] = np.nan
    return out


def _symbol_features(a: dict[str, np.ndarray], cfg: FeatureConfig, seg: _Segments) -> dict[str, np.ndarray]:
    """All per-symbol tabular features plus the sequence channels of (symbol, time)-sorted bars, every symbol
    in one pass (``_Segments``); each symbol's values are exactly what it would get alone."""
    o, h, lo, c, v = a["open"], a["high"], a["low"], a["close"], a["volume"]
    f: dict[str, np.ndarray] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        logc = np.log(c)
        r1 = logc - _slag(logc, 1, seg)
        for w in sorted(set(cfg.return_windows)):
            f[f"ret_{w}"] = logc - _slag(logc, w, seg)
        hl = np.log(h / lo)
        co = np.log(c / o)
        logv = np.log1p(np.maximum(v, 0.0))
        rng = h - lo
        hl2 = hl * hl
        gk = 0.5 * hl * hl - (2.0 * _LN2 - 1.0) * co * co
        for w in sorted(set(cfg.vol_windows)):
            f[f"rvol_{w}"] = _rolling(r1, w, "std", seg)
            f[f"pvol_{w}"] = np.sqrt(_rolling(hl2, w, "mean", seg) / (4.0 * _LN2))
            f[f"gkvol_{w}"] = np.sqrt(np.maximum(_rolling(gk, w, "mean", seg), 0.0))
        vw = sorted(set(cfg.vol_windows))
        f["vol_ratio"] = np.log(f[f"rvol_{vw[0]}"] / f[f"rvol_{vw[-1]}"])
        ref_vol = f"rvol_{_ref_window(cfg.vol_windows, 20)}"
        f["ret_z"] = _div(r1, f[ref_vol], 0.0)

        # RSI (Wilder smoothing), centred to [-0.5, 0.5]
        n = cfg.rsi_window
        diff = pd.Series(c - _slag(c, 1, seg), copy=False)
        gain = _ewm(diff.clip(lower=0).to_numpy(), n, seg, alpha=1.0 / n)
        loss = _ewm((-diff).clip(lower=0).to_numpy(), n, seg, alpha=1.0 / n)
        f[f"rsi_{n}"] = _div(gain, gain + loss, 0.5) - 0.5

        # MACD (12, 26, 9) normalised by price
        ema12 = _ewm(c, 26, seg, span=12)
        ema26 = _ewm(c, 26, seg, span=26)
        macd = (ema12 - ema26) / c
        signal = _ewm(macd, 9, seg, span=9)
        f["macd"], f["macd_signal"], f["macd_hist"] = macd, signal, macd - signal
        f[f"roc_{n}"] = c / _slag(c, n, seg) - 1.0

        for w in sorted(set(cfg.sma_windows)):
            sma = _rolling(c, w, "mean", seg)
            ema = _ewm(c, w, seg, span=w)
            f[f"sma_ratio_{w}"] = c / sma - 1.0
            f[f"ema_ratio_{w}"] = c / ema - 1.0

        bw = cfg.bollinger_window
        m = _rolling(c, bw, "mean", seg)
        s = _rolling(c, bw, "std", seg)
        f[f"bb_pctb_{bw}"] = _div(c - (m - 2.0 * s), 4.0 * s, 0.5)
        f[f"bb_width_{bw}"] = 4.0 * s / m
        hh = _rolling(h, bw, "max", seg)
        ll = _rolling(lo, bw, "min", seg)
        f[f"stoch_{bw}"] = _div(c - ll, hh - ll, 0.5)
        f[f"dist_high_{bw}"] = np.log(c / hh)
        f[f"dist_low_{bw}"] = np.log(c / ll)

        vz_windows = sorted(set(cfg.volume_windows) | {_SEQ_VZ_WINDOW})
        vz: dict[int, np.ndarray] = {}
        for w in vz_windows:
            mu = _rolling(logv, w, "mean", seg)
            sd = _rolling(logv, w, "std", seg)
            vz[w] = _div(logv - mu, sd, 0.0)
        for w in sorted(set(cfg.volume_windows)):
            f[f"vz_{w}"] = vz[w]
        f["dlogv"] = logv - _slag(logv, 1, seg)

        f["hl_range"] = hl
        f["clv"] = _div(c - lo, rng, 0.5)
        f["body"] = _div(c - o, rng, 0.0)
        f["upper_wick"] = _div(h - np.maximum(o, c), rng, 0.0)
        f["lower_wick"] = _div(np.minimum(o, c) - lo, rng, 0.0)
        f["gap"] = np.log(o / _slag(c, 1, seg))

        f["_ch_ret"], f["_ch_range"], f["_ch_vz"] = r1, hl, vz[_SEQ_VZ_WINDOW]
    return f


def _calendar(ts_ns: np.ndarray) -> dict[str, np.ndarray]:
    """Hour-of-day, day-of-week and month as sin/cos pairs (from the bar's own timestamp)."""
    day_ns = 86_400 * 10**9
    days = np.floor_divide(ts_ns, day_ns)
    hour = (ts_ns - days * day_ns) / 3.6e12
    dow = (days + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    month = ts_ns.view("datetime64[ns]").astype("datetime64[M]").astype(np.int64) % 12
    two_pi = 2.0 * np.pi
    return {
        "hour_sin": np.sin(two_pi * hour / 24.0),
        "hour_cos": np.cos(two_pi * hour / 24.0),
        "dow_sin": np.sin(two_pi * dow / 7.0),
        "dow_cos": np.cos(two_pi * dow / 7.0),
        "month_sin": np.sin(two_pi * month / 12.0),
        "month_cos": np.cos(two_pi * month / 12.0),
    }


def _cs_rank_sorted(ts_ns: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Percentile rank (average ties, in (0, 1]) of ``values`` among rows sharing a timestamp; NaN stays NaN.

    Sort-based; used when the timestamp x symbol grid would be too sparse for :func:`_cs_rank_dense`.
    """
    n = len(values)
    out = np.full(n, np.nan)
    ok = np.flatnonzero(np.isfinite(values))
    if len(ok) == 0:
        return out
    t, x = ts_ns[ok], values[ok]
    order = np.lexsort((x, t))
    ts_s, xs = t[order], x[order]
    new_group = np.empty(len(order), dtype=bool)
    new_group[0] = True
    new_group[1:] = ts_s[1:] != ts_s[:-1]
    gid = np.cumsum(new_group) - 1
    gstart = np.flatnonzero(new_group)
    gsize = np.diff(np.append(gstart, len(order)))
    new_run = new_group.copy()  # runs of equal values within a group share the average rank
    new_run[1:] |= xs[1:] != xs[:-1]
    rid = np.cumsum(new_run) - 1
    rstart = np.flatnonzero(new_run)
    rlen = np.diff(np.append(rstart, len(order)))
    avg_rank = (rstart - gstart[gid[rstart]]) + (rlen + 1) / 2.0
    res = np.empty(len(order))
    res[order] = avg_rank[rid] / gsize[gid]
    out[ok] = res
    return out


def _cs_rank_dense(
    gid: np.ndarray, code: np.ndarray, n_groups: int, n_codes: int, values: np.ndarray
) -> np.ndarray:
    """Same as :func:`_cs_rank_sorted` on a dense (timestamp x symbol) grid; fast when symbols share times."""
    grid = np.full((n_groups, n_codes), np.nan)
    grid[gid, code] = values
    ranks = rankdata(grid, axis=1, method="average", nan_policy="omit")
    counts = np.isfinite(grid).sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        pct = ranks / counts
    return pct[gid, code]


# ----------------------------------------------------------------------------------------------- public


def compute_features(bars: pd.DataFrame, cfg: FeatureConfig) -> tuple[pd.DataFrame, FeatureSpec]:
    """Features aligned to ``bars`` rows (same index): ``timestamp``, ``symbol`` and float32 feature columns.

    Row ``t`` uses only its symbol's bars at times ``<= t`` (and, for ``cs_rank_*``, other symbols' features
    at the same timestamp). Warm-up rows are NaN. Cross-sectional ranks are added when there are at least
    three symbols and ``cfg.cross_sectional``; calendar features when ``cfg.calendar``.
    """
    buf, spec = _feature_matrix(bars, cfg)
    frame = pd.DataFrame(buf.T, columns=spec.all_columns, index=bars.index, copy=False)
    frame.insert(0, "symbol", bars["symbol"].to_numpy())
    frame.insert(0, "timestamp", bars["timestamp"].to_numpy().astype("datetime64[ns]"))
    return frame, spec


def _feature_matrix(bars: pd.DataFrame, cfg: FeatureConfig, *, last_only: bool = False,
                    prepared: tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray | None] | None = None,
                    ) -> tuple[np.ndarray, FeatureSpec]:
    """Float32 ``(n_features, n_rows)`` matrix in ``bars`` row order, and its spec.

    ``last_only``: only each symbol's last bar, in symbol order (``n_features x n_symbols``; what the predictor
    needs): the same bits as those columns of the whole matrix, without assembling the rest. ``prepared``:
    ``_prepare(bars)`` when the caller has it already.
    """
    _check_cfg(cfg)
    arrays, starts, ends, order = prepared if prepared is not None else _prepare(bars)
    n = len(arrays["ts"])
    n_symbols = len(starts)
    tabular = _tabular_names(cfg)
    cal = cfg.calendar
    if cal:
        tabular += ["hour_sin", "hour_cos", "dow_sin", "dow_cos", "month_sin", "month_cos"]
    rets = sorted(set(cfg.return_windows))
    cs_sources = [f"ret_{w}" for w in (1, 5, 20) if w in rets]
    cs_sources += [f"rvol_{_ref_window(cfg.vol_windows, 20)}", f"vz_{_ref_window(cfg.volume_windows, 20)}"]
    use_cs = cfg.cross_sectional and n_symbols >= 3
    if use_cs:
        tabular += [f"cs_rank_{s}" for s in cs_sources]
    channels = list(SEQ_CHANNELS)
    seq_len = cfg.seq_len
    sequence = sequence_columns(channels, seq_len)
    columns = [*tabular, *sequence]
    col_idx = {c: i for i, c in enumerate(columns)}

    out_rows = ends - 1 if last_only else np.arange(n)  # sorted positions of the columns of buf
    buf = np.empty((len(columns), len(out_rows)), dtype=np.float32)  # one row per feature: column-contiguous
    cs_rows = np.flatnonzero(np.isin(arrays["ts"], arrays["ts"][out_rows])) if last_only and use_cs else None
    cs_vals = {src: np.empty(len(cs_rows)) for src in cs_sources} if cs_rows is not None else {}
    # few long symbols: one at a time (a small working set); many: all in one pass (a few calls in all)
    parts = [(0, n, _Segments.of(starts, ends))] if n_symbols > _FEW_SEGMENTS else [
        (s, e, _Segments.of(np.array([0]), np.array([e - s]))) for s, e in zip(starts.tolist(), ends.tolist(),
                                                                          strict=True)]
    for s, e, seg in parts:
        feats = _symbol_features({k: arrays[k][s:e] for k in _PRICE_COLUMNS}, cfg, seg)
        lo_, hi_ = np.searchsorted(out_rows, [s, e])
        local = out_rows[lo_:hi_] - s  # the part's rows that are output
        for name, values in feats.items():
            if not name.startswith("_ch_"):
                buf[col_idx[name], lo_:hi_] = values[local]
        for ch in channels:
            x = feats[f"_ch_{ch}"]
            for k in range(seq_len):
                buf[col_idx[f"seq_{ch}_l{k}"], lo_:hi_] = (_slag(x, k, seg)[local] if not last_only else
                                                            _lag_at(x, k, seg, local))
        if cs_rows is not None:  # other symbols' values at the output bars' times, rounded as buf rounds them
            c_lo, c_hi = np.searchsorted(cs_rows, [s, e])
            for src in cs_sources:
                cs_vals[src][c_lo:c_hi] = feats[src][cs_rows[c_lo:c_hi] - s].astype(np.float32)
    if cal:
        for name, values in _calendar(arrays["ts"][out_rows]).items():
            buf[col_idx[name]] = values
    np.putmask(buf, ~np.isfinite(buf), np.float32(np.nan))
    if cs_rows is not None:
        pick = np.searchsorted(cs_rows, out_rows)
        for src in cs_sources:
            vals = np.where(np.isfinite(cs_vals[src]), cs_vals[src], np.nan)
            buf[col_idx[f"cs_rank_{src}"]] = _cs_rank_sorted(arrays["ts"][cs_rows], vals)[pick]
    elif use_cs:
        uniq_ts, gid = np.unique(arrays["ts"], return_inverse=True)
        dense = len(uniq_ts) * n_symbols <= 4 * n + 1_000_000
        for src in cs_sources:
            vals = buf[col_idx[src]].astype(np.float64)
            if dense:
                ranks = _cs_rank_dense(gid, arrays["code"], len(uniq_ts), n_symbols, vals)
            else:
                ranks = _cs_rank_sorted(arrays["ts"], vals)
            buf[col_idx[f"cs_rank_{src}"]] = ranks

    if order is not None and not last_only:  # back to the caller's row order
        inv = np.empty_like(order)
        inv[order] = np.arange(n)
        buf = buf[:, inv]
    spec = FeatureSpec(tabular=tabular, sequence=sequence, channels=channels, seq_len=seq_len)
    log.debug("computed %d features for %d rows, %d symbols", len(columns), n, n_symbols)
    return buf, spec


def compute_labels(bars: pd.DataFrame, horizon: int, label: str = "raw", window: int = 20) -> pd.DataFrame:
    """``fwd_return`` = log(close[t+h]/close[t]), ``direction`` (1 up, 0 down or flat, NaN unknown),
    ``next_return`` = log(close[t+1]/close[t]) and ``target`` (what the models learn, ``FeatureConfig.label``),
    per symbol, aligned to ``bars`` rows; NaN at each tail.

    ``target`` by ``label``: ``raw`` the forward return; ``vol_scaled`` divided by sqrt(h) times the standard
    deviation of the last ``window`` one-bar returns; ``demeaned_rolling`` minus h times their mean;
    ``demeaned_cross_section`` minus the mean forward return of the symbols at the same bar (needs two or more
    symbols); ``direction`` its sign (+1, -1, 0). Volatility and trailing mean end at bar t (no look-ahead).
    Raises ``ConfigError`` naming the setting when the label makes no sense for the data.
    """
    if horizon < 1:
        raise ConfigError("label horizon must be >= 1")
    if label not in LABELS:
        raise ConfigError(f"features.label={label!r} is not one of {', '.join(LABELS)}")
    if label == "demeaned_cross_section":
        n_sym = bars["symbol"].nunique() if len(bars) else 0
        if n_sym < 2:
            raise ConfigError(f"features.label=demeaned_cross_section needs two or more symbols; the data has "
                              f"{n_sym}", hint="use demeaned_rolling for one symbol")
    arrays, starts, ends, order = _prepare(bars, ("close",))
    n = len(arrays["ts"])
    fwd = np.full(n, np.nan)
    nxt = np.full(n, np.nan)
    target = np.full(n, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        logc = np.log(arrays["close"])
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            x = logc[s:e]
            fwd[s:e] = _lag(x, -horizon) - x
            nxt[s:e] = _lag(x, -1) - x
            if label in ("vol_scaled", "demeaned_rolling"):
                roll = pd.Series(x - _lag(x, 1)).rolling(window, min_periods=window)
                if label == "vol_scaled":
                    target[s:e] = fwd[s:e] / (roll.std().to_numpy() * math.sqrt(horizon))
                else:
                    target[s:e] = fwd[s:e] - horizon * roll.mean().to_numpy()
    fwd[~np.isfinite(fwd)] = np.nan
    nxt[~np.isfinite(nxt)] = np.nan
    if label == "raw":
        target = fwd.copy()
    elif label == "direction":
        target = np.sign(fwd)
    elif label == "demeaned_cross_section":
        by_time = pd.Series(fwd).groupby(arrays["ts"]).transform("mean").to_numpy()
        target = fwd - by_time
    target[~np.isfinite(target)] = np.nan
    direction = np.where(np.isnan(fwd), np.nan, (fwd > 0).astype(np.float64))
    if order is not None:
        inv = np.empty_like(order)
        inv[order] = np.arange(n)
        fwd, direction, nxt, target = fwd[inv], direction[inv], nxt[inv], target[inv]
    return pd.DataFrame({"fwd_return": fwd, "direction": direction, "next_return": nxt, "target": target},
                        index=bars.index)


def _sorted_rows(bars: pd.DataFrame, keep: np.ndarray) -> np.ndarray:
    """Positions of ``keep`` rows ordered by (timestamp, symbol)."""
    rows = np.flatnonzero(keep)
    ts = bars["timestamp"].to_numpy()[rows]
    sym = pd.factorize(bars["symbol"].to_numpy()[rows], sort=True)[0]
    return rows[np.lexsort((sym, ts))]


def _complete_rows(buf: np.ndarray) -> np.ndarray:
    """Boolean mask of columns (rows of the data) where every feature is finite."""
    keep = np.ones(buf.shape[1], dtype=bool)
    for row in buf:  # one feature at a time keeps the temporaries small
        keep &= np.isfinite(row)
    return keep


def _take(
    bars: pd.DataFrame, buf: np.ndarray, spec: FeatureSpec, rows: np.ndarray
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(X, meta) of the given rows, in that order."""
    X = pd.DataFrame(np.take(buf, rows, axis=1).T, columns=spec.all_columns, copy=False)
    meta = pd.DataFrame(
        {
            "timestamp": bars["timestamp"].to_numpy().astype("datetime64[ns]")[rows],
            "symbol": bars["symbol"].to_numpy()[rows],
        }
    )
    return X, meta


def build_dataset(bars: pd.DataFrame, cfg: FeatureConfig) -> Dataset:
    """Features + labels; rows with any NaN feature or label dropped; sorted by (timestamp, symbol).

    ``bars`` are validated bars (``tideline.data.validate_bars``). ``y`` is the label ``cfg.label`` of the
    forward log return over ``cfg.horizon`` bars (``compute_labels``), ``next_return`` the next bar's. Raises ``DataError`` when no complete row is left.

    >>> from tideline.config import LABELS, FeatureConfig
    >>> from tideline.data import synthetic_market
    >>> ds = build_dataset(synthetic_market(n_symbols=3, n_bars=300, seed=1), FeatureConfig())
    >>> len(ds), list(ds.meta.columns), ds.X.shape[1] == len(ds.spec.all_columns)
    (717, ['timestamp', 'symbol'], True)
    >>> ds.spec.tabular[:3], ds.spec.seq_len, bool(ds.meta["timestamp"].is_monotonic_increasing)
    (['ret_1', 'ret_2', 'ret_3'], 16, True)
    >>> build_dataset(synthetic_market(n_symbols=3, n_bars=30, seed=1), FeatureConfig())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tideline.errors.DataError: no rows left after feature warm-up and label horizon (need more than ~62 bars ...)
    """
    buf, spec = _feature_matrix(bars, cfg)
    labels = compute_labels(bars, cfg.horizon, cfg.label, cfg.label_window)
    fwd = labels["target"].to_numpy()
    nxt = labels["next_return"].to_numpy()
    keep = _complete_rows(buf) & np.isfinite(fwd) & np.isfinite(nxt)
    if not keep.any():
        most = int(bars.groupby("symbol", observed=True).size().max()) if len(bars) else 0
        if most <= _warmup_bars(cfg) + cfg.horizon:
            raise DataError("no rows left after feature warm-up and label horizon",
                            hint=f"need more than ~{_warmup_bars(cfg)} bars per symbol; the longest has {most}")
        never = [c for c, row in zip(spec.all_columns, buf, strict=True) if not np.isfinite(row).any()]
        raise DataError(f"no row has every feature defined although symbols have up to {most} bars: "
                        f"{len(never)} feature(s) are never defined (e.g. {', '.join(never[:4]) or '-'})",
                        hint="prices that never move leave returns, volatility and ranks undefined")
    rows = _sorted_rows(bars, keep)
    X, meta = _take(bars, buf, spec, rows)
    log.info("dataset: %d of %d rows kept, %d features", len(rows), len(bars), len(spec.all_columns))
    return Dataset(
        X=X,
        y=fwd[rows].astype(np.float64),
        next_return=nxt[rows].astype(np.float64),
        meta=meta,
        spec=spec,
        info={"feature_hash": feature_config_hash(cfg)},
    )


def build_inference_frame(
    bars: pd.DataFrame, cfg: FeatureConfig, spec: FeatureSpec | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, FeatureSpec]:
    """Features of every fully warmed-up row (latest bars included), sorted by (timestamp, symbol).

    Pass the trained model's ``spec`` to get exactly its columns (``DataError`` if one cannot be computed,
    e.g. cross-sectional ranks with fewer than three symbols).
    """
    buf, computed = _feature_matrix(bars, cfg)
    if spec is not None and spec.all_columns != computed.all_columns:
        pos = {c: i for i, c in enumerate(computed.all_columns)}
        missing = [c for c in spec.all_columns if c not in pos]
        if missing:
            raise DataError(
                f"cannot compute {len(missing)} features the model needs, e.g. {missing[0]}",
                hint="cross-sectional features need at least 3 symbols; use the model's feature config",
            )
        buf = buf[[pos[c] for c in spec.all_columns]]
    spec = spec or computed
    rows = _sorted_rows(bars, _complete_rows(buf))
    X, meta = _take(bars, buf, spec, rows)
    return X, meta, spec


def last_bar_frame(bars: pd.DataFrame, cfg: FeatureConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(X, meta): the features of each symbol's last bar, symbols in sorted order, warmed up or not (a row may
    hold NaN) — the same values as those rows of ``compute_features``, without computing the others' output
    (what the predictor serves from a request of bars)."""
    prepared = _prepare(bars)
    buf, spec = _feature_matrix(bars, cfg, last_only=True, prepared=prepared)
    _, _, ends, order = prepared
    rows = ends - 1 if order is None else order[ends - 1]  # the bars' own positions
    return pd.DataFrame(buf.T, columns=spec.all_columns, copy=False), pd.DataFrame({
        "timestamp": bars["timestamp"].to_numpy().astype("datetime64[ns]")[rows],
        "symbol": bars["symbol"].to_numpy()[rows]})


def warmup_bars(cfg: FeatureConfig) -> int:
    """Bars a symbol needs before its first fully warmed-up feature row."""
    return _warmup_bars(cfg)


def feature_warmup(cfg: FeatureConfig) -> int:
    """The exact number of bars a symbol needs for its last bar's features to be complete (no label horizon):
    measured once per config by computing the features of a plain random walk with the training code."""
    return _feature_warmup(cfg.model_dump_json())


@functools.lru_cache(maxsize=64)
def _feature_warmup(cfg_json: str) -> int:
    cfg = FeatureConfig.model_validate_json(cfg_json)
    n = _warmup_bars(cfg) + 16
    rng = np.random.default_rng(0)
    close = 100.0 * np.exp(np.cumsum(0.01 * rng.standard_normal(n)))
    open_ = close * np.exp(0.002 * rng.standard_normal(n))
    bars = pd.DataFrame({
        "timestamp": pd.date_range("2000-01-03", periods=n, freq="D"), "symbol": "X", "open": open_,
        "high": np.maximum(open_, close) * 1.01, "low": np.minimum(open_, close) * 0.99, "close": close,
        "volume": 1e5 * np.exp(0.3 * rng.standard_normal(n)),
    })
    complete = _complete_rows(_feature_matrix(bars, cfg)[0])
    if not complete.any():  # cannot happen with n above the rough warm-up; kept honest rather than guessed
        raise ConfigError(f"features of this config need more than {n} bars per symbol")
    return int(np.argmax(complete)) + 1


def _warmup_bars(cfg: FeatureConfig) -> int:
    """Roughly how many bars per symbol the features need before the first complete row."""
    longest = max(
        max(cfg.return_windows),
        max(cfg.vol_windows) + 1,
        max(cfg.sma_windows),
        max(cfg.volume_windows),
        cfg.bollinger_window,
        cfg.rsi_window + 1,
        35,
        _SEQ_VZ_WINDOW + cfg.seq_len,
    )
    return int(longest) + cfg.horizon
