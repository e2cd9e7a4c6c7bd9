"""S3 outages: the store's retry policy, the fault proxy, lost answers of conditional writes, and the drills.

The retry policy (``S3Store``): transient failures are retried with exponential backoff and jitter, each
retry logged, then a one-line StorageUnavailable that says it gave up; permanent answers are not retried.
The fault proxy (``tests/reliability/faultproxy.py``) plays a dead endpoint in front of moto's S3 server.
"""

from __future__ import annotations

import http.client
import logging
import socket
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ResponseStreamingError

from reliability.faultproxy import FaultProxy
from tideline.errors import ConfigError, RegistryError, StorageUnavailable
from tideline.registry import Registry, Status
from tideline.store import NotFound, PreconditionFailed, S3Store

BUCKET = "outage-tests"


def _client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "GetObject")


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, s: float) -> None:
        self.delays.append(s)


@pytest.fixture(scope="module")
def moto(s3_server: str) -> tuple[str, int]:
    import boto3

    try:
        boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=BUCKET)
    except ClientError:
        pass
    return s3_server, int(s3_server.rsplit(":", 1)[1])


@pytest.fixture()
def proxy(moto: tuple[str, int]) -> Any:
    with FaultProxy("127.0.0.1", moto[1]) as p:
        yield p


def _store(endpoint: str, prefix: str, **kw: Any) -> S3Store:
    return S3Store(BUCKET, prefix, endpoint_url=endpoint, **kw)


# ---- the retry policy -------------------------------------------------------------------------------------
def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    s = S3Store(BUCKET, "p", endpoint_url="http://127.0.0.1:9", backoff_s=0.5, max_backoff_s=4.0)
    for attempt, full in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 4.0), (12, 4.0)]:
        seen = [s.backoff(attempt) for _ in range(200)]
        assert all(full / 2 <= d <= full for d in seen), (attempt, min(seen), max(seen))
        assert max(seen) - min(seen) > full / 10  # jittered, not a fixed delay


def test_dead_endpoint_retries_then_gives_up_with_one_line(caplog: pytest.LogCaptureFixture) -> None:
    sleeps = Sleeps()
    s = S3Store(BUCKET, "p", endpoint_url="http://127.0.0.1:9", attempts=4, backoff_s=0.2, max_backoff_s=10,
                sleep=sleeps)
    with caplog.at_level(logging.WARNING, logger="tideline.store"), \
            pytest.raises(StorageUnavailable) as ei:
        s.get("state.json")
    msg = str(ei.value)
    assert msg.startswith("cannot reach S3 endpoint http://127.0.0.1:9: ") and "\n" not in msg
    assert "(gave up after 4 attempts over " in msg
    assert len(sleeps.delays) == 3  # between 4 attempts
    for i, d in enumerate(sleeps.delays):
        assert 0.1 * 2**i <= d <= 0.2 * 2**i
    retries = [r.getMessage() for r in caplog.records if "unreachable (attempt" in r.getMessage()]
    assert [f"(attempt {i}/4)" in m for i, m in enumerate(retries, 1)] == [True] * 3
    assert all("http://127.0.0.1:9" in m and "retrying in" in m for m in retries)


def test_default_policy_gives_up_on_a_dead_endpoint_in_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("TIDELINE_S3_ATTEMPTS", "TIDELINE_S3_BACKOFF_S", "TIDELINE_S3_MAX_BACKOFF_S"):
        monkeypatch.delenv(var, raising=False)
    sleeps = Sleeps()
    s = S3Store(BUCKET, "p", endpoint_url="http://127.0.0.1:9", sleep=sleeps)
    with pytest.raises(StorageUnavailable, match=r"gave up after 5 attempts over \d+\.\d s"):
        s.list("versions/")
    # the time it takes is the policy's, not the machine's: 4 backoffs of 0.5, 1, 2, 4 s with equal jitter
    # (3.75-7.5 s in all) and, where the endpoint does not even refuse, 2 s to connect per attempt
    assert len(sleeps.delays) == 4 and 3.75 <= sum(sleeps.delays) <= 7.5, sleeps.delays
    assert s._client.meta.config.connect_timeout == 2.0 and s._client.meta.config.retries["total_max_attempts"] == 1


