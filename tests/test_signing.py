"""Optional HMAC signing of registry versions: sign on register, verify on every load that trusts a
manifest, refuse tampered/unsigned/foreign-key versions, key from a file or the environment, never leaked."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest

from tideline.errors import ConfigError, IntegrityError, VersionNotFound
from tideline.registry import Registry, open_registry
from tideline.registry.signing import KEY_ENV, KEY_FILE_ENV, REQUIRE_ENV, Signing, canonical_bytes, key_id_of

KEY = "k3y-Ω-0123456789abcdef-not-in-any-output"
OTHER_KEY = "another-key-0123456789abcdef"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in (KEY_ENV, KEY_FILE_ENV, REQUIRE_ENV):
        monkeypatch.delenv(k, raising=False)


def _artifacts(root: Path, tag: str) -> Path:
    d = root / f"art-{tag}"
    (d / "sub").mkdir(parents=True, exist_ok=True)
    (d / "model.json").write_text(json.dumps({"tag": tag}))
    (d / "sub" / "weights.bin").write_bytes(tag.encode() * 100)
    return d


META = {"family": "sklearn", "params": {"alpha": 0.5}, "metrics": {"sharpe": 1.2, "nan": float("nan")}}


def _open(root: Path, key: str | None, *, require: bool | None = None) -> Registry:
    if key is None:
        return open_registry(root.as_uri(), signing=Signing.off())
    return open_registry(root.as_uri(), signing=Signing.with_key(key, require=True if require is None else require))


def _manifest(reg: Registry, v: str) -> dict[str, Any]:
    return json.loads(reg.store.get(f"versions/{v}.json")[0])


def _write_manifest(reg: Registry, v: str, m: dict[str, Any]) -> None:
    reg.store.put(f"versions/{v}.json", json.dumps(m, indent=1).encode())


def test_register_signs_and_a_fresh_registry_verifies(tmp_path: Path) -> None:
    reg = _open(tmp_path / "reg", KEY)
    mv = reg.register(_artifacts(tmp_path, "a"), META)
    raw = _manifest(reg, mv.version)
    sig = raw["signature"]
    assert sig["algorithm"] == "hmac-sha256" and sig["key_id"] == key_id_of(KEY.encode()) and len(sig["value"]) == 64
    assert Signing.with_key(KEY).problem(mv.version, raw) is None
    fresh = _open(tmp_path / "reg", KEY)  # no cache: reads and verifies the stored bytes
    assert fresh.get("v1").signature is not None and fresh.get("v1").params == {"alpha": 0.5}
    out = fresh.fetch("v1", tmp_path / "out")
    assert (out / "sub" / "weights.bin").read_bytes() == b"a" * 100
    assert [m.version for m in fresh.list_versions()] == ["v1"]
    fresh.promote("v1", reason="signed")
    assert fresh.get("production").version == "v1"


def test_signature_covers_every_field_but_itself() -> None:
    s = Signing.with_key(KEY)
    m = {"version": "v1", "params": {"a": 1}, "artifacts": {"x": {"sha256": "00", "size": 1}}}
    m["signature"] = s.sign(m)
    assert s.problem("v1", m) is None
    assert canonical_bytes(m) == canonical_bytes({k: v for k, v in m.items() if k != "signature"})
    for path, value in ((("params", "a"), 2), (("artifacts", "x", "sha256"), "11"), (("version",), "v2")):
        t = json.loads(json.dumps(m))
        node = t
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = value
        assert s.problem("v1", t) == "v1 signature does not match: refusing it"
    t = json.loads(json.dumps(m))
    t["new_field"] = 1  # an added field is covered too
    assert s.problem("v1", t) is not None


def _tamper_params(reg: Registry, v: str) -> None:
    m = _manifest(reg, v)
    m["params"]["alpha"] = 99.0
    _write_manifest(reg, v, m)


def _tamper_metrics(reg: Registry, v: str) -> None:
    m = _manifest(reg, v)
    m["metrics"]["sharpe"] = 9.9
    _write_manifest(reg, v, m)


def _tamper_artifact_and_sha(reg: Registry, v: str) -> None:
    """The strongest store-level attack: swap an artifact AND fix its sha256/size in the manifest."""
    import hashlib

    m = _manifest(reg, v)
    evil = b"evil weights"
    reg.store.put(m["artifact_prefix"] + "sub/weights.bin", evil)
    m["artifacts"]["sub/weights.bin"] = {"sha256": hashlib.sha256(evil).hexdigest(), "size": len(evil)}
    _write_manifest(reg, v, m)


def _strip_signature(reg: Registry, v: str) -> None:
    m = _manifest(reg, v)
    del m["signature"]
    _write_manifest(reg, v, m)


def _resign_with_other_key(reg: Registry, v: str) -> None:
    m = _manifest(reg, v)
    m["params"]["alpha"] = 99.0
    m["signature"] = Signing.with_key(OTHER_KEY).sign(m)
    _write_manifest(reg, v, m)


def _forge_key_id(reg: Registry, v: str) -> None:
    m = _manifest(reg, v)
    m["params"]["alpha"] = 99.0
    m["signature"] = {**Signing.with_key(OTHER_KEY).sign(m), "key_id": key_id_of(KEY.encode())}
    _write_manifest(reg, v, m)


def _replay_other_version(reg: Registry, v: str) -> None:
    """Copy v1's authentic signed manifest over v2 (its version field still says v1)."""
    _write_manifest(reg, v, _manifest(reg, "v1"))


