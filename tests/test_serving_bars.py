"""Bars in, position out (issue 20): the predictor computes the served version's own features from the bars a
client sends, bit-identical to the training code's, and refuses bars a cycle would refuse."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import EXAMPLES, FAST_PARAMS
from tideline.config import FeatureConfig
from tideline.data import load_bars, synthetic_market, validate_bars
from tideline.features import build_dataset, build_inference_frame, feature_config_hash, feature_warmup
from tideline.models import load_model, make_model
from tideline.positions import positions, stored_rule
from tideline.registry import Registry, open_registry
from tideline.serving.predictor import TidelinePredictor
from tideline.serving.validation import RequestError


def _register(reg: Registry, root: Path, bars: pd.DataFrame, cfg: FeatureConfig) -> str:
    ds = build_dataset(bars, cfg)
    mdl = make_model("lightgbm", seed=1, params=FAST_PARAMS["lightgbm"], n_threads=1).fit(ds.X, ds.y, ds.spec)
    art = root / f"art-{len(reg.list_versions())}"
    mdl.save(art)
    return reg.register(art, {"family": "lightgbm", "features": mdl.columns, "feature_config": cfg.model_dump(),
                              "feature_config_hash": feature_config_hash(cfg)}).version


def instances(bars: pd.DataFrame) -> list[dict]:
    return [{"symbol": r.symbol, "timestamp": pd.Timestamp(r.timestamp).isoformat(), "open": r.open,
             "high": r.high, "low": r.low, "close": r.close, "volume": r.volume}
            for r in bars.itertuples(index=False)]


def ask(p: TidelinePredictor, body: dict) -> dict:
    async def go() -> dict:
        return await p.predict(await p.preprocess(body))

    return asyncio.run(go())


@pytest.fixture(scope="module")
def goog(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("bars")
    bars = validate_bars(load_bars(EXAMPLES / "GOOG_1d.csv")).clean
    reg = open_registry((root / "reg").as_uri())
    v = _register(reg, root, bars.iloc[:-300], FeatureConfig())
    p = TidelinePredictor("tideline", reg, ref=v)
    p.load()
    yield reg, v, p, bars
    p.stop()


def test_real_bars_get_the_offline_prediction_for_the_last_bar(goog) -> None:
    reg, v, p, bars = goog
    recent = bars.iloc[-150:]
    out = ask(p, {"instances": instances(recent)})
    X, meta, _ = build_inference_frame(recent, FeatureConfig())
    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(reg.fetch(v, Path(tmp) / "m"))
    last = X.iloc[[-1]][list(model.columns)]
    want = model.predict_array(last.to_numpy(np.float32))
    assert out["predictions"] == pytest.approx(list(want), rel=1e-12)  # the float32 row the model sees
    assert out["positions"] == list(positions(want, stored_rule(reg.get(v).position)))
    assert out["symbols"] == ["GOOG"] and out["timestamps"] == [str(meta["timestamp"].iloc[-1])[:19].replace(" ", "T")]
    assert out["model_version"] == v


def test_served_features_are_bit_identical_to_training_features() -> None:
    """The parity check: the last-bar features the predictor computes equal, bit for bit, the row the
    training dataset builds for the same bar from the same bars."""
    from tideline.serving.bars import FeatureSource, last_bar_features, parse_bars

    cfg = FeatureConfig()
    bars = validate_bars(synthetic_market(5, 300, seed=4, freq="1D")).clean
    ds = build_dataset(bars, cfg)
    cols = list(ds.spec.tabular)
    src = FeatureSource.of("v1", cfg.model_dump(), feature_config_hash(cfg), cols)
    cut = bars["timestamp"].unique()[250]
    upto = bars[bars["timestamp"] <= cut]
    X, syms, times, _ = last_bar_features(parse_bars(instances(upto)), src)
    rows = ds.meta.reset_index(drop=True)
    for i, (sym, t) in enumerate(zip(syms, times, strict=True)):
        k = rows.index[(rows["symbol"] == sym) & (rows["timestamp"] == t)][0]
        assert np.array_equal(X[i].view(np.uint64), ds.X.iloc[k][cols].to_numpy(np.float64).view(np.uint64)), sym


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b.iloc[-40:], "symbol 'GOOG' has 40 bar(s); v1 needs at least 61 per symbol"),
    (lambda b: pd.concat([b, b.iloc[[-1]]]), "the bars are refused: "),
    (lambda b: b.iloc[::-1], "the bars are refused: "),
    (lambda b: b.assign(high=np.where(np.arange(len(b)) == 5, b["low"] - 1, b["high"])), "the bars are refused: "),
    (lambda b: b.assign(close=np.where(np.arange(len(b)) == 7, -1.0, b["close"])), "the bars are refused: "),
])
def test_bad_bars_are_a_422_naming_the_problem(goog, mutate, message) -> None:
    reg, v, p, bars = goog
    with pytest.raises(RequestError) as e:
        ask(p, {"instances": instances(mutate(bars.iloc[-150:].reset_index(drop=True)))})
    assert e.value.status == 422 and message.replace("v1", v) in e.value.message, e.value.message


def test_mixed_and_partial_instances_are_refused(goog) -> None:
    reg, v, p, bars = goog
    rows = instances(bars.iloc[-100:])
    with pytest.raises(RequestError, match=r"instances\[3\] mixes bar fields with 'ret_1'") as e:
        ask(p, {"instances": [*rows[:3], {**rows[3], "ret_1": 0.1}, *rows[4:]]})
    assert e.value.status == 422
    with pytest.raises(RequestError, match=r"instances\[0\] lacks bar field\(s\) 'volume'"):
        ask(p, {"instances": [{k: x for k, x in rows[0].items() if k != "volume"}, *rows[1:]]})
    with pytest.raises(RequestError, match=r"instances\[2\]: close must be a number, got a string"):
        ask(p, {"instances": [*rows[:2], {**rows[2], "close": "12"}, *rows[3:]]})


def test_unknown_symbols_and_several_symbols_are_fine(tmp_path: Path) -> None:
    cfg = FeatureConfig()
    train = validate_bars(synthetic_market(4, 500, seed=2, freq="1D")).clean
    reg = open_registry((tmp_path / "reg").as_uri())
    v = _register(reg, tmp_path, train, cfg)
    p = TidelinePredictor("tideline", reg, ref=v)
    p.load()
    fresh = validate_bars(synthetic_market(3, 120, seed=8, freq="1D")).clean
    fresh["symbol"] = fresh["symbol"].str.replace("SYM", "NEW")
    out = ask(p, {"instances": instances(fresh)})
    assert out["symbols"] == ["NEW000", "NEW001", "NEW002"] and len(out["predictions"]) == 3
    assert feature_warmup(cfg) == 61
    p.stop()


@pytest.mark.slow
def test_posting_real_bars_over_http(goog, tmp_path: Path) -> None:
    """The contract as a client sees it: POST the last 150 GOOG bars, get the offline prediction of the last
    one, its position and the version; a short history is a 422 with a one-line JSON error."""
    from types import SimpleNamespace

    from reliability.predictor import Server, start_server

    reg, v, p, bars = goog
    srv = start_server(SimpleNamespace(uri=reg.store.uri, root=tmp_path), "--ref", v, "--no-prediction-log",
                       name="bars", cls=Server)
    try:
        r = srv.client.post("/v1/models/tideline:predict", json={"instances": instances(bars.iloc[-150:])})
        assert r.status_code == 200, r.text
        assert r.json()["predictions"] == ask(p, {"instances": instances(bars.iloc[-150:])})["predictions"]
        assert r.headers["x-model-version"] == v
        r = srv.client.post("/v1/models/tideline:predict", json={"instances": instances(bars.iloc[-10:])})
        assert r.status_code == 422 and "has 10 bar(s)" in r.json()["error"], r.text
    finally:
        assert srv.stop() == 0
