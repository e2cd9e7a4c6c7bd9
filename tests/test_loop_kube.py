"""The loop on a cluster (``tideline.loop.kube``): an approved candidate becomes a ModelRollout with no human in
between, the operator's reconciler takes it from there, a retrain is a Kubeflow Pipelines run, and the
CronWorkflows' Role allows exactly the calls the loop makes."""

from __future__ import annotations

import copy
from datetime import timedelta
from pathlib import Path
from typing import Any

import jsonschema
import kopf
import pandas as pd
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from kube_doubles import FakeCustomObjectsApi
from test_crd import CRD_PATH, strict
from test_loop import NOW, Pipeline, steps, world  # noqa: F401  (world: the fixture)
from test_operator import registry  # noqa: F401  (the fixture: an S3 registry, v1 in production)
from tideline.errors import PolicyError
from tideline.k8s import operator as op
from tideline.loop.core import Loop
from tideline.loop.kube import RECENT_BARS_KEY, ROLLOUT_LABEL, KubeRollouts, kfp_pipeline, store_uri
from tideline.loop.rollouts import rollout_spec
from tideline.rollout.backends.kserve import GROUP as KS_GROUP
from tideline.rollout.backends.kserve import PLURAL as KS_PLURAL
from tideline.rollout.backends.kserve import storage_uri
from tideline.rollout.cr import GROUP, PLURAL
from tideline.rollout.cr import rollout_spec as spec_of_cr

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = strict(yaml.safe_load(CRD_PATH.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
VERB = {"get": "get", "list": "list", "create": "create", "patch": "patch", "patch_status": "patch"}


def kube_loop(w: dict[str, Any], api: FakeCustomObjectsApi, *, now: Any = NOW, clock: Any = None,
              **kw: Any) -> tuple[Loop, Pipeline, KubeRollouts]:
    s = w["settings"].model_copy(update={"loop": w["settings"].loop.model_copy(
        update={"rollouts": "kubernetes", "namespace": "trading"})})
    rolls = KubeRollouts(s, w["registry"], api, **({"clock": clock} if clock else {}))
    pipe = Pipeline(w["registry"], w["tmp"], **kw)
    return Loop(s, w["registry"], rollouts=rolls, pipeline=pipe, clock=lambda: now, workdir=w["tmp"] / "work"), \
        pipe, rolls


def created(api: FakeCustomObjectsApi) -> list[dict[str, Any]]:
    return [copy.deepcopy(o) for (g, _, p, _), o in sorted(api.objects.items()) if (g, p) == (GROUP, PLURAL)]


def test_an_approved_candidate_becomes_a_valid_model_rollout(world: dict[str, Any]) -> None:  # noqa: F811
    api = FakeCustomObjectsApi()
    kube_loop(world, api)[0].tick()  # v1 trained and promoted directly: nothing rolls out
    assert created(api) == []
    loop, _, rolls = kube_loop(world, api, now=NOW + timedelta(days=30))  # model_age fires
    rec = loop.tick()
    st = steps(rec)
    assert st["retrain"][0] == "approved" and st["rollout"][0] == "started", st
    assert "created ModelRollout trading/tideline-v2" in st["rollout"][1]
    (obj,) = created(api)
    jsonschema.Draft4Validator(SCHEMA).validate(obj)  # the object fits our CRD, strictly
    assert obj["metadata"]["labels"][ROLLOUT_LABEL] == "tideline" and obj["metadata"]["namespace"] == "trading"
    cfg = world["settings"].loop.rollout
    bars = store_uri(world["registry"], RECENT_BARS_KEY)
    assert spec_of_cr("tideline", obj["spec"], "v1") == rollout_spec(cfg, "v2", "v1", bars)
    assert obj["spec"]["registry"] == world["registry"].store.uri and obj["spec"]["baseline"] == "v1"
    assert world["registry"].aliases()["candidate"] == "v2"
    # the recent bars are where the operator reads live outcomes from
    assert len(pd.read_parquet(__import__("io").BytesIO(world["registry"].store.get(RECENT_BARS_KEY)[0]))) > 0
    # the next tick sees it in flight (the operator has not taken it yet, within the grace period)
    st2 = steps(loop.tick())
    assert st2["rollout"][0] == "in_flight" and "decide" not in st2
    latest = rolls.latest()
    assert latest is not None and latest["phase"] == "Pending" and latest["candidate"] == "v2"


def test_the_operator_runs_what_the_loop_created(world: dict[str, Any], registry: Any) -> None:  # noqa: F811
    """No human in between: the ModelRollout the loop creates is reconciled by the operator's reconciler as is
    (an S3 registry, test_operator's: KServe's storage initializer reads models from there)."""
    reg = registry
    api = FakeCustomObjectsApi()
    api.add(KS_GROUP, "trading", KS_PLURAL, {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": "tideline", "namespace": "trading"},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "tideline"}, "runtime": "tideline",
                                         "storageUri": storage_uri(reg, "v1"), "args": ["--ref=v1"]}}}})
    s = world["settings"].model_copy(update={"loop": world["settings"].loop.model_copy(
        update={"rollouts": "kubernetes", "namespace": "trading"})})
    KubeRollouts(s, reg, api).start("v2", "v1", "model_age fired")
    (obj,) = created(api)
    rec = op.Reconciler(api, None, open_registry_fn=lambda uri: reg, clock=lambda: 1_700_000_000.0,
                        metrics_reader_factory=lambda *a: None, owner="operator-test")
    rec.reconcile(obj, kopf.Patch())
    st = created(api)[0]["status"]
    assert st["phase"] == "Shadow" and st["owner"] == "operator-test" and st["baseline"] == "v1", st
    args = api.objects[(KS_GROUP, "trading", KS_PLURAL, "tideline")]["spec"]["predictor"]["model"]["args"]
    assert "--shadow-ref=v2" in args
    jsonschema.Draft4Validator(SCHEMA).validate(created(api)[0])