TAMPERS: dict[str, tuple[Callable[[Registry, str], None], str]] = {
    "params": (_tamper_params, "v2 signature does not match: refusing it"),
    "metrics": (_tamper_metrics, "v2 signature does not match: refusing it"),
    "artifact+sha256": (_tamper_artifact_and_sha, "v2 signature does not match: refusing it"),
    "stripped": (_strip_signature, "v2 is not signed: refusing it"),
    "other key": (_resign_with_other_key, "not the configured key"),
    "forged key id": (_forge_key_id, "v2 signature does not match: refusing it"),
    "replayed manifest": (_replay_other_version, "describes 'v1': refusing it"),
}


@pytest.mark.parametrize("kind", list(TAMPERS))
def test_tampered_version_is_refused_on_every_trusting_path(tmp_path: Path, kind: str) -> None:
    writer = _open(tmp_path / "reg", KEY)
    writer.register(_artifacts(tmp_path, "a"), META)
    writer.register(_artifacts(tmp_path, "b"), META)
    writer.promote("v1", reason="baseline")
    tamper, message = TAMPERS[kind]
    tamper(writer, "v2")
    reg = _open(tmp_path / "reg", KEY)
    for call in (lambda: reg.get("v2"), lambda: reg.fetch("v2", tmp_path / "out"), reg.list_versions,
                 lambda: reg.promote("v2", reason="x"), lambda: reg.set_alias("candidate", "v2"),
                 lambda: reg.status("v2")):
        with pytest.raises(IntegrityError, match=message) as ei:
            call()
        assert "\n" not in str(ei.value)
    assert not (tmp_path / "out").exists()
    # the refusal is cached with the manifest: asking again is refused again, never accepted
    with pytest.raises(IntegrityError):
        reg.get("v2")
    assert reg.aliases()["production"] == "v1" and reg.get("production").version == "v1"
    # a tampered version can still be deleted; a forged artifact_prefix cannot aim the delete elsewhere
    reg.delete("v2", reason="tampered")
    assert [m.version for m in reg.list_versions()] == ["v1"]
    assert reg.fetch("v1", tmp_path / "v1") .joinpath("model.json").exists()


