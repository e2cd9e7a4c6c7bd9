"""S3 outage drills: the registry's S3 endpoint dies in the middle of a cycle, a drift check and a rollout.

Each drill runs a real S3 API (moto's server) behind a ``FaultProxy`` and kills the endpoint at a chosen
moment (an HTTP request the proxy recognises, or a step of the rollout), then checks what the issue asks:

* the run retries with backoff (the store's WARNING lines are counted), then fails cleanly: the CLI exits
  with StorageUnavailable's code (9) and ONE ``error:`` line that names the S3 endpoint and says it gave
  up; the rollout controller stops with a one-line StorageUnavailable;
* production is untouched (read through the direct endpoint), no version is visible half-written (every
  listed version's artifacts fetch with a valid sha256), every recorded attachment passes its sha256, the
  rollout document is readable, not older than what the controller last reported, and consistent with
  what the backend serves;
* once the endpoint is back the same command succeeds (a new version registered / a drift report stored)
  and the rollout resumed by a new controller ends as its analysis says (promoted or rolled back).

The cycle and drift drills share one S3 server: the drift checks run against the production the cycle
drill left. ``lost`` counts wrong production changes + half-written versions + corrupt attachments + lost or
inconsistent rollout state. The CLI runs use the default retry policy (5 attempts, 0.5 s base); the
in-process rollout drills a short one (4 attempts, 0.05 s base) with a fake clock, so they take seconds.

Run alone from ``bench/``: ``python -m reliability.outage [--quick]`` (JSON lines).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reliability.faultproxy import FaultProxy

BUCKET = "tideline-outage"
AREA = "Faults"
_FAST_CONFIG = {
    "training": {"params": {"sklearn": {"max_iter": 30}}, "families": ["sklearn"]},
    "evaluation": {"n_splits": 2, "bootstrap_samples": 100},
    "policy": {"min_sharpe": -100.0, "min_trades": 0, "max_drawdown": 10.0, "require_significance": False,
               "min_deflated_sharpe": 0.0, "require_baseline": False, "require_folds_agree": False,
               "min_relative_improvement": -100.0, "key_metric_floor": 0.0},
}
_RETRY_LINE = re.compile(r"unreachable \(attempt (\d+)/(\d+)\)")
_QUICK_BACKOFF_S = 0.2
_GAVE_UP = re.compile(r"gave up after (\d+) attempts? over ([0-9.]+) s")
# When S3 goes down: (which request, by method and path) -> what the proxy does, and whether it refuses
# connections afterwards (a stopped MinIO) or resets them.
Fault = tuple[Callable[[str, str], bool], str, bool]


# ---- infrastructure -------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _s3() -> Iterator[tuple[str, FaultProxy]]:
    """moto's S3 server with the bucket, and a FaultProxy in front: (direct endpoint, proxy)."""
    import boto3
    from moto.server import ThreadedMotoServer

    for k, v in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                 ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(k, v)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    direct = f"http://127.0.0.1:{port}"
    proxy = FaultProxy("127.0.0.1", port)
    try:
        boto3.client("s3", endpoint_url=direct).create_bucket(Bucket=BUCKET)
        yield direct, proxy
    finally:
        proxy.close()
        server.stop()


def _env(endpoint: str, quick: bool = False) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDELINE_")}
    env.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": os.environ["AWS_ACCESS_KEY_ID"],
                "AWS_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"], "AWS_DEFAULT_REGION": "us-east-1",
                "TIDELINE_LOG_LEVEL": "WARNING", "COLUMNS": "200"})
    if quick:  # CI: the same 5 attempts with a shorter backoff; the full run uses the defaults
        env["TIDELINE_S3_BACKOFF_S"] = str(_QUICK_BACKOFF_S)
    return env


def _policy(quick: bool) -> str:
    from tideline.store import DEFAULT_S3_ATTEMPTS, DEFAULT_S3_BACKOFF_S

    return f"retry policy {DEFAULT_S3_ATTEMPTS} attempts, {_QUICK_BACKOFF_S if quick else DEFAULT_S3_BACKOFF_S:g} s base"