@pytest.mark.parametrize(("error", "expected"), [
    (_client_error("AccessDenied", 403), RegistryError),
    (_client_error("NoSuchBucket", 404), RegistryError),
    (_client_error("NoSuchKey", 404), NotFound),
    (_client_error("PreconditionFailed", 412), PreconditionFailed),
    (_client_error("InvalidArgument", 400), RegistryError),
])
def test_permanent_errors_are_not_retried(error: ClientError, expected: type[Exception]) -> None:
    sleeps = Sleeps()
    s = S3Store(BUCKET, "p", endpoint_url="http://127.0.0.1:9", attempts=5, sleep=sleeps)
    calls = []

    def get_object(**kw: Any) -> Any:
        calls.append(kw)
        raise error

    s._client.get_object = get_object
    with pytest.raises(expected) as ei:
        s.get("k")
    assert not isinstance(ei.value, StorageUnavailable)
    assert len(calls) == 1 and sleeps.delays == []


@pytest.mark.parametrize("error", [_client_error("SlowDown", 503), _client_error("InternalError", 500),
                                   _client_error("RequestTimeout", 400),
                                   EndpointConnectionError(endpoint_url="http://x")])
def test_transient_errors_are_retried_then_succeed(error: Exception) -> None:
    sleeps = Sleeps()
    s = S3Store(BUCKET, "p", endpoint_url="http://127.0.0.1:9", attempts=3, sleep=sleeps)
    calls = []

    class Body:
        def read(self) -> bytes:
            return b"data"

    def get_object(**kw: Any) -> Any:
        calls.append(kw)
        if len(calls) < 3:
            raise error
        return {"Body": Body(), "ETag": '"e"'}

    s._client.get_object = get_object
    assert s.get("k") == (b"data", '"e"')
    assert len(calls) == 3 and len(sleeps.delays) == 2


def test_attempts_and_backoff_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDELINE_S3_ATTEMPTS", "2")
    monkeypatch.setenv("TIDELINE_S3_BACKOFF_S", "0.1")
    monkeypatch.setenv("TIDELINE_S3_MAX_BACKOFF_S", "0.3")
    s = S3Store(BUCKET, "p", endpoint_url="http://127.0.0.1:9", sleep=Sleeps())
    assert (s.attempts, s.backoff_s, s.max_backoff_s) == (2, 0.1, 0.3)
    with pytest.raises(StorageUnavailable, match="gave up after 2 attempts"):
        s.get("k")
    assert S3Store(BUCKET, "p", endpoint_url="http://127.0.0.1:9", attempts=7).attempts == 7  # argument wins
    for bad in ("0", "two", "-1", "nan"):
        monkeypatch.setenv("TIDELINE_S3_ATTEMPTS", bad)
        with pytest.raises(ConfigError, match="TIDELINE_S3_ATTEMPTS"):
            S3Store(BUCKET, "p", endpoint_url="http://127.0.0.1:9")
    monkeypatch.delenv("TIDELINE_S3_ATTEMPTS")
    monkeypatch.setenv("TIDELINE_S3_BACKOFF_S", "inf")
    with pytest.raises(ConfigError, match="TIDELINE_S3_BACKOFF_S"):
        S3Store(BUCKET, "p", endpoint_url="http://127.0.0.1:9")


def test_get_file_retries_from_the_start_and_never_leaves_a_partial_file(tmp_path: Path) -> None:
    calls = []

    class Body:
        def __init__(self, fail: bool) -> None:
            self.fail = fail

        def iter_chunks(self, size: int) -> Any:
            yield b"a" * 10
            if self.fail:
                raise ResponseStreamingError(error="connection reset mid-body")
            yield b"b" * 10

    def get_object(**kw: Any) -> Any:
        calls.append(kw)
        return {"Body": Body(fail=len(calls) == 1), "ETag": '"e"'}

    s = S3Store(BUCKET, "p", endpoint_url="http://127.0.0.1:9", attempts=2, sleep=Sleeps())
    s._client.get_object = get_object
    target = tmp_path / "model.bin"
    s.get_file("artifacts/x/model.bin", target)
    assert target.read_bytes() == b"a" * 10 + b"b" * 10 and len(calls) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]

    calls.clear()
    s.attempts = 1
    target2 = tmp_path / "other.bin"
    with pytest.raises(StorageUnavailable, match="gave up after 1 attempt over"):
        s.get_file("artifacts/x/other.bin", target2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]  # no partial file, no temp file


