"""The prediction log's writer: every prediction the predictor makes (active, canary and shadow), as Parquet
objects in the registry's store, for the outcome join (``tideline.monitoring.feedback``) and the rollout analysis. The
layout and columns are ``tideline.monitoring.predictions``'s, and so is the one reader (``read_predictions``).

Layout: ``predictions/<YYYY-MM-DD>/<role>-<version>-<uuid>.parquet`` (the UTC day of the prediction), one
object per (day, role, version) per flush. Columns:

==============  ===============================================================================
request_id      the request's ``x-request-id`` header, or a generated uuid (str)
time            when the prediction was made (timestamp, tz-aware UTC)
symbol          the instance's ``symbol`` (str, null when not given)
bar_time        the instance's ``timestamp``: the bar the features describe (naive UTC, like the
                ``timestamp`` of ``tideline.data`` bars; null when not given)
feature_hash    a 64-bit hash of the features the version saw (float64 bits, its own columns in its
                model's order; ``monitoring.predictions.feature_hashes``), 16 hex digits: the
                monitoring job recomputes them from stored bars (``monitoring.skew``)
prediction      the predicted forward return (float64)
version         model version id (``v3``)
role            ``active``, ``canary`` or ``shadow``
bars            for a request of bars: how many bars of the row's symbol the features were
                computed from (int32); null when the client sent features
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
import pyarrow as pa
import pyarrow.parquet as pq

from tideline.clock import utcnow
from tideline.monitoring.predictions import DEAD_PREFIX, PREFIX, feature_hashes
from tideline.serving import metrics as m

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class _Chunk:
    request_id: str
    time: datetime  # aware UTC
    X: np.ndarray
    symbols: Sequence[str | None]
    bar_times: np.ndarray  # datetime64 (NaT: not given)
    predictions: np.ndarray
    version: str
    role: str
    bars: np.ndarray | None = None  # bars per row's symbol (a request of bars); None: features were sent

    @property
    def n(self) -> int:
        return len(self.predictions)

    def take(self, idx: Sequence[int]) -> _Chunk:
        return _Chunk(self.request_id, self.time, self.X[list(idx)], [self.symbols[i] for i in idx],
                      self.bar_times[list(idx)], self.predictions[list(idx)], self.version, self.role,
                      None if self.bars is None else self.bars[list(idx)])

    def bar_counts(self) -> np.ndarray:
        """``bars`` with -1 for rows whose features the client sent."""
        return np.full(self.n, -1, dtype=np.int64) if self.bars is None else self.bars.astype(np.int64)

    def dead_letters(self, reason: str) -> list[dict[str, Any]]:
        """The rows as JSON-safe records (every value as the client sent it, or its repr)."""
        hashes = feature_hashes(self.X)
        return [{"request_id": self.request_id, "time": self.time.isoformat(), "symbol": self.symbols[i],
                 "bar_time": None if np.isnat(self.bar_times[i])
                 else self.bar_times[i].astype("datetime64[us]").item().isoformat(),
                 "feature_hash": hashes[i], "prediction": float(self.predictions[i]), "version": self.version,
                 "role": self.role, "bars": None if self.bars is None else int(self.bars[i]),
                 "reason": reason} for i in range(self.n)]


_SCHEMA: Final = pa.schema([
    ("request_id", pa.string()), ("time", pa.timestamp("ns", tz="UTC")), ("symbol", pa.string()),
    ("bar_time", pa.timestamp("ns")), ("feature_hash", pa.string()), ("prediction", pa.float64()),
    ("version", pa.string()), ("role", pa.string()), ("bars", pa.int32()),
])


def _table(chunks: Sequence[_Chunk]) -> pa.Table:
    """The log rows of ``chunks`` with the documented columns and types, column by column (no per-row
    Python but the hash's hex text). Raises for a value a column cannot hold (e.g. a bar time beyond
    datetime64[ns])."""
    counts = [ch.n for ch in chunks]

    def repeated(values: list[Any]) -> np.ndarray:
        return np.repeat(np.array(values, dtype=object), counts)

    times = np.repeat(np.array([np.datetime64(ch.time.astimezone(UTC).replace(tzinfo=None), "us")
                                for ch in chunks]), counts)
    nbars = np.concatenate([ch.bar_counts() for ch in chunks])
    return pa.Table.from_arrays([
        pa.array(repeated([ch.request_id for ch in chunks]), pa.string()),
        pa.array(times.astype("datetime64[ns]"), pa.timestamp("ns", tz="UTC")),
        pa.array([s for ch in chunks for s in ch.symbols], pa.string()),
        pa.array(np.concatenate([ch.bar_times for ch in chunks]), pa.timestamp("ns")),
        pa.array(feature_hashes(np.concatenate([ch.X for ch in chunks]) if len(chunks) > 1 else chunks[0].X),
                 pa.string()),
        pa.array(np.concatenate([ch.predictions for ch in chunks]), pa.float64()),
        pa.array(repeated([ch.version for ch in chunks]), pa.string()),
        pa.array(repeated([ch.role for ch in chunks]), pa.string()),
        pa.array(nbars, pa.int32(), mask=nbars < 0),
    ], schema=_SCHEMA)


def _parquet(chunks: Sequence[_Chunk]) -> bytes:
    buf = pa.BufferOutputStream()
    pq.write_table(_table(chunks), buf)
    return bytes(buf.getvalue())


class PredictionLog:
    """Buffered, batched writer of prediction rows into ``store`` (a ``tideline.registry.Store``)."""

    def __init__(
        self,
        store: Any,
        *,
        flush_rows: int = 20_000,
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
        bar_times: np.ndarray | Sequence[datetime | None],
        predictions: np.ndarray,
        version: str,
        role: str,
        at: datetime | None = None,
        bars: np.ndarray | None = None,
    ) -> None:
        """Queue rows for writing; O(1), never raises, never waits for the store. ``X``: the version's own
        features, its model's columns in order (what ``feature_hash`` hashes). ``bar_times``: datetime64
        (NaT = not given; as ``validation.Batch`` holds them) or naive UTC datetimes / None. ``bars``: per row, the
        bars of its symbol a request of bars sent (None when the client sent features)."""
        try:
            if not (isinstance(bar_times, np.ndarray) and bar_times.dtype.kind == "M"):
                bar_times = np.array(bar_times, dtype="datetime64[us]")
            ch = _Chunk(request_id, at or utcnow(), X, symbols, bar_times,
                        np.asarray(predictions, dtype=np.float64), version, role, bars)
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
        """Start the background writer thread (idempotent); it flushes every ``flush_seconds``, or when full."""
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
                _table([ch])
                good.append(ch)
                continue
            except Exception:  # noqa: BLE001
                pass
            keep: list[int] = []
            for i in range(ch.n):
                row = ch.take([i])
                try:
                    _table([row])
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
        key = f"{DEAD_PREFIX}{utcnow():%Y-%m-%d}/{uuid.uuid4().hex}.jsonl"
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
