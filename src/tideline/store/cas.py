"""Compare-and-swap on one document of a ``Store``: the one write path of every shared document.

The registry's state, rollout documents, the run lock and the loop's ingest state are each one small
document that several processes update. Every such update goes through ``update`` (or ``put_if`` for a
single conditional write): read the document and its etag, compute the new one, write it only if the etag
still matches (create-only when there was none), and on a conflict read again and retry.

The **lost-write check**: S3 clients retry a request whose answer was lost; when the first try had landed,
the retry fails its precondition although the write is ours. Each write's bytes are made unique (a fresh
``write_id`` in the document, see ``dumps``), so finding exactly our bytes in place after a
``PreconditionFailed`` means we won, and ``put_if`` returns the stored etag instead of failing.

Example (a file:// store; the same call works on S3)::

    >>> import tempfile
    >>> from tideline.store import FileStore, update_json
    >>> store = FileStore(tempfile.mkdtemp())
    >>> def bump(doc):
    ...     doc = doc or {"count": 0}
    ...     doc["count"] += 1
    ...     return doc, doc["count"]
    >>> update_json(store, "counter.json", bump), update_json(store, "counter.json", bump)
    (1, 2)
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from tideline.errors import AliasConflict, RegistryError
from tideline.store.objects import NotFound, PreconditionFailed, Store

D = TypeVar("D")
T = TypeVar("T")

WRITE_ID = "write_id"
DEFAULT_ATTEMPTS = 8


class Unchanged(Exception):  # noqa: N818 - a signal, not an error
    """Raised by a ``mutate`` function that decided nothing needs writing; ``update`` returns ``result``."""

    def __init__(self, result: Any = None) -> None:
        super().__init__("unchanged")
        self.result = result


def put_if(store: Store, key: str, data: bytes, etag: str | None) -> str:
    """Write ``data`` at ``key`` only if it is still at ``etag`` (``None``: only if absent); the new etag.

    Raises ``PreconditionFailed`` when another writer changed (or created, or deleted) it first, unless the
    stored bytes are exactly ``data``: then it was our own write whose answer was lost, and its etag is
    returned. ``StorageUnavailable`` (nothing written) passes through.
    """
    try:
        if etag is None:
            return store.put(key, data, if_none_match=True)
        return store.put(key, data, if_match=etag)
    except PreconditionFailed:
        try:
            stored, stored_etag = store.get(key)
        except NotFound:
            raise PreconditionFailed(key) from None
        if stored == data:
            return stored_etag
        raise


def update(store: Store, key: str, mutate: Callable[[D | None], tuple[D, T]], *, load: Callable[[bytes], D],
           dump: Callable[[D], bytes], attempts: int = DEFAULT_ATTEMPTS, backoff_s: float = 0.002,
           conflict: str | None = None) -> T:
    """Read-modify-write ``key`` by compare-and-swap, retried on conflicts with jittered backoff.

    ``mutate`` gets the current document (``None`` when absent) freshly loaded on every attempt and returns
    ``(new document, result)``, or raises ``Unchanged(result)`` to write nothing; ``update`` returns the
    result once the write landed. ``dump`` must make every write's bytes unique (see the module docstring).
    Raises ``AliasConflict`` (``conflict`` as its message) after ``attempts`` lost races; whatever ``load``
    or ``mutate`` raise passes through, and nothing is written then.
    """
    for attempt in range(attempts):
        try:
            raw, etag = store.get(key)
            current: D | None = load(raw)
        except NotFound:
            current, etag = None, None
        try:
            doc, result = mutate(current)
        except Unchanged as u:
            return u.result  # type: ignore[no-any-return]
        try:
            put_if(store, key, dump(doc), etag)
            return result
        except PreconditionFailed:
            time.sleep(random.uniform(0, min(0.2, backoff_s * 2**attempt)))
    raise AliasConflict(conflict or f"could not update {key}: it kept changing ({attempts} attempts)",
                        hint="too many concurrent writers; try again")


def dumps(doc: Mapping[str, Any]) -> bytes:
    """``doc`` as indented JSON with a fresh ``write_id`` (what makes each write's bytes unique)."""
    return json.dumps({**doc, WRITE_ID: uuid.uuid4().hex}, indent=1, default=str).encode()


def loads(data: bytes) -> dict[str, Any]:
    """A JSON object document; ``RegistryError`` when it is not one (a corrupt document is never overwritten
    by ``update_json``: the error passes through and nothing is written)."""
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise RegistryError(f"stored document is not JSON: {e}") from e
    if not isinstance(doc, dict):
        raise RegistryError(f"stored document is a JSON {type(doc).__name__}, not an object")
    return doc


def update_json(store: Store, key: str, mutate: Callable[[dict[str, Any] | None], tuple[dict[str, Any], T]], *,
                attempts: int = DEFAULT_ATTEMPTS, conflict: str | None = None,
                load: Callable[[bytes], dict[str, Any]] = loads) -> T:
    """``update`` for a JSON object document (``dumps``/``loads``)."""
    return update(store, key, mutate, load=load, dump=dumps, attempts=attempts, conflict=conflict)


__all__ = ["WRITE_ID", "Unchanged", "dumps", "loads", "put_if", "update", "update_json"]
