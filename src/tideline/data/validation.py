"""Validate raw bars: type them, find defective rows, and either refuse (strict) or quarantine them.

Everything is vectorized. Row numbers are 1-based data rows in source order (the header excluded),
so row 1 is the first line under a CSV header.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from tideline.data.quality import JUMP_SIGMAS, SymbolQuality, score_symbols
from tideline.data.schema import BAR_COLUMNS, NUMERIC_COLUMNS, PRICE_COLUMNS
from tideline.errors import ValidationError

log = logging.getLogger(__name__)

MAX_ROWS_KEPT = 20
"""How many row numbers a Problem keeps (``count`` has the true total)."""

_MSG_ROWS = 5  # row numbers shown per problem in one-line messages

# row-level defect codes, in report order, with what they mean
ROW_CODES: dict[str, str] = {
    "unparsable_timestamp": "timestamp could not be parsed (or is out of range)",
    "nan_value": "missing or NaN value",
    "non_numeric": "non-numeric value",
    "inf_value": "infinite value",
    "non_positive_price": "price <= 0",
    "high_below_low": "high < low",
    "open_outside_range": "open outside [low, high]",
    "close_outside_range": "close outside [low, high]",
    "negative_volume": "volume < 0",
    "implausible_value": f"value beyond {1e15:g} (price) or {1e18:g} (volume): not a real bar",
    "duplicate_key": "duplicate (symbol, timestamp); every copy is dropped",
    "short_history": "symbol has fewer bars than the history needed (every bar of it is set aside)",
}
MAX_PRICE = 1e15
"""Prices above this are not prices (they overflow float32 model inputs and every ratio built on them)."""
MAX_VOLUME = 1e18
DATASET_CODES: dict[str, str] = {
    "unsorted_time": "timestamps go backwards within a symbol (file order)",
    "low_quality": "data quality score below the threshold (gaps, stale stretches, repeats, jumps)",
}


@dataclass
class Problem:
    """One kind of defect: ``rows`` holds the first row numbers (1-based), ``count`` the true total."""

    code: str
    message: str
    rows: list[int]
    count: int
    columns: list[str] = field(default_factory=list)
    detail: str = ""

    def short(self) -> str:
        """``code (N rows: r1, r2, ... [cols])[: detail]`` for one-line messages."""
        shown = ", ".join(str(r) for r in self.rows[:_MSG_ROWS])
        if self.count > _MSG_ROWS and shown:
            shown += ", ..."
        noun = "row" if self.count == 1 else "rows"
        cols = f" [{', '.join(self.columns)}]" if self.columns else ""
        where = f"{self.count} {noun}: {shown}" if shown else f"{self.count} {noun}"
        return f"{self.code} ({where}{cols})" + (f": {self.detail}" if self.detail else "")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready problem: code, message, count, rows shown, columns (and detail when there is one)."""
        return {
            "code": self.code,
            "message": self.message,
            "count": int(self.count),
            "rows": [int(r) for r in self.rows],
            "columns": list(self.columns),
            **({"detail": self.detail} if self.detail else {}),
        }


