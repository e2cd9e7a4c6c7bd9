"""Optional HMAC-SHA256 signing of registry versions (see ``tideline.registry.core`` for the policy).

The key comes from the environment, read once when a ``Registry`` is opened:

* ``TIDELINE_SIGNING_KEY_FILE``: path of a file holding the key (in Kubernetes: a key of a Secret
  mounted read-only); surrounding whitespace and newlines are stripped.
* ``TIDELINE_SIGNING_KEY``: the key itself (local use and tests).
* Setting both is a ConfigError (no silent precedence: a stale inline key could shadow the mounted one).
* ``TIDELINE_REQUIRE_SIGNED``: ``1``/``true`` (the default when a key is set) refuses unsigned versions;
  ``0``/``false`` with a key accepts unsigned versions (migration of an older registry) while signed
  ones must still verify; ``1`` WITHOUT a key is a ConfigError (a pod whose key mount went missing
  must not silently stop checking).

A key must have at least 16 bytes. It never appears in logs, errors, reprs or manifests; a manifest
carries only the key id (8 hex digits of a domain-separated sha256 of the key) and the HMAC.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from tideline.errors import ConfigError

ALGORITHM: Final = "hmac-sha256"
KEY_ENV: Final = "TIDELINE_SIGNING_KEY"
KEY_FILE_ENV: Final = "TIDELINE_SIGNING_KEY_FILE"
REQUIRE_ENV: Final = "TIDELINE_REQUIRE_SIGNED"
MIN_KEY_BYTES: Final = 16
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def canonical_bytes(manifest: dict[str, Any]) -> bytes:
    """The bytes a signature covers: every manifest field except ``signature``, as sorted compact JSON.

    Computed from the manifest's JSON form (what is stored), so values JSON cannot carry exactly
    (NaN written as null, tuples as lists) sign and verify the same way.
    """
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def key_id_of(key: bytes) -> str:
    """Public identifier of a key: 8 hex digits of sha256("tideline-signing-key-id:" + key)."""
    return hashlib.sha256(b"tideline-signing-key-id:" + key).hexdigest()[:8]


@dataclass(frozen=True)
class Signing:
    """A signing key (or none) and whether unsigned versions are refused."""

    key: bytes | None = field(default=None, repr=False)
    require: bool = False
    source: str = "none"  # where the key came from, for messages (never the key)

    def __post_init__(self) -> None:
        if self.key is not None and len(self.key) < MIN_KEY_BYTES:
            raise ConfigError(
                f"the signing key from {self.source} is too short ({len(self.key)} bytes)",
                hint=f"use at least {MIN_KEY_BYTES} random bytes, e.g. `openssl rand -hex 32`",
            )
        if self.require and self.key is None:
            raise ConfigError(
                f"{REQUIRE_ENV}=1 but no signing key is configured",
                hint=f"set {KEY_FILE_ENV} (a mounted Secret) or {KEY_ENV}",
            )

    def __repr__(self) -> str:
        kid = self.key_id or "-"
        return f"Signing(key_id={kid}, require={self.require}, source={self.source!r})"

    @classmethod
    def off(cls) -> Signing:
        """No key: nothing is signed and every version is accepted."""
        return cls()

    @classmethod
    def with_key(cls, key: bytes | str, *, require: bool = True, source: str = "argument") -> Signing:
        """Sign and verify with ``key`` (surrounding whitespace stripped); ``require`` refuses unsigned versions.

        Raises ``ConfigError`` for a key shorter than ``MIN_KEY_BYTES``.
        """
        raw = key.encode() if isinstance(key, str) else bytes(key)
        return cls(key=raw.strip(), require=require, source=source)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Signing:
        """Read ``TIDELINE_SIGNING_KEY_FILE`` / ``TIDELINE_SIGNING_KEY`` / ``TIDELINE_REQUIRE_SIGNED``."""
        env = dict(os.environ) if env is None else env
        path, inline = env.get(KEY_FILE_ENV, "").strip(), env.get(KEY_ENV, "")
        if path and inline:
            raise ConfigError(f"both {KEY_FILE_ENV} and {KEY_ENV} are set", hint="set only one of them")
        key: bytes | None = None
        source = "none"
        if path:
            source = KEY_FILE_ENV
            try:
                key = Path(path).read_bytes().strip()
            except OSError as e:
                raise ConfigError(
                    f"cannot read the signing key file named by {KEY_FILE_ENV}: {e.strerror or type(e).__name__}",
                    hint="mount the signing Secret or unset the variable",
                ) from None
            if not key:
                raise ConfigError(f"the signing key file named by {KEY_FILE_ENV} is empty")
        elif inline.strip():
            source = KEY_ENV
            key = inline.strip().encode()
        raw_req = env.get(REQUIRE_ENV, "").strip().lower()
        if raw_req in _TRUE:
            require = True
        elif raw_req in _FALSE:
            require = False
        elif raw_req == "":
            require = key is not None
        else:
            raise ConfigError(f"{REQUIRE_ENV} must be 1 or 0, got {raw_req!r}")
        return cls(key=key, require=require, source=source)

    @property
    def enabled(self) -> bool:
        """True when a key is configured (manifests are signed and signatures checked)."""
        return self.key is not None

    @property
    def key_id(self) -> str | None:
        """The key's public identifier (``key_id_of``), None without a key; the key itself is never shown."""
        return key_id_of(self.key) if self.key is not None else None

    def sign(self, manifest: dict[str, Any]) -> dict[str, str]:
        """The ``signature`` field for a manifest (its JSON form, any existing signature ignored)."""
        if self.key is None:
            raise ConfigError("no signing key configured")
        mac = hmac.new(self.key, canonical_bytes(manifest), hashlib.sha256).hexdigest()
        return {"algorithm": ALGORITHM, "key_id": key_id_of(self.key), "value": mac}

    def problem(self, version: str, manifest: dict[str, Any]) -> str | None:
        """Why ``manifest`` must be refused under this policy, or None when it may be trusted.

        Without a key nothing can be checked: every version is accepted (a present signature is not
        and cannot be verified). With a key: a signature must verify; a missing one is refused when
        ``require`` is set.
        """
        if self.key is None:
            return None
        sig = manifest.get("signature")
        if sig is None:
            return None if not self.require else f"{version} is not signed: refusing it"
        if not isinstance(sig, dict) or not all(isinstance(sig.get(k), str) for k in ("algorithm", "key_id", "value")):
            return f"{version} has a malformed signature: refusing it"
        if sig["algorithm"] != ALGORITHM:
            return f"{version} is signed with unsupported algorithm {sig['algorithm'][:32]!r}: refusing it"
        mine = key_id_of(self.key)
        if not hmac.compare_digest(sig["key_id"].encode(), mine.encode()):
            return f"{version} is signed with key {sig['key_id'][:16]!r}, not the configured key {mine}: refusing it"
        try:
            body = canonical_bytes(manifest)
        except ValueError:
            return f"{version}'s manifest cannot be put in canonical form: refusing it"
        expected = hmac.new(self.key, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(sig["value"].encode(), expected.encode()):
            return f"{version} signature does not match: refusing it"
        return None
