"""Where a rollout's state lives: the **status store** port of the one rollout reconciler.

The reconciler (``tideline.rollout.controller.RolloutController``) reads a ``RolloutDoc`` and writes it back
with compare-and-swap through a ``StatusStore``; it never knows where the document lives:

* ``DocStatusStore`` (the embedded default): one JSON document ``rollouts/<name>.json`` in the registry's
  store (file:// or S3), written with ``If-Match`` on its ETag; the manual promote/rollback request is a
  field of the document (``request_action``).
* ``tideline.rollout.cr.CRStatusStore`` (a cluster): the ModelRollout's status subresource, written with a
  merge patch that carries the ``resourceVersion`` it was computed from; the spec is the CR's spec and the
  manual request is the ``tideline.io/action`` annotation.

Both stores honour one contract: ``load`` returns the document and an opaque token; ``write(doc, token)``
lands only if nothing changed since the token (else ``Lost``: another reconciler acted), returns the new
token, and recognises its own write whose answer was lost (a ``write_id`` in the stored bytes);
``StorageUnavailable`` means nothing could be read or written, and nothing changed.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from tideline.errors import ConfigError, PolicyError, RegistryError
from tideline.rollout import machine as m
from tideline.store import Lease, NotFound, PreconditionFailed, Store, cas

MAX_EVENTS = 50


class Lost(Exception):
    """Our compare-and-swap write lost: another reconciler acted since we read."""


def rollout_key(name: str) -> str:
    """The store key of rollout ``name``'s document: ``rollouts/<name>.json``."""
    return f"rollouts/{name}.json"


