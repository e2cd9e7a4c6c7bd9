"""The ``tideline`` command line. Thin: parses options, calls the library, renders results.

Errors from the library (``TidelineError``) become one line on stderr and a non-zero exit code;
a traceback is shown only with ``TIDELINE_DEBUG=1``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from tideline import __version__
from tideline.cli_options import (
    BarsOpt,
    DataOpt,
    FamiliesOpt,
    QuarantineOpt,
    SeedOpt,
    SymbolsOpt,
    SyntheticOpt,
    one_source,
    parse_families,
)
from tideline.config import Settings, load_settings
from tideline.errors import DataError, IntegrityError, TidelineError

app = typer.Typer(
    name="tideline", help="Keep trading models good as markets change.", no_args_is_help=True,
    pretty_exceptions_enable=False, add_completion=False,
)
models_app = typer.Typer(help="Inspect and move model versions in the registry.", no_args_is_help=True)
data_app = typer.Typer(help="Market data: validate files, generate synthetic markets.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")

# Wide enough for the result tables when output goes to a file or a pipe (rich uses 80 there).
_WIDTH = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "150"))
out = Console(width=_WIDTH)
err = Console(stderr=True)


# ---- shared options ---------------------------------------------------------------------------------
class State:
    def __init__(self) -> None:
        self.config: Path | None = None
        self.registry: str | None = None

    def settings(self, **overrides: Any) -> Settings:
        s = load_settings(self.config, **overrides)
        if self.registry:
            s = s.model_copy(update={"registry": self.registry})
        logging.basicConfig(level=s.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                            stream=sys.stderr)
        return s


def _state(ctx: typer.Context) -> State:
    return ctx.ensure_object(State)


def _version(value: bool) -> None:
    if value:
        out.print(f"tideline {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    registry: Annotated[Optional[str], typer.Option(
        "--registry", envvar="TIDELINE_REGISTRY",
        help="Registry URI: file:///path or s3://bucket/prefix (endpoint from AWS_ENDPOINT_URL).")] = None,
    config: Annotated[Optional[Path], typer.Option(
        "--config", envvar="TIDELINE_CONFIG", help="Settings file (.toml, .yaml or .json).")] = None,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    st = _state(ctx)
    st.registry, st.config = registry, config


def _open_registry(s: Settings, *, must_exist: bool = False):  # noqa: ANN202 - Registry, imported lazily
    """The registry of the settings. ``must_exist``: a ``file://`` registry directory that does not exist is
    an error (a command that only reads or moves versions must not create an empty registry at a typo)."""
    from urllib.parse import urlparse

    from tideline.errors import StorageUnavailable
    from tideline.registry import open_registry

    from tideline.errors import ConfigError

    uri = s.registry_uri()
    parsed = urlparse(uri)
    local = Path(parsed.path) if parsed.scheme == "file" else None if "://" in uri else Path(uri)
    if local is not None and local.expanduser().is_file():
        raise ConfigError(f"registry path {local} is a file, not a directory", hint="check --registry")
    if must_exist:
        if local is not None and not local.expanduser().exists():
            raise StorageUnavailable(f"no registry at {local}: the directory does not exist",
                                     hint="check --registry / TIDELINE_REGISTRY; `tideline cycle` creates one")
    return open_registry(uri, endpoint_url=s.endpoint_url())


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


# ---- progress -----------------------------------------------------------------------------------------
def _reporter(enabled: bool):  # noqa: ANN202
    from tideline.cycle import Reporter

    class RichReporter(Reporter):
        def __init__(self) -> None:
            self.progress = Progress(
                SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=err, transient=False, disable=not enabled,
            )

        @contextlib.contextmanager
        def stage(self, name: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
            task = self.progress.add_task(name, total=total if total is not None else 1)
            try:
                yield lambda n=1: self.progress.advance(task, n)
            finally:
                self.progress.update(task, completed=total if total is not None else 1)

    return RichReporter()


# ---- cycle --------------------------------------------------------------------------------------------
def _fmt(v: Any, nd: int = 3) -> str:
    return f"{v:.{nd}f}" if isinstance(v, float) else "-" if v is None else str(v)


@app.command()
def cycle(
    ctx: typer.Context,
    data: DataOpt = None,
    synthetic: SyntheticOpt = False,
    symbols: SymbolsOpt = 10,
    bars: BarsOpt = 3000,
    seed: SeedOpt = 7,
    families: FamiliesOpt = None,
    horizon: Annotated[Optional[int], typer.Option(min=1, help="Label horizon in bars.")] = None,
    cost_bps: Annotated[Optional[float], typer.Option(min=0, help="Cost per unit turnover, bps.")] = None,
    quarantine: QuarantineOpt = False,
    promote: Annotated[bool, typer.Option("--promote/--no-promote", help="Promote if the policy passes.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Run one retraining cycle: validate, train every family, evaluate, register, promote if allowed."""
    source, syn = one_source(data, synthetic, symbols, bars, seed)
    s = _state(ctx).settings()
    upd: dict[str, Any] = {"training": s.training.model_copy(update={"seed": seed})}
    fams = parse_families(families)
    if fams:
        upd["training"] = upd["training"].model_copy(update={"families": fams})
    if horizon is not None:
        upd["features"] = s.features.model_copy(update={"horizon": horizon})
    if cost_bps is not None:
        upd["evaluation"] = s.evaluation.model_copy(update={"cost_bps": cost_bps})
    s = s.model_copy(update=upd)

    from tideline.cycle import CycleRunner

    reg = _open_registry(s)
    runner = CycleRunner(s, reg, _reporter(enabled=not as_json and err.is_terminal))
    if not as_json:
        err.print(f"[dim]registry {s.registry_uri()}[/dim]")
    res = runner.run(source, synthetic=syn, quarantine=quarantine, promote=promote)
    if as_json:
        _print_json(res.to_dict())
        return
    _render_cycle(res)


