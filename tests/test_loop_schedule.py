"""When the loop ticks (cron in a time zone) and when it may retrain (an exchange's sessions and holidays)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tideline.config import LoopScheduleConfig, load_settings
from tideline.errors import ConfigError
from tideline.loop.schedule import Schedule


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


@pytest.mark.parametrize(("cron", "tz", "after", "want"), [
    ("0 * * * *", "UTC", "2024-03-08T10:15:00+00:00", "2024-03-08T11:00:00+00:00"),
    # 22:30 New York on weekdays: a Friday evening, then over the weekend to Monday
    ("30 22 * * 1-5", "America/New_York", "2024-03-08T12:00:00+00:00", "2024-03-09T03:30:00+00:00"),
    ("30 22 * * 1-5", "America/New_York", "2024-03-09T04:00:00+00:00", "2024-03-12T02:30:00+00:00"),  # DST began
    ("0 6 * * *", "Europe/London", "2024-07-01T06:00:00+00:00", "2024-07-02T05:00:00+00:00"),
])
def test_next_tick_reads_the_cron_expression_in_its_time_zone(cron: str, tz: str, after: str, want: str) -> None:
    assert Schedule(LoopScheduleConfig(cron=cron, timezone=tz)).next_tick(at(after)) == at(want)


@pytest.mark.parametrize(("when", "is_open"), [
    ("2024-03-08T15:00:00+00:00", True),     # a Friday, 10:00 in New York
    ("2024-03-08T22:00:00+00:00", False),    # after the close
    ("2024-03-09T15:00:00+00:00", False),    # a Saturday
    ("2024-12-25T15:00:00+00:00", False),    # Christmas: a holiday
    ("2024-07-04T15:00:00+00:00", False),    # Independence Day
])
def test_sessions_and_holidays_of_an_exchange(when: str, is_open: bool) -> None:
    s = Schedule(LoopScheduleConfig(calendar="XNYS", retrain="closed"))
    assert s.exchange_open(at(when)) is is_open
    allowed, why = s.may_retrain(at(when))
    assert allowed is not is_open and ("in session" in why) is is_open


def test_bad_schedules_are_config_errors() -> None:
    for bad, match in [({"cron": "every hour"}, "not a 5-field cron"), ({"cron": "0 0 * * * *"}, "5-field"),
                       ({"timezone": "Mars/Olympus"}, "unknown time zone"),
                       ({"retrain": "closed"}, "needs a calendar")]:
        with pytest.raises(ConfigError, match=match):
            load_settings(loop={"schedule": bad})
    with pytest.raises(ConfigError, match="unknown exchange calendar 'XXXX'"):
        Schedule(LoopScheduleConfig(calendar="XXXX")).exchange_open(at("2024-03-08T15:00:00+00:00"))
    assert Schedule(LoopScheduleConfig()).may_retrain(at("2024-03-08T15:00:00+00:00"))[0] is True
