"""Tuning inside the purged walk-forward folds (issue 22): the search itself, what a tuned family reports, and
how its trials enter the deflated Sharpe, the manifest and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from conftest import FAST_PARAMS
from tideline.cli import app
from tideline.config import load_settings
from tideline.data import synthetic_market, validate_bars
from tideline.errors import ModelError
from tideline.models import Dim, search_space
from tideline.registry import open_registry
from tideline.training import tuning
from tideline.training.cycle import (
    ProductionScore,
    baselines,
    earlier_trials,
    earlier_tuning_trials,
    judge_all,
    make_dataset,
    plan_windows,
    train_family,
    walk_forward,
)

SPACE = {"a": Dim.real(0.0, 1.0), "n": Dim.integer(1, 8, log=True), "c": Dim.choice("x", "y")}


def _fake_run(fail_when=lambda p: False, n_folds=4):
    """A stand-in for the walk-forward folds: each fold's Sharpe is the parameter ``a`` (plus the fold index's
    small offset), its returns a short series whose mean follows ``a``."""
    calls = []

    def run(params, report):
        calls.append(dict(params))
        if fail_when(params):
            raise ValueError("this parameter set cannot be fitted")
        for k in range(n_folds):
            idx = pd.date_range("2020-01-01", periods=5, freq="D") + pd.Timedelta(days=5 * k)
            ret = pd.Series(np.linspace(-0.01, 0.01, 5) + params["a"] / 100, index=idx)
            report(k, {"sharpe": params["a"] + 0.01 * k, "ic": params["a"] / 10}, ret)
        return {"params": params}

    return run, calls


def test_tune_keeps_every_trial_and_picks_the_best_mean_fold_objective():
    run, calls = _fake_run()
    rec, out = tuning.tune("fake", SPACE, run, trials=12, seed=3, base_params={"fixed": 1})
    assert len(rec.trials) == 12 and rec.budget == 12 and rec.objective == "sharpe"
    complete = [t for t in rec.trials if t.state == "complete"]
    best = max(complete, key=lambda t: t.value)
    assert rec.best_trial == best.number and rec.best_value == pytest.approx(best.value)
    assert rec.best_params == {"fixed": 1, **best.params}  # the chosen values over the configured ones
    assert out == {"params": rec.best_params}  # the chosen trial's own output: its folds are not run again
    assert all(c["fixed"] == 1 for c in calls)
    assert all(set(t.params) == set(SPACE) and t.seconds >= 0 for t in rec.trials)
    assert {t.state for t in rec.trials} <= {"complete", "pruned"}
    for t in rec.trials:  # every trial's Sharpe per period is measured on the fold returns it produced
        assert (t.folds == 4 if t.state == "complete" else 2 <= t.folds < 4) and t.sharpe_per_period is not None
    # a trial below the median of earlier ones at the same fold is stopped early (the a-values differ widely)
    assert any(t.state == "pruned" and t.folds < 4 for t in rec.trials)
    # the deflated Sharpe counts every trial but the chosen one
    assert len(tuning.counted_sharpes(rec.to_dict())) == 11
    # the same seed draws the same trials
    again, _ = tuning.tune("fake", SPACE, _fake_run()[0], trials=12, seed=3, base_params={"fixed": 1})
    assert [t.params for t in again.trials] == [t.params for t in rec.trials]
    assert tuning.Tuning.from_dict(json.loads(json.dumps(rec.to_dict()))) == rec  # stored and read back whole
    assert "12 trials" in rec.summary() and f"#{rec.best_trial}" in tuning.describe(rec.to_dict())


def test_tune_records_a_failed_trial_and_goes_on_but_refuses_when_none_completes():
    run, _ = _fake_run(fail_when=lambda p: p["c"] == "x")
    rec, _ = tuning.tune("fake", SPACE, run, trials=8, seed=1)
    failed = [t for t in rec.trials if t.state == "failed"]
    assert failed and all("cannot be fitted" in t.error and t.folds == 0 for t in failed)
    assert all(t.params["c"] == "y" for t in rec.trials if t.state == "complete")
    assert tuning.counted_sharpes(rec.to_dict()) == [t.sharpe_per_period for t in rec.trials
                                                     if t.state != "failed" and t.number != rec.best_trial]

    with pytest.raises(ModelError, match="none of its 3 trials completed .*cannot be fitted"):
        tuning.tune("fake", SPACE, _fake_run(fail_when=lambda p: True)[0], trials=3)
    with pytest.raises(ModelError, match="unknown tuning objective"):
        tuning.tune("fake", SPACE, run, trials=3, objective="profit")
    with pytest.raises(ModelError, match="no search space"):
        tuning.tune("fake", {}, run, trials=3)


def test_tune_maximises_ic_when_asked():
    rec, _ = tuning.tune("fake", SPACE, _fake_run()[0], trials=6, objective="ic", seed=2)
    best = next(t for t in rec.trials if t.number == rec.best_trial)
    assert rec.best_value == pytest.approx(best.params["a"] / 10)


def test_a_stored_record_that_cannot_be_read_counts_nothing_and_says_so(monkeypatch):
    said: list[str] = []  # the module's logger (the CLI may configure tideline's loggers not to propagate)
    monkeypatch.setattr(tuning.log, "warning", lambda msg, *a: said.append(msg % a))
    assert tuning.counted_sharpes(None) == [] and tuning.counted_sharpes({}) == []
    assert tuning.counted_sharpes({"family": "x", "trials": "many"}) == []
    assert len(said) == 1 and "not counted" in said[0]
    assert "not readable" in tuning.describe({"family": "x"})


@pytest.mark.parametrize("family", ["xgboost", "lightgbm", "sklearn", "torch"])
def test_every_family_has_a_search_space_its_model_accepts(family):
    from tideline.models import make_model

    space = search_space(family)
    assert space
    for name, dim in space.items():
        value = dim.choices[0] if dim.kind == "choice" else dim.low
        make_model(family, seed=0, params={name: value})  # a known parameter (unknown ones are refused)


# ---- a real family, tuned -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def market():
    s = load_settings(training={"params": FAST_PARAMS, "tune_trials": 4},
                      evaluation={"n_splits": 3, "bootstrap_samples": 200})
    bars = validate_bars(synthetic_market(4, 1200, seed=5, freq="1D", start="2015-01-01",
                                          signal_strength=0.15)).clean
    ds = make_dataset(bars, s.features)
    return s, ds, plan_windows(ds, s)


def test_a_tuned_family_reports_its_chosen_trial_and_is_fitted_with_its_parameters(market):
    s, ds, plan = market
    model, fr = train_family("lightgbm", ds, plan, s)
    rec = tuning.Tuning.from_dict(fr.tuning)
    assert len(rec.trials) == 4 and rec.family == "lightgbm"
    chosen = next(t for t in rec.trials if t.number == rec.best_trial)
    assert {k: model.params[k] for k in chosen.params} == chosen.params  # the final fit uses the chosen values
    assert model.params["num_boost_round"] == FAST_PARAMS["lightgbm"]["num_boost_round"]  # configured ones kept
    # the walk-forward figures are the chosen trial's: running its parameters again gives the same folds
    wf = walk_forward("lightgbm", ds, plan, s, rec.best_params)
    assert [f["sharpe"] for f in wf.folds] == [f["sharpe"] for f in fr.folds]
    assert fr.walk_forward["sharpe_mean"] == pytest.approx(rec.best_value)
    # the hold-out is never seen by the search: the trials' fold rows all lie before it
    assert all(pd.Timestamp(f["test_end"]) < ds.meta["timestamp"].iloc[plan.hold].min() for f in fr.folds)
    assert train_family("lightgbm", ds, plan, s.model_copy(update={
        "training": s.training.model_copy(update={"tune_trials": 0})}))[1].tuning is None


def test_tuning_trials_raise_the_bar_of_the_deflated_sharpe(market):
    s, ds, plan = market
    _, fr = train_family("xgboost", ds, plan, s)
    base = baselines(ds, plan, s)
    tuned = judge_all([fr], ProductionScore(), base, ds, plan, s)[0].evidence
    fr.tuning = None
    plain = judge_all([fr], ProductionScore(), base, ds, plan, s)[0].evidence
    assert tuned.n_trials == 1 + len(tuning.counted_sharpes(
        train_family("xgboost", ds, plan, s)[1].tuning)) == 4 and tuned.tuning_trials == 3
    assert plain.n_trials == 1 and plain.tuning_trials == 0
    assert tuned.deflated_sharpe <= plain.deflated_sharpe  # more candidates tried: a higher expected maximum


@pytest.mark.slow
def test_cycle_with_tune_stores_the_trials_and_later_cycles_count_them(tmp_path):
    home = tmp_path / "home"
    cli = CliRunner()
    args = ["cycle", "--synthetic", "--symbols", "3", "--bars", "900", "--families", "lightgbm,sklearn",
            "--tune", "3", "--no-promote", "--json"]
    env = {"TIDELINE_HOME": str(home), "TIDELINE_TRAINING__PARAMS": json.dumps(FAST_PARAMS),
           "TIDELINE_EVALUATION__N_SPLITS": "2"}
    r = cli.invoke(app, args, env=env)
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    by_family = {c["family"]: c for c in res["candidates"]}
    assert by_family["ensemble"]["tuning"] is None  # the ensemble averages tuned members; it is not tuned
    reg = open_registry((home / "registry").as_uri())
    for fam in ("lightgbm", "sklearn"):
        c = by_family[fam]
        assert len(c["tuning"]["trials"]) == 3
        assert c["evidence"]["n_trials"] == 3 + 2 * 2 and c["evidence"]["tuning_trials"] == 4
        mv = reg.get(c["version"])
        assert mv.evaluation["tuning"] == c["tuning"]  # in the version's manifest
        bounds = mv.evaluation["regime_thresholds"]  # what its live figures per regime are split by
        assert bounds["feature"] == "rvol_20" and 0 < bounds["low"] < bounds["high"]
        assert all(mv.params[k] == v for k, v in c["tuning"]["best_params"].items())
    # a later cycle counts the earlier candidates and their tuning trials (production never changed)
    assert len(earlier_trials(reg)) == 3 and len(earlier_tuning_trials(reg)) == 4
    shown = cli.invoke(app, ["models", "show", by_family["lightgbm"]["version"]], env=env)
    assert shown.exit_code == 0 and "tuning: 3 trials" in shown.stdout and "chosen #" in shown.stdout
    text = cli.invoke(app, [*args[:-1]], env=env)  # the table form names the trials too
    assert text.exit_code == 0 and "tuned lightgbm: 3 trials" in text.stdout
    assert "of them tuning trials" in text.stdout


def test_tune_option_is_checked():
    r = CliRunner().invoke(app, ["cycle", "--synthetic", "--tune", "-1"])
    assert r.exit_code == 2 and "--tune" in r.output
    assert math.isfinite(load_settings(training={"tune_trials": 20}).training.tune_trials)
    with pytest.raises(Exception, match="tune_trials"):
        load_settings(training={"tune_trials": -3})



@given(main=st.lists(st.floats(-0.3, 0.3), min_size=1, max_size=8),
       more=st.lists(st.floats(-0.3, 0.3), max_size=40))
@settings(max_examples=200, deadline=None)
def test_counting_more_trials_never_lowers_the_bar(main, more):
    from tideline.evaluation import deflated_sharpe

    r = np.random.default_rng(0).normal(0.001, 0.01, 500)
    alone, counted = deflated_sharpe(r, main), deflated_sharpe(r, main, more)
    assert counted.n_trials == len(main) + len(more)
    assert counted.benchmark >= alone.benchmark - 1e-12 and counted.value <= alone.value + 1e-12
    # many near-identical tuning trials would shrink the trials' variance: the candidates' variance is kept
    clustered = deflated_sharpe(r, [0.0, 0.1, -0.1], [0.05] * 60)
    assert clustered.benchmark > deflated_sharpe(r, [0.0, 0.1, -0.1]).benchmark
