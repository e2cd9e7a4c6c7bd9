"""``tideline replay``: how retraining policies would have done over real history (see ``tideline.app.replay``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from tideline.cli.context import err, out, print_json, state
from tideline.cli.options import TuneOpt, parse_families, with_tuning


def replay(
    ctx: typer.Context,
    data: Annotated[str, typer.Option(
        "--data", help="Bars to replay: CSV/Parquet file, a directory of them, or s3://bucket/prefix.")],
    policies: Annotated[str, typer.Option(
        "--policies", help="Comma list among static, weekly, monthly, loop.")] = "static,monthly,loop",
    families: Annotated[str, typer.Option(
        "--families", help="Model families each retrain trains (comma list, as in `tideline cycle`).")] = "lightgbm",
    history: Annotated[int | None, typer.Option(
        "--history", min=1, help="Bar times before the first tick (default: a third of them, at least 300).")] = None,
    check_every: Annotated[int, typer.Option(
        "--check-every", min=1, help="Bars between the loop policy's ticks.")] = 5,
    gate: Annotated[bool, typer.Option(
        "--gate/--no-gate", help="--no-gate: promote the best retrained family even when the gate refuses it "
                                 "(what retraining without the gate would have done).")] = True,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of the models (default: training.seed).")] = None,
    tune: TuneOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    report: Annotated[Path | None, typer.Option(
        "--report", help="Also write a self-contained HTML report here (equity and rolling accuracy per policy, "
                         "every retrain and promotion marked, buy-and-hold).")] = None,
) -> None:
    """Walk real history bar by bar with the loop's own code under each policy; net returns next to buy-and-hold."""
    from tideline.app.replay import ReplayConfig, run_replay
    from tideline.data import load_bars, validate_bars

    s = state(ctx).settings()
    training = s.training.model_copy(update={"families": parse_families(families) or ["lightgbm"],
                                             **({"seed": seed} if seed is not None else {})})
    s = with_tuning(s.model_copy(update={"training": training}), tune)
    cfg = ReplayConfig(policies=tuple(p.strip() for p in policies.split(",") if p.strip()), history=history,
                       check_every=check_every, gate=gate)
    cfg.check()
    bars = validate_bars(load_bars(data, endpoint_url=s.endpoint_url()), mode="strict").clean
    say = (lambda _m: None) if as_json else (lambda m: err.print(f"[dim]{m}[/dim]", highlight=False))
    res = run_replay(bars, s, cfg, Path(s.home) / "replay", progress=say)
    doc = res.to_dict()
    if report is not None:
        from tideline.app.replay_report import write_replay_report

        say(f"report: {write_replay_report(json.loads(json.dumps(doc, default=str)), report)}")
    if as_json:
        print_json(doc)
        return
    _render(res)


def _render(res: object) -> None:
    from rich.table import Table

    from tideline.app.replay import ReplayResult

    assert isinstance(res, ReplayResult)
    d = res.data
    out.print(f"{', '.join(d['symbols'][:5])}{' ...' if len(d['symbols']) > 5 else ''}: {d['bars']:,} bars "
              f"{d['start'][:10]} .. {d['end'][:10]}; replayed from {d['replay_start'][:10]} "
              f"({d['replayed_rows']:,} rows), families {', '.join(d['families'])}, cost {d['cost_bps']} bps, "
              f"gate {'on' if res.gate else 'off'}", highlight=False)
    t = Table(title="replay: net of costs")
    for col in ("policy", "return", "Sharpe", "max DD", "turnover", "accuracy", "retrains", "promotions",
                "refused", "flat bars", "seconds"):
        t.add_column(col, justify="left" if col == "policy" else "right", no_wrap=True)
    b = res.buy_and_hold
    t.add_row("buy-and-hold", f"{b['total_return']:+.1%}", f"{b['sharpe']:.2f}", f"{b['max_drawdown']:.1%}",
              "-", "-", "-", "-", "-", "-", "-")
    for name, p in res.policies.items():
        m = p.metrics
        acc = m.get("directional_accuracy")
        t.add_row(name, f"{m['total_return']:+.1%}", f"{m['sharpe']:.2f}", f"{m['max_drawdown']:.1%}",
                  f"{m['turnover']:.3f}", "-" if acc is None or acc != acc else f"{acc:.3f}", str(p.retrains),
                  str(p.promotions), str(p.gate_refusals), f"{p.flat_bars:,}", f"{p.seconds:.0f}")
    out.print(t)
    for name, p in res.policies.items():
        if p.retrains_not_run:
            counts = ", ".join(f"{n} {k}" for k, n in p.retrains_not_run.items())
            out.print(f"{name}: {counts} retrain(s) never reached the gate; the first: {p.first_not_run}",
                      highlight=False)
        for c in p.changes[:3]:
            out.print(f"{name}: change in live hits at {c['at'][:10]} ({c['detector']}): accuracy "
                      f"{c['accuracy_before']} before, {c['accuracy_after']} after", highlight=False)