@dataclass
class CliRun:
    rc: int
    out: str
    err: str
    seconds: float
    ended: float  # time.monotonic() at exit

    @property
    def retries(self) -> int:
        return len(_RETRY_LINE.findall(self.err))

    @property
    def error_lines(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.startswith(("error:", "internal error:"))]

    def clean_s3_failure(self) -> str | None:
        """None if the run failed as promised (exit 9, one error line naming S3, gave up), else why not."""
        if self.rc != 9:
            return f"exit {self.rc} (expected 9): {self.err.strip()[-300:]}"
        if "Traceback" in self.err:
            return "a traceback was printed"
        lines = self.error_lines
        if len(lines) != 1:
            return f"{len(lines)} error lines"
        if "S3 endpoint" not in lines[0] or not _GAVE_UP.search(lines[0]):
            return f"unclear message: {lines[0][:200]}"
        return None


def _cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 300) -> CliRun:
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "tideline", *args], env=env, cwd=cwd, capture_output=True,
                       text=True, timeout=timeout)
    t1 = time.monotonic()
    return CliRun(p.returncode, p.stdout, p.stderr, t1 - t0, t1)


def _registry(direct: str, prefix: str) -> Any:
    from tideline.registry import open_registry

    return open_registry(f"s3://{BUCKET}/{prefix}", endpoint_url=direct)


def _half_written(reg: Any, tmp: Path) -> tuple[int, list[str]]:
    """(versions listed, those whose artifacts do not fetch with a valid sha256)."""
    from tideline.errors import TidelineError

    bad = []
    versions = reg.list_versions()
    for mv in versions:
        try:
            reg.fetch(mv.version, Path(tempfile.mkdtemp(dir=tmp)) / "m")
        except TidelineError as e:
            bad.append(f"{mv.version}: {e}")
    return len(versions), bad


def _orphans(reg: Any) -> int:
    """Artifact sets (``artifacts/<uuid>/``) no manifest references: invisible, removed by ``cleanup``."""
    used = {mv.artifact_prefix for mv in reg.list_versions()}
    return len({"/".join(k.split("/")[:2]) + "/" for k in reg.store.list("artifacts/")} - used)


def _corrupt_attachments(reg: Any) -> list[str]:
    """Attachments recorded in the registry state whose blob fails its sha256 (or is missing)."""
    from tideline.errors import TidelineError

    bad = []
    for mv in reg.list_versions():
        for name in reg.attachments(mv.version):
            try:
                reg.get_attachment(mv.version, name)
            except TidelineError as e:
                bad.append(f"{mv.version}/{name}: {e}")
    return bad


def _nth(method: str, needle: str, n: int) -> Callable[[str, str], bool]:
    """A proxy predicate that fires on the n-th ``method`` request whose path contains ``needle``."""
    seen = [0]

    def pred(m: str, path: str) -> bool:
        if m == method and needle in path:
            seen[0] += 1
            return seen[0] == n
        return False

    return pred


