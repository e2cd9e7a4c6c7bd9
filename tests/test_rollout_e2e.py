"""Rollouts end to end with REAL processes: real predictors (``python -m tideline.serving``) serving real
LightGBM versions from a file:// registry, the real router, the real controller on the system clock (1 s
analysis intervals), live outcomes joined from the prediction log and the market's bars (``--bars``).

The market is synthetic (4 symbols, hourly, a planted signal). Versions are trained on its first 60% of
time; clients replay the later 40% through the router (one request = 4 rows, each with ``symbol`` and
``timestamp``), so every prediction's realized outcome is in the bars file and the live accuracy check has
thousands of labelled samples. Versions:

* ``prod``     LightGBM, seed 1 (production when the module starts);
* ``good``     LightGBM, seed 2, another learning rate (a good candidate);
* ``broken``   ``prod``'s files with an infinite target scale: every prediction is non-finite, the
               predictor answers 500 (a genuinely broken model, no chaos);
* ``slow``     ``good``'s files served with ``TIDELINE_CHAOS=delay_ms=400`` on the candidate process only;
* ``shuffled`` LightGBM trained on permuted labels (learned nothing: live accuracy ~0.5 vs ~0.7);
* ``good2``    LightGBM, seed 3 (the candidate of the controller-crash test);
* ``rl``       a policy (family ``rl``) whose answers are positions, rolled out against a return forecaster.

A client thread sends requests through the router during every rollout and records each answer's status,
``x-model-version`` and route; a monitor thread samples the router's state and probes the upstreams it
routes to. No test tolerates a single 5xx seen by a client.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from conftest import FAST_PARAMS, wait_for
from tideline.clock import SystemClock
from tideline.config import FeatureConfig
from tideline.data import synthetic_market, write_bars
from tideline.features import build_dataset, feature_config_hash
from tideline.models import Market, make_model
from tideline.monitoring.feedback import outcomes_from_log
from tideline.registry import Registry, Status, open_registry
from tideline.rollout import machine as m
from tideline.rollout.analysis import Thresholds
from tideline.rollout.backends.local import LocalBackend, default_predictor_factory, pid_alive
from tideline.rollout.controller import RolloutController, create_rollout, load_rollout
from tideline.rollout.guard import WatchSpec

pytestmark = pytest.mark.slow
NAME = "tideline"
ROWS_PER_REQUEST = 4
# The p99 limit is a hang guard here (a loaded machine stalls a request now and then); the one case that
# tests the latency check, the ``slow`` candidate, sets 250 ms against its injected 400 ms delay.
THRESHOLDS = Thresholds(max_error_rate=0.01, max_p99_latency_ms=5000.0, min_requests=10, min_labelled=100,
                        accuracy_margin=0.05)


# ----------------------------------------------------------------------------------------- the world
@dataclass
class World:
    root: Path
    uri: str
    registry: Registry
    bars_path: Path
    bodies: list[bytes]
    versions: dict[str, str]
    chaos: dict[str, str] = field(default_factory=dict)

    def factory(self) -> Any:
        def env(version: str, role: str) -> dict[str, str]:
            e = {"OMP_NUM_THREADS": "1"}
            if version in self.chaos and role == "canary":
                e["TIDELINE_CHAOS"] = self.chaos[version]
            return e

        return default_predictor_factory(self.uri, NAME, extra_args=["--log-flush-seconds", "0.5"], env=env)


def market(root: Path) -> tuple[Path, Any, np.ndarray]:
    """The market of these rollouts: 4 symbols with a planted signal, its bars written under ``root``, the
    dataset, and the training rows (the first 60% of time; clients replay the rest)."""
    bars = synthetic_market(n_symbols=4, n_bars=1500, seed=7, signal_strength=0.8)
    bars_path = write_bars(bars, root / "bars.parquet")
    ds = build_dataset(bars, FeatureConfig())
    ts = pd.to_datetime(ds.meta["timestamp"])
    return bars_path, ds, (ts <= ts.quantile(0.6)).to_numpy()


def client_bodies(ds: Any, train: np.ndarray, columns: list[str]) -> list[bytes]:
    """The clients' requests: the later 40% of the rows, ROWS_PER_REQUEST each, with symbol and timestamp."""
    test_X = ds.X.loc[~train, columns].reset_index(drop=True)
    test_meta = ds.meta.loc[~train].reset_index(drop=True)
    rows = []
    for rec, (t, sym) in zip(test_X.to_dict("records"), test_meta[["timestamp", "symbol"]].itertuples(index=False),
                             strict=True):
        rows.append({**{k: float(v) for k, v in rec.items()}, "symbol": str(sym),
                     "timestamp": pd.Timestamp(t).isoformat()})
    return [json.dumps({"instances": rows[i:i + ROWS_PER_REQUEST]}).encode()
            for i in range(0, len(rows) - ROWS_PER_REQUEST + 1, ROWS_PER_REQUEST)]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("e2e")
    cfg = FeatureConfig()
    bars_path, ds, train = market(root)
    uri = (root / "reg").as_uri()
    reg = open_registry(uri)
    meta = {"family": "lightgbm", "feature_config": cfg.model_dump(), "feature_config_hash": feature_config_hash(cfg)}
    versions: dict[str, str] = {}
    arts: dict[str, Path] = {}
    columns: list[str] = []

    def fit(key: str, seed: int, lr: float, y: np.ndarray) -> None:
        mdl = make_model("lightgbm", seed=seed, params={**FAST_PARAMS["lightgbm"], "learning_rate": lr},
                         n_threads=1)
        mdl.fit(ds.X[train], y[train], ds.spec)
        arts[key] = root / f"art-{key}"
        mdl.save(arts[key])
        versions[key] = reg.register(arts[key], {**meta, "features": mdl.columns}).version
        columns[:] = list(mdl.columns)

    fit("prod", 1, 0.05, ds.y)
    fit("good", 2, 0.1, ds.y)
    broken = root / "art-broken"
    shutil.copytree(arts["prod"], broken)
    mj = json.loads((broken / "model.json").read_text())
    mj["target_scaler"]["scale"] = float("inf")
    (broken / "model.json").write_text(json.dumps(mj))
    versions["broken"] = reg.register(broken, {**meta, "features": columns}).version
    versions["slow"] = reg.register(arts["good"], {**meta, "features": columns}).version
    fit("shuffled", 1, 0.05, np.random.default_rng(0).permutation(ds.y))
    fit("good2", 3, 0.08, ds.y)
    # a policy (family rl): its answer is a position, not a return forecast
    sym, ts = ds.meta["symbol"].to_numpy(), ds.meta["timestamp"].to_numpy()
    rl = make_model("rl", seed=1, n_threads=1)  # its defaults: as good as the forecasters here (FAST_PARAMS: worse)
    rl.fit(ds.X[train], ds.y[train], ds.spec, market=Market(ds.next_return[train], sym[train], ts[train],
                                                            np.full(int(train.sum()), 1e-4)))
    rl.save(root / "art-rl")
    versions["rl"] = reg.register(root / "art-rl", {**meta, "family": "rl", "features": rl.columns}).version
    reg.promote(versions["prod"], reason="e2e start")

    return World(root, uri, reg, bars_path, client_bodies(ds, train, columns), versions,
                 chaos={versions["slow"]: "delay_ms=400"})


