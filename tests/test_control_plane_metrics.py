"""The control-plane metrics (``tideline.loop.metrics``): counted from what the loop's ticks, the registry and the
rollouts recorded in the store, served by a long-running process (the loop, the operator)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tideline.errors import ConfigError
from tideline.k8s.operator import start_metrics
from tideline.loop.core import TickRecord, write_record
from tideline.loop.metrics import ControlPlaneCollector, rollback_reason, serve
from tideline.registry import open_registry


def _samples(collector: ControlPlaneCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    reg = CollectorRegistry()
    reg.register(collector)  # type: ignore[arg-type]
    out = {}
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _tick(reg: Any, wall: str, outcome: str, steps: list[dict[str, Any]]) -> None:
    rec = TickRecord(id=wall[-8:].replace(":", ""), at=wall, wall=wall, steps=steps, outcome=outcome)
    write_record(reg, rec)


def _rollout(store: Any, key: str, phase: str, message: str, checks: list[dict[str, Any]] | None = None) -> None:
    doc = {"spec": {}, "status": {"phase": phase, "message": message,
                                  "analyses": [{"checks": checks or [], "verdict": "fail"}]}}
    store.put(key, json.dumps(doc).encode())


def _version(reg: Any, tmp: Path, name: str, fit_seconds: float) -> str:
    art = tmp / name
    art.mkdir()
    (art / "model.json").write_text("{}")
    return reg.register(art, {"family": name.split("-")[0], "evaluation": {"fit_seconds": fit_seconds}}).version


@pytest.fixture()
def world(tmp_path: Path) -> Any:
    reg = open_registry((tmp_path / "reg").as_uri())
    v1 = _version(reg, tmp_path, "lightgbm-a", 2.0)
    v2 = _version(reg, tmp_path, "lightgbm-b", 4.0)
    v3 = _version(reg, tmp_path, "sklearn-a", 1.0)
    reg.promote(v1, reason="first")
    reg.promote(v2, reason="second")
    reg.rollback(reason="by hand")  # production back to v1
    decide = {"step": "decide", "outcome": "retrain", "rules": [{"name": "performance_decay", "fired": True},
                                                                {"name": "drift", "fired": False}]}
    _tick(reg, "2026-12-01T10:00:00+00:00", "ok", [decide, {"step": "retrain", "outcome": "approved",
                                                            "failures": {"torch": "out of memory"}}])
    _tick(reg, "2026-12-02T10:00:00+00:00", "ok", [{"step": "decide", "outcome": "retrain", "rules": []},
                                                   {"step": "retrain", "outcome": "rejected"}])
    _tick(reg, "2026-12-03T10:00:00+00:00", "failed", [{"step": "retrain", "outcome": "failed"}])
    _tick(reg, "2026-12-04T10:00:00+00:00", "busy", [{"step": "lease", "outcome": "busy"}])
    _tick(reg, "2026-12-03T12:00:00+00:00", "ok", [decide, {"step": "retrain", "outcome": "deferred"}])  # not run
    store = reg.store
    _rollout(store, "rollouts/history/tideline-1-v3.json", "RolledBack", "rolled back: 2 consecutive failed analyses",
             [{"name": "error_rate", "passed": False}, {"name": "p99_latency", "passed": True}])
    _rollout(store, "rollouts/history/tideline-2-v3.json", "Promoted", "promoted v3")
    _rollout(store, "rollouts/tideline.json", "Reverted", "reverted to v1: guard: accuracy under the floor")
    live = {"n": 300, "roles": {"active": {"n": 300, "directional_accuracy": 0.47, "sharpe": -0.3, "mae": 0.01},
                                "shadow": {"n": 0}}}
    reg.put_attachment(v1, "live-metrics.json", json.dumps(live).encode())
    reg.put_attachment(v1, "drift-latest.json", json.dumps({"result": {"drifted_share": 0.25}}).encode())
    return reg, {"v1": v1, "v2": v2, "v3": v3}


def test_every_metric_is_counted_from_the_records(world: Any) -> None:
    reg, v = world
    created = reg.get(v["v1"]).created_at
    now = pd_ts(created) + 3600.0
    got = _samples(ControlPlaneCollector(reg, clock=lambda: now))

    def val(name: str, **labels: str) -> float:
        return got[(name, tuple(sorted(labels.items())))]

    assert val("tideline_loop_ticks_total", outcome="ok") == 3
    assert val("tideline_loop_ticks_total", outcome="failed") == 1
    assert val("tideline_loop_ticks_total", outcome="busy") == 1
    assert val("tideline_loop_last_tick_timestamp_seconds") == pd_ts("2026-12-04T10:00:00+00:00")
    assert val("tideline_loop_last_successful_tick_timestamp_seconds") == pd_ts("2026-12-03T12:00:00+00:00")
    assert val("tideline_retrains_started_total", trigger="performance_decay") == 1
    assert val("tideline_retrains_started_total", trigger="forced") == 1
    assert val("tideline_retrains_started_total", trigger="unknown") == 1  # it failed before its decision was kept
    assert val("tideline_retrains_finished_total", trigger="performance_decay", outcome="approved") == 1
    assert val("tideline_retrains_finished_total", trigger="forced", outcome="rejected") == 1
    assert val("tideline_retrains_finished_total", trigger="unknown", outcome="failed") == 1
    assert val("tideline_training_failures_total", family="torch") == 1
    assert val("tideline_training_duration_seconds_count", family="lightgbm") == 2
    assert val("tideline_training_duration_seconds_sum", family="lightgbm") == 6.0
    assert val("tideline_training_duration_seconds_sum", family="sklearn") == 1.0
    assert val("tideline_promotions_total") == 2
    assert val("tideline_rollbacks_total", reason="error_rate") == 1
    assert val("tideline_rollbacks_total", reason="guard") == 1
    assert val("tideline_rollbacks_total", reason="production_rollback") == 1
    assert ("tideline_rollbacks_total", (("reason", "other"),)) not in got  # the promoted rollout is not one
    assert val("tideline_production_info", version=v["v1"]) == 1
    assert val("tideline_production_model_age_seconds") == pytest.approx(3600.0)
    assert val("tideline_live_directional_accuracy", version=v["v1"], role="active") == 0.47
    assert val("tideline_live_sharpe", version=v["v1"], role="active") == -0.3
    assert val("tideline_live_mae", version=v["v1"], role="active") == 0.01
    assert val("tideline_live_outcomes", version=v["v1"], role="active") == 300
    assert ("tideline_live_outcomes", (("role", "shadow"), ("version", v["v1"]))) not in got  # no outcomes yet
    assert val("tideline_drift_share", version=v["v1"]) == 0.25
    assert val("tideline_kill_switch_on") == 0
    assert val("tideline_control_plane_scrape_errors_total") == 0


def test_new_records_are_counted_and_old_ones_read_once(world: Any) -> None:
    reg, _ = world
    collector = ControlPlaneCollector(reg)
    _samples(collector)
    reads: list[str] = []
    real_get = reg.store.get

    def counting_get(key: str) -> Any:
        reads.append(key)
        return real_get(key)

    reg.store.get = counting_get  # type: ignore[method-assign]
    _tick(reg, "2026-12-05T10:00:00+00:00", "ok", [])
    got = _samples(collector)
    assert got[("tideline_loop_ticks_total", (("outcome", "ok"),))] == 4
    tick_reads = [k for k in reads if k.startswith("loop/ticks/")]
    assert len(tick_reads) == 1 and "20261205" in tick_reads[0]  # only the new tick was read
    assert not [k for k in reads if k.startswith("rollouts/history/")]  # ended rollouts never change


def test_an_unreachable_store_is_counted_not_raised(world: Any) -> None:
    reg, _ = world
    collector = ControlPlaneCollector(reg)

    def broken(*_: Any, **__: Any) -> Any:
        raise OSError("store unreachable")

    reg.store.list = broken  # type: ignore[method-assign]
    got = _samples(collector)
    # the ticks, the rollouts, the alerts, the experience passes
    assert got[("tideline_control_plane_scrape_errors_total", ())] == 4
    assert got[("tideline_promotions_total", ())] == 2  # what could be read is still exported


@pytest.mark.parametrize(("status", "reason"), [
    ({"phase": "RolledBack", "message": "rolled back: manual rollback"}, "manual"),
    ({"phase": "Reverted", "message": "reverted to v1: guard: ..."}, "guard"),
    ({"phase": "RolledBack", "message": "rolled back: only 3/100 labelled outcomes after 3600s of shadow"},
     "no_outcomes"),
    ({"phase": "RolledBack", "message": "rolled back: 20 inconclusive analyses in a row (...)"}, "inconclusive"),
    ({"phase": "RolledBack", "message": "rolled back: 2 consecutive failed analyses",
      "analyses": [{"checks": [{"name": "directional_accuracy", "passed": False}]}]}, "accuracy"),
    ({"phase": "RolledBack", "message": "rolled back: 2 consecutive failed analyses",
      "analyses": [{"checks": [{"name": "net_pnl", "passed": False}]}]}, "pnl"),
    ({"phase": "RolledBack", "message": "rolled back", "analyses": [{"checks": [{"name": "new_check",
                                                                                  "passed": False}]}]}, "other"),
])
def test_rollback_reasons_are_a_bounded_set(status: dict[str, Any], reason: str) -> None:
    assert rollback_reason({"status": status}) == reason


def test_served_over_http_and_by_the_operator_when_configured(world: Any, tmp_path: Path) -> None:
    reg, _ = world
    server, port = serve(reg, 0)
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert "tideline_promotions_total 2.0" in text
    finally:
        server.shutdown()
    assert start_metrics({}) is None
    with pytest.raises(ConfigError, match="TIDELINE_REGISTRY"):
        start_metrics({"TIDELINE_METRICS_PORT": "0"})
    port = start_metrics({"TIDELINE_METRICS_PORT": "0", "TIDELINE_METRICS_HOST": "127.0.0.1",
                          "TIDELINE_REGISTRY": reg.store.uri})
    assert port and "tideline_loop_ticks_total" in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text


def test_the_loop_refuses_metrics_for_a_one_shot_tick(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("tideline")
    p = subprocess.run([str(exe), "--registry", (tmp_path / "reg").as_uri(), "loop", "--once", "--metrics-port", "0"],
                       capture_output=True, text=True, timeout=120,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TIDELINE_HOME": str(tmp_path / "h")})
    assert p.returncode == 2 and "--metrics-port serves while the loop runs" in p.stderr, p.stderr[-500:]
    assert "Traceback" not in p.stderr


def pd_ts(value: str) -> float:
    import pandas as pd

    return float(pd.Timestamp(value).timestamp())
