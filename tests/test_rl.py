"""The rl family: its trading environment against the evaluation's arithmetic, the policy model's interface
(fit / predict / save / load without pickle), warm start, and the cycle training, judging and registering it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tideline.errors import ModelError
from tideline.evaluation import position_returns
from tideline.models import Market, PolicyModel, load_model, make_model
from tideline.models.reinforcement import ACTIONS, Episodes, bars_env, bars_vec_env, net_mean_reward

FAST = {"min_timesteps": 20_000, "passes": 2.0, "n_checks": 4}


def _market_data(n_bars: int = 1500, n_symbols: int = 4, seed: int = 0, signal: float = 0.35
                 ) -> tuple[pd.DataFrame, Market, Spec]:
    """Features whose first column predicts the next return with correlation ``signal`` (0: pure noise)."""
    rng = np.random.default_rng(seed)
    ts = np.tile(pd.date_range("2021-01-01", periods=n_bars, freq="h").to_numpy(), n_symbols)
    sym = np.repeat([f"S{i}" for i in range(n_symbols)], n_bars)
    n = len(ts)
    X = pd.DataFrame(rng.standard_normal((n, 5)), columns=[f"f{i}" for i in range(5)])
    nr = 0.005 * (signal * X["f0"].to_numpy() + np.sqrt(1 - signal ** 2) * rng.standard_normal(n))
    return X, Market(nr, sym, ts, np.full(n, 1e-4)), Spec(list(X.columns))


class Spec:
    def __init__(self, tabular: list[str]) -> None:
        self.tabular, self.sequence, self.channels, self.seq_len = tabular, [], [], 0

    @property
    def all_columns(self) -> list[str]:
        return list(self.tabular)


def _take(m: Market, idx: np.ndarray) -> Market:
    return Market(m.next_return[idx], m.symbol[idx], m.timestamp[idx], m.unit_cost[idx])


def _by_time(X: pd.DataFrame, m: Market, frac: float) -> tuple[np.ndarray, np.ndarray]:
    cut = np.sort(m.timestamp)[int(len(m) * frac)]
    return np.flatnonzero(m.timestamp < cut), np.flatnonzero(m.timestamp >= cut)


def _fit(X: pd.DataFrame, m: Market, spec: Spec, idx: np.ndarray, seed: int = 0, **params: float) -> PolicyModel:
    model = make_model("rl", seed=seed, params={**FAST, **params}, n_threads=1)
    model.fit(X.iloc[idx], np.zeros(len(idx)), spec, market=_take(m, idx))
    assert isinstance(model, PolicyModel)
    return model


# ---------------------------------------------------------------------------------------------- environment


def test_the_environment_is_a_valid_gymnasium_env() -> None:
    from gymnasium.utils.env_checker import check_env

    X, m, _ = _market_data(200, 2)
    env = bars_env(Episodes(X.to_numpy(np.float32), m, 0.005), episode_bars=50)
    check_env(env, skip_render_check=True)


def test_the_reward_is_what_the_evaluation_charges() -> None:
    """Holding positions through one symbol's bars earns, net of costs, exactly ``position_returns`` (the
    evaluation's costed strategy), in units of the reward scale."""
    X, m, _ = _market_data(300, 1)
    ep = Episodes(X.to_numpy(np.float32), m, reward_scale=0.005)
    pos = ACTIONS[np.random.default_rng(1).integers(0, 3, len(ep))]
    want = position_returns(pos, m.next_return, pd.DataFrame({"timestamp": m.timestamp, "symbol": m.symbol}),
                            cost_bps=1.0)
    assert net_mean_reward(pos, ep) == pytest.approx(float(want.mean()), rel=1e-12)
    env = bars_env(ep, episode_bars=len(ep))
    env.reset(options={"start": 0})
    total = 0.0
    for a in pos + 1:
        _, r, terminated, truncated, _ = env.step(int(a))
        total += r
        assert not terminated
    assert truncated and total * 0.005 == pytest.approx(float(want.sum()), rel=1e-9)