def test_a_cached_manifest_cannot_skip_verification(tmp_path: Path) -> None:
    """A registry caches the verdict from the stored bytes under its own fixed policy."""
    writer = _open(tmp_path / "reg", KEY)
    writer.register(_artifacts(tmp_path, "a"), META)
    _tamper_params(writer, "v1")
    # the writer's own cache holds what it signed itself (authentic), never the tampered bytes
    assert writer.get("v1").params == {"alpha": 0.5}
    writer.fetch("v1", tmp_path / "out")  # the artifacts match the authentic sha256
    reader = _open(tmp_path / "reg", None)
    assert reader.get("v1").params == {"alpha": 99.0}  # no key: nothing can be checked (documented)
    with pytest.raises(AttributeError):
        reader.signing = Signing.with_key(KEY)  # type: ignore[misc]  # the policy is fixed per instance
    with pytest.raises(IntegrityError):
        _open(tmp_path / "reg", KEY).get("v1")


def test_wrong_key_refuses_every_version(tmp_path: Path) -> None:
    _open(tmp_path / "reg", KEY).register(_artifacts(tmp_path, "a"), META)
    with pytest.raises(IntegrityError, match=r"v1 is signed with key '[0-9a-f]{8}', not the configured key"):
        _open(tmp_path / "reg", OTHER_KEY).fetch("v1", tmp_path / "out")


