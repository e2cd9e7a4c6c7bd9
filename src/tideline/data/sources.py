"""Read raw bars from CSV / CSV.gz / Parquet files, directories of them, or S3 prefixes.

``load_bars`` returns the raw frame (timestamps still unparsed for CSV); ``validate_bars`` types it.
Every failure is a one-line :class:`~tideline.errors.DataError` (or ``StorageUnavailable`` when an
S3 endpoint cannot be reached).

Input is bounded before it is read: a file, a directory or an S3 prefix holding more than
``TIDELINE_MAX_DATA_BYTES`` (default 1 GiB; ``0`` = no limit; ``max_bytes=`` overrides) is refused with
its size and the limit, gzip input is cut off once its *decompressed* size passes the same limit (a
gzip bomb), a CSV whose first line is longer than 64 KiB or has more than 1,000 columns is refused
from its first bytes, and so is a Parquet file whose uncompressed size or column count is over those
limits. Loading + validating a CSV peaks at about 5-7x its size in memory over the interpreter (205 MiB:
+1.4 GiB; tests/reliability/inputs.py measures it), so the default limit keeps one load under ~8 GiB.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import os
import re
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tideline.data.schema import BAR_COLUMNS, DATA_SUFFIXES, file_kind
from tideline.errors import DataError, StorageUnavailable

log = logging.getLogger(__name__)

_SNIFF_BYTES = 4096
_CSV_DTYPES = {"timestamp": str, "symbol": str}
_S3_CONNECT_TIMEOUT = 5
_S3_READ_TIMEOUT = 60
_S3_MAX_ATTEMPTS = 3

MAX_BYTES_ENV = "TIDELINE_MAX_DATA_BYTES"
DEFAULT_MAX_BYTES = 1 << 30
"""Largest input (file, directory or S3 prefix; decompressed for gzip) read without ``max_bytes``."""
MAX_HEADER_BYTES = 64 * 1024
"""The first (header) line of a CSV must end within this many bytes."""
MAX_COLUMNS = 1000
"""More columns than this is not a bar file (bars need 7)."""

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 1 << 10, "m": 10**6, "mb": 10**6,
          "mib": 1 << 20, "g": 10**9, "gb": 10**9, "gib": 1 << 30, "t": 10**12, "tb": 10**12, "tib": 1 << 40}


def _fmt_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def parse_size(text: str | int, what: str = MAX_BYTES_ENV) -> int:
    """``"500MB"``, ``"4GiB"``, ``"1e9"`` or an int -> bytes (``0``: no limit); DataError when unreadable."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?(?:e[0-9]+)?)\s*([a-z]*)\s*", str(text).lower())
        if not m or m.group(2) not in _UNITS:
            raise DataError(f"{what}={text!r} is not a size", hint="e.g. 500MB, 4GiB or 0 for no limit")
        value = int(float(m.group(1)) * _UNITS[m.group(2)])
    if value < 0:
        raise DataError(f"{what}={text!r} is negative", hint="e.g. 500MB, 4GiB or 0 for no limit")
    return value


def max_input_bytes(max_bytes: int | str | None = None) -> int:
    """The input limit in bytes: ``max_bytes`` if given, else ``$TIDELINE_MAX_DATA_BYTES``, else 1 GiB."""
    if max_bytes is not None:
        return parse_size(max_bytes, "max_bytes")
    env = os.environ.get(MAX_BYTES_ENV)
    return parse_size(env) if env not in (None, "") else DEFAULT_MAX_BYTES


def _too_big(what: str, size: int, limit: int, decompressed: bool = False) -> DataError:
    more = "decompresses to more than" if decompressed else f"is {_fmt_bytes(size)},"
    return DataError(
        f"{what} {more} over the {_fmt_bytes(limit)} input limit" if not decompressed
        else f"{what} {more} the {_fmt_bytes(limit)} input limit (a gzip bomb, or data to split)",
        hint=f"set {MAX_BYTES_ENV} to raise it, e.g. {MAX_BYTES_ENV}={(max(size, 2 * limit) >> 30) + 1}GiB; "
             "0 = no limit",
    )


