"""``tideline loop [--once] | loop status | loop history``: the continuous-learning loop (``tideline.loop``)."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from tideline.cli.context import err, open_registry, out, parse_now, print_json, state
from tideline.clock import utcnow
from tideline.errors import ConfigError

loop_app = typer.Typer(
    help="The continuous-learning loop: ingest new bars, monitor production, retrain when a rule fires, roll "
         "out the approved candidate. `tideline loop --once` runs one tick; `tideline loop` ticks on "
         "loop.schedule.",
    invoke_without_command=True,
)


class AcceleratedClock:
    """The loop's clock for a replay: starts at ``start`` and runs ``speed`` times faster than the wall."""

    def __init__(self, start: datetime, speed: float) -> None:
        self.start, self.speed, self.t0 = start, speed, time.monotonic()

    def __call__(self) -> datetime:
        from datetime import timedelta

        return self.start + timedelta(seconds=(time.monotonic() - self.t0) * self.speed)


def _make_loop(ctx: typer.Context, now: str | None, speed: float = 1.0) -> Any:
    from tideline.loop.core import Loop, recent_bars_path
    from tideline.loop.rollouts import DetachedRollouts

    st = state(ctx)
    s = st.settings()
    reg = open_registry(s)
    fixed = parse_now(now)
    clock: Any = None
    if fixed is not None:
        clock = AcceleratedClock(fixed, speed) if speed != 1.0 else (lambda: fixed)
    elif speed != 1.0:
        clock = AcceleratedClock(utcnow(), speed)
    rollouts: Any
    if s.loop.rollouts == "kubernetes":  # ModelRollouts run by the operator (tideline.loop.kube)
        from tideline.loop.kube import KubeRollouts

        rollouts = KubeRollouts(s, reg, _kube_api())
    else:
        rollouts = DetachedRollouts(s, reg, config_path=st.config, bars=str(recent_bars_path(s).resolve()))
    extra: dict[str, Any] = {"clock": clock} if clock else {}
    if s.loop.pipeline == "kfp":  # retrains are Kubeflow Pipelines runs
        from tideline.loop.kube import kfp_pipeline

        extra["pipeline"] = kfp_pipeline(s.loop.kfp_host, reg)
    return Loop(s, reg, rollouts=rollouts, **extra)


def _kube_api() -> Any:
    """``CustomObjectsApi`` from the pod's ServiceAccount (in a cluster) or the kubeconfig."""
    from tideline.errors import ConfigError

    try:
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
    except Exception as e:  # noqa: BLE001 - no cluster credentials: one line
        raise ConfigError(f"loop.rollouts = 'kubernetes' but no cluster is configured: {str(e).splitlines()[0]}",
                          hint="run it in the cluster (the CronWorkflows do) or with a kubeconfig") from None
    return client.CustomObjectsApi()


def _show_tick(rec: dict[str, Any]) -> None:
    from rich.text import Text


    colour = {"ok": "green", "busy": "yellow", "failed": "red"}.get(rec["outcome"], "white")
    out.print(Text(f"tick {rec['id']} at {rec['at']}: {rec['outcome']}", colour)
              .append(f" ({rec['seconds']:.1f} s)" if rec.get("seconds") else ""))
    for step in rec["steps"]:
        out.print(Text(f"  {step['step']:<8} {step['outcome']:<11} ", "bold").append(step["summary"]),
                  soft_wrap=True)
    for d in rec["did"]:
        out.print(Text("  did: ", "cyan").append(d), soft_wrap=True)
    if rec.get("error"):
        out.print(Text("  error: ", "red").append(rec["error"]), soft_wrap=True)
    al = rec.get("alerts") or {}
    if al.get("raised") or al.get("failed") or al.get("error"):
        out.print(Text("  alerts: ", "magenta").append(
            f"{len(al.get('raised', []))} raised, {al.get('sent', 0)} sent, {al.get('failed', 0)} failed "
            f"(retried later)" + (f"; {al['error']}" if al.get("error") else "") + " - tideline alerts list"),
            soft_wrap=True)


