"""Local traffic backend: predictor processes on this machine behind the tideline router.

Two slots: ``active`` (the production predictor the router sends traffic to) and ``candidate`` (the
rollout's predictor: the router's shadow target during Shadow, its canary upstream during Canary). The
processes are started detached (their own session) so they keep serving when the controller dies; their
pids, ports and versions live in a small JSON state file (``<home>/serving/<name>.json``, updated under
an flock) so a restarted controller, the CLI and ``tideline serve`` all see the same processes.

Starting a predictor: ``python -m tideline.serving --registry URI --name NAME --ref vN --role ROLE
--http-port 0`` (or what ``predictor_factory(version, role)`` returns), then wait for its ``READY
port=<p>`` line (stdout goes to a log file under ``<home>/serving/logs/``) within ``ready_timeout``.
Every method is idempotent; traffic moves are single atomic ``PUT /_tideline/state`` calls on the router.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from tideline.monitoring.outcomes import LiveOutcomes
from tideline.rollout.analysis import MetricsSnapshot
from tideline.rollout.backends import BackendError, RegistryOps

if TYPE_CHECKING:
    from tideline.registry import Registry

log = logging.getLogger(__name__)

_READY_RE = re.compile(r"READY port=(\d+)")
PredictorFactory = Callable[[str, str], list[str]]
OutcomesProvider = Callable[[str, str], LiveOutcomes | None]


@dataclass
class Proc:
    """A predictor process this backend started: pid, port, version, role, log file and start time."""
    pid: int
    port: int
    version: str
    role: str
    log: str
    started_at: float

    @property
    def url(self) -> str:
        """The process's base URL on localhost."""
        return f"http://127.0.0.1:{self.port}"


def default_predictor_factory(registry_uri: str, name: str, *, reload_interval: float = 0.0,
                              extra_args: Sequence[str] = (),
                              env: Callable[[str, str], Mapping[str, str]] | None = None) -> PredictorFactory:
    """The real predictor: ``python -m tideline.serving ...`` (see docs/CONTRACTS.md).

    ``extra_args`` are appended (e.g. ``--log-flush-seconds 1``); ``env(version, role)`` may return
    environment variables for that one process (e.g. ``TIDELINE_CHAOS`` for a drill on the candidate
    only): the command is then prefixed with ``env NAME=VALUE ...``."""

    def make(version: str, role: str) -> list[str]:
        argv = [sys.executable, "-m", "tideline.serving", "--registry", registry_uri, "--name", name,
                "--ref", version, "--role", role, "--http-port", "0",
                "--reload-interval", str(reload_interval), *extra_args]
        extra_env = dict(env(version, role)) if env is not None else {}
        if extra_env:
            argv = ["env", *(f"{k}={v}" for k, v in extra_env.items()), *argv]
        return argv

    return make


def container_predictor_factory(image: str, registry_uri: str, name: str, *, docker: str = "docker",
                                reload_interval: float = 0.0, extra_args: Sequence[str] = (),
                                env: Callable[[str, str], Mapping[str, str]] | None = None,
                                environ: Mapping[str, str] | None = None) -> PredictorFactory:
    """The predictor in its image (``serving/Dockerfile``), run as the chart runs it: ``docker run --rm`` on the
    host network with ``tideline.containers.RESTRICTED`` (uid 10001, read-only root filesystem, a tmpfs /tmp,
    no capabilities, no privilege escalation); the S3 variables pass by name
    (``tideline.containers.run_options``). ``docker run`` relays the ``READY port=<p>`` line and a stop signal,
    so the backend starts, waits for and stops it like a process (without ``--wait-for-model``: a version that
    cannot load fails the start at once, with the reason). ``env(version, role)`` adds variables for that
    one container (e.g. ``TIDELINE_CHAOS`` for a drill on the candidate); every container is labelled
    ``tideline.io/predictor=<name>`` (``docker rm -f $(docker ps -aq --filter label=...)`` clears them)."""
    from tideline.containers import RESTRICTED, run_options

    base = run_options(os.environ if environ is None else environ)

    def make(version: str, role: str) -> list[str]:
        extra_env = dict(env(version, role)) if env is not None else {}
        argv = [docker, "run", "--rm", "--network", "host", *RESTRICTED, *base,
                "--label", f"tideline.io/predictor={name}", "--label", f"tideline.io/role={role}"]
        for k, v in extra_env.items():
            argv += ["-e", f"{k}={v}"]
        return [*argv, image, "--registry", registry_uri, "--name", name, "--ref", version, "--role", role,
                "--http-port", "0", "--host", "127.0.0.1", "--reload-interval", str(reload_interval),
                *extra_args]

    return make


