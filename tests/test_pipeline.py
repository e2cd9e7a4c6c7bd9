"""The retraining cycle as a KFP v2 pipeline: the same definition runs under kfp.local and compiles for a
cluster. Local runs execute every task as a real subprocess (ParallelFor fan-out, Collected fan-in, If)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import FAST_PARAMS, ROOT
from tideline.config import Settings, load_settings
from tideline.data import synthetic_market
from tideline.errors import AliasConflict, ConfigError, ValidationError
from tideline.registry import open_registry
from tideline.training import steps
from tideline.training.orchestration import (
    PipelinesUnavailable,
    pipeline_arguments,
    run_local,
    schedule,
    start_retrain,
    submit,
)

SYN = {"n_symbols": 3, "n_bars": 900, "seed": 7}
FAMILIES = ["lightgbm", "sklearn"]
PERMISSIVE = {"min_sharpe": -100.0, "min_trades": 0, "max_drawdown": 10.0, "require_significance": False,
              "min_deflated_sharpe": 0.0, "require_baseline": False, "require_folds_agree": False,
              "min_relative_improvement": -100.0, "key_metric_floor": 0.0}
COMPONENTS = ["ingest", "validate", "features", "drift-report", "train", "evaluate-and-select", "register",
              "gate", "request-rollout"]
UNREACHABLE = "http://127.0.0.1:9"


def _settings(tmp: Path, **policy) -> Settings:
    return load_settings(
        registry=(tmp / "reg").as_uri(), home=str(tmp / "home"),
        training={"params": FAST_PARAMS, "families": FAMILIES},
        evaluation={"n_splits": 2, "bootstrap_samples": 200},
        policy=policy,
    )


def _metrics_logged(task_dir: str) -> dict:
    out = json.loads((Path(task_dir) / "executor_output.json").read_text())
    return out["artifacts"]["metrics"]["artifacts"][0]["metadata"]


@pytest.fixture(scope="module")
def approved_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("approved")
    s = _settings(tmp, **PERMISSIVE)
    s = s.model_copy(update={"training": s.training.model_copy(update={"tune_trials": 2})})  # tuned in each train task
    t0 = time.perf_counter()
    summary = run_local(s, synthetic=SYN, families=FAMILIES, reason="test: permissive policy")
    return s, summary, time.perf_counter() - t0


# ---- local runs ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_local_run_executes_every_step_and_requests_rollout_when_approved(approved_run):
    s, summary, seconds = approved_run
    tasks = summary["tasks"]
    names = {t.rsplit("/", 1)[-1] for t in tasks}
    assert names == set(COMPONENTS), tasks  # every step ran, the If branch included
    loop = sorted(t for t in tasks if t.endswith("/train"))
    assert len(loop) == 2 and all(t.startswith("for-loop-") for t in loop)  # one ParallelFor task per family

    reg = open_registry(s.registry_uri())
    versions = reg.list_versions()
    # fan-in reached register with both models; the evaluate step judged their equal-weight ensemble too, and
    # register built it from the two models and stored it like any family
    assert sorted(mv.family for mv in versions) == sorted([*FAMILIES, "ensemble"])
    assert summary["versions"] == {mv.family: mv.version for mv in versions}
    for mv in versions:
        assert mv.decision["approved"] is True and mv.metrics["n_obs"] > 0
        assert mv.evaluation["baselines"] and mv.evaluation["holdout"]["rows"] > 0
        ev = mv.evaluation["evidence"]  # measured across both families' artifacts (fold returns travel too)
        # three candidates and each family's tuning trial that was not chosen (the records travel with the results)
        assert ev["n_trials"] == 3 + 2 and ev["tuning_trials"] == 2
        tuned = mv.evaluation["tuning"]
        assert (tuned is None) if mv.family == "ensemble" else len(tuned["trials"]) == 2
        assert 0.0 <= ev["deflated_sharpe"] <= 1.0 and ev["pbo"] is not None
        assert mv.data_hash and mv.training_window["n_rows"] > 0
        ref = pd.read_parquet(io.BytesIO(reg.get_attachment(mv.version, "reference.parquet")))
        assert len(ref) > 100 and ref["prediction"].notna().all()
        reg.fetch(mv.version, Path(summary["pipeline_root"]) / "fetched" / mv.version)  # sha256 verified

    best = max(versions, key=lambda mv: mv.metrics["sharpe"])
    assert summary["decision"] == "approved" and summary["best"]["version"] == best.version
    assert summary["candidate"] == best.version and summary["promoted"] is None
    assert reg.aliases() == {"candidate": best.version}  # rollout mode: production untouched
    assert any(e.alias == "candidate" and "test: permissive policy" in e.reason for e in reg.history())

    # metrics are logged for the UI; the drift report is a real HTML page
    train_metrics = _metrics_logged(tasks[loop[0]])
    assert "holdout_sharpe" in train_metrics and "wf_sharpe_mean" in train_metrics
    assert train_metrics["tuning_trials"] == 2
    judged = _metrics_logged(tasks["evaluate-and-select"])
    assert judged["approved_candidates"] == 3
    html = next(Path(tasks["drift-report"]).glob("report*"))
    assert html.stat().st_size > 10_000 and "<html" in html.read_text(errors="replace")[:5000].lower()
    assert _metrics_logged(tasks["drift-report"])  # drift figures logged too
    print(f"local pipeline run: {seconds:.1f} s")


@pytest.mark.slow
def test_direct_mode_promotes_against_the_production_it_was_measured_against(approved_run, tmp_path):
    s, summary, _ = approved_run
    uri = s.registry_uri()
    v = summary["candidate"]
    # a stale expectation loses the compare-and-swap; the right one promotes
    with pytest.raises(AliasConflict):
        steps.request_rollout(uri, v, "direct", expected_production="v999")
    out = steps.request_rollout(uri, v, "direct", expected_production=None)
    assert out["action"] == "promoted"
    assert open_registry(uri).aliases()["production"] == v
    with pytest.raises(ConfigError, match="rollout mode"):
        steps.request_rollout(uri, v, "sideways")


@pytest.mark.slow
def test_strict_policy_skips_the_rollout_branch_and_sets_no_alias(tmp_path):
    s = _settings(tmp_path, min_sharpe=100.0)
    summary = run_local(s, synthetic=SYN, families=FAMILIES)
    names = {t.rsplit("/", 1)[-1] for t in summary["tasks"]}
    assert names == set(COMPONENTS) - {"request-rollout"}  # the If branch did not run
    reg = open_registry(s.registry_uri())
    assert len(reg.list_versions()) == 3  # every candidate (the ensemble too) is still registered, with its decision
    assert all(mv.decision["approved"] is False for mv in reg.list_versions())
    assert summary["decision"] == "rejected" and summary["candidate"] is None and summary["rollout"] is None
    assert reg.aliases() == {}
    assert any("Sharpe" in r and "100" in r for r in summary["reasons"]["lightgbm"])


@pytest.mark.slow
def test_bad_data_fails_the_validate_task_and_registers_nothing(tmp_path):
    df = synthetic_market(n_symbols=3, n_bars=400, seed=1)
    df.loc[5, "high"] = df.loc[5, "low"] - 1.0
    bad = tmp_path / "bad.csv"
    df.to_csv(bad, index=False)
    s = _settings(tmp_path, **PERMISSIVE)
    with pytest.raises(ValidationError) as ei:
        run_local(s, source=bad, families=["lightgbm"])
    msg = str(ei.value)
    assert "pipeline task 'validate' failed" in msg and "high_below_low" in msg and "row" in msg
    assert ei.value.exit_code == 3
    run_dirs = list((tmp_path / "home" / "pipeline-runs").glob("*/tideline-retrain-*"))
    assert len(run_dirs) == 1
    assert not list(run_dirs[0].glob("features")) and not list(run_dirs[0].glob("register"))  # stopped there
    report = json.loads(next(run_dirs[0].glob("validate/report/validation.json")).read_text())
    assert report["ok"] is False and report["problems"]
    reg_dir = tmp_path / "reg"
    assert not reg_dir.exists() or open_registry(s.registry_uri()).list_versions() == []


@pytest.mark.slow
def test_the_pipeline_trains_evaluates_and_registers_a_policy(tmp_path):
    """``--families rl``: the train task fits the policy (prepared from the registry it is given), evaluate
    judges it on its positions, register stores it like any family."""
    s = _settings(tmp_path, **PERMISSIVE)
    summary = run_local(s, synthetic=SYN, families=["rl"], reason="test: a policy")
    reg = open_registry(s.registry_uri())
    (mv,) = reg.list_versions()
    assert mv.family == "rl" and mv.decision["approved"] is True and mv.position["rule"] == "sign"
    assert summary["versions"] == {"rl": mv.version} and summary["decision"] == "approved"
    from tideline.models import load_model

    model = load_model(reg.fetch(mv.version, tmp_path / "m"))
    assert model.output == "position" and model.fit_info["timesteps"] >= 16_384
    # the train task had the registry: with no earlier rl version and no experiences, it says so
    (note,) = model.fit_info["preparation"]
    assert note.startswith("no experiences before ")


# ---- compile --------------------------------------------------------------------------------------------
def _compile_fresh(out: Path) -> bytes:
    """Compile in a clean process with the default image (TIDELINE_IMAGE unset), as the repo's YAML is."""
    env = {k: v for k, v in os.environ.items() if k != "TIDELINE_IMAGE"}
    subprocess.run([sys.executable, "-c", "import sys; from tideline.training.orchestration import compile_pipeline; "
                    "compile_pipeline(sys.argv[1])", str(out)], check=True, env=env, cwd=ROOT, timeout=120)
    return out.read_bytes()


