"""Bars in: a v1 request of recent OHLCV bars becomes the features of each symbol's last bar, computed by the
served version's own feature config with the training code (``tideline.features``), so a client never
re-implements a feature and training and serving cannot drift apart.

``{"instances": [{"symbol", "timestamp", "open", "high", "low", "close", "volume"}, ...]}``: one or more
symbols, each with at least the feature warm-up of bars. The bars are checked as ``tideline data validate``
checks a file (strict: unsorted, duplicated, high < low, non-positive or non-finite prices, negative volume
are refused with the same reasons); too few bars for the warm-up is refused naming the symbol, its count and
the minimum; an instance mixing bar fields and features is refused. Every refusal is a ``RequestError``
(422, or 400 for an envelope that is not a list of objects).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Final, NamedTuple

import numpy as np
import pandas as pd

from tideline.config import FeatureConfig
from tideline.data import BAR_COLUMNS, validate_bars
from tideline.errors import DataError
from tideline.features import feature_warmup, last_bar_frame, stored_feature_config
from tideline.serving.validation import (
    _NUMBER_TYPES,
    META_FIELDS,
    RequestError,
    _kind,
    _names,
    _symbol,
    parse_time,
)

BAR_FIELDS: Final = ("open", "high", "low", "close", "volume")
BAR_KEYS: Final = frozenset((*META_FIELDS, *BAR_FIELDS))


def is_bars_request(payload: Any) -> bool:
    """Whether a v1 body sends bars: its first instance carries an OHLCV field."""
    inst = payload.get("instances") if isinstance(payload, dict) else None
    return (isinstance(inst, list) and len(inst) > 0 and isinstance(inst[0], dict)
            and any(k in inst[0] for k in BAR_FIELDS))


@dataclass(frozen=True)
class FeatureSource:
    """How one served version computes its features from bars: its feature config (its stored hash checked)
    and the columns its model takes, in their order."""

    version: str
    config: FeatureConfig
    columns: tuple[str, ...]
    min_bars: int

    @classmethod
    def of(cls, version: str, stored_config: dict[str, Any], stored_hash: str,
           columns: Sequence[str]) -> FeatureSource | str:
        """The source of a version, or why bars cannot be served by it (a stored config that does not load or
        does not match its hash)."""
        try:
            cfg = stored_feature_config(version, stored_config, stored_hash)
        except DataError as e:
            return e.message
        return cls(version, cfg, tuple(columns), feature_warmup(cfg))


def parse_bars(instances: list[Any]) -> pd.DataFrame:
    """The instances as validated bars (``validate_bars``, strict, without the quality scores, which refuse
    nothing by default), sorted by (symbol, timestamp). A well-formed request takes the column-wise path; anything
    else the row-by-row one, which names the first problem."""
    frame = _fast_frame(instances)
    if frame is None:
        frame = _slow_frame(instances)
    try:
        return validate_bars(frame, score=False).clean
    except DataError as e:
        raise RequestError(422, f"the bars are refused: {e}") from None


_GETTERS: Final = {k: itemgetter(k) for k in ("symbol", "timestamp", *BAR_FIELDS)}


def _fast_frame(instances: list[Any]) -> pd.DataFrame | None:
    """Column-wise: every instance a dict of exactly the seven bar keys, numbers where numbers belong; each
    distinct symbol and timestamp checked once. None when anything is unusual (the slow path names it)."""
    n = len(instances)
    if n == 0 or set(map(type, instances)) != {dict} or set(map(len, instances)) != {7}:
        return None
    try:
        cols = {k: list(map(get, instances)) for k, get in _GETTERS.items()}
    except KeyError:
        return None
    if not all(_NUMBER_TYPES.issuperset(map(type, cols[k])) for k in BAR_FIELDS):
        return None
    symbols, stamps = set(cols["symbol"]), set(cols["timestamp"])
    if set(map(type, symbols)) != {str} or set(map(type, stamps)) != {str}:
        return None
    try:
        for sym in symbols:
            _symbol(sym, "symbol")
        uniq = list(stamps)
        times = np.array([parse_time(t, "timestamp") for t in uniq], dtype="datetime64[us]")
    except RequestError:
        return None
    index_of = {t: i for i, t in enumerate(uniq)}
    at = np.fromiter(map(index_of.__getitem__, cols["timestamp"]), dtype=np.int64, count=n)
    return pd.DataFrame({"timestamp": times[at].astype("datetime64[ns]"), "symbol": cols["symbol"],
                         **{k: np.array(cols[k], dtype=np.float64) for k in BAR_FIELDS}}, columns=list(BAR_COLUMNS))


def _slow_frame(instances: list[Any]) -> pd.DataFrame:
    """Row by row, naming the first instance that is not a bar."""
    cols: dict[str, list[Any]] = {c: [] for c in BAR_COLUMNS}
    for i, inst in enumerate(instances):
        where = f"instances[{i}]"
        if type(inst) is not dict:
            raise RequestError(400, f"{where} must be an object of bar fields, got {_kind(inst)}")
        other = [k for k in inst if k not in BAR_KEYS]
        if other:
            raise RequestError(422, f"{where} mixes bar fields with {_names(other)}: send bars "
                               f"({', '.join(('symbol', 'timestamp', *BAR_FIELDS))}) or features, not both")
        missing = [k for k in ("symbol", "timestamp", *BAR_FIELDS) if inst.get(k) is None]
        if missing:
            raise RequestError(422, f"{where} lacks bar field(s) {_names(missing)}")
        for k in BAR_FIELDS:
            v = inst[k]
            if type(v) is not float and type(v) is not int:
                raise RequestError(422, f"{where}: {k} must be a number, got {_kind(v)}")
        cols["symbol"].append(_symbol(inst["symbol"], where))
        cols["timestamp"].append(parse_time(inst["timestamp"], where))
        for k in BAR_FIELDS:
            cols[k].append(float(inst[k]))
    frame = pd.DataFrame(cols, columns=list(BAR_COLUMNS))
    frame["timestamp"] = pd.to_datetime(frame["timestamp"])
    return frame


class LastBars(NamedTuple):
    """The features of each symbol's last bar, symbols sorted."""

    X: np.ndarray  # float64 (symbols, columns)
    symbols: list[str]
    bar_times: np.ndarray  # datetime64[us]
    bars: np.ndarray  # int64: the bars each symbol's features were computed from


