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
    def set_weight(self, percent: int) -> None:
        """Send ``percent`` (0-100) of live traffic to the canary, the rest to the active version."""
    def set_shadow(self, version: str | None) -> None:
        """Mirror every request to ``version`` (answers discarded, predictions logged); None stops the mirror."""
    def deploy_canary(self, version: str) -> None:
        """Start serving ``version`` as the canary (no traffic until ``set_weight``)."""
    def remove_canary(self) -> None:
        """Take all traffic (and the shadow mirror) off the canary, then stop it."""
    def set_active(self, version: str) -> None:
        """Make ``version`` the active version that takes all traffic; canary and shadow end."""

    # raw metrics. The one metrics contract: cumulative counters per (version, role) that only grow except at
    # a reset (a restarted predictor or reader); the reconciler takes every increase (``analysis.delta``)
    def read_metrics(self) -> MetricsSnapshot:
        """The predictors' cumulative counters per (version, role), as they read now."""
    def candidate_up(self, version: str) -> bool | None:
        """Whether the deployed ``version`` answers its health check; None when it is not deployed or unknown."""
    def read_outcomes(self, candidate: str, baseline: str) -> LiveOutcomes | None:
        """Realized live outcomes of ``candidate`` and ``baseline``; None when there are none to read."""
    def read_paired_predictions(self, candidate: str) -> tuple[list[float], list[float]] | None:
        """(candidate, active) predictions for the same shadowed requests; None when none."""

    # registry
    def production(self) -> str | None:
        """The registry's production version, or None."""
    def promote(self, version: str, *, expected: str, reason: str) -> None:
        """Promote ``version`` if production is still ``expected`` (compare-and-swap); no-op when already done."""
    def retire(self, version: str, *, reason: str) -> None:
        """Clear ``version``'s candidate/shadow aliases and mark it RETIRED (never production)."""
    def mark(self, version: str, status: str) -> None:
        """Set ``version``'s registry status (and the ``shadow`` alias for SHADOW); production is left alone."""
    def set_kill_switch(self, on: bool, *, reason: str) -> None:
        """Throw (``on``) or lift the registry's kill switch: every predictor answers flat while it is on."""


class RegistryOps:
    """Registry half of a backend: idempotent, compare-and-swap alias and status moves."""

    actor = "rollout"

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def production(self) -> str | None:
        """The registry's ``production`` alias, or None."""
        return self.registry.aliases().get("production")

    def promote(self, version: str, *, expected: str, reason: str) -> None:
        """Promote ``version`` with production expected to be ``expected``; nothing to do when it is production.

        Raises ``AliasConflict`` when production moved meanwhile, and ``registry.promote``'s other errors
        (``VersionNotFound``, ``PolicyError`` ...).
        """
        if self.production() == version:
            return  # already done (a restarted controller re-applies its actions)
        self.registry.promote(version, reason=reason, actor=self.actor, expected=expected)

    def retire(self, version: str, *, reason: str) -> None:
        """Clear the ``candidate``/``shadow`` aliases still pointing at ``version`` (compare-and-swap) and mark it
        RETIRED; production is never retired (logged and left alone). ``VersionNotFound`` for an unknown version.
        """
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
        """Throw (``on``) or lift the registry's kill switch, with ``reason`` in its history."""
        self.registry.set_kill_switch(on, reason=reason, actor=self.actor)

    def mark(self, version: str, status: str) -> None:
        """Set ``version``'s status (a ``Status`` value; ``ValueError`` otherwise) unless it is production; SHADOW
        also points the ``shadow`` alias at it, any other status clears that alias if it still points there.
        """
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