class _CappedReader(io.RawIOBase):
    """Reads a (decompressing) stream and raises a DataError once more than ``limit`` bytes came out."""

    def __init__(self, raw: Any, limit: int, name: str) -> None:
        self.raw, self.limit, self.name, self.n = raw, limit, name, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self.raw.read(len(b))
        self.n += len(data)
        if self.limit and self.n > self.limit:
            raise _too_big(self.name, self.n, self.limit, decompressed=True)
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        try:
            self.raw.close()
        finally:
            super().close()


# --------------------------------------------------------------------------------------- sniffing
def _sniff_problem(head: bytes, name: str) -> str | None:
    """A one-line reason why ``head`` (the first bytes of a CSV) cannot be UTF-8 CSV text, or None."""
    if head.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        return f"{name} is UTF-32 encoded; tideline reads UTF-8 CSV (re-save the file as UTF-8)"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return f"{name} is UTF-16 encoded; tideline reads UTF-8 CSV (re-save the file as UTF-8)"
    if head.startswith(b"PAR1"):
        return f"{name} is a Parquet file, not CSV (give it a .parquet extension)"
    if head.startswith(b"\x1f\x8b"):
        return f"{name} is gzip-compressed (give it a .csv.gz extension)"
    if b"\x00" in head:
        even, odd = head[0::2], head[1::2]
        if len(head) >= 4 and odd.count(0) > 0.4 * len(odd) and even.count(0) < 0.1 * len(even):
            return f"{name} looks UTF-16 encoded; tideline reads UTF-8 CSV (re-save the file as UTF-8)"
        if len(head) >= 4 and even.count(0) > 0.4 * len(even) and odd.count(0) < 0.1 * len(odd):
            return f"{name} looks UTF-16 encoded; tideline reads UTF-8 CSV (re-save the file as UTF-8)"
        return f"{name} is not a text CSV file (it contains binary data)"
    return None


def _header_problem(head: bytes, name: str) -> str | None:
    """A reason why the first line (within ``head``: up to MAX_HEADER_BYTES + 1) is not a bar header."""
    text = head[3:] if head.startswith(b"\xef\xbb\xbf") else head
    end = text.find(b"\n")
    if end < 0 and len(text) > MAX_HEADER_BYTES:
        return (f"the first line of {name} is longer than {MAX_HEADER_BYTES // 1024} KiB: not a bar CSV "
                "(its first line should be the column names)")
    first = text if end < 0 else text[:end]
    n_cols = first.count(b",") + 1
    if n_cols > MAX_COLUMNS:
        return f"{name} has {n_cols:,} columns in its header line (more than {MAX_COLUMNS:,}): not a bar CSV"
    # a bar column named twice: the CSV reader would rename the second (close.1) and the first would win
    try:
        names = next(csv.reader([first.decode("utf-8", "replace").rstrip("\r")]), [])
    except csv.Error:
        return None  # the reader below reports a malformed file
    keys = [n.strip().lower() for n in names]
    doubled = [c for c in BAR_COLUMNS if keys.count(c) > 1]
    if doubled:
        return (f"{name} names column{'s' if len(doubled) > 1 else ''} {', '.join(doubled)} more than once in "
                "its header: which one holds the bars cannot be known")
    return None


def _head_bytes(src: Path | bytes, gz: bool, name: str, n: int = MAX_HEADER_BYTES + 1) -> bytes:
    """First bytes of the (decompressed) content."""
    try:
        if isinstance(src, bytes):
            if gz:
                with gzip.GzipFile(fileobj=io.BytesIO(src)) as f:
                    return f.read(n)
            return src[:n]
        opener: Any = gzip.open if gz else open
        with opener(src, "rb") as f:
            return bytes(f.read(n))
    except (gzip.BadGzipFile, EOFError, zlib.error):
        raise DataError(f"{name} is not a valid gzip file") from None
    except OSError as e:
        raise DataError(f"cannot read {name}: {e.strerror or e}") from None


