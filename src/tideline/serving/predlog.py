"""The prediction log: every prediction the predictor makes (active, canary and shadow), as Parquet objects
in the registry's store, for the outcome join (``tideline.feedback``) and the rollout analysis.

Layout: ``predictions/<YYYY-MM-DD>/<role>-<version>-<uuid>.parquet`` (the UTC day of the prediction), one
object per (day, role, version) per flush. Columns:

==============  ===============================================================================
request_id      the request's ``x-request-id`` header, or a generated uuid (str)
time            when the prediction was made (timestamp, tz-aware UTC)
symbol          the instance's ``symbol`` (str, null when not given)
bar_time        the instance's ``timestamp``: the bar the features describe (naive UTC, like the
                ``timestamp`` of ``tideline.data`` bars; null when not given)
feature_hash    blake2b-64 of the row's feature values (float64, request column order), hex: the
                same row sent to the active and the shadow model has the same hash
prediction      the predicted forward return (float64)
version         model version id (``v3``)
role            ``active``, ``canary`` or ``shadow``
==============  ===============================================================================

Writing never blocks or fails a request: ``record`` appends to an in-memory buffer (bounded; the oldest
rows are dropped and counted when the store stays down), and a background thread writes every
``flush_rows`` rows or ``flush_seconds`` seconds, and once more on ``close``. A write the store refuses is
logged, counted and retried at the next flush. A row that cannot be written at all (a value the log's
columns cannot hold) never holds the others hostage: the batch is split down to that row, which goes to the
dead letters ``predictions-dead/<YYYY-MM-DD>/<uuid>.jsonl`` (one JSON object per row, with the reason;
counted as ``outcome="dead_letter"``), and the rest is written as usual.
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np
import orjson
import pandas as pd

from tideline.serving import metrics as m

log = logging.getLogger(__name__)

PREFIX: Final = "predictions/"
DEAD_PREFIX: Final = "predictions-dead/"
COLUMNS: Final = ("request_id", "time", "symbol", "bar_time", "feature_hash", "prediction", "version", "role")


@dataclass(frozen=True)
class _Chunk:
    request_id: str
    time: datetime  # aware UTC
    X: np.ndarray
    symbols: Sequence[str | None]
    bar_times: Sequence[datetime | None]
    predictions: np.ndarray
    version: str
    role: str

    @property
    def n(self) -> int:
        return len(self.predictions)

    def take(self, idx: Sequence[int]) -> _Chunk:
        return _Chunk(self.request_id, self.time, self.X[list(idx)], [self.symbols[i] for i in idx],
                      [self.bar_times[i] for i in idx], self.predictions[list(idx)], self.version, self.role)

    def dead_letters(self, reason: str) -> list[dict[str, Any]]:
        """The rows as JSON-safe records (every value as the client sent it, or its repr)."""
        hashes = _feature_hashes(self.X)
        return [{"request_id": self.request_id, "time": self.time.isoformat(), "symbol": self.symbols[i],
                 "bar_time": None if self.bar_times[i] is None else str(self.bar_times[i]),
                 "feature_hash": hashes[i], "prediction": float(self.predictions[i]), "version": self.version,
                 "role": self.role, "reason": reason} for i in range(self.n)]


def _feature_hashes(X: np.ndarray) -> list[str]:
    Xc = np.ascontiguousarray(X, dtype=np.float64)
    return [hashlib.blake2b(row.tobytes(), digest_size=8).hexdigest() for row in Xc]


def _frame(chunks: Sequence[_Chunk]) -> pd.DataFrame:
    """The log rows of ``chunks`` with the documented columns and dtypes."""
    cols: dict[str, list[Any]] = {c: [] for c in COLUMNS}
    for ch in chunks:
        cols["request_id"].extend([ch.request_id] * ch.n)
        cols["time"].extend([ch.time] * ch.n)
        cols["symbol"].extend(ch.symbols)
        cols["bar_time"].extend(ch.bar_times)
        cols["feature_hash"].extend(_feature_hashes(ch.X))
        cols["prediction"].extend(ch.predictions.tolist())
        cols["version"].extend([ch.version] * ch.n)
        cols["role"].extend([ch.role] * ch.n)
    return _typed(pd.DataFrame(cols))


def _parquet(chunks: Sequence[_Chunk]) -> bytes:
    buf = io.BytesIO()
    _frame(chunks).to_parquet(buf, index=False)
    return buf.getvalue()


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({
        "request_id": df["request_id"].astype(object),
        "time": pd.to_datetime(df["time"], utc=True).astype("datetime64[ns, UTC]"),
        "symbol": df["symbol"].astype(object),
        "bar_time": pd.to_datetime(df["bar_time"]).astype("datetime64[ns]"),
        "feature_hash": df["feature_hash"].astype(object),
        "prediction": df["prediction"].astype(np.float64),
        "version": df["version"].astype(object),
        "role": df["role"].astype(object),
    })
    return out


def empty_frame() -> pd.DataFrame:
    return _typed(pd.DataFrame({c: [] for c in COLUMNS}))


class PredictionLog:
    """Buffered, batched writer of prediction rows into ``store`` (a ``tideline.registry.Store``)."""

    def __init__(
        self,
        store: Any,
        *,
        flush_rows: int = 2_000,
        flush_seconds: float = 5.0,
        max_buffer_rows: int = 500_000,
    ) -> None:
        self.store = store
        self.flush_rows = max(1, int(flush_rows))
        self.flush_seconds = float(flush_seconds)
        self.max_buffer_rows = max(self.flush_rows, int(max_buffer_rows))
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._pending: list[_Chunk] = []
        self._pending_rows = 0
        self._dead: list[dict[str, Any]] = []  # dead letters not yet stored
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.written_keys: list[str] = []

    # -- producer side (the request path) -------------------------------------------------------
    def record(
        self,
        *,
        request_id: str,
        X: np.ndarray,
        symbols: Sequence[str | None],
        bar_times: Sequence[datetime | None],
        predictions: np.ndarray,
        version: str,
        role: str,
        at: datetime | None = None,
    ) -> None:
        """Queue rows for writing; O(1), never raises, never waits for the store."""
        try:
            ch = _Chunk(request_id, at or datetime.now(UTC), X, symbols, bar_times,
                        np.asarray(predictions, dtype=np.float64), version, role)
            dropped = 0
            with self._lock:
                self._pending.append(ch)
                self._pending_rows += ch.n
                while self._pending_rows > self.max_buffer_rows and len(self._pending) > 1:
                    old = self._pending.pop(0)
                    self._pending_rows -= old.n
                    dropped += old.n
                full = self._pending_rows >= self.flush_rows
            if dropped:
                m.PREDLOG_ROWS.labels(outcome="dropped").inc(dropped)
                log.warning("prediction log buffer full: dropped %d oldest rows", dropped)
            if full:
                self._wake.set()
        except Exception:  # pragma: no cover - defensive: logging must never fail a request
            log.exception("prediction log: could not queue rows")

    # -- writer side -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tideline-predlog", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            if self._stop.is_set():
                break
            self.flush()

    def flush(self) -> int:
        """Write every queued row now; returns the rows written. Failed groups stay queued."""
        with self._write_lock:
            with self._lock:
                chunks, self._pending, self._pending_rows = self._pending, [], 0
            if not chunks:
                self._write_dead()
                return 0
            groups: dict[tuple[str, str, str], list[_Chunk]] = {}
            for ch in chunks:
                groups.setdefault((ch.time.strftime("%Y-%m-%d"), ch.role, ch.version), []).append(ch)
            written = 0
            failed: list[_Chunk] = []
            for (day, role, version), group in groups.items():
                key = f"{PREFIX}{day}/{role}-{version}-{uuid.uuid4().hex}.parquet"
                try:
                    body = _parquet(group)
                except Exception:  # noqa: BLE001 - the rows, not the store: set the bad ones aside
                    group = self._isolate(group)
                    if not group:
                        continue
                    body = _parquet(group)
                n = sum(ch.n for ch in group)
                try:
                    self.store.put(key, body)
                except Exception as e:
                    failed.extend(group)
                    m.PREDLOG_WRITE_ERRORS.inc()
                    m.PREDLOG_ROWS.labels(outcome="failed").inc(n)
                    log.warning("prediction log: writing %d rows to %s failed (will retry): %s", n, key, e)
                    continue
                written += n
                self.written_keys.append(key)
                m.PREDLOG_ROWS.labels(outcome="written").inc(n)
            if failed:
                with self._lock:
                    self._pending[:0] = failed
                    self._pending_rows += sum(ch.n for ch in failed)
            self._write_dead()
            return written

    def _isolate(self, group: list[_Chunk]) -> list[_Chunk]:
        """The chunks (or parts of chunks) of ``group`` that serialise; the rows that do not become dead
        letters with their reason. Narrowed chunk by chunk, then row by row within a failing chunk."""
        good: list[_Chunk] = []
        for ch in group:
            try:
                _frame([ch])
                good.append(ch)
                continue
            except Exception:  # noqa: BLE001
                pass
            keep: list[int] = []
            for i in range(ch.n):
                row = ch.take([i])
                try:
                    _frame([row])
                    keep.append(i)
                except Exception as e:  # noqa: BLE001
                    reason = " ".join(f"{type(e).__name__}: {e}".split())[:300]
                    self._dead.extend(row.dead_letters(reason))
                    m.PREDLOG_ROWS.labels(outcome="dead_letter").inc()
                    log.warning("prediction log: a row of request %s cannot be logged (%s); kept as a dead "
                                "letter", ch.request_id, reason)
            if keep:
                good.append(ch.take(keep))
        return good

    def _write_dead(self) -> None:
        if not self._dead:
            return
        dead, self._dead = self._dead, []
        key = f"{DEAD_PREFIX}{datetime.now(UTC):%Y-%m-%d}/{uuid.uuid4().hex}.jsonl"
        try:
            self.store.put(key, b"".join(orjson.dumps(d, option=orjson.OPT_APPEND_NEWLINE) for d in dead))
        except Exception as e:  # noqa: BLE001 - kept; tried again at the next flush
            self._dead[:0] = dead
            log.warning("prediction log: writing %d dead letters to %s failed (will retry): %s", len(dead), key, e)
            return
        self.written_keys.append(key)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the writer thread and flush what is left (one attempt)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        deadline = time.monotonic() + timeout
        self.flush()
        if (self._pending_rows or self._dead) and time.monotonic() < deadline:
            log.warning("prediction log: %d rows and %d dead letters could not be written at shutdown",
                        self._pending_rows, len(self._dead))


def _utc(t: Any) -> pd.Timestamp | None:
    if t is None:
        return None
    ts = pd.Timestamp(t)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def read_predictions(registry: Any, since: Any = None, until: Any = None) -> pd.DataFrame:
    """Every logged prediction with ``since <= time < until`` (either may be None), oldest first.

    ``registry`` is a ``tideline.registry.Registry`` (or a bare ``Store``); times may be strings,
    datetimes or Timestamps (naive ones are taken as UTC). Returns the columns of ``COLUMNS``.
    """
    store = getattr(registry, "store", registry)
    lo, hi = _utc(since), _utc(until)
    frames = []
    for key in sorted(store.list(PREFIX)):
        parts = key.split("/")
        if len(parts) != 3 or not parts[2].endswith(".parquet"):
            continue
        try:
            day = pd.Timestamp(parts[1]).tz_localize("UTC")
        except ValueError:
            continue
        if (lo is not None and day + pd.Timedelta(days=1) <= lo.floor("D")) or (hi is not None and day > hi):
            continue
        try:
            data, _ = store.get(key)
            frames.append(pd.read_parquet(io.BytesIO(data)))
        except Exception as e:
            log.warning("prediction log object %s is unreadable, skipped: %s", key, e)
    if not frames:
        return empty_frame()
    df = _typed(pd.concat(frames, ignore_index=True))
    if lo is not None:
        df = df[df["time"] >= lo]
    if hi is not None:
        df = df[df["time"] < hi]
    return df.sort_values("time", kind="stable").reset_index(drop=True)
