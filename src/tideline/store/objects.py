"""Object stores under the registry: a directory (``FileStore``) or an S3 bucket (``S3Store``).

Both offer the same small protocol (``Store``): whole-object get/put with conditional writes
(``if_none_match`` = create only, ``if_match`` = compare-and-swap on the etag), listing by key prefix,
delete, and streaming file upload/download for large artifacts. Keys are relative, ``/``-separated
and validated (no ``..``, no absolute paths). The registry builds every guarantee it gives on top of
the two conditional writes, so both backends must enforce them for real:

* ``FileStore``: writes go to a temporary file in the same directory, are fsynced and then
  ``os.replace``-d into place (readers never see half a file). Create-only uses ``os.link``, which
  fails atomically when the name exists. Compare-and-swap holds an exclusive ``fcntl.flock`` on a
  lock file (shared by threads and processes on one machine) while it compares the content hash
  (the etag) and replaces the file.
* ``S3Store``: ``PutObject`` with ``IfNoneMatch="*"`` / ``IfMatch=<etag>`` (S3 conditional writes).
  Transient failures (endpoint down, timeouts, 5xx/SlowDown) are retried with exponential backoff and
  jitter, then reported as one StorageUnavailable that says it gave up (see ``S3Store``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import random
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable
from urllib.parse import urlparse

from tideline.errors import ConfigError, RegistryError, StorageUnavailable

log = logging.getLogger(__name__)

_SEGMENT_RE = re.compile(r"^[A-Za-z0-9._=+-]{1,255}$")
_RESERVED_PREFIX = ".tideline-"  # FileStore's own temp and lock files
_CHUNK = 1 << 20


class NotFound(KeyError):
    """The key does not exist in the store (internal; the registry turns it into a user error)."""


class PreconditionFailed(Exception):
    """A conditional write lost: the key exists (create-only) or its etag changed (compare-and-swap)."""


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative ``a/b/c`` key, else raise ConfigError."""
    if not isinstance(key, str) or not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise ConfigError(f"invalid storage key {key!r}")
    for seg in key.split("/"):
        if seg in ("", ".", "..") or not _SEGMENT_RE.match(seg) or seg.startswith(_RESERVED_PREFIX):
            raise ConfigError(f"invalid storage key {key!r}", hint="no empty, '.', '..' or odd path parts")
    return key


def _validate_prefix(prefix: str) -> str:
    if prefix == "":
        return prefix
    validate_key(prefix.rstrip("/"))
    return prefix