# ---------------------------------------------------------------------------------------- readers
def _read_csv(src: Path | bytes, name: str, limit: int = 0) -> pd.DataFrame:
    gz = name.lower().endswith(".gz")
    head = _head_bytes(src, gz, name)
    if not head.strip():
        raise DataError(f"{name} is empty")
    problem = _sniff_problem(head[:_SNIFF_BYTES], name) or _header_problem(head, name)
    if problem:
        raise DataError(problem)
    target: Any = io.BytesIO(src) if isinstance(src, bytes) else src
    if gz:  # decompress here, counting, so that a gzip bomb stops at the input limit
        target = io.BufferedReader(_CappedReader(gzip.GzipFile(fileobj=target) if isinstance(src, bytes)
                                                 else gzip.open(src, "rb"), limit, name))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", pd.errors.DtypeWarning)  # mixed chunks: validation types them
            df = pd.read_csv(
                target,
                dtype=_CSV_DTYPES,
                engine="c",
                encoding="utf-8",
                low_memory=True,  # parse in chunks: ~20% lower peak memory than one pass
            )
    except UnicodeDecodeError as e:
        bad = e.object[e.start : e.start + 1].hex() if isinstance(e.object, bytes) else "?"
        raise DataError(
            f"{name} is not valid UTF-8 text (byte 0x{bad}); it may be Latin-1/Windows-1252 encoded "
            "(re-save the file as UTF-8)"
        ) from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{name} is empty (no header line)") from None
    except pd.errors.ParserError as e:
        msg = " ".join(str(e).split())
        msg = msg.replace("Error tokenizing data. C error: ", "")
        raise DataError(f"{name} is not a well-formed CSV file: {msg}") from None
    except (gzip.BadGzipFile, EOFError, zlib.error):
        raise DataError(f"{name} is not a valid gzip file (truncated or corrupt)") from None
    except (ValueError, OSError) as e:
        msg = " ".join(str(e).split())
        raise DataError(f"cannot read {name} as CSV: {msg}") from None
    finally:
        if gz:
            target.close()
    if len(df.columns) == 1:
        label = str(df.columns[0])
        for sep, sep_name in ((";", "semicolons"), ("\t", "tabs"), ("|", "'|'")):
            if label.count(sep) >= 2:
                raise DataError(f"{name} separates its columns with {sep_name}; tideline reads comma-separated "
                                "CSV (re-save it with commas)")
    return df


def _read_parquet(src: Path | bytes, name: str, limit: int = 0) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(src, Path) and src.stat().st_size == 0:
        raise DataError(f"{name} is empty")
    if isinstance(src, bytes) and not src:
        raise DataError(f"{name} is empty")
    if isinstance(src, bytes):
        head, tail = src[:4], src[-4:]
    else:
        with open(src, "rb") as f:
            head = f.read(4)
            f.seek(-4, os.SEEK_END)
            tail = f.read(4)
    if head != b"PAR1" or tail != b"PAR1":
        sniff = _head_bytes(src, False, name, _SNIFF_BYTES)
        bad = f"{name} is not a valid Parquet file"
        if head == b"PAR1":
            raise DataError(f"{bad}: it is truncated (no footer)")
        if sniff.startswith(b"\x1f\x8b"):
            raise DataError(f"{bad}: it is gzip-compressed (give a gzipped CSV a .csv.gz extension)")
        if _sniff_problem(sniff, name) is None:
            raise DataError(f"{bad}: it is text, a CSV? (give a CSV file a .csv extension)")
        raise DataError(f"{bad} (no PAR1 magic bytes)")
    try:
        pf = pq.ParquetFile(io.BytesIO(src) if isinstance(src, bytes) else src)
        meta = pf.metadata
        if meta.num_columns > MAX_COLUMNS:
            raise DataError(f"{name} has {meta.num_columns:,} columns (more than {MAX_COLUMNS:,}): not a bar file")
        unpacked = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        if limit and unpacked > limit:
            raise _too_big(f"{name} ({_fmt_bytes(unpacked)} uncompressed)", unpacked, limit)
        table = pf.read()
        return table.to_pandas()
    except (pa.ArrowException, OSError, ValueError) as e:
        msg = " ".join(str(e).split())
        raise DataError(f"{name} is not a valid Parquet file: {msg[:300]}") from None


