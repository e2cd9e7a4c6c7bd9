"""The ModelRollout operator's handlers, called directly the kopf way (dict bodies, a kopf.Patch), over a
test double of the Kubernetes API, a real registry on S3 (moto on loopback) and the real machine/analysis."""

from __future__ import annotations

import copy
import dataclasses
import logging
import uuid
from pathlib import Path
from typing import Any

import boto3
import jsonschema
import kopf
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from kube_doubles import FakeCustomObjectsApi, validate_isvc
from test_crd import CRD_PATH, strict
from tideline.k8s import operator as op
from tideline.registry import Registry, Status, open_registry
from tideline.rollout import machine as m
from tideline.rollout.analysis import MetricsSnapshot, SeriesMetrics
from tideline.rollout.backends.kserve import GROUP as KS_GROUP
from tideline.rollout.backends.kserve import PLURAL as KS_PLURAL
from tideline.rollout.backends.kserve import storage_uri
from tideline.rollout.guard import WatchSpec

NS = "trading"
SCHEMA = yaml.safe_load(CRD_PATH.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
log = logging.getLogger("test-operator")


class ScriptedMetricsReader:
    """Metrics-reader double: cumulative counters (the backends' contract) growing by 200 requests per 5 s of
    the world's clock for each series, with the given share of 5xx for the candidate."""

    def __init__(self, clock: Any, isvc: Any) -> None:
        self.isvc = isvc
        self.error_share = 0.0
        self.reads = 0
        self.total = MetricsSnapshot()
        self.clock = clock
        self.last = clock()

    def read(self, *, versions: list[str]) -> MetricsSnapshot:
        self.reads += 1
        now = self.clock()
        n = 200.0 * (now - self.last) / 5.0
        self.last = now

        def series(errors: float) -> SeriesMetrics:
            return SeriesMetrics(requests=n, errors=errors, buckets={0.05: n * 0.9, 0.1: n, float("inf"): n},
                                 latency_count=n, latency_sum=n * 0.03)

        shadowing = any("--shadow-ref=v2" in a for a in self.isvc()["spec"]["predictor"]["model"].get("args", []))
        cand = ("v2", "shadow") if shadowing else ("v2", "active")  # a version's counters grow while it serves
        self.total = self.total.merge(MetricsSnapshot({
            cand: series(0.0 if shadowing else n * self.error_share), ("v1", "active"): series(0.0)}))
        return MetricsSnapshot(dict(self.total.series))


class World:
    def __init__(self, registry: Registry, mode: str = "Serverless", spec: dict[str, Any] | None = None) -> None:
        self.registry = registry
        self.api = FakeCustomObjectsApi()
        self.api.add(KS_GROUP, NS, KS_PLURAL, {
            "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": "tideline", "namespace": NS},
            "spec": {"predictor": {"model": {"modelFormat": {"name": "tideline"}, "runtime": "tideline",
                                             "storageUri": storage_uri(registry, "v1"), "args": ["--ref=v1"]}}},
        })
        cr_spec = {"targetRef": "tideline", "candidate": "v2", "registry": registry.store.uri, "mode": mode,
                   "metricsSource": "pods",
                   "strategy": {"shadow": {"minDurationSeconds": 10, "minLabelledSamples": 0},
                                "canary": {"steps": [10, 50, 100]}, "watch": {"durationSeconds": 0}},
                   "analysis": {"intervalSeconds": 5, "failureLimit": 2,
                                "thresholds": {"minRequests": 20, "maxErrorRate": 0.05}}}
        cr_spec.update(spec or {})
        self.api.add(op.GROUP, NS, op.PLURAL, {"apiVersion": "tideline.io/v1alpha1", "kind": "ModelRollout",
                                               "metadata": {"name": "roll", "namespace": NS}, "spec": cr_spec})
        self.now = 1_700_000_000.0
        self.metrics = ScriptedMetricsReader(lambda: self.now, self.isvc)
        self.rec = op.Reconciler(self.api, None, open_registry_fn=lambda uri: registry, clock=lambda: self.now,
                                 metrics_reader_factory=lambda source, ns, isvc: self.metrics)

    def body(self) -> dict[str, Any]:
        return copy.deepcopy(self.api.objects[(op.GROUP, NS, op.PLURAL, "roll")])

    def status(self) -> dict[str, Any]:
        return self.body().get("status") or {}

    def isvc(self) -> dict[str, Any]:
        return copy.deepcopy(self.api.objects[(KS_GROUP, NS, KS_PLURAL, "tideline")])

    def tick(self, body: dict[str, Any] | None = None, dt: float = 5.0) -> kopf.Patch:
        self.now += dt
        patch = kopf.Patch()
        op.on_reconcile(body=body or self.body(), patch=patch, logger=log)  # the kopf handler itself
        obj = self.body()
        jsonschema.Draft4Validator(strict(SCHEMA)).validate(obj)  # every status written fits the CRD
        validate_isvc(self.isvc())
        for p in self.api.patches(KS_PLURAL):
            validate_isvc(p, partial=True)
        if patch:  # apply what kopf would apply after the handler
            self.api.patch_namespaced_custom_object(op.GROUP, "v1alpha1", NS, op.PLURAL, "roll", dict(patch))
        return patch

    def annotate(self, action: str) -> None:
        self.api.patch_namespaced_custom_object(op.GROUP, "v1alpha1", NS, op.PLURAL, "roll",
                                                {"metadata": {"annotations": {op.ACTION_ANNOTATION: action}}})


