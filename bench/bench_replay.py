"""``tideline replay`` at the issue's size (issue 21): 20 years of daily bars of one index
(``synthetic_market(1, 5040, freq="B")``, 2004 on; or the bars of ``--data``), ``--families lightgbm,xgboost
--policies static,monthly``, in process, into a throw-away home. Target: <= 5 minutes on 2 cores.

Prints one JSON object: wall time, peak RSS, per-policy seconds, ticks, retrains, promotions and net figures.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", help="bars to replay instead of the synthetic 20-year index")
    ap.add_argument("--bars", type=int, default=5040, help="daily bars of the synthetic index (20 years: 5040)")
    ap.add_argument("--families", default="lightgbm,xgboost")
    ap.add_argument("--policies", default="static,monthly")
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()

    from tideline.app.replay import ReplayConfig, run_replay
    from tideline.config import load_settings
    from tideline.data import load_bars, validate_bars
    from tideline.data.synthetic import synthetic_market

    if args.data:
        bars = validate_bars(load_bars(args.data), mode="strict").clean
    else:
        bars = synthetic_market(1, args.bars, seed=args.seed, freq="B", start="2004-01-01")
    with tempfile.TemporaryDirectory(prefix="tideline-bench-replay-") as tmp:
        s = load_settings(home=tmp)
        s = s.model_copy(update={"training": s.training.model_copy(
            update={"families": args.families.split(","), "seed": args.seed})})
        cfg = ReplayConfig(policies=tuple(args.policies.split(",")))
        t0 = time.perf_counter()
        res = run_replay(bars, s, cfg, Path(tmp) / "replay")
        wall = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    d = res.data
    json.dump({
        "name": "replay", "data": args.data or f"synthetic_market(1, {args.bars}, seed={args.seed}, freq='B')",
        "bars": d["bars"], "start": d["start"][:10], "end": d["end"][:10], "replay_start": d["replay_start"][:10],
        "families": d["families"], "policies": list(cfg.policies), "wall_s": round(wall, 1),
        "peak_rss_gib": round(peak_kib / 1024**2, 3), "goal_s": 300,
        "buy_and_hold": {k: round(v, 4) for k, v in res.buy_and_hold.items()},
        "per_policy": {k: {"seconds": round(p.seconds, 1), "ticks": p.ticks, "retrains": p.retrains,
                           "promotions": p.promotions, "not_run": p.retrains_not_run, "first_not_run": p.first_not_run,
                           "total_return": round(p.metrics["total_return"], 4),
                           "sharpe": round(p.metrics["sharpe"], 3)}
                       for k, p in res.policies.items()},
    }, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
