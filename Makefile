# tideline — every target bootstraps what it needs (a venv in .venv) on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install lock test test-fast demo bench screenshot reliability lint docs clean help

help:
	@echo "make lock   - regenerate requirements.lock (every install's exact versions) from pyproject.toml"
	@echo "make test   - create .venv, install tideline with test extras, run the whole test suite"
	@echo "make lint   - ruff and the module boundaries (import-linter contracts in pyproject.toml); linters only"
	@echo "make docs   - the documentation site (MkDocs, docs/ + mkdocs.yml) into site/, strict: a broken link fails"
	@echo "make demo   - the whole loop on one machine: train, serve, market shift, retrain, rollout, rollback, HTML report"
	@echo "make bench  - run the benchmarks in bench/ and write bench/results.json + bench/RESULTS.md + docs/benchmarks.md"
	@echo "make screenshot - the loop's status page over the demo's registry, by headless chromium (after make demo)"
	@echo "make reliability - faults, bad input and attacks, many times each; writes the reliability table (docs/reliability.md)"
	@echo "make images - build the pipeline, predictor and controller images (no cluster needed)"
	@echo "make images-local - the same images where no image registry is reachable (debootstrap base, local wheels)"
	@echo "make images-test  - build them here and run them for real: pipeline, predictor, rollout, faults (root)"
	@echo "make kind-up | kind-load | deploy | pipeline-upload | e2e | kind-down - tideline on a local kind cluster (docs/KIND.md)"

# Every install takes its versions from one lock (requirements.lock, made by pip-compile from pyproject's
# ranges: `make lock`); the build backend is locked too (--no-build-isolation), so nothing comes from the
# day's releases. torch stays the CPU build: on Linux x86_64 PyPI's wheel is the multi-GB CUDA one, so the
# install adds PyTorch's CPU index there, unless pip finds a local CPU wheel (scripts/torch_index.py).
LOCK      := requirements.lock
PIP       := $(BIN)/pip install --quiet --disable-pip-version-check
PIP_TOOLS := pip-tools==7.7.0
# pyproject's requires-python, checked before anything is installed (pip's own refusal comes much later)
PY_RANGE  := sys.version_info[:2] >= (3, 11) and sys.version_info[:2] < (3, 13)

$(STAMP): pyproject.toml $(LOCK)
	@$(PYTHON) -c 'import sys; sys.exit(0 if $(PY_RANGE) else 1)' 2>/dev/null \
		|| { echo "error: tideline needs Python >= 3.11, < 3.13 (pyproject.toml); '$(PYTHON)' is \
	$$($(PYTHON) -c 'import platform; print(platform.python_version())' 2>/dev/null || echo missing). Pick another: \
	make $(MAKECMDGOALS) PYTHON=python3.12 (e.g. from your distribution, pyenv or uv python install 3.12)"; \
		exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) -c requirements.lock setuptools wheel
	$(PIP) --no-build-isolation -c requirements.lock $$($(PYTHON) scripts/torch_index.py) -e '.[test]'
	@touch $(STAMP)

# Regenerate the lock from pyproject (keeps every pin that still fits; `make lock UPGRADE=1` takes the newest).
# pip-compile writes torch's local label (+cpu) from the wheel on disk; the lock keeps the public version,
# which pip matches to that wheel here and to the CPU index's build in the images.
lock:
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet --disable-pip-version-check $(PIP_TOOLS)
	.venv-lock/bin/pip-compile --quiet --extra test --all-build-deps --allow-unsafe --strip-extras \
		--no-emit-find-links --no-emit-index-url --no-emit-trusted-host $(if $(UPGRADE),--upgrade) \
		--output-file $(LOCK) pyproject.toml
	sed -i -E 's/^(torch==[^+ ]+)\+[a-z0-9.]+/\1/' $(LOCK)

install: $(STAMP)

# The linters live in their own venv from their own lock: `make lint` never needs tideline's dependencies
# (import-linter reads the source, it imports nothing). The contracts are in pyproject.toml [tool.importlinter].
LINT_VENV  := .venv-lint
LINT_STAMP := $(LINT_VENV)/.installed-stamp
LINT_PATHS := src tests bench components pipelines serving scripts manifests

$(LINT_STAMP): scripts/requirements-lint.lock
	$(PYTHON) -m venv $(LINT_VENV)
	$(LINT_VENV)/bin/pip install --quiet --disable-pip-version-check -r scripts/requirements-lint.lock
	@touch $(LINT_STAMP)

lint: $(LINT_STAMP)
	$(LINT_VENV)/bin/ruff check $(LINT_PATHS)
	PYTHONPATH=src $(LINT_VENV)/bin/lint-imports --no-cache

