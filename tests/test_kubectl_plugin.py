"""kubectl-tideline over a test double of CustomObjectsApi, plus the real client with no/unreachable cluster."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kube_doubles import FakeCustomObjectsApi
from tideline.k8s import kubectl_plugin as kp
from tideline.k8s.operator import ACTION_ANNOTATION

NS = "trading"


def rollout(name: str, phase: str | None, weight: int = 0, ns: str = NS, **status: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "tideline.io/v1alpha1", "kind": "ModelRollout",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": "2024-01-01T00:00:00Z"},
        "spec": {"targetRef": "tideline", "candidate": "v7", "strategy": {"canary": {"steps": [10, 25, 50, 100]}}},
    }
    if phase:
        obj["status"] = {"phase": phase, "weight": weight, "baseline": "v6", "step": 1, **status}
    return obj


@pytest.fixture
def api() -> FakeCustomObjectsApi:
    a = FakeCustomObjectsApi()
    a.add(kp.GROUP, NS, kp.PLURAL, rollout("gbm", "Canary", 25, message="canary passed at 10%; now 25%",
                                           lastAnalyses=[{"time": "2024-01-01T00:05:00Z", "verdict": "pass",
                                                          "phase": "Canary", "weight": 10,
                                                          "reasons": ["error rate 0.00% <= 1.00% (0/120)"]}],
                                           events=[{"time": "2024-01-01T00:01:00Z",
                                                    "message": "shadowing v7 next to v6"}]))
    a.add(kp.GROUP, NS, kp.PLURAL, rollout("old", "RolledBack"))
    a.add(kp.GROUP, "research", kp.PLURAL, rollout("lab", None, ns="research"))
    return a


def run(api: FakeCustomObjectsApi, *argv: str, **kw: Any) -> tuple[int, str]:
    out = io.StringIO()
    code = kp.run(list(argv), api_factory=lambda ctx: (api, NS), out=out, **kw)
    return code, out.getvalue()


def test_list_shows_phase_weight_and_versions(api: FakeCustomObjectsApi) -> None:
    code, out = run(api, "list")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["NAME", "TARGET", "PHASE", "WEIGHT", "CANDIDATE", "BASELINE", "AGE"]
    assert lines[1].split()[:6] == ["gbm", "tideline", "Canary", "25%", "v7", "v6"]
    assert lines[2].split()[:3] == ["old", "tideline", "RolledBack"] and len(lines) == 3
    code, out = run(api, "list", "-A")
    assert code == 0 and "research" in out and "Pending" in out and out.splitlines()[0].startswith("NAMESPACE")


def test_status_table(api: FakeCustomObjectsApi) -> None:
    code, out = run(api, "status", "gbm")
    assert code == 0
    assert "Phase:       Canary" in out and "Weight:      25%  step 2/4 of [10, 25, 50, 100]" in out
    assert "Candidate:   v7" in out and "Baseline:    v6" in out
    assert "error rate 0.00% <= 1.00% (0/120)" in out and "pass" in out


def test_status_watch_follows_until_the_rollout_ends(api: FakeCustomObjectsApi) -> None:
    key = (kp.GROUP, NS, kp.PLURAL, "gbm")
    phases = iter([("Canary", 50), ("Promoted", 0)])

    def sleep(_: float) -> None:  # the operator moves the rollout on between two polls
        phase, weight = next(phases)
        api.objects[key]["status"].update(phase=phase, weight=weight)

    code, out = run(api, "status", "gbm", "--watch", "--interval", "0", sleep=sleep)
    assert code == 0
    assert [ln.split()[1] for ln in out.splitlines() if ln.startswith("Phase:")] == ["Canary", "Canary", "Promoted"]


@pytest.mark.parametrize(("cmd", "action"), [("promote", "promote"), ("rollback", "rollback"),
                                             ("abort", "rollback")])
def test_promote_and_rollback_set_the_annotation(api: FakeCustomObjectsApi, cmd: str, action: str) -> None:
    code, out = run(api, cmd, "gbm")
    assert code == 0 and f"{action} requested" in out
    assert api.patches(kp.PLURAL) == [{"metadata": {"annotations": {ACTION_ANNOTATION: action}}}]
    assert api.objects[(kp.GROUP, NS, kp.PLURAL, "gbm")]["metadata"]["annotations"][ACTION_ANNOTATION] == action


def test_history_lists_events_and_analyses_in_time_order(api: FakeCustomObjectsApi) -> None:
    code, out = run(api, "history", "gbm")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["TIME", "KIND", "DETAIL"]
    assert "shadowing v7 next to v6" in lines[1] and "analysis pass" in lines[2]


def test_errors_are_one_line_with_exit_codes(api: FakeCustomObjectsApi, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(api, "status", "nope")[0] == kp.EXIT_NOT_FOUND
    assert capsys.readouterr().err == f"error: modelrollout {NS}/nope not found\n"
    assert run(api, "promote", "old")[0] == kp.EXIT_USAGE
    assert capsys.readouterr().err == f"error: modelrollout {NS}/old is already RolledBack\n"
    assert api.patches(kp.PLURAL) == []
    assert run(api, "frobnicate")[0] == kp.EXIT_USAGE
    assert run(api, "status")[0] == kp.EXIT_USAGE


def _plugin(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    return subprocess.run([sys.executable, "-m", "tideline.k8s.kubectl_plugin", *argv], env={**clean, **env},
                          capture_output=True, text=True, timeout=120)


def test_no_kubeconfig_is_a_clear_error(tmp_path: Path) -> None:
    r = _plugin({"KUBECONFIG": str(tmp_path / "missing"), "HOME": str(tmp_path)}, "list")
    assert r.returncode == kp.EXIT_NO_CLUSTER, r.stderr
    assert r.stderr.startswith("error: no Kubernetes cluster configured") and r.stderr.count("\n") == 1
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_unreachable_cluster_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "config"
    cfg.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "http://127.0.0.1:{port}"}}}}]
users: [{{name: u, user: {{token: t}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u, namespace: {NS}}}}}]
current-context: x
""")
    r = _plugin({"KUBECONFIG": str(cfg), "HOME": str(tmp_path)}, "status", "gbm")
    assert r.returncode == kp.EXIT_NO_CLUSTER, r.stderr
    assert r.stderr.startswith("error: cannot reach the Kubernetes API server") and r.stderr.count("\n") == 1
    assert "Traceback" not in r.stderr
