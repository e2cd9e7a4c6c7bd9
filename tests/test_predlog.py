"""The prediction log's writer: a row it cannot hold never holds the others hostage; a store outage loses
nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from tideline.monitoring.predictions import DEAD_PREFIX, read_predictions
from tideline.serving import metrics as m
from tideline.serving.predlog import PredictionLog
from tideline.store import FileStore

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
    assert letter["request_id"] == "r2" and letter["symbol"] == "S1" and letter["bar_time"] == "9999-12-31T23:59:59"
    assert "out of bounds" in letter["reason"] and letter["version"] == "v1" and letter["role"] == "active"
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
    assert [d["bar_time"] for d in dead_letters(store)] == ["1500-01-01T00:00:00"]
    assert log._pending_rows == 0 and not log._dead


@pytest.mark.parametrize("bad", [datetime(9999, 12, 31, 23, 59, 59), datetime(1, 1, 1)])
def test_the_door_refuses_what_the_log_cannot_hold(bad: datetime) -> None:
    from tideline.serving.validation import RequestError, parse_time

    with pytest.raises(RequestError) as ei:
        parse_time(bad.isoformat(), "instances[0]")
    assert ei.value.status == 422 and "outside the bar times tideline stores" in ei.value.message
    assert parse_time("2261-12-31T23:59:59", "x") == datetime(2261, 12, 31, 23, 59, 59)


# ---- the columnar validation path agrees with the row-by-row one ------------------------------------
def test_the_batch_path_accepts_and_refuses_exactly_what_the_row_path_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """``_fast_v1`` types a whole batch at once and falls back to the row loop on anything unusual: over
    thousands of generated bodies (the reliability fuzz generator's v1 mutations on 10-row batches) both
    paths give the same answer — the same refusal message, or the same matrix, symbols and bar times."""
    import random

    from reliability.predictor import RandomDraw, _v1_body
    from tideline.serving import validation as v

    cols = [f"f{i}" for i in range(12)]
    rng = random.Random(3)
    good = [{**{c: rng.uniform(-2, 2) for c in cols}, "symbol": f"S{i}", "timestamp": "2024-05-01T10:00:00"}
            for i in range(10)]
    good[2]["f3"], good[4]["f5"] = 1.0, 0.0  # values a boolean would also take
    schema = v.Schema(required=tuple(cols), max_rows=100)
    d = RandomDraw(11)

    def answer(payload: Any, fast: bool) -> Any:
        monkeypatch.setattr(v, "_FAST_MIN_ROWS", 1 if fast else 10**9)
        try:
            b = v.validate_v1(payload, schema)
        except v.RequestError as e:
            return (e.status, e.message)
        return (b.X.tobytes(), tuple(b.symbols), b.bar_times.tobytes())

    def decoded(payload: Any) -> Any:
        """The one-pass path on the body's bytes: a batch, or None (then the dict paths answer)."""
        try:
            body = orjson.dumps(payload)
        except (TypeError, orjson.JSONEncodeError):
            return None
        b = v.decode_v1(body, schema)
        return None if b is None else (b.X.tobytes(), tuple(b.symbols), b.bar_times.tobytes())

    fast_taken = decode_taken = 0
    for k in range(3000):
        payload = {"instances": [dict(x) for x in good]} if k % 10 == 0 else _v1_body(d, cols, good)[0]
        if isinstance(payload, dict) and isinstance(payload.get("instances"), list) and k % 3 == 0:
            for inst in payload["instances"]:  # also without symbol and timestamp
                if isinstance(inst, dict):
                    inst.pop("symbol", None), inst.pop("timestamp", None)
        slow, fast = answer(payload, False), answer(payload, True)
        assert fast == slow, (payload, slow, fast)
        fast_taken += isinstance(fast[0], bytes) and len(payload["instances"]) >= 1
        one_pass = decoded(payload)
        assert one_pass is None or one_pass == slow, (payload, slow, one_pass)
        decode_taken += one_pass is not None
    assert fast_taken > 300  # valid batches were common enough to exercise the fast path
    assert decode_taken >= fast_taken - 10  # and the one-pass path took nearly every one of them
    whole = orjson.dumps({"instances": good})
    for i in range(0, len(whole), 7):  # a byte that is not UTF-8 anywhere: not taken, never raised
        assert v.decode_v1(whole[:i] + b"\xa9" + whole[i + 1:], schema) is None
