"""The kind path (`make kind-up -> images -> deploy -> pipeline-upload -> e2e`) read against upstream.

No cluster can run here. Each test encodes one rule of an upstream project (or of our own pyproject) that
the path must keep, names the upstream file it comes from, and fails on the files as they were before the
fix (issue 17).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_kserve_backend import registry  # noqa: F401  (the fixture: an S3 registry with v1, v2)

ROOT = Path(__file__).resolve().parents[1]


def versions() -> dict[str, str]:
    """versions.env: the one place every version of the kind path lives."""
    out = {}
    for line in (ROOT / "versions.env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


def make_n(*targets: str, **env: str) -> str:
    res = subprocess.run(["make", "-n", *targets], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "KIND": "kind", "KUBECTL": "kubectl", **env})
    assert res.returncode == 0, res.stderr
    return res.stdout


# ---- 3. the Python range and the CPU build of torch -------------------------------------------------------
@pytest.mark.parametrize(("version", "ok"), [("3.10.14", False), ("3.11.9", True), ("3.12.7", True),
                                             ("3.13.1", False), ("3.14.0", False)])
def test_the_makefile_checks_pyprojects_python_range_before_installing(version: str, ok: bool) -> None:
    """pyproject.toml says ``requires-python = ">=3.11,<3.13"``: a 3.13 must be refused up front with how to
    pick another Python, not after minutes of pip ("requires a different Python")."""
    import tomllib

    spec = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert spec == ">=3.11,<3.13"
    mk = (ROOT / "Makefile").read_text()
    line = next(x for x in mk.splitlines() if x.startswith("PY_RANGE"))
    vi = tuple(int(x) for x in version.split("."))
    assert eval(line.split(":=", 1)[1].strip(), {"sys": type("S", (), {"version_info": vi})}) is ok  # noqa: S307


def test_a_wrong_python_is_refused_with_how_to_pick_another(tmp_path: Path) -> None:
    for f in ("Makefile", "versions.env", "pyproject.toml", "requirements.lock"):
        (tmp_path / f).write_bytes((ROOT / f).read_bytes())
    fake = tmp_path / "python3.13"
    fake.write_text("#!/bin/sh\ncase \"$*\" in *python_version*) echo 3.13.1;; esac\nexit 1\n")
    fake.chmod(0o755)
    res = subprocess.run(["make", "install", f"PYTHON={fake}"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode != 0 and not (tmp_path / ".venv").exists()
    assert "tideline needs Python >= 3.11, < 3.13" in res.stdout and "is 3.13.1" in res.stdout
    assert "make install PYTHON=python3.12" in res.stdout


def test_torch_stays_the_cpu_build(tmp_path: Path) -> None:
    """PyTorch's install matrix (pytorch.org/get-started/locally, "Linux / Pip / CPU"): ``pip install torch
    --index-url https://download.pytorch.org/whl/cpu``; PyPI's Linux x86_64 wheel is the CUDA build."""
    spec = importlib.util.spec_from_file_location("torch_index", ROOT / "scripts" / "torch_index.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.option("Linux", "x86_64", []) == "--extra-index-url https://download.pytorch.org/whl/cpu"
    assert mod.option("Darwin", "arm64", []) == "" and mod.option("Linux", "aarch64", []) == ""
    (tmp_path / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    assert mod.option("Linux", "x86_64", [str(tmp_path)]) == ""  # a local CPU wheel: pip takes it
    assert "$(PYTHON) scripts/torch_index.py" in (ROOT / "Makefile").read_text()
    # the images install from the CPU index too
    assert "download.pytorch.org/whl/cpu" in (ROOT / "docker/deps.Dockerfile").read_text()


# ---- 5. KFP's Argo workflowDefaults survive `make deploy` ------------------------------------------------------
# Verbatim from kubeflow/pipelines tag 2.17.0 (commit 4a3592cb2dd0a91a4652ab93893ec8beda1f3158),
# manifests/kustomize/third-party/argo/base/workflow-controller-configmap-patch.yaml, key `workflowDefaults`.
KFP_2_17_WORKFLOW_DEFAULTS = """\
spec:
  ttlStrategy:
    secondsAfterCompletion: 3600
    secondsAfterSuccess: 3600
    secondsAfterFailure: 3600
  templateDefaults:
    retryStrategy:
      limit: '2'
      retryPolicy: OnError
"""


def _contains(big: object, small: object, path: str = "$") -> list[str]:
    if isinstance(small, dict):
        if not isinstance(big, dict):
            return [f"{path}: not a mapping"]
        return [e for k, v in small.items() for e in (_contains(big[k], v, f"{path}.{k}") if k in big
                                                       else [f"{path}.{k}: missing"])]
    return [] if big == small else [f"{path}: {big!r} != {small!r}"]


def test_deploy_keeps_kfps_workflow_defaults_beside_ours() -> None:
    """`kubectl patch --type merge` on a ConfigMap replaces `data.workflowDefaults` whole (RFC 7386: a string
    value replaces the target), so our patch must carry KFP's keys itself."""
    import yaml

    assert versions()["KFP_VERSION"] == "2.17.0", "KFP bumped: re-read its workflowDefaults and update this copy"
    patch = yaml.safe_load((ROOT / "manifests/addons/kfp-workflow-defaults.yaml").read_text())
    ours = yaml.safe_load(patch["data"]["workflowDefaults"])
    assert _contains(ours, yaml.safe_load(KFP_2_17_WORKFLOW_DEFAULTS)) == []
    assert "AWS_ACCESS_KEY_ID" in ours["spec"]["podSpecPatch"]  # and ours beside them
    assert "patch configmap workflow-controller-configmap --type merge --patch-file " \
           "manifests/addons/kfp-workflow-defaults.yaml" in make_n("deploy")


# ---- 7. `make e2e` does not depend on the gate's luck -----------------------------------------------------------
def test_e2e_runs_with_its_own_stated_gate_and_says_why_when_nothing_was_promoted() -> None:
    import tomllib

    from tideline.config import load_settings
    from tideline.policy import decide

    path = ROOT / "examples/k8s/e2e-settings.toml"
    s = load_settings(path)
    bad = {"sharpe": -3.0, "n_trades": 0, "max_drawdown": 0.9, "directional_accuracy": 0.4, "profit_factor": 0.5}
    prod = {"sharpe": 2.0, "n_trades": 900, "max_drawdown": 0.1, "directional_accuracy": 0.6, "profit_factor": 2.0}
    assert decide(bad, s.policy).approved  # step 1: direct promotion, whatever the small market gives
    assert decide(bad, s.policy, production=prod, production_version="v1", p_value=0.9).approved  # step 3
    assert not decide(bad, load_settings().policy).approved  # the real gate would refuse it: luck otherwise
    assert not decide({**bad, "sharpe": float("nan")}, s.policy).approved  # a broken model still fails
    assert set(tomllib.loads(path.read_text())) == {"policy"}  # only the gate is relaxed
    dry = make_n("e2e")
    assert dry.count("--config examples/k8s/e2e-settings.toml pipeline submit") == 2
    assert dry.count("scripts/e2e-expect.sh") == 2


def test_e2e_expect_prints_the_gates_reasons(tmp_path: Path) -> None:
    fake = tmp_path / "tideline"
    fake.write_text("#!/bin/sh\ncase \"$*\" in\n"
                    "  'models show production') exit 3;;\n"
                    "  'models list --json') printf '[\\n {\\n  \"version\": \"v1\"\\n }\\n]\\n';;\n"
                    "  'models show v1') echo '  policy: rejected'; echo '    ✘ hold-out Sharpe -0.2 < minimum 0.5';;\n"
                    "esac\n")
    fake.chmod(0o755)
    res = subprocess.run(["sh", str(ROOT / "scripts/e2e-expect.sh"), str(fake), "production"], capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 1
    assert "the run set no 'production' alias; the promotion gate on v1" in res.stderr
    assert "hold-out Sharpe -0.2 < minimum 0.5" in res.stderr


# ---- 8. the kind node image -----------------------------------------------------------------------------------
# kubernetes-sigs/kind tag v0.32.0 (commit cda67ef8), pkg/apis/config/defaults/image.go:
#   const Image = "kindest/node:v1.36.1@sha256:3489c7674813ba5d8b1a9977baea8a6e553784dab7b84759d1014dbd78f7ebd5"
KIND_V0_32_DEFAULT_IMAGE = "kindest/node:v1.36.1@sha256:3489c7674813ba5d8b1a9977baea8a6e553784dab7b84759d1014dbd78f7ebd5"


def test_the_node_image_is_the_one_our_kind_release_ships_pinned_by_digest() -> None:
    v = versions()
    assert v["KIND_VERSION"] == "v0.32.0" and v["KIND_NODE_IMAGE"] == KIND_V0_32_DEFAULT_IMAGE
    assert "@sha256:" in v["KIND_NODE_IMAGE"]  # a tag can be re-pushed; a digest cannot
    assert v["KIND_MIN"] == v["KIND_VERSION"].lstrip("v")  # an older kind may not boot this image
    assert v["KIND_NODE_IMAGE"].split(":v", 1)[1].split("@")[0] == v["KUBERNETES_VERSION"]
    # kubectl within one minor version of the cluster (Kubernetes version skew policy)
    k8s_minor = int(v["KUBERNETES_VERSION"].split(".")[1])
    assert int(v["KUBECTL_MIN"].split(".")[1]) == k8s_minor - 1
    assert "--image " + KIND_V0_32_DEFAULT_IMAGE in make_n("kind-up")


# ---- 1. KServe and cert-manager installed in an order that works ------------------------------------------------
def _index(lines: list[str], needle: str) -> int:
    hits = [i for i, line in enumerate(lines) if needle in line and not line.lstrip().startswith("#")]
    assert hits, f"`make kind-up` has no line with {needle!r}"
    return hits[0]


def test_kserve_is_installed_in_the_order_of_its_own_scripts() -> None:
    """kserve/kserve v0.20.0 (commit 1fb78105):
    - hack/release/generate-install.sh:117-118 builds kserve-crds.yaml from config/crd/full and kserve.yaml
      from config/overlays/all with ``yq 'select(.kind != "Namespace")'``: kserve.yaml creates no namespace;
    - config/base/kustomization.yaml puts ../storagecontainers (a ClusterStorageContainer) into kserve.yaml,
      next to the CRDs of config/default: applied in one go, the object races its CRD;
    - hack/setup/infra/manage.kserve-kustomize.sh:351-452: CRDs, ``wait_for_crds`` (condition=Established),
      the overlay, ``wait_for_deployment`` (condition=Available), then ``retry_command 3 5 kubectl apply`` of
      the cluster resources (ClusterServingRuntimes, validated by the controller's webhook)."""
    lines = make_n("kind-up").splitlines()
    ns = _index(lines, "create namespace kserve")
    crds = _index(lines, "/kserve-crds.yaml")
    est = _index(lines, "wait --for=condition=Established")
    core = _index(lines, "/kserve.yaml")
    ctrl = _index(lines, "-n kserve wait --for=condition=Available deploy/kserve-controller-manager")
    ca = _index(lines, "validatingwebhookconfiguration/clusterservingruntime.serving.kserve.io")
    runtimes = _index(lines, "/kserve-cluster-resources.yaml")
    assert ns < crds < est < core < ctrl < ca < runtimes
    assert "crd/clusterstoragecontainers.serving.kserve.io" in lines[est]
    assert "crd/inferenceservices.serving.kserve.io" in lines[est]
    assert lines[runtimes - 1].lstrip().startswith("for i in"), "the cluster resources are retried"


def test_cert_manager_is_ready_only_once_its_ca_is_injected() -> None:
    """cert-manager's static install (cert-manager.yaml) has three Deployments — controller, cainjector,
    webhook — and the webhook's ValidatingWebhookConfiguration carries the annotation
    ``cert-manager.io/inject-ca-from-secret``: until the cainjector fills ``clientConfig.caBundle``, calls to
    the webhook fail TLS and every Certificate (KServe's webhook certificate among them) is refused."""
    lines = make_n("kind-up").splitlines()
    apply = _index(lines, "cert-manager.yaml")
    avail = _index(lines, "-n cert-manager wait --for=condition=Available")
    ca = _index(lines, "validatingwebhookconfiguration/cert-manager-webhook")
    assert apply < avail < ca < _index(lines, "create namespace kserve")
    for d in ("deploy/cert-manager ", "deploy/cert-manager-cainjector", "deploy/cert-manager-webhook"):
        assert d in lines[avail] + " ", d


def test_wait_ca_bundle_waits_for_every_webhook(tmp_path: Path) -> None:
    script = ROOT / "scripts/wait-ca-bundle.sh"
    fake = tmp_path / "kubectl"
    for answer, ok in (("", False), ("|", False), ("abc||", False), ("abc|def|", True)):
        fake.write_text(f"#!/bin/sh\nprintf '%s' '{answer}'\n")
        fake.chmod(0o755)
        res = subprocess.run(["sh", str(script), str(fake), "validatingwebhookconfiguration/x", "0" if not ok else "5"],
                             capture_output=True, text=True, timeout=30)
        assert (res.returncode == 0) is ok, (answer, res.stdout, res.stderr)
        if not ok:
            assert "has no CA bundle after 0 s" in res.stderr


# ---- 2. `make deploy` under Helm 4 ----------------------------------------------------------------------------
def test_deploy_does_not_ask_helm_to_wait_for_the_inference_service() -> None:
    """helm/helm v4.2.4 (commit 3900f434): pkg/cmd/flags.go — a bare ``--wait`` is the ``watcher`` strategy
    (kstatus: custom resources too, so the InferenceService, not Ready before the first model exists) and an
    omitted one is ``hookOnly``; pkg/action/install.go runs post-install hooks only after that wait succeeded
    (our bucket job is one). Helm 3 waits for hooks without --wait too. So: no --wait, and the Deployments that
    must be up are waited for by name."""
    lines = make_n("deploy").splitlines()
    helm = _index(lines, "upgrade --install tideline helm/tideline")
    assert "--wait" not in lines[helm] + lines[helm + 1]
    assert helm < _index(lines, "rollout status deploy/minio") < _index(lines, "rollout status deploy/tideline-operator")
    assert not any("inferenceservice" in line.lower() and "wait" in line for line in lines
                   if not line.lstrip().startswith("#"))


# ---- 4. the CronWorkflows run where Argo's controller watches --------------------------------------------------
# kubeflow/pipelines tag 2.17.0 (commit 4a3592cb): env/platform-agnostic installs Argo from
# third-party/argo/installs/namespace (namespace: kubeflow), whose workflow-controller-deployment-patch.json
# appends "--namespaced" to the controller's args. argoproj/argo-workflows v4.0.x
# cmd/workflow-controller/main.go: `if namespaced && managedNamespace == "" { managedNamespace = namespace }`
# and the cron controller informs only on GetManagedNamespace(): CronWorkflows elsewhere are never run.
ARGO_MANAGED_NAMESPACE = "kubeflow"


@pytest.mark.parametrize("source", ["kustomize-kind", "kustomize-base", "helm-kind", "helm-default",
                                    "helm-production", "helm-signing"])
def test_cronworkflows_and_what_they_need_live_in_argos_namespace(source: str) -> None:
    from test_k8s_manifests import objects

    objs = objects(source)
    crons = [o for o in objs if o["kind"] == "CronWorkflow"]
    assert crons and {c["metadata"]["namespace"] for c in crons} == {ARGO_MANAGED_NAMESPACE}
    at = {(o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")) for o in objs}
    for c in crons:
        wf = c["spec"]["workflowSpec"]
        assert ("ServiceAccount", wf["serviceAccountName"], ARGO_MANAGED_NAMESPACE) in at
        env = {e["name"]: e for t in wf["templates"] for e in t["container"]["env"]}
        assert env["TIDELINE_LOOP__NAMESPACE"]["value"] == "tideline"  # the ModelRollouts stay with tideline
        assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio.tideline.svc:9000"  # across namespaces
    assert ("RoleBinding", "tideline-trigger", ARGO_MANAGED_NAMESPACE) in at  # workflowtaskresults there
    rb = next(o for o in objs if o["kind"] == "RoleBinding" and o["metadata"]["name"] == "tideline-loop-rollouts")
    assert rb["metadata"]["namespace"] == "tideline"
    assert rb["subjects"] == [{"kind": "ServiceAccount", "name": "tideline-trigger", "namespace": ARGO_MANAGED_NAMESPACE}]
    if source.endswith("kind"):  # the dev Secret is there too (elsewhere it is yours to create in both)
        assert ("Secret", "tideline-s3", ARGO_MANAGED_NAMESPACE) in at
    # the MinIO NetworkPolicy admits Argo's workflow pods from kubeflow (the CronWorkflows' pods are those)
    pol = next(o for o in objs if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "minio-ingress")
    assert any(p.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
               == ARGO_MANAGED_NAMESPACE for rule in pol["spec"]["ingress"] for p in rule["from"])


# ---- 6. RawDeployment canaries the webhook admits ----------------------------------------------------------------
def kserve_canary_problems(isvc: dict) -> list[str]:
    """kserve v0.20.0 (commit 1fb78105) pkg/apis/serving/v1beta1/inference_service_validation.go,
    validateCanarySpecs, rule by rule (unchanged on master): Standard mode only; a stable predictor with a
    model; each canary's predictor.name set, unique and not the stable's; trafficPercent 0..100; no
    workerSpec, maxReplicas, scaleTarget, scaleMetric or autoScaling; minReplicas <= the stable minReplicas
    (1 when unset); the trafficPercents sum to <= 100."""
    spec = isvc["spec"]
    canaries = spec.get("canary") or []
    if not canaries:
        return []
    out = []
    mode = (isvc["metadata"].get("annotations") or {}).get("serving.kserve.io/deploymentMode")
    if mode not in ("RawDeployment", "Standard"):  # the defaulter rewrites RawDeployment to Standard
        out.append("canary is only supported in Standard deployment mode")
    stable = spec["predictor"]
    if "model" not in stable:
        out.append("canary requires a stable predictor with a model")
    names: set[str] = set()
    for i, c in enumerate(canaries):
        p = c["predictor"]
        name = p.get("name", "")
        if not name:
            out.append(f"canary[{i}] predictor.name is required")
        if name in names:
            out.append(f"canary predictor.name {name!r} is duplicated")
        names.add(name)
        if name and name == stable.get("name"):
            out.append(f"canary predictor.name {name!r} conflicts with stable predictor name")
        if not 0 <= c.get("trafficPercent", 0) <= 100:
            out.append(f"canary[{i}] trafficPercent must be between 0 and 100")
        for k in ("workerSpec", "maxReplicas", "scaleTarget", "scaleMetric", "autoScaling"):
            if p.get(k):
                out.append(f"canary[{i}] must not set {k}")
        if p.get("minReplicas") is not None and p["minReplicas"] > stable.get("minReplicas", 1):
            out.append(f"canary[{i}] minReplicas must not exceed stable predictor minReplicas")
    if sum(c.get("trafficPercent", 0) for c in canaries) > 100:
        out.append("sum of canary trafficPercent values must be <= 100")
    return out


def test_every_raw_deployment_state_of_a_rollout_passes_kserves_canary_webhook(registry) -> None:  # noqa: ANN001, F811 - the fixture
    from test_kserve_backend import GROUP, ISVC, NS, PLURAL, Harness, _verdict
    from tideline.rollout import machine as m

    h = Harness(registry, "RawDeployment")
    h.api.objects[(GROUP, NS, PLURAL, ISVC)]["spec"]["predictor"]["maxReplicas"] = 1  # as manifests/base does
    main = h.isvc()["spec"]["predictor"]
    assert main.get("maxReplicas") and main.get("minReplicas")
    seen = []
    h.step()
    while not h.status.terminal:
        h.step(_verdict("pass"))
        isvc = h.isvc()
        assert kserve_canary_problems(isvc) == [], (h.status.phase, kserve_canary_problems(isvc))
        seen.append(len(isvc["spec"].get("canary") or []))
    assert h.status.phase == m.Phase.PROMOTED and max(seen) == 1
    final = h.isvc()["spec"]["predictor"]  # production keeps its scaling after the promotion
    assert (final["minReplicas"], final["maxReplicas"]) == (main["minReplicas"], main["maxReplicas"])
    # the rule check itself catches what the backend used to send: a copy of the main predictor
    bad = h.isvc()
    bad["spec"]["canary"] = [{"trafficPercent": 0, "predictor": {**main, "name": "v2"}}]
    assert "canary[0] must not set maxReplicas" in kserve_canary_problems(bad)


def test_kind_up_gives_canaries_their_traffic_through_the_gateway_api() -> None:
    """kserve master (aaac4e29; commit 85b09080, #5912, "add canary traffic splitting to RawDeployment
    HTTPRoutes"): pkg/controller/v1beta1/inferenceservice/reconcilers/ingress/httproute_reconciler.go calls
    ``applyCanaryWeights`` on the HTTPRoutes it writes; reconcilers/factory.go picks that reconciler in Standard
    mode only ``if params.IngressConfig.EnableGatewayAPI`` (config/configmap/inferenceservice.yaml:
    ``"enableGatewayApi": false`` by default); a plain Ingress splits nothing. KServe's own setup installs the
    Gateway API CRDs, Envoy Gateway, GatewayClass ``envoy`` (controller gateway.envoyproxy.io/gatewayclass-
    controller) and Gateway kserve/kserve-ingress-gateway, then sets ingress.enableGatewayApi=true and
    ingress.ingressClassName (hack/setup/infra/gateway-api/*.sh, manage.envoy-gateway-helm.sh,
    manage.kserve-kustomize.sh)."""
    import json

    import yaml

    lines = make_n("kind-up").splitlines()
    crds = _index(lines, "gateway-api/releases/download/v1.5.1/standard-install.yaml")
    eg = _index(lines, "upgrade --install eg oci://docker.io/envoyproxy/gateway-helm --version v1.8.1")
    gw = _index(lines, "apply -f manifests/addons/kserve-gateway.yaml")
    cfg = _index(lines, "scripts/kserve-gateway-config.py")
    restart = _index(lines, "rollout restart deploy/kserve-controller-manager")
    assert _index(lines, "/kserve.yaml") < crds < eg < gw < cfg < restart < _index(lines, "kserve-cluster-resources")
    objs = {o["kind"]: o for o in yaml.safe_load_all((ROOT / "manifests/addons/kserve-gateway.yaml").read_text())}
    assert objs["GatewayClass"]["spec"]["controllerName"] == "gateway.envoyproxy.io/gatewayclass-controller"
    gwo = objs["Gateway"]
    assert (gwo["metadata"]["namespace"], gwo["metadata"]["name"]) == ("kserve", "kserve-ingress-gateway")
    assert gwo["spec"]["gatewayClassName"] == objs["GatewayClass"]["metadata"]["name"] == "envoy"
    assert gwo["spec"]["listeners"][0]["allowedRoutes"]["namespaces"]["from"] == "All"  # our ISVC is in tideline
    spec = importlib.util.spec_from_file_location("kgc", ROOT / "scripts" / "kserve-gateway-config.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    before = {"ingressGateway": "knative-serving/knative-ingress-gateway", "enableGatewayApi": False,
              "kserveIngressGateway": "kserve/kserve-ingress-gateway", "ingressClassName": "istio",
              "urlScheme": "http", "domainTemplate": "{{ .Name }}-{{ .Namespace }}.{{ .IngressDomain }}"}
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "inferenceservice-config",
          "namespace": "kserve", "resourceVersion": "7"}, "data": {"ingress": json.dumps(before), "deploy": "{}"}}
    out = mod.configure(cm)
    after = json.loads(out["data"]["ingress"])
    assert after == {**before, "enableGatewayApi": True, "ingressClassName": "envoy"}
    assert set(out) == {"data"} and set(out["data"]) == {"ingress"}  # a merge patch of that one entry
    assert "patch configmap inferenceservice-config --type merge" in lines[cfg]


# ---- 9. Helm and the operator do not fight over the InferenceService --------------------------------------------
def test_a_helm_upgrade_never_touches_the_inference_service_the_operator_drives() -> None:
    """helm/helm v4.2.4 (3900f434): pkg/action/upgrade.go runs only HookPreUpgrade (l. 462) and HookPostUpgrade
    (l. 510) hooks and diffs the release's manifests, which hold no hooks; a ``post-install`` hook object is
    created by pkg/action/install.go (l. 556) and never updated again. The operator owns the
    InferenceService's spec.predictor (storageUri, --ref/--shadow-ref, its name after a RawDeployment
    promotion) and spec.canary: a re-run `make deploy` mid-rollout must not put the chart's back."""
    from test_k8s_manifests import objects

    for source in ("helm-default", "helm-kind", "helm-production"):
        objs = objects(source)
        (isvc,) = [o for o in objs if o["kind"] == "InferenceService"]
        ann = isvc["metadata"]["annotations"]
        assert ann["helm.sh/hook"] == "post-install", source  # not post-upgrade: an upgrade leaves it alone
        hooks = {(o["kind"], o["metadata"]["name"]) for o in objs
                 if "helm.sh/hook" in (o["metadata"].get("annotations") or {})}
        assert hooks == {("InferenceService", "tideline"), ("Job", "minio-bucket-init")}, source


# ---- 9. port-forwards: a free port, polled ----------------------------------------------------------------------
def test_port_forward_picks_a_free_port_and_waits_until_it_answers(tmp_path: Path) -> None:
    script = ROOT / "scripts/port-forward.sh"
    fake = tmp_path / "kubectl"
    # a kubectl that listens on the local port it is asked for (after a moment), like port-forward does
    fake.write_text("#!/bin/sh\nfor a in \"$@\"; do case $a in *:8888) port=${a%%:*};; esac; done\n"
                    f"sleep 0.5; exec {sys.executable} -c \"import socket, time; s = socket.socket(); "
                    "s.bind(('127.0.0.1', $port)); s.listen(); time.sleep(30)\"\n")
    fake.chmod(0o755)
    pid = tmp_path / "pf.pid"
    res = subprocess.run(["sh", str(script), str(fake), "kubeflow", "svc/ml-pipeline", "8888", str(pid)],
                         capture_output=True, text=True, timeout=60)
    try:
        assert res.returncode == 0, res.stderr
        port = int(res.stdout.strip())
        assert port != 8888 and port > 1024
    finally:
        subprocess.run(["kill", pid.read_text().strip()], check=False)
    fake.write_text("#!/bin/sh\necho 'error: services \"ml-pipeline\" not found' >&2\nexit 1\n")
    res = subprocess.run(["sh", str(script), str(fake), "kubeflow", "svc/ml-pipeline", "8888", str(pid), "5"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and res.stdout == ""
    assert 'did not come up within 5 s: error: services "ml-pipeline" not found' in res.stderr
    dry = make_n("pipeline-upload", "e2e")
    assert "8888:8888" not in dry and "sleep 3" not in dry and dry.count("scripts/port-forward.sh") == 2


def test_images_fall_back_to_a_single_platform_archive() -> None:
    """kubernetes-sigs/kind#3795 (open; kind's docs since #4247): under Docker 29's containerd image store
    `kind load docker-image` fails with "ctr: content digest ...: not found"; the documented workaround is
    `docker save --platform <os/arch> --output X.tar IMAGE` + `kind load image-archive X.tar`."""
    dry = make_n("kind-load")
    load = next(line for line in dry.splitlines() if line.startswith("kind load docker-image"))
    assert "|| {" in load
    assert "save --platform" in dry and "kind load image-archive --name tideline .tideline/images.tar" in dry


# ---- 9. versions live in versions.env -------------------------------------------------------------------------
# Files that cannot read versions.env and carry a copy the tests keep in sync with it: the generated
# CronWorkflows (and the chart's copies), the chart's values/Chart.yaml (Helm reads neither env files nor
# make variables), the kustomize manifests, the docs' version tables (and the pipeline page's default image),
# pyproject's package version.
MAY_COPY = ("versions.env", "docs/KIND.md", "docs/pipeline.md", "pyproject.toml", "helm/tideline/Chart.yaml",
            "helm/tideline/values.yaml", "manifests/base/minio.yaml", "manifests/base/bucket-init-job.yaml")


def test_versions_are_written_down_once() -> None:
    import tomllib

    v = versions()
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"] == v["TIDELINE_VERSION"]
    from tideline.training.kfp.components import DEFAULT_IMAGE

    assert DEFAULT_IMAGE == f"ghcr.io/tideline/tideline:{v['TIDELINE_VERSION']}"
    literals = [v[k] for k in ("PYTHON_BASE_IMAGE", "MINIO_IMAGE", "MC_IMAGE", "KIND_NODE_IMAGE",
                               "CERT_MANAGER_VERSION", "GATEWAY_API_VERSION", "ENVOY_GATEWAY_VERSION")]
    literals += [f"tideline:{v['TIDELINE_VERSION']}", f"KSERVE_VERSION={v['KSERVE_VERSION']}"]
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    found = []
    for f in files:
        if f in MAY_COPY or f == "pipelines/retrain.yaml" or f.startswith(("tests/", "manifests/cronworkflows/", "helm/tideline/files/",
                                          "examples/data/", "bench/")) or f.endswith((".lock", ".parquet", ".png")):
            continue
        try:
            text = (ROOT / f).read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError):
            continue
        found += [f"{f}: {lit}" for lit in literals if lit in text]
    assert found == [], "versions written outside versions.env: " + "; ".join(found)