def _render_cycle(res: Any) -> None:
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
    for col in ("model", "version", "WF Sharpe", "Sharpe", "Sortino", "dir.acc", "IC", "maxDD", "PF",
                "trades", "p vs prod", "decision"):
        t.add_column(col, no_wrap=True)
    for c in res.candidates:
        m = c.holdout
        wf = c.walk_forward.get("sharpe_mean")
        decision = ("[bold green]PROMOTED[/]" if c.promoted else
                    "[green]approved[/]" if c.decision.approved else "[red]rejected[/]")
        t.add_row(c.family, c.version or "-", _fmt(wf, 2) if wf is not None else "-", _fmt(m.sharpe, 2),
                  _fmt(m.sortino, 2), _fmt(m.directional_accuracy), _fmt(m.ic), _fmt(m.max_drawdown),
                  _fmt(m.profit_factor, 2), str(m.n_trades),
                  _fmt(c.p_value) if c.p_value is not None else "-", decision)
    if res.production_metrics is not None:
        m = res.production_metrics
        t.add_row("production", res.production_version, "-", _fmt(m.sharpe, 2), _fmt(m.sortino, 2),
                  _fmt(m.directional_accuracy), _fmt(m.ic), _fmt(m.max_drawdown), _fmt(m.profit_factor, 2),
                  str(m.n_trades), "-", "current")
    for name, m in res.baselines.items():
        t.add_row(f"[dim]{name}[/dim]", "baseline", "-", _fmt(m.sharpe, 2), _fmt(m.sortino, 2),
                  _fmt(m.directional_accuracy), _fmt(m.ic), _fmt(m.max_drawdown), _fmt(m.profit_factor, 2),
                  str(m.n_trades), "-", "")
    out.print(t)
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


# ---- models -------------------------------------------------------------------------------------------
def _aliases_of(version: str, aliases: dict[str, str]) -> list[str]:
    return sorted(a for a, v in aliases.items() if v == version)


def _version_row(mv: Any, status: str, aliases: dict[str, str]) -> dict[str, Any]:
    m = mv.metrics or {}
    return {
        "version": mv.version, "family": mv.family, "status": status, "aliases": _aliases_of(mv.version, aliases),
        "created_at": mv.created_at, "sharpe": m.get("sharpe"),
        "directional_accuracy": m.get("directional_accuracy"),
        "approved": (mv.decision or {}).get("approved"), "parent": mv.parent_version,
    }


def _refused(checks: list[Any], what: str) -> None:
    """IntegrityError (exit 8) naming the refused versions, after the listing was printed."""
    bad = [c for c in checks if c.problem is not None]
    if bad:
        shown = "; ".join(c.problem for c in bad[:3]) + (f"; and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise IntegrityError(f"{len(bad)} of {len(checks)} version(s) {what}: {shown}",
                             hint="nothing loads, serves or promotes them; `tideline models delete VERSION` "
                                  "removes one")