# The documentation site (docs/, nav in mkdocs.yml): MkDocs in its own venv from its own lock, like the linters.
# --strict (and mkdocs.yml's validation settings): a link to a missing page or anchor fails the build.
DOCS_VENV  := .venv-docs
DOCS_STAMP := $(DOCS_VENV)/.installed-stamp

$(DOCS_STAMP): scripts/requirements-docs.lock
	$(PYTHON) -m venv $(DOCS_VENV)
	$(DOCS_VENV)/bin/pip install --quiet --disable-pip-version-check -r scripts/requirements-docs.lock
	@touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(DOCS_VENV)/bin/mkdocs build --strict --site-dir site

test: $(STAMP)
	$(BIN)/pytest -q

test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow"

demo: $(STAMP)
	$(BIN)/tideline demo --seed 7

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

# the loop's status page over the registry `make demo` left, photographed by headless chromium (docs/images/)
screenshot: $(STAMP)
	$(BIN)/python scripts/status_screenshot.py

reliability: $(STAMP)
	$(BIN)/python tests/reliability/run.py

clean:
	rm -rf .tideline .pytest_cache build *.egg-info src/*.egg-info

# ---- Kubernetes on kind: make kind-up images deploy pipeline-upload e2e kind-down (docs/KIND.md) ----------
# Every version lives in versions.env; each target checks its tools (scripts/check-tools.sh) and is idempotent.
include versions.env

KIND_CLUSTER ?= tideline
NS           ?= tideline
KIND         ?= kind
KUBECTL      ?= kubectl
HELM         ?= helm
DOCKER       ?= docker
PROMETHEUS   ?= 0
K            := $(KUBECTL) --context kind-$(KIND_CLUSTER)
CHECK        := DOCKER=$(DOCKER) KIND=$(KIND) KUBECTL=$(KUBECTL) HELM=$(HELM) scripts/check-tools.sh
PIPELINE_IMAGE   := ghcr.io/tideline/tideline:$(TIDELINE_VERSION)
PREDICTOR_IMAGE  := ghcr.io/tideline/tideline-predictor:$(TIDELINE_VERSION)
CONTROLLER_IMAGE := ghcr.io/tideline/tideline-controller:$(TIDELINE_VERSION)
IMAGES           := $(PIPELINE_IMAGE) $(PREDICTOR_IMAGE) $(CONTROLLER_IMAGE)
# the dependency image the three start from (docker/deps.Dockerfile; built first, never pushed)
DEPS_IMAGE       := tideline-deps:$(TIDELINE_VERSION)
# where the images' packages come from: the official Python base image and the PyTorch CPU index (its
# default); a machine with no image registry passes local stand-ins instead (scripts/images-local.sh)
IMAGE_BUILD_ARGS ?= --build-arg PYTHON_BASE_IMAGE=$(PYTHON_BASE_IMAGE)
# flags for every build (e.g. --network host where the engine has no bridge network)
BUILD_FLAGS      ?=
BUILD            := DOCKER_BUILDKIT=1 $(DOCKER) build $(BUILD_FLAGS)
# the KFP API through a port-forward on a free local port, polled until it answers (scripts/port-forward.sh)
KFP_FORWARD   = sh scripts/port-forward.sh "$(K)" kubeflow svc/ml-pipeline 8888 .tideline/kfp-pf.pid
E2E_REGISTRY := s3://tideline-models/registry
E2E_SETTINGS := examples/k8s/e2e-settings.toml
# after a run: the alias it should have set, or the gate's reasons (the newest version's checks) and exit 1
E2E_EXPECT    = sh scripts/e2e-expect.sh "$(K) -n $(NS) exec deploy/tideline-operator -- tideline"
PF_PIDS      := .tideline/port-forward.pids
KSERVE_URL   := https://github.com/kserve/kserve/releases/download/$(KSERVE_VERSION)
KSERVE_CRDS  := crd/inferenceservices.serving.kserve.io crd/servingruntimes.serving.kserve.io \
                crd/clusterservingruntimes.serving.kserve.io crd/clusterstoragecontainers.serving.kserve.io \
                crd/inferencegraphs.serving.kserve.io crd/trainedmodels.serving.kserve.io
# wait (5 min at most) until cert-manager's cainjector has injected the CA bundle into a webhook configuration
WAIT_CA       = sh scripts/wait-ca-bundle.sh "$(K)"

.PHONY: kind-up images images-local images-test kind-load deploy pipeline-upload e2e kind-down chart-sync _cluster

_cluster:
	@$(CHECK) kubectl
	@$(K) get --raw /readyz >/dev/null 2>&1 \
		|| { echo "error: no reachable kind cluster 'kind-$(KIND_CLUSTER)'; run: make kind-up"; exit 1; }

kind-up:
	@$(CHECK) docker kind kubectl helm
	@command -v git >/dev/null || { echo "error: git is required (kubectl fetches the KFP manifests with it)"; exit 1; }
	@if $(KIND) get clusters 2>/dev/null | grep -qx '$(KIND_CLUSTER)'; then echo "kind cluster $(KIND_CLUSTER) exists"; \
	else $(KIND) create cluster --name $(KIND_CLUSTER) --image $(KIND_NODE_IMAGE) --config kind-config.yaml --wait 180s; fi
	# cert-manager: KServe's webhook certificates. Ready = its three Deployments Available AND the cainjector has
	# put the CA into the webhook's configuration (before that every cert-manager object is refused)
	$(K) apply --server-side --force-conflicts -f https://github.com/cert-manager/cert-manager/releases/download/$(CERT_MANAGER_VERSION)/cert-manager.yaml
	$(K) -n cert-manager wait --for=condition=Available deploy/cert-manager deploy/cert-manager-cainjector deploy/cert-manager-webhook --timeout=300s
	@$(WAIT_CA) validatingwebhookconfiguration/cert-manager-webhook
	# KServe in the order of its own install scripts (hack/setup/infra/manage.kserve-kustomize.sh): the namespace
	# (kserve.yaml carries none since v0.17), the CRDs until Established (kserve.yaml holds a
	# ClusterStorageContainer), the controller until Available, then the cluster resources, retried while the
	# webhook that validates them comes up. Our InferenceService asks for RawDeployment (Standard) mode.
	$(K) create namespace kserve --dry-run=client -o yaml | $(K) apply -f -
	$(K) apply --server-side --force-conflicts -f $(KSERVE_URL)/kserve-crds.yaml
	$(K) wait --for=condition=Established --timeout=120s $(KSERVE_CRDS)
	$(K) apply --server-side --force-conflicts -f $(KSERVE_URL)/kserve.yaml
	$(K) -n kserve wait --for=condition=Available deploy/kserve-controller-manager --timeout=300s
	# Gateway API + Envoy Gateway: in Standard mode KServe gives a canary its trafficPercent only in the HTTPRoutes
	# it writes with ingress.enableGatewayApi on; installed as KServe's scripts do (hack/setup/infra/gateway-api/,
	# manage.envoy-gateway-helm.sh), then KServe's config switched and its controller restarted to read it
	$(K) apply --server-side --force-conflicts -f https://github.com/kubernetes-sigs/gateway-api/releases/download/$(GATEWAY_API_VERSION)/standard-install.yaml
	$(K) wait --for=condition=Established --timeout=120s crd/gatewayclasses.gateway.networking.k8s.io \
		crd/gateways.gateway.networking.k8s.io crd/httproutes.gateway.networking.k8s.io
	$(HELM) show crds oci://docker.io/envoyproxy/gateway-helm --version $(ENVOY_GATEWAY_VERSION) \
		| $(K) apply --server-side --force-conflicts -f -
	$(HELM) upgrade --install eg oci://docker.io/envoyproxy/gateway-helm --version $(ENVOY_GATEWAY_VERSION) \
		--kube-context kind-$(KIND_CLUSTER) -n envoy-gateway-system --create-namespace --skip-crds
	$(K) -n envoy-gateway-system wait --for=condition=Available deploy/envoy-gateway --timeout=300s
	$(K) apply -f manifests/addons/kserve-gateway.yaml
	$(K) -n kserve patch configmap inferenceservice-config --type merge -p "$$($(K) -n kserve get configmap \
		inferenceservice-config -o json | python3 scripts/kserve-gateway-config.py)"
	$(K) -n kserve rollout restart deploy/kserve-controller-manager
	$(K) -n kserve wait --for=condition=Available deploy/kserve-controller-manager --timeout=300s
	@$(WAIT_CA) validatingwebhookconfiguration/clusterservingruntime.serving.kserve.io
	@for i in 1 2 3 4 5 6; do \
		$(K) apply --server-side --force-conflicts -f $(KSERVE_URL)/kserve-cluster-resources.yaml && exit 0; \
		echo "(KServe's webhook not serving yet: retry $$i/6 in 10 s)"; sleep 10; \
	done; echo "error: kserve-cluster-resources.yaml refused 6 times; see: $(K) -n kserve logs deploy/kserve-controller-manager"; exit 1
	# Kubeflow Pipelines standalone (brings Argo Workflows and its CronWorkflow CRD)
	$(K) apply -k "github.com/kubeflow/pipelines/manifests/kustomize/cluster-scoped-resources?ref=$(KFP_VERSION)"
	$(K) wait --for condition=established --timeout=120s crd/applications.app.k8s.io crd/cronworkflows.argoproj.io
	$(K) apply -k "github.com/kubeflow/pipelines/manifests/kustomize/env/platform-agnostic?ref=$(KFP_VERSION)"
	$(K) -n kubeflow wait --for=condition=Available deploy --all --timeout=900s
	# Prometheus Operator CRDs always (our PodMonitor), the full stack with PROMETHEUS=1
	$(HELM) upgrade --install prometheus-operator-crds prometheus-operator-crds --kube-context kind-$(KIND_CLUSTER) \
		--repo https://prometheus-community.github.io/helm-charts --version $(PROMETHEUS_OPERATOR_CRDS_CHART_VERSION) \
		--namespace monitoring --create-namespace --wait
	@if [ "$(PROMETHEUS)" = "1" ]; then \
		$(HELM) upgrade --install kps kube-prometheus-stack --kube-context kind-$(KIND_CLUSTER) \
			--repo https://prometheus-community.github.io/helm-charts --version $(KUBE_PROMETHEUS_STACK_CHART_VERSION) \
			--namespace monitoring -f manifests/addons/kube-prometheus-stack-values.yaml --wait --timeout 15m; \
	else echo "(Prometheus + Grafana skipped; make kind-up PROMETHEUS=1 installs kube-prometheus-stack)"; fi
	@echo "cluster kind-$(KIND_CLUSTER) ready; next: make images kind-load deploy"

images:
	@$(CHECK) docker
	$(BUILD) $(IMAGE_BUILD_ARGS) -f docker/deps.Dockerfile -t $(DEPS_IMAGE) .
	$(BUILD) --build-arg DEPS_IMAGE=$(DEPS_IMAGE) -f components/Dockerfile -t $(PIPELINE_IMAGE) .
	$(BUILD) --build-arg DEPS_IMAGE=$(DEPS_IMAGE) -f serving/Dockerfile -t $(PREDICTOR_IMAGE) .
	$(BUILD) --build-arg DEPS_IMAGE=$(DEPS_IMAGE) -f docker/controller.Dockerfile -t $(CONTROLLER_IMAGE) .

# the same images on a machine with no image registry: local base, wheels and CA (scripts/images-local.sh)
images-local:
	sh scripts/images-local.sh

# build the images here and run them for real: pipeline, predictor, rollout, faults, controller (tests/images)
images-test: $(STAMP)
	BIN=$(BIN) sh scripts/images-test.sh

kind-load:
	@$(CHECK) docker kind
	@$(KIND) get clusters 2>/dev/null | grep -qx '$(KIND_CLUSTER)' \
		|| { echo "error: kind cluster $(KIND_CLUSTER) not found; run: make kind-up"; exit 1; }
	@# Docker 29's containerd image store can make `kind load docker-image` fail ("content digest ... not
	@# found", kubernetes-sigs/kind#3795): then the documented workaround, a single-platform archive
	$(KIND) load docker-image --name $(KIND_CLUSTER) $(IMAGES) || { mkdir -p .tideline && \
		$(DOCKER) save --platform "$$($(DOCKER) version --format '{{.Server.Os}}/{{.Server.Arch}}')" \
			--output .tideline/images.tar $(IMAGES) && \
		$(KIND) load image-archive --name $(KIND_CLUSTER) .tideline/images.tar && rm -f .tideline/images.tar; }

deploy: _cluster
	@$(CHECK) helm
	# CRDs: Helm installs crds/ only on first install; apply keeps the ModelRollout CRD current
	$(K) apply --server-side --force-conflicts -f manifests/crds/modelrollouts.tideline.io.yaml
	# no --wait: Helm 4's --wait judges every object by kstatus, and the InferenceService cannot be Ready before
	# the first model exists, while the bucket job (a post-install hook) runs only after that wait. Helm waits
	# for its hooks anyway (Helm 3 always, Helm 4's default hookOnly); MinIO and the operator are waited below.
	$(HELM) upgrade --install tideline helm/tideline --kube-context kind-$(KIND_CLUSTER) --namespace $(NS) \
		--create-namespace -f helm/tideline/values-kind.yaml --timeout 10m
	$(K) -n $(NS) rollout status deploy/minio --timeout=300s
	# KFP pipeline pods and the loop's CronWorkflows (namespace kubeflow) get the S3 credentials through Argo's
	# workflowDefaults from Secret tideline-s3 there (values-kind.yaml: the chart creates it in both namespaces)
	$(K) -n kubeflow patch configmap workflow-controller-configmap --type merge --patch-file manifests/addons/kfp-workflow-defaults.yaml
	$(K) -n $(NS) rollout status deploy/tideline-operator --timeout=300s

pipeline-upload: $(STAMP) _cluster
	$(BIN)/tideline pipeline compile
	@$(K) -n kubeflow get svc ml-pipeline >/dev/null || { echo "error: Kubeflow Pipelines is not installed; run: make kind-up"; exit 1; }
	@port=$$($(KFP_FORWARD)) || exit 1; trap 'kill $$(cat .tideline/kfp-pf.pid) 2>/dev/null' EXIT; \
	$(BIN)/python scripts/kfp_upload.py --host http://127.0.0.1:$$port --version-prefix $(TIDELINE_VERSION)

e2e: $(STAMP) _cluster
	@$(K) -n $(NS) get deploy tideline-operator >/dev/null || { echo "error: tideline is not deployed; run: make images kind-load deploy"; exit 1; }
	@port=$$($(KFP_FORWARD)) || exit 1; trap 'kill $$(cat .tideline/kfp-pf.pid) 2>/dev/null' EXIT; set -e; \
	KFP_HOST=http://127.0.0.1:$$port; \
	export TIDELINE_REGISTRY=$(E2E_REGISTRY) TIDELINE_S3_ENDPOINT_URL=http://minio.$(NS).svc:9000; \
	echo "== 1. pipeline run (direct promotion: the first production model; gate: $(E2E_SETTINGS))"; \
	$(BIN)/python scripts/kfp_wait.py --host $$KFP_HOST --timeout 3600 -- \
		$(BIN)/tideline --config $(E2E_SETTINGS) pipeline submit --host $$KFP_HOST --synthetic --symbols 4 --bars 2000 --seed 7 --rollout-mode direct; \
	$(E2E_EXPECT) production; \
	echo "== 2. InferenceService Ready"; \
	$(K) -n $(NS) wait --for=condition=Ready inferenceservice/tideline --timeout=600s; \
	echo "== 3. pipeline run (rollout mode: a candidate)"; \
	$(BIN)/python scripts/kfp_wait.py --host $$KFP_HOST --timeout 3600 -- \
		$(BIN)/tideline --config $(E2E_SETTINGS) pipeline submit --host $$KFP_HOST --synthetic --symbols 4 --bars 2000 --seed 11 --rollout-mode rollout; \
	$(E2E_EXPECT) candidate; \
	cand=$$($(K) -n $(NS) exec deploy/tideline-operator -- tideline models show candidate --json \
		| $(BIN)/python -c "import json,sys; print(json.load(sys.stdin)['version'])"); \
	echo "== 4. ModelRollout of $$cand"; \
	sed "s/^  candidate: .*/  candidate: $$cand/" examples/k8s/modelrollout-e2e.yaml | $(K) -n $(NS) apply -f -; \
	$(K) -n $(NS) wait --for=jsonpath='{.status.phase}'=Shadow modelrollout/tideline-e2e --timeout=300s; \
	echo "== 5. roll back with kubectl"; \
	$(K) -n $(NS) annotate --overwrite modelrollout/tideline-e2e tideline.io/action=rollback; \
	$(K) -n $(NS) wait --for=jsonpath='{.status.phase}'=RolledBack modelrollout/tideline-e2e --timeout=300s; \
	$(K) -n $(NS) wait --for=condition=Ready inferenceservice/tideline --timeout=300s; \
	$(K) -n $(NS) delete modelrollout/tideline-e2e; \
	echo "e2e: OK (run -> InferenceService Ready -> ModelRollout -> rollback)"

kind-down:
	@$(CHECK) kind
	@if $(KIND) get clusters 2>/dev/null | grep -qx '$(KIND_CLUSTER)'; then $(KIND) delete cluster --name $(KIND_CLUSTER); \
	else echo "kind cluster $(KIND_CLUSTER) does not exist: nothing to do"; fi

# copy the files the Helm chart embeds from their single sources (tests fail when they drift)
chart-sync:
	cp manifests/crds/modelrollouts.tideline.io.yaml helm/tideline/crds/
	cp manifests/cronworkflows/*.yaml helm/tideline/files/cronworkflows/
	cp manifests/base/dashboards/tideline-rollouts.json manifests/base/dashboards/tideline-learning.json \
		helm/tideline/files/dashboards/
	cp manifests/base/prometheusrule.yaml helm/tideline/files/alerts/