def _serve_api(lp: Any, token: str, port: int, host: str) -> None:
    """The API and status page (``tideline.app.api``) in a thread; ``POST /retrain`` runs one forced tick in
    another (one at a time: a second request while it runs is a 409)."""
    import threading

    from tideline.app.api import Busy, create_app, serve_in_thread
    from tideline.loop.alerts import process

    lock = threading.Lock()
    running: dict[str, threading.Thread] = {}

    def retrain(reason: str) -> str:
        with lock:
            t = running.get("tick")
            if t is not None and t.is_alive():
                raise Busy("the retrain requested through the API (its tick is still running)")

            def tick() -> None:
                lp.tick(force=f"requested through the API: {reason}")
                process(lp.registry, lp.s)

            running["tick"] = threading.Thread(target=tick, name="tideline-api-retrain", daemon=True)
            running["tick"].start()
        return "a forced tick is running: tideline loop history (or GET /api/v1/decisions) shows its run"

    _, bound = serve_in_thread(create_app(lp.registry, lp.s, token=token, retrain=retrain), port, host=host)
    err.print(f"API and status page on http://{host}:{bound}/ (bearer token required)", highlight=False)


@loop_app.callback()
def loop(
    ctx: typer.Context,
    once: Annotated[bool, typer.Option("--once", help="Run one tick and exit.")] = False,
    now: Annotated[str | None, typer.Option(help="The loop's clock for this tick (ISO time); default: now.")] = None,
    wait: Annotated[float, typer.Option(min=0, help="Seconds to wait for another tick holding the loop.")] = 0.0,
    speed: Annotated[float, typer.Option(
        min=0.001, help="Run the loop's clock this many times faster than the wall (a replay; with --now it "
                        "starts there and keeps running).")] = 1.0,
    force: Annotated[bool, typer.Option(
        "--force", help="Retrain in this tick whatever the trigger rules say (a scheduled retrain); a rollout in "
                        "flight, a cooldown or a running retrain still refuse it.")] = False,
    reason: Annotated[str, typer.Option(help="Why (with --force): recorded with the run.")] = "forced retrain",
    metrics_port: Annotated[int | None, typer.Option(
        min=0, max=65535, help="Serve the control-plane metrics (retrains, promotions, rollbacks, model age, live "
                               "accuracy, drift, ticks; read from the store) on this port at /metrics while the "
                               "loop runs (0: a free port, printed).")] = None,
    metrics_host: Annotated[str, typer.Option(help="Address for --metrics-port.")] = "127.0.0.1",
    api_port: Annotated[int | None, typer.Option(
        min=0, max=65535, help="Serve the loop's HTTP API and status page on this port while the loop runs (0: a "
                               "free port, printed); needs a token.")] = None,
    api_host: Annotated[str, typer.Option(help="Address for --api-port.")] = "127.0.0.1",
    api_token_file: Annotated[str | None, typer.Option(
        help="File holding the API's bearer token (a mounted Secret); else $TIDELINE_API_TOKEN. None: no API.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Run the loop: one tick with --once, else ticks at the times of loop.schedule (a cron expression in a
    time zone) until stopped (Ctrl-C)."""
    if ctx.invoked_subcommand is not None:
        return
    from tideline.loop.schedule import Schedule

    if metrics_port is not None and once:
        raise ConfigError("--metrics-port serves while the loop runs: drop --once (one-shot ticks are exported by "
                          "a long-running loop or the operator, from what each tick records in the store)")
    if api_port is not None and once:
        raise ConfigError("--api-port serves while the loop runs: drop --once")
    token = None
    if api_port is not None:
        from tideline.app.api import load_token

        token = load_token(api_token_file, dict(os.environ))  # before anything starts: never an open API
    lp = _make_loop(ctx, now, speed)
    if api_port is not None and token is not None:
        _serve_api(lp, token, api_port, api_host)
    if metrics_port is not None:
        from tideline.loop.metrics import serve

        _, port = serve(lp.registry, metrics_port, host=metrics_host)
        err.print(f"control-plane metrics on http://{metrics_host}:{port}/metrics", highlight=False)
    schedule = Schedule(lp.s.loop.schedule)
    from tideline.loop.alerts import process

    while True:
        rec = lp.tick(wait_s=wait, force=reason if force else None)
        force = False  # a forced retrain is this tick's, not every tick's
        # the alerts this tick calls for, and deliveries still pending (never raises, never blocks the loop)
        rec["alerts"] = process(lp.registry, lp.s)
        print_json(rec) if as_json else _show_tick(rec)
        if once:
            if rec["outcome"] == "failed":
                raise typer.Exit(1)
            return
        loop_now = lp.clock()
        loop_now = loop_now if loop_now.tzinfo else loop_now.replace(tzinfo=UTC)
        nxt = schedule.next_tick(loop_now)
        if not as_json:
            out.print(f"next tick at {nxt:%Y-%m-%d %H:%M %Z} ({lp.s.loop.schedule.cron!r} in "
                      f"{lp.s.loop.schedule.timezone}" + (f", clock x{speed:g}" if speed != 1.0 else "") + ")",
                      highlight=False)
        time.sleep(max(0.0, (nxt - loop_now).total_seconds() / speed))


@loop_app.command("status")
def loop_status(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The latest tick, production, and any rollout in flight."""
    from tideline.loop.core import list_ticks
    from tideline.loop.ingest import stored_months
    from tideline.loop.rollouts import DetachedRollouts

    s = state(ctx).settings()
    reg = open_registry(s, must_exist=True)
    ticks = list_ticks(reg, limit=1)
    doc = {"production": reg.aliases().get("production"), "last_tick": ticks[0] if ticks else None,
           "rollout": DetachedRollouts(s, reg).latest(), "bar_months": stored_months(reg.store)}
    if as_json:
        print_json(doc)
        return
    ks = reg.kill_switch()
    doc["kill_switch"] = None if ks is None else ks.model_dump()
    r = doc["rollout"]
    out.print(f"production: {doc['production'] or 'none'}; latest rollout: "
              f"{'none' if r is None else r['candidate'] + ' ' + r['phase']}; "
              f"bars stored: {len(doc['bar_months'])} month(s)", highlight=False)
    if ks is not None:
        out.print(f"[bold red]KILL SWITCH ON[/] since {ks.at}: every predictor answers flat: {ks.reason}",
                  highlight=False)
    if ticks:
        _show_tick(ticks[0])
    else:
        out.print("no tick yet: run `tideline loop --once`")


@loop_app.command("history")
def loop_history(ctx: typer.Context, limit: Annotated[int, typer.Option(min=1)] = 20,
                 as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The latest ticks, newest first: what each saw, did, and why."""
    from tideline.loop.core import list_ticks

    reg = open_registry(state(ctx).settings(), must_exist=True)
    ticks = list_ticks(reg, limit=limit)
    if as_json:
        print_json(ticks)
        return
    if not ticks:
        out.print("no tick yet: run `tideline loop --once`")
    for rec in ticks:
        _show_tick(rec)


@loop_app.command("kill-switch")
def loop_kill_switch(
    ctx: typer.Context,
    switch: Annotated[str, typer.Argument(metavar="STATE", help="on: every predictor answers flat; off: models answer again.")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the registry history).")] = "",
) -> None:
    """Throw or lift the kill switch by hand (the guard throws it when no version passes the floors)."""
    from tideline.errors import ConfigError

    if switch not in ("on", "off"):
        raise ConfigError(f"kill-switch takes 'on' or 'off', not {switch!r}")
    reg = open_registry(state(ctx).settings(), must_exist=True)
    reg.set_kill_switch(switch == "on", reason=reason or f"set {switch} by hand", actor="cli")
    out.print(f"kill switch {switch}" + (": every predictor answers flat within its reload interval"
                                        if switch == "on" else ""), highlight=False)
