"""KServeBackend: the InferenceService patches of full rollouts and rollbacks in both KServe modes, each
validated strictly against the kserve 0.21 SDK models; the registry side; the metrics readers."""

from __future__ import annotations

import copy
import http.server
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from kube_doubles import FakeCustomObjectsApi, SchemaViolation, validate, validate_isvc
from tideline.errors import AliasConflict, ConfigError
from tideline.registry import Registry, Status, open_registry
from tideline.rollout import machine as m
from tideline.rollout.analysis import AnalysisResult, MetricsSnapshot, SeriesMetrics
from tideline.rollout.backends import Backend, BackendError, apply_action
from tideline.rollout.backends.kserve import (
    GROUP,
    PLURAL,
    CumulativeCounters,
    KServeBackend,
    PodMetricsReader,
    PrometheusMetricsReader,
    storage_uri,
)
from tideline.rollout.guard import WatchSpec

NS = "trading"
ISVC = "tideline"


@pytest.fixture
def registry(s3_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    bucket = f"models-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    reg = open_registry(f"s3://{bucket}/tideline", endpoint_url=s3_server)
    for tag in ("v1", "v2"):
        d = tmp_path / tag
        d.mkdir()
        (d / "model.ubj").write_bytes(f"weights of {tag}".encode())
        reg.register(d, {"family": "xgboost"})
    reg.promote("v1", reason="first")
    reg.set_alias("candidate", "v2", reason="pipeline")
    return reg


def make_isvc(registry: Registry, mode: str) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": ISVC, "namespace": NS,
                     "annotations": {"serving.kserve.io/deploymentMode": mode}},
        "spec": {"predictor": {
            "minReplicas": 1,
            "model": {
                "modelFormat": {"name": "tideline"},
                "runtime": "tideline-predictor",
                "storageUri": storage_uri(registry, "v1"),
                "args": ["--name=tideline", "--registry=s3://x/y", "--ref=v1"],
                "env": [{"name": "AWS_ENDPOINT_URL", "value": "http://minio.minio:9000"}],
                "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
            },
        }},
    }


def _spec(**kw: Any) -> m.RolloutSpec:
    kw.setdefault("watch", WatchSpec(duration_s=0))  # these end at Promoted; the guard's watch has its own tests
    return m.RolloutSpec(name="r", target=ISVC, candidate="v2", baseline="v1", **kw)


def _verdict(v: str) -> AnalysisResult:
    """An analysis outcome fed to the machine (the backend tests are about patches, not analysis)."""
    return AnalysisResult(v, [], [f"test verdict {v}"], labelled=1000)


class Harness:
    def __init__(self, registry: Registry, mode: str) -> None:
        self.api = FakeCustomObjectsApi()
        self.api.add(GROUP, NS, PLURAL, make_isvc(registry, mode))
        validate_isvc(self.isvc())  # the starting object itself is valid
        self.backend = KServeBackend(self.api, NS, ISVC, registry, mode, None, versions=["v2"], baseline="v1")
        self.spec = _spec(shadow=m.ShadowSpec(min_duration_s=10, min_labelled=0))
        self.status = m.RolloutStatus.initial(self.spec)
        self.now = 1000.0

    def isvc(self) -> dict[str, Any]:
        return copy.deepcopy(self.api.objects[(GROUP, NS, PLURAL, ISVC)])

    def step(self, analysis: AnalysisResult | None = None, action: str | None = None) -> list[m.Action]:
        self.now += 30
        self.status, actions = m.advance(self.spec, self.status, analysis, self.now, action)  # type: ignore[arg-type]
        for a in actions:
            apply_action(self.backend, a, self.spec)
        return actions

    def patches(self) -> list[dict[str, Any]]:
        out = self.api.patches(PLURAL)
        for p in out:  # every patch we send is a valid partial InferenceService
            validate_isvc(p, partial=True)
        validate_isvc(self.isvc())  # and the object it leaves is a valid complete one
        return out


def _pred(isvc: dict[str, Any]) -> dict[str, Any]:
    return isvc["spec"]["predictor"]


def test_backend_satisfies_the_protocol(registry: Registry) -> None:
    h = Harness(registry, "Serverless")
    assert isinstance(h.backend, Backend)


