#!/usr/bin/env sh
# After a pipeline run of `make e2e`: check that the registry has ALIAS; if not, print what the promotion gate
# said about the newest version (its checks, one line each) and exit 1, instead of a wait that times out.
#   scripts/e2e-expect.sh "kubectl -n tideline exec deploy/tideline-operator -- tideline" production
set -u
tideline=$1
alias=$2
if $tideline models show "$alias" >/dev/null 2>&1; then
    echo "ok: $alias is $($tideline models show "$alias" --json | sed -n 's/^ *"version": "\(v[0-9]*\)".*/\1/p' | head -n1)"
    exit 0
fi
newest=$($tideline models list --json 2>/dev/null | sed -n 's/^ *"version": "\(v[0-9]*\)".*/\1/p' | sort -t v -k2 -n | tail -n1)
echo "error: the run set no '$alias' alias; the promotion gate on ${newest:-the newest version (none registered)}:" >&2
[ -n "$newest" ] && $tideline models show "$newest" >&2
exit 1
