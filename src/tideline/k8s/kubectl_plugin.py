"""``kubectl tideline``: watch and steer ModelRollouts (modelled on ``kubectl argo rollouts``).

    kubectl tideline list [-n NS | -A]
    kubectl tideline status NAME [-n NS] [--watch [--interval S]]
    kubectl tideline promote NAME [-n NS]        # skip the remaining analysis and promote
    kubectl tideline rollback NAME [-n NS]       # abort: traffic back to the baseline (alias: abort)
    kubectl tideline history NAME [-n NS]        # analyses and events

promote / rollback only set the annotation ``tideline.io/action``; the operator acts on it and removes it.
Errors are one line on stderr; exit codes: 0 ok, 1 API error, 2 usage, 3 not found, 4 no cluster.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from tideline.config import ROLLOUT_DEFAULTS

GROUP = "tideline.io"
VERSION = "v1alpha1"
PLURAL = "modelrollouts"
ACTION_ANNOTATION = "tideline.io/action"
TERMINAL = {"Promoted", "RolledBack", "Reverted", "Failed"}

EXIT_API, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_NO_CLUSTER = 1, 2, 3, 4


class PluginError(Exception):
    """A failure the plugin reports on one line; ``code`` is its exit status (``EXIT_*``)."""
    def __init__(self, message: str, code: int = EXIT_API) -> None:
        super().__init__(message)
        self.code = code


def load_api(context: str | None = None) -> tuple[Any, str]:
    """CustomObjectsApi from in-cluster config or the kubeconfig, and the current namespace."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
        try:
            with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
                namespace = f.read().strip() or "default"
        except OSError:
            namespace = "default"
    except config.ConfigException:
        try:
            config.load_kube_config(context=context)
            _, active = config.list_kube_config_contexts()
            namespace = (active or {}).get("context", {}).get("namespace") or "default"
        except (config.ConfigException, OSError, TypeError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise PluginError(f"no Kubernetes cluster configured: {first}", EXIT_NO_CLUSTER) from e
    return client.CustomObjectsApi(), namespace


def _api_error(e: Exception, what: str) -> PluginError:
    status = getattr(e, "status", None)
    if status == 404:
        return PluginError(f"{what} not found", EXIT_NOT_FOUND)
    if status:
        import json

        msg = None
        try:
            msg = json.loads(getattr(e, "body", "") or "{}").get("message")
        except (ValueError, AttributeError):
            pass
        return PluginError(f"{what}: HTTP {status} {msg or getattr(e, 'reason', '') or ''}".strip())
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "Max retries" in text or "Connection" in text or isinstance(e, OSError):
        return PluginError(f"cannot reach the Kubernetes API server: {text}", EXIT_NO_CLUSTER)
    return PluginError(f"{what}: {text}")


class Client:
    """The ModelRollouts of one namespace through a CustomObjectsApi; API failures become ``PluginError``."""
    def __init__(self, api: Any, namespace: str) -> None:
        self.api = api
        self.namespace = namespace

    def get(self, name: str) -> dict[str, Any]:
        """The ModelRollout ``name``; ``PluginError`` (exit 3 when it does not exist, 4 when no cluster answers)."""
        try:
            return dict(self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name))
        except Exception as e:
            raise _api_error(e, f"modelrollout {self.namespace}/{name}") from e

    def list(self, all_namespaces: bool) -> list[dict[str, Any]]:
        """Every ModelRollout of the namespace (of the cluster with ``all_namespaces``); ``PluginError`` on failure."""
        try:
            if all_namespaces:
                res = self.api.list_cluster_custom_object(GROUP, VERSION, PLURAL)
            else:
                res = self.api.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)
        except Exception as e:
            raise _api_error(e, "listing modelrollouts") from e
        return list(res.get("items") or [])

    def annotate(self, name: str, action: str) -> None:
        """Request ``action`` (``promote``/``rollback``) on ``name`` by annotating it; the operator acts on it.

        Raises ``PluginError``: not found (exit 3), already finished (exit 2), or the API refused the patch.
        """
        obj = self.get(name)  # a clear "not found" before patching
        phase = (obj.get("status") or {}).get("phase")
        if phase in TERMINAL:
            raise PluginError(f"modelrollout {self.namespace}/{name} is already {phase}", EXIT_USAGE)
        body = {"metadata": {"annotations": {ACTION_ANNOTATION: action}}}
        try:
            self.api.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name, body)
        except Exception as e:
            raise _api_error(e, f"modelrollout {self.namespace}/{name}") from e

    def approve(self, name: str, who: str) -> None:
        """Approve the promotion of ``name`` (annotation ``approve:<who>``; the operator records who and when).

        Raises ``PluginError`` (exit 2) when the rollout is not AwaitingApproval: nothing is annotated.
        """
        phase = (self.get(name).get("status") or {}).get("phase")
        if phase != "AwaitingApproval":
            raise PluginError(f"modelrollout {self.namespace}/{name} is not awaiting approval: it is "
                              f"{phase or 'not started'}", EXIT_USAGE)
        self.annotate(name, f"approve:{who}")


