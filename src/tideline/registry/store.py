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
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
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


class S3Store:
    """Keys below ``s3://bucket/prefix`` (AWS S3, MinIO, moto), via boto3."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        *,
        max_attempts: int = 3,
        connect_timeout: float = 3.0,
        read_timeout: float = 30.0,
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
        config = Config(
            retries={"max_attempts": max_attempts, "mode": "standard"},
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
        """Map boto errors to tideline errors (NotFound / PreconditionFailed stay internal)."""
        from botocore.exceptions import (
            ClientError,
            ConnectionClosedError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
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
            if status is not None and status >= 500:
                msg = err.get("Message", "")
                return StorageUnavailable(f"S3 endpoint {self.endpoint} failed: {code} {msg}")
            return RegistryError(f"S3 error on {self.uri}/{key}: {code} {err.get('Message', '')}".strip())
        from botocore.exceptions import BotoCoreError

        if isinstance(e, BotoCoreError):
            return StorageUnavailable(f"cannot reach S3 endpoint {self.endpoint}: {e}")
        return e

    def _call(self, key: str, fn: Any, **kwargs: Any) -> Any:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kwargs)
        except (ClientError, BotoCoreError) as e:
            raise self._error(e, key) from e
        except S3UploadFailedError as e:  # upload_file wraps the ClientError
            cause = e.__context__
            if isinstance(cause, (ClientError, BotoCoreError)):
                raise self._error(cause, key) from e
            raise RegistryError(f"upload to {self.uri}/{key} failed: {e}") from e

    def get(self, key: str) -> tuple[bytes, str]:
        """Return (data, S3 ETag)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            resp = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            data = resp["Body"].read()
        except (ClientError, BotoCoreError) as e:
            raise self._error(e, key) from e
        return data, str(resp["ETag"])

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
        """Every key below ``prefix`` (paginated ListObjectsV2)."""
        _validate_prefix(prefix)
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        out: list[str] = []
        paginator = self._client.get_paginator("list_objects_v2")
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                out.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        except (ClientError, BotoCoreError) as e:
            raise self._error(e, prefix) from e
        return sorted(out)

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

    def put_file(self, key: str, path: Path) -> None:
        """upload_file (multipart for large files)."""
        if not Path(path).is_file():
            raise ConfigError(f"file to upload does not exist: {path}")
        self._call(key, self._client.upload_file, Filename=str(path), Bucket=self.bucket, Key=self._key(key))

    def get_file(self, key: str, path: Path) -> None:
        """download_file."""
        self._call(
            key, self._client.download_file, Bucket=self.bucket, Key=self._key(key), Filename=str(path)
        )


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
