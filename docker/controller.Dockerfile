# syntax=docker/dockerfile:1
# The tideline ModelRollout operator (kopf): `kopf run -m tideline.k8s.operator`.
#
#   docker build -f docker/controller.Dockerfile -t ghcr.io/tideline/tideline-controller:<TIDELINE_VERSION> .   # repo root
#   (make images builds it and loads it into kind; manifests/base/operator.yaml runs it)
#
# The operator imports the whole rollout library (registry, analysis, state machine), so it installs the
# project's pinned dependency set like the other images (requirements.lock); build context filtered
# by docker/controller.Dockerfile.dockerignore.

# the base image comes from versions.env (PYTHON_BASE_IMAGE; `make images` passes it): no default here
ARG PYTHON_BASE_IMAGE
FROM ${PYTHON_BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OMP_NUM_THREADS=1 \
    HOME=/tmp

# LightGBM (imported through the model registry) links the system OpenMP runtime.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/tideline

COPY pyproject.toml README.md ./
COPY requirements.lock ./
RUN mkdir -p src/tideline && touch src/tideline/__init__.py \
    && pip install --extra-index-url https://download.pytorch.org/whl/cpu -c requirements.lock setuptools wheel \
    && pip install --extra-index-url https://download.pytorch.org/whl/cpu --no-build-isolation -c requirements.lock . \
    && pip uninstall -y tideline \
    && rm -rf src

COPY src ./src
RUN pip install --no-deps --no-build-isolation . && rm -rf build src/*.egg-info \
    && python -c "import kopf, tideline.k8s.operator"

RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin tideline
USER 10001:10001
WORKDIR /tmp

EXPOSE 8080
# One namespace, no peering, liveness on :8080/healthz (the Deployment may override the namespace).
ENTRYPOINT ["kopf"]
CMD ["run", "-m", "tideline.k8s.operator", "--namespace=tideline", "--standalone", "--liveness=http://0.0.0.0:8080/healthz"]
