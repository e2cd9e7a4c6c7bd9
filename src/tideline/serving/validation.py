"""Request validation for the predictor: every refusal is a ``RequestError`` with an HTTP status and a
one-line message saying what is wrong (never a traceback).

Status codes: 400 = the envelope is not what the protocol says (not JSON, ``instances`` not a list, a v2
input without a name ...); 422 = well-formed but unusable for this model (unknown or missing features,
booleans or strings where numbers belong, NaN/inf, a value outside float32 range, a bad timestamp, more
rows than ``--max-rows``); 413 = the body is larger than ``--max-body-bytes`` (checked before parsing,
in ``tideline.serving.server``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import repeat
from operator import getitem, itemgetter
from typing import Any, Final

import numpy as np

F32_MAX: Final = float(np.finfo(np.float32).max)
META_FIELDS: Final = ("symbol", "timestamp")
# the bar times the prediction log (and every pandas frame of bars) can hold: datetime64[ns] spans
# 1677-09-21 .. 2262-04-11; a request is refused at the door rather than accepted and left unloggable
BAR_TIME_MIN: Final = datetime(1678, 1, 1)
BAR_TIME_MAX: Final = datetime(2261, 12, 31, 23, 59, 59)
# the range of each integer datatype of the Open Inference Protocol (a value outside it is not that type)
INT_RANGES: Final = {
    "INT8": (-(2**7), 2**7 - 1), "INT16": (-(2**15), 2**15 - 1), "INT32": (-(2**31), 2**31 - 1),
    "INT64": (-(2**63), 2**63 - 1), "UINT8": (0, 2**8 - 1), "UINT16": (0, 2**16 - 1),
    "UINT32": (0, 2**32 - 1), "UINT64": (0, 2**64 - 1),
}
NUMERIC_V2_TYPES: Final = frozenset(
    {"FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
)
_NUMBER: Final = (int, float)
_NUMBER_TYPES: Final = frozenset(_NUMBER)  # exact types: bool (an int subclass) is not a number here
_MAX_SYMBOL_LEN: Final = 64
_MAX_NAMES_SHOWN: Final = 8


class RequestError(Exception):
    """A request the predictor refuses; ``status`` is the HTTP status, ``message`` goes to the client."""

    def __init__(self, status: int, message: str) -> None:
        if not message.isascii():  # a client's text quoted back may hold lone surrogates (not UTF-8)
            message = message.encode("utf-8", "backslashreplace").decode("utf-8")
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Batch:
    """Validated rows: ``X`` float64 ``(n, len(columns))`` (all finite, within float32 range); ``symbols``
    (None where not given) and ``bar_times`` (datetime64[us], naive UTC; NaT where not given)."""

    X: np.ndarray
    columns: tuple[str, ...]
    symbols: list[str | None]
    bar_times: np.ndarray
    bars: np.ndarray | None = None
    """for a request of bars: the bars of each row's symbol its features were computed from"""

    @property
    def n(self) -> int:
        """Rows in the batch."""
        return int(self.X.shape[0])


@dataclass(frozen=True)
class Schema:
    """What a request may carry: ``required`` features (the active model's columns), ``optional`` extra
    features (a shadow model's columns the active one does not use), plus ``symbol`` / ``timestamp``."""

    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    max_rows: int = 10_000

    @property
    def columns(self) -> tuple[str, ...]:
        """Every feature column a request may carry: the required ones, then the optional ones."""
        return self.required + self.optional

    @functools.cached_property
    def allowed(self) -> frozenset[str]:
        """Every key an instance may carry (built once per schema, not per request)."""
        return frozenset(self.required) | frozenset(self.optional) | frozenset(META_FIELDS)

    @functools.cached_property
    def v1_decoder(self) -> Any:
        """A msgspec decoder for the common v1 body: ``{"instances": [...], "parameters": ...?}`` whose every row
        holds exactly the required features as numbers, plus ``symbol`` / ``timestamp`` as strings (``decode_v1``);
        None when the schema has optional features (their absence has its own rules) or a feature named like a
        key of the envelope."""
        import msgspec

        if self.optional or not self.required or set(self.required) & {*META_FIELDS, "instances", "parameters"}:
            return None
        fields = [(f"f{i}", float, msgspec.field(name=c)) for i, c in enumerate(self.required)]
        row = msgspec.defstruct("Row", [*fields, ("symbol", str, None), ("timestamp", str, None)],
                                forbid_unknown_fields=True, gc=False)
        body = msgspec.defstruct("V1", [("instances", list[row]), ("parameters", object, None)],
                                 forbid_unknown_fields=True)
        return msgspec.json.Decoder(body)

    @functools.cached_property
    def getter(self) -> Any:
        """The required features of one instance, as a tuple, in C (``operator.itemgetter``)."""
        return itemgetter(*self.required) if len(self.required) > 1 else (lambda d: (d[self.required[0]],))


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(repr(str(n)[:80]) for n in list(names)[:_MAX_NAMES_SHOWN])
    more = len(names) - _MAX_NAMES_SHOWN
    return shown + (f" (+{more} more)" if more > 0 else "")


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def _check_rows(n: int, schema: Schema) -> None:
    if n == 0:
        raise RequestError(422, "no rows to predict: send at least one instance")
    if n > schema.max_rows:
        raise RequestError(422, f"{n} rows in one request; the limit is {schema.max_rows} (--max-rows)")


