"""``tideline experience collect | stats | list | export``: the experience buffer (``tideline.monitoring.experience``):
served predictions with realized outcomes, as state, action and net reward."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from tideline.cli.context import err, open_registry, out, print_json, state
from tideline.errors import ConfigError

experience_app = typer.Typer(help="The experience buffer: every served prediction whose outcome is known, as the "
                                  "state the model saw, the position it took and the net reward it earned.")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


@experience_app.command("collect")
def experience_collect(
    ctx: typer.Context,
    data: Annotated[str | None, typer.Option(
        "--data", help="Bars covering the logged predictions and their next bar: CSV/Parquet file, a directory of "
                       "them, or s3://bucket/prefix (default: the bars the loop stored in the registry).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Add the logged predictions whose outcomes are now known to the buffer (the loop does this every tick)."""
    from tideline.data import load_bars, validate_bars
    from tideline.loop.ingest import stored_bars
    from tideline.monitoring.experience import collect

    s = state(ctx).settings()
    reg = open_registry(s, must_exist=True)
    if data:
        bars = validate_bars(load_bars(data, endpoint_url=s.endpoint_url()), mode="strict").clean
    else:
        bars = stored_bars(reg.store)
        if len(bars) == 0:
            raise ConfigError("no bars are stored in the registry", hint="pass --data with the bars the "
                                                                         "predictions were made on")
    res = collect(reg, bars, s.experience)
    if as_json:
        print_json(res.to_dict())
        return
    out.print(res.summary(), highlight=False, soft_wrap=True)
    for e in res.skew_examples:
        err.print(Text(f"  skew: {e['version']} {e['symbol']} {e['bar_time']}: logged {e['logged']}, recomputed "
                       f"{e['recomputed']}"), soft_wrap=True)


@experience_app.command("stats")
def experience_stats(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """How many experiences, of which versions and roles, their mean net reward and hit rate, the high-value,
    failed and mistaken ones per volatility regime, and what is quarantined and why."""
    from rich.table import Table

    from tideline.monitoring.experience import TAGS, stats

    s = state(ctx).settings()
    reg = open_registry(s, must_exist=True)
    st = stats(reg, s.experience.annotate_quantile)
    if as_json:
        print_json(st.to_dict())
        return
    if not st.rows:
        out.print("the experience buffer is empty" + (
            f"; quarantined: {st.quarantined}" if st.quarantined else ""), highlight=False)
        return
    out.print(f"{st.rows:,} experiences of {st.symbols} symbol(s), bars {st.first_bar} .. {st.last_bar}; mean net "
              f"reward {st.reward_bps:+.2f} bps, hit rate {st.hit_rate if st.hit_rate is not None else '-'}",
              highlight=False, soft_wrap=True)
    out.print("versions: " + ", ".join(f"{v} {n:,}" for v, n in st.versions.items()) + "; roles: "
              + ", ".join(f"{r} {n:,}" for r, n in st.roles.items()), highlight=False, soft_wrap=True)
    table = Table(title=f"per volatility regime (tags: top/bottom {s.experience.annotate_quantile:.0%})")
    for col in ("regime", "experiences", *TAGS):
        table.add_column(col, justify="left" if col == "regime" else "right")
    for regime, n in st.regimes.items():
        tags = st.regime_tags.get(regime, {})
        table.add_row(regime, f"{n:,}", *(f"{tags.get(t, 0):,}" for t in TAGS))
    table.add_row("all", f"{st.rows:,}", *(f"{st.tags.get(t, 0):,}" for t in TAGS))
    out.print(table)
    if st.quarantined:
        out.print("quarantined (never trained on): " + ", ".join(f"{k} {n:,}" for k, n in st.quarantined.items()),
                  highlight=False)
    if st.last_pass:
        out.print(f"last pass {st.last_pass.get('at')}: added {st.last_pass.get('added', 0)}, pending "
                  f"{st.last_pass.get('pending', 0)}", highlight=False)


@experience_app.command("list")
def experience_list(
    ctx: typer.Context,
    tag: Annotated[str | None, typer.Option(
        "--tag", help="Only experiences tagged high_value, failed or mistake.")] = None,
    version: Annotated[str | None, typer.Option("--version", help="Only this version's experiences.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many (the latest bars).")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Experiences, latest bars first: version, role, symbol, bar, action, next return, net reward, regime, tags."""
    from tideline.monitoring.experience import TAGS, annotate, read_experiences

    if tag is not None and tag not in TAGS:
        raise ConfigError(f"unknown tag {tag!r}; choose from {', '.join(TAGS)}")
    s = state(ctx).settings()
    reg = open_registry(s, must_exist=True)
    df = annotate(read_experiences(reg), s.experience.annotate_quantile)
    if version:
        df = df.loc[df["version"] == version]
    if tag:
        df = df.loc[df[tag]]
    df = df.sort_values("bar_time", ascending=False, kind="stable").head(limit)
    cols = ["version", "role", "symbol", "bar_time", "prediction", "action", "next_return", "reward", "regime",
            *TAGS]
    if as_json:
        print_json([{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in r.items()}
                    for r in df[cols].to_dict("records")])
        return
    if df.empty:
        out.print("no experiences" + (f" tagged {tag}" if tag else ""), highlight=False)
        return
    for r in df.itertuples(index=False):
        tags = ",".join(t for t in TAGS if getattr(r, t))
        out.print(f"{r.version:<5} {r.role:<7} {r.symbol:<10} {r.bar_time:%Y-%m-%d %H:%M}  action {r.action:+.2f}  "
                  f"next {r.next_return * 1e4:+8.2f} bps  reward {r.reward * 1e4:+8.2f} bps  {r.regime:<6} {tags}",
                  highlight=False)


@experience_app.command("export")
def experience_export(
    ctx: typer.Context,
    out_path: Annotated[Path, typer.Argument(metavar="FILE", help="Where to write: .parquet or .csv.")],
    next_state: Annotated[bool, typer.Option(
        "--next-state/--no-next-state", help="Add next.<feature> columns (the next bar's state) and done.")] = True,
) -> None:
    """Write the whole buffer (annotated; with the next state) to a Parquet or CSV file for other tools."""
    from tideline.monitoring.experience import annotate, read_experiences, with_next_state

    if out_path.suffix not in (".parquet", ".csv"):
        raise ConfigError(f"{out_path} must end in .parquet or .csv")
    s = state(ctx).settings()
    reg = open_registry(s, must_exist=True)
    df = annotate(read_experiences(reg), s.experience.annotate_quantile)
    if next_state:
        df = with_next_state(df)
    try:
        if out_path.suffix == ".parquet":
            df.to_parquet(out_path, index=False)
        else:
            df.to_csv(out_path, index=False)
    except OSError as e:
        raise ConfigError(f"cannot write {out_path}: {e.strerror or e}") from None
    out.print(f"wrote {len(df):,} experiences ({len(df.columns)} columns) to {out_path}", highlight=False)
