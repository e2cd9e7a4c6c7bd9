"""When the loop ticks, and when it may retrain: a cron expression read in a time zone (croniter), and an
exchange's sessions and holidays (exchange_calendars) so that retraining can be kept to off-hours.

``loop.schedule.cron`` ("0 * * * *": every hour on the hour) in ``loop.schedule.timezone`` gives the tick
times; with ``loop.schedule.calendar`` (an exchange code such as ``XNYS``, ``XLON``, ``CMES``) and
``loop.schedule.retrain = "closed"``, a tick that would retrain while that exchange is in session records the
decision and waits: the retrain happens at the first tick after the close (nights, weekends and the
exchange's holidays are closed). Monitoring and ingest run at every tick.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd

from tideline.config import LoopScheduleConfig
from tideline.errors import ConfigError


@lru_cache(maxsize=8)
def _calendar(code: str) -> Any:
    import exchange_calendars as xcals

    try:
        return xcals.get_calendar(code)
    except Exception as e:  # InvalidCalendarName and friends
        raise ConfigError(f"loop.schedule.calendar: unknown exchange calendar {code!r} "
                          f"(exchange_calendars codes such as XNYS, XLON, CMES): {e}") from None


class Schedule:
    """When the loop ticks and may retrain, from ``loop.schedule`` (cron in a time zone, optional exchange calendar).

    An unknown calendar code raises ``ConfigError`` when first used.
    """
    def __init__(self, cfg: LoopScheduleConfig) -> None:
        self.cfg = cfg
        self.tz = ZoneInfo(cfg.timezone)

    def next_tick(self, after: datetime) -> datetime:
        """The first tick time strictly after ``after`` (aware UTC)."""
        from croniter import croniter

        local = after.astimezone(self.tz)
        nxt = croniter(self.cfg.cron, local).get_next(datetime)
        return nxt.astimezone(UTC)

    def exchange_open(self, at: datetime) -> bool | None:
        """Whether the calendar's exchange is in session at ``at`` (None: no calendar set)."""
        if not self.cfg.calendar:
            return None
        cal = _calendar(self.cfg.calendar)
        ts = pd.Timestamp(at).tz_convert("UTC").floor("min")
        if ts < cal.first_minute or ts > cal.last_minute:  # beyond the calendar's range: say closed
            return False
        return bool(cal.is_open_on_minute(ts))

    def may_retrain(self, at: datetime) -> tuple[bool, str]:
        """(allowed, why) for a retrain at ``at`` under ``loop.schedule.retrain``."""
        if self.cfg.retrain == "any":
            return True, "retraining is allowed at any time"
        is_open = self.exchange_open(at)
        if is_open:
            return False, (f"{self.cfg.calendar} is in session at {at.astimezone(self.tz):%Y-%m-%d %H:%M %Z}: "
                           "the retrain waits for the close (loop.schedule.retrain = closed)")
        return True, f"{self.cfg.calendar} is closed"
