"""``tideline serve`` and ``tideline rollout start|resume|status|promote|rollback`` (local backend).

Wired into the root CLI with ``app.add_typer(rollout_app, name="rollout")`` and ``app.command("serve")(serve)``.
State shared between commands: the rollout document in the registry store (``rollouts/<name>.json``) and
the local serving state (router and predictor pids/ports) in ``<settings.home>/serving/<name>.json``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tideline.cli.context import err, open_registry, out, print_json, state
from tideline.errors import ConfigError, PolicyError

if TYPE_CHECKING:
    from tideline.config import Settings
    from tideline.registry import Registry
    from tideline.rollout.backends.local import LocalBackend
    from tideline.rollout.machine import RolloutStatus

rollout_app = typer.Typer(
    help="Shadow and canary rollouts of a candidate version, with automatic rollback (local: `tideline serve`).",
    no_args_is_help=True,
)

_NAME = typer.Option("--name", help="Served model / rollout name.")


def _ctx(ctx: typer.Context, *, must_exist: bool = True) -> tuple[Settings, Registry]:

    s = state(ctx).settings()
    return s, open_registry(s, must_exist=must_exist)


def _backend(s: Settings, reg: Registry, name: str) -> LocalBackend:
    from tideline.rollout.backends.local import LocalBackend

    return LocalBackend(reg, name, home=s.home)


def _line(st: RolloutStatus) -> str:
    w = f" {st.weight}%" if st.phase.value == "Canary" else ""
    return f"[{st.phase.value}{w}] {st.candidate} vs {st.baseline}: {st.message}"


def _outcomes(s: Settings, reg: Registry, name: str) -> Any:
    """The live-outcome provider of a rollout whose spec names recent bars (``--bars``), else None.

    Predictions are joined from the rollout's creation on (both versions, every role)."""
    from tideline.monitoring.feedback import outcomes_from_log
    from tideline.rollout.controller import load_rollout

    doc, _ = load_rollout(reg.store, name)
    if not doc.spec.bars:
        return None
    since = doc.events[0]["at"] if doc.events else time.time()
    return outcomes_from_log(reg, doc.spec.bars, since=_epoch_utc(since), endpoint_url=s.endpoint_url())


def _epoch_utc(epoch: float) -> Any:
    import pandas as pd

    return pd.Timestamp(epoch, unit="s", tz="UTC")


def _run_controller(s: Settings, reg: Registry, name: str) -> RolloutStatus:
    from tideline.rollout.backends.local import LocalBackend
    from tideline.rollout.controller import RolloutController

    backend = LocalBackend(reg, name, home=s.home, outcomes=_outcomes(s, reg, name))
    ctrl = RolloutController(name, backend, reg.store)
    last: list[str] = []

    def show(st: RolloutStatus) -> None:
        line = _line(st)
        if not last or last[-1] != line:
            out.print(line, highlight=False, markup=False)
            last.append(line)

    try:
        return ctrl.run(until_terminal=True, on_status=show)
    finally:
        backend.close()


