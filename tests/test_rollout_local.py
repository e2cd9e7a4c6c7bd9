"""The rollout controller end to end on the local backend: real processes, real router, real registry.

The predictor processes are ``tests/predictor_double.py``, a TEST DOUBLE of ``python -m tideline.serving``
speaking the serving contract (READY line, v1 predict, /metrics names); the local backend starts them
through its ``predictor_factory`` exactly as it starts the real predictor. The clock is fake: each
``sleep(interval)`` sends a burst of real requests through the real router, then moves time forward.
"""

from __future__ import annotations

import http.client
import json
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tideline.clock import FakeClock
from tideline.monitoring.outcomes import LiveOutcomes
from tideline.registry import Status, open_registry
from tideline.rollout import machine as m
from tideline.rollout.analysis import Thresholds
from tideline.rollout.backends.local import LocalBackend, pid_alive
from tideline.rollout.controller import RolloutController, load_rollout
from tideline.rollout.guard import WatchSpec

pytestmark = pytest.mark.slow
DOUBLE = str(Path(__file__).with_name("predictor_double.py"))
FAULTS = {"v1": [], "v2": [], "v3": ["--error-rate", "0.5"], "v4": ["--delay-ms", "400"]}


def factory(version: str, role: str) -> list[str]:
    return [sys.executable, DOUBLE, "--version", version, "--role", role, *FAULTS[version]]


@pytest.fixture()
def env(tmp_path: Path) -> Iterator[tuple]:
    reg = open_registry(str(tmp_path / "registry"))
    art = tmp_path / "art"
    art.mkdir()
    (art / "model.txt").write_text("weights")
    for _ in FAULTS:
        reg.register(art, {"family": "sklearn"})
    reg.promote("v1", reason="initial")
    backend = LocalBackend(reg, "tideline", predictor_factory=factory, home=tmp_path / "home", ready_timeout=30)
    backend.start_serving("v1", port=0)
    try:
        yield reg, backend, tmp_path
    finally:
        backend.shutdown()
        backend.close()


def traffic(backend: LocalBackend, n: int = 120) -> None:
    port = int(backend.router_url.rsplit(":", 1)[1])
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    body = json.dumps({"instances": [{"f1": float(i % 7), "f2": 0.25} for i in range(2)]})
    for _ in range(n):
        c.request("POST", "/v1/models/tideline:predict", body,
                  {"content-type": "application/json", "x-request-id": uuid.uuid4().hex})
        r = c.getresponse()
        r.read()
        assert r.status in (200, 500)  # a 500 can only be the faulty canary's own answer
    c.close()


def spec(candidate: str, **kw: object) -> m.RolloutSpec:
    # p99 is a hang guard (a loaded machine stalls a request now and then), except for the slow double v4,
    # whose 400 ms delay the 250 ms limit must catch
    p99 = 250.0 if candidate == "v4" else 5000.0
    return m.RolloutSpec(name="tideline", target="tideline", candidate=candidate, baseline="v1",
                         shadow=m.ShadowSpec(min_duration_s=60, min_labelled=0), steps=(10, 25, 50, 100),
                         interval_s=30, thresholds=Thresholds(min_requests=8, min_labelled=50,
                                                              max_p99_latency_ms=p99),
                         watch=WatchSpec(duration_s=0), **kw)  # type: ignore[arg-type]


def test_good_candidate_goes_shadow_canary_promoted(env: tuple) -> None:
    reg, backend, _ = env
    reg.set_alias("candidate", "v2")
    clock = FakeClock(on_sleep=lambda s: traffic(backend))
    seen: list[tuple[str, int]] = []

    def record(st: m.RolloutStatus) -> None:
        if not seen or seen[-1] != (st.phase.value, st.weight):
            seen.append((st.phase.value, st.weight))

    first = RolloutController(spec("v2"), backend, reg.store, clock, owner="first")
    first.run(max_iterations=2, on_status=record)  # then this controller "dies" mid-rollout
    assert load_rollout(reg.store, "tideline")[0].status.phase == m.Phase.SHADOW
    assert reg.status("v2") == Status.SHADOW and reg.aliases()["shadow"] == "v2"
    clock.t += 100  # its lease runs out; a new controller carries on from the stored status
    status = RolloutController("tideline", backend, reg.store, clock, owner="second").run(on_status=record)
    assert status.phase == m.Phase.PROMOTED, status.message
    assert seen == [("Shadow", 0), ("Canary", 10), ("Canary", 25), ("Canary", 50), ("Promoting", 0),
                    ("Promoted", 0)]
    doc, _ = load_rollout(reg.store, "tideline")
    shadow_checks = {c["name"]: c for a in doc.status.analyses if a["phase"] == "Shadow" for c in a["checks"]}
    assert shadow_checks["prediction_divergence"]["passed"] is True  # paired on mirrored requests
    a = reg.aliases()
    assert a["production"] == "v2" and a["previous"] == "v1" and "candidate" not in a and "shadow" not in a
    assert reg.status("v2") == Status.ACTIVE and reg.status("v1") == Status.RETIRED
    state = backend.read_state()
    rs = backend.router_state()
    assert rs["active"] == f"http://127.0.0.1:{state['active']['port']}" and rs["weight"] == 0
    assert state["active"]["version"] == "v2" and state["candidate"] is None
    snap = backend.read_metrics()
    before = snap.select("v2").requests
    traffic(backend, 40)
    assert backend.read_metrics().select("v2").requests == before + 40  # all traffic now on v2


