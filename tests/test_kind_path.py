"""The kind path (`make kind-up -> images -> deploy -> pipeline-upload -> e2e`) read against upstream.

No cluster can run here. Each test encodes one rule of an upstream project (or of our own pyproject) that
the path must keep, names the upstream file it comes from, and fails on the files as they were before the
fix (issue 17).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
    for f in ("components/Dockerfile", "docker/controller.Dockerfile"):
        assert "download.pytorch.org/whl/cpu" in (ROOT / f).read_text(), f
