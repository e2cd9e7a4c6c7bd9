"""How tideline runs its images on one machine, checked without an engine: the chart's security context as
``docker run`` options, the environment a container gets, the predictor container's command line, and the
pipeline's container runner refusing what its tasks could not use (tests/images runs them for real)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tideline.config import load_settings
from tideline.containers import CONTAINER_ENV, KEY_MOUNT, RESTRICTED, USER, container_environment, run_options
from tideline.errors import ConfigError
from tideline.rollout.backends.local import container_predictor_factory
from tideline.training.orchestration import run_local

ROOT = Path(__file__).resolve().parents[1]


def _helper(name: str) -> dict:
    text = (ROOT / "helm/tideline/templates/_helpers.tpl").read_text()
    body = re.search(r'{{- define "' + re.escape(name) + r'" -}}\n(.*?){{- end -}}', text, re.S)
    assert body, name
    return yaml.safe_load(body.group(1))


def test_the_restricted_options_are_the_charts_security_context() -> None:
    """RESTRICTED is what the chart gives every pod and container (helm/tideline/templates/_helpers.tpl)."""
    pod, container = _helper("tideline.podSecurity"), _helper("tideline.containerSecurity")
    opts = list(RESTRICTED)
    assert opts[opts.index("--user") + 1] == USER == f"{pod['runAsUser']}:{pod['runAsGroup']}"
    assert container["readOnlyRootFilesystem"] is True and "--read-only" in opts
    assert container["capabilities"] == {"drop": ["ALL"]} and opts[opts.index("--cap-drop") + 1] == "ALL"
    assert container["allowPrivilegeEscalation"] is False
    assert opts[opts.index("--security-opt") + 1] == "no-new-privileges"
    assert opts[opts.index("--tmpfs") + 1].startswith("/tmp:")  # the chart's emptyDir on /tmp
    predictor = (ROOT / "helm/tideline/templates/predictor.yaml").read_text()
    assert "mountPath: /tmp" in predictor and "--wait-for-model" in predictor
    for dockerfile in ("components/Dockerfile", "serving/Dockerfile", "docker/controller.Dockerfile"):
        assert re.search(rf"^USER {USER}$", (ROOT / dockerfile).read_text(), re.M), dockerfile


def test_a_container_gets_the_s3_variables_and_the_signing_key_never_on_its_command_line(tmp_path: Path) -> None:
    environ = {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret", "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
               "HOME": "/root", "TIDELINE_HOME": "/host/only", "AWS_SESSION_TOKEN": ""}
    assert container_environment(environ) == {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret",
                                              "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    opts = run_options(environ)
    assert opts == ["-e", "AWS_ACCESS_KEY_ID", "-e", "AWS_SECRET_ACCESS_KEY", "-e", "AWS_ENDPOINT_URL"]
    assert "secret" not in " ".join(opts)  # the engine's client reads the value from its own environment
    key = tmp_path / "key"
    key.write_text("k3y\n")
    environ["TIDELINE_SIGNING_KEY_FILE"] = str(key)
    assert container_environment(environ)["TIDELINE_SIGNING_KEY"] == "k3y"  # the task containers: the content
    opts = run_options(environ)
    assert f"{key}:{KEY_MOUNT}:ro" in opts and f"TIDELINE_SIGNING_KEY_FILE={KEY_MOUNT}" in opts
    assert "k3y" not in " ".join(opts)
    environ["TIDELINE_SIGNING_KEY_FILE"] = str(tmp_path / "missing")
    with pytest.raises(ConfigError, match="signing key file"):
        container_environment(environ)
    with pytest.raises(ConfigError, match="does not exist"):
        run_options(environ)
    assert set(CONTAINER_ENV) >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"}


def test_the_predictor_container_runs_as_the_chart_and_announces_like_the_process() -> None:
    make = container_predictor_factory("img:1", "s3://b/models", "tideline", docker="/usr/bin/docker",
                                       reload_interval=2.0, extra_args=["--log-flush-seconds", "0.5"],
                                       env=lambda v, r: {"TIDELINE_CHAOS": "error_rate=1"} if r == "canary" else {},
                                       environ={"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "s"})
    argv = make("v7", "canary")
    image_at = argv.index("img:1")
    opts, args = argv[:image_at], argv[image_at + 1:]
    assert opts[:5] == ["/usr/bin/docker", "run", "--rm", "--network", "host"]
    assert " ".join(RESTRICTED) in " ".join(opts)
    assert opts.count("-e") == 3 and "TIDELINE_CHAOS=error_rate=1" in opts and "s" not in opts
    assert "tideline.io/predictor=tideline" in opts and "tideline.io/role=canary" in opts
    assert args[:8] == ["--registry", "s3://b/models", "--name", "tideline", "--ref", "v7", "--role", "canary"]
    assert args[args.index("--http-port") + 1] == "0" and args[args.index("--host") + 1] == "127.0.0.1"
    assert "--wait-for-model" not in args  # a version that cannot load must fail the start, with its reason
    assert args[-2:] == ["--log-flush-seconds", "0.5"]
    assert "TIDELINE_CHAOS=error_rate=1" not in make("v7", "active")


def test_the_container_runner_refuses_what_its_tasks_could_not_reach(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    local = load_settings(registry=(tmp_path / "reg").as_uri(), home=str(tmp_path / "home"))
    with pytest.raises(ConfigError, match="a run in containers needs an s3:// registry"):
        run_local(local, synthetic={"n_symbols": 2}, runner="docker")
    s3 = load_settings(registry="s3://bucket/models", home=str(tmp_path / "home"))
    with pytest.raises(ConfigError, match="a run in containers reads its data from s3://"):
        run_local(s3, source=str(tmp_path / "bars.csv"), runner="docker")
    with pytest.raises(ConfigError, match="unknown pipeline runner 'kubernetes'"):
        run_local(s3, synthetic={"n_symbols": 2}, runner="kubernetes")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    with pytest.raises(ConfigError, match="cannot reach the container engine") as e:
        run_local(s3, synthetic={"n_symbols": 2}, runner="docker")
    assert "\n" not in str(e.value)
    assert not list((tmp_path / "home").rglob("executor_output.json"))  # no task started


def test_the_cli_names_the_runner_and_refuses_a_local_registry_on_one_line(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("tideline")
    p = subprocess.run([str(exe), "--registry", (tmp_path / "reg").as_uri(), "pipeline", "run", "--local",
                        "--synthetic", "--runner", "docker"], capture_output=True, text=True, timeout=120,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TIDELINE_HOME": str(tmp_path / "h")})
    assert p.returncode == 2, p.stderr[-800:]
    assert "a run in containers needs an s3:// registry" in p.stderr and "Traceback" not in p.stderr