def test_the_vectorised_environment_steps_like_the_reference_one() -> None:
    X, m, _ = _market_data(400, 3)
    ep = Episodes(X.to_numpy(np.float32), m, 0.005)
    vec = bars_vec_env(ep, episode_bars=40, n_envs=8, seed=3)
    obs = vec.reset()
    starts, ends = vec.row.copy(), vec.end.copy()
    refs = []
    for s in starts:
        env = bars_env(ep, episode_bars=40)
        o, _ = env.reset(options={"start": int(s)})
        refs.append(env)
        np.testing.assert_array_equal(o, obs[len(refs) - 1])
    rng = np.random.default_rng(0)
    live = np.ones(8, dtype=bool)
    for _ in range(45):
        a = rng.integers(0, 3, 8)
        vec.step_async(a)
        obs, rew, done, infos = vec.step_wait()
        for i, env in enumerate(refs):
            if not live[i]:
                continue
            o, r, _, trunc, _ = env.step(int(a[i]))
            assert rew[i] == pytest.approx(r, rel=1e-6)
            assert bool(done[i]) == trunc
            if trunc:  # a new episode took its place: the old one's last observation is in the info
                np.testing.assert_array_equal(infos[i]["terminal_observation"], o)
                assert infos[i]["TimeLimit.truncated"]
                live[i] = False
            else:
                np.testing.assert_array_equal(obs[i], o)
    assert not live.any() and (ends - starts <= 40).all()


def test_episodes_never_cross_a_symbol() -> None:
    X, m, _ = _market_data(30, 3)
    ep = Episodes(X.to_numpy(np.float32), m, 0.005)
    vec = bars_vec_env(ep, episode_bars=1000, n_envs=16, seed=0)
    vec.reset()
    sym = np.asarray(m.symbol)[ep.order]
    for _ in range(100):
        rows, ends = vec.row.copy(), vec.end.copy()
        assert (sym[rows] == sym[ends - 1]).all()
        vec.step_async(np.zeros(16, dtype=np.int64))
        vec.step_wait()


# ---------------------------------------------------------------------------------------------- the model


@pytest.fixture(scope="module")
def trained() -> tuple[PolicyModel, pd.DataFrame, Market, Spec, np.ndarray]:
    X, m, spec = _market_data()
    tr, te = _by_time(X, m, 0.7)
    return _fit(X, m, spec, tr), X, m, spec, te


def test_the_policy_trades_a_planted_signal_net_of_costs(trained) -> None:
    model, X, m, _, te = trained
    pos = model.predict(X.iloc[te])
    assert set(np.unique(pos)) <= {-1.0, 0.0, 1.0}
    meta = pd.DataFrame({"timestamp": m.timestamp[te], "symbol": m.symbol[te]})
    net = position_returns(pos, m.next_return[te], meta, cost_bps=1.0)
    long = position_returns(np.ones(len(te)), m.next_return[te], meta, cost_bps=1.0)
    hit = np.mean(np.sign(pos) == np.sign(m.next_return[te]))
    assert net.mean() > 0 and net.mean() > long.mean() + 5e-4, (net.mean(), long.mean())
    assert hit > 0.55
    assert model.fit_info["timesteps"] >= 20_000 and model.fit_info["warm_start"] is None


def test_save_load_round_trip_without_pickle(trained, tmp_path: Path) -> None:
    model, X, *_ = trained
    files = model.save(tmp_path / "m")
    assert sorted(files) == ["model.json", "policy.pt"]
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["family"] == "rl" and meta["output"] == "position"
    assert meta["extra"]["network"]["width"] == 64 and len(meta["extra"]["input_scaler"]["center"]) == 5
    loaded = load_model(tmp_path / "m")
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    # one row at a time answers as the batch does
    batch = model.predict(X.iloc[:40])
    assert [float(loaded.predict(X.iloc[[i]])[0]) for i in range(40)] == batch.tolist()
    # the predictor's path never imports stable-baselines3 (nor unpickles anything)
    code = ("import sys; from tideline.models import load_model; import pandas as pd, numpy as np; "
            f"m = load_model({str(tmp_path / 'm')!r}); "
            "m.predict(pd.DataFrame(np.zeros((2, 5)), columns=[f'f{i}' for i in range(5)])); "
            "print('stable_baselines3' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_pickled_or_tampered_policy_is_refused(trained, tmp_path: Path) -> None:
    import torch

    model, *_ = trained
    model.save(tmp_path / "m")
    # a pickle inside a weights file: refused even when model.json is made to vouch for it
    torch.save({"x": object.__new__(Spec)}, tmp_path / "m" / "policy.pt")
    from tideline.models.base import sha256_file
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    meta["files"]["policy.pt"] = sha256_file(tmp_path / "m" / "policy.pt")
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="refused|weights"):
        load_model(tmp_path / "m")
    model.save(tmp_path / "n")
    (tmp_path / "n" / "policy.pt").write_bytes(b"not torch")
    with pytest.raises(ModelError, match="corrupt"):
        load_model(tmp_path / "n")