def router_command(active_url: str, port: int = 0, host: str = "127.0.0.1") -> list[str]:
    """The command line that starts the tideline router in front of ``active_url``."""
    return [sys.executable, "-m", "tideline.rollout.router", "--host", host, "--port", str(port),
            "--active", active_url]


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a zombie child is reaped and counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie still "exists"; reap it if it is our child
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def start_process(argv: list[str], log_path: Path, *, timeout: float, env: dict[str, str] | None = None,
                  what: str = "process") -> tuple[int, int]:
    """Start ``argv`` detached, stdout+stderr into ``log_path``; wait for ``READY port=<p>``. -> (pid, port)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as logf:
        offset = logf.tell()
        try:
            proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env=env)
        except OSError as e:
            raise BackendError(f"cannot start {what}: {e}") from e
    deadline = time.monotonic() + timeout
    while True:
        with open(log_path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        match = _READY_RE.search(text)
        if match:
            return proc.pid, int(match.group(1))
        if proc.poll() is not None:
            tail = " | ".join(text.strip().splitlines()[-5:])
            raise BackendError(f"{what} exited with code {proc.returncode} before it was ready: {tail}",
                               hint=f"log: {log_path}")
        if time.monotonic() > deadline:
            stop_process(proc.pid)
            raise BackendError(f"{what} was not ready within {timeout:.0f}s", hint=f"log: {log_path}")
        time.sleep(0.05)


def stop_process(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM the process group, SIGKILL after ``timeout``; reap it when it is our child."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
        deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 5.0)
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(0.02)


class LocalBackend(RegistryOps):
    """``Backend`` for one machine: predictor processes + the tideline router."""

    def __init__(self, registry: Registry, name: str, router_url: str | None = None,
                 predictor_factory: PredictorFactory | None = None, *, home: Path | str = ".tideline",
                 ready_timeout: float = 120.0, outcomes: OutcomesProvider | None = None,
                 http_timeout: float = 5.0) -> None:
        super().__init__(registry)
        self.name = name
        self.home = Path(home)
        self.state_path = self.home / "serving" / f"{name}.json"
        self.log_dir = self.home / "serving" / "logs"
        self.factory = predictor_factory or default_predictor_factory(registry.store.uri, name)
        self.ready_timeout = ready_timeout
        self.outcomes = outcomes
        self._http = httpx.Client(timeout=http_timeout, trust_env=False)
        self._router_url = router_url.rstrip("/") if router_url else None

    # -- local state ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.state_path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            st = self.read_state()
            yield st
            tmp = self.state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(st, indent=1))
            os.replace(tmp, self.state_path)
        finally:
            os.close(fd)

    def read_state(self) -> dict[str, Any]:
        """The serving state file (router, active and candidate processes); a default one when missing.

        Raises ``BackendError`` when the file is corrupt.
        """
        try:
            return json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {"name": self.name, "router": None, "active": None, "candidate": None}
        except ValueError as e:
            raise BackendError(f"local serving state {self.state_path} is corrupt: {e}") from e

    @staticmethod
    def _proc(d: dict[str, Any] | None) -> Proc | None:
        return Proc(**d) if d else None

    @property
    def router_url(self) -> str:
        """The router's base URL (given, or from the state file); ``BackendError`` when none is running."""
        if self._router_url:
            return self._router_url
        r = self.read_state().get("router")
        if not r:
            raise BackendError(f"no router is running for {self.name!r}", hint="start `tideline serve` first")
        return f"http://127.0.0.1:{r['port']}"

    # -- processes ------------------------------------------------------------------------------------
    def _healthy(self, p: Proc | None) -> bool:
        if p is None or not pid_alive(p.pid):
            return False
        try:
            return self._http.get(p.url + "/v2/health/ready", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def _start(self, version: str, role: str) -> Proc:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        log_path = self.log_dir / f"{self.name}-{role}-{version}-{stamp}.log"
        pid, port = start_process(self.factory(version, role), log_path, timeout=self.ready_timeout,
                                  what=f"predictor {version} ({role})")
        log.info("started predictor %s (%s) pid=%d port=%d", version, role, pid, port)
        return Proc(pid, port, version, role, str(log_path), time.time())

    def start_serving(self, version: str, *, port: int = 0, host: str = "127.0.0.1") -> dict[str, Any]:
        """Start the active predictor for ``version`` and the router in front of it (``tideline serve``)."""
        with self._locked() as st:
            active = self._proc(st.get("active"))
            if not (active and active.version == version and self._healthy(active)):
                if active:
                    stop_process(active.pid)
                active = self._start(version, "active")
                st["active"] = asdict(active)
            r = st.get("router")
            if r and pid_alive(r["pid"]):
                self._put_router({"active": active.url}, url=f"http://127.0.0.1:{r['port']}")
            else:
                log_path = self.log_dir / f"{self.name}-router.log"
                pid, rport = start_process(router_command(active.url, port, host), log_path, timeout=30,
                                           what="router")
                st["router"] = {"pid": pid, "port": rport, "log": str(log_path)}
            return dict(st)

    def shutdown(self) -> None:
        """Stop the router and every predictor of this name; forget them."""
        with self._locked() as st:
            for key in ("router", "candidate", "active"):
                p = st.get(key)
                if p:
                    stop_process(p["pid"])
                st[key] = None

    # -- router ---------------------------------------------------------------------------------------
    def _put_router(self, body: dict[str, Any], *, url: str | None = None) -> dict[str, Any]:
        try:
            r = self._http.put((url or self.router_url) + "/_tideline/state", json=body)
        except httpx.HTTPError as e:
            raise BackendError(f"router unreachable: {e}", hint="is `tideline serve` running?") from e
        if r.status_code != 200:
            raise BackendError(f"router refused {body}: {r.text}")
        return dict(r.json())

    def router_state(self) -> dict[str, Any]:
        """The router's current routing state (``GET /_tideline/state``); ``BackendError`` if unreachable."""
        try:
            return dict(self._http.get(self.router_url + "/_tideline/state").json())
        except httpx.HTTPError as e:
            raise BackendError(f"router unreachable: {e}", hint="is `tideline serve` running?") from e

    # -- Backend: traffic -----------------------------------------------------------------------------
    def _ensure_candidate(self, st: dict[str, Any], version: str) -> Proc:
        cand = self._proc(st.get("candidate"))
        if cand and cand.version == version and self._healthy(cand):
            return cand
        new = self._start(version, "canary")
        if cand:  # replace a dead or different candidate: repoint the router first, then stop it
            rs = self.router_state()
            upd: dict[str, Any] = {}
            if rs.get("canary") == cand.url:
                upd["canary"] = new.url if cand.version == version else None
                if cand.version != version:
                    upd["weight"] = 0
            if rs.get("shadow") == cand.url:
                upd["shadow"] = new.url if cand.version == version else None
            if upd:
                self._put_router(upd)
            stop_process(cand.pid)
        st["candidate"] = asdict(new)
        return new

    def deploy_canary(self, version: str) -> None:
        """Start a predictor for ``version`` in the candidate slot unless a healthy one serves it already."""
        with self._locked() as st:
            self._ensure_candidate(st, version)

    def set_shadow(self, version: str | None) -> None:
        """Point the router's shadow mirror at the candidate predictor of ``version`` (started if needed), or off."""
        if version is None:
            self._put_router({"shadow": None})
            return
        with self._locked() as st:
            cand = self._ensure_candidate(st, version)
            self._put_router({"shadow": cand.url})

    def set_weight(self, percent: int) -> None:
        """Set the router's canary weight to ``percent``; 0 always works.

        Raises ``BackendError`` when no healthy candidate predictor is running or the router refuses.
        """
        if percent == 0:
            self._put_router({"weight": 0})
            return
        st = self.read_state()
        cand = self._proc(st.get("candidate"))
        if cand is None or not self._healthy(cand):
            raise BackendError(f"cannot send {percent}% to the canary: no ready candidate predictor")
        self._put_router({"canary": cand.url, "weight": int(percent)})

    def remove_canary(self) -> None:
        """Route nothing to the candidate (canary and shadow) first, then stop its process."""
        with self._locked() as st:
            cand = self._proc(st.get("candidate"))
            rs = self.router_state()
            upd: dict[str, Any] = {"weight": 0, "canary": None}
            if cand is not None and rs.get("shadow") == cand.url:
                upd["shadow"] = None
            self._put_router(upd)  # traffic off first ...
            if cand is not None:
                stop_process(cand.pid)  # ... then the process
            st["candidate"] = None

    def set_active(self, version: str) -> None:
        """Switch the router's active upstream to ``version`` in one atomic call (reusing the candidate process
        when it serves that version), clear canary and shadow, and stop the processes no longer used.
        """
        with self._locked() as st:
            active = self._proc(st.get("active"))
            cand = self._proc(st.get("candidate"))
            if active and active.version == version and self._healthy(active):
                self._put_router({"active": active.url, "canary": None, "weight": 0, "shadow": None})
                if cand is not None:
                    stop_process(cand.pid)
                    st["candidate"] = None
                return
            if cand and cand.version == version and self._healthy(cand):
                new = cand
            else:
                new = self._start(version, "active")
                if cand is not None:
                    self._put_router({"canary": None, "weight": 0})
                    stop_process(cand.pid)
            self._put_router({"active": new.url, "canary": None, "weight": 0, "shadow": None})  # atomic switch
            st["active"], st["candidate"] = asdict(new), None
            if active is not None and active.pid != new.pid:
                stop_process(active.pid)

    # -- Backend: metrics -----------------------------------------------------------------------------
    def read_metrics(self) -> MetricsSnapshot:
        """Counters from the active and candidate predictors' ``/metrics``; one that cannot be read is skipped."""
        st = self.read_state()
        snap = MetricsSnapshot()
        for key in ("active", "candidate"):
            p = self._proc(st.get(key))
            if p is None:
                continue
            try:
                r = self._http.get(p.url + "/metrics")
                r.raise_for_status()
            except httpx.HTTPError as e:
                log.warning("cannot read metrics of %s predictor %s: %s", key, p.version, e)
                continue
            snap = snap.merge(MetricsSnapshot.parse(r.text, model=self.name))
        return snap

    def candidate_up(self, version: str) -> bool | None:
        """Whether the candidate slot's predictor of ``version`` is healthy; None when the slot runs no such one."""
        cand = self._proc(self.read_state().get("candidate"))
        if cand is None or cand.version != version:
            return None
        return self._healthy(cand)

    def read_outcomes(self, candidate: str, baseline: str) -> LiveOutcomes | None:
        """The ``outcomes`` provider's live outcomes, or None without a provider."""
        return self.outcomes(candidate, baseline) if self.outcomes is not None else None

    def read_paired_predictions(self, candidate: str) -> tuple[list[float], list[float]] | None:
        """The router's shadow pairs for ``candidate``; None when there are none or it cannot be read."""
        try:
            r = self._http.get(self.router_url + "/_tideline/pairs", params={"version": candidate})
            r.raise_for_status()
            d = r.json()
        except (httpx.HTTPError, ValueError) as e:
            log.warning("cannot read shadow pairs from the router: %s", e)
            return None
        if not d.get("shadow"):
            return None
        return list(d["shadow"]), list(d["active"])

    def close(self) -> None:
        """Close the HTTP client (the processes keep running)."""
        self._http.close()