def test_unsigned_versions_with_a_key(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _open(tmp_path / "reg", None).register(_artifacts(tmp_path, "a"), META)  # v1 unsigned
    _open(tmp_path / "reg", KEY).register(_artifacts(tmp_path, "b"), META)  # v2 signed
    strict = _open(tmp_path / "reg", KEY)
    with pytest.raises(IntegrityError, match="^v1 is not signed: refusing it$"):
        strict.fetch("v1", tmp_path / "o1")
    strict.fetch("v2", tmp_path / "o2")
    # migration mode: a key, TIDELINE_REQUIRE_SIGNED=0 -> unsigned loads (with a warning), signed must verify
    migrating = _open(tmp_path / "reg", KEY, require=False)
    with caplog.at_level(logging.WARNING, logger="tideline.registry.core"):
        migrating.fetch("v1", tmp_path / "o3")
    assert "v1 is not signed" in caplog.text
    _tamper_params(migrating, "v2")
    with pytest.raises(IntegrityError, match="v2 signature does not match"):
        _open(tmp_path / "reg", KEY, require=False).get("v2")


def test_no_key_loads_signed_and_unsigned(tmp_path: Path) -> None:
    _open(tmp_path / "reg", None).register(_artifacts(tmp_path, "a"), META)
    _open(tmp_path / "reg", KEY).register(_artifacts(tmp_path, "b"), META)
    reg = _open(tmp_path / "reg", None)
    assert reg.get("v1").signature is None and reg.get("v2").signature is not None
    reg.fetch("v1", tmp_path / "o1")
    reg.fetch("v2", tmp_path / "o2")
    # ...but artifact bytes are still checked against the manifest's sha256 without a key
    m = _manifest(reg, "v2")
    reg.store.put(m["artifact_prefix"] + "model.json", b"{}")
    with pytest.raises(IntegrityError, match="sha256"):
        _open(tmp_path / "reg", None).fetch("v2", tmp_path / "o3")


def test_policy_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not Signing.from_env({}).enabled and not Signing.from_env({}).require
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")  # `kubectl create secret --from-file` keeps a trailing newline
    s = Signing.from_env({KEY_FILE_ENV: str(key_file)})
    assert s.key == KEY.encode() and s.require and s.source == KEY_FILE_ENV
    assert Signing.from_env({KEY_ENV: KEY}).key_id == s.key_id
    assert not Signing.from_env({KEY_ENV: KEY, REQUIRE_ENV: "0"}).require
    bad_envs = {
        "both set": {KEY_ENV: KEY, KEY_FILE_ENV: str(key_file)},
        "missing file": {KEY_FILE_ENV: str(tmp_path / "nope")},
        "empty file": {KEY_FILE_ENV: str(tmp_path / "empty")},
        "too short": {KEY_ENV: "short"},
        "required without key": {REQUIRE_ENV: "1"},
        "bad flag": {KEY_ENV: KEY, REQUIRE_ENV: "maybe"},
    }
    (tmp_path / "empty").write_text("\n")
    for name, env in bad_envs.items():
        with pytest.raises(ConfigError) as ei:
            Signing.from_env(env)
        assert KEY not in str(ei.value) and "\n" not in str(ei.value), name
    # open_registry reads the environment: the key file signs, a different key refuses
    monkeypatch.setenv(KEY_FILE_ENV, str(key_file))
    reg = open_registry((tmp_path / "reg").as_uri())
    assert reg.signing.key_id == key_id_of(KEY.encode())
    reg.register(_artifacts(tmp_path, "a"), META)
    monkeypatch.setenv(KEY_FILE_ENV, str(tmp_path / "other"))
    (tmp_path / "other").write_text(OTHER_KEY)
    with pytest.raises(IntegrityError):
        open_registry((tmp_path / "reg").as_uri()).get("v1")
    monkeypatch.delenv(KEY_FILE_ENV)
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(ConfigError, match="no signing key"):
        open_registry((tmp_path / "reg").as_uri())


def test_the_key_never_leaks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    errors: list[str] = []
    with caplog.at_level(logging.DEBUG):
        reg = _open(tmp_path / "reg", KEY)
        reg.register(_artifacts(tmp_path, "a"), META)
        reg.register(_artifacts(tmp_path, "b"), META)
        reg.promote("v1", reason="x")
        reg.fetch("v1", tmp_path / "o1")
        for tamper, _ in TAMPERS.values():
            reg.register(_artifacts(tmp_path, "c"), META)
            v = reg.list_versions()[-1].version
            tamper(reg, v)
            try:
                _open(tmp_path / "reg", KEY).fetch(v, tmp_path / f"o-{v}")
            except IntegrityError as e:
                errors.append(str(e))
            reg.delete(v)
    assert len(errors) == len(TAMPERS)
    for text in (caplog.text, "\n".join(errors), repr(reg.signing), repr(reg), str(reg.signing)):
        assert KEY not in text and KEY.encode().hex() not in text
    for p in (tmp_path / "reg").rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            assert KEY.encode() not in data and KEY.encode().hex().encode() not in data, p


def test_signed_registry_on_s3(s3_server: str, tmp_path: Path) -> None:
    import uuid

    bucket = f"sig-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    uri = f"s3://{bucket}/reg"
    writer = open_registry(uri, endpoint_url=s3_server, signing=Signing.with_key(KEY))
    writer.register(_artifacts(tmp_path, "a"), META)
    writer.register(_artifacts(tmp_path, "b"), META)
    _tamper_artifact_and_sha(writer, "v2")
    reader = open_registry(uri, endpoint_url=s3_server, signing=Signing.with_key(KEY))
    assert reader.fetch("v1", tmp_path / "o1").joinpath("model.json").exists()
    with pytest.raises(IntegrityError, match="v2 signature does not match"):
        reader.fetch("v2", tmp_path / "o2")


def test_manifest_shape_is_checked_without_a_key(tmp_path: Path) -> None:
    """Traversal names planted in a manifest are refused before any file is written (signing or not)."""
    reg = _open(tmp_path / "reg", None)
    reg.register(_artifacts(tmp_path, "a"), META)
    bad_manifests = []
    for field, value in (("artifact_prefix", "../../outside/"), ("artifact_prefix", "artifacts/../state/"),
                         ("artifacts", {"../../../escape.txt": {"sha256": "0" * 64, "size": 1}}),
                         ("artifacts", {"/etc/passwd": {"sha256": "0" * 64, "size": 1}}),
                         ("artifacts", {"a/./b": {"sha256": "0" * 64, "size": 1}})):
        m = _manifest(reg, "v1")
        m[field] = value
        bad_manifests.append(m)
    for m in bad_manifests:
        _write_manifest(reg, "v1", m)
        with pytest.raises(IntegrityError, match="unsafe artifact"):
            _open(tmp_path / "reg", None).fetch("v1", tmp_path / "x" / "y" / "out")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "x").exists()


