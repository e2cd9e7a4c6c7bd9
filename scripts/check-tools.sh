#!/usr/bin/env sh
# Check that each named tool is on PATH and inside the version range pinned in versions.env.
#   scripts/check-tools.sh docker kind kubectl helm
# Tool paths can be overridden like the Makefile does: DOCKER=... KIND=... KUBECTL=... HELM=...
# Exit 0 when all pass; otherwise one clear line per problem and exit 1.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck disable=SC1091
. "$here/versions.env"

# version_in MIN VERSION MAX  ->  true when MIN <= VERSION < MAX (sort -V ordering)
version_in() {
    lo=$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n1)
    hi=$(printf '%s\n%s\n' "$2" "$3" | sort -V | head -n1)
    [ "$lo" = "$1" ] && [ "$hi" = "$2" ] && [ "$2" != "$3" ]
}

# first x.y.z in the text given
semver() { printf '%s\n' "$1" | grep -Eo '[0-9]+\.[0-9]+\.[0-9]+' | head -n1; }

fail=0
for tool in "$@"; do
    case "$tool" in
        docker)  bin=${DOCKER:-docker};   min=$DOCKER_MIN;  max=$DOCKER_MAX
                 how="https://docs.docker.com/engine/install/" ;;
        kind)    bin=${KIND:-kind};       min=$KIND_MIN;    max=$KIND_MAX
                 how="go install sigs.k8s.io/kind@$KIND_VERSION (or https://kind.sigs.k8s.io/docs/user/quick-start/)" ;;
        kubectl) bin=${KUBECTL:-kubectl}; min=$KUBECTL_MIN; max=$KUBECTL_MAX
                 how="https://kubernetes.io/docs/tasks/tools/ (or: make install, then use .venv/bin/kubectl)" ;;
        helm)    bin=${HELM:-helm};       min=$HELM_MIN;    max=$HELM_MAX
                 how="https://helm.sh/docs/intro/install/" ;;
        *) echo "check-tools: unknown tool '$tool'" >&2; exit 2 ;;
    esac
    if ! command -v "$bin" >/dev/null 2>&1; then
        echo "error: '$tool' is required but '$bin' is not on PATH; install $tool >= $min, < $max: $how" >&2
        fail=1; continue
    fi
    case "$tool" in
        docker)  out=$("$bin" version --format '{{.Client.Version}}' 2>/dev/null || true) ;;
        kind)    out=$("$bin" version 2>/dev/null || true) ;;
        kubectl) out=$("$bin" version --client 2>/dev/null || true) ;;
        helm)    out=$("$bin" version --short 2>/dev/null || true) ;;
    esac
    v=$(semver "$out")
    if [ -z "$v" ]; then
        echo "error: cannot read the version of '$bin' (got: $out)" >&2; fail=1; continue
    fi
    if ! version_in "$min" "$v" "$max"; then
        echo "error: $tool $v is outside the supported range >= $min, < $max (versions.env); $how" >&2
        fail=1; continue
    fi
    echo "ok: $tool $v"
done
[ "$fail" -eq 0 ] || exit 1
