"""``tideline pipeline ...``: run the retraining pipeline locally (kfp.local), compile it, submit or
schedule it on Kubeflow Pipelines.

Registered by the root CLI with ``app.add_typer(pipeline_app, name="pipeline")``. Settings come from the
root CLI's ``--config`` / ``--registry`` when there is one (``ctx.obj``), else from the settings file and
``TIDELINE_*`` env vars. Errors are ``tideline.errors`` exceptions; the root CLI prints them.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

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
from tideline.config import Settings, load_settings
from tideline.errors import ConfigError

pipeline_app = typer.Typer(
    help="The retraining cycle as a Kubeflow pipeline: run it locally, compile, submit, schedule.",
    no_args_is_help=True,
)


def _settings(ctx: typer.Context, seed: int | None = None, tune: int | None = None) -> Settings:
    st = ctx.obj
    s = st.settings() if st is not None and hasattr(st, "settings") else load_settings()
    if seed is not None:
        s = s.model_copy(update={"training": s.training.model_copy(update={"seed": seed})})
    return with_tuning(s, tune)


def _echo(text: str) -> None:
    sys.stdout.write(text + "\n")


RolloutOpt = Annotated[str, typer.Option(
    "--rollout-mode", help="rollout: set the registry's candidate alias (canary/shadow later); "
                           "direct: promote to production now.")]
ReasonOpt = Annotated[str, typer.Option(help="Why this run (recorded with the rollout request).")]


@pipeline_app.command("run")
def run_cmd(
    ctx: typer.Context,
    local: Annotated[bool, typer.Option("--local", help="Run every task on this machine (kfp.local).")] = False,
    data: DataOpt = None,
    synthetic: SyntheticOpt = False,
    symbols: SymbolsOpt = 10,
    bars: BarsOpt = 3000,
    seed: SeedOpt = 7,
    families: FamiliesOpt = None,
    rollout_mode: RolloutOpt = "rollout",
    quarantine: QuarantineOpt = False,
    tune: TuneOpt = None,
    reason: ReasonOpt = "manual",
    pipeline_root: Annotated[str | None, typer.Option(
        help="Where task artifacts go (default: <home>/pipeline-runs).")] = None,
    runner: Annotated[str, typer.Option(
        help="subprocess: each task a process of this Python; docker: each task in its own container of the "
             "pipeline image ($TIDELINE_IMAGE, built by make images), which needs s3:// registry and data.")
    ] = "subprocess",
    as_json: Annotated[bool, typer.Option("--json", help="Print the run summary as JSON.")] = False,
) -> None:
    """Run the retraining pipeline: every step a KFP task, families trained in parallel."""
    if not local:
        raise ConfigError("pipeline run needs --local (kfp.local on this machine)",
                          hint="to run on a cluster use: tideline pipeline submit --host URL")
    from tideline.training.orchestration import run_local

    source, syn = one_source(data, synthetic, symbols, bars, seed)
    s = _settings(ctx, seed, tune)
    summary = run_local(s, source=source, synthetic=syn, families=parse_families(families),
                        rollout_mode=rollout_mode,
                        pipeline_root=pipeline_root, quarantine=quarantine, reason=reason, runner=runner)
    if as_json:
        _echo(json.dumps(summary, indent=2, default=str))
        return
    _echo(f"pipeline run {summary['run_id']} finished in {summary['seconds']:.1f} s "
          f"({summary['runner']} runner, registry {summary['registry']})")
    for fam, version in summary["versions"].items():
        _echo(f"  {fam:<9} registered {version}: " + "; ".join(summary["reasons"].get(fam, [])))
    if summary["decision"] == "approved":
        best = summary["best"]
        action = (f"candidate alias -> {summary['candidate']}" if summary["candidate"]
                  else f"promoted {summary['promoted']} to production")
        _echo(f"decision: approved {best['version']} ({best['family']}, hold-out Sharpe {best['sharpe']:.2f}); "
              f"{action}")
    else:
        _echo("decision: rejected (no candidate passed the promotion policy); registry aliases unchanged")
    _echo(f"artifacts: {summary['pipeline_root']}\ntask logs: {summary['log']}")


@pipeline_app.command("compile")
def compile_cmd(
    out: Annotated[str | None, typer.Option(
        "--out", help="Output YAML (default: pipelines/retrain.yaml of this checkout).")] = None,
) -> None:
    """Compile the pipeline to KFP IR YAML (component image: $TIDELINE_IMAGE)."""
    from tideline.training.orchestration import compile_pipeline

    _echo(str(compile_pipeline(out)))


@pipeline_app.command("submit")
def submit_cmd(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Kubeflow Pipelines API URL, e.g. http://localhost:8080.")],
    experiment: Annotated[str, typer.Option(help="KFP experiment.")] = "tideline",
    run_name: Annotated[str | None, typer.Option(help="Run name (default: tideline-retrain-<time>).")] = None,
    data: DataOpt = None,
    synthetic: SyntheticOpt = False,
    symbols: SymbolsOpt = 10,
    bars: BarsOpt = 3000,
    seed: SeedOpt = 7,
    families: FamiliesOpt = None,
    rollout_mode: RolloutOpt = "rollout",
    quarantine: QuarantineOpt = False,
    tune: TuneOpt = None,
    reason: ReasonOpt = "manual",
) -> None:
    """Create one run of the pipeline on a Kubeflow Pipelines cluster (needs an s3:// registry)."""
    from tideline.training.orchestration import pipeline_arguments, submit

    source, syn = one_source(data, synthetic, symbols, bars, seed)
    args = pipeline_arguments(_settings(ctx, seed, tune), source=source, synthetic=syn,
                              families=parse_families(families),
                              rollout_mode=rollout_mode, quarantine=quarantine, reason=reason, for_cluster=True)
    _echo(submit(host, arguments=args, experiment=experiment, run_name=run_name))


@pipeline_app.command("schedule")
def schedule_cmd(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Kubeflow Pipelines API URL, e.g. http://localhost:8080.")],
    cron: Annotated[str, typer.Option(help='Six fields, seconds first: "0 0 2 * * *" is 02:00 daily.')]
    = "0 0 2 * * *",
    name: Annotated[str, typer.Option(help="Recurring run name.")] = "tideline-retrain",
    experiment: Annotated[str, typer.Option(help="KFP experiment.")] = "tideline",
    data: DataOpt = None,
    synthetic: SyntheticOpt = False,
    symbols: SymbolsOpt = 10,
    bars: BarsOpt = 3000,
    seed: SeedOpt = 7,
    families: FamiliesOpt = None,
    rollout_mode: RolloutOpt = "rollout",
    quarantine: QuarantineOpt = False,
    tune: TuneOpt = None,
) -> None:
    """Create a recurring run of the pipeline (no catch-up, at most one at a time)."""
    from tideline.training.orchestration import pipeline_arguments, schedule, validate_cron

    cron = validate_cron(cron)  # before anything else: a wrong cron is the most likely mistake
    source, syn = one_source(data, synthetic, symbols, bars, seed)
    args = pipeline_arguments(_settings(ctx, seed, tune), source=source, synthetic=syn,
                              families=parse_families(families),
                              rollout_mode=rollout_mode, quarantine=quarantine, reason=f"schedule {cron}",
                              for_cluster=True)
    _echo(schedule(host, cron=cron, name=name, arguments=args, experiment=experiment))
