"""The experience buffer (issue 28): served predictions with realized outcomes become experiences — state checked
against the logged hash, action, net reward — stored append-only, de-duplicated, annotated, and refused or
quarantined when corrupt or foreign."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from test_serving_bars import _register, ask, instances
from tideline.config import ExperienceConfig, FeatureConfig
from tideline.data import synthetic_market, validate_bars
from tideline.evaluation import position_returns
from tideline.monitoring import experience as xp
from tideline.monitoring.predictions import feature_hashes, read_predictions
from tideline.registry import open_registry
from tideline.serving.predictor import TidelinePredictor
from tideline.serving.predlog import PredictionLog

WINDOW = 100
FIRST, LAST = 400, 440  # the bars the predictor is asked about: one request of bars per bar
NOW = None  # the log's own times are the wall clock's: a pass looks at them from now


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """A version served bar after bar on four symbols (one request of the last WINDOW bars each), logged."""
    root = tmp_path_factory.mktemp("experience")
    cfg = FeatureConfig()
    market = validate_bars(synthetic_market(4, 460, seed=2, freq="1D")).clean
    times = pd.DatetimeIndex(sorted(market["timestamp"].unique()))
    reg = open_registry((root / "reg").as_uri())
    v = _register(reg, root, market.loc[market["timestamp"] <= times[349]], cfg)
    log = PredictionLog(reg.store, flush_rows=1_000_000, flush_seconds=3600)
    p = TidelinePredictor("tideline", reg, ref=v, prediction_log=log)
    p.load()
    for k in range(FIRST, LAST):
        recent = market.loc[(market["timestamp"] > times[k - WINDOW]) & (market["timestamp"] <= times[k])]
        ask(p, {"instances": instances(recent)})
    log.flush()
    p.stop()
    return root, reg, v, market, times


def _copy(served, tmp_path: Path):
    """A registry of its own (the tests below write to the buffer)."""
    import shutil

    root, reg, v, market, times = served
    shutil.copytree(root / "reg", tmp_path / "reg")
    return open_registry((tmp_path / "reg").as_uri()), v, market, times


def test_realized_predictions_become_experiences(served, tmp_path: Path) -> None:
    reg, v, market, times = _copy(served, tmp_path)
    res = xp.collect(reg, market, now=NOW)
    n = (LAST - FIRST) * 4
    assert res.read == n and res.realized == n and res.added == n and not res.skew and res.unavailable == 0, res
    df = xp.read_experiences(reg)
    assert len(df) == n and set(df["version"]) == {v} and set(df["role"]) == {"active"}
    # the state is the features the version saw (their hash is the logged one), one column per input
    mv = reg.get(v)
    assert xp.state_columns(df) == list(mv.features)
    assert feature_hashes(df[[f"s.{c}" for c in mv.features]].to_numpy()) == df["feature_hash"].tolist()
    # the action is the position under the stored rule; the reward is what the evaluation charges that position
    assert (df["action"].abs() <= 1).all() and set(np.unique(df["action"])) <= {-1.0, 0.0, 1.0}
    one = df.loc[df["symbol"] == "SYM001"].sort_values("bar_time")
    meta = pd.DataFrame({"timestamp": one["bar_time"].to_numpy(), "symbol": one["symbol"].to_numpy()})
    want = position_returns(one["action"].to_numpy(), one["next_return"].to_numpy(), meta, cost_bps=1.0)
    np.testing.assert_allclose(one["reward"].to_numpy(), want.to_numpy(), rtol=0, atol=1e-15)
    nxt = market.loc[market["symbol"] == "SYM001"].set_index("timestamp")["close"]
    t0 = one["bar_time"].iloc[0]
    assert one["next_return"].iloc[0] == pytest.approx(float(np.log(nxt.shift(-1)[t0] / nxt[t0])), rel=1e-12)
    assert (one["next_bar_time"].iloc[:-1].to_numpy() == one["bar_time"].iloc[1:].to_numpy()).all()
    assert (df["feature_hash"].to_numpy() == read_predictions(reg).set_index(["symbol", "bar_time"]).loc[
        list(zip(df["symbol"], df["bar_time"], strict=True)), "feature_hash"].to_numpy()).all()


def test_a_second_pass_adds_nothing_twice(served, tmp_path: Path) -> None:
    reg, v, market, times = _copy(served, tmp_path)
    first = xp.collect(reg, market, now=NOW)
    again = xp.collect(reg, market, now=NOW)
    assert first.added == 160 and again.added == 0
    assert len(xp.read_experiences(reg)) == 160
    # forgetting where it stopped reads the whole log again: the buffer still de-duplicates
    reg.store.delete(xp.STATE_KEY)
    third = xp.collect(reg, market, now=NOW)
    assert third.added == 0 and third.already_stored == 160
    assert len(xp.read_experiences(reg)) == 160


def test_outcomes_not_yet_known_wait_and_are_added_later(served, tmp_path: Path) -> None:
    reg, v, market, times = _copy(served, tmp_path)
    early = market.loc[market["timestamp"] <= times[420]]
    first = xp.collect(reg, early, now=NOW)
    assert first.added == 20 * 4 and first.pending == 20 * 4  # bars 400..419 realized; 420..439 wait for theirs
    later = xp.collect(reg, market, now=NOW)
    assert later.added == 80 and later.pending == 0
    df = xp.read_experiences(reg)
    assert len(df) == 160
    # the rewards across the two passes are those of one pass: the previous action came from the stored part
    whole = _copy(served, tmp_path / "w")[0]
    xp.collect(whole, market, now=NOW)
    ref = xp.read_experiences(whole)
    np.testing.assert_allclose(df["reward"].to_numpy(), ref["reward"].to_numpy(), rtol=0, atol=1e-15)


def test_a_prediction_waiting_longer_than_pending_days_is_given_up(served, tmp_path: Path) -> None:
    reg, v, market, times = _copy(served, tmp_path)
    later = datetime.now(UTC) + timedelta(days=8)
    xp.collect(reg, market.loc[market["timestamp"] <= times[420]], now=later)
    # the next pass starts after what was read: the 80 still waiting are not looked at again
    res = xp.collect(reg, market, now=later)
    assert res.read <= 4 and len(xp.read_experiences(reg)) == 80 + res.added


def test_skew_is_counted_quarantined_and_never_returned(served, tmp_path: Path) -> None:
    reg, v, market, times = _copy(served, tmp_path)
    restated = market.copy()
    hit = (restated["symbol"] == "SYM002") & (restated["timestamp"] == times[405])
    restated.loc[hit, ["close", "high"]] *= 1.03
    res = xp.collect(reg, restated, now=NOW)
    assert res.skew.get(v, 0) > 0 and res.quarantined["skew"] == res.skew[v]
    assert res.added == 160 - res.skew[v]
    assert f"{res.skewed} with training/serving skew" in res.summary()
    q = xp.read_quarantine(reg)
    assert set(q["reason_kind"]) == {"skew"} and q["reason"].str.contains("training/serving skew").all()
    df = xp.read_experiences(reg)
    bad = set(zip(q["symbol"], pd.to_datetime(q["bar_time"]), strict=True))
    assert not bad & set(zip(df["symbol"], df["bar_time"], strict=True))
    assert xp.stats(reg).quarantined == {"skew": res.skew[v]}


def test_each_pass_is_recorded_and_counted_once_by_the_control_plane(served, tmp_path: Path) -> None:
    from test_control_plane_metrics import _samples
    from tideline.loop.metrics import ControlPlaneCollector

    reg, v, market, times = _copy(served, tmp_path)
    restated = market.copy()
    hit = (restated["symbol"] == "SYM001") & (restated["timestamp"] == times[410])
    restated.loc[hit, ["close", "low"]] *= 0.97
    early = restated.loc[restated["timestamp"] <= times[420]]
    first = xp.collect(reg, early, now=NOW)
    assert first.skew.get(v, 0) > 0 and first.pending == 80
    # a pass that reads the same predictions again (here: its state lost, so it reads the whole log) stores and
    # counts nothing twice
    reg.store.delete(xp.STATE_KEY)
    again = xp.collect(reg, early, now=NOW)
    assert (again.skew, again.quarantined, again.added, again.already_stored) == ({}, {}, 0, first.added)
    last = xp.collect(reg, restated, now=NOW)  # the later bars' windows hold the restated bar too: new skew
    assert last.added + sum(last.skew.values()) == 80
    assert len(reg.store.list(xp.PASSES)) == 2  # the pass that stored nothing left no record
    got = _samples(ControlPlaneCollector(reg))
    assert got[("tideline_experiences_added_total", ())] == first.added + last.added == len(xp.read_experiences(reg))
    skewed = first.skew[v] + last.skew.get(v, 0)
    assert got[("tideline_experience_skew_total", (("version", v),))] == skewed == len(xp.read_quarantine(reg))
    assert got[("tideline_experience_quarantined_total", (("reason", "skew"),))] == skewed
    assert got[("tideline_experiences_pending", ())] == 0
    assert got[("tideline_experience_last_pass_timestamp_seconds", ())] == pd.Timestamp(last.at).timestamp()


def test_predictions_of_a_version_the_registry_does_not_hold_are_quarantined(served, tmp_path: Path) -> None:
    reg, v, market, times = _copy(served, tmp_path)
    log = read_predictions(reg)
    for key in reg.store.list("predictions/"):
        reg.store.delete(key)
    buf = io.BytesIO()
    log.assign(version="v99").to_parquet(buf, index=False)
    reg.store.put("predictions/2029-12-31/active-v99-x.parquet", buf.getvalue())
    res = xp.collect(reg, market, now=NOW)
    assert res.added == 0 and res.quarantined == {"unknown_version": 160}
    assert "v99 is not in the registry" in set(xp.read_quarantine(reg)["reason"])


def test_corrupt_and_foreign_rows_are_moved_to_the_quarantine(served, tmp_path: Path) -> None:
    reg, v, market, times = _copy(served, tmp_path)
    xp.collect(reg, market, now=NOW)
    store = reg.store
    parts = sorted(k for k in store.list(xp.PARTS))
    # a part that is not Parquet, one with a foreign schema, one row without a reward, one of an unknown version
    store.put(f"{xp.PARTS}2021-01-01/junk.parquet", b"not parquet at all")
    buf = io.BytesIO()
    pd.DataFrame({"a": [1, 2]}).to_parquet(buf)
    store.put(f"{xp.PARTS}2021-01-02/foreign.parquet", buf.getvalue())
    raw, _ = store.get(parts[0])
    part = pd.read_parquet(io.BytesIO(raw))
    part.loc[0, "reward"] = np.nan
    part.loc[1, "version"] = "v77"
    buf = io.BytesIO()
    part.to_parquet(buf, index=False)
    store.put(parts[0], buf.getvalue())
    df = xp.read_experiences(reg)
    assert len(df) == 160 - 2 and np.isfinite(df["reward"]).all() and set(df["version"]) == {v}
    q = xp.read_quarantine(reg)
    assert sorted(q["reason_kind"].tolist()) == ["missing_reward", "refused_object", "refused_object",
                                                 "unknown_version"]
    assert any("not readable Parquet" in r for r in q["reason"]) and any("lacks the columns" in r for r in q["reason"])
    # nothing was lost: the refused objects are kept, byte for byte
    kept = [k for k in store.list(xp.QUARANTINE) if k.endswith(".refused")]
    assert b"not parquet at all" in [store.get(k)[0] for k in kept]
    assert len(xp.read_experiences(reg)) == 158  # a second read finds nothing more to move


def test_annotations_stats_and_the_training_set(served, tmp_path: Path) -> None:
    reg, v, market, times = _copy(served, tmp_path)
    xp.collect(reg, market, now=NOW)
    df = xp.annotate(xp.read_experiences(reg), 0.1)
    assert df["high_value"].sum() >= 1 and df["failed"].sum() >= 1
    assert (df.loc[df["high_value"], "reward"] > 0).all() and (df.loc[df["failed"], "reward"] < 0).all()
    assert df.loc[df["high_value"], "reward"].min() > df.loc[~df["high_value"], "reward"].median()
    m = df.loc[df["mistake"]]
    assert (np.sign(m["action"]) == -np.sign(m["next_return"])).all()
    st = xp.stats(reg, 0.1)
    assert st.rows == 160 and st.versions == {v: 160} and st.symbols == 4 and sum(st.regimes.values()) == 160
    assert st.tags["high_value"] == int(df["high_value"].sum()) and st.last_pass["added"] == 160
    mv = reg.get(v)
    got = xp.training_set(reg, list(mv.features), mv.feature_config_hash, times[420],
                          ExperienceConfig(annotate_quantile=0.1))
    assert got is not None
    X, rows = got
    assert list(X.columns) == list(mv.features) and len(X) == 20 * 4 and (rows["bar_time"] < times[420]).all()
    assert set(rows["weight"]) <= {1.0, 3.0}
    assert xp.training_set(reg, list(mv.features), "another-config", times[420]) is None
    nxt = xp.with_next_state(xp.read_experiences(reg))
    assert nxt["done"].sum() == 4  # each symbol's last experience has no next one in the buffer
    f0 = list(mv.features)[0]
    one = nxt.loc[nxt["symbol"] == "SYM000"].sort_values("bar_time")
    assert one[f"next.{f0}"].iloc[:-1].tolist() == one[f"s.{f0}"].iloc[1:].tolist()
    assert xp.new_since(reg, times[430]) == 9 * 4


def test_retention_deletes_old_days(served, tmp_path: Path) -> None:
    reg, v, market, times = _copy(served, tmp_path)
    res = xp.collect(reg, market, ExperienceConfig(retention_days=10), now=NOW)
    df = xp.read_experiences(reg)
    assert res.deleted_days and df["bar_time"].min() >= df["bar_time"].max() - pd.Timedelta(days=10)


def test_the_experience_trigger_counts_what_accrued_after_the_training_window(served, tmp_path: Path) -> None:
    from tideline.config import TriggerConfig
    from tideline.triggers import build_context, evaluate, rule_experience

    reg, v, market, times = _copy(served, tmp_path)
    xp.collect(reg, market, now=NOW)
    # production: the served version's model, trained on the bars up to 409
    mv = reg.get(v)
    v2 = reg.register(Path(reg.fetch(v, tmp_path / "m")), mv.model_dump(
        include={"family", "features", "feature_config", "feature_config_hash", "position"})
        | {"training_window": {"start": str(times[0]), "end": str(times[409]), "n_rows": 1}}).version
    reg.promote(v2, reason="test")
    ctx = build_context(reg, bars=market)
    assert ctx.production.version == v2 and ctx.new_experiences == 30 * 4  # bars 410..439
    fired = rule_experience(ctx, TriggerConfig(min_new_experiences=120))
    assert fired.fired and fired.details["new_experiences"] == 120 and "120 new experiences" in fired.reason
    quiet = rule_experience(ctx, TriggerConfig(min_new_experiences=1000))
    assert not quiet.fired and "< 1,000" in quiet.reason
    report = evaluate(ctx, TriggerConfig(min_new_experiences=120, enabled=["experience"]))
    assert report.fired and report.reasons == [f"experience: {fired.reason}"]
    with pytest.raises(ValueError):  # the minimum
        TriggerConfig(min_new_experiences=10)


def test_skew_found_by_a_tick_raises_one_alert_per_version() -> None:
    from tideline.loop.alerts import _from_tick

    tick = {"id": "t1", "wall": "2026-12-07T00:00:00+00:00", "steps": [
        {"step": "monitor", "outcome": "ok", "version": "v3", "summary": "v3: ...",
         "skew": {"v3": {"checked": 10, "mismatched": 0}, "v2": {"checked": 10, "mismatched": 2}}},
        {"step": "experience", "outcome": "ok", "summary": "3 with training/serving skew", "skew": {"v4": 3}},
    ]}
    raised = list(_from_tick(tick))
    assert [(r.key, r.kind, r.severity) for r in raised] == [("skew:v2", "skew", "medium"),
                                                            ("skew:v4", "skew", "medium")]
    assert "training/serving skew" in raised[1].body


def test_the_cli(served, tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    reg, v, market, times = _copy(served, tmp_path)
    bars = tmp_path / "bars.parquet"
    market.to_parquet(bars)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tideline", "--registry", (tmp_path / "reg").as_uri(),
                               "experience", *args], capture_output=True, text=True, timeout=120)

    empty = run("stats")
    assert empty.returncode == 0 and "the experience buffer is empty" in empty.stdout
    res = run("collect", "--data", str(bars))
    assert res.returncode == 0 and "160 experience(s) added from 160 logged prediction(s)" in res.stdout, res.stderr
    st = run("stats", "--json")
    assert json.loads(st.stdout)["rows"] == 160
    text = run("stats").stdout
    assert "160 experiences of 4 symbol(s)" in text and "high_value" in text
    listed = run("list", "--tag", "failed", "--json")
    rows = json.loads(listed.stdout)
    assert rows and all(r["failed"] and r["reward"] < 0 for r in rows)
    bad = run("list", "--tag", "lucky")
    assert bad.returncode != 0 and "unknown tag 'lucky'" in bad.stderr and "Traceback" not in bad.stderr
    exp = run("export", str(tmp_path / "x.parquet"))
    assert exp.returncode == 0 and "wrote 160 experiences" in exp.stdout
    df = pd.read_parquet(tmp_path / "x.parquet")
    assert {"reward", "action", "done", "high_value"} <= set(df.columns) and any(c.startswith("next.") for c in df)
    no_bars = run("collect")
    assert no_bars.returncode != 0 and "no bars are stored" in no_bars.stderr


def test_a_policy_fine_tunes_on_the_experiences_before_its_hold_out(served, tmp_path: Path) -> None:
    """The cycle's PolicyPrep hands the rl family the buffer's experiences that end before the hold-out (by
    the label horizon): the rows after it are the ones the policy is judged on."""
    from tideline.config import load_settings
    from tideline.training.cycle import PolicyPrep, fit_model, make_dataset, plan_windows

    reg, v, market, times = _copy(served, tmp_path)
    xp.collect(reg, market, now=NOW)
    s = load_settings(registry=(tmp_path / "reg").as_uri())
    s = s.model_copy(update={
        "evaluation": s.evaluation.model_copy(update={"holdout_fraction": 0.06}),
        "training": s.training.model_copy(update={"params": {"rl": {"min_timesteps": 8192, "passes": 1.0,
                                                                     "n_checks": 1, "finetune_passes": 1.0}}})})
    ds = make_dataset(market, s.features)
    plan = plan_windows(ds, s)
    hold_start = ds.meta["timestamp"].iloc[plan.hold].min()
    prep = PolicyPrep(reg, ds, plan, s)
    model = fit_model("rl", ds, plan.dev, s, None, prepare=prep)
    used = [n for n in prep.notes if n.startswith("fine-tuned on")]
    expected = int(sum(1 for t in times[FIRST:LAST] if t < hold_start - pd.Timedelta(days=1))) * 4
    assert used == [f"fine-tuned on {expected} experiences before {hold_start - pd.Timedelta(days=1)}"], prep.notes
    assert 0 < expected < 160 and model.fit_info["experience_rows"] == expected
    assert model.fit_info["preparation"] == prep.notes
    assert [c["phase"] for c in model.fit_info["checks"]][-1] == "experience"
