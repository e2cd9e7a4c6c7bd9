"""``tideline feedback``: join the prediction log with realized bars; live metrics per served version."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from tideline.cli.context import err, open_registry, out, print_json, state

if TYPE_CHECKING:
    from tideline.monitoring.feedback import FeedbackReport, LiveMetrics


def _vkey(version: str) -> tuple[int, str]:
    """v2 before v10."""
    return (int(version[1:]), version) if version[1:].isdigit() else (1 << 30, version)


def feedback(
    ctx: typer.Context,
    data: Annotated[str, typer.Option(
        "--data", help="Recent bars (covering the predictions and their horizon): CSV/Parquet file, a "
                       "directory of them, or s3://bucket/prefix.")],
    since: Annotated[str | None, typer.Option(
        "--since", help="Only predictions logged at or after this ISO time (UTC when no zone is given).",
    )] = None,
    cost_bps: Annotated[float | None, typer.Option(
        "--cost-bps", min=0.0, help="Cost per unit of turnover in bps (default: the cost each version was "
                                    "evaluated with).")] = None,
    write: Annotated[bool, typer.Option(
        "--write/--no-write", help="Store live-metrics.json as an attachment of each version.")] = True,
    skew_sample: Annotated[int, typer.Option(
        "--skew-sample", min=0, help="Recompute the features of each version's latest N logged predictions from "
                                     "--data and compare them with what it was served (0 = off).")] = 200,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Realized outcomes of logged predictions: accuracy, error, Sharpe and change points per version."""
    from tideline.data import load_bars, validate_bars
    from tideline.monitoring.feedback import run_feedback
    from tideline.monitoring.predictions import utc_bound

    s = state(ctx).settings()
    since_ts = utc_bound(since, "--since")
    raw = load_bars(data, endpoint_url=s.endpoint_url())
    clean = validate_bars(raw, mode="strict").clean
    reg = open_registry(s, must_exist=True)
    if not as_json:
        err.print(f"[dim]registry {s.registry_uri()}[/dim]")
    report = run_feedback(reg, clean, cost_bps=cost_bps, since=since_ts, write=write, skew_sample=skew_sample)
    if as_json:
        print_json(report.to_dict())
        return
    _render(report, s.registry_uri(), write)


def _render(report: FeedbackReport, registry_uri: str, write: bool) -> None:
    from rich.table import Table


    out.print(f"{report.n_predictions:,} logged predictions"
              + (f" since {report.since}" if report.since else "")
              + f": {report.n_realized:,} realized, {report.n_pending:,} pending, "
                f"{report.n_unknown_bar:,} with an unknown bar, {report.n_duplicates:,} duplicates dropped",
              highlight=False)
    if report.metrics:
        t = Table(title="live outcomes")
        cols = ("version", "role", "n", "pending", "accuracy", "baseline", "MAE", "Sharpe", "change points")
        for col in cols:
            t.add_column(col, no_wrap=True, justify="left" if col in ("version", "role") else "right")

        def cells(m: LiveMetrics) -> list[str]:
            return [f"{m.n:,}", f"{m.n_pending:,}", f"{m.directional_accuracy:.3f}",
                    f"{m.baseline_accuracy:.3f}", f"{m.mae:.4g}", f"{m.sharpe:.2f}"]

        for v, whole in sorted(report.versions.items(), key=lambda kv: _vkey(kv[0])):
            rows = [[v, r, *cells(m), ""] for (vv, r), m in sorted(report.metrics.items()) if vv == v]
            if len(rows) > 1:
                rows.append([v, "all", *cells(whole), ""])
            cps = report.change_points.get(v, [])
            rows[-1][-1] = f"{len(cps)}" + (f" (first {cps[0].timestamp or cps[0].index})" if cps else "")
            for i, row in enumerate(rows):
                t.add_row(*row, end_section=i == len(rows) - 1)
        out.print(t)
    if report.regimes:
        t = Table(title="live outcomes by volatility regime (bounds from each version's training window)")
        for col in ("version", "regime", "n", "accuracy", "Sharpe", "win rate", "error std", "bias"):
            t.add_column(col, no_wrap=True, justify="left" if col in ("version", "regime") else "right")
        for v, regimes in sorted(report.regimes.items(), key=lambda kv: _vkey(kv[0])):
            for i, (g, m) in enumerate(regimes.items()):
                t.add_row(v, g, f"{m.n_obs:,}", f"{m.directional_accuracy:.3f}", f"{m.sharpe:.2f}",
                          f"{m.win_rate:.3f}", f"{m.error_std:.4g}", f"{m.bias:.4g}",
                          end_section=i == len(regimes) - 1)
        out.print(t)
    for ex in report.unknown_examples:
        out.print(f"unknown bar: {ex['version']} {ex['role']} symbol={ex['symbol']} "
                  f"bar_time={ex['bar_time']}", highlight=False)
    for v, why in sorted(report.skipped.items()):
        out.print(f"skipped {v}: {why}", highlight=False)
    for k in report.skew.values():
        out.print(f"training/serving skew: {k.summary()}", style="bold red" if k.mismatched else None,
                  highlight=False)
        for ex in k.examples:
            out.print(f"  {ex['source']} request {ex['request_id']} {ex['symbol']} {ex['bar_time']}: logged "
                      f"{ex['logged']}, recomputed {ex['recomputed']}", highlight=False)
    for note in report.notes:
        out.print(note, highlight=False)
    if report.attachments:
        out.print(f"stored live-metrics.json for {', '.join(sorted(report.attachments))} in {registry_uri}",
                  highlight=False)
    elif not write:
        out.print("not stored (--no-write)")