@dataclass
class ValidationReport:
    """Outcome of ``validate_bars``: the typed clean frame, the quarantined rows and the problems."""

    clean: pd.DataFrame
    quarantined: pd.DataFrame
    problems: list[Problem]
    n_input: int
    mode: str = "strict"
    quality: dict[str, SymbolQuality] = field(default_factory=dict)

    @property
    def n_clean(self) -> int:
        """Rows in the clean frame."""
        return len(self.clean)

    @property
    def n_quarantined(self) -> int:
        """Rows set aside (quarantined)."""
        return len(self.quarantined)

    @property
    def ok(self) -> bool:
        """True when no problem of any kind was found."""
        return not self.problems

    def headline(self) -> str:
        """One line: ``N problems: code (rows...), ...``."""
        if not self.problems:
            return "no problems"
        n = len(self.problems)
        return f"{n} problem{'s' if n != 1 else ''}: " + ", ".join(p.short() for p in self.problems)

    def summary(self) -> str:
        """Human-readable, one line per problem."""
        lines = [
            f"{self.n_input} rows read, {self.n_clean} clean, {self.n_quarantined} quarantined "
            f"({len(self.problems)} problem{'s' if len(self.problems) != 1 else ''})"
        ]
        for p in self.problems:
            rows = ", ".join(str(r) for r in p.rows)
            more = f" (+{p.count - len(p.rows)} more)" if p.count > len(p.rows) else ""
            cols = f" [{', '.join(p.columns)}]" if p.columns else ""
            noun = "row" if p.count == 1 else "rows"
            detail = f" ({p.detail})" if p.detail else ""
            where = f"; rows {rows}{more}" if rows else ""
            lines.append(f"  {p.code}: {p.count} {noun}{cols} - {p.message}{detail}{where}")
        if self.quality:
            lines.append("quality by symbol (0-1):")
            for q in sorted(self.quality.values(), key=lambda q: (q.score, q.symbol))[:20]:
                lines.append(f"  {q.short()}")
            if len(self.quality) > 20:
                lines.append(f"  ... {len(self.quality) - 20} more symbols")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready report (what ``validation.json`` holds): counts, problems and quality per symbol."""
        return {
            "ok": self.ok,
            "mode": self.mode,
            "n_input": int(self.n_input),
            "n_clean": int(self.n_clean),
            "n_quarantined": int(self.n_quarantined),
            "problems": [p.to_dict() for p in self.problems],
            "data_quality": {s: q.to_dict() for s, q in sorted(self.quality.items())},
        }

    def write(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Write ``quarantine.csv`` (bad rows, ``row``, ``reason``) and ``validation.json`` to a directory."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        csv_path, json_path = out / "quarantine.csv", out / "validation.json"
        self.quarantined.to_csv(csv_path, index=False)
        json_path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return [csv_path, json_path]


# ------------------------------------------------------------------------------------- helpers
def _empty_clean() -> pd.DataFrame:
    data: dict[str, Any] = {
        "timestamp": pd.Series([], dtype="datetime64[ns]"),
        "symbol": pd.Series([], dtype=str),
    }
    for c in NUMERIC_COLUMNS:
        data[c] = pd.Series([], dtype="float64")
    return pd.DataFrame(data)


def _structural(message: str, code: str, n_input: int, df: pd.DataFrame | None, mode: str) -> ValidationError:
    problem = Problem(code=code, message=message, rows=[], count=0)
    quarantined = df.copy() if df is not None else pd.DataFrame()
    report = ValidationReport(_empty_clean(), quarantined, [problem], n_input, mode)
    return ValidationError(message, report)


def _label(c: object, width: int = 40) -> str:
    """A column label for a one-line message: printable, at most ``width`` characters."""
    text = " ".join(str(c).split())
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= width else text[: width - 3] + "..."


def _normalise_columns(df: pd.DataFrame) -> dict[str, Any]:
    """Map required column name -> source column label, matching case- and space-insensitively."""
    found: dict[str, Any] = {}
    for label in df.columns:
        key = str(label).strip().lower()
        if key in BAR_COLUMNS and key not in found:
            found[key] = label
    return found


def _is_blank(s: pd.Series) -> np.ndarray:
    """NA, or a string of only whitespace."""
    na = s.isna().to_numpy()
    if s.dtype == object or pd.api.types.is_string_dtype(s.dtype):
        codes, uniq = pd.factorize(s)  # each distinct value stripped once (a column repeats few symbols)
        blank = (pd.Series(uniq, dtype=object).astype("string").str.strip() == "").fillna(True).to_numpy(dtype=bool)
        na = na | ((codes >= 0) & blank[np.maximum(codes, 0)])
    return na


def _stripped_text(s: pd.Series) -> pd.Series:
    """Each value as text without surrounding whitespace ("" for NA), each distinct value converted once."""
    codes, uniq = pd.factorize(s)
    text = pd.Series(uniq, dtype=object).astype("string").str.strip().fillna("").astype(str).to_numpy(dtype=object)
    return pd.Series(np.where(codes >= 0, text[np.maximum(codes, 0)] if len(text) else "", ""), index=s.index,
                     dtype=object)


_NAT = np.iinfo(np.int64).min
_UNIT_NS = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}


def _to_ns(parsed: pd.Series) -> np.ndarray:
    """Datetimes (naive, or tz-aware -> UTC) of any unit as int64 ns; ``_NAT`` where NaT or out of range."""
    if isinstance(parsed.dtype, pd.DatetimeTZDtype):
        parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    arr = parsed.to_numpy()
    unit = np.datetime_data(arr.dtype)[0]
    factor = _UNIT_NS.get(unit)
    if factor is None:  # unusual unit (e.g. days): go through microseconds
        arr, factor = arr.astype("datetime64[us]"), 1_000
    ints = arr.view(np.int64)
    limit = np.iinfo(np.int64).max // factor
    ok = ~np.isnat(arr) & (np.abs(ints) < limit)
    out = np.full(len(arr), _NAT, dtype=np.int64)
    out[ok] = ints[ok] * factor
    return out


# a time of day followed by a UTC offset (Z, +05:00, -0500, +05): the value says its own time zone
_OFFSET_RE = r"[T ]\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?:Z|z|[+-]\d{2}(?::?\d{2})?)$"


class _MixedZones(Exception):
    """Naive times and times with an offset in one column (no setting says how to read the naive ones)."""


def _localize(ns: np.ndarray, tz: str) -> np.ndarray:
    """Naive wall-clock times (int64 ns) in zone ``tz`` -> UTC; ``_NAT`` where the time does not exist
    or is ambiguous there (a daylight-saving change)."""
    ok = ns != _NAT
    out = np.full(len(ns), _NAT, dtype=np.int64)
    if ok.any():
        local = pd.DatetimeIndex(ns[ok].view("datetime64[ns]")).tz_localize(
            tz, ambiguous="NaT", nonexistent="NaT")
        out[ok] = _to_ns(pd.Series(local))
    return out


def _parse_timestamps(s: pd.Series, naive_timezone: str | None = None) -> np.ndarray:
    """int64 nanoseconds since the epoch (UTC, tz dropped); ``_NAT`` where unparsable or out of range.

    Values with a UTC offset are converted exactly. Naive values are UTC unless ``naive_timezone`` names
    the zone they are in (e.g. the exchange's). A text column that mixes naive values with values that
    carry an offset raises ``_MixedZones`` unless ``naive_timezone`` is given: a parser would otherwise
    guess (pandas gives each naive value the offset of the row before it)."""
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        return _to_ns(s)
    if pd.api.types.is_datetime64_dtype(s.dtype):
        ns = _to_ns(s)
        return _localize(ns, naive_timezone) if naive_timezone else ns
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        vals = pd.to_numeric(s, errors="coerce").astype("float64")
        finite = np.isfinite(vals.to_numpy())
        med = float(np.median(np.abs(vals.to_numpy()[finite]))) if finite.any() else 0.0
        unit = "s" if med < 1e11 else "ms" if med < 1e14 else "us" if med < 1e17 else "ns"
        with np.errstate(invalid="ignore"):  # beyond int64 nanoseconds: out of range (pandas would overflow)
            usable = finite & (np.abs(vals.to_numpy()) < 9.2e18 / _UNIT_NS[unit])
        return _to_ns(pd.to_datetime(vals.where(usable), unit=unit, errors="coerce"))
    text = s.astype("string").str.strip()
    filled = text[text.notna() & (text != "")]
    if len(filled) and filled.str.fullmatch(r"[+-]?\d{9,}(?:\.\d*)?").all():  # epoch s/ms/us/ns as text
        return _parse_timestamps(text.where(text != "").astype("float64"))
    aware = text.str.contains(_OFFSET_RE, regex=True).fillna(False).to_numpy(dtype=bool)
    naive = ~aware & text.notna().to_numpy() & (text != "").fillna(False).to_numpy(dtype=bool)
    if aware.any() and naive.any():
        if naive_timezone is None:
            raise _MixedZones(f"{int(aware.sum())} timestamps carry a UTC offset and {int(naive.sum())} do "
                              f"not (rows {_first_rows(aware)} vs {_first_rows(naive)})")
        out = _parse_timestamps(text.where(aware))
        out[naive] = _parse_timestamps(text.where(naive), naive_timezone)[naive]
        return out
    out = _to_ns(pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601"))
    failed = (out == _NAT) & text.notna().to_numpy() & (text != "").fillna(False).to_numpy(dtype=bool)
    if failed.any():
        uniq = pd.unique(text[failed].to_numpy(dtype=object))
        if len(uniq) <= 10_000:  # other formats: parse each distinct value once
            again = pd.to_datetime(pd.Series(uniq, dtype=object), utc=True, errors="coerce", format="mixed")
            retry = _to_ns(again)
            out[failed] = retry[pd.Index(uniq).get_indexer(text[failed].to_numpy(dtype=object))]
    if naive_timezone and not aware.any():
        out = _localize(out, naive_timezone)
    return out


def _first_rows(mask: np.ndarray, n: int = 3) -> str:
    rows = np.flatnonzero(mask)[:n] + 1
    return ", ".join(str(r) for r in rows) + (", ..." if mask.sum() > n else "")


def _numeric(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """float64 values and a mask of non-blank values that are not numbers."""
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        return s.to_numpy(dtype="float64", na_value=np.nan), np.zeros(len(s), dtype=bool)
    blank = _is_blank(s)
    coerced = pd.to_numeric(s.astype("string").str.strip(), errors="coerce")
    vals = coerced.to_numpy(dtype="float64", na_value=np.nan)
    non_numeric = np.isnan(vals) & ~blank
    # literal "nan" strings count as missing, not as non-numeric
    if non_numeric.any():
        txt = s.astype("string").str.strip().str.lower()
        literal_nan = txt.isin(["nan", "na", "n/a", "null", "none"]).fillna(False).to_numpy(dtype=bool)
        non_numeric &= ~literal_nan
        # numbers too large for float64 (1e309) are infinite, not text
        idx = np.flatnonzero(non_numeric)
        uniq = pd.unique(txt.to_numpy(dtype=object)[idx])
        if len(uniq) <= 10_000:
            big = {u: _overflow(u) for u in uniq}
            over = np.array([big[u] for u in txt.to_numpy(dtype=object)[idx]], dtype=np.float64)
            hit = ~np.isnan(over)
            vals[idx[hit]] = over[hit]
            non_numeric[idx[hit]] = False
    return vals, non_numeric


def _overflow(text: object) -> float:
    """+-inf for a number literal too large for float64, else NaN."""
    try:
        v = float(str(text))
    except ValueError:
        return np.nan
    return v if np.isinf(v) and "inf" not in str(text) else np.nan


def _problem(
    code: str, mask: np.ndarray, row_numbers: np.ndarray, columns: list[str] | None = None
) -> Problem | None:
    idx = np.flatnonzero(mask)
    if len(idx) == 0:
        return None
    msg = ROW_CODES.get(code) or DATASET_CODES[code]
    if columns:
        msg = f"{msg} in {', '.join(columns)}"
    rows = [int(r) for r in row_numbers[idx[:MAX_ROWS_KEPT]]]
    return Problem(code, msg, rows, int(len(idx)), columns or [])


# ---------------------------------------------------------------------------------------- public
def validate_bars(
    df: pd.DataFrame,
    *,
    mode: Literal["strict", "quarantine"] = "strict",
    min_rows: int = 1,
    min_bars_per_symbol: int = 1,
    naive_timezone: str | None = None,
    min_quality: float = 0.0,
    jump_sigmas: float = JUMP_SIGMAS,
    score: bool = True,
) -> ValidationReport:
    """Type and check raw bars.

    ``strict``: any problem (including unsorted time) raises ``ValidationError`` with the report
    attached. ``quarantine``: bad rows are set aside (all copies of a duplicated key), unsorted data
    is sorted and recorded, and an error is raised only when fewer than ``min_rows`` rows survive.
    Nothing is ever filled in. A symbol left with fewer than ``min_bars_per_symbol`` good bars is a
    ``short_history`` problem (quarantine: all its bars are set aside; the message names it, with the
    bars it has and needs). Timestamps with a UTC offset are converted to UTC; naive ones are UTC unless
    ``naive_timezone`` names their zone; a column mixing the two is refused (``mixed_timezones``, in
    either mode: which rows are right cannot be known) unless ``naive_timezone`` is given.

    Each symbol's clean series gets a quality score (``tideline.data.quality``: calendar gaps, stale
    stretches, repeated bars, jumps beyond ``jump_sigmas``), kept in ``report.quality``. A symbol scoring
    below ``min_quality`` is a ``low_quality`` problem (quarantine: all its bars are set aside with the
    score and reasons). ``score=False`` skips the scores (``report.quality`` empty; ``min_quality`` must then be
    0, the default, which refuses nothing): the predictor checks each request's bars this way.
    """
    if mode not in ("strict", "quarantine"):
        raise ValueError(f"mode must be 'strict' or 'quarantine', not {mode!r}")
    if df is None or not isinstance(df, pd.DataFrame) or len(df) == 0:
        raise _structural("market data is empty: no rows to validate", "empty", 0, None, mode)
    n = len(df)
    colmap = _normalise_columns(df)
    keys = [str(c).strip().lower() for c in df.columns]
    doubled = [c for c in BAR_COLUMNS if keys.count(c) > 1]
    if doubled:
        raise _structural(
            f"market data has duplicate columns: {', '.join(doubled)}", "duplicate_columns", n, df, mode
        )
    missing = [c for c in BAR_COLUMNS if c not in colmap]
    if missing:
        have = ", ".join(_label(c) for c in df.columns[:12]) + (", ..." if len(df.columns) > 12 else "")
        raise _structural(
            f"market data is missing required column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"(found: {have})",
            "missing_columns",
            n,
            df,
            mode,
        )

    row_numbers = np.arange(1, n + 1, dtype=np.int64)
    masks: dict[str, np.ndarray] = {}
    missing_by_col: dict[str, np.ndarray] = {}
    nonnum_by_col: dict[str, np.ndarray] = {}

    # timestamp
    ts_src = df[colmap["timestamp"]]
    ts_blank = _is_blank(ts_src)
    try:
        ts = _parse_timestamps(ts_src, naive_timezone)
    except _MixedZones as e:
        raise _structural(f"market data mixes time zones in its timestamp column: {e}; set "
                          "data.naive_timezone (e.g. America/New_York) to say what the naive ones mean",
                          "mixed_timezones", n, df, mode) from None
    ts_bad = ts == _NAT
    missing_by_col["timestamp"] = ts_blank
    masks["unparsable_timestamp"] = ts_bad & ~ts_blank

    # symbol
    sym_src = df[colmap["symbol"]]
    sym_blank = _is_blank(sym_src)
    missing_by_col["symbol"] = sym_blank
    symbols = _stripped_text(sym_src)

    # numeric columns
    values: dict[str, np.ndarray] = {}
    for c in NUMERIC_COLUMNS:
        vals, non_numeric = _numeric(df[colmap[c]])
        values[c] = vals
        nonnum_by_col[c] = non_numeric
        missing_by_col[c] = np.isnan(vals) & ~non_numeric
    nan_cols = [c for c in BAR_COLUMNS if missing_by_col[c].any()]
    masks["nan_value"] = np.logical_or.reduce([missing_by_col[c] for c in BAR_COLUMNS])
    nonnum_cols = [c for c in NUMERIC_COLUMNS if nonnum_by_col[c].any()]
    masks["non_numeric"] = np.logical_or.reduce([nonnum_by_col[c] for c in NUMERIC_COLUMNS])
    inf_by_col = {c: np.isinf(values[c]) for c in NUMERIC_COLUMNS}
    inf_cols = [c for c in NUMERIC_COLUMNS if inf_by_col[c].any()]
    masks["inf_value"] = np.logical_or.reduce(list(inf_by_col.values()))

    o, h, lo, cl, v = (values[c] for c in NUMERIC_COLUMNS)
    finite = np.isfinite(o) & np.isfinite(h) & np.isfinite(lo) & np.isfinite(cl)
    with np.errstate(invalid="ignore"):
        nonpos_by_col = {c: values[c] <= 0 for c in PRICE_COLUMNS}
        nonpos_cols = [c for c in PRICE_COLUMNS if nonpos_by_col[c].any()]
        masks["non_positive_price"] = np.logical_or.reduce(list(nonpos_by_col.values()))
        masks["high_below_low"] = finite & (h < lo)
        masks["open_outside_range"] = finite & (h >= lo) & ((o < lo) | (o > h))
        masks["close_outside_range"] = finite & (h >= lo) & ((cl < lo) | (cl > h))
        masks["negative_volume"] = v < 0
        masks["implausible_value"] = (
            np.logical_or.reduce([np.isfinite(values[c]) & (values[c] > MAX_PRICE) for c in PRICE_COLUMNS])
            | (np.isfinite(v) & (v > MAX_VOLUME))
        )

    # duplicates and ordering among rows with a usable key
    keyed = ~ts_bad & ~sym_blank
    codes, uniques = pd.factorize(symbols, sort=True)
    codes = codes.astype(np.int64)
    dup = np.zeros(n, dtype=bool)
    unsorted_rows = np.zeros(n, dtype=bool)
    kidx = np.flatnonzero(keyed)
    if len(kidx) > 1:
        korder = kidx[np.lexsort((ts[kidx], codes[kidx]))]  # stable: file order within equal keys
        kc, kt = codes[korder], ts[korder]
        same = (kc[1:] == kc[:-1]) & (kt[1:] == kt[:-1])
        d = np.zeros(len(korder), dtype=bool)
        d[1:] |= same
        d[:-1] |= same
        dup[korder[d]] = True
        forder = kidx[np.argsort(codes[kidx], kind="stable")]  # file order within each symbol
        fc, ft = codes[forder], ts[forder]
        back = (fc[1:] == fc[:-1]) & (ft[1:] < ft[:-1])
        unsorted_rows[forder[1:][back]] = True
    masks["duplicate_key"] = dup

    # symbols with too little history among the rows that are otherwise good
    masks["short_history"] = np.zeros(n, dtype=bool)
    short_detail = ""
    if min_bars_per_symbol > 1:
        ok_rows = ~np.logical_or.reduce([masks[c] for c in ROW_CODES if c != "short_history"]) & ~sym_blank
        counts = np.bincount(codes[ok_rows], minlength=len(uniques)) if len(uniques) else np.zeros(0, int)
        short_codes = np.flatnonzero((counts > 0) & (counts < min_bars_per_symbol))
        if len(short_codes):
            masks["short_history"] = ok_rows & np.isin(codes, short_codes)
            worst = short_codes[np.argsort(counts[short_codes], kind="stable")]
            named = ", ".join(
                f"{_label(uniques[k], 24)} has {counts[k]} bar{'s' if counts[k] != 1 else ''}" for k in worst[:5]
            )
            more = f" (+{len(worst) - 5} more symbols)" if len(worst) > 5 else ""
            short_detail = f"{named}{more}; at least {min_bars_per_symbol} needed"

    problems: list[Problem] = []
    cols_for = {
        "nan_value": nan_cols,
        "non_numeric": nonnum_cols,
        "inf_value": inf_cols,
        "non_positive_price": nonpos_cols,
    }
    for code in ROW_CODES:
        p = _problem(code, masks[code], row_numbers, cols_for.get(code))
        if p:
            if code == "short_history":
                p.detail = short_detail
            problems.append(p)
    unsorted = _problem("unsorted_time", unsorted_rows, row_numbers)
    if unsorted:
        unsorted.message += f" ({unsorted.count} step{'s' if unsorted.count != 1 else ''} back)"
        problems.append(unsorted)

    bad = np.logical_or.reduce([masks[c] for c in ROW_CODES])
    good = ~bad

    # quarantined: source rows + row + reason
    bad_idx = np.flatnonzero(bad)
    quarantined = df.iloc[bad_idx].copy()
    quarantined = quarantined.rename(columns={c: f"source_{c}" for c in ("row", "reason") if c in df.columns})
    quarantined.insert(0, "row", row_numbers[bad_idx])
    if len(bad_idx):
        per_col_masks: dict[str, dict[str, np.ndarray]] = {
            "nan_value": missing_by_col,
            "non_numeric": nonnum_by_col,
            "inf_value": inf_by_col,
            "non_positive_price": nonpos_by_col,
        }
        reason = np.full(len(bad_idx), "", dtype=object)
        for code in ROW_CODES:
            m = masks[code][bad_idx]
            if not m.any():
                continue
            detail = np.full(int(m.sum()), code, dtype=object)
            per_col = per_col_masks.get(code)
            if per_col is not None:
                cols = np.full(int(m.sum()), "", dtype=object)
                for c, cm in per_col.items():
                    sub = cm[bad_idx][m]
                    cols[sub] = cols[sub] + np.where(cols[sub] == "", "", ",") + c
                detail = detail + "[" + cols + "]"
            reason[m] = np.where(reason[m] == "", detail, reason[m] + "; " + detail)
        quarantined["reason"] = reason
    else:
        quarantined["reason"] = pd.Series([], dtype=object)
    quarantined = quarantined.reset_index(drop=True)

    # clean frame, typed and sorted by (symbol, timestamp)
    gidx = np.flatnonzero(good)
    gidx = gidx[np.lexsort((ts[gidx], codes[gidx]))]
    clean = pd.DataFrame(
        {
            "timestamp": ts[gidx].view("datetime64[ns]"),
            "symbol": pd.Series(np.asarray(uniques, dtype=object)[codes[gidx]], dtype=str),
            **{c: values[c][gidx] for c in NUMERIC_COLUMNS},
        }
    )
    if not score and min_quality > 0:
        raise ValueError("min_quality needs the quality scores (score=True)")
    quality = score_symbols(clean, jump_sigmas=jump_sigmas) if score else {}
    low = sorted((q for q in quality.values() if q.score < min_quality), key=lambda q: q.score)
    if low:
        drop = clean["symbol"].isin([q.symbol for q in low]).to_numpy()
        shown = "; ".join(q.short() for q in low[:3]) + (f" (+{len(low) - 3} more)" if len(low) > 3 else "")
        problems.append(Problem("low_quality", f"data quality score below {min_quality:g}", [],
                                int(drop.sum()), detail=shown))
        if mode == "quarantine":
            src = gidx[drop]  # their source rows
            score_of = {q.symbol: q for q in low}
            extra = df.iloc[src].copy()
            extra = extra.rename(columns={c: f"source_{c}" for c in ("row", "reason") if c in df.columns})
            extra.insert(0, "row", row_numbers[src])
            extra["reason"] = [f"low_quality[{score_of[s_].score:.2f}: {'; '.join(score_of[s_].reasons)}]"
                               for s_ in clean["symbol"].to_numpy()[drop]]
            quarantined = pd.concat([quarantined, extra], ignore_index=True)
            clean = clean[~drop].reset_index(drop=True)
            gidx = gidx[~drop]
            bad_idx = np.r_[bad_idx, src]
    report = ValidationReport(clean, quarantined, problems, n, mode, quality)

    if len(gidx) == 0:
        raise ValidationError(
            f"market data has no usable rows: all {n} rows are bad; {report.headline()}", report
        )
    if mode == "strict" and problems:
        raise ValidationError(f"market data failed validation: {report.headline()}", report)
    if len(gidx) < min_rows:
        raise ValidationError(
            f"market data has only {len(gidx)} usable rows (need at least {min_rows}); {report.headline()}",
            report,
        )
    if problems:
        log.warning("market data: quarantined %d of %d rows; %s", len(bad_idx), n, report.headline())
    return report