def _read_one(src: Path | bytes, name: str, limit: int = 0) -> pd.DataFrame:
    kind = file_kind(name)
    if kind == "csv":
        df = _read_csv(src, name, limit)
    elif kind == "parquet":
        df = _read_parquet(src, name, limit)
    else:
        raise DataError(f"{name}: unknown file type; expected one of {', '.join(DATA_SUFFIXES)}")
    log.debug("read %d rows from %s", len(df), name)
    return df


def _concat(frames: list[pd.DataFrame], names: list[str], what: str) -> pd.DataFrame:
    if len(frames) == 1:
        df = frames[0]
    else:
        df = pd.concat(frames, ignore_index=True, sort=False)
    if len(df) == 0:
        raise DataError(f"{what} holds no data rows (only headers)")
    df.attrs["sources"] = [{"source": n, "rows": len(f)} for n, f in zip(names, frames, strict=True)]
    return df


# ------------------------------------------------------------------------------------------ local
def _load_local(path: Path, limit: int) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"market data not found: {path}")
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            and file_kind(p.name)
            and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)
        )
        if not files:
            raise DataError(f"directory {path} holds no {'/'.join(DATA_SUFFIXES)} files")
        total = sum(p.stat().st_size for p in files)
        if limit and total > limit:
            raise _too_big(f"directory {path} ({len(files)} files)", total, limit)
        frames = [_read_one(p, str(p), limit) for p in files]
        return _concat(frames, [str(p) for p in files], f"directory {path}")
    if file_kind(path.name) is None:
        raise DataError(f"{path}: unknown file type; expected one of {', '.join(DATA_SUFFIXES)}")
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"{path} is empty")
    if limit and size > limit:
        raise _too_big(str(path), size, limit)
    return _concat([_read_one(path, str(path), limit)], [str(path)], str(path))


# --------------------------------------------------------------------------------------------- S3
def _s3_client(endpoint_url: str | None) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=_S3_CONNECT_TIMEOUT,
        read_timeout=_S3_READ_TIMEOUT,
        retries={"max_attempts": _S3_MAX_ATTEMPTS, "mode": "standard"},
    )
    return boto3.client("s3", endpoint_url=endpoint_url, config=config)


def _load_s3(uri: str, endpoint_url: str | None, limit: int) -> pd.DataFrame:
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        HTTPClientError,
        NoCredentialsError,
    )
    from botocore.exceptions import (
        ConnectionError as BotoConnectionError,
    )

    rest = uri[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise DataError(f"bad S3 URI {uri!r}: expected s3://bucket/prefix")
    where = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
    base = prefix.rstrip("/")
    try:
        client = _s3_client(endpoint_url)
        keys: list[str] = []
        total = 0
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=base):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                under = not base or key == base or key.startswith(base + "/")
                if under and file_kind(key) and not key.endswith("/"):
                    keys.append(key)
                    total += int(obj.get("Size", 0))
        keys.sort()
        if not keys:
            raise DataError(f"no {'/'.join(DATA_SUFFIXES)} objects under {uri}")
        if limit and total > limit:
            raise _too_big(f"{uri} ({len(keys)} objects)", total, limit)
        frames, names = [], []
        for key in keys:
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            name = f"s3://{bucket}/{key}"
            frames.append(_read_one(bytes(body), name, limit))
            names.append(name)
    except (BotoConnectionError, HTTPClientError) as e:
        raise StorageUnavailable(f"cannot reach S3 endpoint {where}: {type(e).__name__}") from None
    except NoCredentialsError:
        raise DataError(
            f"no AWS credentials to read {uri} (set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
        ) from None
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchBucket", "404"):
            raise DataError(f"S3 bucket {bucket!r} does not exist ({where})") from None
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            raise DataError(f"access to {uri} denied ({code})") from None
        msg = e.response.get("Error", {}).get("Message", "") or code
        raise DataError(f"cannot read {uri}: {code}: {msg}") from None
    except BotoCoreError as e:
        raise DataError(f"cannot read {uri}: {' '.join(str(e).split())}") from None
    return _concat(frames, names, uri)


# ------------------------------------------------------------------------------------------ public
@dataclass(frozen=True)
class SourceFile:
    """One bar file of a location: ``name`` (the path or ``s3://bucket/key``), ``size`` in bytes,
    ``modified`` (epoch seconds) and ``read()`` for its bytes."""

    name: str
    size: int
    modified: float
    read: Callable[[], bytes]