def test_a_candidate_named_by_a_cluster_run_is_picked_up(world: dict[str, Any]) -> None:  # noqa: F811
    api = FakeCustomObjectsApi()
    kube_loop(world, api)[0].tick()
    art = world["tmp"] / "art-kfp"
    art.mkdir()
    (art / "model.txt").write_text("x")
    mv = world["registry"].register(art, {"family": "lightgbm"})
    world["registry"].set_alias("candidate", mv.version, reason="gate approved it (KFP run)")
    loop, pipe, _ = kube_loop(world, api, now=NOW + timedelta(hours=1))
    st = steps(loop.tick())
    assert st["rollout"][0] == "started" and pipe.calls == []
    assert [o["spec"]["candidate"] for o in created(api)] == [mv.version]


def test_a_stalled_rollout_is_reported_not_restarted(world: dict[str, Any]) -> None:  # noqa: F811
    api = FakeCustomObjectsApi()
    clock = [1e12]  # far after the object's creation: past the grace period, and no operator holds it
    kube_loop(world, api)[0].tick()
    kube_loop(world, api, now=NOW + timedelta(days=30))[0].tick()
    loop, _, rolls = kube_loop(world, api, now=NOW + timedelta(days=30, hours=1), clock=lambda: clock[0])
    st = steps(loop.tick())
    assert st["rollout"][0] == "stalled" and "no operator is running ModelRollout trading/tideline-v2" in st[
        "rollout"][1]
    with pytest.raises(PolicyError, match="the operator Deployment restarts it"):
        rolls.restart()
    # an operator holding a live lease: in flight
    key = next(k for k in api.objects if k[2] == PLURAL)
    api.objects[key]["status"] = {"phase": "Canary", "weight": 25, "owner": "operator-a", "leaseUntil": clock[0] + 60,
                                  "machineGeneration": 3}
    latest = rolls.latest()
    assert latest is not None and latest["controller_alive"] and latest["weight"] == 25
    api.objects[key]["status"] |= {"phase": "Reverted", "killSwitch": True, "message": "reverted to v1: guard"}
    latest = rolls.latest()
    assert latest is not None and latest["terminal"] and latest["kill_switch"]


def test_api_errors_are_one_line(world: dict[str, Any]) -> None:  # noqa: F811
    api = FakeCustomObjectsApi()
    _, _, rolls = kube_loop(world, api)
    api.fail_next["list"] = ApiException(status=403, reason="Forbidden")
    with pytest.raises(Exception, match="cannot list ModelRollouts in namespace trading: HTTP 403") as e:
        rolls.latest()
    assert "Role" in (e.value.hint or "")  # type: ignore[attr-defined]
    api.fail_next["create"] = ApiException(status=500, reason="Internal Server Error")
    with pytest.raises(Exception, match="cannot create ModelRollout trading/tideline-v2: HTTP 500"):
        rolls.start("v2", "v1", "test")