def test_the_predictor_refuses_a_tampered_signed_version(tmp_path: Path) -> None:
    from conftest import FAST_PARAMS
    from tideline.config import FeatureConfig
    from tideline.data import synthetic_market
    from tideline.features import build_dataset
    from tideline.models import make_model
    from tideline.serving.predictor import load_slot

    ds = build_dataset(synthetic_market(n_symbols=2, n_bars=500, seed=1), FeatureConfig())
    mdl = make_model("sklearn", seed=0, params=FAST_PARAMS["sklearn"], n_threads=1).fit(ds.X, ds.y, ds.spec)
    art = tmp_path / "art"
    mdl.save(art)
    writer = _open(tmp_path / "reg", KEY)
    for _ in range(2):
        writer.register(art, {"family": "sklearn", "features": mdl.columns})
    writer.promote("v1", reason="x")
    m = _manifest(writer, "v2")
    m["features"] = list(reversed(m["features"]))
    _write_manifest(writer, "v2", m)
    reg = _open(tmp_path / "reg", KEY)
    assert load_slot(reg, "production", "active").version == "v1"
    with pytest.raises(IntegrityError, match="v2 signature does not match: refusing it"):
        load_slot(reg, "v2", "canary")


# ---- finding the bad versions: check_versions, `models list`, `models verify` -------------------------------
def _flip_artifact_byte(reg: Registry, v: str) -> None:
    m = _manifest(reg, v)
    key = m["artifact_prefix"] + "model.json"
    data = bytearray(reg.store.get(key)[0])
    data[3] ^= 1
    reg.store.put(key, bytes(data))


def _four_versions(tmp_path: Path) -> Registry:
    """v1 good (production), v2 manifest tampered, v3 an artifact byte flipped, v4 manifest unreadable."""
    reg = _open(tmp_path / "reg", KEY)
    for tag in "abcd":
        reg.register(_artifacts(tmp_path, tag), META)
    reg.promote("v1", reason="baseline")
    _tamper_metrics(reg, "v2")
    _flip_artifact_byte(reg, "v3")
    reg.store.put("versions/v4.json", b'{"version": "v4", "family": ')
    return reg


def test_check_versions_names_each_bad_version_without_raising(tmp_path: Path) -> None:
    _four_versions(tmp_path)
    reg = _open(tmp_path / "reg", KEY)
    with pytest.raises(IntegrityError):  # the trusting listing still refuses as a whole
        reg.list_versions()
    quick = {c.version: c for c in reg.check_versions()}
    assert list(quick) == ["v1", "v2", "v3", "v4"]
    assert quick["v1"].problem is None and quick["v1"].signature == "valid" and not quick["v1"].artifacts_checked
    assert "signature does not match" in (quick["v2"].problem or "") and quick["v2"].signature == "refused"
    assert quick["v3"].problem is None  # its manifest is authentic; only the artifacts tell
    assert quick["v4"].manifest is None and "manifest of v4 is corrupt" in (quick["v4"].problem or "")
    full = {c.version: c for c in reg.check_versions(artifacts=True)}
    assert full["v1"].problem is None and full["v1"].artifacts_checked
    assert "'model.json' of v3 failed its sha256 check" in (full["v3"].problem or "")
    assert [c.version for c in reg.check_versions(["production", "v3", "v1"], artifacts=True)] == ["v1", "v3"]
    with pytest.raises(VersionNotFound):
        reg.check_versions(["v9"])
    unkeyed = {c.version: c for c in _open(tmp_path / "reg", None).check_versions()}
    assert unkeyed["v2"].problem is None and unkeyed["v2"].signature == "not checked"
    assert not list((tmp_path / "reg").rglob(".tideline-verify-*"))  # nothing kept


