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
    for f in ("components/Dockerfile", "docker/controller.Dockerfile"):
        assert "download.pytorch.org/whl/cpu" in (ROOT / f).read_text(), f


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