@runtime_checkable
class Store(Protocol):
    """What the registry needs from storage."""

    uri: str

    def get(self, key: str) -> tuple[bytes, str]:
        """Return (data, etag); raise NotFound."""
        ...

    def put(self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str:
        """Write ``data``; return the new etag; raise PreconditionFailed when a condition fails."""
        ...

    def list(self, prefix: str) -> list[str]:
        """Every key that starts with ``prefix``, sorted."""
        ...

    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""
        ...

    def exists(self, key: str) -> bool:
        """Whether ``key`` exists."""
        ...

    def modified(self, key: str) -> float:
        """Last modification time (epoch seconds); raise NotFound."""
        ...

    def put_file(self, key: str, path: Path) -> None:
        """Upload a local file (streamed)."""
        ...

    def get_file(self, key: str, path: Path) -> None:
        """Download into a local file (streamed); raise NotFound."""
        ...


def _etag_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class FileStore:
    """A directory on a local or shared POSIX filesystem; safe for several processes on one machine."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().absolute()
        self.uri = f"file://{self.root}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / f"{_RESERVED_PREFIX}locks").mkdir(exist_ok=True)
        except OSError as e:
            raise StorageUnavailable(f"cannot use registry directory {self.root}: {e.strerror or e}") from e
        if not self.root.is_dir():
            raise ConfigError(f"registry path {self.root} is not a directory")

    def __repr__(self) -> str:
        return f"FileStore({str(self.root)!r})"

    # -- helpers -------------------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    @contextlib.contextmanager
    def _lock(self, key: str) -> Iterator[None]:
        """Exclusive flock for writers of ``key`` (256 lock files, shared by hash, never deleted)."""
        name = hashlib.sha256(key.encode()).hexdigest()[:2]
        lock_path = self.root / f"{_RESERVED_PREFIX}locks" / f"{name}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def _temp_in(self, path: Path) -> Path:
        for _ in range(5):  # a concurrent delete may remove an empty parent between mkdir and open
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.parent / f"{_RESERVED_PREFIX}tmp-{uuid.uuid4().hex}"
            try:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                return tmp
            except FileNotFoundError:
                continue
        raise StorageUnavailable(f"cannot create a file in {path.parent}")

    def _write_temp(self, path: Path, data: bytes) -> Path:
        tmp = self._temp_in(path)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def _os_error(self, e: OSError, key: str) -> RegistryError:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return RegistryError(f"permission denied writing {key!r} under {self.root}: {e.strerror}")
        return StorageUnavailable(f"cannot access registry directory {self.root}: {e.strerror or e}")

    # -- protocol ------------------------------------------------------------------------------
    def get(self, key: str) -> tuple[bytes, str]:
        """Return (data, sha256 etag)."""
        path = self._path(key)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFound(key) from None
        except OSError as e:
            raise self._os_error(e, key) from e
        return data, _etag_of(data)

    def put(self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str:
        """Atomic write; create-only via ``os.link``; compare-and-swap under a flock."""
        path = self._path(key)
        try:
            tmp = self._write_temp(path, data)
            try:
                if if_none_match:
                    try:
                        os.link(tmp, path)
                    except FileExistsError:
                        raise PreconditionFailed(key) from None
                else:
                    with self._lock(key):
                        if if_match is not None:
                            try:
                                current = path.read_bytes()
                            except FileNotFoundError:
                                raise PreconditionFailed(key) from None
                            if _etag_of(current) != if_match:
                                raise PreconditionFailed(key)
                        os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            _fsync_dir(path.parent)
        except OSError as e:
            raise self._os_error(e, key) from e
        return _etag_of(data)

    def list(self, prefix: str) -> list[str]:
        """Keys starting with ``prefix`` (temp and lock files excluded)."""
        _validate_prefix(prefix)
        head, _, _ = prefix.rpartition("/")
        base = self.root.joinpath(*head.split("/")) if head else self.root
        out: list[str] = []
        if not base.is_dir():
            return out
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(_RESERVED_PREFIX)]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith(_RESERVED_PREFIX):
                    continue
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    out.append(key)
        return sorted(out)

    def delete(self, key: str) -> None:
        """Remove the file (under the key's lock) and any parent directories left empty."""
        path = self._path(key)
        try:
            with self._lock(key):
                path.unlink(missing_ok=True)
        except OSError as e:
            raise self._os_error(e, key) from e
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()  # fails (harmlessly) when not empty
            except OSError:
                break
            parent = parent.parent

    def exists(self, key: str) -> bool:
        """Whether the file exists."""
        return self._path(key).is_file()

    def remove_stale_uploads(self, older_than_s: float) -> int:
        """Delete temporary files a killed writer left (invisible to ``list``) older than ``older_than_s``.

        Returns how many were removed; directories left empty go too. Lock files are kept.
        """
        cutoff = time.time() - older_than_s
        removed = 0
        for dirpath, _dirnames, filenames in os.walk(self.root, topdown=False):
            here = Path(dirpath)
            for name in filenames:
                if not name.startswith(f"{_RESERVED_PREFIX}tmp-"):
                    continue
                p = here / name
                try:
                    if p.stat().st_mtime < cutoff:
                        p.unlink()
                        removed += 1
                except FileNotFoundError:
                    continue
            if here != self.root and not here.name.startswith(_RESERVED_PREFIX):
                with contextlib.suppress(OSError):
                    here.rmdir()  # only when empty
        return removed

    def modified(self, key: str) -> float:
        """File mtime."""
        try:
            return self._path(key).stat().st_mtime
        except FileNotFoundError:
            raise NotFound(key) from None

    def put_file(self, key: str, path: Path) -> None:
        """Copy a local file in atomically (temp + fsync + replace)."""
        dest = self._path(key)
        try:
            tmp = self._temp_in(dest)
            try:
                with open(path, "rb") as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
                    dst.flush()
                    os.fsync(dst.fileno())
                os.replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)
        except FileNotFoundError as e:
            if not Path(path).exists():
                raise ConfigError(f"file to upload does not exist: {path}") from e
            raise self._os_error(e, key) from e
        except OSError as e:
            raise self._os_error(e, key) from e

    def get_file(self, key: str, path: Path) -> None:
        """Copy the stored file to ``path``."""
        src = self._path(key)
        try:
            with open(src, "rb") as s, open(path, "wb") as d:
                shutil.copyfileobj(s, d, _CHUNK)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            if not src.is_file():
                raise NotFound(key) from None
            raise
        except OSError as e:
            raise self._os_error(e, key) from e


_TRANSIENT_CODES = frozenset({
    "SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling", "ThrottlingException",
    "RequestLimitExceeded", "TooManyRequestsException", "RequestTimeoutException",
})
DEFAULT_S3_ATTEMPTS = 5
DEFAULT_S3_BACKOFF_S = 0.5
DEFAULT_S3_MAX_BACKOFF_S = 4.0
T = TypeVar("T")


def _env_number(name: str, kind: type, default: float, *, minimum: float) -> Any:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return kind(default)
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a {'whole ' if kind is int else ''}number") from None
    if not (value >= minimum and value < float("inf")):  # also refuses nan
        raise ConfigError(f"{name}={raw!r} must be at least {minimum:g}")
    return value


class S3Store:
    """Keys below ``s3://bucket/prefix`` (AWS S3, MinIO, moto), via boto3.

    Every call rides over a short outage: a transient failure (connection refused, reset or closed,
    a timeout, HTTP 5xx / ``SlowDown`` / ``RequestTimeout``: what maps to StorageUnavailable) is retried
    up to ``attempts`` times in all, sleeping ``backoff_s * 2**(n-1)`` (capped at ``max_backoff_s``, equal
    jitter: between half and all of it) after the n-th failure, with a WARNING per retry. When the
    attempts run out the StorageUnavailable says so ("... (gave up after 5 attempts over 7.4 s)").
    Permanent answers (403, 404, NoSuchBucket, a failed precondition) are never retried. botocore's own
    retries are off so the two layers do not multiply. Defaults (5 attempts, 0.5 s base, 4 s cap) ride
    over an outage of a few seconds and give up on a dead endpoint within about 10 s; the environment
    variables ``TIDELINE_S3_ATTEMPTS``, ``TIDELINE_S3_BACKOFF_S`` and ``TIDELINE_S3_MAX_BACKOFF_S``
    override them (constructor arguments win over both).

    A conditional write (``IfNoneMatch``/``IfMatch``) is retried as well: if the first request landed
    and only its response was lost, the retry fails its precondition, and the caller (the registry, the
    rollout controller) recognises its own bytes in place: every such write carries a unique write id.
    ``put_file``/``get_file`` restart from the beginning on a retry; ``get_file`` downloads into a
    temporary file next to the target and renames it in only when complete, so no partial local file
    is ever left behind.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        *,
        attempts: int | None = None,
        backoff_s: float | None = None,
        max_backoff_s: float | None = None,
        connect_timeout: float = 2.0,
        read_timeout: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        import boto3
        from botocore.config import Config

        if not bucket:
            raise ConfigError("S3 registry URI needs a bucket: s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            _validate_prefix(self.prefix)
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.attempts = int(attempts if attempts is not None else
                            _env_number("TIDELINE_S3_ATTEMPTS", int, DEFAULT_S3_ATTEMPTS, minimum=1))
        self.backoff_s = float(backoff_s if backoff_s is not None else
                               _env_number("TIDELINE_S3_BACKOFF_S", float, DEFAULT_S3_BACKOFF_S, minimum=0))
        self.max_backoff_s = float(max_backoff_s if max_backoff_s is not None else _env_number(
            "TIDELINE_S3_MAX_BACKOFF_S", float, max(DEFAULT_S3_MAX_BACKOFF_S, self.backoff_s), minimum=0))
        if self.attempts < 1 or self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ConfigError("S3 retries need attempts >= 1 and non-negative backoff times")
        self._sleep = sleep
        self._rng = random.Random()
        config = Config(
            retries={"total_max_attempts": 1, "mode": "standard"},  # tideline retries, see _retry
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=32,
            s3={"addressing_style": "path"} if endpoint_url else {},
        )
        self._client: Any = boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)
        self.endpoint = self._client.meta.endpoint_url

    def __repr__(self) -> str:
        return f"S3Store({self.uri!r}, endpoint={self.endpoint!r})"

    def _key(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _error(self, e: Exception, key: str) -> Exception:
        """Map boto errors to tideline errors (NotFound / PreconditionFailed stay internal).

        StorageUnavailable is exactly the transient class that ``_retry`` retries.
        """
        from botocore.exceptions import (
            ClientError,
            ConnectionClosedError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            ParamValidationError,
            ReadTimeoutError,
        )

        unreachable = (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError)
        if isinstance(e, unreachable):
            return StorageUnavailable(f"cannot reach S3 endpoint {self.endpoint}: {e}")
        if isinstance(e, NoCredentialsError):
            return RegistryError(
                f"no AWS credentials for {self.uri}",
                hint="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or an AWS profile",
            )
        if isinstance(e, ParamValidationError):
            return RegistryError(f"bad S3 request for {self.uri}/{key}: {e}")
        if isinstance(e, ClientError):
            err = e.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (412, 409):
                return PreconditionFailed(key)
            if code == "NoSuchBucket":
                return RegistryError(
                    f"S3 bucket {self.bucket!r} does not exist (registry {self.uri} at {self.endpoint})",
                    hint="create the bucket or fix the registry URI",
                )
            if code in ("NoSuchKey", "NotFound") or status == 404:
                return NotFound(key)
            denied = ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403")
            if code in denied or status == 403:
                return RegistryError(
                    f"access denied to {self.uri} at {self.endpoint} ({code or status})",
                    hint="check the AWS credentials and the bucket policy",
                )
            if (status is not None and status >= 500) or code in _TRANSIENT_CODES:
                msg = err.get("Message", "")
                return StorageUnavailable(f"S3 endpoint {self.endpoint} failed: {code or status} {msg}".rstrip())
            return RegistryError(f"S3 error on {self.uri}/{key}: {code} {err.get('Message', '')}".strip())
        from botocore.exceptions import BotoCoreError

        if isinstance(e, BotoCoreError):
            return StorageUnavailable(f"cannot reach S3 endpoint {self.endpoint}: {e}")
        return e

    def _once(self, key: str, fn: Callable[[], T]) -> T:
        """One attempt of ``fn`` with boto errors mapped to tideline's."""
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn()
        except (ClientError, BotoCoreError) as e:
            raise self._error(e, key) from e
        except S3UploadFailedError as e:  # upload_file wraps the ClientError
            cause = e.__context__
            if isinstance(cause, (ClientError, BotoCoreError)):
                raise self._error(cause, key) from e
            raise RegistryError(f"upload to {self.uri}/{key} failed: {e}") from e

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based): exponential, capped, equal jitter."""
        full = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
        return full / 2 + self._rng.uniform(0, full / 2)

    def _retry(self, key: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` (one S3 request, or one whole transfer) retrying transient failures with backoff."""
        t0 = time.monotonic()
        attempt = 1
        while True:
            try:
                return self._once(key, fn)
            except StorageUnavailable as e:
                if attempt >= self.attempts:
                    took = time.monotonic() - t0
                    tries = f"{attempt} attempt{'s' if attempt != 1 else ''}"
                    raise StorageUnavailable(f"{e.message} (gave up after {tries} over {took:.1f} s)",
                                             hint=e.hint) from e
                delay = self.backoff(attempt)
                log.warning("S3 %s unreachable (attempt %d/%d): %s; retrying in %.1f s",
                            self.endpoint, attempt, self.attempts, e.__cause__ or e.message, delay)
                self._sleep(delay)
                attempt += 1

    def _call(self, key: str, fn: Any, **kwargs: Any) -> Any:
        return self._retry(key, lambda: fn(**kwargs))

    def get(self, key: str) -> tuple[bytes, str]:
        """Return (data, S3 ETag)."""
        full = self._key(key)

        def once() -> tuple[bytes, str]:
            resp = self._client.get_object(Bucket=self.bucket, Key=full)
            return resp["Body"].read(), str(resp["ETag"])

        return self._retry(key, once)

    def put(self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str:
        """PutObject, with ``IfNoneMatch="*"`` or ``IfMatch=etag`` when asked."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key), "Body": data}
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        if if_match is not None:
            kwargs["IfMatch"] = if_match
        try:
            resp = self._call(key, self._client.put_object, **kwargs)
        except NotFound:
            raise PreconditionFailed(key) from None  # IfMatch on a missing key
        return str(resp["ETag"])

    def list(self, prefix: str) -> list[str]:
        """Every key below ``prefix`` (paginated ListObjectsV2; restarted from the first page on a retry)."""
        _validate_prefix(prefix)
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0

        def once() -> list[str]:
            out: list[str] = []
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                out.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
            return out

        return sorted(self._retry(prefix, once))

    def delete(self, key: str) -> None:
        """DeleteObject (idempotent)."""
        self._call(key, self._client.delete_object, Bucket=self.bucket, Key=self._key(key))

    def exists(self, key: str) -> bool:
        """HeadObject."""
        try:
            self._call(key, self._client.head_object, Bucket=self.bucket, Key=self._key(key))
        except NotFound:
            return False
        return True

    def modified(self, key: str) -> float:
        """LastModified of the object."""
        resp = self._call(key, self._client.head_object, Bucket=self.bucket, Key=self._key(key))
        return float(resp["LastModified"].timestamp())

    def remove_stale_uploads(self, older_than_s: float) -> int:
        """Abort multipart uploads below the prefix that a killed writer left: idle > ``older_than_s``.

        Idle = neither started nor given a part within that time (an upload still in flight keeps adding
        parts). What a bucket lifecycle rule ``AbortIncompleteMultipartUpload`` does; returns how many.
        """
        cutoff = time.time() - older_than_s
        full = f"{self.prefix}/" if self.prefix else ""

        def last_activity(u: dict[str, Any]) -> float:
            parts = self._client.list_parts(Bucket=self.bucket, Key=u["Key"], UploadId=u["UploadId"])
            return max([u["Initiated"].timestamp()] + [p["LastModified"].timestamp() for p in parts.get("Parts", [])])

        def once() -> list[tuple[str, str]]:
            out = []
            for page in self._client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket,
                                                                                      Prefix=full):
                out += [(u["Key"], u["UploadId"]) for u in page.get("Uploads", []) if last_activity(u) < cutoff]
            return out

        stale = self._retry(full or "/", once)
        for key, upload_id in stale:
            self._call(key, self._client.abort_multipart_upload, Bucket=self.bucket, Key=key, UploadId=upload_id)
        return len(stale)

    def put_file(self, key: str, path: Path) -> None:
        """upload_file (multipart for large files); a retry uploads the whole file again."""
        if not Path(path).is_file():
            raise ConfigError(f"file to upload does not exist: {path}")
        self._call(key, self._client.upload_file, Filename=str(path), Bucket=self.bucket, Key=self._key(key))

    def get_file(self, key: str, path: Path) -> None:
        """Streamed GetObject into a temporary file beside ``path``, renamed in only when complete.

        A retry starts the download again from the first byte; on failure no file is left behind.
        """
        full = self._key(key)
        path = Path(path)

        def once() -> None:
            tmp = path.with_name(f"{_RESERVED_PREFIX}part-{uuid.uuid4().hex}-{path.name}"[:255])
            try:
                resp = self._client.get_object(Bucket=self.bucket, Key=full)
                with open(tmp, "wb") as f:
                    for chunk in resp["Body"].iter_chunks(_CHUNK):
                        f.write(chunk)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)

        self._retry(key, once)


def open_store(uri: str, endpoint_url: str | None = None) -> Store:
    """``file:///abs/path``, a plain path, or ``s3://bucket/prefix``; anything else is a ConfigError."""
    if not isinstance(uri, str) or not uri.strip():
        raise ConfigError("empty registry URI")
    uri = uri.strip()
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", uri):
        parsed = urlparse(uri)
        scheme = parsed.scheme.lower()
        if scheme == "file":
            if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
                raise ConfigError(f"file registry URI must be absolute: {uri!r}", hint="file:///abs/path")
            return FileStore(Path(parsed.path))
        if scheme == "s3":
            if not parsed.netloc:
                raise ConfigError(f"S3 registry URI needs a bucket: {uri!r}", hint="s3://bucket/prefix")
            return S3Store(parsed.netloc, parsed.path, endpoint_url=endpoint_url)
        raise ConfigError(
            f"unsupported registry URI scheme {scheme!r} in {uri!r}", hint="use file:// or s3://"
        )
    if ":" in uri.split("/", 1)[0] and not uri.startswith("/"):
        raise ConfigError(f"unsupported registry URI {uri!r}", hint="use file:///abs/path, a path or s3://")
    return FileStore(Path(uri))
