"""Registry under concurrency and SIGKILL, on a local directory and on a real S3 API (moto on loopback).

Two drills per backend:

* **N writer processes x M versions while aliases move.** N spawned processes each register M versions
  (a small artifact directory: a JSON file, a 16 KiB random blob, a file in a subdirectory) and after each
  one move an alias: ``promote`` with ``expected=`` (compare-and-swap on production), ``set_alias`` of
  candidate or shadow with ``expected=``, ``rollback`` or ``promote("candidate")``. Meanwhile a watcher
  thread in this process keeps sampling ``aliases()``: every aliased version (and one random listed
  version) must have its manifest and fetch with a valid sha256. Afterwards: every version a writer got
  is listed exactly once with the writer's metadata and checksums, ids are ``v1..vN*M`` without gaps,
  every version fetches, the history has one register event per version, every successful CAS move is
  in the history exactly once with ``from_version == expected`` and no refused one wrote anything,
  replaying the history gives the current aliases and statuses (only production is ACTIVE); then K
  rounds of a deliberate race: all writers pass a barrier and call ``set_alias("candidate", <own
  version>, expected=<the same current value>)`` at once: exactly one winner per round.
* **writer SIGKILLed mid-upload / anywhere in register.** A child process registers a version with a
  large artifact (multipart on S3) and is SIGKILLed (1) at a random moment after its upload is seen to
  start (a new ``artifacts/<uuid>/`` directory, or a new multipart upload) and (2) at a random moment
  of the whole ``register`` call (half of them near its end, to hit the window between the manifest
  commit and the status update). After each kill: either no new version is visible (``list_versions``,
  ``get``) or it is the next id, complete, fetching with the right sha256; production and the aliases
  did not move; ``cleanup(orphan_grace_s=0)`` removes exactly the unreferenced artifact prefixes and no
  version; the next ``register`` succeeds and fetches.

``lost`` counts versions missing, duplicated, unreadable or visible half-written, dangling or partial
alias samples, lost or phantom state updates, races without exactly one winner, wrong production
changes. moto (5.x) checks a PutObject precondition and then stores the object in two steps without a
lock, while real S3 evaluates If-Match / If-None-Match atomically; so the moto server runs in its own
process with a lock around PutObject (``--raw-moto`` runs it as shipped; that window is narrow and has
not been seen to lose an update in these drills, but a lost state update there would be moto's, not
the registry's).

Run alone from ``bench/``: ``python -m reliability.registry [--quick]`` (JSON lines).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

AREA = "Faults"
BUCKET = "tideline-registry-stress"
_AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1"}
_BARRIER_S = 600.0

# moto's server in its own process. With TIDELINE_MOTO_LOCK=1 PutObject (the conditional writes) runs
# under one lock, as real S3 evaluates If-Match / If-None-Match atomically.
_MOTO_MAIN = r"""
import os, sys, threading
from moto.server import ThreadedMotoServer
if os.environ.get("TIDELINE_MOTO_LOCK") == "1":
    from moto.s3.responses import S3Response
    _lock = threading.Lock()
    _orig = S3Response.put_object
    def put_object(self):
        with _lock:
            return _orig(self)
    S3Response.put_object = put_object
server = ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]), verbose=False)
server.start()
print("ready", flush=True)
sys.stdin.read()
server.stop()
"""


# ---- infrastructure -------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _aws_env() -> Iterator[None]:
    old = {k: os.environ.get(k) for k in _AWS_ENV}
    os.environ.update(_AWS_ENV)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _moto(lock: bool = True) -> Iterator[str]:
    """moto's S3 server in a child process on loopback, with the bucket; yields the endpoint."""
    import boto3

    port = _free_port()
    env = dict(os.environ, TIDELINE_MOTO_LOCK="1" if lock else "0")
    proc = subprocess.Popen([sys.executable, "-c", _MOTO_MAIN, str(port)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("moto server did not start")
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield endpoint
    finally:
        with contextlib.suppress(Exception):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _new_registry(backend: str, endpoint: str | None, work: Path, name: str) -> dict[str, Any]:
    """A fresh, empty registry: its URI, endpoint and where its bytes live."""
    if backend == "local":
        root = work / f"{name}-registry"
        return {"uri": f"file://{root}", "endpoint": None, "root": str(root), "bucket": None, "prefix": None}
    prefix = f"{name}-{uuid.uuid4().hex[:8]}"
    return {"uri": f"s3://{BUCKET}/{prefix}", "endpoint": endpoint, "root": None, "bucket": BUCKET,
            "prefix": prefix}


def _quiet() -> None:
    import logging

    logging.getLogger("tideline").setLevel(logging.ERROR)  # rollbacks log WARNINGs by design


def _open(cfg: dict[str, Any]) -> Any:
    from tideline.registry import Registry, open_store
    from tideline.registry.signing import Signing

    return Registry(open_store(cfg["uri"], endpoint_url=cfg["endpoint"]), signing=Signing.off())


def _s3_client(cfg: dict[str, Any]) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=cfg["endpoint"])


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _small_artifacts(d: Path, tag: str, rng: random.Random) -> dict[str, str]:
    """A small model directory; returns {relative name: sha256}."""
    (d / "sub").mkdir(parents=True, exist_ok=True)
    (d / "model.json").write_text(json.dumps({"tag": tag, "trees": rng.randrange(1000)}))
    (d / "weights.bin").write_bytes(rng.randbytes(16 * 1024))
    (d / "sub" / "spec.txt").write_text(f"spec {tag}\n")
    return {p.relative_to(d).as_posix(): _sha(p) for p in sorted(d.rglob("*")) if p.is_file()}


def _row(scenario: str, times: int, unit: str, result: str, lost: int, ok: bool, t0: float) -> dict[str, Any]:
    return {"area": AREA, "scenario": scenario, "times": int(times), "unit": unit, "result": result,
            "lost": int(lost), "ok": bool(ok and lost == 0), "seconds": round(time.monotonic() - t0, 1)}


def _fetch_ok(reg: Any, version: str, tmp: Path, expect: dict[str, str] | None = None) -> str | None:
    """None when ``version`` fetches with valid sha256 (and the expected checksums); else why not."""
    from tideline.errors import TidelineError

    dest = tmp / f"f-{uuid.uuid4().hex}"
    try:
        reg.fetch(version, dest)
        if expect is not None:
            got = {p.relative_to(dest).as_posix(): _sha(p) for p in dest.rglob("*") if p.is_file()}
            if got != expect:
                return f"{version}: fetched files differ from what its writer uploaded"
        return None
    except TidelineError as e:
        return f"{version}: {type(e).__name__}: {e}"
    finally:
        shutil.rmtree(dest, ignore_errors=True)


# ---- drill 1: concurrent writers ------------------------------------------------------------------------
def _move_alias(reg: Any, i: int, j: int, v: str, rng: random.Random) -> dict[str, Any]:
    """One alias move after registering ``v``; returns what was tried and how it ended."""
    from tideline.errors import AliasConflict, PolicyError, VersionNotFound

    kind = ("promote", "candidate", "shadow", "other")[j % 4]
    if kind == "other":
        kind = "rollback" if rng.random() < 0.5 else "promote-candidate"
    reason = f"w{i}:{j}:{kind}"
    actor = f"writer{i}"
    op: dict[str, Any] = {"reason": reason, "kind": kind, "version": v}
    aliases = reg.aliases()
    try:
        if kind == "promote":
            op["expected"] = aliases.get("production")
            ev = reg.promote(v, reason=reason, actor=actor, expected=op["expected"])
        elif kind in ("candidate", "shadow"):
            op["expected"] = aliases.get(kind)
            ev = reg.set_alias(kind, v, expected=op["expected"], reason=reason, actor=actor)
        elif kind == "promote-candidate":
            op["expected"] = aliases.get("production")
            ev = reg.promote("candidate", reason=reason, actor=actor, expected=op["expected"])
        else:
            ev = reg.rollback(reason=reason, actor=actor)
        op["result"] = "ok"
        op["event"] = {"version": ev.version, "from_version": ev.from_version}
    except AliasConflict:
        op["result"] = "conflict"
    except (PolicyError, VersionNotFound):  # nothing to roll back to / candidate unset: refused, fine
        op["result"] = "refused"
    return op


def _writer(cfg: dict[str, Any], barrier: Any) -> None:
    """One writer process of drill 1; writes its report to cfg['out']."""
    from tideline.errors import AliasConflict

    _quiet()
    i, m, rounds = cfg["i"], cfg["m"], cfg["rounds"]
    rng = random.Random(cfg["seed"])
    out: dict[str, Any] = {"writer": i, "versions": {}, "ops": [], "errors": [], "race": []}
    try:
        reg = _open(cfg)
        art = Path(cfg["work"]) / f"w{i}"
        barrier.wait(_BARRIER_S)
        out["t_start"] = time.time()
        for j in range(m):
            try:
                d = art / str(j)
                shas = _small_artifacts(d, f"w{i}-{j}", rng)
                mv = reg.register(d, {"family": "stress", "extra": {"writer": i, "j": j}})
                out["versions"][mv.version] = {"j": j, "sha": shas}
                shutil.rmtree(d, ignore_errors=True)
                out["ops"].append(_move_alias(reg, i, j, mv.version, rng))
            except Exception as e:  # noqa: BLE001 - reported and checked by the parent
                out["errors"].append(f"{type(e).__name__}: {e}")
        out["t_main"] = time.time()
        mine = list(out["versions"])
        for k in range(rounds):
            barrier.wait(_BARRIER_S)
            current = reg.aliases().get("candidate")
            pick = [v for v in mine[k % max(1, len(mine)):] + mine if v != current]
            barrier.wait(_BARRIER_S)  # everybody has read the same `current`
            entry: dict[str, Any] = {"round": k, "expected": current, "version": pick[0] if pick else None}
            try:
                reg.set_alias("candidate", entry["version"], expected=current, reason=f"race{k}:w{i}",
                              actor=f"writer{i}")
                entry["result"] = "won"
            except AliasConflict:
                entry["result"] = "conflict"
            except Exception as e:  # noqa: BLE001
                entry["result"] = f"{type(e).__name__}: {e}"
            out["race"].append(entry)
            barrier.wait(_BARRIER_S)
    except Exception as e:  # noqa: BLE001 - broken barrier, registry unreachable: reported
        out["errors"].append(f"{type(e).__name__}: {e}")
        barrier.abort()  # the others stop waiting for this writer
    finally:
        tmp = Path(cfg["out"] + ".tmp")
        tmp.write_text(json.dumps(out))
        os.replace(tmp, cfg["out"])


class _Watcher(threading.Thread):
    """Samples ``aliases()`` until stopped: every aliased version must have its manifest, and fetches with
    valid sha256 the first time it is seen (versions are immutable; each later sample re-checks the
    manifest). Every 10th sample also fetches a random version of ``list_versions()``."""

    def __init__(self, cfg: dict[str, Any], tmp: Path) -> None:
        super().__init__(daemon=True)
        self.cfg, self.tmp = cfg, tmp
        self.stop_event = threading.Event()
        self.samples = self.checks = self.fetches = self.dangling = self.partial = 0
        self.problems: list[str] = []
        self.error: str | None = None

    def _fetch(self, reg: Any, v: str) -> None:
        self.fetches += 1
        why = _fetch_ok(reg, v, self.tmp)
        if why:
            self.partial += 1
            self.problems.append(why)

    def run(self) -> None:
        try:
            reg = _open(self.cfg)
            rng = random.Random()
            verified: set[str] = set()
            while not self.stop_event.is_set():
                targets = set(reg.aliases().values())
                if not targets:  # writers still starting
                    self.stop_event.wait(0.01)
                    continue
                for v in sorted(targets):
                    self.checks += 1
                    if not reg.store.exists(f"versions/{v}.json"):
                        self.dangling += 1
                        self.problems.append(f"an alias points to {v}, which has no manifest")
                    elif v not in verified:
                        self._fetch(reg, v)
                        verified.add(v)
                if self.samples % 10 == 0:
                    listed = [mv.version for mv in reg.list_versions()]
                    if listed:
                        self._fetch(reg, rng.choice(listed))
                self.samples += 1
        except Exception as e:  # noqa: BLE001
            self.error = f"watcher: {type(e).__name__}: {e}"


def _replay(events: list[Any]) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """Aliases and statuses obtained by replaying the history, and the inconsistencies met on the way."""
    aliases: dict[str, str] = {}
    statuses: dict[str, str] = {}
    bad: list[str] = []
    for n, e in enumerate(events):
        if e.action == "register":
            statuses[e.version] = e.reason
        elif e.action in ("set_alias", "unset_alias"):
            if aliases.get(e.alias) != e.from_version:
                bad.append(f"event {n}: {e.alias} moved from {e.from_version} but was {aliases.get(e.alias)}")
            if e.version is None:
                aliases.pop(e.alias, None)
            else:
                aliases[e.alias] = e.version
        elif e.action == "promote":
            cur = aliases.get("production")
            if cur != e.from_version:
                bad.append(f"event {n}: promote from {e.from_version} but production was {cur}")
            if cur is not None:
                aliases["previous"] = cur
                statuses[cur] = "RETIRED"
            aliases["production"] = e.version
            statuses[e.version] = "ACTIVE"
            for a in ("candidate", "shadow"):
                if aliases.get(a) == e.version:
                    del aliases[a]
        elif e.action == "rollback":
            cur, target = aliases.get("production"), aliases.get("previous")
            if cur != e.from_version or target != e.version:
                bad.append(f"event {n}: rollback {e.from_version}->{e.version} but state was {cur}/{target}")
            aliases["production"] = e.version
            statuses[e.version] = "ACTIVE"
            if cur is not None and cur != e.version:
                statuses[cur] = "RETIRED"
            before = next((p.from_version for p in reversed(events[:n])
                           if p.action == "promote" and p.version == e.version), None)
            if before is None or before in (e.version, cur):
                aliases.pop("previous", None)
            else:
                aliases["previous"] = before
        else:
            bad.append(f"event {n}: unexpected action {e.action}")
    return aliases, statuses, bad


@dataclass
class _Findings:
    """What a drill found wrong: problems (each a line of the row) and how many things were lost."""

    problems: list[str] = field(default_factory=list)
    lost: int = 0

    def add(self, problem: str, lost: int = 1) -> None:
        """A problem that lost ``lost`` things (0: wrong, but nothing lost or corrupted)."""
        self.problems.append(problem)
        self.lost += lost

    def summary(self, result: str) -> str:
        return result + ("; PROBLEMS: " + " | ".join(self.problems[:6]) if self.problems else "")


def _run_writers(cfg: dict[str, Any], n: int, m: int, rounds: int, quick: bool, work: Path,
                 found: _Findings) -> tuple[list[dict[str, Any]], _Watcher]:
    """``n`` writer processes (``_writer``) while a watcher samples the aliases; their reports."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(n)
    outs = [work / f"writer{i}.json" for i in range(n)]
    seed = random.randrange(1 << 30)
    procs = [ctx.Process(target=_writer, daemon=True, args=(
        dict(cfg, i=i, m=m, rounds=rounds, seed=seed + i, work=str(work), out=str(outs[i])), barrier))
        for i in range(n)]
    watch_tmp = work / "watch"
    watch_tmp.mkdir(exist_ok=True)
    watcher = _Watcher(cfg, watch_tmp)
    watcher.start()
    for p in procs:
        p.start()
    deadline = time.monotonic() + (240 if quick else 1200)
    for p in procs:
        p.join(max(1.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(10)
    watcher.stop_event.set()
    watcher.join(60)
    reports = []
    for i, path in enumerate(outs):
        if not path.exists():
            found.add(f"writer {i} died without a report (exit code {procs[i].exitcode})", 0)
            continue
        rep = json.loads(path.read_text())
        reports.append(rep)
        for e in rep["errors"][:3]:
            found.add(f"writer {i}: {e}", 0)
    if watcher.error:
        found.add(watcher.error, 0)
    found.lost += watcher.dangling + watcher.partial
    found.problems += watcher.problems[:3]
    return reports, watcher


def _check_versions(reg: Any, reports: list[dict[str, Any]], expected_total: int, work: Path,
                    found: _Findings) -> tuple[list[str], int, int]:
    """Every version a writer was handed is listed once, carries its writer's metadata and reads back with the
    sha256 it was written with. Returns the listed ids, how many read back and how many were handed out."""
    claimed: dict[str, tuple[int, dict[str, Any]]] = {}
    for rep in reports:
        for v, info in rep["versions"].items():
            if v in claimed:
                found.add(f"{v} was handed to writers {claimed[v][0]} and {rep['writer']}")
            claimed[v] = (rep["writer"], info)
    listed = reg.list_versions()
    ids = [mv.version for mv in listed]
    if len(claimed) != expected_total:
        found.add(f"writers got {len(claimed)} versions, expected {expected_total}", 0)
    missing = sorted(set(claimed) - set(ids))
    extra = sorted(set(ids) - set(claimed))
    if missing or extra:
        found.add(f"listed versions differ: missing {missing[:5]}, unexpected {extra[:5]}", len(missing) + len(extra))
    if len(ids) != len(set(ids)):
        found.add("a version is listed twice", len(ids) - len(set(ids)))
    if ids != [f"v{k}" for k in range(1, len(ids) + 1)]:
        found.add(f"version ids are not v1..v{len(ids)} without gaps", 0)
    fetch_tmp = work / "fetch"
    fetch_tmp.mkdir(exist_ok=True)
    readable = 0
    for mv in listed:
        owner = claimed.get(mv.version)
        if owner is None:
            continue
        w, info = owner
        if mv.extra != {"writer": w, "j": info["j"]}:
            found.add(f"{mv.version} carries {mv.extra}, registered as writer={w} j={info['j']}")
            continue
        why = _fetch_ok(reg, mv.version, fetch_tmp, info["sha"])
        if why:
            found.add(why)
        else:
            readable += 1
    return ids, readable, len(claimed)


def _check_history(reg: Any, reports: list[dict[str, Any]], ids: list[str],
                   found: _Findings) -> tuple[int, int, int, bool]:
    """One register event per version; every alias move recorded exactly as it was answered; the history
    replays to the stored state. Returns (moves, conflicts, refusals, replay clean)."""
    events = reg.history()
    regs = [e.version for e in events if e.action == "register"]
    if sorted(regs) != sorted(ids) or len(regs) != len(set(regs)):
        found.add(f"{len(regs)} register events for {len(ids)} versions",
                  abs(len(set(ids)) - len(set(regs))) + (len(regs) - len(set(regs))))
    by_reason: dict[str, list[Any]] = {}
    for e in events:
        by_reason.setdefault(e.reason, []).append(e)
    moved = conflicts = refused = 0
    for op in (op for rep in reports for op in rep["ops"]):
        got = by_reason.get(op["reason"], [])
        if op["result"] == "ok":
            moved += 1
            if len(got) != 1:
                found.add(f"{op['reason']} succeeded but is in the history {len(got)} times")
            elif "expected" in op and got[0].from_version != op["expected"]:
                found.add(f"{op['reason']}: moved from {got[0].from_version}, expected {op['expected']}")
        else:
            conflicts += op["result"] == "conflict"
            refused += op["result"] == "refused"
            if got:
                found.add(f"{op['reason']} answered {op['result']} but wrote {len(got)} events")
    rep_aliases, rep_statuses, bad = _replay(events)
    found.lost += len(bad)
    found.problems += bad[:3]
    aliases = reg.aliases()
    statuses = {v: s.value for v, s in reg.statuses().items()}
    if rep_aliases != aliases:
        found.add(f"replayed aliases {rep_aliases} != stored {aliases}")
    if {v: rep_statuses.get(v, "CANDIDATE") for v in statuses} != statuses:
        found.add("replayed statuses differ from the stored ones")
    active = [v for v, s in statuses.items() if s == "ACTIVE"]
    if active != ([aliases["production"]] if "production" in aliases else []):
        found.add(f"ACTIVE versions {active}, production {aliases.get('production')}")
    return moved, conflicts, refused, not bad


def _check_races(reg: Any, reports: list[dict[str, Any]], n: int, rounds: int, found: _Findings) -> int:
    """Exactly one winner per CAS race, chained in the history; the number of clean rounds."""
    race_events = [e for e in reg.history() if e.reason.startswith("race")]
    winners_ok = 0
    for k in range(rounds):
        entries = [e for rep in reports for e in rep["race"] if e["round"] == k]
        won = [e for e in entries if e["result"] == "won"]
        others = [e["result"] for e in entries if e["result"] not in ("won", "conflict")]
        recorded = [e for e in race_events if e.reason.startswith(f"race{k}:")]
        if len(entries) != n or others:
            found.add(f"race {k}: {len(entries)} answers, errors {others[:2]}", 0)
        if len(won) == 1 and len(recorded) == 1 and recorded[0].version == won[0]["version"]:
            winners_ok += 1
        else:
            found.add(f"race {k}: {len(won)} winners, {len(recorded)} recorded moves")
    if rounds and race_events and reg.aliases().get("candidate") != race_events[-1].version:
        found.add("candidate is not the last race winner")
    return winners_ok


def _concurrency(backend: str, label: str, endpoint: str | None, quick: bool, work: Path) -> dict[str, Any]:
    n, m, rounds = (4, 5, 3) if quick else (8, 50, 20)
    t0 = time.monotonic()
    cfg = _new_registry(backend, endpoint, work, "writers")
    scenario = (f"registry: {n} writer processes x {m} versions while aliases move, then {rounds} CAS races "
                f"({label})")
    found = _Findings()
    reports, watcher = _run_writers(cfg, n, m, rounds, quick, work, found)
    reg = _open(cfg)
    expected_total = n * m
    ids, readable, handed_out = _check_versions(reg, reports, expected_total, work, found)
    moved, conflicts, refused, replay_ok = _check_history(reg, reports, ids, found)
    winners_ok = _check_races(reg, reports, n, rounds, found)

    starts = [r["t_start"] for r in reports if "t_start" in r]
    mains = [r["t_main"] for r in reports if "t_main" in r]
    main_s = (max(mains) - min(starts)) if starts and mains else float("nan")
    rate = handed_out / main_s if main_s > 0 else 0.0
    gaps = "gap-free" if ids == [f"v{k}" for k in range(1, len(ids) + 1)] else "WITH GAPS"
    result = (f"{readable}/{expected_total} versions listed once and readable, sha256 ok, ids "
              f"v1..v{len(ids)} {gaps}; {watcher.dangling + watcher.partial} dangling/partial in "
              f"{watcher.samples:,} alias samples ({watcher.checks:,} alias checks, {watcher.fetches:,} "
              f"fetches); {moved} alias moves recorded, {conflicts} CAS conflicts and {refused} refusals "
              f"wrote nothing; history replays {'to the stored state' if replay_ok else 'with ERRORS'}; "
              f"{winners_ok}/{rounds} races with exactly 1 winner of {n}; {rate:.1f} versions/s "
              f"({main_s:.1f} s)")
    ok = not found.problems and readable == expected_total and winners_ok == rounds
    return _row(scenario, expected_total, "versions", found.summary(result), found.lost, ok, t0)


# ---- drill 2: SIGKILL ------------------------------------------------------------------------------------
def _kill_child(cfg: dict[str, Any], conn: Any) -> None:
    """Register cfg['dir'] when told to; report when done, then wait to be killed or told to exit."""
    _quiet()
    reg = _open(cfg)
    conn.send(("ready",))
    if conn.recv() != "go":
        return
    conn.send(("start", time.time()))
    t = time.monotonic()
    mv = reg.register(Path(cfg["dir"]), {"family": "stress", "extra": {"big": True}})
    conn.send(("done", mv.version, time.monotonic() - t))
    conn.recv()


class _Child:
    def __init__(self, ctx: Any, cfg: dict[str, Any]) -> None:
        self.conn, child_conn = ctx.Pipe()
        self.proc = ctx.Process(target=_kill_child, args=(cfg, child_conn), daemon=True)
        self.proc.start()
        child_conn.close()

    def wait_ready(self) -> None:
        if not self.conn.poll(60) or self.conn.recv()[0] != "ready":
            raise RuntimeError("kill-drill child did not start")

    def kill(self) -> None:
        if self.proc.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)  # type: ignore[arg-type]
        self.proc.join(30)

    def messages(self) -> list[tuple[Any, ...]]:
        out = []
        with contextlib.suppress(EOFError, OSError):
            while self.conn.poll(0):
                out.append(self.conn.recv())
        return out


def _upload_marks(cfg: dict[str, Any], s3: Any, *, objects: bool = False) -> set[str]:
    """Artifact prefixes (uuids) whose upload has begun: directories on disk, or S3 multipart uploads
    (the big file goes first, so a new one means the upload started) and, with ``objects``, stored keys."""
    if cfg["root"]:
        d = Path(cfg["root"]) / "artifacts"
        return set(os.listdir(d)) if d.is_dir() else set()
    base = f"{cfg['prefix']}/artifacts/"
    ups = s3.list_multipart_uploads(Bucket=cfg["bucket"], Prefix=base).get("Uploads", [])
    out = {u["Key"][len(base):].split("/")[0] for u in ups}
    if objects:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=cfg["bucket"], Prefix=base):
            out |= {o["Key"][len(base):].split("/")[0] for o in page.get("Contents", [])}
    return out


def _committed(cfg: dict[str, Any], s3: Any, version: str) -> bool:
    """Whether the manifest of ``version`` exists (read straight from the backend, for speed)."""
    if cfg["root"]:
        return (Path(cfg["root"]) / "versions" / f"{version}.json").exists()
    try:
        s3.head_object(Bucket=cfg["bucket"], Key=f"{cfg['prefix']}/versions/{version}.json")
        return True
    except Exception:  # noqa: BLE001 - 404
        return False


def _garbage(cfg: dict[str, Any], s3: Any) -> tuple[int, int]:
    """(count, bytes) of invisible leftovers of killed uploads: FileStore temp files, or incomplete
    multipart uploads."""
    if cfg["root"]:
        files = [p for p in (Path(cfg["root"]) / "artifacts").rglob(".tideline-tmp-*") if p.is_file()]
        return len(files), sum(p.stat().st_size for p in files)
    ups = s3.list_multipart_uploads(Bucket=cfg["bucket"], Prefix=f"{cfg['prefix']}/").get("Uploads", [])
    size = 0
    for u in ups:
        parts = s3.list_parts(Bucket=cfg["bucket"], Key=u["Key"], UploadId=u["UploadId"]).get("Parts", [])
        size += sum(p["Size"] for p in parts)
    return len(ups), size


_KILL_MODES = {
    "upload": "after its upload is seen to start",
    "register": "anywhere in register",
    "commit": "as soon as its manifest is committed",
}


def _big_artifacts(big: Path, size_mb: int) -> dict[str, str]:
    """A model directory with a ``size_mb`` blob (multipart on S3, uploaded first); its files' sha256."""
    (big / "sub").mkdir(parents=True)
    with open(big / "blob.bin", "wb") as f:  # sorted first: uploaded first
        for _ in range(size_mb):
            f.write(os.urandom(1 << 20))
    (big / "model.json").write_text(json.dumps({"big": True}))
    (big / "sub" / "spec.txt").write_text("spec big\n")
    return {p.relative_to(big).as_posix(): _sha(p) for p in big.rglob("*") if p.is_file()}


class _KillDrill:
    """Writer processes registering a big version, SIGKILLed at a chosen moment; after each kill, what a fresh
    client sees is checked, cleanup runs, and the next registration must work."""

    def __init__(self, backend: str, endpoint: str | None, quick: bool, work: Path) -> None:
        self.size_mb = 12 if quick else 32
        self.rng = random.Random()
        self.cfg = _new_registry(backend, endpoint, work, "kill")
        self.s3 = _s3_client(self.cfg) if self.cfg["bucket"] else None
        self.big_sha = _big_artifacts(work / "big", self.size_mb)
        self.scratch, self.tmp = work / "scratch", work / "fetch"
        self.scratch.mkdir()
        self.tmp.mkdir()
        self.reg = _open(self.cfg)
        self.base = self.reg.register(_mk_small(self.scratch, "base", self.rng), {"family": "stress"})
        self.reg.promote(self.base.version, reason="baseline", actor="drill")
        self.aliases0 = self.reg.aliases()
        self.ctx = multiprocessing.get_context("spawn")
        self.child_cfg = dict(self.cfg, dir=str(work / "big"))
        self.children: list[_Child] = [_Child(self.ctx, self.child_cfg)]
        self.found = _Findings()
        self.tally = {"mid-upload": 0, "after upload, before commit": 0, "committed, status not yet recorded": 0,
                      "committed and recorded": 0, "register had returned": 0}
        self.kills = dict.fromkeys(_KILL_MODES, 0)
        self.orphans_removed = self.prod_moved = self.next_ok = self.garbage_n = self.garbage_b = 0
        self.next_id = int(self.base.version[1:]) + 1
        self.deleted: list[str] = []
        self.reg_s = self.up_s = 0.0

    def take(self) -> _Child:
        c = self.children.pop(0)
        self.children.append(_Child(self.ctx, self.child_cfg))  # the next one warms up while this one works
        c.wait_ready()
        return c

    def close(self) -> None:
        for c in self.children:
            c.kill()

    def calibrate(self) -> None:
        """One unkilled registration, timed from 'start' and from the first upload byte."""
        known = _upload_marks(self.cfg, self.s3)
        c = self.take()
        c.conn.send("go")
        c.conn.recv()
        t_start, t_up = time.monotonic(), None
        while not c.conn.poll(0.002):
            if t_up is None and _upload_marks(self.cfg, self.s3) - known:
                t_up = time.monotonic()
        msg = c.conn.recv()
        t_end = time.monotonic()
        c.conn.send("exit")
        c.proc.join(30)
        self.reg_s, self.up_s = t_end - t_start, t_end - (t_up or t_start)
        if msg[0] != "done" or msg[1] != f"v{self.next_id}":
            raise RuntimeError(f"calibration registration answered {msg}")
        why = _fetch_ok(self.reg, msg[1], self.tmp, self.big_sha)
        if why:
            self.found.add(f"calibration: {why}", 0)
        self.reg.delete(msg[1], reason="drill", actor="drill")
        self.deleted.append(msg[1])
        self.next_id += 1

    def kill_one(self, n: int, mode: str) -> None:
        before = [mv.version for mv in self.reg.list_versions()]
        known = _upload_marks(self.cfg, self.s3, objects=True)
        target = f"v{self.next_id}"
        c = self.take()
        c.conn.send("go")
        c.conn.recv()  # ('start', t)
        deadline = time.monotonic() + 60
        if mode == "upload":
            while not (_upload_marks(self.cfg, self.s3) - known) and time.monotonic() < deadline:
                time.sleep(0.002)
            time.sleep(self.rng.uniform(0, 0.8 * self.up_s))
        elif mode == "register":  # half of them near the end, where the commit is
            time.sleep((self.rng.uniform(0, 1.05) if n % 2 else self.rng.uniform(0.8, 1.05)) * self.reg_s)
        else:
            while not _committed(self.cfg, self.s3, target) and time.monotonic() < deadline:
                pass
        c.kill()
        self.kills[mode] += 1
        returned = any(m[0] == "done" for m in c.messages())
        self.reg = type(self.reg)(self.reg.store, signing=self.reg.signing)  # a fresh client: nothing cached
        self.check_visible(n, target, before, known, returned)
        self.check_cleanup(n)
        self.check_next(n)

    def check_visible(self, n: int, target: str, before: list[str], known: set[str], returned: bool) -> None:
        """No version gone, production unmoved; the killed one absent or complete, never half there."""
        from tideline.errors import VersionNotFound

        reg, found = self.reg, self.found
        after = [mv.version for mv in reg.list_versions()]
        new = [v for v in after if v not in before]
        if [v for v in before if v not in after]:
            found.add(f"kill {n}: versions disappeared")
        if reg.aliases() != self.aliases0:
            self.prod_moved += 1
            found.add(f"kill {n}: aliases moved to {reg.aliases()}")
        if not new:
            try:
                reg.get(target)
                found.add(f"kill {n}: {target} is not listed but get() finds it")
            except VersionNotFound:
                pass
            mine = _upload_marks(self.cfg, self.s3, objects=True) - known
            blob_done = any(reg.store.exists(f"artifacts/{p}/blob.bin") for p in mine)
            self.tally["after upload, before commit" if blob_done else "mid-upload"] += 1
            return
        if new != [target]:
            found.add(f"kill {n}: new versions {new}, expected at most {target}", len(new))
            return
        why = _fetch_ok(reg, target, self.tmp, self.big_sha)
        if why:
            found.add(f"kill {n}: {target} visible but {why}")
        recorded = any(e.action == "register" and e.version == target for e in reg.history())
        if returned:
            self.tally["register had returned"] += 1
        else:
            self.tally["committed and recorded" if recorded else "committed, status not yet recorded"] += 1
        if reg.status(target).value != "CANDIDATE":
            found.add(f"kill {n}: {target} has status {reg.status(target).value}", 0)
        reg.delete(target, reason="drill", actor="drill")  # keeps moto's memory bounded
        self.deleted.append(target)
        self.next_id += 1

    def check_cleanup(self, n: int) -> None:
        """Orphans go (uploaded files, and the unfinished uploads only the store sees), versions stay."""
        reg, found = self.reg, self.found
        g_n, g_b = _garbage(self.cfg, self.s3)
        self.garbage_n += g_n
        self.garbage_b += g_b
        removed = reg.cleanup(keep_last=1_000_000, orphan_grace_s=0)
        left_n, left_b = _garbage(self.cfg, self.s3)
        if left_n:
            found.add(f"kill {n}: cleanup left {left_n} unfinished uploads ({left_b / 1e6:.0f} MB)", 0)
        if any(not r.startswith("artifacts/") for r in removed):
            found.add(f"kill {n}: cleanup removed versions {removed}")
        self.orphans_removed += len(removed)
        listed = reg.list_versions()
        referenced = {mv.artifact_prefix for mv in listed}
        present = {"/".join(k.split("/")[:2]) + "/" for k in reg.store.list("artifacts/")}
        if present != referenced:
            found.add(f"kill {n}: {len(present - referenced)} orphan prefixes left by cleanup, "
                      f"{len(referenced - present)} referenced ones gone", len(referenced - present))
        ids = sorted([mv.version for mv in listed] + self.deleted, key=lambda v: int(v[1:]))
        if ids != [f"v{k}" for k in range(1, len(ids) + 1)]:
            found.add(f"kill {n}: version ids have a gap: {ids[-5:]}", 0)

    def check_next(self, n: int) -> None:
        """The next registration works, gets the next id and production is still the baseline."""
        reg, found = self.reg, self.found
        mv = reg.register(_mk_small(self.scratch, f"after{n}", self.rng), {"family": "stress"})
        if mv.version != f"v{self.next_id}":
            found.add(f"kill {n}: the next registration got {mv.version}, expected v{self.next_id}", 0)
        self.next_id = int(mv.version[1:]) + 1
        why = _fetch_ok(reg, mv.version, self.tmp)
        if why:
            found.add(f"kill {n}: next registration {why}")
        else:
            self.next_ok += 1
        active = [v for v, st in reg.statuses().items() if st.value == "ACTIVE"]
        if active != [self.base.version]:
            found.add(f"kill {n}: ACTIVE versions are {active}")

    def result(self) -> str:
        total, tally, kills = sum(self.kills.values()), self.tally, self.kills
        before_commit = tally["mid-upload"] + tally["after upload, before commit"]
        after_commit = tally["committed, status not yet recorded"] + tally["committed and recorded"]
        garbage = (f"cleanup also reclaimed {self.garbage_n} unfinished "
                   f"{'temp files' if self.cfg['root'] else 'multipart uploads'} ({self.garbage_b / 1e6:.0f} MB) "
                   f"of killed writers, 0 left")
        return (f"{total} SIGKILLs of a writer registering {self.size_mb} MB ({kills['upload']} during the upload, "
                f"{kills['register']} anywhere in register, {kills['commit']} right at the manifest commit): "
                f"{before_commit} before the commit ({tally['mid-upload']} mid-upload) left no visible "
                f"version; {after_commit} after it ({tally['committed, status not yet recorded']} before the "
                f"status update) left the complete version, sha256 ok; {tally['register had returned']} after "
                f"register returned; {self.found.lost} partial or lost, production "
                f"{'changed' if self.prod_moved else 'unchanged'}; cleanup removed {self.orphans_removed} orphan "
                f"prefixes and no version; {self.next_ok}/{total} following registrations ok; {garbage}")


def _sigkill(backend: str, label: str, endpoint: str | None, quick: bool, work: Path) -> dict[str, Any]:
    t0 = time.monotonic()
    drill = _KillDrill(backend, endpoint, quick, work)
    try:
        drill.calibrate()
        plan = [mode for mode in _KILL_MODES for _ in range(2 if quick else 20)]
        drill.rng.shuffle(plan)
        for n, mode in enumerate(plan):
            drill.kill_one(n, mode)
    finally:
        drill.close()
    scenario = f"registry: writer SIGKILLed mid-upload / anywhere in register / at the commit ({label})"
    found = drill.found
    return _row(scenario, sum(drill.kills.values()), "kills", found.summary(drill.result()), found.lost,
                not found.problems, t0)


def _mk_small(root: Path, tag: str, rng: random.Random) -> Path:
    d = root / f"{tag}-{uuid.uuid4().hex[:6]}"
    _small_artifacts(d, tag, rng)
    return d


# ---- entry points ---------------------------------------------------------------------------------------
def scenarios(quick: bool, work: Path, *, moto_lock: bool = True) -> list[dict[str, Any]]:
    """Both drills on both backends (contract: tests/reliability/run.py)."""
    _quiet()
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    with _aws_env(), _moto(lock=moto_lock) as endpoint:
        for backend, label in (("local", "local directory"), ("s3", "S3 API")):
            for name, fn in (("writers", _concurrency), ("sigkill", _sigkill)):
                d = work / f"{name}-{backend}"
                d.mkdir(exist_ok=True)
                rows.append(fn(backend, label, endpoint if backend == "s3" else None, quick, d))
    return rows


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="tideline-registry-") as tmp:
        args = sys.argv[1:]
        for row in scenarios("--quick" in args, Path(tmp), moto_lock="--raw-moto" not in args):
            print(json.dumps(row), flush=True)
