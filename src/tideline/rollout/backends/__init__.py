"""Traffic backends: how a rollout's actions reach the world. Analysis never imports a backend.

A backend moves traffic (canary weight, shadow mirror, which slot is active), starts and stops the
candidate, reads the raw counters the analysis needs, and moves aliases in the registry. Registry moves go
through ``RegistryOps`` so every backend changes the registry the same way (compare-and-swap, production
never retired, idempotent). ``apply_action`` maps the machine's actions onto a backend.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from tideline.errors import AliasConflict, PolicyError, TidelineError, VersionNotFound
from tideline.rollout import machine as m

if TYPE_CHECKING:
    from tideline.monitoring.outcomes import LiveOutcomes
    from tideline.registry import Registry
    from tideline.rollout.analysis import MetricsSnapshot

log = logging.getLogger(__name__)


class BackendError(TidelineError):
    """The backend could not apply an action right now (retried on the next interval); exit code 15."""

    exit_code = 15


PERMANENT_ERRORS: tuple[type[BaseException], ...] = (AliasConflict, PolicyError, VersionNotFound)
"""Errors that retrying cannot fix: the rollout fails instead (e.g. production moved meanwhile)."""


@runtime_checkable
class Backend(Protocol):
    """What the rollout controller needs from a traffic provider. Every method must be idempotent."""

    # traffic
    def set_weight(self, percent: int) -> None: ...
    def set_shadow(self, version: str | None) -> None: ...
    def deploy_canary(self, version: str) -> None: ...
    def remove_canary(self) -> None: ...
    def set_active(self, version: str) -> None: ...

    # raw metrics. The one metrics contract: cumulative counters per (version, role) that only grow except at
    # a reset (a restarted predictor or reader); the reconciler takes every increase (``analysis.delta``)
    def read_metrics(self) -> MetricsSnapshot: ...
    def candidate_up(self, version: str) -> bool | None: ...
    def read_outcomes(self, candidate: str, baseline: str) -> LiveOutcomes | None: ...
    def read_paired_predictions(self, candidate: str) -> tuple[list[float], list[float]] | None: ...

    # registry
    def production(self) -> str | None: ...
    def promote(self, version: str, *, expected: str, reason: str) -> None: ...
    def retire(self, version: str, *, reason: str) -> None: ...
    def mark(self, version: str, status: str) -> None: ...
    def set_kill_switch(self, on: bool, *, reason: str) -> None: ...


class RegistryOps:
    """Registry half of a backend: idempotent, compare-and-swap alias and status moves."""

    actor = "rollout"

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def production(self) -> str | None:
        return self.registry.aliases().get("production")

    def promote(self, version: str, *, expected: str, reason: str) -> None:
        if self.production() == version:
            return  # already done (a restarted controller re-applies its actions)
        self.registry.promote(version, reason=reason, actor=self.actor, expected=expected)

    def retire(self, version: str, *, reason: str) -> None:
        from tideline.registry import Status

        aliases = self.registry.aliases()
        if aliases.get("production") == version:
            log.warning("not retiring %s: it is production", version)
            return
        for alias in ("candidate", "shadow"):
            if aliases.get(alias) == version:
                try:
                    self.registry.set_alias(alias, None, expected=version, reason=reason, actor=self.actor)
                except AliasConflict:  # moved meanwhile to another version: not ours to clear
                    pass
        self.registry.set_status(version, Status.RETIRED, reason=reason, actor=self.actor)

    def set_kill_switch(self, on: bool, *, reason: str) -> None:
        self.registry.set_kill_switch(on, reason=reason, actor=self.actor)

    def mark(self, version: str, status: str) -> None:
        from tideline.registry import Status

        st = Status(status)
        aliases = self.registry.aliases()
        if aliases.get("production") == version:
            return
        self.registry.set_status(version, st, reason=f"rollout {st.value.lower()}", actor=self.actor)
        if st == Status.SHADOW:
            self.registry.set_alias("shadow", version, reason="rollout shadow", actor=self.actor)
        elif aliases.get("shadow") == version:
            try:
                self.registry.set_alias("shadow", None, expected=version, reason="shadow done", actor=self.actor)
            except AliasConflict:
                pass


def apply_action(backend: Backend, action: m.Action, spec: m.RolloutSpec) -> None:
    """Apply one machine action through ``backend``."""
    if isinstance(action, m.SetShadow):
        backend.set_shadow(action.version)
    elif isinstance(action, m.DeployCanary):
        backend.deploy_canary(action.version)
    elif isinstance(action, m.SetWeight):
        backend.set_weight(action.percent)
    elif isinstance(action, m.RemoveCanary):
        backend.remove_canary()
    elif isinstance(action, m.SetActive):
        backend.set_active(action.version)
    elif isinstance(action, m.MarkInRegistry):
        backend.mark(action.version, action.status)
    elif isinstance(action, m.PromoteInRegistry):
        why = ("the guard reverted to the previous version" if action.version == spec.baseline
               else "canary analysis passed")
        backend.promote(action.version, expected=action.expected_production, reason=f"rollout {spec.name}: {why}")
    elif isinstance(action, m.KillSwitch):
        backend.set_kill_switch(action.on, reason=f"rollout {spec.name}: {action.reason}"[:500])
    elif isinstance(action, m.RetireInRegistry):
        backend.retire(action.version, reason=f"rollout {spec.name} rolled back")
    elif isinstance(action, m.Event):
        log.info("rollout %s: %s", spec.name, action.msg)
    else:  # pragma: no cover - every action type is handled above
        raise TypeError(f"unknown action {action!r}")


__all__ = ["PERMANENT_ERRORS", "Backend", "BackendError", "RegistryOps", "apply_action"]
