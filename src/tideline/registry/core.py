"""The model registry: the single source of truth for which model version is in production.

Storage layout (keys below the registry root, in a directory or under ``s3://bucket/prefix``)::

    artifacts/<uuid>/<file>          artifact files, uploaded FIRST (opaque bytes; sha256 in the manifest)
    versions/<version>.json          immutable manifest (ModelVersion), written LAST with create-only:
                                     this write is the commit point of ``register``; a writer killed
                                     earlier leaves only unreferenced artifacts (``cleanup`` removes them)
    state.json                       aliases, statuses, attachment checksums, deleted versions and the
                                     event history, changed ONLY by compare-and-swap (bounded retries);
                                     every change appends its Event in the same write
    attachments/<version>/<name>     extra files (decision.json, reports); sha256 kept in state.json

Version ids are ``v1``, ``v2``, ... The next id is claimed by a create-only write of its manifest (on
conflict the next number is tried), so concurrent writers never share an id, and ids of deleted
versions are never reused (they stay listed in ``state.json``).

Invariants kept by the API: the ``production`` alias and status ACTIVE go together (only ``promote``
and ``rollback`` move ``production``/``previous``); an alias only points to an existing version; a
version an alias points to, or an ACTIVE one, cannot be deleted.

Signing (optional, ``tideline.registry.signing``). With a key configured (``TIDELINE_SIGNING_KEY_FILE``,
a file mounted from a Kubernetes Secret, or ``TIDELINE_SIGNING_KEY``; both set is a ConfigError),
``register`` adds ``signature = {algorithm: hmac-sha256, key_id, value}`` to the manifest: an HMAC over
the canonical JSON of every other manifest field, which includes each artifact's sha256, so artifact
bytes are covered too (``fetch`` checks them against the authenticated sha256). Every path that trusts
a manifest (``get``, ``fetch``, ``list_versions``, ``resolve``/``status`` of a version id, ``promote``,
``set_alias``, ``set_status``: all go through ``_load_manifest``) then refuses with IntegrityError ("v3
is not signed: refusing it", "v3 signature does not match: refusing it") a version whose signature is
missing, made with another key, or does not match. The policy is fixed when the Registry is opened:

    key   TIDELINE_REQUIRE_SIGNED   unsigned version   signed version
    no    unset / 0                 loads              loads (cannot be checked without the key)
    no    1                         ConfigError when the registry is opened (a lost key mount fails closed)
    yes   unset / 1                 refused            must verify
    yes   0 (migration)             loads (warning)    must verify

The manifest cache holds the verdict computed from the bytes read from the store with this policy, so
a cached manifest cannot skip verification. Independently of signing, a manifest whose ``version``
differs from its key, or whose artifact names or prefix are not plain relative names, is refused
(IntegrityError). Signing authenticates versions, not ``state.json``: someone able to write the store
can still move aliases between authentic versions, and attachments are covered by their sha256 only.
Deleting a version whose manifest fails verification removes the manifest and attachments but leaves
its artifacts to ``cleanup``'s orphan pass (a forged ``artifact_prefix`` must not aim a delete).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any, Final, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from tideline.clock import Now, aware, utcnow
from tideline.errors import (
    AliasConflict,
    ConfigError,
    IntegrityError,
    PolicyError,
    RegistryError,
    VersionNotFound,
)
from tideline.registry.signing import Signing
from tideline.store import NotFound, PreconditionFailed, Store, Unchanged, cas, open_store, validate_key

log = logging.getLogger(__name__)

ALIASES: Final[tuple[str, ...]] = ("production", "previous", "candidate", "shadow")
_MANAGED_ALIASES: Final[frozenset[str]] = frozenset({"production", "previous"})
_VERSION_RE = re.compile(r"^v([1-9][0-9]{0,8})$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_STATE_KEY = "state.json"
_CAS_ATTEMPTS = 60
_CHUNK = 1 << 20
T = TypeVar("T")


class Status(str, Enum):
    """Lifecycle of a version. Exactly the ``production`` version is ACTIVE."""

    CANDIDATE = "CANDIDATE"
    SHADOW = "SHADOW"
    CANARY = "CANARY"
    ACTIVE = "ACTIVE"
    RETIRED = "RETIRED"


class _Any:
    """Sentinel type: 'do not check the current value'."""

    _instance: _Any | None = None

    def __new__(cls) -> _Any:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ANY"


ANY: Final = _Any()


class ArtifactInfo(BaseModel):
    """Checksum and size of one stored file."""

    model_config = ConfigDict(extra="forbid")
    sha256: str
    size: int


class Signature(BaseModel):
    """HMAC of a manifest's other fields (``tideline.registry.signing``); the key is never stored."""

    model_config = ConfigDict(extra="forbid")
    algorithm: str
    key_id: str
    value: str