def test_serverless_full_rollout_patch_sequence(registry: Registry) -> None:
    h = Harness(registry, "Serverless")
    uri1, uri2 = storage_uri(registry, "v1"), storage_uri(registry, "v2")
    assert uri2.startswith(f"{registry.store.uri}/artifacts/") and uri1 != uri2

    h.step()  # Pending -> Shadow
    assert h.status.phase == m.Phase.SHADOW
    p = _pred(h.isvc())
    assert "--shadow-ref=v2" in p["model"]["args"] and p["model"]["storageUri"] == uri1
    assert "canaryTrafficPercent" not in p
    assert registry.status("v2") == Status.SHADOW and registry.aliases()["shadow"] == "v2"

    h.step(_verdict("pass"))  # shadow passed -> canary 10
    assert h.status.phase == m.Phase.CANARY
    p = _pred(h.isvc())
    assert p["canaryTrafficPercent"] == 10 and p["model"]["storageUri"] == uri2
    assert "--ref=v2" in p["model"]["args"] and not any(a.startswith("--shadow-ref") for a in p["model"]["args"])
    assert registry.status("v2") == Status.CANARY and "shadow" not in registry.aliases()

    weights = []
    while h.status.phase == m.Phase.CANARY:
        h.step(_verdict("pass"))
        weights.append(_pred(h.isvc()).get("canaryTrafficPercent"))
    assert h.status.phase == m.Phase.PROMOTING
    h.step()
    assert h.status.phase == m.Phase.PROMOTED

    patches = h.patches()
    cutover = [x["spec"]["predictor"].get("canaryTrafficPercent", "unset") for x in patches]
    # shadow on; shadow off (baseline revision, unchanged traffic); candidate deployed dark (0); 10, 25, 50;
    # promotion removes canaryTrafficPercent (null): the candidate revision takes 100%
    assert cutover == ["unset", "unset", 0, 10, 25, 50, None]
    assert weights == [25, 50, None]
    final = h.isvc()
    assert "canaryTrafficPercent" not in _pred(final)
    assert _pred(final)["model"]["storageUri"] == uri2 and _pred(final)["model"]["args"][-1] == "--ref=v2"
    assert _pred(final)["model"]["env"] == make_isvc(registry, "Serverless")["spec"]["predictor"]["model"]["env"]
    assert registry.aliases()["production"] == "v2" and registry.aliases()["previous"] == "v1"
    assert "candidate" not in registry.aliases()
    # every patch carried the resourceVersion it was computed from
    assert all(x["metadata"]["resourceVersion"] for x in patches)
    # idempotent: re-applying the final status' actions (a restarted operator) changes nothing
    n = len(h.api.patches(PLURAL))
    for a in m.desired_actions(h.spec, h.status):
        apply_action(h.backend, a, h.spec)
    assert len(h.api.patches(PLURAL)) == n


def test_serverless_rollback_restores_the_baseline(registry: Registry) -> None:
    h = Harness(registry, "Serverless")
    h.step()
    h.step(_verdict("pass"))
    h.step(_verdict("pass"))  # canary 25
    assert _pred(h.isvc())["canaryTrafficPercent"] == 25
    h.step(_verdict("fail"))
    h.step(_verdict("fail"))  # failure_limit 2
    assert h.status.phase == m.Phase.ROLLED_BACK
    patches = h.patches()
    rollback = patches[-2:]
    assert rollback[0]["spec"] == {"predictor": {"canaryTrafficPercent": 0}}  # traffic cut first
    p = rollback[1]["spec"]["predictor"]  # then the spec is the baseline's again, still at 0%
    assert p["canaryTrafficPercent"] == 0 and p["model"]["storageUri"] == storage_uri(registry, "v1")
    assert p["model"]["args"][-1] == "--ref=v1"
    assert registry.aliases()["production"] == "v1" and "candidate" not in registry.aliases()
    assert registry.status("v2") == Status.RETIRED and registry.status("v1") == Status.ACTIVE

    # the next rollout's shadow phase takes the traffic back from the leftover canaryTrafficPercent: 0
    h.backend.set_shadow("v2")
    assert "canaryTrafficPercent" not in _pred(h.isvc())