@dataclass
class Tally:
    """Figures of one scenario, over its outages."""

    tried: int = 0
    failed_clean: int = 0
    retries: list[int] = field(default_factory=list)
    give_up_s: list[float] = field(default_factory=list)  # first attempt -> gave up (the store's figure)
    exit_s: list[float] = field(default_factory=list)  # outage -> the command exited / the controller stopped
    reruns_ok: int = 0
    prod_changed: int = 0
    half_written: int = 0
    state_lost: int = 0
    problems: list[str] = field(default_factory=list)
    notes: dict[str, int] = field(default_factory=dict)

    def record_exit(self, run: CliRun, proxy: FaultProxy) -> None:
        m = _GAVE_UP.search(run.error_lines[0]) if run.error_lines else None
        if m:
            self.give_up_s.append(float(m.group(2)))
        if proxy.down_at is not None:
            self.exit_s.append(run.ended - proxy.down_at)

    def fail_under_outage(self, label: str, proxy: FaultProxy, fault: Fault, args: list[str],
                          env: dict[str, str], work: Path) -> CliRun:
        """Run one command while `fault` takes S3 down mid-way; count it as clean or say why not."""
        self.tried += 1
        downs = proxy.downs
        pred, action, refuse = fault
        proxy.on_request(pred, action, refuse=refuse)  # refuse: like a stopped MinIO, else resets
        run = _cli(args, env, work)
        proxy.clear_faults()
        why = run.clean_s3_failure() if proxy.downs > downs else "the outage never happened"
        if why is None:
            self.failed_clean += 1
            self.retries.append(run.retries)
            self.record_exit(run, proxy)
        else:
            self.problems.append(f"{label}: {why}")
        return run

    def note(self, what: str, n: int = 1) -> None:
        self.notes[what] = self.notes.get(what, 0) + n

    @property
    def lost(self) -> int:
        return self.prod_changed + self.half_written + self.state_lost

    def figures(self) -> str:
        gu = (f"gave up after {min(self.give_up_s):.1f}-{max(self.give_up_s):.1f} s of retrying"
              if self.give_up_s else "no give-up time measured")
        if self.exit_s:
            gu += f", stopped {min(self.exit_s):.1f}-{max(self.exit_s):.1f} s after the outage began"
        ret = f"{sum(self.retries)} retries logged ({min(self.retries)}-{max(self.retries)} per run)" \
            if self.retries else "0 retries logged"
        notes = "".join(f"; {n} {what}" for what, n in self.notes.items() if n)
        return (f"{self.failed_clean}/{self.tried} failed cleanly (one-line StorageUnavailable); {ret}; {gu}; "
                f"{self.reruns_ok}/{self.tried} reruns succeeded once S3 was back; production changed by a "
                f"failure {self.prod_changed}x, half-written versions {self.half_written}, lost state "
                f"{self.state_lost}{notes}")


def _row(scenario: str, tally: Tally, t0: float, policy: str, unit: str = "outages") -> dict[str, Any]:
    ok = (not tally.problems and tally.failed_clean == tally.tried and tally.reruns_ok == tally.tried
          and tally.lost == 0 and tally.tried > 0)
    result = f"{tally.figures()} ({policy})"
    if tally.problems:
        result += "; FAILED: " + " | ".join(tally.problems[:4])
    return {"area": AREA, "scenario": scenario, "times": tally.tried, "unit": unit, "result": result,
            "lost": tally.lost, "ok": ok, "seconds": round(time.perf_counter() - t0, 1)}


# ---- cycle ----------------------------------------------------------------------------------------------
# (label, proxy predicate, action, refuse): moments of a `tideline cycle` with one family (sklearn: artifacts
# model.json, model.skops; then the manifest; then state.json for the register event, the reference
# attachment, its state event, then the promotion).
def _cycle_moments() -> list[tuple[str, Callable[[str, str], bool], str, bool]]:
    return [
        ("2nd artifact upload", _nth("PUT", "/artifacts/", 2), "down", False),
        ("manifest commit lands, answer lost", _nth("PUT", "/versions/", 1), "drop_down", False),
        ("register event (state CAS)", _nth("PUT", "/state.json", 1), "down", True),
        ("reference attachment upload", _nth("PUT", "/attachments/", 1), "down", False),
        ("promotion (state CAS)", _nth("PUT", "/state.json", 3), "down", True),
    ]