def test_compiled_pipeline_has_every_component_the_loop_and_the_gate(tmp_path):
    fresh = _compile_fresh(tmp_path / "retrain.yaml")
    spec = yaml.safe_load(fresh)
    comps = spec["components"]
    for name in COMPONENTS:
        assert f"comp-{name}" in comps, name
    dag = spec["root"]["dag"]["tasks"]
    loops = [t for t in dag.values() if "parameterIterator" in t]
    assert len(loops) == 1 and "families" in json.dumps(loops[0]["parameterIterator"])
    conds = [t for t in dag.values() if t.get("triggerPolicy", {}).get("condition")]
    assert len(conds) == 1 and "approved" in conds[0]["triggerPolicy"]["condition"]
    assert "gate" in conds[0]["triggerPolicy"]["condition"]
    # fan-in: the evaluation and registration take lists of the loop's artifacts
    assert comps["comp-evaluate-and-select"]["inputDefinitions"]["artifacts"]["results"]["isArtifactList"]
    assert comps["comp-register"]["inputDefinitions"]["artifacts"]["models"]["isArtifactList"]
    assert comps["comp-drift-report"]["outputDefinitions"]["artifacts"]["report"]["artifactType"][
        "schemaTitle"] == "system.HTML"
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {"ghcr.io/tideline/tideline:0.1.0"}
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {"registry_uri", "source", "synthetic_json", "families", "settings_json", "quarantine",
            "rollout_mode"} <= set(params)


