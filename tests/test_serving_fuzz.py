"""The predictor (a real ``tideline-predictor`` process on loopback) under malformed requests and broken
model files: hypothesis property tests, oversized bodies and row counts, corrupted / deleted versions in the
store during hot reload, and a quick run of ``tests/reliability/predictor.py``.

The request generator is shared with the bench (``reliability.predictor.malformed_request``); here it draws
from hypothesis (``requests()``), so a failure is shrunk to a small reproducing request.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reliability.predictor import (
    BREAK_REASON,
    BREAKS,
    MAX_BODY,
    MAX_ROWS,
    RELOAD_INTERVAL,
    SERVER_ARGS,
    V1_PATH,
    V2_PATH,
    Fixture,
    Server,
    Tally,
    _chunked_stream,
    _refusals,
    break_version,
    build_fixture,
    check_valid,
    error_of,
    raw_http,
    record,
    requests,
    start_server,
)

pytestmark = pytest.mark.slow

FUZZ = settings(max_examples=1500, derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    return build_fixture(tmp_path_factory.mktemp("fuzz"))


@pytest.fixture(scope="module")
def srv(fx: Fixture) -> Iterator[Server]:
    s = start_server(fx, *SERVER_ARGS, name="fuzz")
    yield s
    assert s.alive(), s.log.read_text()[-3000:]
    assert s.stop() == 0


_STRATEGY: dict[str, Any] = {}


def _requests(fx: Fixture) -> Any:
    if "s" not in _STRATEGY:
        _STRATEGY["s"] = requests(fx.columns, fx.instances(3))
    return _STRATEGY["s"]


# ---------------------------------------------------------------------------------- property tests


def test_malformed_requests_get_a_4xx_with_a_message_never_a_5xx(fx: Fixture, srv: Server) -> None:
    tally = Tally()

    @FUZZ
    @given(data=st.data())
    def prop(data: st.DataObject) -> None:
        req = data.draw(_requests(fx), label="request")
        problem = record(srv, fx, tally, req)  # also checks a valid request every 25 (exact predictions)
        assert problem is None, problem

    prop()
    assert srv.alive()
    assert tally.sent >= 1500 and tally.valid_checked >= 50 and tally.valid_wrong == 0
    assert not any(code >= 500 or code == 0 for code in tally.statuses), tally.statuses
    assert sum(v for k, v in tally.statuses.items() if 400 <= k < 500) > 0.9 * tally.sent, tally.statuses


_BAD_CELLS = (st.none() | st.booleans() | st.text(max_size=10) | st.lists(st.floats(), max_size=2)
              | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
              | st.floats(min_value=3.5e38, allow_infinity=False)  # (NaN/Infinity are not JSON: v1 says 400)
              | st.floats(max_value=-3.5e38, allow_infinity=False)
              | st.integers(min_value=10**39, max_value=10**300))  # beyond float64 the JSON parser says 400


@settings(max_examples=300, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), value=_BAD_CELLS, v2=st.booleans())
def test_one_bad_cell_is_a_422_that_names_its_column(fx: Fixture, srv: Server, data: st.DataObject,
                                                     value: Any, v2: bool) -> None:
    column = data.draw(st.sampled_from(fx.columns), label="column")
    rows = fx.instances(3)
    row = data.draw(st.integers(0, 2), label="row")
    rows[row][column] = value
    if v2:
        body = {"inputs": [{"name": c, "shape": [3], "datatype": "FP64", "data": [r[c] for r in rows]}
                           for c in fx.columns]}
        r = srv.client.post(V2_PATH, json=body)
    else:
        r = srv.client.post(V1_PATH, json={"instances": rows})
    assert r.status_code == 422, r.text
    err = error_of(r.content)
    assert repr(column) in err and "\n" not in err, err
    assert r.headers["x-model-version"] == "v1"


@settings(max_examples=200, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(missing=st.sets(st.integers(0, 56), min_size=1, max_size=5),
       extra=st.sets(st.text(min_size=1, max_size=12).filter(lambda s: not s.startswith(("ret_", "rvol"))),
                     max_size=3))
def test_missing_and_extra_columns_are_named(fx: Fixture, srv: Server, missing: set[int], extra: set[str]) -> None:
    cols = fx.columns
    inst = fx.instances(1)[0]
    gone = sorted(cols[i % len(cols)] for i in missing)
    for c in gone:
        del inst[c]
    extra = {e for e in extra if e not in cols and e not in ("symbol", "timestamp")}
    for e in extra:
        inst[e] = 1.0
    r = srv.client.post(V1_PATH, json={"instances": [inst]})
    assert r.status_code == 422, r.text
    err = error_of(r.content)
    assert repr(gone[0]) in err and "lacks" in err, err  # missing features are reported first


# ---------------------------------------------------------------------------------- oversized


def test_a_declared_gigabyte_is_refused_at_once_without_waiting_for_it(srv: Server) -> None:
    rss0 = srv.rss()
    for path in (V1_PATH, V2_PATH):
        # 4 bytes of the declared 1 GB are sent: a 413 (not a timeout) means it answered on the header
        status, _, body = raw_http(srv.port, (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                                              f"\r\nContent-Length: {10**9}\r\n\r\n{{\"in").encode(), timeout=5)
        assert status == 413 and f"the limit is {MAX_BODY}" in error_of(body), body
    # a lying length that is shorter than the body: the rest is not taken for a second request
    body = json.dumps({"instances": []}).encode()
    status, headers, text = raw_http(srv.port, (f"POST {V1_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: "
                                                f"application/json\r\nContent-Length: 5\r\n\r\n").encode() + body)
    assert 400 <= status < 500 and error_of(text) and headers["content-type"] == "application/json"
    assert srv.rss() - rss0 < 32 << 20


def test_a_chunked_stream_over_the_limit_gets_413_early_and_memory_stays_flat(srv: Server) -> None:
    peak = [srv.rss()]
    rss0 = peak[0]
    status, err, seconds, follow = _chunked_stream(srv.port, 48 << 20,
                                                   sample=lambda: peak.append(srv.rss()))
    assert status == 413 and "--max-body-bytes" in err
    assert seconds < 2.0
    assert follow == 422  # the discarded stream left the connection usable: the next request was parsed
    assert max(peak) - rss0 < 32 << 20, (max(peak) - rss0) / 2**20


def test_oversized_bodies_with_a_length_get_413(fx: Fixture, srv: Server) -> None:
    for size in (MAX_BODY + 1, 4 << 20):
        for path in (V1_PATH, V2_PATH):
            r = srv.client.post(path, content=b"{" * size, headers={"content-type": "application/json"})
            assert r.status_code == 413 and "--max-body-bytes" in error_of(r.content), r.text
    assert check_valid(srv, fx, 3) is None


@pytest.mark.parametrize("n_rows", [MAX_ROWS + 1, 50 * MAX_ROWS])
def test_the_row_count_is_refused_before_any_row_is_checked(fx: Fixture, srv: Server, n_rows: int) -> None:
    r = srv.client.post(V1_PATH, json={"instances": [{"bogus": "?"}] * n_rows})  # every row invalid
    assert r.status_code == 422 and f"{n_rows} rows in one request; the limit is {MAX_ROWS}" in error_of(r.content)
    first, rest = fx.columns[0], fx.columns[1:]
    r = srv.client.post(V2_PATH, json={"inputs": [
        {"name": first, "shape": [n_rows], "datatype": "FP64", "data": ["?"] * n_rows},
        *({"name": c, "shape": [1], "datatype": "BOOL", "data": [None]} for c in rest)]})
    assert r.status_code == 422 and f"{n_rows} rows in one request" in error_of(r.content), r.text


def test_protocol_level_errors_and_odd_routes_get_json_4xx(fx: Fixture, srv: Server) -> None:
    for raw in (b"GARBAGE\r\n\r\n", f"POST {V1_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{{}}".encode(),
                f"POST {V1_PATH} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".encode()):
        status, headers, body = raw_http(srv.port, raw)
        assert status == 400 and headers["content-type"] == "application/json" and error_of(body), body
    for method, path, status in (("POST", "/v1/models/tideline:explain", 404),
                                 ("POST", "/v2/models/tideline/versions/v9/infer", 404),
                                 ("POST", "/v2/repository/models/tideline/unload", 403),
                                 ("GET", V1_PATH, 405), ("POST", "/v1/models/..%2Fx:predict", 404),
                                 ("POST", "/nowhere", 404)):
        r = srv.client.request(method, path, json={})
        assert r.status_code == status and error_of(r.content), (method, path, r.status_code, r.text)
    r = srv.client.post(V2_PATH, content=b"{}", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "application/json" in error_of(r.content)
    # the repository API is refused: the model is still served
    assert check_valid(srv, fx, 5) is None


# ---------------------------------------------------------------------------------- broken model files


@pytest.fixture(scope="module")
def reload_srv(fx: Fixture, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    fx.registry.promote("v1", reason="test")
    s = start_server(fx, "--ref", "production", "--reload-interval", str(RELOAD_INTERVAL), "--no-prediction-log",
                     name="reload", tmpdir=tmp_path_factory.mktemp("predictor-tmp"))
    yield s
    assert s.stop() == 0


@pytest.mark.parametrize("how", BREAKS)
def test_a_broken_version_in_the_store_is_refused_and_the_old_one_keeps_serving(
        fx: Fixture, reload_srv: Server, how: str) -> None:
    srv = reload_srv
    current = srv.client.post(V1_PATH, json={"instances": fx.instances(1)}).headers["x-model-version"]
    assert current in ("v1", "v2")
    v = fx.register_copy("v2" if current == "v1" else "v1")
    break_version(fx, v, how)
    failed0 = srv.metric("tideline_model_reloads_total", outcome="failed")
    fx.registry.promote(v, reason=f"test: {how}")
    t0 = time.monotonic()
    while srv.metric("tideline_model_reloads_total", outcome="failed") <= failed0:
        assert time.monotonic() - t0 < 15, "no failed reload counted"
        time.sleep(0.05)
    # keep the alias on the broken version a while: the old version answers, retries back off
    answers = []
    while time.monotonic() - t0 < 2.0:
        n, start = 3, len(answers) % 50
        r = srv.client.post(V1_PATH, json={"instances": fx.instances(n, start)})
        answers.append((r.status_code, r.headers.get("x-model-version"), r.json().get("predictions"), n, start))
    assert all(code == 200 and ver == current and preds == fx.expected(current, n, start)
               for code, ver, preds, n, start in answers), answers[:3]
    window = time.monotonic() - t0
    lines = _refusals(srv.log, v)
    assert lines and all(BREAK_REASON[how] in ln and f"still serving {current}" in ln for ln in lines), lines
    assert len(lines) <= 2 + math.ceil(math.log2(1 + window / 0.5)), (len(lines), window)  # ~10 polls
    assert srv.tmpdir is not None and not list(srv.tmpdir.iterdir())  # no temp dir left by a failed reload

    # the store is fixed (a good version promoted): the next poll loads it
    good = "v2" if current == "v1" else "v1"
    ok0 = srv.metric("tideline_model_reloads_total", outcome="ok")
    fx.registry.promote(good, reason="test: fixed")
    t1 = time.monotonic()
    while srv.client.post(V1_PATH, json={"instances": fx.instances(1)}).headers["x-model-version"] != good:
        assert time.monotonic() - t1 < 15, "the good version was not loaded"
        time.sleep(0.05)
    assert srv.metric("tideline_model_reloads_total", outcome="ok") == ok0 + 1
    assert check_valid(srv, fx, 7, version=good) is None


# ---------------------------------------------------------------------------------- the request generator
def test_the_generator_reaches_every_kind_of_request(fx: Fixture) -> None:
    from reliability.predictor import RAW_KINDS, RandomDraw, malformed_request

    d, good = RandomDraw(7), fx.instances(3)
    reqs = [malformed_request(d, fx.columns, good) for _ in range(3000)]
    kinds = {r.kind for r in reqs}
    assert {"v1", "v2"} | {f"raw:{k}" for k in RAW_KINDS} <= kinds, kinds
    must = " ".join(r.must_refuse for r in reqs)  # the defects no answer may accept are all drawn
    for defect in ("Content-Encoding gzip", "Content-Type text/plain", "a bad timestamp '9999-12-31T23:59:59'",
                   "a bad symbol 'A\\x00B'", "INT8 value 1000", "UINT64 value -1"):
        assert defect in must, defect

