#!/usr/bin/env sh
# Start `kubectl port-forward` on a free local port and wait until it answers (not a fixed sleep, not 8888,
# Jupyter's default); print the port. On failure: one line with kubectl's own last words, exit 1.
#   port=$(scripts/port-forward.sh "kubectl --context kind-tideline" kubeflow svc/ml-pipeline 8888 .tideline/kfp-pf.pid)
set -u
kubectl=$1
ns=$2
target=$3
remote=$4
pidfile=$5
timeout=${6:-30}
mkdir -p "$(dirname "$pidfile")"
log="$pidfile.log"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
$kubectl -n "$ns" port-forward --address 127.0.0.1 "$target" "$port:$remote" >"$log" 2>&1 &
echo $! > "$pidfile"
waited=0
while [ "$waited" -lt "$((timeout * 5))" ]; do
    if python3 -c "import socket, sys; socket.create_connection(('127.0.0.1', $port), 0.5)" 2>/dev/null; then
        echo "$port"
        exit 0
    fi
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        break
    fi
    sleep 0.2
    waited=$((waited + 1))
done
kill "$(cat "$pidfile")" 2>/dev/null
echo "error: port-forward to $ns/$target:$remote did not come up within ${timeout} s: $(tail -n 1 "$log" 2>/dev/null)" >&2
exit 1
