"""A lease: who may act on a shared document, and until when — the one lease of tideline.

A lease lives inside the document it guards (a rollout document's controller, the run lock's run) and is
taken, renewed and released with that document's compare-and-swap write (``tideline.store.cas``), so of two
contenders exactly one holds it. A holder that dies simply stops renewing: once ``until`` has passed the
lease is free, and the next contender takes it over.

    >>> lease = Lease().taken("controller-a", now=100.0, ttl=90.0)
    >>> lease.held_by_other("controller-b", now=150.0), lease.held_by_other("controller-b", now=200.0)
    (True, False)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Lease:
    """Who holds a shared document's lease and until when (epoch seconds); frozen, so every change is a new lease."""
    holder: str | None = None
    """who holds it (``None``: nobody, e.g. released)."""
    until: float = 0.0
    """when it runs out (epoch seconds)."""

    def live(self, now: float) -> bool:
        """Somebody holds it and it has not run out."""
        return self.holder is not None and self.until > now

    def held_by(self, who: str, now: float) -> bool:
        """``who`` holds it and it has not run out."""
        return self.holder == who and self.until > now

    def held_by_other(self, who: str, now: float) -> bool:
        """Another holder's lease that has not run out: ``who`` must not act."""
        return self.live(now) and self.holder != who

    def taken(self, who: str, now: float, ttl: float) -> Lease:
        """The lease held by ``who`` for ``ttl`` seconds from ``now`` (a take-over or a renewal); ``ttl`` 0 names
        the holder of one pass without keeping anybody out after it (e.g. a one-shot manual rollback)."""
        if ttl < 0:
            raise ValueError(f"a lease needs a ttl >= 0, not {ttl}")
        return Lease(who, now + ttl)

    def due(self, who: str, now: float, ttl: float, slack: float) -> bool:
        """``who`` should (re)write it: not its own, or less than ``ttl - slack`` of it is left (renewing on
        every pass of a fast loop would write the document each time)."""
        return self.holder != who or self.until - now < ttl - slack


RELEASED = Lease()
"""Nobody holds it."""

__all__ = ["RELEASED", "Lease"]
