# The tideline ModelRollout operator (kopf): `kopf run -m tideline.k8s.operator`.
#
#   make images   (builds docker/deps.Dockerfile first, then this from the repository root:
#                  docker build --build-arg DEPS_IMAGE=tideline-deps:<v> -f docker/controller.Dockerfile -t <image> .)
#   (manifests/base/operator.yaml runs it)
#
# The operator imports the whole rollout library (registry, analysis, state machine), so it starts from
# the same dependency image as the others (docker/deps.Dockerfile: requirements.lock in /opt/venv, user
# 10001) and adds the project only; build context filtered by docker/controller.Dockerfile.dockerignore.

ARG DEPS_IMAGE
FROM ${DEPS_IMAGE}

# One layer (the vfs storage driver copies every layer in full): the project from the filtered context.
RUN --mount=type=bind,target=/tmp/context \
    cp -r /tmp/context /tmp/build && pip install --no-deps --no-build-isolation /tmp/build && rm -rf /tmp/build \
    && python -c "import kopf, tideline.k8s.operator"

# Never run as root; the operator writes nothing but /tmp.
USER 10001:10001

EXPOSE 8080
# One namespace, no peering, liveness on :8080/healthz (the Deployment may override the namespace).
# tideline-operator runs `kopf ARGS...` once a cluster is configured, else exits 2 with a one-line reason.
ENTRYPOINT ["tideline-operator"]
CMD ["run", "-m", "tideline.k8s.operator", "--namespace=tideline", "--standalone", "--liveness=http://0.0.0.0:8080/healthz"]
