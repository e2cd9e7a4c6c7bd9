"""Learning quality on the synthetic regime shift: the full ``tideline demo`` story (``tideline loop`` ticks,
real pipeline runs, predictor processes, router, controller), measured from its prediction log. Prints one
JSON line.

Reported: directional accuracy before the shift; after it, of the continuously retrained system (what the
clients were answered with) and of the static model (v1 never replaced, predicted on the same rows);
the same per window of ``window_bars`` bars after the shift; the bars until the system's trailing
``window_bars``-bar accuracy is back within 2 points of its pre-shift level; and the story's timing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--short", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from tideline.app.demo import DemoConfig, run_demo

    cfg = DemoConfig.short(args.seed) if args.short else DemoConfig(seed=args.seed)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tideline-bench-learning-") as tmp:
        res = run_demo(cfg, Path(tmp) / "demo")
    rec = res.record
    ev = rec["events"]

    def first(kind: str, prefix: str = "") -> float | None:
        return next((e["wall"] for e in ev if e["kind"] == kind and e["text"].startswith(prefix)), None)

    out = {
        "name": "learning",
        "seed": args.seed,
        "story_ok": res.ok,
        "failed_checks": [c["name"] for c in res.checks if not c["ok"]],
        "wall_s": round(time.perf_counter() - t0, 1),
        "symbols": cfg.symbols, "bars": cfg.bars, "live_bars": len(rec["live"]), "shift_at_bar": cfg.shift_at,
        "families": list(cfg.families),
        **{k: rec["learning"].get(k) for k in ("window_bars", "tolerance", "pre_shift_accuracy",
                                               "post_shift_live_accuracy", "post_shift_static_accuracy",
                                               "recovery_bars", "windows")},
        "pipeline_runs": len(rec.get("retrains", [])),
        "pipeline_run_s": [r["seconds"] for r in rec.get("retrains", [])],
        "seconds_to_trigger": first("trigger", "performance_decay"),
        "seconds_to_promotion": first("promoted", "retrained"), "seconds_to_rollback": first("rolled_back", "broken"),
        "loop_ticks": rec.get("loop_ticks"),
        "cores": os.cpu_count(),
    }
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