def test_an_unreadable_manifest_can_be_deleted_and_cleanup_goes_on(tmp_path: Path) -> None:
    reg = _four_versions(tmp_path)
    before = set(reg.store.list("artifacts/"))
    reg = _open(tmp_path / "reg", KEY)
    assert reg.cleanup(keep_last=10, orphan_grace_s=0) == []  # v4's artifacts are owned by an unreadable manifest
    assert set(reg.store.list("artifacts/")) == before
    reg.delete("v4", reason="unreadable")
    assert [c.version for c in reg.check_versions()] == ["v1", "v2", "v3"]
    removed = reg.cleanup(keep_last=10, orphan_grace_s=0)  # now v4's artifacts are orphans
    assert len(removed) == 1 and removed[0].startswith("artifacts/")
    assert reg.fetch("v1", tmp_path / "v1").joinpath("model.json").exists()


def test_models_list_and_verify_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from tideline.cli import main

    _four_versions(tmp_path)
    base = ["--registry", (tmp_path / "reg").as_uri(), "models"]
    monkeypatch.setenv(KEY_ENV, KEY)
    assert main([*base, "list", "--json"]) == 8
    out, err = capsys.readouterr()
    rows = {r["version"]: r for r in json.loads(out)}
    assert rows["v1"]["refused"] is None and rows["v1"]["aliases"] == ["production"]
    assert rows["v3"]["refused"] is None and "signature" in rows["v2"]["refused"]
    assert rows["v4"]["family"] is None and "corrupt" in rows["v4"]["refused"]
    assert err.startswith("error: 2 of 4 version(s) would be refused: v2 signature") and "Traceback" not in err

    assert main([*base, "verify"]) == 8
    out, err = capsys.readouterr()
    assert "REFUSED" in out and "3 of 4 version(s) failed verification" in err and "'model.json' of v3" in err
    assert main([*base, "verify", "production", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == [{"version": "v1", "aliases": ["production"], "ok": True, "problem": None,
                                "signature": "valid", "artifacts": 2}]
    assert err == ""
    assert main([*base, "verify", "v9"]) == 6
    assert "'v9' not found" in capsys.readouterr().err

    monkeypatch.delenv(KEY_ENV)  # no key: the tampered manifest cannot be told; the flipped byte still can
    assert main([*base, "verify", "v2", "v3"]) == 8
    out, err = capsys.readouterr()
    assert "signatures were not checked" in err and "1 of 2 version(s) failed verification" in err
    assert main([*base, "delete", "v4"]) == 0
    capsys.readouterr()
    assert main([*base, "list"]) == 0
    assert "REFUSED" not in capsys.readouterr().out

    # production's own manifest unreadable: listed REFUSED with its alias, and nothing moved
    (tmp_path / "reg" / "versions" / "v1.json").write_text("{")
    assert main([*base, "list", "--json"]) == 8
    row = next(r for r in json.loads(capsys.readouterr().out) if r["version"] == "v1")
    assert row["aliases"] == ["production"] and "corrupt" in row["refused"]



def test_the_tampering_drill_quick(tmp_path: Path) -> None:
    """The reliability run's tampering scenario in its reduced form: every tampered load refused, every
    authentic one accepted, and the `models verify` audit flags exactly the tampered versions."""
    from reliability.security import tampered_versions

    row = tampered_versions(quick=True, work=tmp_path)
    assert row["ok"] and row["lost"] == 0, row
    assert "ACCEPTED" not in row["result"] and "flagged 20/20 tampered and 0 of 2 authentic" in row["result"]
