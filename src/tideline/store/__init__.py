"""Where shared state lives: object stores, compare-and-swap documents and leases.

* ``tideline.store.objects``: the ``Store`` protocol over a directory (``FileStore``) or an S3 bucket
  (``S3Store``), with conditional writes; ``open_store(uri)``.
* ``tideline.store.cas``: the one compare-and-swap path for a shared document (``update``, ``update_json``,
  ``put_if``), with the lost-write check.
* ``tideline.store.lease``: the one lease (``Lease``), kept inside the document it guards.

The registry, rollout documents, the run lock and the loop's ingest state are all built on these three.
"""

from tideline.store.cas import Unchanged, dumps, loads, put_if, update, update_json
from tideline.store.lease import RELEASED, Lease
from tideline.store.objects import (
    DEFAULT_S3_ATTEMPTS,
    DEFAULT_S3_BACKOFF_S,
    FileStore,
    NotFound,
    PreconditionFailed,
    S3Store,
    Store,
    open_store,
    validate_key,
)

__all__ = [
    "DEFAULT_S3_ATTEMPTS",
    "DEFAULT_S3_BACKOFF_S",
    "RELEASED",
    "FileStore",
    "Lease",
    "NotFound",
    "PreconditionFailed",
    "S3Store",
    "Store",
    "Unchanged",
    "dumps",
    "loads",
    "open_store",
    "put_if",
    "update",
    "update_json",
    "validate_key",
]
