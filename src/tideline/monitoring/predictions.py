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

import io
import logging
import re
from typing import Any, Final

import numpy as np
import pandas as pd

from tideline.clock import utc_timestamp
from tideline.errors import ConfigError, DataError

log = logging.getLogger(__name__)

PREFIX: Final = "predictions/"
DEAD_PREFIX: Final = "predictions-dead/"
COLUMNS: Final[tuple[str, ...]] = (
    "request_id", "time", "symbol", "bar_time", "feature_hash", "prediction", "version", "role")
_KEY_RE: Final = re.compile(r"^predictions/(\d{4}-\d{2}-\d{2})/[^/]+\.parquet$")


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
        "version": pd.Series([], dtype=object), "role": pd.Series([], dtype=object)})


def normalize_predictions(df: pd.DataFrame) -> pd.DataFrame:
    """The log's columns with fixed types: ``time`` tz-aware UTC, ``bar_time`` tz-naive UTC (like bars),
    ``prediction`` float64, text columns as str (missing values stay None). DataError on missing columns."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"prediction log lacks columns {missing}", hint=f"expected {list(COLUMNS)}")
    out = df.loc[:, list(COLUMNS)].copy()
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
            raw, _ = store.get(key)
            frames.append(normalize_predictions(pd.read_parquet(io.BytesIO(raw))))
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


__all__ = ["COLUMNS", "DEAD_PREFIX", "PREFIX", "empty_frame", "naive_utc", "normalize_predictions",
           "read_predictions", "utc_bound"]
