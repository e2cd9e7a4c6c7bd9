#!/usr/bin/env sh
# Wait until cert-manager's cainjector has injected the CA bundle into every webhook of a webhook
# configuration (a Deployment can be Available long before: calls to the webhook then fail TLS).
#   scripts/wait-ca-bundle.sh "kubectl --context kind-tideline" validatingwebhookconfiguration/NAME [SECONDS]
set -u
kubectl=$1
what=$2
timeout=${3:-300}
waited=0
while [ "$waited" -lt "$timeout" ]; do
    bundles=$($kubectl get "$what" -o jsonpath='{range .webhooks[*]}{.clientConfig.caBundle}{"|"}{end}' 2>/dev/null)
    case "$bundles" in
        ""|"|"*|*"||"*) ;;  # missing, or a webhook without a bundle yet
        *) echo "ok: $what has its CA bundle"; exit 0 ;;
    esac
    sleep 5
    waited=$((waited + 5))
done
echo "error: $what has no CA bundle after ${timeout} s: is cert-manager's cainjector running? ($kubectl -n cert-manager logs deploy/cert-manager-cainjector)" >&2
exit 1
