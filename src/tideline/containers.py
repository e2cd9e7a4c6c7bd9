"""tideline's own images run on one machine: what a container needs from this environment, and the security
settings the chart gives the pods, as ``docker run`` options.

Used by the pipeline's container runner (``tideline.training.orchestration.run_local(runner="docker")``: every
task in the pipeline image) and by the local traffic backend's container predictors
(``tideline.rollout.backends.local.container_predictor_factory``). Nothing here talks to an engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Final

from tideline.errors import ConfigError

USER: Final = "10001:10001"
"""The user the images run as (``docker/deps.Dockerfile``) and the chart's ``runAsUser``/``runAsGroup``."""

# the S3 credentials and endpoint, the registry's signing policy, the log level and the fault drill setting
CONTAINER_ENV: Final = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION",
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "TIDELINE_SIGNING_KEY", "TIDELINE_REQUIRE_SIGNED",
    "TIDELINE_LOG_LEVEL",
)
KEY_FILE_ENV: Final = "TIDELINE_SIGNING_KEY_FILE"
KEY_MOUNT: Final = "/var/run/secrets/tideline/signing/key"  # where the chart mounts the signing key

# the chart's containerSecurity + podSecurity (helm/tideline/templates/_helpers.tpl) and its /tmp emptyDir:
# uid/gid 10001, read-only root filesystem, every capability dropped, no privilege escalation, /tmp writable
RESTRICTED: Final = (
    "--user", USER, "--read-only", "--tmpfs", "/tmp:rw,noexec,nosuid,nodev,size=1g",
    "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
)


def container_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables of ``CONTAINER_ENV`` set in ``environ``. A signing key file (``TIDELINE_SIGNING_KEY_FILE``,
    a host path the container cannot see) is passed as its content (``TIDELINE_SIGNING_KEY``)."""
    env = {k: environ[k] for k in CONTAINER_ENV if environ.get(k)}
    key_file = environ.get(KEY_FILE_ENV)
    if key_file:
        try:
            env["TIDELINE_SIGNING_KEY"] = Path(key_file).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(f"cannot read the signing key file {key_file}: {e.strerror}") from None
    return env


def run_options(environ: Mapping[str, str]) -> list[str]:
    """``docker run`` options passing the environment a container needs without writing a secret on the command
    line: ``-e NAME`` (the engine's client reads the value from its own environment) for each variable of
    ``CONTAINER_ENV`` that is set, and a key file mounted read-only where the chart mounts it."""
    opts: list[str] = []
    for k in CONTAINER_ENV:
        if environ.get(k):
            opts += ["-e", k]
    key_file = environ.get(KEY_FILE_ENV)
    if key_file:
        path = Path(key_file).resolve()
        if not path.is_file():
            raise ConfigError(f"the signing key file {key_file} does not exist")
        opts += ["-v", f"{path}:{KEY_MOUNT}:ro", "-e", f"{KEY_FILE_ENV}={KEY_MOUNT}"]
    return opts
