"""Benchmark: the cost of one tuning trial per family (issue 22), on the cycle benchmark's market.

A trial fits the family on every purged walk-forward fold of the development rows (each fold's fit capped at
``training.cv_max_train_rows``) and scores it, exactly as ``--tune N`` does in a cycle; the final fit and
hold-out come once after the search whatever N is. The market is ``bench_cycle.py``'s: 1,000,000 synthetic bars
(20 symbols x 50,000). ``--trials`` (default 2, both complete: the pruner starts after 5) are run per family; the
median seconds of a trial is reported, so a tuned cycle costs about the untuned one plus N times that per family.
Prints one JSON object; ``bench/run_all.py`` collects it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--symbols", type=int, default=20)
    ap.add_argument("--bars", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--trials", type=int, default=2)
    ap.add_argument("--families", default="xgboost,lightgbm,sklearn,torch")
    args = ap.parse_args()

    from tideline.config import load_settings
    from tideline.training.cycle import load_and_validate, make_dataset, plan_windows, tune_family
    from tideline.training.tuning import Tuning

    s = load_settings(training={"seed": args.seed, "tune_trials": args.trials})
    t0 = time.perf_counter()
    bars, _ = load_and_validate(s, synthetic={"n_symbols": args.symbols, "n_bars": args.bars, "seed": args.seed})
    ds = make_dataset(bars, s.features)
    plan = plan_windows(ds, s)
    prep = time.perf_counter() - t0
    per_family = {}
    for fam in args.families.split(","):
        rec: Tuning
        rec, _ = tune_family(fam, ds, plan, s)
        done = sorted(t.seconds for t in rec.trials if t.state == "complete")
        per_family[fam] = {
            "trials": len(rec.trials), "complete": len(done),
            "seconds_per_trial_median": round(statistics.median(done), 2) if done else None,
            "seconds_total": round(rec.seconds, 2), "best_mean_fold_sharpe": round(rec.best_value or 0.0, 3),
        }
        print(json.dumps({fam: per_family[fam]}), file=sys.stderr, flush=True)
    json.dump({
        "name": "tuning", "bars": args.symbols * args.bars, "symbols": args.symbols, "cores": os.cpu_count(),
        "dataset_rows": len(ds), "folds": len(plan.splits), "cv_max_train_rows": s.training.cv_max_train_rows,
        "prepare_s": round(prep, 2), "families": per_family,
    }, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
