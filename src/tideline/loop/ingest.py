"""Ingest: new bar files from a location that grows (a directory or an S3 prefix) into the loop's bar store.

Each file is read once, remembered by the sha256 of its content (a file renamed or copied again is not read
twice); a file still being written is not read (a temporary name such as ``.tmp`` / ``.part``, or modified
less than ``settle_s`` seconds ago); a file that fails validation is refused with its reason and not tried
again until its content changes. Its clean bars are merged into the bar store, one Parquet object per month
in the registry's store (``loop/bars/YYYY-MM.parquet``): a bar already there with the same values is a
duplicate (dropped, counted); with other values it is a **restatement**: ``restatements="refuse"`` refuses
the whole file (nothing of it is merged), ``"newer"`` takes the new values; both are reported. Bars older
than the newest already stored (late bars) are merged in time order like any other.

A file is recorded in ``loop/ingest.json`` only after its bars are stored, so a process killed in between
reads it again next time and finds its bars already there (duplicates): nothing is lost or doubled.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal

import numpy as np
import pandas as pd

from tideline.data import list_source_files, read_bars_bytes, validate_bars
from tideline.data.schema import NUMERIC_COLUMNS
from tideline.errors import DataError, TidelineError
from tideline.store import NotFound, Store, update_json
from tideline.store.frames import parquet_frame

log = logging.getLogger(__name__)

STATE_KEY: Final = "loop/ingest.json"
BARS_PREFIX: Final = "loop/bars/"
Restatements = Literal["refuse", "newer"]
_STATE_ATTEMPTS: Final = 8


@dataclass
class FileOutcome:
    """What happened to one arrived file: ``ingested`` (bars added, duplicates, restated, late) or
    ``refused`` (with the reason).
    """
    name: str
    sha256: str
    outcome: str  # ingested | refused
    rows: int = 0
    added: int = 0
    duplicates: int = 0
    restated: int = 0
    late: int = 0
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready outcome, empty fields left out."""
        return {k: v for k, v in asdict(self).items() if v not in ("", None)}


