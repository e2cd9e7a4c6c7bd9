"""Every CLI command with wrong input: exit code != 0, a short message that names the problem, no traceback.
The case table lives in tests/reliability/inputs.py (the reliability row runs the same cases)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from reliability.inputs import (
    ALL_COMMANDS,
    REGISTRY_COMMANDS,
    S3_ENV,
    CliCase,
    cli_cases,
    cli_world,
    console_script,
    run_cli_case,
)

CASES = cli_cases()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return cli_world(tmp_path_factory.mktemp("cli"))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case: CliCase, world: dict[str, str]) -> None:
    ok, why, code = run_cli_case(case, world)
    assert ok, why
    assert code != 0


def test_matrix_covers_every_command() -> None:
    from tideline.cli import app

    def leaves(group, prefix=()):  # noqa: ANN001, ANN202
        import typer.main

        cmd = typer.main.get_command(group)
        for name, sub in getattr(cmd, "commands", {}).items():
            if hasattr(sub, "commands"):
                for n2 in sub.commands:
                    yield (*prefix, name, n2)
            else:
                yield (*prefix, name)

    every = set(leaves(app))
    assert every == {tuple(c) for c in ALL_COMMANDS}, every ^ {tuple(c) for c in ALL_COMMANDS}
    assert len(REGISTRY_COMMANDS) >= 15 and len(CASES) > 120


def test_runner_is_not_a_rubber_stamp(world: dict[str, str]) -> None:
    """Exit 0, or a message without the expected words, fails a case."""
    assert not run_cli_case(CliCase("ok", ["--registry", "{reg}", "models", "list"], ""), world)[0]
    assert not run_cli_case(CliCase("words", ["--registry", "{reg}", "models", "show", "v999"], "banana"), world)[0]


def test_missing_registry_is_not_created(world: dict[str, str], tmp_path: Path) -> None:
    target = tmp_path / "typo" / "registry"
    case = CliCase("list", ["--registry", target.as_uri(), "models", "list"], "no registry at")
    assert run_cli_case(case, world)[0]
    assert not target.exists() and not target.parent.exists()


@pytest.mark.parametrize(("argv", "code", "words"), [
    (["--registry", "{missing}", "models", "list"], 9, "no registry at"),
    (["--registry", "{reg}", "models", "show", "v999"], 6, "'v999' not found"),
    (["--registry", "{reg}", "models", "promote", "../etc"], 2, "neither a version id nor an alias"),
    (["--registry", "{reg}", "rollout", "status", "--name", "nosuch"], 2, "no rollout named 'nosuch'"),
    (["data", "validate"], 2, "Missing argument"),
    (["--registry", "s3://tideline-models/reg", "models", "list"], 9, "cannot reach S3 endpoint"),
])
def test_console_script_exit_codes(world: dict[str, str], argv: list[str], code: int, words: str) -> None:
    w = {**world, "missing": (Path(world["work"]) / "nothing-here").as_uri()}
    p = console_script([a.format(**w) for a in argv], env=S3_ENV if "s3://" in " ".join(argv) else None)
    assert p.returncode == code, p.stderr
    assert words in p.stderr and "Traceback" not in p.stderr + p.stdout
    assert len(p.stderr.strip().splitlines()) <= 5


@pytest.mark.parametrize(("argv", "code", "words"), [
    (["--registry", "{missing}", "--http-port", "0"], 9, "does not exist"),
    (["--registry", "{reg}", "--ref", "v999", "--http-port", "0"], 6, "v999"),
    (["--registry", "{reg}", "--ref", "../etc", "--http-port", "0"], 2, "../etc"),
    (["--registry", "{reg}", "--http-port", "70000"], 2, "--http-port 70000"),
    (["--bogus"], 2, "unrecognized arguments"),
])
def test_predictor_entry_point(world: dict[str, str], argv: list[str], code: int, words: str) -> None:
    w = {**world, "missing": str(Path(world["work"]) / "nothing-here")}
    exe = Path(sys.executable).with_name("tideline-predictor")
    p = subprocess.run([str(exe), *[a.format(**w) for a in argv]], capture_output=True, text=True, timeout=120,
                       env={"PATH": "/usr/bin:/bin", "HOME": world["work"], "TIDELINE_HOME": world["work"]})
    assert p.returncode == code, p.stderr[-500:]
    assert words in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize(("argv", "code", "words"), [
    (["status"], 2, "usage"),
    (["frobnicate", "x"], 2, "invalid choice"),
    (["status", "x", "--interval", "soon"], 2, "invalid float value"),
    (["list"], 4, "no Kubernetes cluster configured"),
])
def test_kubectl_plugin_entry_point(tmp_path: Path, argv: list[str], code: int, words: str) -> None:
    exe = Path(sys.executable).with_name("kubectl-tideline")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "no-kubeconfig")}
    p = subprocess.run([str(exe), *argv], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == code, p.stderr
    assert words in p.stderr and "Traceback" not in p.stderr
