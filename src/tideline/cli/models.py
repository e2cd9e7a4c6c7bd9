"""``tideline models list|verify|show|history|promote|rollback|delete|cleanup``: the registry by hand."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from tideline.cli.context import err, fmt, open_registry, out, print_json, state
from tideline.errors import IntegrityError, TidelineError

models_app = typer.Typer(help="Inspect and move model versions in the registry.", no_args_is_help=True)


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
    reg = open_registry(state(ctx).settings(), must_exist=True)
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
        print_json(rows)
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
                      str(r["created_at"] or "?")[:19], fmt(r["sharpe"], 2), fmt(r["directional_accuracy"]),
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
    reg = open_registry(state(ctx).settings(), must_exist=True)
    checks = reg.check_versions(list(versions) if versions else None, artifacts=True)
    aliases = reg.aliases()
    rows = [{"version": c.version, "aliases": _aliases_of(c.version, aliases),
             "ok": c.problem is None, "problem": c.problem, "signature": c.signature,
             "artifacts": len(c.manifest.artifacts) if c.manifest is not None else None} for c in checks]
    if as_json:
        print_json(rows)
    elif not rows:
        out.print("no model versions yet: nothing to verify")
    else:
        t = Table(title="verify: manifest, signature, artifact sha256")
        for col in ("version", "aliases", "signature", "artifacts", "result"):
            t.add_column(col)
        for r in rows:
            result = Text("ok", "green") if r["ok"] else Text(f"REFUSED: {r['problem']}", "red")
            t.add_row(r["version"], ",".join(r["aliases"]), fmt(r["signature"]), fmt(r["artifacts"]), result)
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
    reg = open_registry(state(ctx).settings(), must_exist=True)
    mv = reg.get(version)
    d = mv.model_dump(mode="json")
    d["status"] = str(getattr(reg.status(mv.version), "value", reg.status(mv.version)))
    d["aliases"] = _aliases_of(mv.version, reg.aliases())
    if as_json:
        print_json(d)
        return
    out.print(f"[bold]{mv.version}[/bold] {mv.family} — {d['status']} {' '.join(d['aliases'])}")
    for k in ("created_at", "parent_version", "code_version", "data_hash", "feature_config_hash"):
        out.print(f"  {k}: {d.get(k)}")
    out.print(f"  training_window: {d['training_window']}")
    out.print(f"  features: {len(mv.features)}")
    learning = (mv.evaluation or {}).get("learning") or {}
    if learning:  # a policy: how its final fit started and what it fine-tuned on
        out.print(f"  learning: {learning.get('timesteps') or 0:,} environment steps; "
                  + "; ".join(learning.get("preparation") or ["no registry given: cold start, no experiences"]),
                  highlight=False, soft_wrap=True)
    t = Table(title="hold-out metrics (net of costs)")
    t.add_column("metric")
    t.add_column("value")
    for k, v in (mv.metrics or {}).items():
        t.add_row(k, fmt(v, 4))
    out.print(t)
    regimes = (mv.evaluation or {}).get("regimes") or {}
    if isinstance(regimes, dict) and regimes:
        r = Table(title="hold-out by volatility regime (against the training window's volatility)")
        cols = ("n_obs", "directional_accuracy", "sharpe", "win_rate", "profit_factor", "avg_win", "avg_loss",
                "error_std", "bias")
        r.add_column("regime")
        for c in cols:
            r.add_column(c.replace("directional_", ""), justify="right")
        for name, m in regimes.items():
            if isinstance(m, dict):
                r.add_row(str(name), *[fmt(m.get(c), 0 if c == "n_obs" else 4) for c in cols])
        out.print(r)
    _show_importance(reg, mv.version)
    tuned = (mv.evaluation or {}).get("tuning")
    if isinstance(tuned, dict) and tuned:
        from tideline.training.tuning import describe

        out.print(f"  tuning: {describe(tuned)}", highlight=False)
    if mv.decision:
        verdict = "approved" if mv.decision.get("approved") else "rejected"
        out.print(f"  policy: {verdict}")
        for c in mv.decision.get("checks", []):
            out.print(f"    {'✔' if c['passed'] else '✘'} {c['detail']}")
    for name, a in mv.artifacts.items():
        out.print(f"  artifact {name}: sha256 {a.sha256[:16]}… {a.size:,} bytes")


def _show_importance(reg: Any, version: str, top: int = 10) -> None:
    """The version's top features (its ``importance.json``), when it has one."""
    import json

    from tideline.models.explain import IMPORTANCE_ATTACHMENT, Importance

    try:
        imp = Importance.from_dict(json.loads(reg.get_attachment(version, IMPORTANCE_ATTACHMENT)))
    except (TidelineError, ValueError) as e:
        if "has no attachment" not in str(e):  # none stored (an older version) is not news
            out.print(f"  feature importance unreadable: {e}", highlight=False)
        return
    t = Table(title=f"top features ({imp.measure}, {imp.n_rows:,} hold-out rows)")
    t.add_column("feature")
    t.add_column("importance", justify="right")
    t.add_column("share", justify="right")
    total = sum(imp.values.values()) or 1.0
    for name, v in imp.top(top):
        t.add_row(name, f"{v:.3g}", f"{v / total:.1%}")
    out.print(t)


@models_app.command("history")
def models_history(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every promotion, rollback and alias move, oldest first."""
    reg = open_registry(state(ctx).settings(), must_exist=True)
    events = [e.model_dump(mode="json") for e in reg.history()]
    if as_json:
        print_json(events)
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
    reg = open_registry(state(ctx).settings())
    ev = reg.promote(reg.resolve(version), reason=reason, actor="cli")
    out.print(f"production -> {ev.version} (previous: {ev.from_version or '-'})")


@models_app.command("rollback")
def models_rollback(ctx: typer.Context,
                    reason: Annotated[str, typer.Option(help="Why (kept in history).")] = "manual rollback") -> None:
    """Put the previous production version back."""
    reg = open_registry(state(ctx).settings())
    ev = reg.rollback(reason=reason, actor="cli")
    out.print(f"rolled back: production -> {ev.version} (was {ev.from_version})")


@models_app.command("delete")
def models_delete(ctx: typer.Context, version: Annotated[str, typer.Argument()]) -> None:
    """Delete a version (never production or any aliased version)."""
    reg = open_registry(state(ctx).settings())
    reg.delete(version)
    out.print(f"deleted {version}")


@models_app.command("cleanup")
def models_cleanup(ctx: typer.Context,
                   keep: Annotated[int, typer.Option(min=1, help="Versions to keep (aliased ones always kept).")] = 20
                   ) -> None:
    """Retention: delete old versions beyond --keep that no alias points to."""
    reg = open_registry(state(ctx).settings(), must_exist=True)
    unrecorded = set(reg.unrecorded_versions())
    gone = reg.cleanup(keep_last=keep)
    out.print(f"deleted {len(gone)} version(s){': ' + ', '.join(gone) if gone else ''}")
    recorded = sorted(unrecorded - set(reg.unrecorded_versions()), key=lambda v: int(v[1:]))
    if recorded:
        out.print(f"recorded {', '.join(recorded)} as CANDIDATE: the writer died before recording "
                  f"{'it' if len(recorded) == 1 else 'them'}")