def test_a_policy_needs_its_market() -> None:
    X, m, spec = _market_data(100, 1)
    model = make_model("rl", seed=0)
    with pytest.raises(ModelError, match="needs the market of its 100 training rows"):
        model.fit(X, np.zeros(len(X)), spec)
    with pytest.raises(ModelError, match="disagree in length"):
        Market(m.next_return, m.symbol[:5], m.timestamp, m.unit_cost)


def test_same_seed_same_policy() -> None:
    X, m, spec = _market_data(600, 2)
    tr, te = _by_time(X, m, 0.7)
    a = _fit(X, m, spec, tr, seed=5).predict(X.iloc[te])
    b = _fit(X, m, spec, tr, seed=5).predict(X.iloc[te])
    np.testing.assert_array_equal(a, b)


def test_validation_picks_the_checkpoint() -> None:
    X, m, spec = _market_data(1200, 3)
    tr, va = _by_time(X, m, 0.8)
    model = make_model("rl", seed=0, params=FAST, n_threads=1)
    model.fit(X.iloc[tr], np.zeros(len(tr)), spec, X_valid=X.iloc[va], y_valid=np.zeros(len(va)),
              market=_take(m, tr), valid_market=_take(m, va))
    checks = model.fit_info["checks"]
    assert len(checks) == 4
    assert model.fit_info["valid_net_bps"] == max(c["valid_net_bps"] for c in checks)


@pytest.fixture(scope="module")
def periods() -> tuple[pd.DataFrame, Market, Spec, np.ndarray, np.ndarray, PolicyModel]:
    """A market in three periods: the previous version trained on the first; the second's and the last's rows."""
    X, m, spec = _market_data(2400, 4, seed=3)
    ts = np.sort(np.unique(m.timestamp))
    first = np.flatnonzero(m.timestamp < ts[800])
    second = np.flatnonzero((m.timestamp >= ts[800]) & (m.timestamp < ts[1600]))
    test = np.flatnonzero(m.timestamp >= ts[1600])
    return X, m, spec, second, test, _fit(X, m, spec, first, seed=1)


def test_warm_start_reaches_the_cold_result_in_fewer_steps(periods) -> None:  # noqa: ANN001
    """A version trained on the first period, fine-tuned on the next: it starts where the cold one has to get
    to, so half the steps reach the cold start's result on the later hold-out."""
    X, m, spec, second, test, previous = periods
    meta = pd.DataFrame({"timestamp": m.timestamp[test], "symbol": m.symbol[test]})

    def score(model: PolicyModel) -> float:
        return float(position_returns(model.predict(X.iloc[test]), m.next_return[test], meta, 1.0).mean())

    cold = _fit(X, m, spec, second, seed=2)
    warm = make_model("rl", seed=2, params=FAST, n_threads=1)
    assert warm.warm_start(previous, "v1") is None
    warm.fit(X.iloc[second], np.zeros(len(second)), spec, market=_take(m, second))
    assert warm.fit_info["warm_start"] == {"from": "v1"}
    assert warm.fit_info["timesteps"] < cold.fit_info["timesteps"]
    assert score(warm) >= 0.95 * score(cold) > 0
    # a previous version with another network is not used (a cold start, and why)
    other = make_model("rl", seed=2, params={**FAST, "width": 32}, n_threads=1)
    assert "width" in other.warm_start(previous, "v1")


