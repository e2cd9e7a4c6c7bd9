"""``tideline cycle``: one retraining cycle in-process, rendered as a table (or JSON)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from tideline.cli.context import err, fmt, open_registry, out, print_json, reporter, state
from tideline.cli.options import (
    BarsOpt,
    DataOpt,
    FamiliesOpt,
    QuarantineOpt,
    SeedOpt,
    SymbolsOpt,
    SyntheticOpt,
    TuneOpt,
    one_source,
    parse_families,
    with_tuning,
)


def cycle(
    ctx: typer.Context,
    data: DataOpt = None,
    synthetic: SyntheticOpt = False,
    symbols: SymbolsOpt = 10,
    bars: BarsOpt = 3000,
    seed: SeedOpt = 7,
    families: FamiliesOpt = None,
    horizon: Annotated[int | None, typer.Option(min=1, help="Label horizon in bars.")] = None,
    cost_bps: Annotated[float | None, typer.Option(min=0, help="Cost per unit turnover, bps.")] = None,
    quarantine: QuarantineOpt = False,
    tune: TuneOpt = None,
    promote: Annotated[bool, typer.Option("--promote/--no-promote", help="Promote if the policy passes.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Run one retraining cycle: validate, train every family, evaluate, register, promote if allowed."""
    source, syn = one_source(data, synthetic, symbols, bars, seed)
    s = state(ctx).settings()
    upd: dict[str, Any] = {"training": s.training.model_copy(update={"seed": seed})}
    fams = parse_families(families)
    if fams:
        upd["training"] = upd["training"].model_copy(update={"families": fams})
    if horizon is not None:
        upd["features"] = s.features.model_copy(update={"horizon": horizon})
    if cost_bps is not None:
        upd["evaluation"] = s.evaluation.model_copy(update={"cost_bps": cost_bps})
    s = with_tuning(s.model_copy(update=upd), tune)

    from tideline.training.cycle import CycleRunner

    reg = open_registry(s)
    runner = CycleRunner(s, reg, reporter(enabled=not as_json and err.is_terminal))
    if not as_json:
        err.print(f"[dim]registry {s.registry_uri()}[/dim]")
    res = runner.run(source, synthetic=syn, quarantine=quarantine, promote=promote)
    if as_json:
        print_json(res.to_dict())
        return
    _render_cycle(res)


def _render_cycle(res: Any) -> None:
    from tideline.training.tuning import describe as describe_tuning

    d = res.data
    out.print(f"[bold]data[/bold] {d['source']}: {d['rows']:,} bars, {len(d['symbols'])} symbol(s), "
              f"{d['start']} .. {d['end']}; {d['dataset_rows']:,} labelled rows x {d['features']} features, "
              f"horizon {d['horizon']}, cost {d['cost_bps']} bps")
    if d["rows_quarantined"]:
        out.print(Text(f"quarantined {d['rows_quarantined']} rows: ", "yellow").append("; ".join(d["problems"])))
    q = d.get("data_quality", {}).get("symbols", {})
    if q:
        worst = min(q.items(), key=lambda kv: kv[1]["score"])
        why = "; ".join(worst[1]["reasons"]) or "no findings"
        out.print(Text(f"data quality: {len(q)} symbol(s) scored, lowest {worst[0]} {worst[1]['score']:.2f} "
                       f"({why})", style="dim"))
    h = d["holdout"]
    out.print(f"[bold]hold-out[/bold] {h['start']} .. {h['end']} ({h['rows']:,} rows); "
              f"{d['walk_forward_folds']} purged walk-forward folds before it")
    t = Table(title="candidates vs production and baselines (hold-out, net of costs)")
    for col in ("model", "version", "WF Sharpe", "Sharpe", "DSR", "dir.acc", "IC", "maxDD", "exposure", "long",
                "trades", "p vs prod", "decision"):
        t.add_column(col, no_wrap=True)
    for c in res.candidates:
        m = c.holdout
        wf = c.walk_forward.get("sharpe_mean")
        decision = ("[bold green]PROMOTED[/]" if c.promoted else
                    "[green]approved[/]" if c.decision.approved else "[red]rejected[/]")
        dsr = fmt(c.evidence.deflated_sharpe, 2) if c.evidence else "-"
        t.add_row(c.family, c.version or "-", fmt(wf, 2) if wf is not None else "-", fmt(m.sharpe, 2), dsr,
                  fmt(m.directional_accuracy), fmt(m.ic), fmt(m.max_drawdown), fmt(m.exposure, 2),
                  fmt(m.long_share, 2), str(m.n_trades),
                  fmt(c.p_value) if c.p_value is not None else "-", decision)
    if res.production_metrics is not None:
        m = res.production_metrics
        t.add_row("production", res.production_version, "-", fmt(m.sharpe, 2), "-",
                  fmt(m.directional_accuracy), fmt(m.ic), fmt(m.max_drawdown), fmt(m.exposure, 2),
                  fmt(m.long_share, 2), str(m.n_trades), "-", "current")
    for name, m in res.baselines.items():
        t.add_row(f"[dim]{name}[/dim]", "baseline", "-", fmt(m.sharpe, 2), "-",
                  fmt(m.directional_accuracy), fmt(m.ic), fmt(m.max_drawdown), fmt(m.exposure, 2),
                  fmt(m.long_share, 2), str(m.n_trades), "-", "")
    out.print(t)
    ev = next((c.evidence for c in res.candidates if c.evidence), None)
    if ev is not None:
        pbo = "n/a" if ev.pbo is None else f"{ev.pbo:.2f}"
        tuned = f" ({ev.tuning_trials} of them tuning trials)" if ev.tuning_trials else ""
        out.print(f"[dim]DSR: deflated Sharpe ratio (0-1) counting the {ev.n_trials} candidates tried{tuned}; probability of "
                  f"backtest overfitting over the walk-forward folds: {pbo}; exposure: mean |position|, long: share "
                  f"of positions that are long[/dim]")
    for c in res.candidates:
        if c.tuning:
            out.print(Text(f"tuned {c.family}: {describe_tuning(c.tuning)}", style="dim"), highlight=False)
    rules = sorted({c.position.rule for c in res.candidates})
    out.print(f"[dim]positions: {', '.join(rules) or '-'}; label: {d.get('label', 'raw')}[/dim]")
    for c in res.candidates:
        mark = "[green]✔[/]" if c.decision.approved else "[red]✘[/]"
        out.print(Text.from_markup(f"{mark} {c.family} {c.version or ''}: ").append("; ".join(c.decision.reasons)),
                  highlight=False)
    for family, why in res.failures.items():
        out.print(Text(f"✘ {family} failed to train (the others were judged): ", "red").append(why), highlight=False)
    if res.production_error:
        out.print(Text(f"production {res.production_version} could not be evaluated: ", "yellow")
                  .append(str(res.production_error)))
    out.print(f"[bold]result[/bold] {res.promotion_note}")
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in res.timings.items())
    out.print(f"[dim]timings: {stages}[/dim]")