def test_put_file_is_retried_whole(moto: tuple[str, int], tmp_path: Path) -> None:
    s = _store(moto[0], "putfile", attempts=3, sleep=Sleeps())
    real = s._client.upload_file
    calls = []

    def flaky(**kw: Any) -> None:
        calls.append(kw)
        if len(calls) == 1:
            raise EndpointConnectionError(endpoint_url=moto[0])
        real(**kw)

    s._client.upload_file = flaky
    f = tmp_path / "w.bin"
    f.write_bytes(b"x" * 100_000)
    s.put_file("artifacts/u/w.bin", f)
    assert len(calls) == 2 and s.get("artifacts/u/w.bin")[0] == f.read_bytes()


# ---- the proxy --------------------------------------------------------------------------------------------
def test_proxy_relays_goes_down_and_comes_back(proxy: FaultProxy, moto: tuple[str, int]) -> None:
    s = _store(proxy.endpoint, "proxy", attempts=1)
    s.put("k", b"v")
    assert s.get("k")[0] == b"v" and proxy.connections >= 1 and proxy.requests >= 2

    proxy.down()  # reset mode: connections accepted, then reset
    assert not proxy.is_up and proxy.down_at is not None
    with pytest.raises(StorageUnavailable, match="gave up after 1 attempt"):
        s.get("k")
    assert proxy.refused >= 1
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as c:  # accepted ...
            c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert c.recv(100) == b""  # ... and closed without an answer
    except (ConnectionResetError, BrokenPipeError):
        pass  # ... or reset at once

    proxy.down(refuse=True)  # stop listening: connects are refused
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=5)

    proxy.up()
    assert proxy.is_up and s.get("k")[0] == b"v"


def test_proxy_down_closes_open_connections(proxy: FaultProxy) -> None:
    c = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    c.request("GET", f"/{BUCKET}?list-type=2")
    r = c.getresponse()
    r.read()
    assert r.status == 200
    proxy.down()
    with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
        c.request("GET", f"/{BUCKET}?list-type=2")
        c.getresponse().read()
    c.close()


def test_proxy_faults_fire_on_matching_requests(proxy: FaultProxy, moto: tuple[str, int]) -> None:
    direct = _store(moto[0], "faults", attempts=1)
    s = _store(proxy.endpoint, "faults", attempts=1)
    proxy.on_request(lambda m, p: m == "PUT" and p.endswith("/faults/lost"), "drop")
    with pytest.raises(StorageUnavailable):
        s.put("lost", b"landed")
    assert direct.get("lost")[0] == b"landed" and proxy.dropped == 1 and proxy.is_up  # landed, answer lost
    proxy.on_request(lambda m, p: m == "PUT" and p.endswith("/faults/never"), "down")
    with pytest.raises(StorageUnavailable):
        s.put("never", b"x")
    assert not proxy.is_up and proxy.faults == 2
    proxy.up()
    assert not direct.exists("never")  # the request never reached the server


# ---- conditional writes whose answer is lost ----------------------------------------------------------------
def test_lost_answers_of_conditional_writes_count_as_written(proxy: FaultProxy, moto: tuple[str, int],
                                                             tmp_path: Path) -> None:
    reg = Registry(_store(proxy.endpoint, "lost-answers", attempts=3, backoff_s=0.01))
    art = tmp_path / "art"
    art.mkdir()
    (art / "model.txt").write_text("w")
    # the manifest's create-only write lands but its answer is lost: the retry fails its precondition,
    # the registry finds its own bytes and keeps the id (no duplicate version v2)
    proxy.on_request(lambda m, p: m == "PUT" and "/versions/" in p, "drop")
    mv = reg.register(art, {"family": "sklearn"})
    assert mv.version == "v1" and proxy.dropped == 1
    # the state compare-and-swap lands but its answer is lost: one promote event, production moved once
    proxy.on_request(lambda m, p: m == "PUT" and p.endswith("/state.json"), "drop")
    reg.promote("v1", reason="lost answer")
    assert proxy.dropped == 2
    direct = Registry(_store(moto[0], "lost-answers"))
    assert [v.version for v in direct.list_versions()] == ["v1"]
    assert direct.aliases()["production"] == "v1" and direct.status("v1") == Status.ACTIVE
    assert [e.action for e in direct.history()] == ["register", "promote"]
    reg.fetch("v1", tmp_path / "fetched")  # sha256 verified
    # a conditional write that really lost is still refused
    data, etag = reg.store.get("state.json")
    reg.store.put("state.json", data + b"\n", if_match=etag)  # another writer
    with pytest.raises(PreconditionFailed):
        reg.store.put("state.json", b"{}", if_match=etag)


