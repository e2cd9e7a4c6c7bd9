"""Read raw bars from CSV / CSV.gz / Parquet files, directories of them, or S3 prefixes.

``load_bars`` returns the raw frame (timestamps still unparsed for CSV); ``validate_bars`` types it.
Every failure is a one-line :class:`~tideline.errors.DataError` (or ``StorageUnavailable`` when an
S3 endpoint cannot be reached).
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import zlib
from pathlib import Path
from typing import Any

import pandas as pd

from tideline.data.schema import DATA_SUFFIXES, file_kind
from tideline.errors import DataError, StorageUnavailable

log = logging.getLogger(__name__)

_SNIFF_BYTES = 4096
_CSV_DTYPES = {"timestamp": str, "symbol": str}
_S3_CONNECT_TIMEOUT = 5
_S3_READ_TIMEOUT = 60
_S3_MAX_ATTEMPTS = 3


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


def _head_bytes(src: Path | bytes, gz: bool, name: str) -> bytes:
    """First bytes of the (decompressed) content."""
    try:
        if isinstance(src, bytes):
            if gz:
                with gzip.GzipFile(fileobj=io.BytesIO(src)) as f:
                    return f.read(_SNIFF_BYTES)
            return src[:_SNIFF_BYTES]
        opener: Any = gzip.open if gz else open
        with opener(src, "rb") as f:
            return bytes(f.read(_SNIFF_BYTES))
    except (gzip.BadGzipFile, EOFError, zlib.error):
        raise DataError(f"{name} is not a valid gzip file") from None
    except OSError as e:
        raise DataError(f"cannot read {name}: {e.strerror or e}") from None


# ---------------------------------------------------------------------------------------- readers
def _read_csv(src: Path | bytes, name: str) -> pd.DataFrame:
    gz = name.lower().endswith(".gz")
    head = _head_bytes(src, gz, name)
    if not head.strip():
        raise DataError(f"{name} is empty")
    problem = _sniff_problem(head, name)
    if problem:
        raise DataError(problem)
    target: Any = io.BytesIO(src) if isinstance(src, bytes) else src
    try:
        return pd.read_csv(
            target,
            dtype=_CSV_DTYPES,
            engine="c",
            encoding="utf-8",
            low_memory=False,
            compression="gzip" if gz else None,
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


def _read_parquet(src: Path | bytes, name: str) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(src, Path) and src.stat().st_size == 0:
        raise DataError(f"{name} is empty")
    if isinstance(src, bytes) and not src:
        raise DataError(f"{name} is empty")
    try:
        table = pq.read_table(io.BytesIO(src) if isinstance(src, bytes) else src)
        return table.to_pandas()
    except (pa.ArrowException, OSError, ValueError) as e:
        msg = " ".join(str(e).split())
        raise DataError(f"{name} is not a valid Parquet file: {msg}") from None


def _read_one(src: Path | bytes, name: str) -> pd.DataFrame:
    kind = file_kind(name)
    if kind == "csv":
        df = _read_csv(src, name)
    elif kind == "parquet":
        df = _read_parquet(src, name)
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
def _load_local(path: Path) -> pd.DataFrame:
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
        frames = [_read_one(p, str(p)) for p in files]
        return _concat(frames, [str(p) for p in files], f"directory {path}")
    if file_kind(path.name) is None:
        raise DataError(f"{path}: unknown file type; expected one of {', '.join(DATA_SUFFIXES)}")
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty")
    return _concat([_read_one(path, str(path))], [str(path)], str(path))


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


def _load_s3(uri: str, endpoint_url: str | None) -> pd.DataFrame:
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectionError as BotoConnectionError,
        HTTPClientError,
        NoCredentialsError,
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
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=base):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                under = not base or key == base or key.startswith(base + "/")
                if under and file_kind(key) and not key.endswith("/"):
                    keys.append(key)
        keys.sort()
        if not keys:
            raise DataError(f"no {'/'.join(DATA_SUFFIXES)} objects under {uri}")
        frames, names = [], []
        for key in keys:
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            name = f"s3://{bucket}/{key}"
            frames.append(_read_one(bytes(body), name))
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
def load_bars(source: str | os.PathLike[str], *, endpoint_url: str | None = None) -> pd.DataFrame:
    """Read raw bars from a file, a directory of files, or ``s3://bucket/prefix``.

    Files are concatenated in sorted name order; ``df.attrs["sources"]`` lists each file and its row
    count (row numbers in validation reports count across that concatenation). CSV timestamps stay
    strings; ``validate_bars`` parses and types everything.
    """
    text = os.fspath(source)
    if text.startswith("s3://"):
        return _load_s3(text, endpoint_url)
    if "://" in text and not text.startswith("file://"):
        raise DataError(f"unsupported data source {text!r}: use a local path or s3://bucket/prefix")
    if text.startswith("file://"):
        text = text[len("file://") :]
    return _load_local(Path(text).expanduser())


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