@dataclass
class IngestReport:
    """What one ``ingest`` did: the new files' outcomes, the files still being written and the known ones skipped."""
    files: list[FileOutcome] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # not settled yet
    known: int = 0  # files whose content was read before

    @property
    def added(self) -> int:
        """Bars added to the store by every file of this run."""
        return sum(f.added for f in self.files)

    @property
    def refused(self) -> list[FileOutcome]:
        """The files refused (each with its reason)."""
        return [f for f in self.files if f.outcome == "refused"]

    def summary(self) -> str:
        """One line: new files and bars added, restated and late bars, refusals with reasons, files waiting."""
        ok = [f for f in self.files if f.outcome == "ingested"]
        parts = [f"{len(ok)} new file(s), {self.added} bar(s) added"]
        restated = sum(f.restated for f in ok)
        late = sum(f.late for f in ok)
        if restated:
            parts.append(f"{restated} restated bar(s) replaced by the newer values")
        if late:
            parts.append(f"{late} late bar(s) merged in time order")
        if self.refused:
            parts.append(f"{len(self.refused)} refused: " + "; ".join(f"{f.name}: {f.reason}" for f in self.refused))
        if self.waiting:
            parts.append(f"{len(self.waiting)} still being written")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready report (outcomes, waiting files, counts and the summary line)."""
        return {"files": [f.to_dict() for f in self.files], "waiting": self.waiting, "known": self.known,
                "added": self.added, "summary": self.summary()}


# ---- the state ---------------------------------------------------------------------------------------------
def _read_state(store: Store) -> tuple[dict[str, Any], str | None]:
    try:
        raw, etag = store.get(STATE_KEY)
    except NotFound:
        return _empty_state(), None
    return _parse_state(store, raw), etag


def _empty_state() -> dict[str, Any]:
    return {"hashes": {}, "names": {}}


def _parse_state(store: Store, raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
        if isinstance(doc.get("hashes"), dict) and isinstance(doc.get("names"), dict):
            return dict(doc)
    except (ValueError, AttributeError):
        pass
    raise TidelineError(f"the loop's ingest state {store.uri}/{STATE_KEY} is unreadable",
                        hint="restore it from the store's versioning, or delete it to read every file again")


def _remember(store: Store, outcome: FileOutcome, at: str) -> None:
    """Record a file's outcome (compare-and-swap, so two writers never lose each other's entries)."""

    def record(doc: dict[str, Any] | None) -> tuple[dict[str, Any], None]:
        doc = doc or _empty_state()
        doc["hashes"][outcome.sha256] = {"name": outcome.name, "outcome": outcome.outcome, "at": at,
                                         **({"reason": outcome.reason} if outcome.reason else {})}
        doc["names"][outcome.name] = outcome.sha256
        return doc, None

    update_json(store, STATE_KEY, record, attempts=_STATE_ATTEMPTS, load=lambda raw: _parse_state(store, raw),
                conflict=f"could not record {outcome.name} in {STATE_KEY}: it kept changing")


# ---- the bar store -----------------------------------------------------------------------------------------
def _month_key(month: str) -> str:
    return f"{BARS_PREFIX}{month}.parquet"


def _read_month(store: Store, month: str) -> pd.DataFrame | None:
    try:
        data, etag = store.get(_month_key(month))
    except NotFound:
        return None
    return parquet_frame(data, etag)


def _write_month(store: Store, month: str, df: pd.DataFrame) -> None:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    store.put(_month_key(month), buf.getvalue())


def stored_months(store: Store) -> list[str]:
    """The months (``YYYY-MM``) the bar store holds, sorted."""
    return sorted(k[len(BARS_PREFIX):-len(".parquet")] for k in store.list(BARS_PREFIX) if k.endswith(".parquet"))


def stored_bars(store: Store, since: Any = None) -> pd.DataFrame:
    """Every bar the loop has ingested (from ``since``, a time, when given), sorted by (symbol, timestamp)."""
    lo = None if since is None else pd.Timestamp(since).tz_localize(None) if pd.Timestamp(since).tzinfo is None \
        else pd.Timestamp(since).tz_convert("UTC").tz_localize(None)
    frames = []
    for month in stored_months(store):
        if lo is not None and month < f"{lo:%Y-%m}":
            continue
        df = _read_month(store, month)
        if df is not None:
            frames.append(df if lo is None else df[df["timestamp"] >= lo])
    if not frames:
        return pd.DataFrame({"timestamp": pd.Series([], dtype="datetime64[ns]"), "symbol": pd.Series([], dtype=str),
                             **{c: pd.Series([], dtype=np.float64) for c in NUMERIC_COLUMNS}})
    out = pd.concat(frames, ignore_index=True)
    return out.sort_values(["symbol", "timestamp"], kind="stable").reset_index(drop=True)


def _merge(old: pd.DataFrame | None, new: pd.DataFrame, restatements: Restatements
           ) -> tuple[pd.DataFrame | None, np.ndarray, int, int]:
    """(merged, mask of the new rows that are added, duplicates, restated); merged None when nothing
    changes."""
    if old is None or len(old) == 0:
        return new, np.ones(len(new), dtype=bool), 0, 0
    keys = ["symbol", "timestamp"]
    both = new.merge(old, on=keys, how="left", suffixes=("", "_old"), indicator=True)
    seen = (both["_merge"] == "both").to_numpy()
    same = seen.copy()
    for c in NUMERIC_COLUMNS:
        a, b = both[c].to_numpy(np.float64), both[f"{c}_old"].to_numpy(np.float64)
        same &= (a == b) | (np.isnan(a) & np.isnan(b))
    restated = seen & ~same
    dup = int(same.sum())
    n_restated = int(restated.sum())
    if not (~seen).any() and (n_restated == 0 or restatements == "refuse"):
        return None, ~seen, dup, n_restated
    fresh = new[(~seen) | restated]
    if n_restated:
        idx = pd.MultiIndex.from_frame(fresh[keys])
        old = old[~pd.MultiIndex.from_frame(old[keys]).isin(idx)]
    merged = pd.concat([old, fresh], ignore_index=True).sort_values(keys, kind="stable").reset_index(drop=True)
    return merged, ~seen, dup, n_restated


# ---- ingest ------------------------------------------------------------------------------------------------
def ingest(store: Store, location: str, *, now: float, settle_s: float = 60.0,
           restatements: Restatements = "refuse", endpoint_url: str | None = None,
           naive_timezone: str | None = None, max_files: int | None = None) -> IngestReport:
    """Read the location's new, settled files into the bar store (see the module docstring). ``now`` is the
    loop's clock in epoch seconds (a file counts as settled once ``now - modified >= settle_s``)."""
    if restatements not in ("refuse", "newer"):
        raise TidelineError(f"restatements must be 'refuse' or 'newer', not {restatements!r}")
    state, _ = _read_state(store)
    report = IngestReport()
    at = pd.Timestamp(now, unit="s", tz="UTC").isoformat()
    todo = []
    for f in list_source_files(location, endpoint_url=endpoint_url):
        if now - f.modified < settle_s:
            report.waiting.append(f.name)
            continue
        todo.append(f)
    for f in todo[:max_files] if max_files else todo:
        data = f.read()
        digest = hashlib.sha256(data).hexdigest()
        if digest in state["hashes"]:
            report.known += 1
            continue
        outcome = _ingest_one(store, f.name, data, digest, restatements, naive_timezone)
        _remember(store, outcome, at)
        state["hashes"][digest] = {"name": f.name}
        report.files.append(outcome)
        log.info("ingest %s: %s", f.name, outcome.reason or f"{outcome.added} bar(s) added")
    return report


