"""``tideline data validate|synth``: would a cycle accept this data; a synthetic market to try things on."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from tideline.cli.context import out, print_json, state
from tideline.cli.options import QuarantineOpt
from tideline.errors import DataError

data_app = typer.Typer(help="Market data: validate files, generate synthetic markets.", no_args_is_help=True)


@data_app.command("validate")
def data_validate(
    ctx: typer.Context, path: Annotated[str, typer.Argument(help="CSV/Parquet file, directory or s3:// prefix.")],
    report: Annotated[Path | None, typer.Option(help="Write the quarantine report (CSV + JSON) here.")] = None,
    quarantine: QuarantineOpt = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Would a cycle accept this data? The cycle's own checks, with its reasons: defective rows, history per
    symbol, data quality per symbol, rows left after the feature warm-up. Exit 0: a cycle (with the same
    --quarantine) would learn from it; 3: it would refuse it."""
    from tideline.data import load_bars
    from tideline.training.cycle import check_bars, make_dataset

    s = state(ctx).settings()
    raw = load_bars(path, endpoint_url=s.endpoint_url())
    rep, refusal, rows = None, None, 0
    try:
        bars, _, rep = check_bars(raw, path, s, quarantine=quarantine)
        rows = len(make_dataset(bars, s.features))
    except DataError as e:  # ValidationError (carries the report) or the dataset build's refusal
        rep = getattr(e, "report", None) or rep
        refusal = e
    if report is not None and rep is not None:
        rep.write(report)
    if as_json:
        print_json({**(rep.to_dict() if rep is not None else {}), "accepted": refusal is None,
                     "dataset_rows": rows, "error": None if refusal is None else refusal.message})
    else:
        if rep is not None:
            out.print(rep.summary(), markup=False, highlight=False)
        if refusal is None:
            out.print(Text(f"a cycle would accept this data: {rows:,} dataset rows after the feature warm-up",
                           "green"))
        else:
            out.print(Text("a cycle would refuse this data: ", "red").append(refusal.message))
    if refusal is not None:
        raise typer.Exit(refusal.exit_code)


@data_app.command("synth")
def data_synth(
    out_path: Annotated[Path, typer.Argument(metavar="OUT", help="Output .csv or .parquet.")],
    symbols: Annotated[int, typer.Option(min=1, max=500)] = 10,
    bars: Annotated[int, typer.Option(min=10, max=2_000_000)] = 3000,
    seed: Annotated[int, typer.Option()] = 0,
    shift: Annotated[list[int] | None, typer.Option(help="Bar index of a regime shift (repeatable).")] = None,
) -> None:
    """Write a synthetic multi-symbol market with hidden, regime-dependent signal."""
    from tideline.data import synthetic_market, write_bars

    df = synthetic_market(n_symbols=symbols, n_bars=bars, seed=seed, shifts=shift or None)
    write_bars(df, out_path)
    out.print(f"wrote {len(df):,} bars ({symbols} symbols) to {out_path}")

