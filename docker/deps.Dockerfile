# The dependency image the three tideline images start from (components/Dockerfile, serving/Dockerfile,
# docker/controller.Dockerfile): Python, the OpenMP runtime LightGBM links, a virtual environment at
# /opt/venv with every dependency pinned by requirements.lock (the lock the test suite installs from), and
# the unprivileged user (uid 10001) the images run as. Built once; the three images add only the project.
#
#   make images      (users: the official Python base image from versions.env, torch from the PyTorch CPU index)
#   make images-local  (a machine with no registry: a debootstrap base, the torch wheel from a local directory,
#                       the host's CA bundle as a build secret - never in a layer; scripts/images-local.sh)
#
# Build arguments:
#   PYTHON_BASE_IMAGE  the base (required): python:3.11.x-slim-bookworm, or any Debian with python3.11 + venv
#   TORCH_INDEX_URL    an extra package index for torch's CPU build ("" = none)
#   WHEELS_IMAGE, WHEELS_DIR  an image holding extra wheels and the folder in it pip may take them from
#                      ("" = none); the image is mounted for the install only
# Secret (optional): id=ca, a CA bundle pip trusts during the install (not kept in the image).
# The build context is the repository root, filtered by docker/deps.Dockerfile.dockerignore.

ARG PYTHON_BASE_IMAGE
ARG WHEELS_IMAGE=${PYTHON_BASE_IMAGE}
FROM ${WHEELS_IMAGE} AS wheels

FROM ${PYTHON_BASE_IMAGE}
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG WHEELS_DIR=

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OMP_NUM_THREADS=1 \
    HOME=/tmp \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# One layer (the vfs storage driver copies every layer in full): the OpenMP runtime LightGBM's wheel links
# (slim images lack it), the user the images run as, and the project's dependency set at the locked versions
# (the project itself is installed by each image; a stand-in README, so that editing the real one does not
# invalidate this layer).
RUN --mount=type=bind,source=pyproject.toml,target=/tmp/lock/pyproject.toml \
    --mount=type=bind,source=requirements.lock,target=/tmp/lock/requirements.lock \
    --mount=type=bind,from=wheels,target=/wheels \
    --mount=type=secret,id=ca,required=false \
    set -e; \
    if ! ldconfig -p | grep -q 'libgomp\.so\.1'; then \
        apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*; \
    fi; \
    useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin tideline; \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    opts=""; \
    if [ -n "$TORCH_INDEX_URL" ]; then opts="--extra-index-url $TORCH_INDEX_URL"; fi; \
    if [ -n "$WHEELS_DIR" ]; then opts="$opts --find-links /wheels$WHEELS_DIR"; fi; \
    python3 -m venv /opt/venv; \
    mkdir -p /tmp/build/src/tideline && cp /tmp/lock/pyproject.toml /tmp/build/ \
    && touch /tmp/build/README.md /tmp/build/src/tideline/__init__.py; \
    pip install $opts -c /tmp/lock/requirements.lock setuptools wheel; \
    pip install $opts --no-build-isolation -c /tmp/lock/requirements.lock /tmp/build; \
    pip uninstall -y tideline; \
    rm -rf /tmp/build /tmp/.cache; \
    find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +
