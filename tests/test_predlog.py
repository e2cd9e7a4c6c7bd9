"""The prediction log's writer: a row it cannot hold never holds the others hostage; a store outage loses
nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tideline.registry.store import FileStore
from tideline.serving import metrics as m
from tideline.serving.predlog import DEAD_PREFIX, PredictionLog, read_predictions

AT = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def record(log: PredictionLog, rid: str, bar_times: list[datetime | None], version: str = "v1") -> None:
    n = len(bar_times)
    log.record(request_id=rid, X=np.arange(n * 3, dtype=np.float64).reshape(n, 3),
               symbols=[f"S{i}" for i in range(n)], bar_times=bar_times,
               predictions=np.linspace(-1e-3, 1e-3, n), version=version, role="active", at=AT)


def counted(outcome: str) -> float:
    return m.PREDLOG_ROWS.labels(outcome=outcome)._value.get()


def dead_letters(store: FileStore) -> list[dict[str, Any]]:
    return [json.loads(line) for key in store.list(DEAD_PREFIX)
            for line in store.get(key)[0].decode().splitlines()]


def test_a_row_the_log_cannot_hold_is_set_aside_and_the_rest_written(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    log = PredictionLog(store, flush_rows=10_000)
    good = datetime(2026, 12, 4, 11)
    record(log, "r1", [good, good])
    record(log, "r2", [good, datetime(9999, 12, 31, 23, 59, 59), None])  # one bad row among good ones
    record(log, "r3", [good])
    dead0, written0 = counted("dead_letter"), counted("written")
    assert log.flush() == 5
    assert counted("dead_letter") - dead0 == 1 and counted("written") - written0 == 5
    df = read_predictions(store)
    assert sorted(df["request_id"]) == ["r1", "r1", "r2", "r2", "r3"]
    assert df.loc[df["request_id"] == "r2", "symbol"].tolist() == ["S0", "S2"]
    (letter,) = dead_letters(store)
    assert letter["request_id"] == "r2" and letter["symbol"] == "S1" and letter["bar_time"] == "9999-12-31 23:59:59"
    assert "OutOfBounds" in letter["reason"] and letter["version"] == "v1" and letter["role"] == "active"
    # nothing stays queued: later predictions of the same (day, role, version) are written as usual
    record(log, "r4", [good])
    assert log.flush() == 1 and log._pending_rows == 0
    assert len(read_predictions(store)) == 6 and len(dead_letters(store)) == 1


class Flaky(FileStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.down = True

    def put(self, key: str, data: bytes, **kw: Any) -> Any:
        if self.down:
            raise OSError("store down")
        return super().put(key, data, **kw)


def test_a_store_outage_keeps_rows_and_dead_letters_until_it_is_back(tmp_path: Path) -> None:
    store = Flaky(tmp_path)
    log = PredictionLog(store, flush_rows=10_000)
    record(log, "r1", [datetime(2026, 12, 4, 11), datetime(1500, 1, 1)])
    assert log.flush() == 0
    assert log._pending_rows == 1 and len(log._dead) == 1  # the good row waits; it is not a dead letter
    store.down = False
    assert log.flush() == 1
    assert read_predictions(store)["request_id"].tolist() == ["r1"]
    assert [d["bar_time"] for d in dead_letters(store)] == ["1500-01-01 00:00:00"]
    assert log._pending_rows == 0 and not log._dead


@pytest.mark.parametrize("bad", [datetime(9999, 12, 31, 23, 59, 59), datetime(1, 1, 1)])
def test_the_door_refuses_what_the_log_cannot_hold(bad: datetime) -> None:
    from tideline.serving.validation import RequestError, parse_time

    with pytest.raises(RequestError) as ei:
        parse_time(bad.isoformat(), "instances[0]")
    assert ei.value.status == 422 and "outside the bar times tideline stores" in ei.value.message
    assert parse_time("2261-12-31T23:59:59", "x") == datetime(2261, 12, 31, 23, 59, 59)