@models_app.command("list")
def models_list(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List every version with its status, aliases and hold-out metrics. A version that would be refused
    (tampered, unsigned under a required signature, unreadable manifest) is listed as REFUSED, and the
    command then exits 8."""
    reg = _open_registry(_state(ctx).settings(), must_exist=True)
    aliases, statuses = reg.aliases(), reg.statuses()
    checks = reg.check_versions()
    rows = []
    for c in checks:
        status = str(getattr(statuses.get(c.version), "value", statuses.get(c.version)))
        if c.manifest is None:
            row = {"version": c.version, "family": None, "status": status,
                   "aliases": _aliases_of(c.version, aliases), "created_at": None, "sharpe": None,
                   "directional_accuracy": None, "approved": None, "parent": None}
        else:
            row = _version_row(c.manifest, status, aliases)
        rows.append({**row, "refused": c.problem})
    if as_json:
        _print_json(rows)
    elif not rows:
        out.print("no model versions yet: run `tideline cycle --synthetic` or `tideline cycle --data FILE`")
    else:
        t = Table(title="model versions")
        for col in ("version", "family", "status", "aliases", "created", "Sharpe", "dir.acc", "approved",
                    "parent"):
            t.add_column(col)
        for r in rows:
            status = r["status"] if r["refused"] is None else Text("REFUSED", "bold red")
            t.add_row(r["version"], str(r["family"] or "?"), status, ",".join(r["aliases"]),
                      str(r["created_at"] or "?")[:19], _fmt(r["sharpe"], 2), _fmt(r["directional_accuracy"]),
                      str(r["approved"]), str(r["parent"] or "-"))
        out.print(t)
    _refused(checks, "would be refused")


@models_app.command("verify")
def models_verify(ctx: typer.Context,
                  versions: Annotated[list[str] | None, typer.Argument(
                      help="Versions or aliases (default: every version).", show_default=False)] = None,
                  as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Check versions as a load would, artifacts included: the manifest's shape and signature (when a
    signing key is set) and the presence and sha256 of every artifact, downloaded and hashed. Exits 8 if any
    fails; 0 when all pass."""
    reg = _open_registry(_state(ctx).settings(), must_exist=True)
    checks = reg.check_versions(list(versions) if versions else None, artifacts=True)
    aliases = reg.aliases()
    rows = [{"version": c.version, "aliases": _aliases_of(c.version, aliases),
             "ok": c.problem is None, "problem": c.problem, "signature": c.signature,
             "artifacts": len(c.manifest.artifacts) if c.manifest is not None else None} for c in checks]
    if as_json:
        _print_json(rows)
    elif not rows:
        out.print("no model versions yet: nothing to verify")
    else:
        t = Table(title="verify: manifest, signature, artifact sha256")
        for col in ("version", "aliases", "signature", "artifacts", "result"):
            t.add_column(col)
        for r in rows:
            result = Text("ok", "green") if r["ok"] else Text(f"REFUSED: {r['problem']}", "red")
            t.add_row(r["version"], ",".join(r["aliases"]), _fmt(r["signature"]), _fmt(r["artifacts"]), result)
        out.print(t)
        if all(r["ok"] for r in rows):
            out.print(f"{len(rows)} of {len(rows)} version(s) verified")
    unrecorded = reg.unrecorded_versions()
    if unrecorded:
        err.print(f"note: {', '.join(unrecorded)} {'was' if len(unrecorded) == 1 else 'were'} never recorded in the "
                  "registry state (the writer died after its manifest): listed as CANDIDATE with no register "
                  "event; `tideline models cleanup` records them", highlight=False, soft_wrap=True)
    if not reg.signing.enabled:
        err.print("note: no signing key is set (TIDELINE_SIGNING_KEY_FILE): signatures were not checked, "
                  "only manifests and artifact sha256", highlight=False, soft_wrap=True)
    _refused(checks, "failed verification")


@models_app.command("show")
def models_show(ctx: typer.Context, version: Annotated[str, typer.Argument(help="Version or alias.")],
                as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show one version: metadata, metrics, decision and artifacts."""
    reg = _open_registry(_state(ctx).settings(), must_exist=True)
    mv = reg.get(version)
    d = mv.model_dump(mode="json")
    d["status"] = str(getattr(reg.status(mv.version), "value", reg.status(mv.version)))
    d["aliases"] = _aliases_of(mv.version, reg.aliases())
    if as_json:
        _print_json(d)
        return
    out.print(f"[bold]{mv.version}[/bold] {mv.family} — {d['status']} {' '.join(d['aliases'])}")
    for k in ("created_at", "parent_version", "code_version", "data_hash", "feature_config_hash"):
        out.print(f"  {k}: {d.get(k)}")
    out.print(f"  training_window: {d['training_window']}")
    out.print(f"  features: {len(mv.features)}")
    t = Table(title="hold-out metrics (net of costs)")
    t.add_column("metric")
    t.add_column("value")
    for k, v in (mv.metrics or {}).items():
        t.add_row(k, _fmt(v, 4))
    out.print(t)
    if mv.decision:
        verdict = "approved" if mv.decision.get("approved") else "rejected"
        out.print(f"  policy: {verdict}")
        for c in mv.decision.get("checks", []):
            out.print(f"    {'✔' if c['passed'] else '✘'} {c['detail']}")
    for name, a in mv.artifacts.items():
        out.print(f"  artifact {name}: sha256 {a.sha256[:16]}… {a.size:,} bytes")


@models_app.command("history")
def models_history(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every promotion, rollback and alias move, oldest first."""
    reg = _open_registry(_state(ctx).settings(), must_exist=True)
    events = [e.model_dump(mode="json") for e in reg.history()]
    if as_json:
        _print_json(events)
        return
    if not events:
        out.print("no history yet")
        return
    t = Table(title="registry history")
    for col in ("at", "action", "version", "from", "alias", "actor", "reason"):
        t.add_column(col, overflow="fold")
    for e in events:
        t.add_row(str(e.get("at"))[:19], str(e.get("action")), str(e.get("version") or "-"),
                  str(e.get("from_version") or "-"), str(e.get("alias") or "-"), str(e.get("actor") or "-"),
                  str(e.get("reason") or ""))
    out.print(t)


@models_app.command("promote")
def models_promote(ctx: typer.Context, version: Annotated[str, typer.Argument(help="Version to promote.")],
                   reason: Annotated[str, typer.Option(help="Why (kept in history).")] = "manual promotion") -> None:
    """Make VERSION production (the old production becomes `previous`)."""
    reg = _open_registry(_state(ctx).settings())
    ev = reg.promote(reg.resolve(version), reason=reason, actor="cli")
    out.print(f"production -> {ev.version} (previous: {ev.from_version or '-'})")


@models_app.command("rollback")
def models_rollback(ctx: typer.Context,
                    reason: Annotated[str, typer.Option(help="Why (kept in history).")] = "manual rollback") -> None:
    """Put the previous production version back."""
    reg = _open_registry(_state(ctx).settings())
    ev = reg.rollback(reason=reason, actor="cli")
    out.print(f"rolled back: production -> {ev.version} (was {ev.from_version})")


@models_app.command("delete")
def models_delete(ctx: typer.Context, version: Annotated[str, typer.Argument()]) -> None:
    """Delete a version (never production or any aliased version)."""
    reg = _open_registry(_state(ctx).settings())
    reg.delete(version)
    out.print(f"deleted {version}")


@models_app.command("cleanup")
def models_cleanup(ctx: typer.Context,
                   keep: Annotated[int, typer.Option(min=1, help="Versions to keep (aliased ones always kept).")] = 20
                   ) -> None:
    """Retention: delete old versions beyond --keep that no alias points to."""
    reg = _open_registry(_state(ctx).settings(), must_exist=True)
    unrecorded = set(reg.unrecorded_versions())
    gone = reg.cleanup(keep_last=keep)
    out.print(f"deleted {len(gone)} version(s){': ' + ', '.join(gone) if gone else ''}")
    recorded = sorted(unrecorded - set(reg.unrecorded_versions()), key=lambda v: int(v[1:]))
    if recorded:
        out.print(f"recorded {', '.join(recorded)} as CANDIDATE: the writer died before recording "
                  f"{'it' if len(recorded) == 1 else 'them'}")


# ---- data ---------------------------------------------------------------------------------------------
@data_app.command("validate")
def data_validate(
    ctx: typer.Context, path: Annotated[str, typer.Argument(help="CSV/Parquet file, directory or s3:// prefix.")],
    report: Annotated[Optional[Path], typer.Option(help="Write the quarantine report (CSV + JSON) here.")] = None,
    quarantine: QuarantineOpt = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Would a cycle accept this data? The cycle's own checks, with its reasons: defective rows, history per
    symbol, data quality per symbol, rows left after the feature warm-up. Exit 0: a cycle (with the same
    --quarantine) would learn from it; 3: it would refuse it."""
    from tideline.cycle import check_bars, make_dataset
    from tideline.data import load_bars

    s = _state(ctx).settings()
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
        _print_json({**(rep.to_dict() if rep is not None else {}), "accepted": refusal is None,
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
    shift: Annotated[Optional[list[int]], typer.Option(help="Bar index of a regime shift (repeatable).")] = None,
) -> None:
    """Write a synthetic multi-symbol market with hidden, regime-dependent signal."""
    from tideline.data import synthetic_market, write_bars

    df = synthetic_market(n_symbols=symbols, n_bars=bars, seed=seed, shifts=shift or None)
    write_bars(df, out_path)
    out.print(f"wrote {len(df):,} bars ({symbols} symbols) to {out_path}")


# ---- sub-commands that live in their own modules ----------------------------------------------------
from tideline.cli_demo import demo  # noqa: E402  (they import this module lazily)
from tideline.cli_drift import drift_app  # noqa: E402
from tideline.cli_feedback import feedback  # noqa: E402
from tideline.cli_loop import loop_app  # noqa: E402
from tideline.cli_pipeline import pipeline_app  # noqa: E402
from tideline.cli_rollout import rollout_app, serve  # noqa: E402
from tideline.cli_trigger import trigger_app  # noqa: E402

app.add_typer(pipeline_app, name="pipeline")
app.add_typer(drift_app, name="drift")
app.command("feedback")(feedback)
app.add_typer(rollout_app, name="rollout")
app.command("serve")(serve)
app.add_typer(trigger_app, name="trigger")
app.add_typer(loop_app, name="loop")
app.command("demo")(demo)


# ---- entry point --------------------------------------------------------------------------------------
def _classes(name: str) -> tuple[type[BaseException], ...]:
    """The exception class ``name`` from click and from the click copy typer may ship (typer._click)."""
    import importlib

    found: list[type[BaseException]] = []
    for mod in ("click.exceptions", "typer._click.exceptions", "typer.exceptions"):
        try:
            cls = getattr(importlib.import_module(mod), name, None)
        except ImportError:
            continue
        if isinstance(cls, type) and issubclass(cls, BaseException) and cls not in found:
            found.append(cls)
    return tuple(found)


_USAGE, _CLICK_ERR, _EXIT, _ABORT = (_classes(n) for n in ("UsageError", "ClickException", "Exit", "Abort"))


def main(argv: list[str] | None = None) -> int:
    """Console-script entry: turns every failure into a one-line message and an exit code."""
    debug = os.environ.get("TIDELINE_DEBUG") == "1"
    try:
        rv = app(args=argv, prog_name="tideline", standalone_mode=False)
        return int(rv or 0)
    except _USAGE as e:
        e.show(file=sys.stderr)  # type: ignore[attr-defined]
        return 2
    except _CLICK_ERR as e:
        e.show(file=sys.stderr)  # type: ignore[attr-defined]
        return int(getattr(e, "exit_code", 1) or 1)
    except _EXIT as e:
        return int(getattr(e, "exit_code", 0) or 0)
    except _ABORT:
        err.print("aborted")
        return 130
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except TidelineError as e:
        if debug:
            traceback.print_exc()
        err.print(Text.assemble(("error: ", "bold red"), str(e)), highlight=False, soft_wrap=True)
        return e.exit_code
    except Exception as e:  # an unexpected failure: one line, traceback only on request
        if debug:
            traceback.print_exc()
        err.print(Text.assemble(("internal error: ", "bold red"), f"{type(e).__name__}: {e} "
                                "(set TIDELINE_DEBUG=1 for the traceback)"), highlight=False, soft_wrap=True)
        return 70


if __name__ == "__main__":
    sys.exit(main())