def test_raw_deployment_full_rollout_uses_spec_canary(registry: Registry) -> None:
    h = Harness(registry, "RawDeployment")
    h.step()
    h.step(_verdict("pass"))
    isvc = h.isvc()
    assert len(isvc["spec"]["canary"]) == 1
    entry = isvc["spec"]["canary"][0]
    assert entry["trafficPercent"] == 10 and entry["predictor"]["name"] == "v2"
    assert entry["predictor"]["model"]["storageUri"] == storage_uri(registry, "v2")
    assert "minReplicas" not in entry["predictor"] and "maxReplicas" not in entry["predictor"]  # KServe sizes it
    assert _pred(isvc)["model"]["storageUri"] == storage_uri(registry, "v1")  # main untouched
    while h.status.phase == m.Phase.CANARY:
        h.step(_verdict("pass"))
    h.step()
    assert h.status.phase == m.Phase.PROMOTED
    patches = h.patches()
    traffic = [[c["trafficPercent"] for c in x["spec"]["canary"]] for x in patches if x["spec"].get("canary")]
    assert traffic == [[0], [10], [25], [50]]
    final = h.isvc()
    assert "canary" not in final["spec"]
    assert _pred(final)["name"] == "v2"  # the canary's Deployment becomes the main one: no restart
    assert _pred(final)["model"]["storageUri"] == storage_uri(registry, "v2")
    assert patches[-1]["spec"]["canary"] is None
    assert registry.aliases()["production"] == "v2"


def test_raw_deployment_rollback_removes_only_our_canary(registry: Registry) -> None:
    h = Harness(registry, "RawDeployment")
    other = {"trafficPercent": 5, "predictor": {"name": "experiment", "model": {
        "modelFormat": {"name": "tideline"}, "storageUri": "s3://elsewhere/x"}}}
    obj = h.api.objects[(GROUP, NS, PLURAL, ISVC)]
    obj["spec"]["canary"] = [other]
    h.step()
    h.step(_verdict("pass"))
    assert [c["predictor"]["name"] for c in h.isvc()["spec"]["canary"]] == ["experiment", "v2"]
    h.step(action="rollback")
    assert h.status.phase == m.Phase.ROLLED_BACK
    h.patches()
    assert h.isvc()["spec"]["canary"] == [other]
    assert _pred(h.isvc())["model"]["storageUri"] == storage_uri(registry, "v1")
    assert registry.status("v2") == Status.RETIRED and registry.aliases()["production"] == "v1"


def test_promotion_is_registry_first_and_a_lost_cas_leaves_the_cluster(registry: Registry, tmp_path: Path) -> None:
    h = Harness(registry, "Serverless")
    h.step()
    h.step(_verdict("pass"))
    before = h.isvc()
    d = tmp_path / "v3"
    d.mkdir()
    (d / "m").write_bytes(b"3")
    registry.register(d, {"family": "xgboost"})
    registry.promote("v3", reason="someone else")  # production moved meanwhile
    with pytest.raises(AliasConflict):
        h.step(action="promote")  # [SetShadow(None), DeployCanary, PromoteInRegistry (CAS) ...]
    after = h.isvc()
    assert _pred(after)["canaryTrafficPercent"] == _pred(before)["canaryTrafficPercent"] == 10
    assert registry.aliases()["production"] == "v3"


def test_stale_resource_version_is_a_conflict_not_an_overwrite(registry: Registry) -> None:
    h = Harness(registry, "Serverless")
    h.api.fail_next["patch"] = ApiException(status=409, reason="Conflict")
    with pytest.raises(BackendError, match="HTTP 409"):
        h.backend.set_shadow("v2")
    h.backend.set_shadow("v2")  # the retry reads the object again
    assert "--shadow-ref=v2" in _pred(h.isvc())["model"]["args"]


def test_weight_without_a_deployed_canary_is_refused(registry: Registry) -> None:
    h = Harness(registry, "RawDeployment")
    with pytest.raises(ConfigError, match="no canary"):
        h.backend.set_weight(10)
    h.backend.set_weight(0)  # nothing to do, nothing sent
    assert h.api.patches(PLURAL) == []


def test_storage_uri_needs_an_s3_registry(tmp_path: Path) -> None:
    reg = open_registry(f"file://{tmp_path}/reg")
    d = tmp_path / "a"
    d.mkdir()
    (d / "m").write_bytes(b"x")
    reg.register(d, {"family": "xgboost"})
    with pytest.raises(ConfigError, match="s3://"):
        storage_uri(reg, "v1")


