"""Rollouts: shadow -> canary steps -> promote, or automatic rollback (Flagger's split, one scheduler loop).

* ``analysis``   pure: metrics snapshots and live outcomes in, ``AnalysisResult`` (pass/fail/inconclusive) out;
* ``machine``    pure: ``RolloutSpec``, ``RolloutStatus``, ``advance(...) -> (status, actions)``;
* ``controller`` the loop: status in the registry store (``rollouts/<name>.json``, compare-and-swap),
                 analysis, machine, then the actions through a backend;
* ``backends``   the ``Backend`` protocol and ``local`` (predictor processes + ``router``).

``router`` is not imported here: it runs as ``python -m tideline.rollout.router``.
"""

from tideline.rollout.analysis import (
    AnalysisInput,
    AnalysisResult,
    Check,
    LiveOutcomes,
    MetricsSnapshot,
    Thresholds,
    analyze,
    delta,
    p99_from_histogram,
)
from tideline.rollout.controller import RolloutController, load_rollout
from tideline.rollout.machine import Phase, RolloutSpec, RolloutStatus, ShadowSpec, advance, desired_actions

__all__ = [
    "AnalysisInput", "AnalysisResult", "Check", "LiveOutcomes", "MetricsSnapshot", "Phase",
    "RolloutController", "RolloutSpec", "RolloutStatus", "ShadowSpec", "Thresholds", "advance",
    "analyze", "delta", "desired_actions", "load_rollout", "p99_from_histogram",
]
