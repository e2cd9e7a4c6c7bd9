"""The rl family (issue 28): training speed, one-row prediction, the statistical checks and warm start.

Prints one JSON object per part:

* ``rl_train``: the policy trained on ~100k rows (``synthetic_market``, 20 symbols x 5,100 hourly bars, the default
  features and params: 3 passes = ~300k environment steps), wall seconds of the fit (target <= 60 s on 2 cores),
  and the one-row model call of the rl policy against the torch family's network (target: no slower).
* ``rl_gate``: the gate benchmark's markets (20 symbols x 2,520 daily bars, 1 bp costs, 20% hold-out, purged
  walk-forward folds), ``--seeds`` seeds each of a planted signal (``--strength``) and pure noise; the policy
  trained and judged as in a cycle (``train_family``, ``judge_all``). Targets: on the planted signal its hold-out
  net Sharpe beats every baseline in >= 80% of the seeds; on noise it passes the gate in none (at most 1 of 20).
* ``rl_warm_start``: per seed, a policy trained on the first 40% of a planted-signal market; the next 40% learnt
  cold and warm-started from it, both checked along the way on the last 20%: their learning curves and the steps
  each needs to reach the cold start's final figure (target: fewer for the warm start). ``after_flip``: the same
  on markets whose signal flips where the second 40% begins: what the previous version earns there, whether the
  warm start was declined (the default ``warm_floor_bps``), and the curve of a warm start forced on anyway.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np


def train_speed() -> dict:
    from tideline.data import synthetic_market
    from tideline.features import FeatureConfig, build_dataset
    from tideline.models import Market, make_model

    bars = synthetic_market(20, 5100, seed=1, signal_strength=0.15)
    ds = build_dataset(bars, FeatureConfig())
    n = len(ds)
    meta = ds.meta
    market = Market(ds.next_return, meta["symbol"].to_numpy(), meta["timestamp"].to_numpy(), np.full(n, 1e-4))
    model = make_model("rl", seed=7)
    t0 = time.perf_counter()
    model.fit(ds.X, ds.y, ds.spec, market=market)
    fit_s = time.perf_counter() - t0
    torch_model = make_model("torch", seed=7, params={"max_epochs": 1, "max_rows": 20_000})
    torch_model.fit(ds.X.iloc[-20_000:], ds.y[-20_000:], ds.spec)
    return {"name": "rl_train", "rows": n, "features": len(model.columns), "timesteps": model.fit_info["timesteps"],
            "fit_s": round(fit_s, 2), "learn_s": model.fit_info["learn_seconds"], "goal_s": 60,
            "one_row_predict_us": {"rl": one_row_us(model, ds.X), "torch": one_row_us(torch_model, ds.X)},
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def one_row_us(model, X) -> float:  # noqa: ANN001
    """Median microseconds of one model call on one row (``predict_array``: the predictor's hot path)."""
    rows = [np.ascontiguousarray(X[model.columns].iloc[[i]].to_numpy(np.float32)) for i in range(0, 2000, 10)]
    for r in rows[:20]:
        model.predict_array(r)
    times = []
    for r in rows:
        t0 = time.perf_counter()
        model.predict_array(r)
        times.append(time.perf_counter() - t0)
    return round(float(np.median(times)) * 1e6, 1)


def gate(seeds: int, strength: float) -> dict:
    from tideline.config import load_settings
    from tideline.data import synthetic_market, validate_bars
    from tideline.training.cycle import ProductionScore, baselines, judge_all, make_dataset, plan_windows, train_family

    s = load_settings(training={"families": ["rl"]})
    t0 = time.perf_counter()
    runs: dict[str, list[dict]] = {"signal": [], "noise": []}
    for seed in range(seeds):
        for kind, k in (("signal", strength), ("noise", 0.0)):
            bars = validate_bars(synthetic_market(20, 2520, seed=seed, freq="1D", start="2010-01-01",
                                                  signal_strength=k)).clean
            ds = make_dataset(bars, s.features)
            plan = plan_windows(ds, s)
            base = baselines(ds, plan, s)
            _, fr = train_family("rl", ds, plan, s)
            (cand,) = judge_all([fr], ProductionScore(), base, ds, plan, s)
            best_base = max(base.values(), key=lambda m: m.sharpe)
            runs[kind].append({"seed": seed, "sharpe": round(cand.holdout.sharpe, 2),
                               "best_baseline_sharpe": round(best_base.sharpe, 2),
                               "beats_baselines": bool(cand.holdout.sharpe > best_base.sharpe),
                               "approved": cand.decision.approved,
                               "deflated_sharpe": round(cand.evidence.deflated_sharpe, 3) if cand.evidence else None,
                               "failed": [c.name for c in cand.decision.checks if not c.passed]})
            print(json.dumps({kind: runs[kind][-1]}), file=sys.stderr, flush=True)
    return {"name": "rl_gate", "seeds": seeds, "symbols": 20, "bars": 2520, "strength": strength,
            "signal_beats_baselines": sum(r["beats_baselines"] for r in runs["signal"]),
            "signal_approved": sum(r["approved"] for r in runs["signal"]),
            "noise_approved": sum(r["approved"] for r in runs["noise"]),
            "signal_sharpe_median": float(np.median([r["sharpe"] for r in runs["signal"]])),
            "wall_s": round(time.perf_counter() - t0, 1), "runs": runs}


def warm_start(seeds: int = 3) -> dict:
    """Per seed (``warm_run``): the steps a cold and a warm-started policy need to reach the cold start's final
    figure on the later rows."""
    runs = [warm_run(seed) for seed in range(seeds)]
    reached = [r for r in runs if r["steps_to_cold_final"]["warm"] is not None]
    return {"name": "rl_warm_start", "seeds": seeds, "warm_reached_cold_final": len(reached),
            "median_steps_to_cold_final": {
                k: float(np.median([r["steps_to_cold_final"][k] for r in runs if r["steps_to_cold_final"][k]
                                    is not None])) for k in ("cold", "warm")},
            "runs": runs, "after_flip": [warm_run(seed, flip=True) for seed in range(seeds)]}


def warm_run(seed: int, flip: bool = False) -> dict:
    """A policy trained on the first 40% of a planted-signal market (the previous version), then the next 40%
    learnt cold and warm-started from it, each checked ``n_checks`` times on the last 20% (the later rows: a
    learning curve, not a selection): both curves and the steps each needs to reach the cold start's final
    figure. ``flip``: the signal flips where the second 40% begins; the warm start is as the defaults decide
    (``warm``) and forced on (``forced``: ``warm_floor_bps`` -1e9)."""
    from tideline.data import synthetic_market
    from tideline.features import FeatureConfig, build_dataset
    from tideline.models import Market, make_model

    n_bars = 6000
    bars = synthetic_market(10, n_bars, seed=100 + seed, signal_strength=0.15,
                            shifts=[n_bars * 2 // 5] if flip else None)
    ds = build_dataset(bars, FeatureConfig())
    ts = ds.meta["timestamp"].to_numpy()
    times = np.unique(ts)
    cut1, cut2 = times[len(times) * 2 // 5], times[len(times) * 4 // 5]
    first, second, later = (np.flatnonzero(ts < cut1), np.flatnonzero((ts >= cut1) & (ts < cut2)),
                            np.flatnonzero(ts >= cut2))

    def market(idx: np.ndarray) -> Market:
        return Market(ds.next_return[idx], ds.meta["symbol"].to_numpy()[idx], ts[idx], np.full(len(idx), 1e-4))

    def fit(idx: np.ndarray, previous=None, **params: float):  # noqa: ANN001, ANN003
        # the same budget (warm_fraction 1): whole curves
        m = make_model("rl", seed=seed, params={"n_checks": 12, "warm_fraction": 1.0, **params})
        if previous is not None:
            assert m.warm_start(previous, "previous") is None
        m.fit(ds.X.iloc[idx], ds.y[idx], ds.spec, X_valid=ds.X.iloc[later], y_valid=ds.y[later],
              market=market(idx), valid_market=market(later))
        return m

    previous = fit(first)
    fits = {"cold": fit(second), "warm": fit(second, previous)}
    if flip:
        fits["forced"] = fit(second, previous, warm_floor_bps=-1e9)
    curve = {k: [(c["steps"], c["valid_net_bps"]) for c in m.fit_info["checks"]] for k, m in fits.items()}
    final = curve["cold"][-1][1]
    reach = {k: next((st for st, v in c if v >= final), None) for k, c in curve.items()}
    return {"seed": seed, "flip": flip, "rows_second": int(len(second)), "cold_final_bps": final,
            "steps_to_cold_final": reach, "warm_start": fits["warm"].fit_info.get("warm_start"),
            "best_bps": {k: max(v for _, v in c) for k, c in curve.items()}, "curves": curve}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="train,gate,warm", help="which parts: train, gate, warm")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--strength", type=float, default=0.15)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    parts = args.parts.split(",")
    if "train" in parts:
        print(json.dumps(train_speed()), flush=True)
    if "warm" in parts:
        print(json.dumps(warm_start()), flush=True)
    if "gate" in parts:
        print(json.dumps(gate(args.seeds, args.strength)), flush=True)


if __name__ == "__main__":
    main()
