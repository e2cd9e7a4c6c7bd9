"""The ModelRollout status subresource as the reconciler's status store (``tideline.rollout.cr``).

No API server can run here; the double (``tests/reliability/kube.py``) behaves like one where the store
relies on it: a merge patch carrying a stale ``resourceVersion`` gets 409 (the rule the API server applies
to any update with a resourceVersion precondition: kubernetes ``staging/src/k8s.io/apiserver/pkg/registry/
generic/registry/store.go``, ``Update`` -> ``storage.GuaranteedUpdate`` -> ``NewConflict``), the status
subresource ignores everything but ``.status`` (and the main resource ignores ``.status``), and an answer can
be lost after the write landed.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from kube_doubles import FakeCustomObjectsApi
from reliability.controller import NAME, Killer, MemStore, Observer, SimBackend, SimServing, base_registry
from test_crd import CRD_PATH, strict
from tideline.clock import FakeClock
from tideline.errors import ConfigError, StorageUnavailable
from tideline.rollout import machine as m
from tideline.rollout.analysis import Thresholds
from tideline.rollout.controller import RolloutController
from tideline.rollout.cr import (
    ACTION_ANNOTATION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    CRStatusStore,
    rollout_spec,
    spec_to_cr,
)
from tideline.rollout.guard import WatchSpec
from tideline.rollout.status import Lost

NS = "tideline"
SCHEMA = strict(yaml.safe_load(CRD_PATH.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
SPEC = m.RolloutSpec(name="tideline", target="tideline", candidate="v2", baseline="v1",
                     shadow=m.ShadowSpec(min_duration_s=120, min_labelled=10), steps=(10, 25, 50, 100),
                     interval_s=30, thresholds=Thresholds(min_requests=20, min_labelled=60, accuracy_margin=0.03),
                     watch=WatchSpec(duration_s=3600, alpha=0.05, min_accuracy=0.45, min_outcomes=200),
                     bars="s3://tideline-models/registry/loop/recent-bars.parquet")


def world(spec: m.RolloutSpec = SPEC) -> tuple[FakeCustomObjectsApi, CRStatusStore]:
    api = FakeCustomObjectsApi()
    api.add(GROUP, NS, PLURAL, {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
                                "metadata": {"name": spec.name, "namespace": NS},
                                "spec": spec_to_cr(spec, registry="s3://tideline-models/registry",
                                                   mode="RawDeployment", metrics_source="pods")})
    return api, CRStatusStore(api, NS, spec.name, baseline=lambda: "v1")


def obj(api: FakeCustomObjectsApi, name: str = "tideline") -> dict[str, Any]:
    return copy.deepcopy(api.objects[(GROUP, NS, PLURAL, name)])


def test_the_spec_round_trips_and_fits_the_crd() -> None:
    api, store = world()
    jsonschema.Draft4Validator(SCHEMA).validate(obj(api))
    doc, _ = store.load()
    assert doc.spec == SPEC and doc.status.phase == m.Phase.PENDING and doc.applied_generation == 0
    assert rollout_spec("tideline", obj(api)["spec"], "v1") == SPEC


def test_a_whole_document_fits_the_crd_and_round_trips() -> None:
    api, store = world()
    doc, token = store.load()
    doc.status = m.RolloutStatus(phase=m.Phase.CANARY, weight=25, step_index=1, started_at=10.0, phase_since=20.5,
                                 candidate="v2", baseline="v1", generation=3)
    doc.snapshot = {"series": [{"version": "v2", "role": "canary", "requests": 5.0, "errors": 1.0,
                                "client_errors": 0.0, "buckets": [["0.05", 4.0], ["+Inf", 5.0]],
                                "latency_count": 5.0, "latency_sum": 0.1}]}
    doc.snapshot_at, doc.applied_generation, doc.owner, doc.lease_until = 20.5, 2, "operator-a", 110.5
    doc.add_event(20.5, "now 25%")
    store.write(doc, token)
    jsonschema.Draft4Validator(SCHEMA).validate(obj(api))
    back, _ = store.load()
    assert back.to_dict() == doc.to_dict()


def test_a_stale_write_is_lost_and_changes_nothing() -> None:
    api, store = world()
    doc, token = store.load()
    other, other_token = store.load()
    other.owner, other.lease_until = "operator-b", 100.0
    store.write(other, other_token)  # another reconcile wrote first
    doc.owner, doc.lease_until = "operator-a", 100.0
    with pytest.raises(Lost):
        store.write(doc, token)
    assert obj(api)["status"]["owner"] == "operator-b"


def test_a_write_whose_answer_was_lost_is_recognised_as_ours() -> None:
    api, store = world()
    doc, token = store.load()
    doc.owner, doc.lease_until = "operator-a", 100.0
    api.lose_next.add("patch_status")
    new = store.write(doc, token)
    assert new.resource_version == obj(api)["metadata"]["resourceVersion"]  # the next write can build on it
    doc.lease_until = 130.0
    store.write(doc, new)
    assert obj(api)["status"]["leaseUntil"] == 130.0


def test_an_unreachable_api_server_is_storage_unavailable_and_nothing_changes() -> None:
    api, store = world()
    doc, token = store.load()
    before = obj(api)
    api.fail_next["patch_status"] = ApiException(status=503, reason="Service Unavailable")
    api.fail_next["get"] = ApiException(status=503, reason="Service Unavailable")
    doc.owner = "operator-a"
    with pytest.raises(StorageUnavailable, match="HTTP 503"):
        store.write(doc, token)
    assert obj(api) == before
    api.fail_next["get"] = ApiException(status=500, reason="etcdserver: request timed out")
    with pytest.raises(StorageUnavailable, match="cannot read ModelRollout tideline/tideline: HTTP 500"):
        store.load()
    with pytest.raises(ConfigError, match="no ModelRollout tideline/gone"):
        CRStatusStore(api, NS, "gone").load()


def test_a_consumed_request_is_removed_after_the_write_and_a_newer_one_is_kept() -> None:
    api, store = world()
    api.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "tideline",
                                       {"metadata": {"annotations": {ACTION_ANNOTATION: "abort"}}})
    doc, token = store.load()
    assert doc.requested_action == "rollback"  # abort is a rollback
    doc.requested_action = None
    token = store.write(doc, token)
    assert ACTION_ANNOTATION not in (obj(api)["metadata"].get("annotations") or {})
    assert token.resource_version == obj(api)["metadata"]["resourceVersion"]
    # a request made between the consuming status write and the removal stays for the next pass
    api.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "tideline",
                                       {"metadata": {"annotations": {ACTION_ANNOTATION: "rollback"}}})
    doc, token = store.load()
    doc.requested_action = None

    def user_annotates(verb: str, plural: str, name: str) -> None:
        if verb == "patch" and plural == PLURAL:
            api.on_call = None
            api.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "tideline",
                                               {"metadata": {"annotations": {ACTION_ANNOTATION: "promote"}}})

    api.on_call = user_annotates
    store.write(doc, token)
    assert obj(api)["metadata"]["annotations"][ACTION_ANNOTATION] == "promote"


def test_two_operators_racing_one_steps_back(tmp_path: Path) -> None:
    """Two reconcilers (an old pod still running while its replacement starts) take the same pass: one
    status write wins, the other gets 409 and leaves everything to the winner."""
    spec = m.RolloutSpec(name=NAME, target=NAME, candidate="v2", baseline="v1", interval_s=30)
    api, store = world(spec)
    mem = MemStore()
    reg = base_registry(tmp_path, mem)
    serving = SimServing()
    obs = Observer(lambda: store.load()[0], reg, serving)
    clock = FakeClock()
    a = RolloutController(NAME, SimBackend(reg, serving, Killer(None), obs), store, clock, owner="operator-a")
    b = RolloutController(NAME, SimBackend(reg, serving, Killer(None), obs), store, clock, owner="operator-b")
    raced = []

    def b_goes_first(verb: str, plural: str, name: str) -> None:  # b's whole pass lands between a's read and write
        if verb == "patch_status" and not raced:
            raced.append(True)
            b.reconcile_once()

    api.on_call = b_goes_first
    a.reconcile_once()
    st = obj(api)["status"]
    assert st["owner"] == "operator-b" and st["phase"] == "Shadow"
    assert obs.violations == [] and serving.summary()["shadow"] == "v2"
