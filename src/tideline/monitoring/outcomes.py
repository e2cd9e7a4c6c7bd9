"""Live outcomes: what served predictions turned out to be, as the rollout analysis and the guard take them.

Filled by ``tideline.monitoring.feedback.LiveOutcomeSource`` (the prediction log joined with later bars); pure data, no
I/O, so the analysis stays testable with hand-made outcomes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["LiveOutcomes", "PairedOutcomes", "WatchOutcomes"]


@dataclass(frozen=True)
class WatchOutcomes:
    """Realized outcomes of production and previous on the same requests since the promotion, one row per
    (symbol, bar), in bar-time order: ``times[i]`` (any sortable bar-time label) and the two hits (1/0)."""

    times: Sequence[Any] = ()
    production_hits: Sequence[float] = ()
    previous_hits: Sequence[float] = ()

    def __post_init__(self) -> None:
        if not len(self.times) == len(self.production_hits) == len(self.previous_hits):
            raise ValueError("watch outcomes must be index-aligned")


@dataclass(frozen=True)
class PairedOutcomes:
    """Realized outcomes of the candidate and the active model on the same requests (shadowed ones), one row
    per (symbol, bar): ``times[i]`` (any sortable bar-time label) and the two hits (1/0)."""

    times: Sequence[Any] = ()
    candidate_hits: Sequence[float] = ()
    active_hits: Sequence[float] = ()
    candidate_net: Sequence[float] = ()
    """each row's net return of the candidate's position (after costs; empty: not measured)"""
    active_net: Sequence[float] = ()

    def __post_init__(self) -> None:
        if not len(self.times) == len(self.candidate_hits) == len(self.active_hits):
            raise ValueError("paired outcomes must be index-aligned")
        if (len(self.candidate_net) or len(self.active_net)) and not (
                len(self.candidate_net) == len(self.active_net) == len(self.times)):
            raise ValueError("paired net returns must be index-aligned with the outcomes")


@dataclass
class LiveOutcomes:
    """Realized outcomes of live predictions (from the prediction log joined with later bars).

    ``*_errors``: prediction - realized forward return, one per labelled prediction;
    ``*_hits``: 1 when the predicted direction was right, else 0.
    """

    candidate_errors: Sequence[float] = ()
    active_errors: Sequence[float] = ()
    candidate_hits: Sequence[float] = ()
    active_hits: Sequence[float] = ()
    paired: PairedOutcomes | None = None
    """the two versions' hits on the same (symbol, bar) keys, with the bar times (the sequential test of
    ``tideline.rollout.analysis`` reads them); None when they share too few."""
    kinds: tuple[str, str] | None = None
    """what the candidate's and the active model's predictions are (``return`` forecasts or ``position`` s, see
    ``tideline.models.output_kind``); when they differ, errors and prediction distributions are not compared"""
    watch: WatchOutcomes | None = None
    """after the candidate was promoted: its outcomes and the baseline's (in shadow) on the same requests,
    for the guard (``tideline.rollout.guard``); None before the promotion."""
