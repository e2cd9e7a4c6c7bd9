"""The rollout router, as a real process in front of real HTTP servers on loopback.

The upstreams are ``tests/predictor_double.py`` — a TEST DOUBLE of the predictor that speaks the serving
contract (the real ``tideline.serving`` is written separately); the router is started exactly as the
local backend starts it: ``python -m tideline.rollout.router --port 0 --active URL``.
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import free_port, wait_for
from tideline.rollout.analysis import MetricsSnapshot
from tideline.rollout.router import canary_bucket

pytestmark = pytest.mark.slow
DOUBLE = str(Path(__file__).with_name("predictor_double.py"))
BODY = json.dumps({"instances": [{"ret_1": 0.5, "vol_20": 1.5, "symbol": "AAA"}]})


class Proc:
    def __init__(self, argv: list[str]) -> None:
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.p.stdout.readline()  # type: ignore[union-attr]
        m = re.search(r"READY port=(\d+)", line)
        if not m:
            self.p.kill()
            raise RuntimeError(f"no READY line from {argv}: {line!r} {self.p.stderr.read()}")  # type: ignore[union-attr]
        self.port = int(m.group(1))
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.p.terminate()
        self.p.wait(10)


def double(version: str, role: str = "active", **faults: float) -> Proc:
    argv = [sys.executable, DOUBLE, "--version", version, "--role", role]
    for k, v in faults.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return Proc(argv)


class Client:
    """Keep-alive HTTP/1.1 client (http.client: the least client overhead for latency measurements)."""

    def __init__(self, port: int) -> None:
        self.c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call(self, method: str, path: str, body: str | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        self.c.request(method, path, body, {"content-type": "application/json", **(headers or {})})
        r = self.c.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data

    def predict(self, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        return self.call("POST", "/v1/models/tideline:predict", BODY, headers)

    def state(self, **body: object) -> tuple[int, dict[str, object]]:
        st, _, data = self.call("PUT", "/_tideline/state", json.dumps(body))
        return st, json.loads(data)


@pytest.fixture(scope="module")
def ups() -> Iterator[dict[str, Proc]]:
    procs = {"v1": double("v1"), "v2": double("v2", "canary", bias=1.0), "bad": double("v3", "canary", error_rate=1.0)}
    try:
        yield procs
    finally:
        for p in procs.values():
            p.stop()


@pytest.fixture()
def router(ups: dict[str, Proc]) -> Iterator[Proc]:
    r = Proc([sys.executable, "-m", "tideline.rollout.router", "--port", "0", "--active", ups["v1"].url,
              "--seed", "3"])
    try:
        yield r
    finally:
        r.stop()


def _router_counts(port: int) -> dict[tuple[str, str], float]:
    _, _, data = Client(port).call("GET", "/metrics")
    out = {}
    for line in data.decode().splitlines():
        m = re.match(r'tideline_router_requests_total\{code="(\d+)",route="(\w+)"\} ([\d.e+]+)', line)
        if m:
            out[(m.group(2), m.group(1))] = float(m.group(3))
    return out


def test_weights_split_and_passthrough(router: Proc, ups: dict[str, Proc]) -> None:
    c = Client(router.port)
    assert c.state(canary=ups["v2"].url, weight=30)[0] == 200
    routes: Counter[str] = Counter()
    for _ in range(2000):
        status, h, data = c.predict()
        assert status == 200
        body = json.loads(data)
        # the answer really came from the upstream the route header names
        assert h["x-model-version"] == body["model_version"] == ("v2" if h["x-tideline-route"] == "canary" else "v1")
        routes[h["x-tideline-route"]] += 1
    assert 500 <= routes["canary"] <= 700, routes  # 30% of 2000 = 600 (binomial sd ~20)
    counts = _router_counts(router.port)
    assert counts[("canary", "200")] == routes["canary"] and counts[("active", "200")] == routes["active"]

    # deterministic by x-request-id: the same id always takes the same route, ~weight% of ids go canary
    ids = [uuid.uuid4().hex for _ in range(500)]
    first = {i: c.predict({"x-request-id": i})[1]["x-tideline-route"] for i in ids}
    again = {i: c.predict({"x-request-id": i})[1]["x-tideline-route"] for i in ids[:100]}
    assert all(first[i] == again[i] for i in again)
    assert all((first[i] == "canary") == (canary_bucket(i) < 3000) for i in ids)
    assert 100 <= sum(r == "canary" for r in first.values()) <= 200

    # upstream errors pass through untouched (status, body, x-model-version)
    status, h, data = c.call("POST", "/v1/models/nope:predict", BODY)
    assert status == 404 and json.loads(data) == {"error": "unknown model"} and "x-model-version" in h
    status, h, _ = c.call("GET", "/v2/health/ready")
    assert status == 200
    assert c.state(weight=0)[0] == 200
    assert all(c.predict()[1]["x-tideline-route"] == "active" for _ in range(50))


def test_admin_api_validates_and_applies_atomically(router: Proc, ups: dict[str, Proc]) -> None:
    c = Client(router.port)
    for bad in ({"weight": 150}, {"weight": 10}, {"weight": "x"}, {"nope": 1}, {"active": "ftp://x"},
                {"active": None}):
        status, body = c.state(**bad)
        assert status == 400 and "error" in body, bad
    status, body = c.state(canary=ups["v2"].url, weight=100)
    assert status == 200 and body["weight"] == 100
    assert all(c.predict()[1]["x-model-version"] == "v2" for _ in range(20))
    status, body = c.state(active=ups["v2"].url, canary=None, weight=0)  # promotion: one atomic switch
    assert body == {"active": ups["v2"].url, "canary": None, "weight": 0, "shadow": None}
    _, _, data = c.call("GET", "/_tideline/state")
    assert json.loads(data)["active"] == ups["v2"].url


def test_shadow_is_mirrored_and_its_failures_are_invisible(router: Proc, ups: dict[str, Proc]) -> None:
    c = Client(router.port)
    before = MetricsSnapshot.parse(Client(ups["bad"].port).call("GET", "/metrics")[2].decode())
    c.state(shadow=ups["bad"].url)
    for _ in range(300):
        status, h, data = c.predict()
        assert status == 200 and h["x-model-version"] == "v1"  # the failing shadow never shows
    def got() -> float:
        return MetricsSnapshot.parse(Client(ups["bad"].port).call("GET", "/metrics")[2].decode()) \
            .select("v3").requests - before.select("v3").requests

    wait_for(lambda: got() >= 300, what="300 mirrored requests")
    after = MetricsSnapshot.parse(Client(ups["bad"].port).call("GET", "/metrics")[2].decode())
    assert got() == 300 and after.select("v3").errors - before.select("v3").errors == 300
    # a healthy shadow: the answers are paired with the active's for the divergence check
    c.state(shadow=ups["v2"].url)
    for _ in range(100):
        c.predict()

    def paired() -> dict[str, list[float]]:
        return json.loads(c.call("GET", "/_tideline/pairs?version=v2")[2])

    wait_for(lambda: len(paired()["shadow"]) >= 100, what="100 shadow pairs")  # mirrored: fire and forget
    pairs = paired()
    assert len(pairs["shadow"]) == 100
    assert all(abs(s - a - 1.0) < 1e-9 for s, a in zip(pairs["shadow"], pairs["active"], strict=True))
    # an unreachable shadow is invisible too
    c.state(shadow=f"http://127.0.0.1:{free_port()}")
    assert all(c.predict()[0] == 200 for _ in range(100))
    _, _, data = c.call("GET", "/metrics")
    assert re.search(r'tideline_router_shadow_total\{outcome="error"\} (\d+)', data.decode())


def test_dead_canary_never_causes_a_5xx(router: Proc, ups: dict[str, Proc]) -> None:
    c = Client(router.port)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    c.state(canary=dead, weight=50)
    results = [c.predict() for _ in range(200)]
    assert all(s == 200 for s, _, _ in results)
    assert all(h["x-tideline-route"] == "active" for _, h, _ in results)
    _, _, data = c.call("GET", "/metrics")
    m = re.search(r"tideline_router_fallbacks_total ([\d.e+]+)", data.decode())
    assert m and 60 <= float(m.group(1)) <= 140  # ~half of the requests were meant for the canary
    # a dead ACTIVE is a real outage: 502 with a reason, not a hang
    c.state(active=dead, canary=None, weight=0)
    status, _, data = c.predict()
    assert status == 502 and "unreachable" in json.loads(data)["error"]


def test_canary_5xx_is_answered_by_active_and_counted(router: Proc, ups: dict[str, Proc]) -> None:
    c = Client(router.port)
    before = MetricsSnapshot.parse(Client(ups["bad"].port).call("GET", "/metrics")[2].decode())
    c.state(active=ups["v1"].url, canary=ups["bad"].url, weight=50, shadow=None)
    try:
        results = [c.predict({"x-request-id": uuid.uuid4().hex}) for _ in range(200)]
    finally:
        c.state(canary=None, weight=0)
    assert all(s == 200 for s, _, _ in results)  # clients never see the canary's 500s ...
    retried = [h for _, h, _ in results if h.get("x-tideline-retried") == "canary-5xx"]
    assert 60 <= len(retried) <= 140 and all(h["x-model-version"] == "v1" for h in retried)
    _, _, data = c.call("GET", "/metrics")
    m = re.search(r'tideline_router_canary_retries_total\{reason="5xx"\} ([\d.e+]+)', data.decode())
    assert m and float(m.group(1)) >= len(retried)
    after = MetricsSnapshot.parse(Client(ups["bad"].port).call("GET", "/metrics")[2].decode())
    # ... but the canary's own counters (what the rollout analysis reads) still show every one of them
    assert after.select("v3").errors - before.select("v3").errors == len(retried)