class ModelVersion(BaseModel):
    """Immutable manifest of one registered version."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    version: str
    family: str
    params: dict[str, Any] = Field(default_factory=dict)
    features: list[str] = Field(default_factory=list)
    feature_config: dict[str, Any] = Field(default_factory=dict)
    feature_config_hash: str = ""
    training_window: dict[str, Any] = Field(default_factory=dict)
    data_hash: str = ""
    metrics: dict[str, Any] = Field(default_factory=dict)
    evaluation: dict[str, Any] = Field(default_factory=dict)
    decision: dict[str, Any] | None = None
    position: dict[str, Any] = Field(default_factory=dict)
    code_version: str = ""
    created_at: str
    parent_version: str | None = None
    artifacts: dict[str, ArtifactInfo] = Field(default_factory=dict)
    artifact_prefix: str
    extra: dict[str, Any] = Field(default_factory=dict)
    signature: Signature | None = None


_REGISTRY_FIELDS: Final = frozenset({"version", "created_at", "artifacts", "artifact_prefix", "signature"})
_PREFIX_RE = re.compile(r"^artifacts/[A-Za-z0-9][A-Za-z0-9._-]{0,127}/$")
_METADATA_FIELDS: Final = frozenset(ModelVersion.model_fields) - _REGISTRY_FIELDS


class Event(BaseModel):
    """One entry of the registry history."""

    model_config = ConfigDict(extra="forbid")

    at: str
    action: str
    version: str | None = None
    from_version: str | None = None
    alias: str | None = None
    reason: str = ""
    actor: str = ""


class KillSwitchState(BaseModel):
    """The kill switch is on: every predictor answers a flat position (0) until it is lifted."""

    model_config = ConfigDict(extra="ignore")

    at: str
    reason: str
    actor: str = ""


class AttachmentInfo(ArtifactInfo):
    """Checksum, size and upload time (``at``, ISO UTC) of one attachment of a version."""
    at: str


class VersionCheck(BaseModel):
    """What ``Registry.check_versions`` found for one version: ``problem`` is None when every check passed,
    else why a load would refuse it (``manifest`` is None when the manifest could not even be read)."""

    model_config = ConfigDict(frozen=True)

    version: str
    manifest: ModelVersion | None
    problem: str | None
    artifacts_checked: bool
    # "valid" | "refused" | "unsigned" | "not checked" (no key set) | None (no readable manifest)
    signature: str | None


class _State(BaseModel):
    """Contents of state.json."""

    model_config = ConfigDict(extra="ignore")

    schema_version: int = 1
    revision: int = 0
    write_id: str = ""
    aliases: dict[str, str] = Field(default_factory=dict)
    statuses: dict[str, Status] = Field(default_factory=dict)
    attachments: dict[str, dict[str, AttachmentInfo]] = Field(default_factory=dict)
    deleted: list[str] = Field(default_factory=list)
    events: list[Event] = Field(default_factory=list)
    kill_switch: KillSwitchState | None = None


def _vnum(version: str) -> int:
    m = _VERSION_RE.match(version)
    return int(m.group(1)) if m else -1


def _check_version_id(version: str) -> str:
    if not isinstance(version, str) or not _VERSION_RE.match(version):
        raise ConfigError(f"invalid version id {version!r}", hint="version ids look like v1, v2, ...")
    return version


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(f"invalid {what} name {name!r}", hint="letters, digits, '.', '_', '-'; no paths")
    return name


def _check_alias(alias: str) -> str:
    if alias not in ALIASES:
        raise ConfigError(f"unknown alias {alias!r}", hint=f"aliases are {', '.join(ALIASES)}")
    return alias


def _sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _manifest_key(version: str) -> str:
    return f"versions/{version}.json"


def _shape_problem(version: str, mv: ModelVersion) -> str | None:
    """Why a parsed manifest cannot be trusted whatever the signing policy (wrong id, unsafe paths)."""
    if mv.version != version:
        return f"manifest {_manifest_key(version)} describes {mv.version[:32]!r}: refusing it"
    if not _PREFIX_RE.match(mv.artifact_prefix):
        return f"{version} has an unsafe artifact prefix {mv.artifact_prefix[:80]!r}: refusing it"
    for rel in mv.artifacts:
        try:
            for seg in rel.split("/"):
                _check_name(seg, "artifact file")
            validate_key(mv.artifact_prefix + rel)
        except ConfigError:
            return f"{version} names an unsafe artifact path {rel[:80]!r}: refusing it"
    return None


class Registry:
    """Versions, statuses, aliases, history and attachments on top of a ``Store``. Thread-safe."""

    def __init__(self, store: Store, *, signing: Signing | None = None, clock: Now = utcnow) -> None:
        """``signing`` None: read the policy from the environment (``Signing.from_env``). ``clock``: the time
        versions are created and events happen at (a replay runs the registry on its own clock)."""
        self.store = store
        self.clock = clock
        self._signing = Signing.from_env() if signing is None else signing
        # version -> (manifest, why it must be refused or None). Manifests are immutable, ids never
        # reused and the policy is fixed per instance, so the verdict can be cached with the manifest.
        self._cache: dict[str, tuple[ModelVersion, str | None]] = {}
        self._cache_lock = threading.Lock()

    def _now(self) -> str:
        return aware(self.clock()).isoformat()

    @property
    def signing(self) -> Signing:
        """The signing policy of this registry (fixed when it was opened)."""
        return self._signing

    def __repr__(self) -> str:
        return f"Registry({self.store.uri!r})"

    # -- state ----------------------------------------------------------------------------------
    def _read_state(self) -> tuple[_State, str | None]:
        try:
            data, etag = self.store.get(_STATE_KEY)
        except NotFound:
            return _State(), None
        return self._parse_state(data), etag

    def _parse_state(self, data: bytes) -> _State:
        try:
            return _State.model_validate_json(data)
        except PydanticValidationError as e:
            raise RegistryError(f"registry state {self.store.uri}/{_STATE_KEY} is corrupt: {e}") from e

    def _update_state(self, mutate: Callable[[_State], tuple[T, list[Event]]]) -> T:
        """Compare-and-swap the state document (``tideline.store.cas.update``, with its lost-write check).

        ``mutate`` runs on a fresh copy each attempt; it returns (result, events) or raises ``Unchanged(result)``.
        """

        def step(state: _State | None) -> tuple[_State, T]:
            state = state or _State()
            result, events = mutate(state)  # or Unchanged(result): nothing to write
            state.events.extend(events)
            state.revision += 1
            return state, result

        def dump(state: _State) -> bytes:
            state.write_id = uuid.uuid4().hex  # unique bytes: the lost-write check recognises our own write
            return state.model_dump_json(indent=1).encode()

        return cas.update(self.store, _STATE_KEY, step, load=self._parse_state, dump=dump, attempts=_CAS_ATTEMPTS,
                          conflict=f"could not update registry state after {_CAS_ATTEMPTS} attempts")

    # -- manifests ------------------------------------------------------------------------------
    def _version_ids(self) -> list[str]:
        ids = []
        for key in self.store.list("versions/"):
            name = key[len("versions/") :]
            if name.endswith(".json") and _VERSION_RE.match(name[:-5]):
                ids.append(name[:-5])
        return sorted(ids, key=_vnum)

    def _load_manifest(self, version: str, *, verify: bool = True) -> ModelVersion:
        """The manifest of ``version``; with ``verify`` (every caller that trusts it) IntegrityError
        when the signing policy or the shape checks refuse it. ``verify=False`` is for bookkeeping
        (retention, orphan detection) that must see every manifest."""
        mv, problem = self._manifest_entry(version)
        if problem is not None and verify:
            raise IntegrityError(problem)
        return mv

    def _manifest_entry(self, version: str) -> tuple[ModelVersion, str | None]:
        with self._cache_lock:
            cached = self._cache.get(version)
        if cached is not None:
            return cached
        try:
            data, _ = self.store.get(_manifest_key(version))
        except NotFound:
            raise VersionNotFound(f"model version {version!r} not found", hint=self._known_hint()) from None
        try:
            mv = ModelVersion.model_validate_json(data)
            raw = json.loads(data)
        except PydanticValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            raise IntegrityError(f"manifest of {version} is corrupt: {where + ': ' if where else ''}"
                                 f"{first['msg'].splitlines()[0][:200]}", hint="refusing it") from e
        except ValueError as e:
            raise IntegrityError(f"manifest of {version} is corrupt: {str(e).splitlines()[0][:200]}",
                                 hint="refusing it") from e
        problem = _shape_problem(version, mv) or self._signing.problem(version, raw)
        if problem is None and self._signing.enabled and mv.signature is None:
            log.warning("%s is not signed; accepted because %s=0", version, "TIDELINE_REQUIRE_SIGNED")
        entry = (mv, problem)
        with self._cache_lock:
            self._cache[version] = entry
        return entry

    def _entry_or_unreadable(self, version: str) -> tuple[ModelVersion | None, str | None]:
        """``_manifest_entry``, but (None, why) for a manifest that cannot be read at all (for bookkeeping
        that must go on past it: delete, cleanup, check_versions)."""
        try:
            return self._manifest_entry(version)
        except IntegrityError as e:
            return None, e.message

    def _known_hint(self) -> str:
        known = self._version_ids()
        if not known:
            return "the registry has no versions"
        shown = known[-10:]
        more = f" (and {len(known) - 10} more)" if len(known) > 10 else ""
        return "known versions: " + ", ".join(shown) + more

    def _require_version(self, version: str, state: _State | None = None) -> ModelVersion:
        _check_version_id(version)
        if state is not None and version in state.deleted:
            raise VersionNotFound(f"model version {version!r} was deleted", hint=self._known_hint())
        return self._load_manifest(version)

    # -- reading --------------------------------------------------------------------------------
    def resolve(self, ref: str) -> str:
        """Version id for a version id or an alias; VersionNotFound when unknown."""
        state, _ = self._read_state()
        return self._resolve(ref, state)

    def _resolve(self, ref: str, state: _State) -> str:
        if ref in ALIASES:
            target = state.aliases.get(ref)
            if target is None:
                raise VersionNotFound(f"alias {ref!r} is not set", hint=self._known_hint())
            return target
        if not isinstance(ref, str) or not _VERSION_RE.match(ref):
            raise ConfigError(
                f"{ref!r} is neither a version id nor an alias",
                hint=f"use v<N> or one of {', '.join(ALIASES)}",
            )
        self._require_version(ref, state)
        return ref

    def get(self, version_or_alias: str) -> ModelVersion:
        """The manifest of a version (by id or alias)."""
        state, _ = self._read_state()
        return self._load_manifest(self._resolve(version_or_alias, state))

    def list_versions(self) -> list[ModelVersion]:
        """Every committed, non-deleted version, oldest first (IntegrityError if one is refused)."""
        return self._list_manifests(verify=True)

    def _list_manifests(self, *, verify: bool) -> list[ModelVersion]:
        """Every non-deleted version's manifest. ``verify``: IntegrityError for a refused one; without it,
        refused ones are included and unreadable ones (nothing to return) skipped."""
        ids = self._version_ids()
        state, _ = self._read_state()
        out = []
        for v in ids:
            if v in state.deleted:
                continue
            try:
                mv = self._load_manifest(v) if verify else self._entry_or_unreadable(v)[0]
            except VersionNotFound:  # deleted meanwhile
                continue
            if mv is not None:
                out.append(mv)
        return out

    def check_versions(self, refs: list[str] | None = None, *, artifacts: bool = False) -> list[VersionCheck]:
        """Check versions without raising for a refused one: each manifest's shape and signature (what every
        load checks), and with ``artifacts`` the presence and sha256 of every artifact too (downloaded into a
        temporary directory, nothing kept). ``refs``: version ids or aliases (VersionNotFound for an unknown
        one); None means every version not deleted. For an operator to see *which* versions are bad, where
        ``list_versions`` refuses the whole listing."""
        state, _ = self._read_state()
        if refs is None:
            ids = [v for v in self._version_ids() if v not in state.deleted]
        else:
            ids = []
            for ref in refs:
                if ref in ALIASES:
                    v = self._resolve(ref, state)
                else:
                    _check_version_id(ref)
                    if ref in state.deleted:
                        raise VersionNotFound(f"model version {ref!r} was deleted", hint=self._known_hint())
                    v = ref
                if v not in ids:
                    ids.append(v)
        out = []
        for v in ids:
            try:
                mv, problem = self._entry_or_unreadable(v)
            except VersionNotFound:
                if refs is None:
                    continue  # deleted meanwhile
                raise
            if mv is None:
                out.append(VersionCheck(version=v, manifest=None, problem=problem, artifacts_checked=False,
                                        signature=None))
                continue
            shape = _shape_problem(v, mv)
            if shape is not None:
                signature = None
            elif problem is not None:
                signature = "refused"
            elif mv.signature is None:
                signature = "unsigned"
            else:
                signature = "valid" if self._signing.enabled else "not checked"
            if problem is None and artifacts:
                try:
                    with tempfile.TemporaryDirectory(prefix=".tideline-verify-") as d:
                        self.fetch(v, Path(d) / v)
                except IntegrityError as e:
                    problem = e.message
            out.append(VersionCheck(version=v, manifest=mv, problem=problem,
                                    artifacts_checked=artifacts and problem is None, signature=signature))
        return out

    def status(self, version: str) -> Status:
        """Status of a version (CANDIDATE if the registering writer died before recording it)."""
        state, _ = self._read_state()
        v = self._resolve(version, state)
        return state.statuses.get(v, Status.CANDIDATE)

    def statuses(self) -> dict[str, Status]:
        """Status of every version."""
        ids = self._version_ids()
        state, _ = self._read_state()
        return {v: state.statuses.get(v, Status.CANDIDATE) for v in ids if v not in state.deleted}

    def aliases(self) -> dict[str, str]:
        """alias -> version id, for the aliases that are set."""
        state, _ = self._read_state()
        return dict(state.aliases)

    def history(self) -> list[Event]:
        """Every recorded state change, oldest first."""
        state, _ = self._read_state()
        return list(state.events)

    def kill_switch(self) -> KillSwitchState | None:
        """The kill switch, when it is on (predictors then answer flat), else None."""
        state, _ = self._read_state()
        return state.kill_switch

    def set_kill_switch(self, on: bool, *, reason: str, actor: str = "cli") -> Event:
        """Throw (``on``) or lift the kill switch; recorded in the history. Idempotent."""

        def mutate(st: _State) -> tuple[Event, list[Event]]:
            ev = Event(at=self._now(), action="kill_switch_on" if on else "kill_switch_off", reason=reason, actor=actor)
            if (st.kill_switch is not None) == on:
                raise Unchanged(ev)
            st.kill_switch = KillSwitchState(at=ev.at, reason=reason, actor=actor) if on else None
            return ev, [ev]

        ev = self._update_state(mutate)
        (log.error if on else log.warning)("kill switch %s: %s", "ON" if on else "off", reason)
        return ev

    # -- register -------------------------------------------------------------------------------
    def register(
        self, artifact_dir: Path, metadata: dict[str, Any], *, status: Status = Status.CANDIDATE
    ) -> ModelVersion:
        """Upload every file of ``artifact_dir`` with its sha256, then commit a new version manifest."""
        status = Status(status)
        if status == Status.ACTIVE:
            raise PolicyError("a version cannot be registered ACTIVE", hint="register it, then promote it")
        unknown = set(metadata) - _METADATA_FIELDS
        if unknown:
            raise ConfigError(
                f"unknown model metadata keys: {', '.join(sorted(unknown))}",
                hint=f"allowed: {', '.join(sorted(_METADATA_FIELDS))}",
            )
        if "family" not in metadata:
            raise ConfigError("model metadata needs 'family'")
        parent = metadata.get("parent_version")
        if parent is not None:
            self._require_version(parent)
        artifact_dir = Path(artifact_dir)
        if not artifact_dir.is_dir():
            raise ConfigError(f"artifact directory {artifact_dir} does not exist")
        files = sorted(p for p in artifact_dir.rglob("*") if p.is_file())
        if not files:
            raise ConfigError(f"artifact directory {artifact_dir} has no files")
        rel_names = []
        for p in files:
            rel = p.relative_to(artifact_dir).as_posix()
            for seg in rel.split("/"):
                _check_name(seg, "artifact file")
            rel_names.append(rel)

        prefix = f"artifacts/{uuid.uuid4().hex}/"
        artifacts: dict[str, ArtifactInfo] = {}
        for p, rel in zip(files, rel_names, strict=True):
            sha, size = _sha256_file(p)
            self.store.put_file(prefix + rel, p)
            artifacts[rel] = ArtifactInfo(sha256=sha, size=size)
        try:
            proto = ModelVersion(
                version="v0", created_at=self._now(), artifacts=artifacts, artifact_prefix=prefix, **metadata
            )
        except PydanticValidationError as e:
            raise ConfigError(f"bad model metadata: {e.errors()[0]['loc']}: {e.errors()[0]['msg']}") from e

        # Commit: claim the next free id with a create-only manifest write.
        ids = self._version_ids()  # list BEFORE reading state: a concurrent delete tombstones first
        state, _ = self._read_state()
        n = max([_vnum(v) for v in ids] + [_vnum(v) for v in state.deleted] + [0]) + 1
        for _ in range(10_000):
            mv = proto.model_copy(update={"version": f"v{n}"})
            if self._signing.enabled:  # over the JSON form: exactly what a reader will parse back
                body = json.loads(mv.model_dump_json(exclude={"signature"}))
                mv = mv.model_copy(update={"signature": Signature(**self._signing.sign(body))})
            data = mv.model_dump_json(indent=1).encode()
            try:  # create-only; the unique artifact_prefix makes these bytes ours (the lost-write check)
                cas.put_if(self.store, _manifest_key(mv.version), data, None)
                break
            except PreconditionFailed:
                n += 1
        else:  # pragma: no cover - would need 10k concurrent writers
            raise RegistryError("could not allocate a version id")
        with self._cache_lock:
            self._cache[mv.version] = (mv, None)

        def mutate(st: _State) -> tuple[None, list[Event]]:
            st.statuses[mv.version] = status
            return None, [Event(at=self._now(), action="register", version=mv.version, reason=status.value)]

        self._update_state(mutate)
        log.info("registered %s (%s, %d files) in %s", mv.version, mv.family, len(artifacts), self.store.uri)
        return mv

    # -- aliases and statuses -------------------------------------------------------------------
    def set_alias(
        self,
        alias: str,
        version: str | None,
        *,
        expected: str | None | _Any = ANY,
        reason: str = "",
        actor: str = "cli",
    ) -> Event:
        """Point ``alias`` (candidate or shadow) at ``version`` (None removes it), compare-and-swap.

        With ``expected`` set, AliasConflict is raised unless the alias currently points there
        (None: currently unset). ``production``/``previous`` move only by promote and rollback.
        """
        _check_alias(alias)
        if alias in _MANAGED_ALIASES:
            raise PolicyError(
                f"alias {alias!r} is managed by promote/rollback", hint="use promote() or rollback()"
            )
        if version is not None:
            self._require_version(version)

        def mutate(st: _State) -> tuple[Event, list[Event]]:
            current = st.aliases.get(alias)
            if not isinstance(expected, _Any) and current != expected:
                raise AliasConflict(
                    f"alias {alias!r} points to {current or 'nothing'}, expected {expected or 'nothing'}"
                )
            if version is not None and version in st.deleted:
                raise VersionNotFound(f"model version {version!r} was deleted")
            if current == version:
                raise Unchanged(Event(at=self._now(), action="set_alias", version=version, from_version=current,
                                      alias=alias, reason=reason, actor=actor))
            if version is None:
                st.aliases.pop(alias, None)
            else:
                st.aliases[alias] = version
            ev = Event(at=self._now(), action="set_alias" if version else "unset_alias", version=version,
                       from_version=current, alias=alias, reason=reason, actor=actor)
            return ev, [ev]

        return self._update_state(mutate)

    def set_status(self, version: str, status: Status, *, reason: str = "", actor: str = "cli") -> Event:
        """Set a version's status. ACTIVE is reserved for the production version (use promote)."""
        status = Status(status)
        _check_version_id(version)
        self._require_version(version)

        def mutate(st: _State) -> tuple[Event, list[Event]]:
            if version in st.deleted:
                raise VersionNotFound(f"model version {version!r} was deleted")
            is_prod = st.aliases.get("production") == version
            if status == Status.ACTIVE and not is_prod:
                raise PolicyError(f"{version} is not production; only promote() makes a version ACTIVE")
            if is_prod and status != Status.ACTIVE:
                raise PolicyError(
                    f"{version} is production and must stay ACTIVE", hint="promote or roll back first"
                )
            current = st.statuses.get(version, Status.CANDIDATE)
            ev = Event(
                at=self._now(), action="set_status", version=version, reason=reason or status.value, actor=actor
            )
            if current == status:
                raise Unchanged(ev)
            st.statuses[version] = status
            return ev, [ev]

        return self._update_state(mutate)

    # -- promote / rollback ---------------------------------------------------------------------
    def promote(
        self, version: str, *, reason: str, actor: str = "cli", expected: str | None | _Any = ANY
    ) -> Event:
        """Make ``version`` production (old production becomes previous and RETIRED); idempotent.

        ``version`` may be an alias (e.g. ``candidate``), resolved in the same atomic update.
        ``expected`` guards against a concurrent change of production (AliasConflict).
        """
        if version not in ALIASES:
            self._require_version(version)

        def mutate(st: _State) -> tuple[Event, list[Event]]:
            v = self._resolve(version, st)
            current = st.aliases.get("production")
            if not isinstance(expected, _Any) and current != expected:
                raise AliasConflict(f"production is {current or 'unset'}, expected {expected or 'unset'}")
            if current == v:
                last = next(
                    (e for e in reversed(st.events) if e.alias == "production" and e.version == v), None
                )
                raise Unchanged(last or Event(at=self._now(), action="promote", version=v, from_version=v,
                                              alias="production", reason=reason, actor=actor))
            if current is not None:
                st.aliases["previous"] = current
                st.statuses[current] = Status.RETIRED
            st.aliases["production"] = v
            st.statuses[v] = Status.ACTIVE
            for a in ("candidate", "shadow"):
                if st.aliases.get(a) == v:
                    del st.aliases[a]
            ev = Event(at=self._now(), action="promote", version=v, from_version=current, alias="production",
                       reason=reason, actor=actor)
            return ev, [ev]

        ev = self._update_state(mutate)
        log.info("promoted %s to production (was %s): %s", ev.version, ev.from_version, reason)
        return ev

    def rollback(self, *, reason: str, actor: str = "cli") -> Event:
        """production <- previous; the rolled-back version is RETIRED; previous moves one step back."""

        def mutate(st: _State) -> tuple[Event, list[Event]]:
            current = st.aliases.get("production")
            target = st.aliases.get("previous")
            if target is None:
                raise PolicyError("cannot roll back: there is no previous production version")
            if target in st.deleted:
                raise PolicyError(f"cannot roll back: previous version {target} was deleted")
            st.aliases["production"] = target
            st.statuses[target] = Status.ACTIVE
            if current is not None and current != target:
                st.statuses[current] = Status.RETIRED
            # The version before `target`: who was production when `target` was last promoted.
            before = None
            for e in reversed(st.events):
                if e.alias == "production" and e.version == target and e.action == "promote":
                    before = e.from_version
                    break
            if before is None or before in (target, current) or before in st.deleted:
                st.aliases.pop("previous", None)
            else:
                st.aliases["previous"] = before
            ev = Event(at=self._now(), action="rollback", version=target, from_version=current, alias="production",
                       reason=reason, actor=actor)
            return ev, [ev]

        ev = self._update_state(mutate)
        log.warning("rolled back production from %s to %s: %s", ev.from_version, ev.version, reason)
        return ev

    # -- artifacts --------------------------------------------------------------------------------
    def fetch(self, version: str, dest: Path) -> Path:
        """Download every artifact of a version into ``dest`` and verify its sha256.

        Files land in a temporary directory next to ``dest`` and move in only when all verified;
        on any failure (IntegrityError naming the file) nothing is left behind.
        """
        mv = self.get(version)
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.fetch-", dir=dest.parent))
        try:
            for rel, info in mv.artifacts.items():
                target = tmp.joinpath(*rel.split("/"))
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    self.store.get_file(mv.artifact_prefix + rel, target)
                except NotFound:
                    raise IntegrityError(
                        f"artifact {rel!r} of {mv.version} is missing from the store"
                    ) from None
                sha, size = _sha256_file(target)
                if sha != info.sha256 or size != info.size:
                    raise IntegrityError(
                        f"artifact {rel!r} of {mv.version} failed its sha256 check "
                        f"(expected {info.sha256[:12]}…, got {sha[:12]}…)",
                        hint="the stored file was changed or corrupted; refusing it",
                    )
            if not dest.exists() or (dest.is_dir() and not any(dest.iterdir())):
                if dest.exists():
                    dest.rmdir()
                os.replace(tmp, dest)
            else:
                if not dest.is_dir():
                    raise ConfigError(f"fetch destination {dest} is not a directory")
                for rel in mv.artifacts:
                    target = dest.joinpath(*rel.split("/"))
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(tmp.joinpath(*rel.split("/")), target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("fetched %s (%d files) to %s", mv.version, len(mv.artifacts), dest)
        return dest

    def put_attachment(self, version: str, name: str, data: bytes, *, actor: str = "cli") -> str:
        """Store ``attachments/<version>/<name>`` (last writer wins) and record its sha256; returns it."""
        _check_name(name, "attachment")
        v = self.resolve(version)
        sha = hashlib.sha256(data).hexdigest()
        self.store.put(f"attachments/{v}/{name}", data)

        def mutate(st: _State) -> tuple[None, list[Event]]:
            if v in st.deleted:
                raise VersionNotFound(f"model version {v!r} was deleted")
            st.attachments.setdefault(v, {})[name] = AttachmentInfo(sha256=sha, size=len(data), at=self._now())
            return None, [Event(at=self._now(), action="attach", version=v, reason=name, actor=actor)]

        self._update_state(mutate)
        return sha

    def attachments(self, version: str) -> dict[str, AttachmentInfo]:
        """Attachments recorded for a version."""
        state, _ = self._read_state()
        v = self._resolve(version, state)
        return dict(state.attachments.get(v, {}))

    def get_attachment(self, version: str, name: str) -> bytes:
        """Read an attachment and verify its sha256 (IntegrityError on mismatch)."""
        _check_name(name, "attachment")
        for attempt in range(5):  # ride over a concurrent overwrite (blob first, then state)
            state, _ = self._read_state()
            v = self._resolve(version, state)
            info = state.attachments.get(v, {}).get(name)
            if info is None:
                have = ", ".join(sorted(state.attachments.get(v, {}))) or "none"
                raise RegistryError(f"{v} has no attachment {name!r}", hint=f"attachments: {have}")
            try:
                data, _ = self.store.get(f"attachments/{v}/{name}")
            except NotFound:
                raise IntegrityError(f"attachment {name!r} of {v} is missing from the store") from None
            if hashlib.sha256(data).hexdigest() == info.sha256:
                return data
            time.sleep(0.02 * (attempt + 1))
        raise IntegrityError(f"attachment {name!r} of {v} failed its sha256 check")

    # -- deletion and retention -------------------------------------------------------------------
    def delete(self, version: str, *, reason: str = "", actor: str = "cli") -> None:
        """Delete a version: refused for production, ACTIVE or aliased versions (PolicyError).

        The version is tombstoned in state.json first (so no alias can point to it afterwards),
        then its manifest is removed, then its artifacts and attachments.
        """
        _check_version_id(version)
        # a refused (tampered, even unreadable) version can still be deleted; its artifacts are purged only
        # when its manifest is trusted (else `cleanup` reclaims them as orphans after the grace period)
        mv, problem = self._entry_or_unreadable(version)

        def mutate(st: _State) -> tuple[None, list[Event]]:
            if version in st.deleted:
                raise Unchanged(None)
            pointing = sorted(a for a, v in st.aliases.items() if v == version)
            if pointing:
                raise PolicyError(f"cannot delete {version}: alias {', '.join(pointing)} points to it")
            if st.statuses.get(version) == Status.ACTIVE:
                raise PolicyError(f"cannot delete {version}: it is ACTIVE")
            st.deleted.append(version)
            st.statuses.pop(version, None)
            st.attachments.pop(version, None)
            return None, [Event(at=self._now(), action="delete", version=version, reason=reason, actor=actor)]

        self._update_state(mutate)
        self._purge(version, mv.artifact_prefix if mv is not None and problem is None else None)
        log.info("deleted %s", version)

    def _purge(self, version: str, artifact_prefix: str | None) -> None:
        self.store.delete(_manifest_key(version))
        with self._cache_lock:
            self._cache.pop(version, None)
        if artifact_prefix:
            for key in self.store.list(artifact_prefix):
                self.store.delete(key)
        for key in self.store.list(f"attachments/{version}/"):
            self.store.delete(key)

    def unrecorded_versions(self) -> list[str]:
        """Versions whose registering writer died after committing the manifest and before recording it
        (no status, no ``register`` event). They list as CANDIDATE; ``cleanup`` records them."""
        state, _ = self._read_state()
        return _unrecorded(self._version_ids(), state)

    def record_unrecorded(self, grace_s: float) -> list[str]:
        """Record (status CANDIDATE, a ``register`` event by ``cleanup``) each unrecorded version whose manifest
        is older than ``grace_s`` seconds (a younger one may belong to a writer about to record it itself).
        Returns the versions recorded."""
        cutoff = time.time() - grace_s
        old = []
        for v in self.unrecorded_versions():
            try:
                if self.store.modified(_manifest_key(v)) <= cutoff:
                    old.append(v)
            except NotFound:
                continue

        def mutate(st: _State) -> tuple[list[str], list[Event]]:
            todo = _unrecorded(old, st)
            if not todo:
                raise Unchanged(todo)
            for v in todo:
                st.statuses[v] = Status.CANDIDATE
            return todo, [
                Event(at=self._now(), action="register", version=v, actor="cleanup",
                      reason="CANDIDATE (recovered: its writer died before recording it)") for v in todo]

        if not old:
            return []
        done = self._update_state(mutate)
        for v in done:
            log.warning("recorded %s: its writer died between the manifest and the state update", v)
        return done

    def cleanup(self, keep_last: int, *, orphan_grace_s: float = 3600.0) -> list[str]:
        """Retention. Returns what was removed: version ids, then orphan ``artifacts/<uuid>/`` prefixes.

        Deletes the oldest versions beyond the newest ``keep_last`` that no alias points to and that
        are not ACTIVE; finishes deletions a killed process left half done; records versions whose writer
        died before recording them (``record_unrecorded``); removes artifact
        prefixes with no manifest whose newest file is older than ``orphan_grace_s`` (uploads of a
        registration still in flight are younger than that), and the unfinished uploads of killed
        writers older than that (a directory store's temp files, an S3 store's multipart uploads).
        """
        if not isinstance(keep_last, int) or keep_last < 0:
            raise ConfigError(f"keep_last must be a non-negative integer, got {keep_last!r}")
        removed: list[str] = []
        versions = self._list_manifests(verify=False)  # retention also applies to refused versions
        old = versions[: max(0, len(versions) - keep_last)]
        for mv in old:
            state, _ = self._read_state()
            if mv.version in state.aliases.values() or state.statuses.get(mv.version) == Status.ACTIVE:
                continue
            try:
                self.delete(mv.version, reason=f"retention keep_last={keep_last}", actor="cleanup")
                removed.append(mv.version)
            except (PolicyError, VersionNotFound):  # aliased or deleted concurrently
                continue

        # Orphans: list artifacts BEFORE manifests so a registration committing meanwhile is seen.
        art_keys = self.store.list("artifacts/")
        state, _ = self._read_state()
        for v in self._version_ids():
            if v in state.deleted:  # tombstoned but not purged (killed deleter)
                try:
                    mv, problem = self._entry_or_unreadable(v)
                    self._purge(v, mv.artifact_prefix if mv is not None and problem is None else None)
                except VersionNotFound:
                    pass
        referenced: set[str] = set()
        unreadable: list[str] = []
        for v in self._version_ids():
            try:
                mv, _ = self._entry_or_unreadable(v)
            except VersionNotFound:  # deleted meanwhile
                continue
            if mv is None:
                unreadable.append(v)
            else:
                referenced.add(mv.artifact_prefix)
        self.record_unrecorded(orphan_grace_s)
        if unreadable:  # which artifacts those own is unknown: sweep none rather than a wrong one
            log.warning("orphan artifacts not swept: the manifest of %s cannot be read (`tideline models "
                        "delete` it, then cleanup reclaims its artifacts)", ", ".join(unreadable))
            art_keys = []
        groups: dict[str, list[str]] = {}
        for key in art_keys:
            parts = key.split("/")
            if len(parts) >= 3:
                groups.setdefault(f"artifacts/{parts[1]}/", []).append(key)
        cutoff = time.time() - orphan_grace_s
        for prefix, keys in sorted(groups.items()):
            if prefix in referenced:
                continue
            try:
                newest = max(self.store.modified(k) for k in keys)
            except NotFound:
                continue
            if newest > cutoff:
                continue
            for k in keys:
                self.store.delete(k)
            removed.append(prefix)
            log.info("removed orphan artifacts %s", prefix)
        sweep = getattr(self.store, "remove_stale_uploads", None)  # temp files / multipart uploads of killed writers
        if sweep is not None:
            n = sweep(orphan_grace_s)
            if n:
                log.info("removed %d unfinished upload(s) of killed writers", n)
        live = set(self._version_ids())
        for key in self.store.list("attachments/"):
            v = key.split("/")[1]
            if v not in live and (v in state.deleted or self.store.modified(key) <= cutoff):
                self.store.delete(key)
        return removed


def _unrecorded(ids: list[str], state: Any) -> list[str]:
    """Versions with a manifest that the state never recorded (no status: the registering writer died
    between its manifest and its state update)."""
    return [v for v in ids if v not in state.deleted and v not in state.statuses]


def open_registry(uri: str, *, endpoint_url: str | None = None, signing: Signing | None = None,
                  clock: Now = utcnow) -> Registry:
    """Open the registry at ``file:///abs/path``, a plain path, or ``s3://bucket/prefix``.

    ``signing`` None: the signing policy comes from the environment (``TIDELINE_SIGNING_KEY_FILE``,
    ``TIDELINE_SIGNING_KEY``, ``TIDELINE_REQUIRE_SIGNED``; see the module docstring). A directory registry is
    created when missing. Raises ``ConfigError`` for a URI it cannot use or an inconsistent signing setup,
    ``StorageUnavailable`` when the directory cannot be created.

    A registry in a temporary directory: register a version, promote it, fetch it back (sha256 verified):

    >>> import tempfile
    >>> from pathlib import Path
    >>> tmp = tempfile.TemporaryDirectory()
    >>> reg = open_registry(Path(tmp.name, "registry").as_uri())
    >>> reg.aliases(), reg.list_versions()
    ({}, [])
    >>> model_dir = Path(tmp.name, "model")
    >>> model_dir.mkdir()
    >>> _ = (model_dir / "model.txt").write_text("weights")
    >>> mv = reg.register(model_dir, {"family": "lightgbm"})
    >>> mv.version, reg.status("v1").value
    ('v1', 'CANDIDATE')
    >>> _ = reg.promote("v1", reason="first model")
    >>> reg.aliases(), reg.resolve("production"), reg.status("v1").value
    ({'production': 'v1'}, 'v1', 'ACTIVE')
    >>> sorted(p.name for p in reg.fetch("production", Path(tmp.name, "fetched")).iterdir())
    ['model.txt']
    >>> [e.action for e in reg.history()]
    ['register', 'promote']
    >>> reg.get("v9")
    Traceback (most recent call last):
    ...
    tideline.errors.VersionNotFound: model version 'v9' not found (known versions: v1)
    >>> tmp.cleanup()
    """
    return Registry(open_store(uri, endpoint_url=endpoint_url), signing=signing, clock=clock)