@pytest.mark.parametrize(("candidate", "why"), [("v3", "error rate"), ("v4", "p99 latency")])
def test_bad_candidate_is_rolled_back(env: tuple, candidate: str, why: str) -> None:
    reg, backend, _ = env
    reg.set_alias("candidate", candidate)

    def burst(_: float) -> None:
        traffic(backend, 60 if candidate == "v4" else 120)
        if candidate == "v4":
            time.sleep(1.0)  # let the slow shadow answer its mirrored copies (the fake clock does not wait)

    clock = FakeClock(on_sleep=burst)
    status = RolloutController(spec(candidate), backend, reg.store, clock).run()
    assert status.phase == m.Phase.ROLLED_BACK and why in status.message, status.message
    assert reg.aliases()["production"] == "v1" and "candidate" not in reg.aliases()
    assert reg.status(candidate) == Status.RETIRED and reg.status("v1") == Status.ACTIVE
    rs, state = backend.router_state(), backend.read_state()
    assert rs["weight"] == 0 and rs["canary"] is None and rs["shadow"] is None and state["candidate"] is None
    traffic(backend, 20)  # the active model still answers


def test_worse_live_accuracy_rolls_back(env: tuple) -> None:
    reg, _, tmp_path = env
    rng = np.random.default_rng(0)

    def outcomes(candidate: str, baseline: str) -> LiveOutcomes:
        return LiveOutcomes(candidate_errors=rng.normal(0, 1, 400), active_errors=rng.normal(0, 1, 400),
                            candidate_hits=(rng.random(400) < 0.45).astype(float),
                            active_hits=(rng.random(400) < 0.56).astype(float))

    backend = LocalBackend(reg, "tideline", predictor_factory=factory, home=tmp_path / "home", outcomes=outcomes)
    clock = FakeClock(on_sleep=lambda s: traffic(backend))
    sp = m.RolloutSpec(name="tideline", target="tideline", candidate="v2", baseline="v1",
                       shadow=m.ShadowSpec(60, 50), thresholds=Thresholds(min_requests=8, max_p99_latency_ms=5000.0))
    status = RolloutController(sp, backend, reg.store, clock).run()
    assert status.phase == m.Phase.ROLLED_BACK and "directional accuracy" in status.message
    assert reg.aliases()["production"] == "v1"
    backend.close()


def test_cli_status_and_manual_rollback(env: tuple) -> None:
    from tideline.cli import app
    from tideline.cli.rollout import rollout_app

    if not any(g.name == "rollout" for g in app.registered_groups):  # until the root CLI wires it
        app.add_typer(rollout_app, name="rollout")

    reg, backend, tmp_path = env
    uri = reg.store.uri
    runner = CliRunner()
    home_env = {"TIDELINE_HOME": str(tmp_path / "home")}
    res = runner.invoke(app, ["--registry", uri, "rollout", "status"], env=home_env)
    assert res.exit_code != 0 and "no rollout named" in str(res.exception)
    clock = FakeClock(on_sleep=lambda s: traffic(backend))
    RolloutController(spec("v2"), backend, reg.store, clock, owner="bg", lease_s=0.0).run(max_iterations=2)
    res = runner.invoke(app, ["--registry", uri, "rollout", "status", "--json"], env=home_env)
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["status"]["phase"] == "Shadow"
    cand_pid = backend.read_state()["candidate"]["pid"]
    res = runner.invoke(app, ["--registry", uri, "rollout", "rollback"], env=home_env)
    assert res.exit_code == 0, res.output
    assert "RolledBack" in res.output and "manual rollback" in res.output
    assert not pid_alive(cand_pid) and backend.read_state()["candidate"] is None
    assert reg.status("v2") == Status.RETIRED and reg.aliases()["production"] == "v1"
    res = runner.invoke(app, ["--registry", uri, "rollout", "status"], env=home_env)
    assert res.exit_code == 0 and "RolledBack" in res.output
    res = runner.invoke(app, ["--registry", uri, "rollout", "resume"], env=home_env)
    assert res.exit_code == 12, res.output  # documented: the candidate was rolled back, production unchanged
