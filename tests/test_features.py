"""Features and labels: no look-ahead, warm-up, shapes, and that noise scores like a coin."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tideline.config import FeatureConfig
from tideline.errors import DataError
from tideline.features import (
    FeatureSpec,
    build_dataset,
    build_inference_frame,
    compute_features,
    compute_labels,
    feature_config_hash,
)


def make_bars(n_symbols: int = 3, n_bars: int = 400, seed: int = 0, freq: str = "1h") -> pd.DataFrame:
    """Independent random-walk OHLCV bars, sorted by (symbol, timestamp)."""
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2021-01-04", periods=n_bars, freq=freq)
    frames = []
    for i in range(n_symbols):
        close = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.01, n_bars)))
        open_ = close * np.exp(rng.normal(0, 0.002, n_bars))
        high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.003, n_bars)))
        low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 0.003, n_bars)))
        frames.append(
            pd.DataFrame(
                {
                    "timestamp": ts,
                    "symbol": f"S{i:02d}",
                    "open": open_,
                    "high": high,
                    "low": low,
                    "close": close,
                    "volume": rng.lognormal(10, 0.5, n_bars),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _perturb_after(bars: pd.DataFrame, cutoff: pd.Timestamp, seed: int = 1) -> pd.DataFrame:
    """Copy of ``bars`` with every price and volume after ``cutoff`` changed."""
    rng = np.random.default_rng(seed)
    out = bars.copy()
    late = out["timestamp"] > cutoff
    k = int(late.sum())
    factor = np.exp(rng.normal(0, 0.05, k))
    for col in ("open", "high", "low", "close"):
        out.loc[late, col] = out.loc[late, col].to_numpy() * factor
    out.loc[late, "high"] = out.loc[late, ["open", "high", "low", "close"]].max(axis=1) * 1.01
    out.loc[late, "volume"] = rng.lognormal(12, 1.0, k)
    return out


CFG = FeatureConfig()


def test_feature_count_names_and_dtypes() -> None:
    bars = make_bars(3, 300)
    feats, spec = compute_features(bars, CFG)
    assert len(spec.tabular) >= 40
    assert all(c.startswith("cs_rank_") for c in spec.tabular[-5:])
    expected = {"hour_sin", "dow_cos", "month_sin", "rsi_14", "macd_hist", "bb_pctb_20", "gap"}
    assert expected <= set(spec.tabular)
    assert spec.channels == ["ret", "range", "vz"]
    assert spec.sequence[:2] == ["seq_ret_l15", "seq_ret_l14"] and spec.sequence[15] == "seq_ret_l0"
    assert len(spec.sequence) == 3 * CFG.seq_len
    assert list(feats.columns) == ["timestamp", "symbol", *spec.all_columns]
    assert feats.index.equals(bars.index)
    assert all(feats[c].dtype == np.float32 for c in spec.all_columns)
    assert not any(c in spec.tabular for c in ("open", "high", "low", "close", "volume"))
    assert FeatureSpec.from_dict(spec.to_dict()) == spec


def test_no_lookahead_features_bit_identical() -> None:
    bars = make_bars(3, 400, seed=3)
    bars = bars[~((bars["symbol"] == "S02") & (bars.index < 800 + 40))].reset_index(drop=True)  # late start
    cutoff = bars["timestamp"].sort_values().unique()[250]
    before, spec = compute_features(bars, CFG)
    after, _ = compute_features(_perturb_after(bars, cutoff), CFG)
    past = (bars["timestamp"] <= cutoff).to_numpy()
    a = before.loc[past, spec.all_columns].to_numpy()
    b = after.loc[past, spec.all_columns].to_numpy()
    assert np.array_equal(a.view(np.uint32), b.view(np.uint32))  # bit-identical, NaNs included
    assert before.loc[past, "timestamp"].equals(after.loc[past, "timestamp"])
    # and the perturbation did change the future, including the cross-sectional ranks
    fut = ~past
    for col in ("ret_1", "vz_20", "cs_rank_ret_1", "seq_vz_l0"):
        x, y = before.loc[fut, col].to_numpy(), after.loc[fut, col].to_numpy()
        assert not np.allclose(x, y, equal_nan=True), col


def test_labels_use_the_future() -> None:
    h = 3
    bars = make_bars(2, 200, seed=4)
    cutoff = bars["timestamp"].unique()[120]
    lab0 = compute_labels(bars, h)
    lab1 = compute_labels(_perturb_after(bars, cutoff), h)
    ts = bars["timestamp"]
    safe = (ts <= cutoff - pd.Timedelta(hours=h)).to_numpy()  # t + h <= cutoff
    touched = ((ts > cutoff - pd.Timedelta(hours=h)) & (ts <= cutoff)).to_numpy()
    assert np.array_equal(lab0["fwd_return"].to_numpy()[safe], lab1["fwd_return"].to_numpy()[safe])
    assert not np.allclose(lab0["fwd_return"].to_numpy()[touched], lab1["fwd_return"].to_numpy()[touched])
    # definitions
    s0 = bars[bars["symbol"] == "S00"]
    logc = np.log(s0["close"].to_numpy())
    fwd = lab0.loc[s0.index, "fwd_return"].to_numpy()
    np.testing.assert_allclose(fwd[:-h], logc[h:] - logc[:-h])
    assert np.isnan(fwd[-h:]).all()
    nxt = lab0.loc[s0.index, "next_return"].to_numpy()
    np.testing.assert_allclose(nxt[:-1], np.diff(logc))
    assert np.isnan(nxt[-1])
    d = lab0["direction"].to_numpy()
    f = lab0["fwd_return"].to_numpy()
    assert np.array_equal(np.isnan(d), np.isnan(f))
    assert set(np.unique(d[~np.isnan(d)])) <= {0.0, 1.0}
    assert np.array_equal(d[f > 0], np.ones(int((f > 0).sum())))


def test_warmup_nan_then_finite_and_no_inf() -> None:
    bars = make_bars(3, 300, seed=5)
    bars.loc[bars.index[150:160], "volume"] = 1000.0  # flat volume: zero std must not make inf/NaN
    bars.loc[bars.index[170], ["open", "high", "low", "close"]] = 100.0  # zero-range bar
    feats, spec = compute_features(bars, CFG)
    vals = feats[spec.all_columns].to_numpy()
    assert not np.isinf(vals).any()
    pos = feats.groupby("symbol").cumcount().to_numpy()
    assert np.isnan(feats["ret_1"].to_numpy()[pos == 0]).all()
    assert np.isnan(feats["ret_60"].to_numpy()[pos < 60]).all()
    assert np.isnan(feats["seq_ret_l15"].to_numpy()[pos < 16]).all()
    assert np.isfinite(vals[pos >= 60]).all()


def test_unsorted_input_same_features_per_row() -> None:
    bars = make_bars(3, 150, seed=6)
    feats, spec = compute_features(bars, CFG)
    shuffled = bars.sample(frac=1.0, random_state=0)
    feats2, _ = compute_features(shuffled, CFG)
    assert feats2.index.equals(shuffled.index)
    pd.testing.assert_frame_equal(feats2.loc[bars.index], feats)


def test_options_cross_sectional_and_calendar() -> None:
    two = make_bars(2, 120)
    _, spec2 = compute_features(two, CFG)
    assert not any(c.startswith("cs_rank_") for c in spec2.tabular)
    _, spec_off = compute_features(make_bars(3, 120), FeatureConfig(calendar=False, cross_sectional=False))
    assert not any(c.startswith(("cs_rank_", "hour_", "dow_", "month_")) for c in spec_off.tabular)
    assert feature_config_hash(CFG) == feature_config_hash(FeatureConfig())
    assert feature_config_hash(CFG) != feature_config_hash(FeatureConfig(horizon=2))
    assert len(feature_config_hash(CFG)) == 16


def test_build_dataset_and_inference_frame() -> None:
    bars = make_bars(3, 200, seed=7)
    ds = build_dataset(bars, CFG)
    assert len(ds) == 3 * (200 - 60 - CFG.horizon)
    assert list(ds.X.columns) == ds.spec.all_columns
    assert (ds.X.dtypes == np.float32).all() and np.isfinite(ds.X.to_numpy()).all()
    assert np.isfinite(ds.y).all() and np.isfinite(ds.next_return).all()
    key = list(zip(ds.meta["timestamp"], ds.meta["symbol"], strict=True))
    assert key == sorted(key)
    seq = ds.spec.sequence_array(ds.X)
    assert seq.shape == (len(ds), CFG.seq_len, 3) and seq.dtype == np.float32
    np.testing.assert_array_equal(seq[:, -1, 0], ds.X["ret_1"].to_numpy())  # newest last
    np.testing.assert_array_equal(seq[:, 0, 0], ds.X["seq_ret_l15"].to_numpy())
    sub = ds.subset(np.arange(10, 20))
    assert len(sub) == 10 and sub.meta.index[0] == 0 and sub.y[0] == ds.y[10]

    X, meta, spec = build_inference_frame(bars, CFG, ds.spec)
    assert spec.all_columns == ds.spec.all_columns
    assert meta["timestamp"].max() == bars["timestamp"].max()  # latest bars included
    assert len(X) == 3 * (200 - 60)
    with pytest.raises(DataError):
        build_inference_frame(make_bars(2, 200), CFG, ds.spec)  # no cross-sectional ranks with 2 symbols


def test_shuffled_labels_score_like_a_coin() -> None:
    from sklearn.linear_model import Ridge

    ds = build_dataset(make_bars(4, 3000, seed=11), CFG)
    n_train = int(len(ds) * 0.5)
    rng = np.random.default_rng(0)
    X = ds.X.to_numpy(dtype=np.float64)
    y_shuffled = rng.permutation(ds.y[:n_train])
    model = Ridge(alpha=1.0).fit(X[:n_train], y_shuffled)
    pred = model.predict(X[n_train:])
    y_test = ds.y[n_train:]
    nz = y_test != 0
    acc = float(np.mean(np.sign(pred[nz]) == np.sign(y_test[nz])))
    assert len(y_test) > 5000  # sd of a coin's accuracy ~0.007
    assert abs(acc - 0.5) < 0.03, acc


def test_cross_sectional_rank_paths_agree() -> None:
    from tideline.features import _cs_rank_dense, _cs_rank_sorted

    rng = np.random.default_rng(12)
    ts = np.repeat(np.arange(50, dtype=np.int64), 6)
    code = np.tile(np.arange(6), 50)
    values = rng.normal(size=len(ts))
    values[::5] = 0.25  # ties
    values[::7] = np.nan
    _, gid = np.unique(ts, return_inverse=True)
    dense = _cs_rank_dense(gid, code, 50, 6, values)
    np.testing.assert_allclose(dense, _cs_rank_sorted(ts, values), equal_nan=True)
    assert np.isnan(dense[::7]).all() and np.nanmax(dense) == 1.0


def test_every_symbol_gets_its_own_bits_however_many_are_computed_together() -> None:
    """Features of many symbols are computed in one pass (windows and exponential averages restarting at each
    symbol's first bar), of a few symbols one at a time: either way each symbol's per-symbol features are
    bit-identical to computing it alone — what lets the predictor serve a request of 100 symbols with the
    training code's exact values."""
    from tideline.features import _FEW_SEGMENTS

    n_sym = _FEW_SEGMENTS + 8
    bars = make_bars(n_sym, 150, seed=12)
    bars = bars[~((bars["symbol"] == "S05") & (bars.groupby("symbol").cumcount() < 40))]  # a late start
    together, spec = compute_features(bars, CFG)
    per_symbol = [c for c in spec.all_columns if not c.startswith("cs_rank_")]
    for sym in ("S00", "S05", f"S{n_sym - 1:02d}"):
        one = bars[bars["symbol"] == sym]
        alone, _ = compute_features(one, CFG)
        a = together.loc[one.index, per_symbol].to_numpy()
        b = alone[per_symbol].to_numpy()
        assert np.array_equal(a.view(np.uint32), b.view(np.uint32)), sym


def test_last_bar_frame_equals_the_last_rows_of_the_whole_matrix() -> None:
    """The predictor's shortcut (only each symbol's last bar assembled) gives exactly the bits of those rows of
    the whole feature matrix — symbols ending at different times (their cross-sectional ranks then rank among
    the symbols present at that earlier time), few symbols and many, unsorted input."""
    from tideline.features import _FEW_SEGMENTS, last_bar_frame

    for n_sym in (4, _FEW_SEGMENTS + 5):
        bars = make_bars(n_sym, 140, seed=21)
        bars = bars[~((bars["symbol"] == "S01") & (bars.groupby("symbol").cumcount() >= 120))]  # ends early
        bars = bars.sample(frac=1.0, random_state=1)  # unsorted
        whole, spec = compute_features(bars, CFG)
        X, meta = last_bar_frame(bars, CFG)
        last = whole.sort_values(["symbol", "timestamp"]).groupby("symbol").tail(1)
        assert meta["symbol"].tolist() == last["symbol"].tolist() == sorted(last["symbol"])
        assert (meta["timestamp"].to_numpy() == last["timestamp"].to_numpy()).all()
        a = X[spec.all_columns].to_numpy()
        b = last[spec.all_columns].to_numpy()
        assert np.array_equal(a.view(np.uint32), b.view(np.uint32)), n_sym
