"""``tideline trigger check|run``: evaluate the retraining rules; start a run when one fires."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from tideline.cli.context import err, open_registry, out, parse_now, print_json, state
from tideline.cli.options import BarsOpt, DataOpt, SeedOpt, SymbolsOpt, SyntheticOpt, synthetic_spec
from tideline.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd
    from rich.console import Console

    from tideline.config import Settings

trigger_app = typer.Typer(
    help="Decide when to retrain: evaluate the trigger rules; start the pipeline when one fires.",
    no_args_is_help=True,
)



def _bars(s: Settings, data: str | None, synthetic: dict[str, Any] | None) -> pd.DataFrame | None:
    """Strictly validated recent bars (bad data: exit 3, as everywhere), or the synthetic market."""
    if data and synthetic:
        raise ConfigError("give at most one of --data PATH or --synthetic")
    if synthetic:
        from tideline.data import synthetic_market

        return synthetic_market(**synthetic)
    if data:
        from tideline.data import load_bars, validate_bars

        return validate_bars(load_bars(data, endpoint_url=s.endpoint_url()), mode="strict").clean
    return None


def _render(report: dict[str, Any], console: Console) -> None:
    from rich.table import Table

    prod = report.get("production") or "none"
    regime = report.get("regime")
    reg = (f"{regime['regime']} (vol at the {regime['percentile']:.0%} point of the {regime['reference']})"
           if regime else "unknown")
    console.print(f"[bold]retrain triggers[/bold] at {report['now'][:19]}Z: production {prod}, "
                  f"volatility regime {reg}", highlight=False)
    t = Table()
    t.add_column("rule", no_wrap=True)
    t.add_column("fired", no_wrap=True)
    t.add_column("reason", overflow="fold")
    for r in report["rules"]:
        t.add_row(r["name"], "[bold red]yes[/]" if r["fired"] else "[green]no[/]", r["reason"])
    console.print(t)
    for note in report.get("notes", []):
        console.print(f"[yellow]note:[/yellow] {note}")


@trigger_app.command("check")
def check(
    ctx: typer.Context,
    data: DataOpt = None,
    synthetic: SyntheticOpt = False,
    symbols: SymbolsOpt = 10,
    bars: BarsOpt = 3000,
    seed: SeedOpt = 7,
    reason: Annotated[str | None, typer.Option("--reason", help="A manual retraining request.")] = None,
    now: Annotated[str | None, typer.Option("--now", help="Evaluate as of this time (ISO, UTC).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Evaluate every rule and show which would fire (exit code 0 either way)."""
    from tideline.triggers import build_context, evaluate

    s = state(ctx).settings()
    df = _bars(s, data, synthetic_spec(synthetic, symbols, bars, seed))
    report = evaluate(build_context(open_registry(s), bars=df, now=parse_now(now), manual=reason), s.triggers)
    d = report.to_dict()
    if as_json:
        print_json(d)
        return
    _render(d, out)
    out.print("[bold]retrain: yes[/bold] — " + "; ".join(d["reasons"]) if d["fired"] else "[bold]retrain: no[/bold]")


@trigger_app.command("run")
def run(
    ctx: typer.Context,
    data: DataOpt = None,
    synthetic: SyntheticOpt = False,
    symbols: SymbolsOpt = 10,
    bars: BarsOpt = 3000,
    seed: SeedOpt = 7,
    force: Annotated[bool, typer.Option("--force", help="Start a run even when no rule fires.")] = False,
    mode: Annotated[str, typer.Option("--mode", help="local (in this process) or kfp (submit to Kubeflow).")
                    ] = "local",
    host: Annotated[str | None, typer.Option("--host", help="KFP API URL (mode kfp).")] = None,
    reason: Annotated[str | None, typer.Option("--reason", help="A manual retraining request.")] = None,
    now: Annotated[str | None, typer.Option("--now", help="Evaluate as of this time (ISO, UTC).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the decision as JSON.")] = False,
) -> None:
    """Start the retraining pipeline when a rule fires (or with --force); one run at a time (run lock)."""
    from tideline.triggers import run_if_needed

    if mode not in ("local", "kfp"):
        raise ConfigError(f"--mode must be local or kfp, not {mode!r}")
    run_mode: Literal["local", "kfp"] = "local" if mode == "local" else "kfp"
    s = state(ctx).settings()
    synth = synthetic_spec(synthetic, symbols, bars, seed)
    df = _bars(s, data, synth)
    if data is None and synth is None and not force and not reason:
        err.print("[dim]no --data: rules that need recent bars (new_data, regime_shift) cannot fire[/dim]")

    def starter(**kw: Any) -> dict[str, Any]:
        from tideline.training.orchestration import start_retrain  # written alongside; imported only to start a run

        return start_retrain(**kw)

    decision = run_if_needed(open_registry(s), s, starter=starter, force=force, manual=reason, bars=df,
                             now=parse_now(now), mode=run_mode, host=host, source=data, synthetic=synth)
    if as_json:
        print_json(decision)
        return
    _render(decision["report"], out)
    if decision["started"]:
        out.print(f"[bold green]started[/bold green] run {decision['run_id']} ({run_mode}): {decision['reason']}")
        res = decision.get("result") or {}
        if res:
            out.print("  " + ", ".join(f"{k}: {v}" for k, v in res.items() if not isinstance(v, (dict, list))))
    else:
        out.print(f"[bold]not started[/bold]: {decision['reason']}")