def _check_values(X: np.ndarray, columns: Sequence[str], where: str) -> None:
    """Refuse NaN/inf and values a float32 model input cannot hold, naming the first bad cell."""
    if (np.abs(X) <= F32_MAX).all():  # NaN compares False (silently), so it is caught too
        return
    bad = ~(np.abs(X) <= F32_MAX)
    if bad.any():
        r, c = (int(i) for i in np.argwhere(bad)[0])
        v = float(X[r, c])
        what = "not finite" if not np.isfinite(v) else f"outside the float32 range (|x| <= {F32_MAX:.4g})"
        raise RequestError(
            422, f"{where.format(row=r)}: feature {columns[c]!r} is {v!r}, {what}; "
            f"{int(bad.sum())} bad value(s) in total"
        )


def parse_time(value: Any, where: str) -> datetime | None:
    """ISO-8601 timestamp string (or null) -> naive UTC datetime."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise RequestError(422, f"{where}: timestamp must be an ISO-8601 string or null, got {_kind(value)}")
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        raise RequestError(422, f"{where}: timestamp {value[:60]!r} is not an ISO-8601 time") from None
    if ts.tzinfo is not None:
        try:
            ts = ts.astimezone(UTC).replace(tzinfo=None)
        except OverflowError:  # e.g. 9999-12-31T23:59-05:00 is after datetime.max in UTC
            raise RequestError(422, f"{where}: timestamp {value[:60]!r} is out of range in UTC") from None
    if not BAR_TIME_MIN <= ts <= BAR_TIME_MAX:
        raise RequestError(422, f"{where}: timestamp {value[:60]!r} is outside the bar times tideline stores "
                           f"({BAR_TIME_MIN:%Y-%m-%d} to {BAR_TIME_MAX:%Y-%m-%d})")
    return ts


def _symbol(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise RequestError(422, f"{where}: symbol must be a string or null, got {_kind(value)}")
    if not value or len(value) > _MAX_SYMBOL_LEN:
        raise RequestError(422, f"{where}: symbol must have 1 to {_MAX_SYMBOL_LEN} characters")
    if not value.isprintable() or value != value.strip():
        raise RequestError(422, f"{where}: symbol {value[:_MAX_SYMBOL_LEN]!r} has control characters or "
                           "surrounding spaces")
    return value


# --------------------------------------------------------------------------------------------- v1


def validate_v1(payload: Any, schema: Schema) -> Batch:
    """``{"instances": [{feature: number, ..., "symbol": str?, "timestamp": str?}, ...]}`` -> Batch.

    A well-formed batch takes the columnar path (``_fast_v1``); anything else the row-by-row one, which
    names the first problem."""
    if not isinstance(payload, dict):
        raise RequestError(400, 'the body must be a JSON object {"instances": [...]}, got ' + _kind(payload))
    if "instances" not in payload:
        keys = _names(list(payload)) if payload else "none"
        raise RequestError(400, f'the body needs "instances" (a list of feature objects); keys given: {keys}')
    extra_keys = [k for k in payload if k not in ("instances", "parameters")]
    if extra_keys:
        raise RequestError(400, f"unexpected top-level key(s) {_names(extra_keys)}; send only \"instances\"")
    instances = payload["instances"]
    if not isinstance(instances, list):
        raise RequestError(400, f'"instances" must be a list of objects, got {_kind(instances)}')
    _check_rows(len(instances), schema)
    fast = _fast_v1(instances, schema) if len(instances) >= _FAST_MIN_ROWS else None
    if fast is not None:
        return fast

    required = schema.required
    optional = schema.optional
    allowed = schema.allowed
    n_req = len(required)
    rows: list[list[Any]] = []
    symbols: list[str | None] = []
    times: list[datetime | None] = []
    for i, inst in enumerate(instances):
        if type(inst) is not dict:
            raise RequestError(400, f"instances[{i}] must be an object of feature: number, got {_kind(inst)}")
        try:
            row = [inst[c] for c in required]
        except KeyError:
            missing = [c for c in required if c not in inst]
            raise RequestError(
                422, f"instances[{i}] lacks {len(missing)} feature(s) the model needs: {_names(missing)}"
            ) from None
        n_meta = ("symbol" in inst) + ("timestamp" in inst)
        if len(inst) != n_req + n_meta:
            unknown = [k for k in inst if k not in allowed]
            if unknown:
                raise RequestError(
                    422, f"instances[{i}] has {len(unknown)} unknown feature(s): {_names(unknown)} "
                    f"(the model takes {n_req} features: {_names(required)})"
                )
            row.extend(inst.get(c) for c in optional)  # optional (shadow-only) features
        elif optional:
            row.extend([None] * len(optional))
        if not _NUMBER_TYPES.issuperset(map(type, row)):  # the common case in C; the loop names the culprit
            for j, v in enumerate(row):
                t = type(v)
                if t is not float and t is not int:
                    if j >= n_req and v is None:
                        continue  # an optional feature left out
                    raise RequestError(
                        422, f"instances[{i}]: feature {schema.columns[j]!r} must be a number, got {_kind(v)}"
                    )
        rows.append(row)
        symbols.append(_symbol(inst["symbol"], f"instances[{i}]") if "symbol" in inst else None)
        times.append(parse_time(inst["timestamp"], f"instances[{i}]") if "timestamp" in inst else None)
    try:
        X = np.array(rows, dtype=np.float64)
    except (OverflowError, ValueError, TypeError):
        X = _slow_matrix(rows, schema.columns, "instances[{row}]")
    if optional:
        # optional features that were left out are NaN: only the shadow model reads them, and it is
        # refused there (counted as a shadow error), never in the response.
        _check_values(X[:, :n_req], required, "instances[{row}]")
        with np.errstate(invalid="ignore"):
            over = np.abs(X[:, n_req:]) > F32_MAX
        if over.any():
            r, c = (int(i) for i in np.argwhere(over)[0])
            raise RequestError(422, f"instances[{r}]: feature {optional[c]!r} is outside the float32 range")
    else:
        _check_values(X, required, "instances[{row}]")
    return Batch(X=X, columns=schema.columns, symbols=symbols, bar_times=_times_array(times))


_ABSENT: Final = object()
_FAST_MIN_ROWS: Final = 8  # below this the row loop is quicker than the batch's fixed numpy costs


def decode_v1(body: bytes | bytearray | str, schema: Schema) -> Batch | None:
    """Parse and validate a v1 body in one pass (msgspec, in C: a number where each feature belongs, no key
    missing or unknown, strings for ``symbol`` / ``timestamp``), for the common body; None for any other (the
    caller parses it and ``validate_v1`` refuses it with its reason, or accepts what this path does not take).
    Like ``_fast_v1`` it never refuses and never accepts what ``validate_v1`` would refuse: both give the same
    batch (tested on generated bodies)."""
    import msgspec
    from msgspec.structs import astuple

    decoder = schema.v1_decoder
    if decoder is None:
        return None
    try:
        rows = decoder.decode(body).instances
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):  # the last: bytes not UTF-8
        return None
    n, k = len(rows), len(schema.required)
    if not 0 < n <= schema.max_rows:
        return None
    cells = np.array(list(map(astuple, rows)), dtype=object)  # n x (features, symbol, timestamp)
    X = cells[:, :k].astype(np.float64)
    return _finish(X, cells[:, k].tolist(), cells[:, k + 1].tolist(), None, schema)


def _fast_v1(instances: list[Any], schema: Schema) -> Batch | None:
    """The whole batch at once, with no per-row Python beyond C-level ``map``: None when anything is off
    (the row-by-row path then finds and names it), so this path never refuses and never accepts what the
    other would refuse."""
    if schema.optional:
        return None
    n, n_req = len(instances), len(schema.required)
    try:
        syms = list(map(dict.get, instances, repeat("symbol"), repeat(_ABSENT)))
        stamps = list(map(dict.get, instances, repeat("timestamp"), repeat(_ABSENT)))
    except TypeError:  # an instance that is not an object
        return None
    has_sym, has_ts = _present(syms), _present(stamps)
    if has_sym is None or has_ts is None:
        return None  # symbol or timestamp on some rows only
    if any(map(int.__ne__, map(len, instances), repeat(n_req + has_sym + has_ts))):
        return None  # unknown keys
    try:
        rows = list(map(schema.getter, instances))  # KeyError: a missing feature
        X = np.array(rows)  # numpy's own typing of the whole batch: strings, None, lists, huge ints show
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
    if X.dtype.kind not in "fi" or X.shape != (n, n_req):  # as 'U', 'O' or a bad shape
        return None
    X = X.astype(np.float64, copy=False)
    # a boolean among numbers passes as 1.0 or 0.0: look at the type of just those cells
    r_idx, c_idx = np.nonzero((X == 1.0) | (X == 0.0))
    if len(r_idx) and bool in set(map(type, map(getitem, map(rows.__getitem__, r_idx.tolist()), c_idx.tolist()))):
        return None
    return _finish(X, syms, stamps, _ABSENT, schema)


def _finish(X: np.ndarray, syms: list[Any], stamps: list[Any], absent: Any, schema: Schema) -> Batch | None:
    """The batch of a typed matrix and its rows' symbols and timestamps (``absent`` where a row has none), or
    None when a value is outside float32, the symbols or timestamps are on some rows only, or one is bad."""
    n = len(syms)
    if not (np.abs(X) <= F32_MAX).all():
        return None
    has_sym, has_ts = _present(syms, absent), _present(stamps, absent)
    if has_sym is None or has_ts is None:
        return None
    symbols: list[str | None] = [None] * n
    if has_sym:
        try:
            for s in set(syms):
                _symbol(s, "")
        except (RequestError, TypeError):  # TypeError: an unhashable symbol (a list ...)
            return None
        symbols = syms
    times = np.full(n, np.datetime64("NaT", "us"))
    if has_ts:
        try:
            parsed = {t: parse_time(t, "") for t in set(stamps)}
        except (RequestError, TypeError):
            return None
        times = _times_array(list(map(parsed.__getitem__, stamps)))
    return Batch(X=X, columns=schema.columns, symbols=symbols, bar_times=times)


def _present(values: list[Any], absent: Any = _ABSENT) -> bool | None:
    """True when every row carries the key, False when none does, None when only some do."""
    first = values[0] is not absent
    return first if all((v is not absent) is first for v in values) else None


def _times_array(times: Sequence[datetime | None]) -> np.ndarray:
    """Naive UTC datetimes (None = not given) as datetime64[us] (NaT)."""
    return np.array([np.datetime64("NaT") if t is None else t for t in times], dtype="datetime64[us]")


def _check_ints(name: str, datatype: str, data: list[Any], bounds: tuple[int, int]) -> None:
    """An integer tensor holds whole numbers within its datatype's range (INT8 1000 is not an INT8)."""
    lo, hi = bounds
    for r, v in enumerate(data):
        if type(v) is not int or not lo <= v <= hi:
            what = "not a whole number" if type(v) is not int else f"outside {datatype}'s range [{lo}, {hi}]"
            raise RequestError(422, f"input {name!r}: value {r} ({repr(v)[:40]}) is {what}")


