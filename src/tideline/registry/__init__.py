"""Model registry: immutable versions with checksummed artifacts, statuses, aliases (CAS), history.

See ``tideline.registry.core`` for the storage layout and guarantees.
"""

from tideline.registry.core import (
    ALIASES,
    ANY,
    ArtifactInfo,
    AttachmentInfo,
    Event,
    ModelVersion,
    Registry,
    Status,
    VersionCheck,
    open_registry,
)
from tideline.store import FileStore, S3Store, Store, open_store

__all__ = [
    "ALIASES",
    "ANY",
    "ArtifactInfo",
    "AttachmentInfo",
    "Event",
    "FileStore",
    "ModelVersion",
    "Registry",
    "S3Store",
    "Status",
    "Store",
    "VersionCheck",
    "open_registry",
    "open_store",
]
