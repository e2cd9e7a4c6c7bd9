"""The operator image's entrypoint: ``tideline-operator ARGS...`` runs ``kopf ARGS...`` (the manifests pass
``run -m tideline.k8s.operator --namespace=... --standalone ...``) once there is a cluster to talk to. With
none - not in a pod and no kubeconfig - it exits 2 with a one-line reason instead of kopf's login traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


def cluster_config(env: Mapping[str, str], home: Path, token: Path = SERVICE_ACCOUNT_TOKEN) -> str | None:
    """Where the operator's credentials would come from (``in-cluster`` or a kubeconfig path), None for nowhere."""
    if env.get("KUBERNETES_SERVICE_HOST") and token.is_file():
        return "in-cluster"
    for p in (env.get("KUBECONFIG") or "").split(os.pathsep):
        if p and Path(p).is_file():
            return p
    default = home / ".kube" / "config"
    return str(default) if default.is_file() else None


NO_CLUSTER = ("error: no Kubernetes cluster to run the operator against: not in a pod (KUBERNETES_SERVICE_HOST "
              "unset or no service-account token) and no kubeconfig (KUBECONFIG, ~/.kube/config)")


def main(argv: Sequence[str] | None = None) -> int:
    """Check for a cluster, then replace this process with ``kopf ARGS...``; 2 (and the reason) without one."""
    args = list(sys.argv[1:] if argv is None else argv)
    if cluster_config(os.environ, Path.home()) is None:
        print(NO_CLUSTER, file=sys.stderr)
        return 2
    os.execvp("kopf", ["kopf", *args])
    return 1  # not reached: execvp replaces the process or raises


if __name__ == "__main__":
    sys.exit(main())
