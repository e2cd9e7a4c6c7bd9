"""The prediction log as monitoring reads it: its layout, its columns, and the one reader.

The predictor (``tideline.serving.predlog.PredictionLog``) writes every prediction it makes — active, canary
and shadow — as Parquet objects in the registry's store:
``predictions/<YYYY-MM-DD>/<role>-<version>-<uuid>.parquet`` (the UTC day of the prediction), with the columns
``COLUMNS``; rows it cannot write at all go to the dead letters under ``predictions-dead/``.
``read_predictions`` is how everything else (the outcome join, the rollout analysis, the demo) reads it back.

    >>> import tempfile
    >>> from tideline.store import FileStore
    >>> read_predictions(FileStore(tempfile.mkdtemp())).columns.tolist() == list(COLUMNS)
    True
"""

from __future__ import annotations

import logging
import re
from typing import Any, Final

import numpy as np
import pandas as pd

from tideline.clock import utc_timestamp
from tideline.errors import ConfigError, DataError
from tideline.store.frames import parquet_frame

log = logging.getLogger(__name__)

PREFIX: Final = "predictions/"
DEAD_PREFIX: Final = "predictions-dead/"
COLUMNS: Final[tuple[str, ...]] = (
    "request_id", "time", "symbol", "bar_time", "feature_hash", "prediction", "version", "role", "bars")
OPTIONAL: Final = frozenset({"bars"})
"""columns an older log may lack (read back as missing values)"""
_KEY_RE: Final = re.compile(r"^predictions/(\d{4}-\d{2}-\d{2})/[^/]+\.parquet$")


_SEED: Final = np.uint64(0xCBF29CE484222325)
_MIX: Final = np.uint64(0x9E3779B97F4A7C15)
_FIN1: Final = np.uint64(0xBF58476D1CE4E5B9)
_FIN2: Final = np.uint64(0x94D049BB133111EB)


def _hash64(X: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each row's float64 bit patterns, whole columns at a time (multiply-xorshift per
    column, splitmix64's finalizer at the end): equal rows hash equal, and a change in any bit of any value
    changes the hash."""
    b = np.ascontiguousarray(X, dtype=np.float64).view(np.uint64)
    h = np.full(b.shape[0], _SEED, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(b.shape[1]):
            h ^= b[:, j]
            h *= _MIX
            h ^= h >> np.uint64(31)
        h ^= h >> np.uint64(30)
        h *= _FIN1
        h ^= h >> np.uint64(27)
        h *= _FIN2
        h ^= h >> np.uint64(31)
    return h


def feature_hashes(X: np.ndarray) -> list[str]:
    """Each row's ``_hash64`` as 16 hex digits: the log's ``feature_hash``."""
    return [f"{v:016x}" for v in _hash64(X).tolist()]


def utc_bound(value: Any, what: str) -> pd.Timestamp | None:
    """``value`` (None, an ISO string, a datetime or a Timestamp; naive = UTC) as a tz-aware UTC timestamp; a bad
    one is a ``ConfigError`` naming ``what``."""
    try:
        return utc_timestamp(value)
    except (ValueError, TypeError):
        raise ConfigError(f"{what} {value!r} is not a timestamp",
                          hint="ISO 8601, e.g. 2024-05-01T00:00:00Z") from None


def naive_utc(s: pd.Series) -> pd.Series:
    """Any timestamps (strings, naive = UTC, tz-aware) as tz-naive UTC datetime64[ns]; bad values NaT."""
    out = pd.to_datetime(s, utc=True, errors="coerce", format="mixed")
    return out.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[ns]")


def empty_frame() -> pd.DataFrame:
    """A log with no rows and the columns (and types) of ``normalize_predictions``."""
    return pd.DataFrame({
        "request_id": pd.Series([], dtype=object), "time": pd.Series([], dtype="datetime64[ns, UTC]"),
        "symbol": pd.Series([], dtype=object), "bar_time": pd.Series([], dtype="datetime64[ns]"),
        "feature_hash": pd.Series([], dtype=object), "prediction": pd.Series([], dtype=np.float64),
        "version": pd.Series([], dtype=object), "role": pd.Series([], dtype=object),
        "bars": pd.Series([], dtype="Int64")})


def normalize_predictions(df: pd.DataFrame) -> pd.DataFrame:
    """The log's columns with fixed types: ``time`` tz-aware UTC, ``bar_time`` tz-naive UTC (like bars),
    ``prediction`` float64, ``bars`` nullable Int64, text columns as str (missing values stay None). DataError on
    missing columns (an older log without ``bars`` reads as missing values)."""
    missing = [c for c in COLUMNS if c not in df.columns and c not in OPTIONAL]
    if missing:
        raise DataError(f"prediction log lacks columns {missing}", hint=f"expected {list(COLUMNS)}")
    out = df.reindex(columns=list(COLUMNS))
    out["bars"] = pd.to_numeric(out["bars"], errors="coerce").astype("Int64")
    out["time"] = pd.to_datetime(out["time"], utc=True, errors="coerce", format="mixed")
    out["bar_time"] = naive_utc(out["bar_time"])
    out["prediction"] = pd.to_numeric(out["prediction"], errors="coerce").astype(np.float64)
    for c in ("request_id", "feature_hash", "version", "role", "symbol"):
        col = out[c].astype("string")
        ok = (col.notna() & (col != "")).fillna(False).to_numpy(dtype=bool)
        out[c] = col.astype(object).where(ok, None)
    return out.reset_index(drop=True)


def read_predictions(registry: Any, since: Any = None, until: Any = None) -> pd.DataFrame:
    """Every logged prediction with ``since <= time < until`` (either bound optional), oldest first.

    ``registry`` is a ``tideline.registry.Registry`` or a bare ``tideline.store.Store``. Day folders outside
    the bounds are not read. An object that cannot be read is skipped with a warning (its key is listed in
    ``df.attrs["unreadable"]``); a key outside the layout is ignored. Raises ``ConfigError`` for a bound that
    is not a timestamp or ``until <= since``; ``StorageUnavailable`` when the store cannot be listed.
    """
    store = getattr(registry, "store", registry)
    lo, hi = utc_bound(since, "since"), utc_bound(until, "until")
    if lo is not None and hi is not None and hi <= lo:
        raise ConfigError(f"until ({hi}) must be after since ({lo})")
    frames: list[pd.DataFrame] = []
    unreadable: list[str] = []
    for key in sorted(store.list(PREFIX)):
        m = _KEY_RE.match(key)
        if not m:
            continue
        day = m.group(1)
        if (lo is not None and day < f"{lo:%Y-%m-%d}") or (hi is not None and day > f"{hi:%Y-%m-%d}"):
            continue
        try:
            raw, etag = store.get(key)
            frames.append(parquet_frame(raw, etag, normalize_predictions))
        except (OSError, ValueError, DataError, KeyError) as e:  # a torn or foreign object: skip it
            log.warning("skipped unreadable prediction log object %s: %s", key, e)
            unreadable.append(key)
    frames = [f for f in frames if len(f)]
    df = pd.concat(frames, ignore_index=True) if frames else empty_frame()
    if lo is not None:
        df = df.loc[df["time"] >= lo]
    if hi is not None:
        df = df.loc[df["time"] < hi]
    df = df.sort_values("time", kind="stable").reset_index(drop=True)
    df.attrs["unreadable"] = unreadable
    return df


__all__ = ["COLUMNS", "DEAD_PREFIX", "OPTIONAL", "PREFIX", "empty_frame", "feature_hashes", "naive_utc", "normalize_predictions",
           "read_predictions", "utc_bound"]