def test_rollout_write_with_a_lost_answer_is_ours(proxy: FaultProxy, moto: tuple[str, int]) -> None:
    from reliability.outage import FakeBackend
    from tideline.clock import FakeClock
    from tideline.rollout import machine as m
    from tideline.rollout.controller import RolloutController, load_rollout

    store = _store(proxy.endpoint, "rollout-lost", attempts=3, backoff_s=0.01)
    reg = Registry(store)
    spec = m.RolloutSpec(name="r", target="t", candidate="v2", baseline="v1")
    ctrl = RolloutController(spec, FakeBackend(reg, "v1"), store, FakeClock())
    doc, etag = ctrl.statuses.load()
    doc.requested_action = "rollback"
    proxy.on_request(lambda mth, p: mth == "PUT" and p.endswith("/rollouts/r.json"), "drop")
    new_etag = ctrl._write(doc, etag)  # not _Lost: the bytes in place are ours
    assert proxy.dropped == 1
    stored, stored_etag = store.get("rollouts/r.json")
    assert stored_etag == new_etag and load_rollout(store, "r")[0].requested_action == "rollback"


def test_controller_rides_over_a_short_store_outage(proxy: FaultProxy, moto: tuple[str, int],
                                                    tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from reliability.outage import FakeBackend
    from tideline.clock import FakeClock
    from tideline.rollout import machine as m
    from tideline.rollout.analysis import AnalysisResult, Thresholds
    from tideline.rollout.controller import RolloutController
    from tideline.rollout.guard import WatchSpec

    direct = Registry(_store(moto[0], "ride-over"))
    art = tmp_path / "art"
    art.mkdir()
    (art / "m.txt").write_text("w")
    direct.register(art, {"family": "sklearn"})
    direct.register(art, {"family": "sklearn"})
    direct.promote("v1", reason="initial")
    store = _store(proxy.endpoint, "ride-over", attempts=2, backoff_s=0.01)
    backend = FakeBackend(Registry(store), "v1")
    sleeps = [0]

    def on_sleep(_: float) -> None:  # S3 dies for two intervals in the middle of the canary
        sleeps[0] += 1
        if sleeps[0] == 3:
            proxy.down()
        elif sleeps[0] == 5:
            proxy.up()

    spec = m.RolloutSpec(name="r", target="t", candidate="v2", baseline="v1",
                         shadow=m.ShadowSpec(min_duration_s=30, min_labelled=1), steps=(10, 50, 100),
                         interval_s=30, thresholds=Thresholds(min_requests=1, min_labelled=1),
                         watch=WatchSpec(duration_s=0))
    ctrl = RolloutController(spec, backend, store, FakeClock(on_sleep=on_sleep),
                             lambda i, t: AnalysisResult("pass", [], [], labelled=10), max_store_failures=3)
    with caplog.at_level(logging.WARNING, logger="tideline.rollout.controller"):
        status = ctrl.run()
    skipped = [r.getMessage() for r in caplog.records if "registry store is unreachable" in r.getMessage()]
    assert proxy.downs == 1 and len(skipped) == 2  # two passes skipped, no error raised
    assert "(pass 1/3)" in skipped[0] and "(pass 2/3)" in skipped[1] and "nothing changed" in skipped[0]
    assert status.phase == m.Phase.PROMOTED and direct.aliases()["production"] == "v2"
    assert backend.world == {"active": "v2", "canary": None, "weight": 0, "shadow": None}
