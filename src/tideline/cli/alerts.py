"""``tideline alerts list | ack | resolve``: the alerts the loop raised (``tideline.loop.alerts``), who has seen them
and who has dealt with them."""

from __future__ import annotations

import getpass
import os
from typing import Annotated

import typer
from rich.text import Text

from tideline.cli.context import open_registry, out, print_json, state

alerts_app = typer.Typer(help="Alerts the loop raised from what it, the registry and the rollouts recorded: list "
                              "them, acknowledge one (you have seen it), resolve one (dealt with; the next "
                              "occurrence raises a new one).")

ByOpt = Annotated[str | None, typer.Option("--by", help="Who (default: $TIDELINE_USER, else your login name).")]
_STYLE = {"critical": "bold red", "high": "red", "medium": "yellow", "low": "cyan"}


def _who(by: str | None) -> str:
    if by:
        return by
    try:
        return os.environ.get("TIDELINE_USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@alerts_app.command("list")
def alerts_list(
    ctx: typer.Context,
    show_all: Annotated[bool, typer.Option("--all", help="Include resolved alerts.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Open and acknowledged alerts, newest first (with --all the resolved ones too), with their deliveries."""
    from tideline.loop.alerts import list_alerts

    reg = open_registry(state(ctx).settings(), must_exist=True)
    alerts = list_alerts(reg, include_resolved=show_all)
    if as_json:
        print_json([a.to_dict() for a in alerts])
        return
    if not alerts:
        out.print("no alerts" + ("" if show_all else " open (tideline alerts list --all shows resolved ones)"))
        return
    for a in alerts:
        who = (f"; acknowledged by {a.acknowledged_by} at {a.acknowledged_at}" if a.acknowledged_by else "") + (
            f"; resolved by {a.resolved_by} at {a.resolved_at}" if a.resolved_by else "")
        line = Text(f"{a.id}  ").append(f"{a.severity:<8}", _STYLE.get(a.severity, "")).append(
            f" {a.status:<12} {a.title}  (x{a.occurrences}, since {a.created_at}{who})")
        out.print(line, soft_wrap=True)
        out.print(Text(f"    {a.body}"), soft_wrap=True)
        for d in a.deliveries:
            state_ = "sent" if d.get("ok") else f"FAILED ({d.get('attempts')}x): {d.get('error')}"
            out.print(Text(f"    -> {d.get('route')}: {state_}"), soft_wrap=True)


@alerts_app.command("ack")
def alerts_ack(ctx: typer.Context, alert_id: Annotated[str, typer.Argument(metavar="ID")], by: ByOpt = None) -> None:
    """Acknowledge an alert: you have seen it (it stays open: its condition is not raised again)."""
    from tideline.loop.alerts import acknowledge

    reg = open_registry(state(ctx).settings(), must_exist=True)
    a = acknowledge(reg, alert_id, by=_who(by))
    out.print(f"{a.id} acknowledged by {a.acknowledged_by} at {a.acknowledged_at}", highlight=False)


@alerts_app.command("resolve")
def alerts_resolve(ctx: typer.Context, alert_id: Annotated[str, typer.Argument(metavar="ID")],
                   by: ByOpt = None) -> None:
    """Resolve an alert: dealt with (the next occurrence of its condition raises a new alert)."""
    from tideline.loop.alerts import resolve

    reg = open_registry(state(ctx).settings(), must_exist=True)
    a = resolve(reg, alert_id, by=_who(by))
    out.print(f"{a.id} resolved by {a.resolved_by} at {a.resolved_at}", highlight=False)