def _cycle(quick: bool, work: Path, s3: tuple[str, FaultProxy]) -> dict[str, Any]:
    t0 = time.perf_counter()
    tally = Tally()
    moments = _cycle_moments()[: 1 if quick else None]
    cfg = work / "fast.json"
    cfg.write_text(json.dumps(_FAST_CONFIG))  # YAML is a superset of JSON
    direct, proxy = s3
    reg = _registry(direct, "cycle")
    base = ["--registry", f"s3://{BUCKET}/cycle", "--config", str(cfg)]
    data = ["--synthetic", "--symbols", "2", "--bars", "600"]
    setup = _cli([*base, "cycle", *data, "--json"], _env(direct), work)
    if setup.rc != 0 or reg.aliases().get("production") is None:
        tally.problems.append(f"setup cycle failed: exit {setup.rc}: {setup.err.strip()[-300:]}")
        return _row("`tideline cycle` on an S3 registry: S3 dies mid-cycle", tally, t0, _policy(quick))
    for i, (label, pred, action, refuse) in enumerate(moments):
        prod_before = reg.aliases().get("production")
        n_before, _ = _half_written(reg, work)
        orphans_before = _orphans(reg)
        tally.fail_under_outage(label, proxy, (pred, action, refuse),
                                [*base, "cycle", *data, "--seed", str(11 + i), "--json"],
                                _env(proxy.endpoint, quick), work)
        prod_after = reg.aliases().get("production")
        if prod_after != prod_before:
            tally.prod_changed += 1
            tally.problems.append(f"{label}: production moved {prod_before} -> {prod_after} by a failed run")
        n_mid, bad = _half_written(reg, work)
        tally.half_written += len(bad)
        tally.problems += [f"{label}: half-written {b}" for b in bad]
        tally.note("versions committed complete by a failed run", n_mid - n_before)
        tally.note("orphan artifact sets left for `cleanup`", _orphans(reg) - orphans_before)
        proxy.up()
        again = _cli([*base, "cycle", *data, "--seed", str(11 + i), "--json"], _env(proxy.endpoint, quick),
                     work)
        n_after, bad = _half_written(reg, work)
        tally.half_written += len(bad)
        new_prod = reg.aliases().get("production")
        if again.rc == 0 and n_after > n_mid >= n_before and not bad:
            res = json.loads(again.out)
            if res.get("promoted_version") not in (None, new_prod):
                tally.problems.append(f"{label}: rerun promoted {res.get('promoted_version')}, "
                                      f"production is {new_prod}")
            else:
                tally.reruns_ok += 1
        else:
            tally.problems.append(f"{label}: rerun exit {again.rc}, versions {n_mid}->{n_after}: "
                                  f"{again.err.strip()[-300:]}")
    return _row(f"`tideline cycle` on an S3 registry (production set): S3 dies mid-cycle "
                f"({'; '.join(m[0] for m in moments)}), then rerun", tally, t0, _policy(quick))


# ---- drift ----------------------------------------------------------------------------------------------
# A drift check reads reference.parquet, fetches the model, computes, then stores three attachments, each
# blob first and then its state.json record.
def _drift_moments() -> list[tuple[str, Callable[[str, str], bool], str, bool]]:
    return [
        ("model fetch", _nth("GET", "/artifacts/", 1), "down", False),
        ("reference read", _nth("GET", "/reference.parquet", 1), "down", True),
        ("1st report upload", _nth("PUT", "/attachments/", 1), "down", False),
        ("2nd report upload lands, answer lost", _nth("PUT", "/attachments/", 2), "drop_down", False),
        ("attachment record (state CAS)", _nth("PUT", "/state.json", 2), "down", True),
    ]