@dataclass
class RolloutDoc:
    """Everything the reconciler keeps about one rollout: spec, status, the last metrics snapshot, the applied
    generation, a pending manual request, the controller lease (``owner``/``lease_until``) and recent events.
    """
    spec: m.RolloutSpec
    status: m.RolloutStatus
    snapshot: dict[str, Any] | None = None
    snapshot_at: float | None = None
    applied_generation: int = 0
    requested_action: str | None = None
    owner: str | None = None
    lease_until: float = 0.0
    apply_failures: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Everything the controller keeps (what a write must persist), as plain JSON types."""
        return {"spec": self.spec.to_dict(), "status": self.status.to_dict(), "snapshot": self.snapshot,
                "snapshot_at": self.snapshot_at, "applied_generation": self.applied_generation,
                "requested_action": self.requested_action, "owner": self.owner, "lease_until": self.lease_until,
                "apply_failures": self.apply_failures, "events": self.events[-MAX_EVENTS:]}

    def to_json(self) -> bytes:
        """The document as JSON bytes, with a fresh unique ``write_id`` (so a lost write can be recognised)."""
        return json.dumps({**self.to_dict(), "write_id": uuid.uuid4().hex}, indent=1, default=str).encode()

    @classmethod
    def from_json(cls, data: bytes) -> RolloutDoc:
        """Parse ``to_json`` bytes; ``RegistryError`` ("rollout document is corrupt") when they do not fit."""
        try:
            d = json.loads(data)
            return cls(spec=m.RolloutSpec.from_dict(d["spec"]), status=m.RolloutStatus.from_dict(d["status"]),
                       snapshot=d.get("snapshot"), snapshot_at=d.get("snapshot_at"),
                       applied_generation=int(d.get("applied_generation", 0)),
                       requested_action=d.get("requested_action"), owner=d.get("owner"),
                       lease_until=float(d.get("lease_until", 0.0)),
                       apply_failures=int(d.get("apply_failures", 0)), events=list(d.get("events", [])))
        except (ValueError, KeyError, TypeError) as e:
            raise RegistryError(f"rollout document is corrupt: {e}") from e

    @property
    def lease(self) -> Lease:
        """The controller lease (``tideline.store.Lease``), kept as ``owner``/``lease_until``."""
        return Lease(self.owner, self.lease_until)

    @lease.setter
    def lease(self, lease: Lease) -> None:
        """Replace the controller lease (stored as ``owner``/``lease_until``)."""
        self.owner, self.lease_until = lease.holder, lease.until

    def add_event(self, at: float, msg: str) -> None:
        """Append an event (``at`` epoch seconds, ``msg``); only the last ``MAX_EVENTS`` are kept."""
        self.events = [*self.events, {"at": at, "msg": msg}][-MAX_EVENTS:]


# ---- the document in the registry store ------------------------------------------------------------------------
def load_rollout(store: Store, name: str) -> tuple[RolloutDoc, str]:
    """Rollout ``name``'s document and its ETag from the registry store.

    Raises ``ConfigError`` when there is no such rollout, ``RegistryError`` when the document is corrupt.
    """
    try:
        data, etag = store.get(rollout_key(name))
    except NotFound:
        raise ConfigError(f"no rollout named {name!r}", hint="start one with `tideline rollout start`") from None
    return RolloutDoc.from_json(data), etag


def list_rollouts(store: Store) -> list[str]:
    """The names of the rollouts with a document in the store (history entries excluded)."""
    return [k[len("rollouts/"):-len(".json")] for k in store.list("rollouts/")
            if k.endswith(".json") and k.count("/") == 1]


def create_rollout(store: Store, spec: m.RolloutSpec, now: float) -> RolloutDoc:
    """Write a new rollout (Pending). Refused while a rollout of that name is still running."""
    doc = RolloutDoc(spec=spec, status=m.RolloutStatus.initial(spec))
    doc.add_event(now, f"created: {spec.candidate} vs {spec.baseline}, steps {list(spec.steps)}")
    key = rollout_key(spec.name)
    try:
        cas.put_if(store, key, doc.to_json(), None)
        return doc
    except PreconditionFailed:
        pass
    old, etag = load_rollout(store, spec.name)
    if not old.status.terminal:
        raise PolicyError(f"rollout {spec.name!r} is still {old.status.phase.value} "
                          f"({old.spec.candidate} vs {old.spec.baseline})",
                          hint="wait for it, or `tideline rollout promote|rollback` it first")
    stamp = int(now)
    store.put(f"rollouts/history/{spec.name}-{stamp}-{old.spec.candidate}.json", old.to_json())
    try:
        cas.put_if(store, key, doc.to_json(), etag)
    except PreconditionFailed:
        raise PolicyError(f"rollout {spec.name!r} changed while starting a new one; try again") from None
    return doc


def request_action(store: Store, name: str, action: str, *, by: str | None = None) -> RolloutDoc:
    """Record a manual ``promote``/``rollback``/``approve`` (by ``by``) for the controller (compare-and-swap). An
    approval for a rollout that is not awaiting one is refused (``PolicyError``), nothing recorded."""
    if action not in ("promote", "rollback", "approve"):
        raise ConfigError(f"unknown rollout action {action!r}")

    def record(doc: RolloutDoc | None) -> tuple[RolloutDoc, RolloutDoc]:
        if doc is None:
            raise ConfigError(f"no rollout named {name!r}", hint="start one with `tideline rollout start`")
        if doc.status.terminal or doc.status.phase == m.Phase.PROMOTING:
            raise PolicyError(f"rollout {name!r} already {'ended' if doc.status.terminal else 'is promoting'}: "
                              f"{doc.status.phase.value}",
                              hint="use `tideline models promote|rollback` to move production now")
        if action == "approve" and doc.status.phase != m.Phase.AWAITING_APPROVAL:
            raise PolicyError(f"rollout {name!r} is not awaiting approval: it is {doc.status.phase.value}",
                              hint="an approval is taken once its analysis would promote (AwaitingApproval)")
        doc.requested_action = f"approve:{by or 'unknown'}" if action == "approve" else action
        return doc, doc

    return cas.update(store, rollout_key(name), record, load=RolloutDoc.from_json, dump=RolloutDoc.to_json,
                      attempts=50, conflict=f"could not record {action} for rollout {name!r}: "
                                            "too many concurrent writers")


# ---- the port ---------------------------------------------------------------------------------------------
class StatusStore(Protocol):
    """Where the reconciler keeps a rollout's ``RolloutDoc`` (see the module docstring)."""

    name: str

    def load(self) -> tuple[RolloutDoc, Any]:
        """The document and a token for the next compare-and-swap write."""
        ...

    def write(self, doc: RolloutDoc, token: Any) -> Any:
        """Write ``doc`` if nothing changed since ``token`` (else ``Lost``); the new token."""
        ...


class DocStatusStore:
    """The rollout document in the registry store (``rollouts/<name>.json``), compare-and-swap on its ETag.

    With ``spec`` a missing document is created (Pending) on the first ``load``."""

    def __init__(self, store: Store, name: str, spec: m.RolloutSpec | None = None,
                 clock: Any = time.time) -> None:
        self.store, self.name, self.spec, self.clock = store, name, spec, clock

    def load(self) -> tuple[RolloutDoc, str]:
        """The document and its ETag; with a ``spec``, a missing document is created (Pending) first.

        Raises ``ConfigError`` for a missing document without a spec, ``RegistryError`` for a corrupt one.
        """
        try:
            return load_rollout(self.store, self.name)
        except ConfigError:
            if self.spec is None:
                raise
        create_rollout(self.store, self.spec, self.clock())
        return load_rollout(self.store, self.name)

    def write(self, doc: RolloutDoc, token: str) -> str:
        """Write ``doc`` if its ETag is still ``token`` (``If-Match``); the new ETag, else ``Lost``."""
        try:  # the lost-write check is put_if's: a retried request whose first try landed is ours
            return cas.put_if(self.store, rollout_key(self.name), doc.to_json(), token)
        except PreconditionFailed:
            raise Lost() from None
