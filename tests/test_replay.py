"""``tideline replay`` (issue 21): retraining policies over history with the loop's own code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import EXAMPLES, FAST_PARAMS
from tideline.app.replay import (
    InProcessPipeline,
    InstantRollouts,
    ReplayClock,
    ReplayConfig,
    _deliver,
    _policy_settings,
    run_replay,
    tick_points,
)
from tideline.config import load_settings
from tideline.data import synthetic_market, validate_bars
from tideline.errors import ConfigError
from tideline.loop.core import Loop, list_ticks
from tideline.registry import open_registry


def _settings(tmp: Path, **kw):
    return load_settings(registry=(tmp / "unused").as_uri(), home=tmp / "home",
                         training={"families": ["lightgbm"], "params": FAST_PARAMS, "n_threads": 1, "seed": 3},
                         evaluation={"bootstrap_samples": 200}, loop={"min_window_bars": 100, **kw})


@pytest.fixture(scope="module")
def market() -> pd.DataFrame:
    return validate_bars(synthetic_market(2, 520, seed=4, freq="1D", signal_strength=0.6)).clean


def test_tick_points_follow_the_policy() -> None:
    times = pd.DatetimeIndex(pd.date_range("2024-01-01", periods=70, freq="D"))
    assert tick_points("static", times, 10, 5) == [(10, False)]
    assert tick_points("loop", times, 10, 20) == [(10, False), (30, False), (50, False)]
    monthly = tick_points("monthly", times, 10, 5)
    assert monthly == [(10, False), (31, True), (60, True)]  # 1 Feb, 1 Mar
    weekly = tick_points("weekly", times, 10, 5)
    assert all(times[k].dayofweek == 0 for k, forced in weekly if forced) and len(weekly) == 1 + 8


def test_bad_configs_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="unknown policy yearly"):
        ReplayConfig(policies=("yearly",)).validate(1000)
    with pytest.raises(ConfigError, match="--history 999 leaves nothing to replay"):
        ReplayConfig(history=999).validate(1000)
    with pytest.raises(ConfigError, match=r"the default history \(300 bar times.*pass a smaller --history"):
        ReplayConfig().validate(156)  # BTCUSD monthly: 13 years are 156 bars
    assert ReplayConfig().validate(1200) == 400 and ReplayConfig().validate(600) == 300


@pytest.mark.slow
def test_replay_runs_every_policy_net_of_costs(market: pd.DataFrame, tmp_path: Path) -> None:
    s = _settings(tmp_path)
    cfg = ReplayConfig(policies=("static", "monthly", "loop"), history=300, check_every=20, gate=False)
    res = run_replay(market, s, cfg, tmp_path / "replay")
    st, mo, lp = (res.policies[p] for p in ("static", "monthly", "loop"))
    months = tick_points("monthly", pd.DatetimeIndex(sorted(market["timestamp"].unique())), 300, 1)
    assert (st.retrains, st.promotions, st.ticks) == (1, 1, 1)
    assert mo.retrains == len(months) and mo.promotions == len(months)  # gate off: every retrain goes live
    assert lp.ticks == len(range(300, 520, 20)) and lp.retrains >= 1
    for p in (st, mo, lp):
        assert p.flat_bars == 0 and np.isfinite(p.metrics["sharpe"]) and p.metrics["turnover"] > 0
    assert res.buy_and_hold["total_return"] != 0 and res.data["replayed_rows"] == 2 * (520 - 300 - 1)
    # versions were created and promoted at bar time: the registry runs on the replay's clock
    reg = open_registry((tmp_path / "replay" / "monthly" / "registry").as_uri())
    assert reg.get("v1").created_at.startswith(res.data["replay_start"][:10])
    # --no-gate still counts what the gate refused: every served version whose own decision was a refusal
    served = {e["version"] for e in mo.events if e["action"] == "promote"}
    refused = sum(1 for v in served if not (reg.get(v).decision or {}).get("approved"))
    assert mo.gate_refusals == refused > 0
    assert [e["time"][:10] for e in mo.events][:2] == [res.data["replay_start"][:10], str(
        pd.DatetimeIndex(sorted(market["timestamp"].unique()))[months[1][0]])[:10]]
    doc = json.loads(json.dumps(res.to_dict(), default=str))
    for p in (st, mo, lp):  # the report's series: thinned, in time order, accuracy a share or None
        assert 0 < len(p.equity) <= 401 and [t for t, _ in p.equity] == sorted(t for t, _ in p.equity)
        assert all(a is None or 0 <= a <= 1 for _, a in p.accuracy) and any(a is not None for _, a in p.accuracy)
    assert doc["buy_and_hold_equity"][-1][1] == pytest.approx(np.log1p(res.buy_and_hold["total_return"]), abs=1e-6)
    _check_report(doc, tmp_path)


def _check_report(doc: dict, tmp_path: Path) -> None:
    from tideline.app.replay_report import write_replay_report

    page = write_replay_report(doc, tmp_path / "out" / "replay.html").read_text()
    assert "<script src" not in page and "https://" not in page.split("</script>", 1)[1]  # self-contained
    for name in doc["policies"]:
        assert f">{name}</h2>" in page and f"{name}: retrains" in page
    assert "buy-and-hold" in page and "Promotions" in page
    # what comes from the result is escaped, in the tables and in the figure
    evil = "<img src=x onerror=alert(1)>"
    doc = {**doc, "policies": {evil: next(iter(doc["policies"].values()))}}
    page = write_replay_report(doc, tmp_path / "out" / "evil.html").read_text()
    assert evil not in page and "&lt;img src=x onerror=alert(1)&gt;" in page


@pytest.mark.slow
def test_replay_and_the_loop_make_the_same_decisions(market: pd.DataFrame, tmp_path: Path) -> None:
    """The replay's monthly policy against a loop driven by hand on the same bar files and the same clock: each
    tick decides the same (rule, retrain, window, rows), and the versions trained are the same models."""
    s = _settings(tmp_path)
    res = run_replay(market, s, ReplayConfig(policies=("monthly",), history=300, gate=False), tmp_path / "r")
    times = pd.DatetimeIndex(sorted(market["timestamp"].unique()))
    home = tmp_path / "by-hand"
    (home / "inbox").mkdir(parents=True)
    clock = ReplayClock(times[300])
    reg = open_registry((home / "registry").resolve().as_uri(), clock=clock)
    ps = _policy_settings(s, "monthly", home, (home / "registry").resolve().as_uri(), home / "inbox")
    loop = Loop(ps, reg, rollouts=InstantRollouts(reg), pipeline=InProcessPipeline(reg, gate=False), clock=clock,
                workdir=home / "loop")
    last = None
    for k, forced in tick_points("monthly", times, 300, 1):
        _deliver(market, home / "inbox", last, times[k])
        last = clock.t = times[k]
        loop.tick(force="scheduled monthly retrain" if forced else None)
    mine = [{"at": r["at"], **{st["step"]: (st["outcome"], (st.get("window") or {}).get("reason"))
                               for st in r["steps"] if st["step"] in ("decide", "retrain")}}
            for r in reversed(list_ticks(reg, limit=100))]
    theirs_reg = open_registry((tmp_path / "r" / "monthly" / "registry").resolve().as_uri())
    theirs = [{"at": r["at"], **{st["step"]: (st["outcome"], (st.get("window") or {}).get("reason"))
                                 for st in r["steps"] if st["step"] in ("decide", "retrain")}}
              for r in reversed(list_ticks(theirs_reg, limit=100))]
    assert mine == theirs and len(mine) == res.policies["monthly"].ticks
    a = {v.version: v.artifacts["model.txt"].sha256 for v in reg.list_versions() if "model.txt" in v.artifacts}
    b = {v.version: v.artifacts["model.txt"].sha256 for v in theirs_reg.list_versions() if "model.txt" in v.artifacts}
    assert a == b and a, "the same bars and seed train the same models"


@pytest.mark.slow
def test_cli_on_real_goog_bars(tmp_path: Path) -> None:
    env = {"TIDELINE_HOME": str(tmp_path / "home"), "TIDELINE_TRAINING__N_THREADS": "1",
           "TIDELINE_EVALUATION__BOOTSTRAP_SAMPLES": "200", "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-m", "tideline", "replay", "--data", str(EXAMPLES / "GOOG_1d.csv"),
                          "--policies", "static,monthly", "--history", "2000", "--json",
                          "--report", str(tmp_path / "goog.html")],
                         env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(res.stdout)
    assert set(doc["policies"]) == {"static", "monthly"} and doc["data"]["symbols"] == ["GOOG"]
    st = doc["policies"]["static"]
    assert st["retrains"] == 1 and st["ticks"] == 1
    # the gate is on: a refused model is never served, its bars are flat
    assert st["promotions"] + st["gate_refusals"] == 1
    page = (tmp_path / "goog.html").read_text()
    assert "tideline replay: GOOG" in page and ">monthly</h2>" in page and "plotly" in page
    bad = subprocess.run([sys.executable, "-m", "tideline", "replay", "--data", str(EXAMPLES / "GOOG_1d.csv"),
                          "--policies", "yearly"], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "unknown policy yearly" in bad.stderr and "Traceback" not in bad.stderr


def test_retrains_that_never_reach_the_gate_are_counted_with_their_reason(tmp_path: Path) -> None:
    """Too few bars for a cycle (the loop's own refusal): the policy stays flat and says why, not just "0"."""
    bars = validate_bars(synthetic_market(1, 160, seed=1, freq="1D")).clean
    res = run_replay(bars, _settings(tmp_path), ReplayConfig(policies=("static",), history=60), tmp_path / "r")
    st = res.policies["static"]
    assert (st.retrains, st.promotions, st.flat_bars > 0) == (0, 0, True)
    assert st.retrains_not_run == {"failed": 1}
    assert "usable rows" in (st.first_not_run or "")