def test_committed_pipeline_yaml_is_up_to_date(tmp_path):
    committed = ROOT / "pipelines" / "retrain.yaml"
    assert committed.is_file(), "pipelines/retrain.yaml is missing: run `.venv/bin/python pipelines/retrain.py`"
    fresh = _compile_fresh(tmp_path / "retrain.yaml")
    assert committed.read_bytes() == fresh, (
        "pipelines/retrain.yaml is stale (the pipeline or a component changed): regenerate it with "
        "`.venv/bin/python pipelines/retrain.py` (or `tideline pipeline compile`) and commit it")


def test_cli_compile_and_usage_errors(tmp_path):
    import typer
    from typer.testing import CliRunner

    from tideline.cli.pipeline import pipeline_app

    app = typer.Typer()
    app.add_typer(pipeline_app, name="pipeline")
    app.callback()(lambda: None)
    runner = CliRunner()
    out = tmp_path / "p.yaml"
    res = runner.invoke(app, ["pipeline", "compile", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "comp-train" in yaml.safe_load(out.read_text())["components"]
    res = runner.invoke(app, ["pipeline", "run", "--synthetic"])
    assert isinstance(res.exception, ConfigError) and "submit" in str(res.exception)
    res = runner.invoke(app, ["pipeline", "schedule", "--host", UNREACHABLE, "--cron", "0 2 * * *", "--synthetic"])
    assert isinstance(res.exception, ConfigError) and "6" in str(res.exception)


# ---- cluster entry points -------------------------------------------------------------------------------
def test_schedule_rejects_a_five_field_cron_before_any_network():
    with pytest.raises(ConfigError, match="5 fields; KFP needs 6"):
        schedule(UNREACHABLE, cron="0 2 * * *", arguments={})
    with pytest.raises(ConfigError, match="invalid field"):
        schedule(UNREACHABLE, cron="0 0 2 * * $", arguments={})


def test_submit_to_an_unreachable_host_fails_clearly(tmp_path):
    s = load_settings(registry="s3://bucket/reg")
    args = pipeline_arguments(s, source="s3://bucket/bars/", families=["lightgbm"], for_cluster=True)
    with pytest.raises(PipelinesUnavailable) as ei:
        submit(UNREACHABLE, arguments=args)
    assert UNREACHABLE in str(ei.value) and ei.value.exit_code == 9
    with pytest.raises(PipelinesUnavailable):
        schedule(UNREACHABLE, cron="0 0 2 * * *", arguments=args)
    with pytest.raises(PipelinesUnavailable):
        start_retrain(s, mode="kfp", host=UNREACHABLE, reason="drift", source="s3://bucket/bars/")


def test_cluster_runs_refuse_paths_the_pods_cannot_see(tmp_path):
    s = _settings(tmp_path)
    with pytest.raises(ConfigError, match="s3:// registry"):
        start_retrain(s, mode="kfp", host=UNREACHABLE, reason="drift", synthetic=SYN)
    s3 = load_settings(registry="s3://bucket/reg")
    with pytest.raises(ConfigError, match="s3://"):
        pipeline_arguments(s3, source=str(tmp_path / "bars.csv"), for_cluster=True)
    with pytest.raises(ConfigError, match="exactly one"):
        pipeline_arguments(s3, for_cluster=True)
    with pytest.raises(ConfigError, match="mode"):
        start_retrain(s, mode="argo", synthetic=SYN)


class _FakeRun:
    def __init__(self, run_id: str, state: str) -> None:
        self.run_id, self.state, self.display_name = run_id, state, f"run-{run_id}"


class _FakeKfp:
    """Stands in for kfp.Client's two read calls: the logic under test is ours, not KFP's."""

    def __init__(self, runs: list[_FakeRun], experiment_exists: bool = True) -> None:
        self.runs, self.exists = runs, experiment_exists

    def get_experiment(self, experiment_name: str):
        if not self.exists:
            raise ValueError("no experiment")
        return type("Exp", (), {"experiment_id": "e1"})()

    def list_runs(self, experiment_id: str, page_size: int, sort_by: str):
        return type("Resp", (), {"runs": self.runs})()


def test_active_runs_on_kfp_block_a_second_start(monkeypatch):
    from tideline.config import load_settings
    from tideline.training import orchestration

    assert orchestration.active_runs(_FakeKfp([_FakeRun("a", "SUCCEEDED"), _FakeRun("b", "FAILED")]), "x") == []
    assert orchestration.active_runs(_FakeKfp([], experiment_exists=False), "x") == []
    busy = _FakeKfp([_FakeRun("a", "SUCCEEDED"), _FakeRun("b", "RUNNING")])
    assert [r["run_id"] for r in orchestration.active_runs(busy, "x")] == ["b"]

    submitted = []
    monkeypatch.setattr(orchestration, "_client", lambda host: busy)
    monkeypatch.setattr(orchestration, "submit", lambda *a, **k: submitted.append(k) or "new")
    s = load_settings(registry="s3://models/tideline")
    with pytest.raises(orchestration.RunInProgress, match="already in progress"):
        orchestration.start_retrain(s, mode="kfp", host="http://kfp:8888", synthetic={"n_symbols": 3})
    assert submitted == []
    monkeypatch.setattr(orchestration, "_client", lambda host: _FakeKfp([_FakeRun("a", "SUCCEEDED")]))
    out = orchestration.start_retrain(s, mode="kfp", host="http://kfp:8888", synthetic={"n_symbols": 3})
    assert out["run_id"] == "new" and len(submitted) == 1


@pytest.mark.slow
def test_trigger_run_starts_the_real_local_pipeline_once(tmp_path, capsys, monkeypatch):
    """`tideline trigger run` with an empty registry: no_production fires and the real pipeline runs."""
    from tideline.cli import main

    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "t.yaml"
    cfg.write_text(yaml.safe_dump({
        "training": {"params": FAST_PARAMS, "families": ["lightgbm"]},
        "evaluation": {"n_splits": 2, "bootstrap_samples": 200}, "policy": PERMISSIVE,
    }))
    reg = (tmp_path / "reg").as_uri()
    args = ["--registry", reg, "--config", str(cfg), "trigger", "run", "--synthetic", "--symbols", "3",
            "--bars", "900", "--mode", "local", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["started"] is True and "no_production" in out["reason"]
    r = open_registry(reg)
    assert [v.family for v in r.list_versions()] == ["lightgbm"]
    assert r.aliases().get("candidate") == r.list_versions()[0].version
    # the lock was released and the decision recorded: a forced second run may start
    assert main([*args, "--force"]) == 0
    assert json.loads(capsys.readouterr().out)["started"] is True
    assert len(r.list_versions()) == 2


@pytest.mark.slow
def test_a_failing_family_does_not_sink_the_run(tmp_path):
    """sklearn's training fails (an invalid parameter, in its own task): lightgbm is still judged,
    registered and rolled out; the failure is recorded with its one-line reason."""
    s = _settings(tmp_path, **PERMISSIVE)
    s = s.model_copy(update={"training": s.training.model_copy(
        update={"params": {**FAST_PARAMS, "sklearn": {"max_iter": -5}}})})
    summary = run_local(s, synthetic=SYN, families=FAMILIES)
    assert list(summary["failures"]) == ["sklearn"] and "max_iter" in summary["failures"]["sklearn"]
    assert "\n" not in summary["failures"]["sklearn"]
    assert summary["versions"] == {"lightgbm": "v1"} and summary["candidate"] == "v1"
    judged = _metrics_logged(summary["tasks"]["evaluate-and-select"])
    assert judged["failed_families"] == 1 and judged["approved_candidates"] == 1
