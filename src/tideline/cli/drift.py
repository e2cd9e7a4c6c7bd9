"""``tideline drift``: check recent bars for feature and prediction drift against a registered version."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from tideline.cli.context import err, open_registry, out, print_json, state

drift_app = typer.Typer(help="Feature and prediction drift of recent bars against a model version.",
                        no_args_is_help=True)


@drift_app.command("check")
def check(
    ctx: typer.Context,
    data: Annotated[str | None, typer.Option(
        "--data", help="Recent bars: CSV/Parquet file, a directory of them, or s3://bucket/prefix.")] = None,
    synthetic: Annotated[bool, typer.Option("--synthetic", help="Demo: use a generated synthetic market.")] = False,
    symbols: Annotated[int, typer.Option(min=1, max=500, help="Synthetic: number of symbols.")] = 10,
    bars: Annotated[int, typer.Option(min=150, max=2_000_000, help="Synthetic: bars per symbol.")] = 1000,
    seed: Annotated[int, typer.Option(help="Synthetic: seed of the market.")] = 7,
    shift: Annotated[list[int] | None, typer.Option(
        help="Synthetic: bar index where the planted signal flips (repeatable).")] = None,
    vol_scale: Annotated[float, typer.Option(
        min=0.1, max=10.0, help="Synthetic: scale every price move (a volatility regime change).")] = 1.0,
    version: Annotated[str, typer.Option("--version", help="Version or alias to check against.")] = "production",
    write: Annotated[bool, typer.Option("--write/--no-write",
                                        help="Store the JSON and HTML results as attachments of the version.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    html_out: Annotated[Path | None, typer.Option("--html-out", help="Also write the HTML report here.")] = None,
    top: Annotated[int, typer.Option(min=1, max=500, help="Drifted features to list.")] = 10,
) -> None:
    """Compare recent bars with the training reference of a version (default: production)."""
    from tideline.data import load_bars, synthetic_market, validate_bars
    from tideline.errors import ConfigError
    from tideline.monitoring.drift import amplify_moves, run_drift_check

    if bool(data) == synthetic:
        raise ConfigError("give exactly one of --data PATH or --synthetic")
    s = state(ctx).settings()
    if synthetic:
        raw = synthetic_market(n_symbols=symbols, n_bars=bars, seed=seed, shifts=shift or None)
        if vol_scale != 1.0:
            raw = amplify_moves(raw, vol_scale)
    else:
        assert data is not None
        raw = load_bars(data, endpoint_url=s.endpoint_url())
    clean = validate_bars(raw, mode="strict").clean
    reg = open_registry(s, must_exist=True)
    if not as_json:
        err.print(f"[dim]registry {s.registry_uri()}[/dim]")
    outcome = run_drift_check(reg, clean, version=version, cfg=s.drift, write=write, html_out=html_out)
    if as_json:
        print_json(outcome.to_dict())
        return
    _render(outcome, s.registry_uri(), html_out, top)


def _render(outcome: Any, registry_uri: str, html_out: Path | None, top: int) -> None:
    from rich.table import Table
    from rich.text import Text


    r = outcome.result
    verdict = Text("DATASET DRIFTED", "bold red") if r.dataset_drifted else Text("no dataset drift", "bold green")
    out.print(Text.assemble(verdict, f"  version {outcome.version}: {r.n_drifted}/{len(r.columns)} features "
                                     f"drifted ({r.drifted_share:.0%}; threshold {r.drift_share_threshold:.0%})"))
    cw = r.extra.get("current_window") or {}
    rw = r.extra.get("reference_window") or {}
    out.print(f"current {cw.get('start')} .. {cw.get('end')}: {r.n_current:,} rows (sampled "
              f"{r.n_current_sampled:,}); reference {rw.get('start')} .. {rw.get('end')}: {r.n_reference:,} rows "
              f"(sampled {r.n_reference_sampled:,}); {r.seconds:.2f} s", highlight=False)
    drifted = r.drifted_columns()
    if drifted:
        t = Table(title=f"top drifted features ({min(top, len(drifted))} of {len(drifted)})")
        for col in ("feature", "method", "score", "threshold", "x threshold"):
            t.add_column(col, no_wrap=True)
        for c in drifted[:top]:
            t.add_row(c.column, c.method, f"{c.score:.4g}", f"{c.threshold:g}", f"{c.severity:.2f}")
        out.print(t)
    if r.prediction is not None:
        p = r.prediction
        mark = Text("drifted", "red") if p.drifted else Text("stable", "green")
        out.print(Text.assemble("prediction drift: ", mark, f" ({p.method} {p.score:.4g}, threshold {p.threshold:g})"))
    else:
        out.print("prediction drift: not checked")
    if outcome.attachments:
        names = ", ".join(outcome.attachments[k] for k in ("json", "html", "latest") if k in outcome.attachments)
        out.print(f"stored as attachments of {outcome.version} in {registry_uri}: {names}", highlight=False)
    else:
        out.print("not stored (--no-write)")
    if html_out is not None:
        out.print(f"HTML report written to {html_out}", highlight=False)