@pytest.fixture
def registry(s3_server: str, tmp_path: Path) -> Registry:
    bucket = f"op-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    reg = open_registry(f"s3://{bucket}/reg", endpoint_url=s3_server)
    for tag in ("v1", "v2"):
        d = tmp_path / tag
        d.mkdir()
        (d / "model.ubj").write_bytes(tag.encode())
        reg.register(d, {"family": "lightgbm"})
    reg.promote("v1", reason="first")
    reg.set_alias("candidate", "v2", reason="pipeline")
    return reg


@pytest.fixture
def world(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> World:
    w = World(registry)
    monkeypatch.setattr(op, "_reconciler", w.rec)
    return w


def test_full_rollout_status_first_then_cluster(world: World) -> None:
    world.tick()
    st = world.status()
    assert st["phase"] == "Shadow" and st["baseline"] == "v1" and st["candidate"] == "v2"
    # the status was written BEFORE the InferenceService was touched, and the applied generation after
    writes = [(v, b) for v, p, _, b in world.api.calls if v.startswith("patch") and p in ("modelrollouts",
                                                                                           KS_PLURAL)]
    shadow_at = next(i for i, (v, b) in enumerate(writes) if v == "patch_status"
                     and (b or {}).get("status", {}).get("phase") == "Shadow")
    isvc_at = next(i for i, (v, _) in enumerate(writes) if v == "patch")
    applied_at = next(i for i, (v, b) in enumerate(writes) if v == "patch_status" and i > isvc_at
                      and (b or {}).get("status", {}).get("appliedGeneration") == st["machineGeneration"])
    assert shadow_at < isvc_at < applied_at
    assert st["appliedGeneration"] == st["machineGeneration"]
    assert "--shadow-ref=v2" in world.isvc()["spec"]["predictor"]["model"]["args"]

    phases = []
    for _ in range(10):
        world.tick()
        phases.append((world.status()["phase"], world.status()["weight"]))
        if world.status()["phase"] == "Promoted":
            break
    assert phases == [("Shadow", 0), ("Canary", 10), ("Canary", 50), ("Promoting", 0), ("Promoted", 0)]
    st = world.status()
    assert st["conditions"][1]["type"] == "Succeeded" and st["conditions"][1]["status"] == "True"
    assert [a["verdict"] for a in st["lastAnalyses"]] == ["pass"] * 4
    assert st["lastAnalyses"][-1]["reasons"] and st["lastAnalyses"][-1]["time"].endswith("Z")
    assert any("promoted v2" in e["message"] for e in st["events"])
    pred = world.isvc()["spec"]["predictor"]
    assert "canaryTrafficPercent" not in pred and pred["model"]["storageUri"] == storage_uri(world.registry, "v2")
    assert world.registry.aliases()["production"] == "v2"
    # a finished rollout is left alone: its lease released, then only read
    world.tick()
    assert world.status().get("owner") is None
    n = len(world.api.calls)
    world.tick()
    assert {c[0] for c in world.api.calls[n:]} == {"get"}


def test_failing_candidate_is_rolled_back(world: World) -> None:
    world.tick()
    world.tick()
    world.tick()  # canary 10
    assert world.status()["phase"] == "Canary"
    world.metrics.error_share = 0.3
    world.tick()
    assert world.status()["failures"] == 1 and world.status()["lastAnalyses"][-1]["verdict"] == "fail"
    world.tick()
    st = world.status()
    assert st["phase"] == "RolledBack" and "error rate 30.00%" in st["message"]
    pred = world.isvc()["spec"]["predictor"]
    assert pred["canaryTrafficPercent"] == 0 and pred["model"]["storageUri"] == storage_uri(world.registry, "v1")
    assert world.registry.aliases()["production"] == "v1" and world.registry.status("v2") == Status.RETIRED


def test_manual_promote_annotation_is_handled_and_removed(world: World) -> None:
    world.tick()  # Shadow
    world.annotate("promote")
    world.tick()
    # removed by the status store once the status that consumed it landed (not by kopf's patch)
    assert op.ACTION_ANNOTATION not in (world.body()["metadata"].get("annotations") or {})
    assert world.status()["phase"] == "Promoting"
    world.tick()
    assert world.status()["phase"] == "Promoted"
    assert world.registry.aliases()["production"] == "v2"
    # a request on a finished rollout is answered with an event and removed
    world.annotate("rollback")
    world.tick()
    assert op.ACTION_ANNOTATION not in (world.body()["metadata"].get("annotations") or {})
    assert "the rollout is Promoted" in world.status()["events"][-1]["message"]
    assert world.registry.aliases()["production"] == "v2"


def test_abort_annotation_rolls_back(world: World) -> None:
    world.tick()
    world.tick()
    world.tick()
    world.annotate("abort")
    world.tick()
    assert world.status()["phase"] == "RolledBack" and "manual rollback" in world.status()["message"]


def test_restarted_operator_finishes_actions_of_a_recorded_status(world: World) -> None:
    world.tick()
    world.tick()
    world.api.fail_next["patch"] = ApiException(status=503, reason="Service Unavailable")
    world.tick()  # Shadow -> Canary recorded, but the cluster refused the first patch
    st = world.status()
    assert st["phase"] == "Canary" and st["appliedGeneration"] < st["machineGeneration"]
    assert "canaryTrafficPercent" not in world.isvc()["spec"]["predictor"]
    # a new operator process: fresh reconciler, same recorded status
    fresh = op.Reconciler(world.api, None, open_registry_fn=lambda uri: world.registry, clock=lambda: world.now,
                          metrics_reader_factory=lambda *a: world.metrics)
    world.now += 1
    fresh.reconcile(world.body(), kopf.Patch(), log)
    st = world.status()
    assert st["appliedGeneration"] == st["machineGeneration"] and st["phase"] == "Canary"
    pred = world.isvc()["spec"]["predictor"]
    assert pred["canaryTrafficPercent"] == 10 and pred["model"]["storageUri"] == storage_uri(world.registry, "v2")


def test_a_stale_kopf_body_is_not_trusted(world: World) -> None:
    """The handler reads the object itself: a body kopf delivered before the last change does not roll back
    what happened since (a concurrent writer is caught by resourceVersion: tests/test_cr_store.py)."""
    world.tick()
    stale = world.body()
    world.annotate("rollback")  # the object moves on after `stale` was read
    world.now += 5
    op.on_reconcile(body=stale, patch=kopf.Patch(), logger=log)
    assert world.status()["phase"] == "RolledBack" and "manual rollback" in world.status()["message"]


def test_production_moved_meanwhile_fails_the_rollout(world: World, tmp_path: Path) -> None:
    world.tick()
    world.tick()
    world.tick()  # canary 10
    d = tmp_path / "v3"
    d.mkdir()
    (d / "m").write_bytes(b"3")
    world.registry.register(d, {"family": "lightgbm"})
    world.registry.promote("v3", reason="hotfix")
    world.annotate("promote")
    world.tick()
    st = world.status()
    assert st["phase"] == "Failed" and "production is v3, expected v1" in st["message"]
    assert st["appliedGeneration"] == st["machineGeneration"]
    pred = world.isvc()["spec"]["predictor"]  # the cluster went back to the baseline revision
    assert pred["canaryTrafficPercent"] == 0 and pred["model"]["storageUri"] == storage_uri(world.registry, "v1")
    assert world.registry.aliases()["production"] == "v3"


def test_invalid_spec_fails_with_one_line(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    w = World(registry, spec={"strategy": {"canary": {"steps": [50, 10]}}})
    monkeypatch.setattr(op, "_reconciler", w.rec)
    w.tick()
    st = w.status()
    assert st["phase"] == "Failed" and "steps must be strictly increasing" in st["message"]
    assert "\n" not in st["message"] and w.api.patches(KS_PLURAL) == []


def test_no_production_means_no_baseline(registry: Registry, monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    w = World(registry)
    empty = open_registry(f"file://{tmp_path}/empty")
    w.rec = op.Reconciler(w.api, None, open_registry_fn=lambda uri: empty, clock=lambda: w.now)
    monkeypatch.setattr(op, "_reconciler", w.rec)
    w.tick()
    assert w.status()["phase"] == "Failed" and "nothing is in production" in w.status()["message"]


def test_status_mapping_covers_every_machine_field() -> None:
    spec = m.RolloutSpec(name="r", target="t", candidate="v2", baseline="v1", watch=WatchSpec(duration_s=0))
    st = m.RolloutStatus(phase=m.Phase.CANARY, weight=25, step_index=1, failures=1, inconclusive=2,
                         started_at=1.5, phase_since=2.5, last_analysis_at=3.25,
                         analyses=[{"verdict": "fail", "checks": [{"name": "error_rate", "value": 0.2,
                                                                   "threshold": 0.01, "passed": False,
                                                                   "reason": "x"}],
                                    "reasons": ["x"], "labelled": 3, "at": 3.25, "phase": "Canary", "weight": 25}],
                         message="m", candidate="v2", baseline="v1", generation=4)
    assert {f.name for f in dataclasses.fields(m.RolloutStatus)} == set(op.FIELDS)
    cr = op.status_to_cr(st)
    jsonschema.Draft4Validator(strict(SCHEMA["properties"]["status"])).validate(cr)
    assert op.status_from_cr(cr) == st
    assert m.validate_status(spec, st) == []


def test_bars_in_the_spec_wire_live_outcomes_into_the_analysis(registry: Registry, monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    from tideline.monitoring.feedback import LiveOutcomeSource

    w = World(registry, spec={"bars": str(tmp_path / "recent.parquet")})
    monkeypatch.setattr(op, "_reconciler", w.rec)
    w.tick()
    src = w.rec._outcomes[(NS, "roll")]
    assert isinstance(src, LiveOutcomeSource) and src.registry is registry
    assert rollout_bars(w) == str(tmp_path / "recent.parquet")
    # without bars no outcome source is built: accuracy and KS checks stay inconclusive
    w2 = World(registry)
    monkeypatch.setattr(op, "_reconciler", w2.rec)
    w2.tick()
    assert (NS, "roll") not in w2.rec._outcomes


def rollout_bars(w: World) -> str | None:
    return op.rollout_spec("roll", w.body()["spec"], "v1").bars


# ---- human approval before promotion ---------------------------------------------------------------------------
APPROVAL = {"strategy": {"shadow": {"minDurationSeconds": 10, "minLabelledSamples": 0},
                         "canary": {"steps": [10, 50, 100]}, "watch": {"durationSeconds": 0},
                         "approval": {"required": True, "timeoutSeconds": 60}}}


def _plugin(world: World, *argv: str) -> tuple[int, str]:
    import io

    from tideline.k8s import kubectl_plugin as kp

    out = io.StringIO()
    code = kp.run(list(argv), api_factory=lambda ctx: (world.api, NS), out=out)
    return code, out.getvalue()


def _to_awaiting(world: World) -> None:
    seen = []
    for _ in range(6):
        world.tick()
        seen.append(world.status()["phase"])
        if seen[-1] == "AwaitingApproval":
            return
    raise AssertionError(seen)


def test_a_rollout_that_needs_approval_waits_and_promotes_once_approved_with_kubectl(
        registry: Registry, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    world = World(registry, spec=APPROVAL)
    monkeypatch.setattr(op, "_reconciler", world.rec)
    code, _ = _plugin(world, "approve", "roll", "--by", "alice")  # not waiting yet: refused, nothing annotated
    assert code == 2 and "not awaiting approval" in capsys.readouterr().err
    assert op.ACTION_ANNOTATION not in (world.body()["metadata"].get("annotations") or {})
    _to_awaiting(world)
    st = world.status()
    assert st["weight"] == 50 and "kubectl tideline approve roll" in st["message"]
    for _ in range(3):  # it waits: passing analyses never promote it by themselves
        world.tick()
    assert world.status()["phase"] == "AwaitingApproval" and world.registry.aliases()["production"] == "v1"
    assert world.isvc()["spec"]["predictor"].get("canaryTrafficPercent") == 50  # its traffic stays
    code, printed = _plugin(world, "approve", "roll", "--by", "alice")  # the plugin's code path
    assert code == 0 and "approved by alice" in printed
    world.tick()
    st = world.status()
    assert st["phase"] == "Promoting" and st["approvedBy"] == "alice" and st["approvedAt"] == world.now
    assert any("manual approve requested by alice" in e["message"] for e in st["events"])
    world.tick()
    assert world.status()["phase"] == "Promoted" and world.registry.aliases()["production"] == "v2"


def test_no_approval_within_the_timeout_rolls_back(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(registry, spec=APPROVAL)
    monkeypatch.setattr(op, "_reconciler", world.rec)
    _to_awaiting(world)
    world.tick(dt=61.0)
    st = world.status()
    assert st["phase"] == "RolledBack" and "no approval within 60 s" in st["message"]
    assert world.registry.aliases()["production"] == "v1" and world.registry.status("v2") == Status.RETIRED
    assert world.isvc()["spec"]["predictor"]["canaryTrafficPercent"] == 0
