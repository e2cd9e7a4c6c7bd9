"""``tideline demo``: the continuous-learning story end to end on this machine (see ``tideline.app.demo``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from tideline.cli.context import out, state


def demo(
    ctx: typer.Context,
    seed: Annotated[int, typer.Option(help="Seed of the market and the models: same seed, same story.")] = 7,
    short: Annotated[bool, typer.Option("--short", help="A smaller market (4 symbols, fewer bars): ~3 min.")] = False,
    report: Annotated[Path | None, typer.Option(
        help="Where to write the HTML report (default: <home>/demo/report/tideline-demo.html).")] = None,
    revert_at: Annotated[int | None, typer.Option(
        help="Flip the signal back at this bar (the guard's story: a retrained model promoted just before "
             "decays while it is watched, and the guard reverts it).")] = None,
) -> None:
    """Train, serve, replay a market that changes, detect the decay, retrain, roll out, roll back a broken
    candidate, and write a report. Exit 0 only if the whole story happened."""
    from rich.table import Table

    from tideline.app.demo import DemoConfig, run_demo

    s = state(ctx).settings()
    cfg = DemoConfig.short(seed) if short else DemoConfig(seed=seed)
    if revert_at is not None:
        cfg = dataclasses.replace(cfg, revert_at=revert_at)
        cfg.validate()
    home = Path(s.home) / "demo"
    out.print(f"[bold]tideline demo[/] (seed {seed}{', short' if short else ''}) under {home}: the market, the "
              "pipeline runs, the predictor processes and the router are all real; only the clock is fast.",
              highlight=False)
    res = run_demo(cfg, home, report=report, console=out)
    table = Table(title="the story", show_header=True, header_style="bold")
    table.add_column("check")
    table.add_column("")
    table.add_column("detail", overflow="fold")
    for c in res.checks:
        table.add_row(c["name"], "[green]yes[/]" if c["ok"] else "[red]NO[/]", str(c["detail"]))
    out.print(table)
    learn = res.record.get("learning") or {}
    if learn:
        out.print(f"accuracy before the shift {learn.get('pre_shift_accuracy')}; after it: retrained system "
                  f"{learn.get('post_shift_live_accuracy')} vs static v1 {learn.get('post_shift_static_accuracy')}; "
                  f"back within {learn.get('tolerance')} of the pre-shift level after "
                  f"{learn.get('recovery_bars')} bars", highlight=False)
    xp = res.record.get("experience") or {}
    if xp.get("rows"):
        out.print(f"experience buffer: {xp['rows']:,} served predictions with their realized outcomes, of "
                  f"{len(xp.get('versions') or {})} version(s); mean net reward {xp.get('reward_bps')} bps, hit rate "
                  f"{xp.get('hit_rate')} (tideline --registry {xp['registry']} experience stats)", highlight=False)
    out.print("[dim]the market is synthetic, its planted signal far stronger than any real market's: annualised "
              "Sharpe ratios of 20-80 here are a property of the toy, not a promise[/dim]")
    out.print(f"report: {res.report}\nrecord: {res.record_path}\n{res.seconds:.0f} s", highlight=False)
    if not res.ok:
        out.print("[bold red]the story is incomplete[/] (see the checks above)")
        raise typer.Exit(1)