def _drift(quick: bool, work: Path, s3: tuple[str, FaultProxy], prefix: str | None = None) -> dict[str, Any]:
    """Drift checks of production; on the registry at ``prefix`` (the cycle drill's) or a fresh one."""
    t0 = time.perf_counter()
    tally = Tally()
    moments = _drift_moments()[: 1 if quick else None]
    cfg = work / "fast-drift.json"
    cfg.write_text(json.dumps(_FAST_CONFIG))
    direct, proxy = s3
    prefix = prefix or "drift"
    reg = _registry(direct, prefix)
    base = ["--registry", f"s3://{BUCKET}/{prefix}", "--config", str(cfg)]
    if reg.aliases().get("production") is None:
        setup = _cli([*base, "cycle", "--synthetic", "--symbols", "2", "--bars", "600", "--json"], _env(direct),
                     work)
        if setup.rc != 0 or reg.aliases().get("production") is None:
            tally.problems.append(f"setup cycle failed: exit {setup.rc}: {setup.err.strip()[-300:]}")
            return _row("`tideline drift check` on an S3 registry: S3 dies mid-check", tally, t0,
                        _policy(quick))
    prod = reg.aliases()["production"]
    check = ["drift", "check", "--synthetic", "--symbols", "2", "--bars", "300", "--json"]
    for label, pred, action, refuse in moments:
        latest_before = _latest_checked_at(reg, prod)
        tally.fail_under_outage(label, proxy, (pred, action, refuse), [*base, *check],
                                _env(proxy.endpoint, quick), work)
        if reg.aliases().get("production") != prod:
            tally.prod_changed += 1
            tally.problems.append(f"{label}: production moved")
        _, bad = _half_written(reg, work)
        bad += _corrupt_attachments(reg)
        tally.half_written += len(bad)
        tally.problems += [f"{label}: {b}" for b in bad]
        proxy.up()
        again = _cli([*base, *check], _env(proxy.endpoint, quick), work)
        latest_after = _latest_checked_at(reg, prod)
        bad = _corrupt_attachments(reg)
        tally.half_written += len(bad)
        if again.rc == 0 and latest_after is not None and latest_after != latest_before and not bad \
                and json.loads(again.out).get("checked_at") == latest_after:
            tally.reruns_ok += 1
        else:
            tally.problems.append(f"{label}: rerun exit {again.rc}; drift-latest {latest_before} -> "
                                  f"{latest_after}; {bad[:2]} {again.err.strip()[-300:]}")
    return _row(f"`tideline drift check` on an S3 registry: S3 dies mid-check "
                f"({'; '.join(m[0] for m in moments)}), then rerun", tally, t0, _policy(quick))


def _latest_checked_at(reg: Any, version: str) -> str | None:
    if "drift-latest.json" not in reg.attachments(version):
        return None
    return json.loads(reg.get_attachment(version, "drift-latest.json")).get("checked_at")


# ---- rollout --------------------------------------------------------------------------------------------
class FakeBackend:
    """In-memory traffic (active / canary / weight / shadow) + the real registry ops on the S3 registry.

    ``hooks[name]`` runs before the action ``name`` (e.g. to kill S3 at that exact point)."""

    def __init__(self, registry: Any, baseline: str) -> None:
        from tideline.rollout.backends import RegistryOps

        self.ops = RegistryOps(registry)
        self.world: dict[str, Any] = {"active": baseline, "canary": None, "weight": 0, "shadow": None}
        self.hooks: dict[str, Callable[[], None]] = {}

    def _hook(self, name: str) -> None:
        fn = self.hooks.pop(name, None)
        if fn is not None:
            fn()

    def set_weight(self, percent: int) -> None:
        self._hook("set_weight")
        if percent and self.world["canary"] is None:
            from tideline.rollout.backends import BackendError

            raise BackendError("no canary deployed")
        self.world["weight"] = int(percent)

    def set_shadow(self, version: str | None) -> None:
        self._hook("set_shadow")
        self.world["shadow"] = version

    def deploy_canary(self, version: str) -> None:
        self._hook("deploy_canary")
        self.world["canary"] = version

    def remove_canary(self) -> None:
        self._hook("remove_canary")
        if self.world["shadow"] == self.world["canary"]:
            self.world["shadow"] = None
        self.world.update(canary=None, weight=0)

    def set_active(self, version: str) -> None:
        self._hook("set_active")
        self.world.update(active=version, canary=None, weight=0, shadow=None)

    def read_metrics(self) -> Any:
        from tideline.rollout.analysis import MetricsSnapshot

        self._hook("read_metrics")
        return MetricsSnapshot()

    def candidate_up(self, version: str) -> bool | None:
        return True

    def read_outcomes(self, candidate: str, baseline: str) -> Any:
        return None

    def read_paired_predictions(self, candidate: str) -> Any:
        return None

    def production(self) -> str | None:
        return self.ops.production()

    def promote(self, version: str, *, expected: str, reason: str) -> None:
        self._hook("promote")
        self.ops.promote(version, expected=expected, reason=reason)

    def retire(self, version: str, *, reason: str) -> None:
        self._hook("retire")
        self.ops.retire(version, reason=reason)

    def mark(self, version: str, status: str) -> None:
        self._hook("mark")
        self.ops.mark(version, status)