def _slow_matrix(rows: list[list[Any]], columns: Sequence[str], where: str) -> np.ndarray:
    """Cell by cell, to name the value that does not fit a float64 (e.g. a 400-digit integer)."""
    X = np.empty((len(rows), len(columns)), dtype=np.float64)
    for r, row in enumerate(rows):
        for c, v in enumerate(row):
            try:
                X[r, c] = np.nan if v is None else float(v)
            except (OverflowError, ValueError, TypeError):
                raise RequestError(
                    422, f"{where.format(row=r)}: feature {columns[c]!r} is outside the float32 range"
                ) from None
    return X


# --------------------------------------------------------------------------------------------- v2


def validate_v2(inputs: Any, schema: Schema) -> Batch:
    """Open Inference Protocol inputs (objects with name, shape, datatype, data; e.g. kserve's
    ``InferInput``): one tensor per feature, shape ``[n]`` or ``[n, 1]``; optional BYTES ``symbol`` and
    ``timestamp`` tensors of the same length."""
    if not isinstance(inputs, list) or not inputs:
        raise RequestError(400, '"inputs" must be a non-empty list of tensors, one per feature')
    allowed = frozenset(schema.columns)
    by_name: dict[str, Any] = {}
    for k, t in enumerate(inputs):
        name = getattr(t, "name", None)
        if not isinstance(name, str) or not name:
            raise RequestError(400, f"inputs[{k}] has no name")
        if name in by_name:
            raise RequestError(400, f"input {name[:80]!r} is given twice")
        by_name[name] = t
    unknown = [n for n in by_name if n not in allowed and n not in META_FIELDS]
    if unknown:
        raise RequestError(
            422, f"{len(unknown)} unknown input(s): {_names(unknown)} "
            f"(the model takes {len(schema.required)} features: {_names(schema.required)})"
        )
    missing = [c for c in schema.required if c not in by_name]
    if missing:
        raise RequestError(
            422, f"{len(missing)} feature input(s) the model needs are missing: {_names(missing)}")

    n: int | None = None
    first: str = ""

    def length(name: str, t: Any) -> int:
        nonlocal n, first
        shape = getattr(t, "shape", None)
        data = getattr(t, "data", None)
        if not isinstance(shape, list) or not shape or not all(type(s) is int and s >= 0 for s in shape):
            raise RequestError(400, f"input {name!r}: shape must be a list of non-negative integers")
        if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
            raise RequestError(422, f"input {name!r}: shape {shape} is not [n] or [n, 1] (one value per row)")
        if not isinstance(data, list):
            raise RequestError(400, f"input {name!r}: data must be a flat list")
        if len(data) != shape[0]:
            raise RequestError(
                422, f"input {name!r}: shape {shape} says {shape[0]} values, data has {len(data)}")
        if n is None:
            n, first = shape[0], name
            _check_rows(n, schema)
        elif shape[0] != n:
            raise RequestError(
                422, f"input {name!r} has {shape[0]} rows but {first!r} has {n}; all must match")
        return shape[0]

    columns = [c for c in schema.columns if c in by_name]
    X = np.empty((0, 0))
    for j, c in enumerate(columns):
        t = by_name[c]
        dt = str(getattr(t, "datatype", "")).upper()
        if dt not in NUMERIC_V2_TYPES:
            raise RequestError(
                422, f"input {c!r} has datatype {dt or 'none'}; features must be numeric (FP32 or FP64)"
            )
        rows = length(c, t)
        data = t.data
        if not _NUMBER_TYPES.issuperset(set(map(type, data))):  # the whole tensor in C; the loop names it
            for r, v in enumerate(data):
                if type(v) is not float and type(v) is not int:
                    raise RequestError(422, f"input {c!r}: value {r} must be a number, got {_kind(v)}")
        bounds = INT_RANGES.get(dt)
        if bounds is not None:
            _check_ints(c, dt, data, bounds)
        if j == 0:
            X = np.full((rows, len(schema.columns)), np.nan, dtype=np.float64)
        try:
            X[:, schema.columns.index(c)] = data
        except (OverflowError, ValueError, TypeError):
            raise RequestError(422, f"input {c!r}: a value is outside the float32 range") from None
    n_req = len(schema.required)
    _check_values(X[:, :n_req], schema.required, "row {row}")
    if schema.optional:
        with np.errstate(invalid="ignore"):
            if (np.abs(X[:, n_req:]) > F32_MAX).any():
                raise RequestError(422, "an optional feature input is outside the float32 range")

    nrows = X.shape[0]
    meta: dict[str, list[Any]] = {}
    for m in META_FIELDS:
        t = by_name.get(m)
        if t is None:
            meta[m] = [None] * nrows
            continue
        dt = str(getattr(t, "datatype", "")).upper()
        if dt != "BYTES":
            raise RequestError(422, f"input {m!r} must have datatype BYTES (strings), got {dt or 'none'}")
        length(m, t)
        vals = []
        for r, v in enumerate(t.data):
            if isinstance(v, bytes):
                try:
                    v = v.decode("utf-8")
                except UnicodeDecodeError:
                    raise RequestError(422, f"input {m!r}: value {r} is not UTF-8") from None
            vals.append(v)
        meta[m] = vals
    symbols = [_symbol(v, f"row {r}") for r, v in enumerate(meta["symbol"])]
    times = [parse_time(v, f"row {r}") for r, v in enumerate(meta["timestamp"])]
    return Batch(X=X, columns=schema.columns, symbols=symbols, bar_times=_times_array(times))
