"""How the loop starts and watches rollouts: the rollout document in the registry store, advanced by the one
rollout controller (``tideline rollout resume``, running in its own process) — the loop never steps a
rollout itself, it starts it and restarts a controller that died."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tideline.config import LoopRolloutConfig, Settings
from tideline.errors import ConfigError
from tideline.registry import Registry
from tideline.rollout.controller import create_rollout, list_rollouts, load_rollout
from tideline.rollout.machine import RolloutSpec


def rollout_spec(cfg: LoopRolloutConfig, candidate: str, baseline: str, bars: str | None) -> RolloutSpec:
    """The rollout of ``candidate`` against ``baseline`` that the settings describe (``ConfigError`` if invalid)."""
    try:
        return RolloutSpec.from_settings(cfg, candidate=candidate, baseline=baseline, bars=bars)
    except ValueError as e:
        raise ConfigError(f"loop.rollout: {e}") from None


def latest_rollout(registry: Registry, name: str, *, now: float) -> dict[str, Any] | None:
    """The latest rollout of ``name`` (running or ended) as the loop sees it, or None when there is none."""
    if name not in list_rollouts(registry.store):
        return None
    doc, _ = load_rollout(registry.store, name)
    created = doc.events[0]["at"] if doc.events else doc.status.started_at
    st = doc.status
    return {"name": name, "id": f"{doc.spec.candidate}@{created}", "phase": st.phase.value, "weight": st.weight,
            "candidate": doc.spec.candidate, "baseline": doc.spec.baseline, "terminal": st.terminal,
            "message": st.message, "kill_switch": st.kill_switch,
            "controller_alive": doc.owner is not None and doc.lease_until > now}


class DetachedRollouts:
    """Rollouts run by ``tideline rollout resume`` processes started here (the embedded default); their live
    outcomes come from ``bars`` (the loop's recent bars, written where the controller can read them)."""

    def __init__(self, settings: Settings, registry: Registry, *, config_path: Path | None = None,
                 bars: str | None = None) -> None:
        self.s = settings
        self.registry = registry
        self.config_path = config_path
        self.bars = bars
        self.name = settings.loop.rollout.name

    def latest(self) -> dict[str, Any] | None:
        """The latest rollout of ``loop.rollout.name``, running or ended (``latest_rollout``), or None."""
        return latest_rollout(self.registry, self.name, now=time.time())

    def publish_recent(self, bars: Any) -> None:
        """Nothing to do: the controller processes read the loop's own file (``recent_bars_path``)."""

    def _spawn(self) -> int:
        argv = [sys.executable, "-m", "tideline", "--registry", self.registry.store.uri]
        if self.config_path is not None:
            argv += ["--config", str(self.config_path)]
        argv += ["rollout", "resume", "--name", self.name]
        log_path = Path(self.s.home) / "serving" / "logs" / f"rollout-{self.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as logf:
            p = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
        return p.pid

    def restart(self) -> str:
        """Spawn a new ``tideline rollout resume`` process for the rollout in flight; what was done (with its pid)."""
        pid = self._spawn()
        return f"restarted the controller of rollout {self.name} (pid {pid})"

    def start(self, candidate: str, baseline: str, reason: str) -> str:
        """Create the rollout of ``candidate`` against ``baseline``, set the ``candidate`` alias and spawn its
        controller process; what was done.

        Raises ``ConfigError`` for invalid ``loop.rollout`` settings, ``PolicyError`` while a rollout of that name is
        still running, and the registry's errors (e.g. ``VersionNotFound``).
        """
        spec = rollout_spec(self.s.loop.rollout, candidate, baseline, self.bars)
        create_rollout(self.registry.store, spec, time.time())
        self.registry.set_alias("candidate", candidate, reason=f"loop: {reason}"[:300], actor="loop")
        pid = self._spawn()
        return (f"started rollout {self.name}: {candidate} vs production {baseline} (shadow "
                f"{spec.shadow.min_duration_s:g} s, canary {'/'.join(map(str, spec.canary_weights))}%; "
                f"controller pid {pid})")