def _expected_world(doc: Any) -> dict[str, Any]:
    from tideline.rollout import machine as m

    st, c, b = doc.status, doc.spec.candidate, doc.spec.baseline
    if st.phase == m.Phase.SHADOW:
        return {"active": b, "weight": 0, "shadow": c}
    if st.phase == m.Phase.CANARY:
        return {"active": b, "canary": c, "weight": st.weight, "shadow": None}
    if st.phase in (m.Phase.PROMOTING, m.Phase.PROMOTED):
        return {"active": c, "canary": None, "weight": 0, "shadow": None}
    return {"active": b, "canary": None, "weight": 0, "shadow": None}


def _world_mismatch(doc: Any, backend: FakeBackend) -> str | None:
    want = _expected_world(doc)
    got = {k: backend.world[k] for k in want}
    return None if got == want else f"backend serves {got}, the document ({doc.status.phase.value}) says {want}"


class _RetryCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.n = 0

    def emit(self, record: logging.LogRecord) -> None:
        if _RETRY_LINE.search(record.getMessage()):
            self.n += 1


# (label, candidate, expected end, how the outage starts: (hook or "sleep:<phase>:<weight>", action))
_ROLLOUT_MOMENTS: list[tuple[str, str, str, str, str]] = [
    ("promotion: before the registry moves", "v2", "Promoted", "promote", "down"),
    ("shadow: between analyses", "v2", "Promoted", "sleep:Shadow:0", "down"),
    ("canary 10%: while applying the step", "v2", "Promoted", "deploy_canary", "down"),
    ("promotion: the registry move lands, answer lost", "v2", "Promoted", "promote", "drop_down"),
    ("canary 50% of a failing candidate", "v3", "RolledBack", "sleep:Canary:50", "down"),
]


def _rollout_world(direct: str, proxy: FaultProxy, prefix: str, candidate: str) -> tuple[Any, Any, FakeBackend]:
    """v1 in production, ``candidate`` set; the controller's store goes through ``proxy``. Returns (the registry
    seen directly, the controller's store, the backend)."""
    from tideline.registry import Registry
    from tideline.store import S3Store

    direct_reg = _registry(direct, prefix)
    art = Path(tempfile.mkdtemp(prefix="art-"))
    (art / "model.txt").write_text("weights")
    for _ in range(3):
        direct_reg.register(art, {"family": "sklearn"})
    direct_reg.promote("v1", reason="initial")
    direct_reg.set_alias("candidate", candidate)
    store = S3Store(BUCKET, prefix, endpoint_url=proxy.endpoint, attempts=4, backoff_s=0.05)
    return direct_reg, store, FakeBackend(Registry(store), "v1")