def test_candidate_up_reads_kserve_status(registry: Registry) -> None:
    h = Harness(registry, "Serverless")
    h.step()
    h.step(_verdict("pass"))
    obj = h.api.objects[(GROUP, NS, PLURAL, ISVC)]
    obj["status"] = {"components": {"predictor": {"latestCreatedRevision": "tideline-predictor-00004",
                                                  "latestReadyRevision": "tideline-predictor-00003"}}}
    validate(obj["status"], "V1beta1InferenceServiceStatus")
    assert h.backend.candidate_up("v2") is False
    obj["status"]["components"]["predictor"]["latestReadyRevision"] = "tideline-predictor-00004"
    assert h.backend.candidate_up("v2") is True
    assert h.backend.candidate_up("v1") is None  # not the deployed candidate


@pytest.mark.parametrize("bad", [
    {"spec": {"predictor": {"canaryTrafficPercent": "10"}}},
    {"spec": {"predictor": {"model": {"storageURI": "s3://b/p"}}}},
    {"spec": {"canary": [{"trafficPercent": 10}]}},
    {"spec": {"canary": [{"trafficPercent": 10, "predictor": {"model": {"args": "--ref=v2"}}}]}},
    {"spec": {"predictor": {"model": {"env": [{"value": "x"}]}}}},
])
def test_strict_validator_rejects_what_kserve_would_not_accept(bad: dict[str, Any]) -> None:
    with pytest.raises(SchemaViolation):
        validate_isvc(bad, partial=True)


# -- metrics -------------------------------------------------------------------------------------
class _Server:
    def __init__(self, handler: Any) -> None:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def prometheus() -> Iterator[tuple[_Server, list[str]]]:
    """A stand-in for Prometheus' HTTP API on loopback; it answers each PromQL query it recognises."""
    seen: list[str] = []
    scale = [1.0]  # the counters' level: a test raises it between two readings

    def vector(rows: list[tuple[dict[str, str], float]]) -> dict[str, Any]:
        return {"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {"pod": "p1", **lab}, "value": [1700000000.0, str(v * scale[0])]} for lab, v in rows]}}

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            from urllib.parse import parse_qs, urlparse

            u = urlparse(self.path)
            q = parse_qs(u.query).get("query", [""])[0]
            seen.append(q)
            if u.path != "/api/v1/query":
                self.send_response(404)
                self.end_headers()
                return
            if "BAD" in q:
                doc = {"status": "error", "errorType": "bad_data", "error": "parse error"}
            elif "tideline_requests_total" in q:
                doc = vector([({"version": "v2", "role": "active", "code": "200"}, 95.0),
                              ({"version": "v2", "role": "active", "code": "500"}, 5.0),
                              ({"version": "v1", "role": "active", "code": "200"}, 900.0),
                              ({"version": "v2", "role": "shadow", "code": "200"}, 40.0)])
            elif "_bucket" in q:
                doc = vector([({"version": "v2", "role": "active", "le": "0.1"}, 90.0),
                              ({"version": "v2", "role": "active", "le": "+Inf"}, 100.0)])
            elif "_count" in q:
                doc = vector([({"version": "v2", "role": "active"}, 100.0)])
            else:
                doc = vector([({"version": "v2", "role": "active"}, 4.2)])
            body = json.dumps(doc).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: Any) -> None:
            pass

    srv = _Server(H)
    srv.scale = scale  # type: ignore[attr-defined]
    yield srv, seen
    srv.close()


def test_prometheus_reader_returns_cumulative_counters_per_version_and_role(
        prometheus: tuple[_Server, list[str]]) -> None:
    srv, seen = prometheus
    reader = PrometheusMetricsReader(f"http://127.0.0.1:{srv.port}", selector='namespace="trading"')
    assert reader.read(versions=["v1", "v2"]).series == {}  # the first reading primes: lifetime totals are not traffic
    assert all('namespace="trading",version=~"v1|v2"' in q and "increase" not in q for q in seen)
    assert any(q.startswith("sum by (pod, version, role, code) (tideline_requests_total") for q in seen)
    srv.scale[0] = 2.0  # type: ignore[attr-defined]  # every counter doubled: the increase is the level once more
    snap = reader.read(versions=["v1", "v2"])
    cand = snap.select("v2", ["active", "canary"])
    assert (cand.requests, cand.errors) == (100.0, 5.0)
    assert cand.buckets == {0.1: 90.0, float("inf"): 100.0}
    assert cand.latency_count == 100.0 and cand.latency_sum == 4.2
    assert snap.select("v2", ["shadow"]).requests == 40.0
    assert snap.select("v1", ["active"]).requests == 900.0


