"""Turn on KServe's Gateway API support in its ``inferenceservice-config`` ConfigMap, keeping every other key.

What KServe's own setup does (kserve master hack/setup/infra/manage.kserve-kustomize.sh: ``update_isvc_config
"ingress.enableGatewayApi=true" "ingress.ingressClassName=${GATEWAY_NETWORK_LAYER}"``): the ``ingress`` entry is
a JSON document inside the ConfigMap, so it is read, changed and written back whole.

    kubectl -n kserve patch configmap inferenceservice-config --type merge -p "$(kubectl -n kserve get \
        configmap inferenceservice-config -o json | python3 scripts/kserve-gateway-config.py)"

It prints a merge patch of ``data.ingress`` alone: the other entries stay as they are (a server-side apply by
kubectl's own field manager, which applied kserve.yaml, would drop every entry it does not name).
"""

from __future__ import annotations

import json
import sys

CLASS = "envoy"
GATEWAY = "kserve/kserve-ingress-gateway"


def configure(cm: dict) -> dict:
    """The merge patch of ``cm`` (the ConfigMap as JSON) that turns the Gateway API on."""
    ingress = json.loads(cm["data"]["ingress"])
    ingress.update({"enableGatewayApi": True, "ingressClassName": CLASS, "kserveIngressGateway": GATEWAY})
    return {"data": {"ingress": json.dumps(ingress, indent=2)}}


if __name__ == "__main__":
    json.dump(configure(json.load(sys.stdin)), sys.stdout)