def _user() -> str:
    import getpass

    try:
        return os.environ.get("TIDELINE_USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


# -- rendering ----------------------------------------------------------------------------------------
def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _age(ts: str | None, now: float) -> str:
    if not ts:
        return "-"
    from datetime import datetime

    try:
        t = datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return "-"
    s = max(0, int(now - t))
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s // n}{unit}"
    return f"{s}s"


def render_status(obj: Mapping[str, Any], now: float | None = None) -> str:
    """``kubectl tideline status`` text: target, phase, weight, versions, message and the last 5 analyses."""
    now = time.time() if now is None else now
    meta, spec, st = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    pending = (meta.get("annotations") or {}).get(ACTION_ANNOTATION)
    steps = ((spec.get("strategy") or {}).get("canary") or {}).get("steps")
    lines = [
        f"Name:        {meta.get('name')}",
        f"Namespace:   {meta.get('namespace')}",
        f"Target:      inferenceservice/{spec.get('targetRef')} ({spec.get('mode') or ROLLOUT_DEFAULTS.mode})",
        f"Phase:       {st.get('phase') or 'Pending'}" + (f"  (requested: {pending})" if pending else ""),
        f"Weight:      {st.get('weight', 0)}%" + (f"  step {st.get('step', -1) + 1}/{len(steps)} of {steps}"
                                                   if steps and st.get("phase") == "Canary" else ""),
        f"Candidate:   {spec.get('candidate')}",
        f"Baseline:    {st.get('baseline') or spec.get('baseline') or '-'}",
        f"Failures:    {st.get('failures', 0)}   Inconclusive: {st.get('inconclusive', 0)}",
        f"Message:     {st.get('message') or '-'}",
    ]
    analyses = st.get("lastAnalyses") or []
    if analyses:
        rows = [("TIME", "PHASE", "WEIGHT", "VERDICT", "REASONS")]
        for a in analyses[-5:]:
            rows.append((a.get("time", "-"), a.get("phase", "-"), f"{a.get('weight', 0)}%",
                         a.get("verdict", "-"), "; ".join(a.get("reasons") or []) or "-"))
        lines += ["", "Last analyses:", _table(rows)]
    else:
        lines += ["", "Last analyses: none yet"]
    return "\n".join(lines)


def render_history(obj: Mapping[str, Any]) -> str:
    """``kubectl tideline history`` text: events and analyses in time order (or ``no history yet``)."""
    st = obj.get("status") or {}
    entries = [(e.get("time", ""), "event", e.get("message", "")) for e in st.get("events") or []]
    entries += [(a.get("time", ""), f"analysis {a.get('verdict', '?')}",
                 f"{a.get('phase', '-')} {a.get('weight', 0)}%: " + ("; ".join(a.get("reasons") or []) or "-"))
                for a in st.get("lastAnalyses") or []]
    if not entries:
        return "no history yet"
    return _table([("TIME", "KIND", "DETAIL"), *sorted(entries, key=lambda e: e[0])])


def render_list(items: Sequence[Mapping[str, Any]], now: float | None = None, all_namespaces: bool = False) -> str:
    """``kubectl tideline list`` table (with a NAMESPACE column for ``all_namespaces``), ages relative to ``now``."""
    now = time.time() if now is None else now
    if not items:
        return "No modelrollouts found."
    head = (("NAMESPACE",) if all_namespaces else ()) + ("NAME", "TARGET", "PHASE", "WEIGHT", "CANDIDATE",
                                                         "BASELINE", "AGE")
    rows = [head]
    for o in items:
        meta, spec, st = o.get("metadata") or {}, o.get("spec") or {}, o.get("status") or {}
        rows.append(((meta.get("namespace", ""),) if all_namespaces else ()) + (
            meta.get("name", ""), spec.get("targetRef", ""), st.get("phase") or "Pending",
            f"{st.get('weight', 0)}%", spec.get("candidate", ""), st.get("baseline") or spec.get("baseline") or "-",
            _age(meta.get("creationTimestamp"), now)))
    return _table(rows)


# -- CLI ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The ``kubectl tideline`` argument parser: status (--watch), promote, rollback, abort, approve, history,
    list."""
    p = argparse.ArgumentParser(prog="kubectl tideline", description="Watch and steer tideline ModelRollouts.")
    p.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig context's)")
    p.add_argument("--context", help="kubeconfig context")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("status", help="phase, weight, versions and the last analyses")
    s.add_argument("name")
    s.add_argument("-w", "--watch", action="store_true", help="refresh until the rollout finishes")
    s.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes with --watch")
    for cmd, text in (("promote", "promote now (skips the remaining steps)"),
                      ("rollback", "abort: traffic back to the baseline"),
                      ("abort", "same as rollback")):
        sub.add_parser(cmd, help=text).add_argument("name")
    ap = sub.add_parser("approve", help="approve the promotion of a rollout awaiting approval")
    ap.add_argument("name")
    ap.add_argument("--by", help="who approves (default: $TIDELINE_USER, else your login name); recorded with the time")
    sub.add_parser("history", help="analyses and events of a rollout").add_argument("name")
    ls = sub.add_parser("list", help="every ModelRollout")
    ls.add_argument("-A", "--all-namespaces", action="store_true")
    return p


def run(argv: Sequence[str] | None, *, api_factory: Callable[[str | None], tuple[Any, str]] = load_api,
        out: TextIO | None = None, sleep: Callable[[float], None] = time.sleep,
        max_polls: int | None = None) -> int:
    """Run ``kubectl tideline`` with ``argv`` and return the exit status (0 ok, 2 usage, 3 not found, 4 no
    cluster, 1 other API errors, 130 interrupted); errors are printed on one line to stderr, never raised.
    """
    out = out or sys.stdout
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse printed its one-line usage error
        return int(e.code or 0) and EXIT_USAGE
    try:
        api, default_ns = api_factory(args.context)
        c = Client(api, args.namespace or default_ns)
        if args.command == "list":
            print(render_list(c.list(args.all_namespaces), all_namespaces=args.all_namespaces), file=out)
        elif args.command == "status":
            polls = 0
            while True:
                obj = c.get(args.name)
                if args.watch:
                    out.write("\x1b[2J\x1b[H" if out.isatty() else "")
                print(render_status(obj), file=out)
                polls += 1
                phase = (obj.get("status") or {}).get("phase")
                if not args.watch or phase in TERMINAL or (max_polls is not None and polls >= max_polls):
                    break
                print("", file=out)
                sleep(args.interval)
        elif args.command in ("promote", "rollback", "abort"):
            action = "rollback" if args.command == "abort" else args.command
            c.annotate(args.name, action)
            print(f"modelrollout {c.namespace}/{args.name}: {action} requested", file=out)
        elif args.command == "approve":
            who = args.by or _user()
            c.approve(args.name, who)
            print(f"modelrollout {c.namespace}/{args.name}: approved by {who}", file=out)
        elif args.command == "history":
            print(render_history(c.get(args.name)), file=out)
    except PluginError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130
    return 0


def main() -> None:
    """The ``kubectl-tideline`` entry point: ``run`` on the command line, exiting with its status."""
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