def test_prometheus_reader_errors_are_one_line(prometheus: tuple[_Server, list[str]]) -> None:
    srv, _ = prometheus
    reader = PrometheusMetricsReader(f"http://127.0.0.1:{srv.port}", selector='job="BAD"')
    with pytest.raises(BackendError, match="Prometheus query failed: bad_data parse error"):
        reader.read(versions=["v2"])
    srv.close()
    with pytest.raises(BackendError, match="cannot reach"):
        PrometheusMetricsReader(f"http://127.0.0.1:{srv.port}").read(versions=["v2"])
    with pytest.raises(ConfigError):
        PrometheusMetricsReader("prometheus:9090")


def test_cumulative_counters_survive_pod_restarts_and_new_pods() -> None:
    def snap(n: float) -> MetricsSnapshot:
        return MetricsSnapshot({("v2", "canary"): SeriesMetrics(requests=n, latency_count=n)})

    c = CumulativeCounters()
    assert c.update({"a": snap(500)}).series == {}  # primes: a's lifetime before the reader is not counted
    assert c.update({"a": snap(520)}).select("v2").requests == 20
    # a restarted (counters from 0) and a new pod b: each counts from zero, the total never goes down
    total = c.update({"a": snap(5), "b": snap(7)}).select("v2").requests
    assert total == 20 + 5 + 7
    assert c.update({"b": snap(10)}).select("v2").requests == total + 3  # a went away: b's increase only


def test_pod_reader_scrapes_real_exposition_and_returns_cumulative_counters() -> None:
    reg = CollectorRegistry()
    requests = Counter("tideline_requests", "requests", ["model", "version", "role", "code"], registry=reg)
    latency = Histogram("tideline_request_duration_seconds", "latency", ["model", "version", "role"],
                        registry=reg, buckets=(0.05, 0.1, 0.5))

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = generate_latest(reg)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: Any) -> None:
            pass

    srv = _Server(H)
    try:
        pod = SimpleNamespace(metadata=SimpleNamespace(name="tideline-predictor-abc", uid="u1"),
                              status=SimpleNamespace(pod_ip="127.0.0.1", phase="Running"))
        calls: list[tuple[str, str]] = []

        class CoreV1Double:
            def list_namespaced_pod(self, namespace: str, label_selector: str) -> Any:
                calls.append((namespace, label_selector))
                return SimpleNamespace(items=[pod])

        reader = PodMetricsReader(CoreV1Double(), NS, ISVC, port=srv.port)
        requests.labels("tideline", "v1", "active", "200").inc(50)
        first = reader.read(versions=["v1", "v2"])
        assert first.series == {}  # a pod seen for the first time only primes the reader
        requests.labels("tideline", "v1", "active", "200").inc(7)
        requests.labels("tideline", "v2", "canary", "500").inc(2)
        requests.labels("tideline", "v2", "canary", "200").inc(8)
        requests.labels("tideline", "v9", "active", "200").inc(3)  # not part of this rollout
        for s in (0.01, 0.2, 0.2):
            latency.labels("tideline", "v2", "canary").observe(s)
        snap = reader.read(versions=["v1", "v2"])
        assert snap.select("v1").requests == 7.0
        c = snap.select("v2", ["canary"])
        assert (c.requests, c.errors) == (10.0, 2.0)
        assert c.buckets[0.05] == 1.0 and c.buckets[0.5] == 3.0 and c.latency_count == 3.0
        assert ("v9", "active") not in snap.series
        assert calls[0] == (NS, f"serving.kserve.io/inferenceservice={ISVC}")
        requests.labels("tideline", "v1", "active", "200").inc(4)
        assert reader.read(versions=["v1", "v2"]).select("v1").requests == 11.0  # cumulative: 7 + 4
    finally:
        srv.close()