def _ingest_one(store: Store, name: str, data: bytes, digest: str, restatements: Restatements,
                naive_timezone: str | None) -> FileOutcome:
    try:
        bars = validate_bars(read_bars_bytes(data, name), mode="strict", naive_timezone=naive_timezone).clean
    except DataError as e:
        return FileOutcome(name, digest, "refused", reason=str(e))
    newest = None
    month_of = bars["timestamp"].dt.strftime("%Y-%m")
    months = sorted(set(month_of))
    existing = {m: _read_month(store, m) for m in months}
    for df in existing.values():
        if df is not None and len(df):
            t = df["timestamp"].max()
            newest = t if newest is None or t > newest else newest
    later = stored_months(store)
    if later and later[-1] not in existing:  # the newest bar may sit in a month this file does not touch
        last = _read_month(store, later[-1])
        if last is not None and len(last):
            t = last["timestamp"].max()
            newest = t if newest is None or t > newest else newest
    out = FileOutcome(name, digest, "ingested", rows=len(bars))
    merged: dict[str, pd.DataFrame] = {}
    for m in months:
        new = bars[month_of == m]
        result, added, dup, restated = _merge(existing[m], new, restatements)
        out.added += int(added.sum())
        out.duplicates += dup
        out.restated += restated
        if result is not None:
            merged[m] = result
        if newest is not None:  # added bars older than the newest already stored
            out.late += int((added & (new["timestamp"] < newest).to_numpy()).sum())
    if out.restated and restatements == "refuse":
        return FileOutcome(name, digest, "refused", rows=len(bars), restated=out.restated,
                           reason=f"{out.restated} bar(s) restate stored bars with other values (same symbol and "
                                  "time); data.restatements=refuse keeps the stored ones (set it to 'newer' to "
                                  "take the new values)")
    for m, df in merged.items():
        _write_month(store, m, df)
    return out


def summarize(reports: Iterable[IngestReport]) -> str:
    """The summaries of several reports, joined with ``; ``."""
    return "; ".join(r.summary() for r in reports)