def test_a_warm_start_from_a_policy_the_market_moved_under_is_declined(periods) -> None:  # noqa: ANN001
    """After the signal flips, the previous version loses on the new validation rows: starting from it would
    first mean unlearning it, so the fit starts cold with the whole budget and says why. Where it still earns,
    it is started from."""
    X, m, spec, second, test, previous = periods
    flipped = Market(np.where(m.timestamp >= m.timestamp[second].min(), -m.next_return, m.next_return), m.symbol,
                     m.timestamp, m.unit_cost)

    def warm_fit(market: Market) -> PolicyModel:
        model = make_model("rl", seed=2, params=FAST, n_threads=1)
        assert model.warm_start(previous, "v1") is None
        model.fit(X.iloc[second], np.zeros(len(second)), spec, X_valid=X.iloc[test], y_valid=np.zeros(len(test)),
                  market=_take(market, second), valid_market=_take(market, test))
        return model  # type: ignore[return-value]

    kept, declined = warm_fit(m), warm_fit(flipped)
    assert kept.fit_info["warm_start"] == {"from": "v1"}
    assert kept.fit_info["checks"][0]["phase"] == "warm start" and kept.fit_info["checks"][0]["valid_net_bps"] > 0
    why = declined.fit_info["warm_start"]["why_not"]
    assert declined.fit_info["warm_start"]["from"] is None and "the market moved under it" in why, why
    assert declined.fit_info["timesteps"] > kept.fit_info["timesteps"]  # the whole budget, not warm_fraction of it
    assert all(c["phase"] != "warm start" for c in declined.fit_info["checks"])


# ---------------------------------------------------------------------------------------------- the cycle


@pytest.mark.slow
def test_the_cycle_trains_judges_registers_and_warm_starts_the_policy(tmp_path: Path) -> None:
    """``tideline cycle --families rl``: the policy goes through the purged walk-forward, the gate and the
    registry like any family; the next cycle, on more data, warm-starts from it — the first version's rows all
    ended before the new hold-out."""
    from tideline.data import synthetic_market
    from tideline.registry import open_registry

    bars = synthetic_market(n_symbols=4, n_bars=2000, seed=5, signal_strength=0.4)
    first = bars.loc[bars["timestamp"] < bars["timestamp"].unique()[1000]]
    first.to_parquet(tmp_path / "first.parquet")
    bars.to_parquet(tmp_path / "all.parquet")
    cfg = tmp_path / "tideline.toml"
    cfg.write_text('[training.params.rl]\nmin_timesteps = 20000\npasses = 1.0\nn_checks = 3\n'
                   '[training.params.lightgbm]\nnum_boost_round = 60\n')
    uri = (tmp_path / "reg").as_uri()

    def cycle(data: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tideline", "--registry", uri, "--config", str(cfg), "cycle",
                               "--data", str(data), "--families", "rl,lightgbm"], capture_output=True, text=True,
                              timeout=600)

    one = cycle(tmp_path / "first.parquet")
    assert one.returncode == 0, one.stderr
    reg = open_registry(uri)
    v1 = next(mv for mv in reg.list_versions() if mv.family == "rl")
    assert v1.decision is not None and v1.metrics["n_obs"] > 0 and v1.position["rule"] == "sign"
    assert {"vs_baseline", "walk_forward", "deflated_sharpe"} <= {c["name"] for c in v1.decision["checks"]}
    two = cycle(tmp_path / "all.parquet")
    assert two.returncode == 0, two.stderr
    v2 = [mv for mv in reg.list_versions() if mv.family == "rl"][-1]
    assert v2.version != v1.version
    m = load_model(reg.fetch(v2.version, tmp_path / "m2"))
    assert m.fit_info["warm_start"] == {"from": v1.version}
    assert m.fit_info["preparation"][0].startswith(f"warm start from {v1.version}")
    assert v2.evaluation["learning"]["warm_start"] == {"from": v1.version}
    shown = subprocess.run([sys.executable, "-m", "tideline", "--registry", uri, "models", "show", v2.version],
                           capture_output=True, text=True, timeout=120)
    assert f"warm start from {v1.version}" in shown.stdout, shown.stdout


