"""Training/serving skew (issue 20): the monitoring job recomputes the features of logged predictions from the
stored bars and counts the ones that differ from what the served version saw."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from test_serving_bars import _register, ask, instances
from tideline.config import FeatureConfig
from tideline.data import synthetic_market, validate_bars
from tideline.features import compute_features
from tideline.monitoring.feedback import run_feedback
from tideline.monitoring.predictions import normalize_predictions, read_predictions
from tideline.monitoring.skew import check_skew
from tideline.registry import open_registry
from tideline.serving.predictor import TidelinePredictor
from tideline.serving.predlog import PredictionLog

WINDOW = 100


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """A version served with a prediction log: three requests of bars (the last WINDOW bars of four symbols at
    three times) and one of features a client computed exactly as training does."""
    root = tmp_path_factory.mktemp("skew")
    cfg = FeatureConfig()
    market = validate_bars(synthetic_market(4, 500, seed=2, freq="1D")).clean
    times = pd.DatetimeIndex(sorted(market["timestamp"].unique()))
    reg = open_registry((root / "reg").as_uri())
    v = _register(reg, root, market.loc[market["timestamp"] <= times[349]], cfg)
    log = PredictionLog(reg.store, flush_rows=1_000_000, flush_seconds=3600)
    p = TidelinePredictor("tideline", reg, ref=v, prediction_log=log)
    p.load()
    for k in (400, 440, 480):
        recent = market.loc[(market["timestamp"] > times[k - WINDOW]) & (market["timestamp"] <= times[k])]
        ask(p, {"instances": instances(recent)})
    feats, _ = compute_features(market.loc[market["timestamp"] <= times[450]], cfg)
    at = feats.loc[feats["timestamp"] == times[450]]
    cols = list(p.serving.active.columns)
    rows = [{"symbol": s, "timestamp": times[450].isoformat(), **dict(zip(cols, map(float, x), strict=True))}
            for s, x in zip(at["symbol"], at[cols].to_numpy(np.float64), strict=True)]
    ask(p, {"instances": rows})
    log.flush()
    p.stop()
    yield reg, v, market, times, rows, cfg


def test_served_features_match_the_stored_bars(served) -> None:
    reg, v, market, _, _, _ = served
    log = read_predictions(reg)
    assert log.loc[log["bars"].notna(), "bars"].eq(WINDOW).all() and log["bars"].isna().sum() == 4
    skew = check_skew(reg, log, market)[v]
    assert (skew.checked, skew.mismatched, skew.unavailable) == (16, 0, 0), skew
    assert (skew.bars_checked, skew.features_checked) == (12, 4)
    assert check_skew(reg, log, market, sample=5)[v].checked == 8  # whole requests: the latest two


def test_a_restated_bar_inside_a_request_window_is_a_mismatch(served) -> None:
    reg, v, market, times, _, _ = served
    restated = market.copy()
    hit = (restated["symbol"] == "SYM001") & (restated["timestamp"] == times[470])
    restated.loc[hit, ["close", "high"]] *= 1.02
    skew = check_skew(reg, read_predictions(reg), restated)[v]
    # only the request ending at bar 480 saw bar 470; its four rows (ranks are cross-sectional) and nothing else
    assert 1 <= skew.bars_mismatched <= 4 and skew.features_mismatched == 0, skew
    assert {e["bar_time"] for e in skew.examples} == {times[480].isoformat()}
    assert "SYM001" in {e["symbol"] for e in skew.examples}
    assert skew.summary().startswith(f"{v}: {skew.mismatched} of 16 sampled predictions differ")


def test_client_features_computed_slightly_differently_are_caught(served, tmp_path: Path) -> None:
    reg, v, market, times, rows, cfg = served
    other = open_registry((tmp_path / "reg").as_uri())
    log = PredictionLog(other.store, flush_rows=1_000_000, flush_seconds=3600)
    # the same version in a second registry: a client whose RSI is off in the ninth digit
    other.register(Path(reg.fetch(v, tmp_path / "m")), reg.get(v).model_dump(
        include={"family", "features", "feature_config", "feature_config_hash", "position"}))
    p = TidelinePredictor("tideline", other, ref=v, prediction_log=log)
    p.load()
    rsi = next(c for c in p.serving.active.columns if c.startswith("rsi"))
    ask(p, {"instances": [r | {rsi: r[rsi] * (1 + 1e-9)} for r in rows]})
    log.flush()
    p.stop()
    skew = check_skew(other, read_predictions(other), market)[v]
    assert (skew.features_checked, skew.features_mismatched) == (4, 4), skew
    assert {e["source"] for e in skew.examples} == {"features"}


def test_bars_not_stored_are_unavailable_not_mismatched(served) -> None:
    reg, v, market, times, _, _ = served
    late = market.loc[market["timestamp"] > times[420]]  # the store starts after the first request's window
    skew = check_skew(reg, read_predictions(reg), late)[v]
    assert skew.mismatched == 0 or skew.features_mismatched == skew.mismatched  # features: history starts later
    print(skew)
    assert skew.unavailable >= 4 and skew.bars_mismatched == 0, skew


def test_feedback_stores_the_skew_with_the_live_record(served) -> None:
    reg, v, market, *_ = served
    report = run_feedback(reg, market, write=True, skew_sample=200)
    assert report.skew[v].checked == 16 and report.to_dict()["skew"][v]["mismatched"] == 0
    record = reg.get_attachment(v, "live-metrics.json")
    assert b'"skew"' in record and b'"bars_checked": 12' in record
    assert run_feedback(reg, market, write=False).skew == {}  # off unless asked


def test_a_version_the_registry_does_not_know_is_reported_not_counted(served) -> None:
    reg, v, market, *_ = served
    log = read_predictions(reg).assign(version="v99")
    skew = check_skew(reg, log, market)["v99"]
    assert skew.checked == 0 and "v99" in (skew.error or "") and "not checked" in skew.summary()


def test_an_older_log_without_the_bars_column_reads_as_missing() -> None:
    df = pd.DataFrame({"request_id": ["r"], "time": ["2024-01-01T00:00:00Z"], "symbol": ["X"],
                       "bar_time": ["2024-01-01"], "feature_hash": ["0" * 16], "prediction": [0.1],
                       "version": ["v1"], "role": ["active"]})
    buf = io.BytesIO()
    df.to_parquet(buf)
    out = normalize_predictions(pd.read_parquet(io.BytesIO(buf.getvalue())))
    assert out["bars"].isna().all() and str(out["bars"].dtype) == "Int64"
