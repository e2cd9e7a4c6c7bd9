"""The operator image's entrypoint (issue 24): with no cluster it exits 2 with one line, not kopf's traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tideline.k8s.entrypoint import NO_CLUSTER, cluster_config


def test_where_the_credentials_would_come_from(tmp_path: Path) -> None:
    token = tmp_path / "token"
    assert cluster_config({}, tmp_path, token) is None
    assert cluster_config({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, tmp_path, token) is None  # no token mounted
    token.write_text("t")
    assert cluster_config({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, tmp_path, token) == "in-cluster"
    cfg = tmp_path / "kc"
    assert cluster_config({"KUBECONFIG": f"{tmp_path / 'missing'}:{cfg}"}, tmp_path, token / "x") is None
    cfg.write_text("apiVersion: v1")
    assert cluster_config({"KUBECONFIG": f"{tmp_path / 'missing'}:{cfg}"}, tmp_path, token / "x") == str(cfg)
    (tmp_path / ".kube").mkdir()
    (tmp_path / ".kube" / "config").write_text("apiVersion: v1")
    assert cluster_config({}, tmp_path, token / "x") == str(tmp_path / ".kube" / "config")


def test_with_no_cluster_the_entrypoint_exits_2_with_one_line(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-m", "tideline.k8s.entrypoint", "run", "-m", "tideline.k8s.operator"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.strip() == NO_CLUSTER and "Traceback" not in res.stderr