def _judge_stop(label: str, error: str | None, gave_up_at: float, direct_reg: Any, backend: FakeBackend,
                seen: list[Any], candidate: str, proxy: FaultProxy, tally: Tally, counter: _RetryCounter) -> None:
    """The controller stopped: with one clean line, nothing stored went back, production did not move early,
    and the world matches what the document says was applied."""
    from tideline.rollout import machine as m
    from tideline.rollout.controller import load_rollout

    if error is not None and "\n" not in error and "unreachable for 3 passes in a row" in error \
            and "gave up after" in error:
        tally.failed_clean += 1
        tally.retries.append(counter.n)
        if proxy.down_at is not None:
            tally.exit_s.append(gave_up_at - proxy.down_at)
        m_ = _GAVE_UP.search(error)
        if m_:
            tally.give_up_s.append(float(m_.group(2)))
    else:
        tally.problems.append(f"{label}: controller did not stop cleanly: {error or 'it finished'}")
    doc, _ = load_rollout(direct_reg.store, "outage")
    last_gen = max((s.generation for s in seen), default=0)
    if doc.status.generation < last_gen:
        tally.state_lost += 1
        tally.problems.append(f"{label}: rollout document went back to generation {doc.status.generation} "
                              f"< {last_gen}")
    prod = direct_reg.aliases().get("production")
    moving = doc.status.phase in (m.Phase.PROMOTING, m.Phase.PROMOTED)
    if prod != "v1" and not (moving and prod == candidate):
        tally.prod_changed += 1
        tally.problems.append(f"{label}: production is {prod} while the rollout is {doc.status.phase.value}")
    if doc.applied_generation >= doc.status.generation:
        mismatch = _world_mismatch(doc, backend)
        if mismatch:
            tally.state_lost += 1
            tally.problems.append(f"{label}: {mismatch}")
    else:
        tally.note("stopped with a transition persisted but not yet applied (re-applied on resume)")
    if moving and prod == candidate:
        tally.note("stopped after the point of no return (Promoting, registry moved)")


def _judge_resume(label: str, status: Any, end: str, candidate: str, direct_reg: Any, backend: FakeBackend,
                  tally: Tally) -> None:
    """After S3 came back, a new controller finished the rollout as it should end, registry and world agree."""
    from tideline.registry import Status
    from tideline.rollout.controller import load_rollout

    doc, _ = load_rollout(direct_reg.store, "outage")
    aliases, statuses = direct_reg.aliases(), direct_reg.statuses()
    want_prod, retired = (candidate, "v1") if end == "Promoted" else ("v1", candidate)
    problems = []
    if status.phase.value != end:
        problems.append(f"ended {status.phase.value} ({status.message}), expected {end}")
    if aliases.get("production") != want_prod or statuses.get(want_prod) != Status.ACTIVE \
            or statuses.get(retired) != Status.RETIRED:
        problems.append(f"registry after resume: production {aliases.get('production')}, statuses "
                        f"{ {k: v.value for k, v in statuses.items()} }")
    if doc.applied_generation < doc.status.generation:
        problems.append("the final phase's actions were not applied")
    mismatch = _world_mismatch(doc, backend)
    if mismatch:
        problems.append(mismatch)
    if problems:
        tally.problems.append(f"{label}: resume: " + "; ".join(problems))
        if mismatch:
            tally.state_lost += 1
    else:
        tally.reruns_ok += 1


