"""Time, in one place: the clock type every long-running part takes, and the UTC helpers.

* ``Clock``: ``now()`` in epoch seconds and ``sleep(seconds)``. The rollout controller and the operator take
  one; tests pass a ``FakeClock`` that only moves when slept on, so nothing waits on the wall.
* ``utcnow``, ``aware``, ``utc_timestamp``: every time tideline stores or compares is timezone-aware UTC;
  naive input is taken as UTC (bar files and logs written without a zone are UTC by contract).

>>> aware(datetime(2024, 5, 1, 12))
datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.timezone.utc)
>>> c = FakeClock(start=100.0); c.sleep(5); c.now()
105.0
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Clock", "FakeClock", "Now", "SystemClock", "aware", "utc_timestamp", "utcnow"]

Now = Callable[[], datetime]
"""What the triggers and the loop take: the current time as an aware datetime. A ``SystemClock`` or a
``FakeClock`` is one too (calling it gives its ``now()`` as a datetime), so one clock drives both halves."""


class Clock(Protocol):
    """Epoch seconds now, a way to wait, and (called) now as an aware UTC datetime."""

    def now(self) -> float:
        """Seconds since the epoch, now."""
    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (a fake clock just moves forward)."""
    def __call__(self) -> datetime: ...


class SystemClock:
    """The wall clock (``time.time``, ``time.sleep``)."""

    def now(self) -> float:
        """``time.time()``: epoch seconds on the wall clock."""
        return time.time()

    def sleep(self, seconds: float) -> None:
        """``time.sleep(seconds)``: blocks the calling thread."""
        time.sleep(seconds)

    def __call__(self) -> datetime:
        return datetime.fromtimestamp(self.now(), UTC)


class FakeClock:
    """A clock that only moves when slept on (or advanced); ``on_sleep`` runs before time moves."""

    def __init__(self, start: float = 1_700_000_000.0, on_sleep: Callable[[float], None] | None = None) -> None:
        self.t = float(start)
        self.on_sleep = on_sleep

    def now(self) -> float:
        """The fake time: ``start`` plus every second slept or advanced so far."""
        return self.t

    def sleep(self, seconds: float) -> None:
        """Run ``on_sleep(seconds)`` (if set), then move the clock ``seconds`` forward; never blocks."""
        if self.on_sleep is not None:
            self.on_sleep(seconds)
        self.t += seconds

    def __call__(self) -> datetime:
        return datetime.fromtimestamp(self.t, UTC)


def utcnow() -> datetime:
    """Timezone-aware UTC now (the default clock of the triggers and the loop)."""
    return datetime.now(UTC)


def aware(t: datetime) -> datetime:
    """``t`` in UTC; a naive datetime is taken as UTC."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def utc_timestamp(value: Any) -> pd.Timestamp | None:
    """A tz-aware UTC ``pandas.Timestamp`` from a string, datetime or Timestamp (naive = UTC); None stays None.

    Raises ``ValueError``/``TypeError`` (pandas') for a value that is not a time; callers that take the value
    from a user turn that into a ``ConfigError`` naming the option.
    """
    if value is None:
        return None
    import pandas as pd

    ts = pd.Timestamp(value)
    if pd.isna(ts):
        raise ValueError(f"{value!r} is not a timestamp")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