# ---- serve ----------------------------------------------------------------------------------------------
def serve(
    ctx: typer.Context,
    name: Annotated[str, _NAME] = "tideline",
    port: Annotated[int, typer.Option(help="Router port (0: pick a free one).")] = 8080,
    host: Annotated[str, typer.Option(help="Router address.")] = "127.0.0.1",
    version: Annotated[str | None, typer.Option(help="Version to serve (default: production).")] = None,
    detach: Annotated[bool, typer.Option("--detach", help="Start and return; stop with --stop.")] = False,
    stop: Annotated[bool, typer.Option("--stop", help="Stop the router and predictors of NAME.")] = False,
) -> None:
    """Serve the production model locally: the router in front of an active predictor process."""

    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port} is not a port number (0-65535; 0 picks a free one)")
    s, reg = _ctx(ctx)
    backend = _backend(s, reg, name)
    if stop:
        backend.shutdown()
        out.print(f"stopped serving {name}")
        return
    v = reg.resolve(version or "production")
    st = backend.start_serving(v, port=port, host=host)
    r = st["router"]
    out.print(f"serving {name} {v} at http://{host}:{r['port']} (router pid {r['pid']}, "
              f"predictor pid {st['active']['pid']} port {st['active']['port']})", highlight=False)
    if detach:
        return
    err.print("[dim]Ctrl-C stops the router and the predictors[/dim]")
    stopping = {"now": False}

    def _stop(signum: int, frame: Any) -> None:
        stopping["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    try:
        while not stopping["now"]:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        backend.shutdown()
        backend.close()
        out.print(f"stopped serving {name}")


# ---- rollout ---------------------------------------------------------------------------------------------
@rollout_app.command("start")
def rollout_start(
    ctx: typer.Context,
    candidate: Annotated[str, typer.Option("--candidate", help="Version (or alias) to roll out.")],
    name: Annotated[str, _NAME] = "tideline",
    shadow_seconds: Annotated[float | None, typer.Option(
        min=0, help="Minimum shadow time; 0 skips shadow. Unset options take the [loop.rollout] settings.")] = None,
    min_labelled: Annotated[int | None, typer.Option(
        min=0, help="Labelled live outcomes needed to leave shadow (needs an outcome source; 0: none).")] = None,
    steps: Annotated[str | None, typer.Option(help="Canary weights in percent; a final 100 means promote.")] = None,
    interval: Annotated[float | None, typer.Option(min=0.1, help="Seconds between analyses.")] = None,
    failure_limit: Annotated[int | None, typer.Option(
        min=1, help="Consecutive failed analyses that roll back.")] = None,
    max_inconclusive: Annotated[int | None, typer.Option(
        min=0, help="Inconclusive analyses in a row that roll back.")] = None,
    max_error_rate: Annotated[float | None, typer.Option(min=0, max=1)] = None,
    max_p99_ms: Annotated[float | None, typer.Option(min=0.001)] = None,
    min_requests: Annotated[int | None, typer.Option(min=1, help="Candidate requests per interval to judge it.")] = None,
    watch_seconds: Annotated[float | None, typer.Option(
        min=0, help="The guard's watch after promotion: previous stays in shadow and a worse new production is "
                    "reverted (0: no watch).")] = None,
    bars: Annotated[str | None, typer.Option(
        "--bars", help="Recent bars (CSV, Parquet, a directory, s3://) to join live predictions with: enables "
                       "the live accuracy and error checks. Without it they stay inconclusive.")] = None,
    accuracy_margin: Annotated[float | None, typer.Option(
        min=0, max=1, help="Live directional accuracy the candidate may lose against production.")] = None,
    min_outcomes: Annotated[int | None, typer.Option(
        min=1, help="Labelled live outcomes per side before the accuracy/error checks count.")] = None,
    detach: Annotated[bool, typer.Option("--detach", help="Run the controller in the background.")] = False,
) -> None:
    """Start a rollout of CANDIDATE against production: shadow, canary steps, promote or roll back."""
    from tideline.rollout.controller import create_rollout
    from tideline.rollout.machine import RolloutSpec, parse_steps

    s, reg = _ctx(ctx)
    baseline = reg.aliases().get("production")
    if baseline is None:
        raise PolicyError("nothing is in production to roll out against",
                          hint="promote a version first: `tideline models promote VERSION`")
    cand = reg.resolve(candidate)
    if bars is not None and "://" not in bars:
        from pathlib import Path

        if not Path(bars).expanduser().exists():
            raise ConfigError(f"--bars {bars}: no such file or directory")
        bars = str(Path(bars).expanduser().resolve())  # the background controller may run elsewhere
    backend = _backend(s, reg, name)
    try:
        backend.router_state()  # fails with a clear message when `tideline serve` is not running
    finally:
        backend.close()
    try:
        given = {"shadow_seconds": shadow_seconds, "min_labelled": min_labelled, "interval_seconds": interval,
                 "steps": list(parse_steps(steps)) if steps is not None else None,
                 "failure_limit": failure_limit, "max_inconclusive": max_inconclusive,
                 "max_error_rate": max_error_rate, "max_p99_latency_ms": max_p99_ms, "min_requests": min_requests,
                 "accuracy_margin": accuracy_margin, "min_outcomes": min_outcomes, "watch_seconds": watch_seconds}
        cfg = s.loop.rollout.model_copy(update={k: v for k, v in given.items() if v is not None})
        spec = RolloutSpec.from_settings(cfg, candidate=cand, baseline=baseline, bars=bars, name=name)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    create_rollout(reg.store, spec, time.time())
    reg.set_alias("candidate", cand, reason=f"rollout {name} started", actor="rollout")
    out.print(f"rollout {name}: {cand} vs production {baseline}, shadow {spec.shadow.min_duration_s:g}s, "
              f"steps {list(spec.steps)}, every {spec.interval_s:g}s"
              + (f", live outcomes from {bars}" if bars else ", no live outcomes (--bars not given)"),
              highlight=False)
    if detach:
        log_path = s.home / "serving" / "logs" / f"rollout-{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "tideline", "--registry", reg.store.uri]

        if state(ctx).config is not None:
            argv += ["--config", str(state(ctx).config)]
        argv += ["rollout", "resume", "--name", name]
        with open(log_path, "ab") as logf:
            p = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
        out.print(f"controller running in the background (pid {p.pid}, log {log_path}); "
                  f"follow it with `tideline rollout status --watch`", highlight=False)
        return
    _exit_with_outcome(_run_controller(s, reg, name))


# Exit codes of `rollout start|resume` (docs/cli.md "Exit codes"): what the rollout ended as.
EXIT_ROLLED_BACK = 12  # the candidate was rolled back: production unchanged (the safety net worked)
EXIT_FAILED = 13  # the rollout could not finish (e.g. the backend failed): see `rollout status`
EXIT_REVERTED = 14  # promoted, then reverted by the guard: production is the previous version again


def _exit_with_outcome(st: Any) -> None:
    if st.phase.value == "RolledBack":
        raise typer.Exit(EXIT_ROLLED_BACK)
    if st.phase.value == "Reverted":
        raise typer.Exit(EXIT_REVERTED)
    if st.phase.value != "Promoted":
        raise typer.Exit(EXIT_FAILED)


@rollout_app.command("resume")
def rollout_resume(ctx: typer.Context, name: Annotated[str, _NAME] = "tideline") -> None:
    """Run the controller of an existing rollout until it ends (after a crash, or for --detach)."""
    s, reg = _ctx(ctx)
    _exit_with_outcome(_run_controller(s, reg, name))


def _status_dict(doc: Any) -> dict[str, Any]:
    return {"spec": doc.spec.to_dict(), "status": doc.status.to_dict(), "events": doc.events,
            "controller": doc.owner, "lease_until": doc.lease_until,
            "applied": doc.applied_generation >= doc.status.generation}


def _render_status(doc: Any) -> None:
    from rich.table import Table


    st = doc.status
    out.print(f"[bold]rollout {doc.spec.name}[/bold] {_line(st)}", highlight=False)
    out.print(f"  steps {list(doc.spec.steps)}, interval {doc.spec.interval_s:g}s, failures "
              f"{st.failures}/{doc.spec.failure_limit}, inconclusive {st.inconclusive}", highlight=False)
    if st.analyses:
        last = st.analyses[-1]
        t = Table(title=f"last analysis: {last['verdict']} ({last.get('phase')} {last.get('weight')}%)")
        for col in ("check", "value", "threshold", "result", "reason"):
            t.add_column(col, overflow="fold")
        for c in last["checks"]:
            res = {True: "[green]pass[/]", False: "[red]fail[/]", None: "[yellow]n/a[/]"}[c["passed"]]
            v = c["value"]
            t.add_row(c["name"], f"{v:.4g}" if isinstance(v, float) else str(v), f"{c['threshold']:g}", res,
                      c["reason"])
        out.print(t)
    for e in doc.events[-8:]:
        out.print(f"  {time.strftime('%H:%M:%S', time.localtime(e['at']))} {e['msg']}", highlight=False)


@rollout_app.command("status")
def rollout_status(
    ctx: typer.Context, name: Annotated[str, _NAME] = "tideline",
    watch: Annotated[bool, typer.Option("--watch", help="Refresh until the rollout ends.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Phase, weight, last analysis and recent events of a rollout."""
    from tideline.rollout.controller import load_rollout

    _, reg = _ctx(ctx)
    seen = ""
    while True:
        doc, _ = load_rollout(reg.store, name)
        if as_json and not watch:
            print_json(_status_dict(doc))
            return
        line = _line(doc.status)
        if not watch:
            _render_status(doc)
            return
        if line != seen:
            out.print(line, highlight=False, markup=False)
            seen = line
        if doc.status.terminal:
            return
        time.sleep(1.0)


def _manual(ctx: typer.Context, name: str, action: str, by: str | None = None) -> None:
    from tideline.rollout.controller import RolloutController, request_action

    s, reg = _ctx(ctx)
    request_action(reg.store, name, action, by=by)
    backend = _backend(s, reg, name)
    try:  # apply it now unless a live controller holds the lease (then that controller applies it)
        ctrl = RolloutController(name, backend, reg.store)
        st = ctrl.reconcile_once()
        if st.phase.value == "Promoting":
            st = ctrl.reconcile_once()
    finally:
        backend.close()
    out.print(_line(st), highlight=False, markup=False)


@rollout_app.command("promote")
def rollout_promote(ctx: typer.Context, name: Annotated[str, _NAME] = "tideline") -> None:
    """Skip the remaining analysis: promote the candidate now (compare-and-swap against the baseline)."""
    _manual(ctx, name, "promote")


@rollout_app.command("rollback")
def rollout_rollback(ctx: typer.Context, name: Annotated[str, _NAME] = "tideline") -> None:
    """Abort the rollout: canary weight 0, shadow off, candidate retired; production untouched."""
    _manual(ctx, name, "rollback")


@rollout_app.command("approve")
def rollout_approve(
    ctx: typer.Context,
    name: Annotated[str, _NAME] = "tideline",
    by: Annotated[str | None, typer.Option("--by", help="Who approves (default: $TIDELINE_USER, else your login "
                                                        "name); recorded with the time.")] = None,
) -> None:
    """Approve the promotion of a rollout that waits for one (AwaitingApproval: loop.rollout.approval_required)."""
    from tideline.cli.alerts import _who

    _manual(ctx, name, "approve", by=_who(by))