def last_bar_features(bars: pd.DataFrame, source: FeatureSource,
                      columns: Sequence[str] | None = None) -> LastBars:
    """The features of each symbol's last bar (``columns``, default the model's, in order), symbols sorted.
    Raises ``RequestError`` (422) for a symbol with too few bars or a last bar whose features cannot be
    computed."""
    columns = list(source.columns if columns is None else columns)
    counts = bars.groupby("symbol", sort=True, observed=True).size()
    short = counts[counts < source.min_bars]
    if len(short):
        sym, n = next(iter(short.items()))
        more = f" (and {len(short) - 1} more symbol(s))" if len(short) > 1 else ""
        raise RequestError(422, f"symbol {sym!r} has {n} bar(s); {source.version} needs at least "
                           f"{source.min_bars} per symbol (its feature warm-up){more}")
    try:
        X, meta = last_bar_frame(bars, source.config)
    except DataError as e:
        raise RequestError(422, f"features cannot be computed from these bars: {e}") from None
    missing = [c for c in columns if c not in X.columns]
    if missing:
        raise RequestError(422, f"{source.version} needs {len(missing)} feature(s) these bars cannot give, e.g. "
                           f"{missing[0]!r} (cross-sectional ranks need bars of 3 or more symbols)")
    out = X[columns].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(out).all(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        raise RequestError(422, f"the features of {meta['symbol'].iloc[i]!r}'s last bar "
                           f"({pd.Timestamp(meta['timestamp'].iloc[i]).isoformat()}) cannot be computed (prices "
                           "that never move leave returns and volatility undefined)")
    return LastBars(out, [str(s) for s in meta["symbol"]], meta["timestamp"].to_numpy().astype("datetime64[us]"),
                    counts.to_numpy(dtype=np.int64))
