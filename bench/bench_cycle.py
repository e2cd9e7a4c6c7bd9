"""Benchmark: one full cycle on 1,000,000 synthetic bars (20 symbols x 50,000) with every model family.

Target (issue 2): <= 120 s wall and <= 4 GiB peak RSS on a 2-core machine.
Prints one JSON object; ``bench/run_all.py`` collects it. Run alone with
``.venv/bin/python bench/bench_cycle.py [--symbols 20 --bars 50000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--symbols", type=int, default=20)
    ap.add_argument("--bars", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--families", default="xgboost,lightgbm,sklearn,torch")
    args = ap.parse_args()

    t0 = time.perf_counter()
    from tideline.config import load_settings
    from tideline.registry import open_registry
    from tideline.training.cycle import CycleRunner

    import_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="tideline-bench-") as tmp:
        s = load_settings(registry=Path(tmp).as_uri())
        s = s.model_copy(update={"training": s.training.model_copy(
            update={"families": args.families.split(","), "seed": args.seed})})
        runner = CycleRunner(s, open_registry(s.registry_uri()))
        t1 = time.perf_counter()
        res = runner.run(synthetic={"n_symbols": args.symbols, "n_bars": args.bars, "seed": args.seed})
        wall = time.perf_counter() - t1
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {
        "name": "cycle",
        "bars": args.symbols * args.bars,
        "symbols": args.symbols,
        "families": args.families.split(","),
        "wall_s": round(wall, 2),
        "import_s": round(import_s, 2),
        "peak_rss_gib": round(peak_kib / 1024**2, 3),
        "cores": os.cpu_count(),
        "stages_s": {k: round(v, 2) for k, v in res.timings.items()},
        "dataset_rows": res.data["dataset_rows"],
        "features": res.data["features"],
        "holdout": {c.family: {"sharpe": round(c.holdout.sharpe, 3),
                               "directional_accuracy": round(c.holdout.directional_accuracy, 4)}
                    for c in res.candidates},
        "promoted": res.promoted_version,
    }
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
