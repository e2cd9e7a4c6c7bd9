"""``tideline demo --short``: the whole story with real processes (pipeline runs, predictors, router,
controller) on a smaller market; plus the pure pieces of the demo's bookkeeping."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tideline.app.demo import DemoConfig, learning_quality
from tideline.errors import ConfigError


def test_learning_quality_by_hand() -> None:
    t = pd.date_range("2024-01-01", periods=8, freq="h")
    rows = [{"time": str(x), "n": 2, "hits": h, "static_hits": s}
            for x, h, s in zip(t, [2, 2, 0, 0, 1, 2, 2, 2], [2, 2, 0, 0, 0, 0, 0, 0], strict=True)]
    q = learning_quality(rows, t[2], window=2)
    assert q["pre_shift_accuracy"] == 1.0
    assert q["post_shift_live_accuracy"] == pytest.approx(7 / 12, abs=1e-4)
    assert q["post_shift_static_accuracy"] == 0.0
    # post-shift hits 0,0,1,2,2,2 of 2: rolling 2-bar accuracy -, 0, .25, .75, 1, 1 -> recovered at bar 5
    assert q["recovery_bars"] == 5
    assert [w["live"] for w in q["windows"]] == [0.0, 0.75, 1.0]
    assert learning_quality([], t[0], window=2) == {}


def test_config_is_checked() -> None:
    DemoConfig().validate()
    DemoConfig.short().validate()
    with pytest.raises(ConfigError):
        DemoConfig(shift_at=100).validate()
    with pytest.raises(ConfigError, match="torch"):
        DemoConfig(families=("torch",)).validate()
    with pytest.raises(ConfigError, match="too few bars"):
        DemoConfig(bars=1300).validate()
    with pytest.raises(ConfigError, match=r"request_bars must be between the features' warm-up \(61\)"):
        DemoConfig(request_bars=60).validate()


@pytest.mark.slow
def test_short_demo_tells_the_whole_story(tmp_path: Path) -> None:
    env = {**os.environ, "TIDELINE_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    report = tmp_path / "out" / "demo.html"
    res = subprocess.run([sys.executable, "-m", "tideline", "demo", "--short", "--seed", "7", "--report", str(report)],
                         env=env, capture_output=True, text=True, timeout=900)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    for line in ("performance_decay", "deferred", "Shadow", "Canary 10%", "Watching", "Promoted", "RolledBack",
                 "report:"):
        assert line in out, (line, out[-3000:])
    rec = json.loads(report.with_suffix(".json").read_text())
    assert all(c["ok"] for c in rec["checks"]), rec["checks"]
    # the retrained version went through the canary steps; the broken one never left shadow
    retrained = next(r for r in rec["rollouts"] if r["label"] == "retrained" and r["phase"] == "Promoted")
    canary = [s["weight"] for s in retrained["steps"] if s["phase"] == "Canary"]
    # every step walked, or fewer when the sequential test found the retrained model clearly better (never none)
    assert canary and canary == [10, 25, 50][:len(canary)], canary
    broken = next(r for r in rec["rollouts"] if r["label"] == "broken")
    assert broken["phase"] == "RolledBack" and "directional accuracy" in broken["message"]
    assert all(s["weight"] == 0 for s in broken["steps"])
    # the loop raised what a person should hear about (recorded: the demo configures no notification URL)
    titles = {(a["kind"], a["severity"], a["title"]) for a in rec["alerts"]}
    assert ("rolled_back", "high", f"Rollout of {broken['candidate']} rolled back") in titles, titles
    assert ("promoted", "low", f"{retrained['candidate']} promoted to production") in titles, titles
    # the loop kept every served prediction with a realized outcome as an experience (no skew: the predictors
    # computed exactly the features training does), of the active and the candidate slots
    xp = rec["experience"]
    assert xp["rows"] > 1000 and xp["quarantined"] == {} and {"active", "canary"} <= set(xp["roles"]), xp
    assert len(xp["versions"]) >= 3 and sum(xp["regimes"].values()) == xp["rows"]
    assert "experience buffer:" in out and "experience stats" in out
    # the retrain after the shift offered production recalibrated on the new regime's bars (built in the
    # pipeline's evaluate step, stored by its register step) beside the fresh families
    assert "recalibrated" in rec["retrains"][1]["versions"], rec["retrains"][1]
    aliases = rec["registry"]["aliases"]
    assert aliases["production"] == retrained["candidate"] and aliases["previous"] == retrained["baseline"]
    # nothing lost: every answer in the log, every request a 200
    t = rec["traffic"]
    assert t["rows_logged"] == t["rows_answered"] > 0 and set(t["statuses"]) == {"200"}
    # the clients sent bars; the loop recomputed sampled predictions' features from its stored bars: no skew
    skew = next(c for c in rec["checks"] if "training/serving skew" in c["name"])
    assert skew["ok"] and skew["detail"].startswith("0 of ") and not skew["detail"].startswith("0 of 0 "), skew
    # honest learning figures: after the shift the retrained system beats the static model, and the bars
    # before the retrain were answered by v1 in both (identical accuracy in the first window)
    learn = rec["learning"]
    assert learn["post_shift_live_accuracy"] > learn["post_shift_static_accuracy"] + 0.05
    assert learn["windows"][0]["live"] == learn["windows"][0]["static"]
    assert learn["recovery_bars"] is not None
    # the retrain learned only from the bars after the detected change, which lies after the shift
    shift = pd.Timestamp(rec["market"]["shift_times"][0])
    started = [e for e in rec["events"] if e["kind"] == "retrain" and e["text"].startswith("pipeline retrains")]
    assert len(started) == 2 and "the latest 450 bars" in started[0]["text"]  # v1: the first tick
    assert "since live errors changed at" in started[1]["text"]
    changed = pd.Timestamp(started[1]["text"].split("changed at ")[1])
    # every decision was the loop's: one record per tick, in the registry store
    assert rec["loop_ticks"] >= 20 and retrained["steps"][-1]["phase"] == "Promoted"
    assert any(s["phase"] == "Watching" for s in retrained["steps"]) and "e-value" in retrained["message"]
    assert shift <= changed <= shift + pd.Timedelta(hours=80)
    html = report.read_text()
    assert html.count("<iframe") == 1 and "Live accuracy and equity" in html and "story complete" in html


@pytest.mark.slow
def test_guard_reverts_a_promotion_that_decays_while_watched(tmp_path: Path) -> None:
    """The same market with the signal flipping back a few bars into v2's watch: the guard (previous in shadow,
    the same requests) reverts to v1, and the loop cools down instead of retraining at once."""
    env = {**os.environ, "TIDELINE_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    report = tmp_path / "out" / "demo.html"
    res = subprocess.run([sys.executable, "-m", "tideline", "demo", "--short", "--seed", "7", "--revert-at", "1035",
                          "--report", str(report)], env=env, capture_output=True, text=True, timeout=900)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    rec = json.loads(report.with_suffix(".json").read_text())
    assert all(c["ok"] for c in rec["checks"]), rec["checks"]
    (reverted,) = [r for r in rec["rollouts"] if r["phase"] == "Reverted"]
    assert [s["phase"] for s in reverted["steps"]][-2:] == ["Watching", "Reverted"]
    assert "reverted to v1: guard:" in reverted["message"] and reverted["baseline"] == "v1"
    assert f"Rollout of {reverted['candidate']} reverted" in {a["title"] for a in rec["alerts"]}
    aliases = rec["registry"]["aliases"]
    assert aliases["production"] == "v1" and aliases["previous"] == reverted["candidate"]
    history = rec["registry"]["history"]
    assert [e["version"] for e in history if e["action"] == "promote"] == ["v1", reverted["candidate"], "v1"]
    assert any(e["kind"] == "info" and "cooling down" in e["text"] for e in rec["events"])
    t = rec["traffic"]
    assert t["rows_logged"] == t["rows_answered"] > 0 and set(t["statuses"]) == {"200"}
    # the clients sent bars; the loop recomputed sampled predictions' features from its stored bars: no skew
    skew = next(c for c in rec["checks"] if "training/serving skew" in c["name"])
    assert skew["ok"] and skew["detail"].startswith("0 of ") and not skew["detail"].startswith("0 of 0 "), skew