def _rollout_once(direct: str, proxy: FaultProxy, prefix: str, label: str, candidate: str, end: str,
                  when: str, action: str, tally: Tally, counter: _RetryCounter) -> None:
    """One rollout whose store goes down at ``when``: the controller stops cleanly; once S3 is back a new
    controller resumes it to ``end``."""
    from tideline.clock import FakeClock
    from tideline.errors import StorageUnavailable
    from tideline.rollout import machine as m
    from tideline.rollout.analysis import AnalysisResult, Thresholds
    from tideline.rollout.controller import RolloutController
    from tideline.rollout.guard import WatchSpec

    direct_reg, store, backend = _rollout_world(direct, proxy, prefix, candidate)
    good = candidate == "v2"
    seen: list[m.RolloutStatus] = []

    def analyzer(inp: Any, th: Any) -> AnalysisResult:
        # the bad candidate passes shadow and the first step, then fails from 50% of the traffic on
        loaded = bool(seen) and seen[-1].phase == m.Phase.CANARY and seen[-1].weight >= 50
        if good or not loaded:
            return AnalysisResult("pass", [], [], labelled=1000)
        return AnalysisResult("fail", [], ["error rate 50% > 5%"], labelled=1000)

    def kill() -> None:
        if action == "drop_down":
            proxy.on_request(lambda mth, p: mth == "PUT" and p.endswith("/state.json"), "drop_down",
                             refuse=True)
        else:
            proxy.down(refuse=tally.tried % 2 == 0)

    def on_sleep(_: float) -> None:
        if when.startswith("sleep:") and seen and proxy.is_up and not proxy.downs:
            _, phase, weight = when.split(":")
            if seen[-1].phase.value == phase and seen[-1].weight == int(weight):
                kill()

    if not when.startswith("sleep:"):
        backend.hooks[when] = kill
    clock = FakeClock(on_sleep=on_sleep)
    spec = m.RolloutSpec(name="outage", target="tideline", candidate=candidate, baseline="v1",
                         shadow=m.ShadowSpec(min_duration_s=60, min_labelled=0), steps=(10, 50, 100),
                         interval_s=30, thresholds=Thresholds(min_requests=1, min_labelled=1),
                         watch=WatchSpec(duration_s=0))
    counter.n = 0
    error: str | None = None
    try:
        RolloutController(spec, backend, store, clock, analyzer, owner="first").run(on_status=seen.append)
    except StorageUnavailable as e:
        error = str(e)
    _judge_stop(label, error, time.monotonic(), direct_reg, backend, seen, candidate, proxy, tally, counter)
    # S3 back: a new controller resumes from the stored document
    proxy.up()
    proxy.clear_faults()
    clock.on_sleep = None
    status = RolloutController("outage", backend, store, clock, analyzer, owner="second").run(on_status=seen.append)
    _judge_resume(label, status, end, candidate, direct_reg, backend, tally)


def _rollout(quick: bool, work: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    tally = Tally()
    moments = _ROLLOUT_MOMENTS[: 1 if quick else None]
    counter = _RetryCounter()
    store_log = logging.getLogger("tideline.store")
    store_log.addHandler(counter)
    ctrl_log = logging.getLogger("tideline.rollout")
    old_level = ctrl_log.level
    ctrl_log.setLevel(logging.ERROR)  # the drill's expected warnings are counted, not printed
    old_prop = store_log.propagate
    store_log.propagate = False
    try:
        for i, (label, candidate, end, when, action) in enumerate(moments):
            with _s3() as (direct, proxy):
                tally.tried += 1
                _rollout_once(direct, proxy, f"rollout{i}", label, candidate, end, when, action, tally, counter)
    finally:
        store_log.removeHandler(counter)
        store_log.propagate = old_prop
        ctrl_log.setLevel(old_level)
    return _row(f"rollout controller, state in the S3 registry: S3 dies mid-rollout "
                f"({'; '.join(m[0] for m in moments)}), then a new controller resumes", tally, t0,
                "store retry policy 4 attempts, 0.05 s base; controller gives up after 3 passes")


# ---- entry points ---------------------------------------------------------------------------------------
def scenarios(quick: bool, work: Path) -> list[dict[str, Any]]:
    """The three outage drills (contract: tests/reliability/run.py)."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    for name in ("cycle", "drift", "rollout"):
        (work / name).mkdir(exist_ok=True)
    with _s3() as s3:  # the drift drill checks the production the cycle drill left (no second setup cycle)
        rows = [_cycle(quick, work / "cycle", s3)]
        rows.append(_drift(quick, work / "drift", s3, prefix="cycle"))
    rows.append(_rollout(quick, work / "rollout"))
    return rows


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="tideline-outage-") as tmp:
        for row in scenarios("--quick" in sys.argv[1:], Path(tmp)):
            print(json.dumps(row), flush=True)
