"""The alert rules (manifests/base/prometheusrule.yaml, shipped by the chart and kustomize) tested for real:

* ``promtool check rules`` and ``promtool test rules`` (tests/alerts/rules_test.yaml: every alert fires where it
  should, with its severity and rendered annotations, and stays quiet where it should not);
* a real Prometheus server on loopback scrapes a real predictor process and a real long-running loop
  (``tideline loop --metrics-port``) and fires the decay alert from their metrics: production is a model that
  learned the market backwards, clients ask the predictor, ``tideline feedback`` joins the prediction log with the
  realized bars, and the loop exports the live accuracy it recorded; the KServe backend's Prometheus metrics
  reader reads the predictor's counters from that server.

Prometheus and promtool come from Debian's ``prometheus`` package (``.ci/run`` installs it); a missing binary
fails with the command that installs it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import FAST_PARAMS, free_port, wait_for
from tideline.config import FeatureConfig
from tideline.data import synthetic_market, write_bars
from tideline.features import build_dataset, feature_config_hash
from tideline.models import make_model
from tideline.registry import open_registry

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "manifests" / "base" / "prometheusrule.yaml"
UNIT_TESTS = ROOT / "tests" / "alerts" / "rules_test.yaml"
INSTALL = "apt-get install -y prometheus   (Debian's package: prometheus and promtool)"


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; install it: {INSTALL}")
    return path


def rules_file(dest: Path, *, for_override: str | None = None) -> Path:
    """The PrometheusRule's ``spec`` as a Prometheus rules file (``groups:``); ``for_override`` replaces every
    ``for:`` (a live test cannot wait 30 minutes: the expressions, labels and annotations are the shipped ones)."""
    spec = yaml.safe_load(RULES.read_text())["spec"]
    if for_override is not None:
        for group in spec["groups"]:
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = for_override
    path = dest / "tideline-rules.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_promtool_checks_every_rule_and_its_unit_tests_pass(tmp_path: Path) -> None:
    promtool = binary("promtool")
    rules = rules_file(tmp_path)
    r = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "SUCCESS: 11 rules found" in r.stdout, r.stdout + r.stderr
    shutil.copy(UNIT_TESTS, tmp_path / "rules_test.yaml")
    r = subprocess.run([promtool, "test", "rules", "rules_test.yaml"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    # every alert has a case where it fires (promtool checks the quiet cases too)
    alerts = {rule["alert"] for g in yaml.safe_load(rules.read_text())["groups"] for rule in g["rules"]}
    cases = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    fired = {t["alertname"] for c in cases for t in c.get("alert_rule_test", []) if t["exp_alerts"]}
    assert fired == alerts, alerts ^ fired


@pytest.mark.parametrize("source", ["helm", "kustomize"])
def test_the_rendered_prometheusrules_pass_promtool(source: str, tmp_path: Path) -> None:
    """What the chart (in a namespace other than tideline) and kustomize really apply: promtool checks its rules."""
    from test_k8s_manifests import kustomize, render

    objs = render({}, namespace="ml-prod") if source == "helm" else kustomize("manifests/base")
    rules = [o for o in objs if o["kind"] == "PrometheusRule"]
    assert len(rules) == 1 and rules[0]["metadata"]["name"] == "tideline-alerts"
    assert rules[0]["spec"] == yaml.safe_load(RULES.read_text())["spec"]  # the annotations' templates untouched
    (tmp_path / "rendered.yaml").write_text(yaml.safe_dump(rules[0]["spec"], sort_keys=False))
    r = subprocess.run([binary("promtool"), "check", "rules", str(tmp_path / "rendered.yaml")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "SUCCESS: 11 rules found" in r.stdout, r.stdout + r.stderr


def test_a_broken_rule_fails_promtool(tmp_path: Path) -> None:
    """The unit tests are not a rubber stamp: a rule with a wrong threshold fails them."""
    promtool = binary("promtool")
    rules = rules_file(tmp_path)
    rules.write_text(rules.read_text().replace("< 0.5", "< 0.4"))  # the decay alert would no longer fire at 42%
    shutil.copy(UNIT_TESTS, tmp_path / "rules_test.yaml")
    r = subprocess.run([promtool, "test", "rules", "rules_test.yaml"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0 and "TidelineModelDecay" in r.stdout + r.stderr


# ----------------------------------------------------------------------------------------- a real Prometheus
def _start(cmd: list[str], log: Path, **kw: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kw)


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.slow
def test_a_real_prometheus_fires_the_decay_alert_from_a_real_predictor_and_loop(tmp_path: Path) -> None:
    prometheus = binary("prometheus")
    # production learned the market backwards: on a planted signal it calls direction wrong most of the time
    bars = synthetic_market(n_symbols=4, n_bars=1200, seed=11, signal_strength=0.8)
    bars_path = write_bars(bars, tmp_path / "bars.parquet")
    cfg = FeatureConfig()
    ds = build_dataset(bars, cfg)
    ts = pd.to_datetime(ds.meta["timestamp"])
    train = (ts <= ts.quantile(0.6)).to_numpy()
    uri = (tmp_path / "reg").as_uri()
    reg = open_registry(uri)
    model = make_model("lightgbm", seed=1, params=FAST_PARAMS["lightgbm"], n_threads=1)
    model.fit(ds.X[train], -np.asarray(ds.y)[train], ds.spec)
    model.save(tmp_path / "art")
    version = reg.register(tmp_path / "art", {"family": "lightgbm", "features": model.columns,
                                              "feature_config": cfg.model_dump(),
                                              "feature_config_hash": feature_config_hash(cfg)}).version
    reg.promote(version, reason="test: a backwards model in production")

    procs: list[subprocess.Popen[bytes]] = []
    try:
        p_port, l_port, prom_port = free_port(), free_port(), free_port()
        procs.append(_start([sys.executable, "-m", "tideline.serving", "--registry", uri, "--http-port", str(p_port),
                             "--log-flush-seconds", "0.2", "--reload-interval", "0"], tmp_path / "predictor.log"))
        wait_for(lambda: _up(f"http://127.0.0.1:{p_port}/v2/health/ready"), timeout=120, what="the predictor")
        test_X = ds.X.loc[~train, model.columns].reset_index(drop=True)
        meta = ds.meta.loc[~train].reset_index(drop=True)
        rows = [{**{k: float(v) for k, v in rec.items()}, "symbol": str(s), "timestamp": pd.Timestamp(t).isoformat()}
                for rec, (t, s) in zip(test_X.to_dict("records"), meta[["timestamp", "symbol"]].itertuples(index=False),
                                       strict=True)][:480]
        with httpx.Client(base_url=f"http://127.0.0.1:{p_port}", timeout=30) as client:
            for i in range(0, len(rows), 8):
                assert client.post("/v1/models/tideline:predict", json={"instances": rows[i:i + 8]}).status_code == 200
        time.sleep(1.0)  # the prediction log flushes every 0.2 s

        tideline = Path(sys.executable).with_name("tideline")
        fb = subprocess.run([str(tideline), "--registry", uri, "feedback", "--data", str(bars_path), "--json"],
                            capture_output=True, text=True, timeout=300)
        assert fb.returncode == 0, fb.stderr[-2000:]
        live = json.loads(reg.get_attachment(version, "live-metrics.json"))
        assert live["roles"]["active"]["n"] >= 200 and live["roles"]["active"]["directional_accuracy"] < 0.45, live

        procs.append(_start([str(tideline), "--registry", uri, "loop", "--metrics-port", str(l_port)],
                            tmp_path / "loop.log", env={**os.environ, "TIDELINE_HOME": str(tmp_path / "home")}))
        wait_for(lambda: _up(f"http://127.0.0.1:{l_port}/metrics"), timeout=120, what="the loop's metrics")

        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "rule_files": [str(rules_file(tmp_path, for_override="2s"))],
                  "scrape_configs": [
                      {"job_name": "predictor", "static_configs": [{"targets": [f"127.0.0.1:{p_port}"]}]},
                      {"job_name": "control-plane", "static_configs": [{"targets": [f"127.0.0.1:{l_port}"]}]}]}
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        procs.append(_start([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                            tmp_path / "prometheus.log"))
        api = f"http://127.0.0.1:{prom_port}/api/v1"
        wait_for(lambda: _up(f"http://127.0.0.1:{prom_port}/-/ready"), timeout=60, what="Prometheus ready")

        def firing() -> list[dict[str, Any]]:
            try:
                alerts = httpx.get(f"{api}/alerts", timeout=5).json()["data"]["alerts"]
            except (httpx.TransportError, ValueError, KeyError):
                return []
            return [a for a in alerts if a["labels"]["alertname"] == "TidelineModelDecay" and a["state"] == "firing"]

        wait_for(lambda: bool(firing()), timeout=120, what="TidelineModelDecay firing")
        alert = firing()[0]
        assert alert["labels"]["version"] == version and alert["labels"]["severity"] == "high"
        assert "calls direction right on" in alert["annotations"]["summary"] and alert["annotations"]["runbook"]
        # both real processes were scraped: the predictor's request counter and the loop's production info
        q = httpx.get(f"{api}/query", params={"query": "up"}, timeout=5).json()["data"]["result"]
        assert {r["metric"]["job"]: r["value"][1] for r in q} == {"predictor": "1", "control-plane": "1"}
        q = httpx.get(f"{api}/query", params={"query": 'sum(tideline_requests_total{code="200"})'}, timeout=5).json()
        assert float(q["data"]["result"][0]["value"][1]) == len(rows) / 8
        q = httpx.get(f"{api}/query", params={"query": "tideline_production_info"}, timeout=5).json()
        assert q["data"]["result"][0]["metric"]["version"] == version
        # the KServe backend's metrics reader (a ModelRollout's spec.metricsSource = a Prometheus URL) on this server
        from tideline.rollout.backends.kserve import PrometheusMetricsReader

        reader = PrometheusMetricsReader(f"http://127.0.0.1:{prom_port}")
        assert reader.read(versions=[version]).series == {}  # the first reading primes (lifetime totals)
        with httpx.Client(base_url=f"http://127.0.0.1:{p_port}", timeout=30) as client:
            for i in range(10):
                assert client.post("/v1/models/tideline:predict", json={"instances": rows[i:i + 2]}).status_code == 200

        def scraped() -> bool:
            q = httpx.get(f"{api}/query", params={"query": "sum(tideline_requests_total)"}, timeout=5).json()
            return float(q["data"]["result"][0]["value"][1]) == len(rows) / 8 + 10

        wait_for(scraped, timeout=60, what="Prometheus scraping the 10 new requests")
        m = reader.read(versions=[version]).series[(version, "active")]
        assert m.requests == 10 and m.errors == 0 and m.latency_count == 10, m  # the increase since the priming
        assert sum(m.buckets.values()) > 0 and m.latency_sum > 0
        # and nothing else fires on this healthy-but-wrong system (no 5xx, no rollback, the loop ticked)
        others = {a["labels"]["alertname"] for a in httpx.get(f"{api}/alerts", timeout=5).json()["data"]["alerts"]
                  if a["state"] == "firing"}
        assert others == {"TidelineModelDecay"}, others
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
