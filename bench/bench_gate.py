"""The gate against luck with trained models (issue 19, the full form of the statistical checks).

The issue's market: 20 symbols x 2,520 daily bars (``synthetic_market``, no regime shift), 20% hold-out,
purged walk-forward folds, the default families and settings (1 bp costs). Per seed, two markets: pure
noise (``signal_strength=0``) and a planted signal (``--strength``, default 0.15) whose ideal strategy
(holding the sign of the generator's own predictor, computed from the bars) earns a net annualised hold-out
Sharpe of about 3. Each family is trained and judged as in a cycle, their equal-weight ensemble with them
(``train_family``, ``ensemble_result``, ``judge_all``); a seed counts as approved when any candidate is. Targets: noise approved in at most 1 of 20 seeds, the planted
signal in at least 16 of 20. Each position rule of ``--rules`` (default: sign and zscore) is one run over
every seed; prints one JSON object per rule (per-seed figures included). ``--tune N`` tunes every family with
N Optuna trials inside the walk-forward folds first (issue 22: the same targets must hold, every trial counted
in the deflated Sharpe); ``--kinds`` runs only the noise or only the signal markets.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import pandas as pd


def ideal_holdout_sharpe(bars: pd.DataFrame, cost_bps: float, holdout_fraction: float) -> float:
    """Net annualised hold-out Sharpe of holding sign(P) of each symbol, P the generator's predictor rebuilt
    from the bars (regime volatility proxied by the 20-bar return std, as the generator's docs say)."""
    from tideline.data.synthetic import _CLV_SCALE, _VOLUME_WINDOW, _WEIGHTS, _rolling_z

    w = bars.pivot(index="timestamp", columns="symbol")
    c, h, lo, v = (w[k].to_numpy(dtype=np.float64) for k in ("close", "high", "low", "volume"))
    r = np.vstack([np.full(c.shape[1], np.nan), np.diff(np.log(c), axis=0)])
    z = r / pd.DataFrame(r).rolling(20).std().to_numpy()
    tvz = np.tanh(_rolling_z(np.log(v), _VOLUME_WINDOW))
    clv = (c - lo) / np.maximum(h - lo, 1e-12)
    p = z * (_WEIGHTS["ret"] + _WEIGHTS["ret_x_volume"] * tvz) + _WEIGHTS["clv"] * _CLV_SCALE * (clv - 0.5)
    pos = np.sign(np.nan_to_num(p))
    nxt = np.vstack([r[1:], np.full(c.shape[1], np.nan)])
    turnover = np.abs(np.diff(np.vstack([np.zeros(c.shape[1]), pos]), axis=0))
    net = np.mean(pos * np.nan_to_num(nxt) - cost_bps / 1e4 * turnover, axis=1)[:-1]
    hold = net[int(round((1 - holdout_fraction) * len(net))):]
    return float(hold.mean() / hold.std(ddof=1) * np.sqrt(252))


def one(settings, seed: int, strength: float) -> dict:
    from tideline.data import synthetic_market, validate_bars
    from tideline.training.cycle import (
        ProductionScore,
        baselines,
        ensemble_result,
        judge_all,
        make_dataset,
        plan_windows,
        train_family,
    )

    bars = validate_bars(synthetic_market(20, 2520, seed=seed, freq="1D", start="2010-01-01",
                                          signal_strength=strength)).clean
    ds = make_dataset(bars, settings.features)
    plan = plan_windows(ds, settings)
    results = [train_family(f, ds, plan, settings)[1] for f in settings.training.families]
    ens = ensemble_result(results, ds, plan, settings)  # one more candidate, as in a cycle
    results += [ens] if ens is not None else []
    cands = judge_all(results, ProductionScore(), baselines(ds, plan, settings), ds, plan, settings)
    ev = settings.evaluation
    return {
        "seed": seed, "strength": strength, "approved": any(c.decision.approved for c in cands),
        "n_trials": max((c.evidence.n_trials for c in cands if c.evidence), default=0),
        "ideal_sharpe": round(ideal_holdout_sharpe(bars, ev.cost_bps, ev.holdout_fraction), 2),
        "families": {c.family: {"sharpe": round(c.holdout.sharpe, 2),
                                "deflated_sharpe": round(c.evidence.deflated_sharpe, 3)
                                if c.evidence else None,
                                "approved": c.decision.approved,
                                "failed": [k.name for k in c.decision.checks if not k.passed]}
                     for c in cands},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--strength", type=float, default=0.15)
    ap.add_argument("--rules", default="sign,zscore", help="position rules, comma-separated: one run each")
    ap.add_argument("--tune", type=int, default=0, help="Optuna trials per family (0: no tuning)")
    ap.add_argument("--kinds", default="noise,signal", help="which markets: noise, signal or both")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from tideline.config import load_settings

    kinds = [k for k in ("noise", "signal") if k in args.kinds.split(",")]
    for rule in args.rules.split(","):
        run_rule(load_settings(positions={"rule": rule}, training={"tune_trials": args.tune}), args.seeds,
                 args.strength, kinds)


def run_rule(settings, seeds: int, strength: float, kinds: list[str]) -> None:  # noqa: ANN001
    t0 = time.perf_counter()
    runs = {k: [] for k in kinds}
    for seed in range(seeds):
        for kind, k in (("noise", 0.0), ("signal", strength)):
            if kind not in runs:
                continue
            runs[kind].append(one(settings, seed, k))
            print(json.dumps(runs[kind][-1]), file=sys.stderr, flush=True)
    out = {
        "name": "gate", "positions": settings.positions.rule, "seeds": seeds, "symbols": 20, "bars": 2520,
        "strength": strength,
        "families": list(settings.training.families), "ensemble": settings.training.ensemble,
        "cost_bps": settings.evaluation.cost_bps, "tune_trials": settings.training.tune_trials,
        **{f"{kind}_approved": sum(r["approved"] for r in rs) for kind, rs in runs.items()},
        **({"signal_ideal_sharpe_median": float(np.median([r["ideal_sharpe"] for r in runs["signal"]])),
            "signal_best_sharpe_median": float(np.median([max(f["sharpe"] for f in r["families"].values())
                                                          for r in runs["signal"]]))} if runs.get("signal") else {}),
        "wall_s": round(time.perf_counter() - t0, 1), "runs": runs,
    }
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