def test_live_outcomes_of_a_policy_against_a_forecaster_carry_kinds_and_net_returns(trained, tmp_path: Path) -> None:
    """What a rollout of an rl version against a return forecaster is judged on: the outcome source says the
    kinds differ and pairs each request's net returns, which are what the evaluation charges."""
    import io

    from tideline.monitoring.feedback import outcomes_from_log
    from tideline.registry import open_registry

    model, *_ = trained
    model.save(tmp_path / "rl")
    reg = open_registry((tmp_path / "reg").as_uri())
    cand = reg.register(tmp_path / "rl", {"family": "rl", "features": model.columns}).version
    base = reg.register(tmp_path / "rl", {"family": "lightgbm", "features": model.columns}).version
    ts = pd.date_range("2024-01-01", periods=120, freq="D")
    rng = np.random.default_rng(0)
    close = 100 * np.exp(np.cumsum(0.01 * rng.standard_normal(len(ts))))
    bars = pd.DataFrame({"timestamp": ts, "symbol": "AAA", "open": close, "high": close * 1.01, "low": close * 0.99,
                         "close": close, "volume": 1000.0})
    rows = []
    for i, t in enumerate(ts[:100]):
        for version, pred in ((cand, float(rng.choice([-1.0, 0.0, 1.0]))), (base, float(1e-3 * rng.standard_normal()))):
            rows.append({"request_id": f"r{i}", "time": pd.Timestamp("2024-06-01", tz="UTC") + pd.Timedelta(seconds=i),
                         "symbol": "AAA", "bar_time": t, "feature_hash": "0" * 16, "prediction": pred,
                         "version": version, "role": "shadow" if version == cand else "active", "bars": None})
    buf = io.BytesIO()
    pd.DataFrame(rows).to_parquet(buf, index=False)
    reg.store.put("predictions/2024-06-01/mixed.parquet", buf.getvalue())
    out = outcomes_from_log(reg, bars, min_pairs=50)(cand, base)
    assert out is not None and out.kinds == ("position", "return")
    p = out.paired
    assert p is not None and len(p.candidate_net) == len(p.times) == 100
    # the candidate's net returns are those of the evaluation's costed strategy on its positions
    log = pd.DataFrame(rows)
    mine = log.loc[log["version"] == cand].sort_values("bar_time")
    nr = np.log(close[1:101] / close[:100])
    meta = pd.DataFrame({"timestamp": mine["bar_time"].to_numpy(), "symbol": "AAA"})
    want = position_returns(mine["prediction"].to_numpy(), nr, meta, cost_bps=1.0)
    np.testing.assert_allclose(np.asarray(p.candidate_net), want.to_numpy(), rtol=0, atol=1e-15)


def test_the_predictor_serves_a_policy_its_answer_is_the_position(trained, tmp_path: Path) -> None:
    from test_serving_bars import ask
    from tideline.registry import open_registry
    from tideline.serving.predictor import TidelinePredictor

    model, X, *_ = trained
    model.save(tmp_path / "rl")
    reg = open_registry((tmp_path / "reg").as_uri())
    v = reg.register(tmp_path / "rl", {"family": "rl", "features": model.columns,
                                       "position": {"rule": "sign"}}).version
    reg.promote(v, reason="test")
    p = TidelinePredictor("tideline", reg, ref="production")
    p.load()
    rows = X.iloc[:30]
    out = ask(p, {"instances": rows.to_dict("records")})
    want = model.predict(rows)
    assert out["predictions"] == want.tolist() and out["positions"] == want.tolist()
    assert out["model_version"] == v
    p.stop()


@pytest.mark.slow
def test_statistics_planted_signal_beats_the_baselines_and_noise_does_not_pass_the_gate() -> None:
    """The reduced form of the issue's statistical checks (the full one: ``bench/bench_rl.py``, 20 seeds of the
    gate benchmark's markets): on 6 seeded markets with a planted signal the policy's hold-out net Sharpe beats
    every baseline in at least 80% of them; on 4 of pure noise the gate approves none."""
    from tideline.config import load_settings
    from tideline.data import synthetic_market, validate_bars
    from tideline.training.cycle import ProductionScore, baselines, judge_all, make_dataset, plan_windows, train_family

    s = load_settings(training={"families": ["rl"], "params": {"rl": {**FAST, "n_checks": 2}}},
                      evaluation={"n_splits": 3, "bootstrap_samples": 300})

    def run(seed: int, strength: float) -> tuple[bool, bool]:
        bars = validate_bars(synthetic_market(8, 1500, seed=seed, freq="1D", start="2010-01-01",
                                              signal_strength=strength)).clean
        ds = make_dataset(bars, s.features)
        plan = plan_windows(ds, s)
        base = baselines(ds, plan, s)
        _, fr = train_family("rl", ds, plan, s)
        (c,) = judge_all([fr], ProductionScore(), base, ds, plan, s)
        return fr.holdout.sharpe > max(m.sharpe for m in base.values()), c.decision.approved

    signal = [run(seed, 0.2) for seed in range(6)]
    assert sum(beats for beats, _ in signal) >= 5, signal
    noise = [run(seed, 0.0) for seed in range(4)]
    assert not any(approved for _, approved in noise), noise