# ------------------------------------------------------------------------------------- clients, monitor
class Traffic(threading.Thread):
    """One keep-alive client replaying the bodies through the router; records every answer."""

    def __init__(self, port: int, bodies: list[bytes], gap_s: float = 0.003) -> None:
        super().__init__(daemon=True)
        self.port, self.bodies, self.gap_s = port, bodies, gap_s
        self.stop_evt = threading.Event()
        self.lock = threading.Lock()
        self.statuses: Counter[int] = Counter()
        self.versions: Counter[tuple[str, str]] = Counter()  # (x-model-version, route)
        self.retried: Counter[str] = Counter()
        self.errors: list[str] = []
        self.n = 0

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        i = 0
        while not self.stop_evt.is_set():
            body = self.bodies[i % len(self.bodies)]
            i += 1
            try:
                conn.request("POST", f"/v1/models/{NAME}:predict", body,
                             {"content-type": "application/json", "x-request-id": f"req-{i}"})
                r = conn.getresponse()
                data = r.read()
            except (OSError, http.client.HTTPException) as e:  # a client-visible failure, like a 5xx
                with self.lock:
                    self.errors.append(f"{type(e).__name__}: {e}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                continue
            with self.lock:
                self.n += 1
                self.statuses[r.status] += 1
                self.versions[(r.getheader("x-model-version", ""), r.getheader("x-tideline-route", ""))] += 1
                if r.getheader("x-tideline-retried"):
                    self.retried[r.getheader("x-tideline-retried")] += 1
                if r.status >= 500 and len(self.errors) < 20:
                    self.errors.append(f"{r.status}: {data[:200]!r}")
            if self.gap_s:
                time.sleep(self.gap_s)
        conn.close()

    def finish(self) -> None:
        self.stop_evt.set()
        self.join(30)

    def assert_clean(self) -> None:
        assert self.n > 100, f"only {self.n} requests"
        bad = {s: c for s, c in self.statuses.items() if s >= 500}
        assert not bad and not self.errors, (bad, self.errors[:5])
        assert set(self.statuses) == {200}, self.statuses


class Monitor(threading.Thread):
    """Samples the router's state; every upstream it routes to must answer ready, the canary never 100%."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stop_evt = threading.Event()
        self.samples: list[dict[str, Any]] = []
        self.problems: list[str] = []

    def _get(self, url: str, path: str) -> tuple[int, bytes]:
        host, port = url.removeprefix("http://").split(":")
        c = http.client.HTTPConnection(host, int(port), timeout=5)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def run(self) -> None:
        router = f"http://127.0.0.1:{self.port}"
        while not self.stop_evt.is_set():
            try:
                st = json.loads(self._get(router, "/_tideline/state")[1])
            except OSError as e:
                self.problems.append(f"router unreachable: {e}")
                break
            self.samples.append(st)
            if not 0 <= st["weight"] < 100:
                self.problems.append(f"canary weight {st['weight']}")
            targets = [st["active"]] + ([st["canary"]] if st["weight"] > 0 else [])
            for url in targets:
                try:
                    ok = self._get(url, "/v2/health/ready")[0] == 200
                except OSError:
                    ok = False
                if not ok:  # not a problem if the router moved away from it meanwhile
                    now = json.loads(self._get(router, "/_tideline/state")[1])
                    still = url == now["active"] or (url == now["canary"] and now["weight"] > 0)
                    if still:
                        self.problems.append(f"router sends traffic to {url}, which is not ready ({st})")
            self.stop_evt.wait(0.05)

    def finish(self) -> None:
        self.stop_evt.set()
        self.join(10)


@dataclass
class Serving:
    backend: LocalBackend
    port: int
    traffic: Traffic
    monitor: Monitor


@pytest.fixture()
def serving(world: World, tmp_path: Path) -> Iterator[Serving]:
    reg = world.registry
    backend = LocalBackend(reg, NAME, predictor_factory=world.factory(), home=tmp_path / "home", ready_timeout=90,
                           outcomes=outcomes_from_log(reg, str(world.bars_path), since=pd.Timestamp.now(tz="UTC")))
    backend.start_serving(reg.aliases()["production"], port=0)
    port = int(backend.router_url.rsplit(":", 1)[1])
    traffic, monitor = Traffic(port, world.bodies), Monitor(port)
    traffic.start()
    monitor.start()
    try:
        yield Serving(backend, port, traffic, monitor)
    finally:
        traffic.finish()
        monitor.finish()
        backend.shutdown()
        backend.close()


def spec(candidate: str, baseline: str, *, shadow_s: float = 2.0, min_labelled: int = 100,
         max_p99_ms: float | None = None) -> m.RolloutSpec:
    thresholds = THRESHOLDS if max_p99_ms is None else dataclasses.replace(THRESHOLDS, max_p99_latency_ms=max_p99_ms)
    return m.RolloutSpec(name=NAME, target=NAME, candidate=candidate, baseline=baseline,
                         shadow=m.ShadowSpec(min_duration_s=shadow_s, min_labelled=min_labelled,
                                             max_duration_s=60),
                         steps=(10, 25, 50, 100), interval_s=1.0, thresholds=thresholds, failure_limit=2,
                         max_inconclusive=15, watch=WatchSpec(duration_s=0))


def run_rollout(sv: Serving, sp: m.RolloutSpec, reg: Registry) -> tuple[m.RolloutStatus, list[tuple[str, int]]]:
    reg.set_alias("candidate", sp.candidate, reason="e2e")
    seen: list[tuple[str, int]] = []

    def record(st: m.RolloutStatus) -> None:
        if not seen or seen[-1] != (st.phase.value, st.weight):
            seen.append((st.phase.value, st.weight))

    create_rollout(reg.store, sp, time.time())  # the previous rollout of this name (ended) is archived
    ctrl = RolloutController(NAME, sv.backend, reg.store, SystemClock())
    status = ctrl.run(max_iterations=80, on_status=record)
    return status, seen


def router_counter(port: int, name: str) -> dict[str, float]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()
    return {labels: float(v) for labels, v in re.findall(rf"^{name}(\{{[^}}]*\}})? ([\d.e+]+)$", text, re.M)}


# ----------------------------------------------------------------------------------------- tests
def test_good_candidate_is_promoted_through_every_step(world: World, serving: Serving) -> None:
    reg = world.registry
    old, cand = reg.aliases()["production"], world.versions["good"]
    status, seen = run_rollout(serving, spec(cand, old), reg)
    wait_for(lambda: serving.traffic.versions[(cand, "active")] > 0, what="an answer from the promoted version")
    serving.traffic.finish()
    serving.monitor.finish()
    assert status.phase == m.Phase.PROMOTED, (status.message, seen)
    assert seen[0] == ("Shadow", 0) and seen[-2:] == [("Promoting", 0), ("Promoted", 0)], seen
    assert [w for p, w in seen if p == "Canary"] == [10, 25, 50], seen
    a = reg.aliases()
    assert a["production"] == cand and a["previous"] == old and "candidate" not in a and "shadow" not in a
    assert reg.status(cand) == Status.ACTIVE

    doc, _ = load_rollout(reg.store, NAME)
    checks = [{c["name"]: c for c in an["checks"]} for an in doc.status.analyses]
    shadow_pass = [c for an, c in zip(doc.status.analyses, checks, strict=True) if an["phase"] == "Shadow"
                   and an["verdict"] == "pass"]
    assert shadow_pass, doc.status.analyses
    # live outcomes were joined and decisive, and the divergence on mirrored requests was measured
    assert shadow_pass[-1]["directional_accuracy"]["passed"] is True, shadow_pass[-1]
    assert shadow_pass[-1]["prediction_divergence"]["passed"] is True, shadow_pass[-1]
    canary = [(an["weight"], an["verdict"]) for an in doc.status.analyses if an["phase"] == "Canary"]
    assert all(v != "fail" for _, v in canary) and {w for w, v in canary if v == "pass"} == {10, 25, 50}, canary

    t = serving.traffic
    t.assert_clean()
    assert t.versions[(cand, "canary")] > 0 and t.versions[(old, "active")] > 0, t.versions
    assert t.versions[(cand, "active")] > 0, t.versions  # answered by the promoted version at the end
    assert not serving.monitor.problems, serving.monitor.problems[:3]
    assert max(s["weight"] for s in serving.monitor.samples) == 50
    state = serving.backend.read_state()
    assert state["active"]["version"] == cand and state["candidate"] is None


def test_bad_candidates_are_rolled_back_and_clients_never_see_it(world: World, serving: Serving) -> None:
    reg = world.registry
    prod = reg.aliases()["production"]
    v = world.versions
    cases = [
        # (candidate, shadow seconds, what the status must say)
        (v["broken"], 0.0, "error rate", None),   # straight to canary 10%: its 500s reach the router
        (v["slow"], 2.0, "p99 latency", 250.0),   # chaos delay_ms=400 on the candidate process only
        (v["shuffled"], 2.0, "directional accuracy", None),
    ]
    results = {}
    for cand, shadow_s, why, p99 in cases:
        status, seen = run_rollout(serving, spec(cand, prod, shadow_s=shadow_s, max_p99_ms=p99), reg)
        results[cand] = (status, seen)
        assert status.phase == m.Phase.ROLLED_BACK and why in status.message, (cand, status.message, seen)
        assert reg.aliases()["production"] == prod and "candidate" not in reg.aliases()
        assert reg.status(cand) == Status.RETIRED
        rs, st = serving.backend.router_state(), serving.backend.read_state()
        assert rs["weight"] == 0 and rs["canary"] is None and rs["shadow"] is None and st["candidate"] is None
        assert st["active"]["version"] == prod
    serving.traffic.finish()
    serving.monitor.finish()

    broken_status, broken_seen = results[v["broken"]]
    assert ("Canary", 10) in broken_seen
    last = {c["name"]: c for c in broken_status.analyses[-1]["checks"]}
    assert last["error_rate"]["value"] == 1.0  # the candidate's own /metrics: every answer a 500
    retries = router_counter(serving.port, "tideline_router_canary_retries_total")
    assert retries.get('{reason="5xx"}', 0) > 0, retries  # ... which the router answered from active
    assert serving.traffic.retried["canary-5xx"] > 0

    shuffled = {c["name"]: c for c in results[v["shuffled"]][0].analyses[-1]["checks"]}
    acc = shuffled["directional_accuracy"]
    assert acc["passed"] is False and acc["value"] < -THRESHOLDS.accuracy_margin, acc
    n_lab = results[v["shuffled"]][0].analyses[-1]["labelled"]
    assert n_lab >= THRESHOLDS.min_labelled

    serving.traffic.assert_clean()
    assert {ver for ver, _ in serving.traffic.versions} == {prod}  # no client ever got a candidate's answer
    assert not serving.monitor.problems, serving.monitor.problems[:3]


def _cli(world: World, home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TIDELINE_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "tideline", "--registry", world.uri, *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_controller_killed_mid_canary_resumes_to_a_consistent_end(world: World, serving: Serving) -> None:
    reg = world.registry
    home = serving.backend.home
    old, cand = reg.aliases()["production"], world.versions["good2"]
    res = _cli(world, home, "rollout", "start", "--candidate", cand, "--name", NAME, "--shadow-seconds", "2",
               "--steps", "10,25,50,100", "--interval", "1", "--min-requests", "10", "--max-p99-ms", "5000",
               "--bars",
               str(world.bars_path), "--accuracy-margin", "0.05", "--min-outcomes", "100", "--watch-seconds", "0", "--detach")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "live outcomes from" in res.stdout
    pid = int(re.search(r"controller running in the background \(pid (\d+)", res.stdout).group(1))  # type: ignore[union-attr]

    deadline = time.monotonic() + 300  # a hang guard, not a speed requirement
    while time.monotonic() < deadline:
        doc, _ = load_rollout(reg.store, NAME)
        if doc.status.phase == m.Phase.CANARY and doc.status.weight == 25:
            break
        assert not doc.status.terminal, doc.status.message
        time.sleep(0.05)
    else:
        pytest.fail(f"never reached canary 25%: {doc.status.message}")
    os.kill(pid, signal.SIGKILL)  # mid-canary, without warning
    t_kill = time.monotonic()
    while pid_alive(pid) and time.monotonic() - t_kill < 5:
        time.sleep(0.05)
    assert not pid_alive(pid)
    doc, _ = load_rollout(reg.store, NAME)
    assert doc.spec.bars == str(world.bars_path.resolve())  # the restarted controller finds the source
    time.sleep(1.5)  # nobody is steering: traffic must stay as the status says
    rs = serving.backend.router_state()
    assert 0 < rs["weight"] < 100 and rs["canary"] is not None

    res = _cli(world, home, "rollout", "resume", "--name", NAME)  # waits out the dead one's lease
    out = res.stdout + res.stderr
    serving.traffic.finish()
    serving.monitor.finish()
    assert res.returncode == 0, out
    doc, _ = load_rollout(reg.store, NAME)
    assert doc.status.phase == m.Phase.PROMOTED and doc.applied_generation >= doc.status.generation, out
    a = reg.aliases()
    assert a["production"] == cand and a["previous"] == old and "candidate" not in a
    outcome_checks = [c for an in doc.status.analyses for c in an["checks"] if c["name"] == "directional_accuracy"]
    assert any(c["passed"] is True for c in outcome_checks), outcome_checks  # --bars reached the analysis
    serving.traffic.assert_clean()
    assert serving.traffic.versions[(cand, "canary")] > 0 and serving.traffic.versions[(cand, "active")] > 0
    assert not serving.monitor.problems, serving.monitor.problems[:3]
    weights = [s["weight"] for s in serving.monitor.samples]
    assert max(weights) == 50 and all(w < 100 for w in weights)
    state = serving.backend.read_state()
    assert state["active"]["version"] == cand and state["candidate"] is None


def test_a_policy_is_rolled_out_against_a_forecaster_on_hit_rate_and_net_pnl(world: World, serving: Serving) -> None:
    """An rl version (positions) against the LightGBM in production (return forecasts): the analysis compares
    what both have — direction hit rate and net PnL on the same requests — and reports the error and prediction
    distributions as not compared; the policy is promoted like any candidate."""
    reg = world.registry
    old, cand = reg.aliases()["production"], world.versions["rl"]
    status, seen = run_rollout(serving, spec(cand, old), reg)
    serving.traffic.finish()
    serving.monitor.finish()
    doc, _ = load_rollout(reg.store, NAME)
    shadow = [{c["name"]: c for c in an["checks"]} for an in doc.status.analyses
              if an["phase"] == "Shadow" and an["verdict"] == "pass"]
    assert shadow, doc.status.analyses
    last = shadow[-1]
    assert last["directional_accuracy"]["passed"] is True and last["net_pnl"]["passed"] is True, last
    for name in ("error_ks", "prediction_divergence"):
        assert last[name]["passed"] is None and "not compared" in last[name]["reason"], last[name]
    assert status.phase == m.Phase.PROMOTED, (status.message, seen)
    assert reg.aliases()["production"] == cand
    serving.traffic.assert_clean()