def _role_verbs(objs: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    """What the CronWorkflows' ServiceAccount (kubeflow/tideline-trigger) is granted, over every RoleBinding."""
    bound = {(o["metadata"].get("namespace"), o["roleRef"]["name"]) for o in objs if o["kind"] == "RoleBinding"
             and {"kind": "ServiceAccount", "name": "tideline-trigger", "namespace": "kubeflow"} in o["subjects"]}
    roles = [o for o in objs if o["kind"] == "Role" and (o["metadata"].get("namespace"), o["metadata"]["name"]) in bound]
    out: dict[tuple[str, str], set[str]] = {}
    for rule in (r for role in roles for r in role["rules"]):
        for g in rule["apiGroups"]:
            for r in rule["resources"]:
                out.setdefault((g, r), set()).update(rule["verbs"])
    return out


@pytest.mark.parametrize("source", ["kustomize-kind", "helm-kind", "helm-production"])
def test_the_loops_role_allows_exactly_what_the_loop_calls(world: dict[str, Any], source: str) -> None:  # noqa: F811
    """Every call the loop makes on a whole story (create, in flight, stalled, ended, picked up) against what
    the tideline-trigger Role grants on tideline.io: nothing missing, nothing more."""
    from test_k8s_manifests import objects

    api = FakeCustomObjectsApi()
    kube_loop(world, api)[0].tick()
    kube_loop(world, api, now=NOW + timedelta(days=30))[0].tick()  # creates
    kube_loop(world, api, now=NOW + timedelta(days=30, hours=1))[0].tick()  # in flight
    kube_loop(world, api, now=NOW + timedelta(days=30, hours=2), clock=lambda: 1e12)[0].tick()  # stalled
    used = {(GROUP, p, VERB[v]) for v, p, _, _ in api.calls if p == PLURAL}
    granted = _role_verbs(objects(source))
    assert {(g, r, v) for (g, r), vs in granted.items() if g == GROUP for v in vs} == used
    assert used == {(GROUP, PLURAL, "list"), (GROUP, PLURAL, "create")}


def test_a_retrain_on_a_cluster_is_a_kfp_run_on_the_window_in_s3(world: dict[str, Any],  # noqa: F811
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import tideline.training.orchestration as orch

    submitted: list[dict[str, Any]] = []

    def start_retrain(settings: Any, **kw: Any) -> dict[str, Any]:
        submitted.append(kw)
        return {"mode": "kfp", "run_id": "run-123", "host": kw["host"], "reason": kw["reason"]}

    monkeypatch.setattr(orch, "start_retrain", start_retrain)
    s = world["settings"]
    loop = Loop(s, world["registry"], rollouts=None, pipeline=kfp_pipeline("http://kfp:8888", world["registry"]),
                clock=lambda: NOW, workdir=world["tmp"] / "work")
    rec = loop.tick()
    st = steps(rec)
    assert st["retrain"][0] == "submitted" and "run-123" in st["retrain"][1], st
    (kw,) = submitted
    assert kw["mode"] == "kfp" and kw["rollout_mode"] == "direct" and kw["source"].startswith(
        world["registry"].store.uri + "/loop/lake/")
    key = kw["source"][len(world["registry"].store.uri) + 1:]
    window = pd.read_parquet(__import__("io").BytesIO(world["registry"].store.get(key)[0]))
    assert len(window) > 0 and window["symbol"].nunique() == 3
    assert "production" not in world["registry"].aliases()  # the run promotes (direct), not the loop


def test_kfp_without_a_host_is_a_config_error(world: dict[str, Any]) -> None:  # noqa: F811
    from tideline.errors import ConfigError

    with pytest.raises(ConfigError, match="needs loop.kfp_host"):
        kfp_pipeline("", world["registry"])


@pytest.mark.parametrize("source", ["kustomize-kind", "kustomize-base", "helm-kind", "helm-default",
                                    "helm-production"])
def test_every_rendered_cronworkflow_runs_one_loop_tick(source: str) -> None:
    """The kind overlay's and the chart's CronWorkflows: `tideline loop --once` (the weekly one --force) under
    the ServiceAccount whose Role lets the loop create ModelRollouts, never the old `trigger run`."""
    from test_k8s_manifests import objects

    objs = objects(source)
    crons = [o for o in objs if o["kind"] == "CronWorkflow"]
    assert len(crons) == 3
    for cw in crons:
        wf = cw["spec"]["workflowSpec"]
        (c,) = [t["container"] for t in wf["templates"] if "container" in t]
        assert c["command"] == ["tideline"] and c["args"][:2] == ["loop", "--once"], c["args"]
        assert ("--force" in c["args"]) is (cw["metadata"]["name"] == "tideline-retrain-weekly")
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["TIDELINE_LOOP__ROLLOUTS"] == "kubernetes" and env["TIDELINE_LOOP__PIPELINE"] == "kfp"
        assert wf["serviceAccountName"] == "tideline-trigger"
    assert ("tideline.io", "modelrollouts") in _role_verbs(objs)