def list_source_files(location: str | os.PathLike[str], *, endpoint_url: str | None = None) -> list[SourceFile]:
    """The bar files of a directory or an S3 prefix, sorted by name. Only names with a bar suffix count, so a
    file written under a temporary name (``x.csv.part``, ``x.csv.tmp``) and renamed when complete is seen only
    once complete; names starting with ``.`` or ``_`` are skipped."""
    text = os.fspath(location)

    def usable(name: str) -> bool:
        base = name.rsplit("/", 1)[-1]
        return bool(file_kind(base)) and not base.startswith((".", "_"))

    if text.startswith("s3://"):
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, _, prefix = text[len("s3://"):].partition("/")
        base = prefix.rstrip("/")
        client = _s3_client(endpoint_url)
        out: list[SourceFile] = []
        try:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base):
                for obj in page.get("Contents", []):
                    key = obj["Key"]
                    if (not base or key.startswith(base + "/")) and usable(key):
                        out.append(SourceFile(
                            f"s3://{bucket}/{key}", int(obj.get("Size", 0)), obj["LastModified"].timestamp(),
                            (lambda k=key: bytes(client.get_object(Bucket=bucket, Key=k)["Body"].read()))))
        except (BotoCoreError, ClientError) as e:
            where = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
            raise StorageUnavailable(f"cannot list {text} ({where}): {' '.join(str(e).split())[:200]}") from None
        return sorted(out, key=lambda f: f.name)
    if text.startswith("file://"):
        text = text[len("file://"):]
    root = Path(text).expanduser()
    if not root.is_dir():
        raise DataError(f"bar location {root} is not a directory")
    files = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).parts
        if p.is_file() and usable(p.name) and not any(part.startswith((".", "_")) for part in rel[:-1]):
            st = p.stat()
            files.append(SourceFile(str(p), st.st_size, st.st_mtime, p.read_bytes))
    return files


def read_bars_bytes(data: bytes, name: str, *, max_bytes: int | str | None = None) -> pd.DataFrame:
    """Raw bars from the bytes of one file named ``name`` (its suffix says CSV, CSV.gz or Parquet)."""
    limit = max_input_bytes(max_bytes)
    if not data:
        raise DataError(f"{name} is empty")
    if limit and len(data) > limit:
        raise _too_big(name, len(data), limit)
    return _concat([_read_one(data, name, limit)], [name], name)


def load_bars(source: str | os.PathLike[str], *, endpoint_url: str | None = None,
              max_bytes: int | str | None = None) -> pd.DataFrame:
    """Read raw bars from a file, a directory of files, or ``s3://bucket/prefix``.

    Files are concatenated in sorted name order; ``df.attrs["sources"]`` lists each file and its row
    count (row numbers in validation reports count across that concatenation). CSV timestamps stay
    strings; ``validate_bars`` parses and types everything. ``max_bytes`` bounds the input (see the
    module docstring; default ``$TIDELINE_MAX_DATA_BYTES`` or 1 GiB, 0 = no limit).
    """
    text = os.fspath(source)
    limit = max_input_bytes(max_bytes)
    if text.startswith("s3://"):
        return _load_s3(text, endpoint_url, limit)
    if "://" in text and not text.startswith("file://"):
        raise DataError(f"unsupported data source {text!r}: use a local path or s3://bucket/prefix")
    if text.startswith("file://"):
        text = text[len("file://") :]
    return _load_local(Path(text).expanduser(), limit)


def write_bars(df: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write bars to ``.csv`` / ``.csv.gz`` / ``.parquet`` (chosen by extension); returns the path."""
    out = Path(path)
    kind = file_kind(out.name)
    if kind is None:
        raise DataError(f"{out}: unknown file type; expected one of {', '.join(DATA_SUFFIXES)}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if kind == "csv":
            df.to_csv(out, index=False, compression="gzip" if out.name.lower().endswith(".gz") else None)
        else:
            df.to_parquet(out, index=False, engine="pyarrow")
    except OSError as e:
        raise DataError(f"cannot write {out}: {e.strerror or e}") from None
    log.info("wrote %d bars to %s", len(df), out)
    return out
