"""Learning quality on the synthetic regime shift: the full ``tideline demo`` story (``tideline loop`` ticks,
real pipeline runs, predictor processes, router, controller), measured from its prediction log. Prints one
JSON line.

Reported: directional accuracy before the shift; after it, of the continuously retrained system (what the
clients were answered with) and of the static model (v1 never replaced, predicted on the same rows);
the same per window of ``window_bars`` bars after the shift; the bars until the system's trailing
``window_bars``-bar accuracy is back within 2 points of its pre-shift level; each retrain (the bar after the
shift it ran at, the gate's decision, the family promoted); each rollout's path and the analysis intervals to
its decision; and the story's timing. ``--no-flip``: the same market without the flip (the false alarms: retrains,
decay triggers, distinct change points the live detectors found). ``--before``: the demo's settings before
issue 23, for the comparison.
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
    ap.add_argument("--no-flip", action="store_true",
                    help="the same market without the flip: count the retrains the loop starts anyway")
    ap.add_argument("--superiority-alpha", type=float, default=None,
                    help="end a rollout early for a clearly better candidate (DemoConfig.superiority_alpha)")
    ap.add_argument("--window-from", choices=("detection", "start"), default=None,
                    help="count the new regime's bars from the change's detection or its estimated start")
    ap.add_argument("--min-window-bars", type=int, default=None, help="DemoConfig.min_window_bars")
    ap.add_argument("--before", action="store_true",
                    help="the demo as it was before issue 23: the window counted from the change's detection, "
                         "200 bars of it, no recalibrated candidate, no early end, canary 10/25/50%%")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from tideline.app.demo import DemoConfig, run_demo

    cfg = DemoConfig.short(args.seed) if args.short else DemoConfig(seed=args.seed)
    import dataclasses

    changes = {k: v for k, v in (("flip", False if args.no_flip else None),
                                 ("superiority_alpha", args.superiority_alpha), ("window_from", args.window_from),
                                 ("min_window_bars", args.min_window_bars)) if v is not None}
    if args.before:
        changes = {"window_from": "detection", "min_window_bars": 200, "recalibrate": False,
                   "superiority_alpha": None, "canary_steps": (10, 25, 50, 100), **changes}
    cfg = dataclasses.replace(cfg, **changes)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tideline-bench-learning-") as tmp:
        res = run_demo(cfg, Path(tmp) / "demo")
    rec = res.record
    ev = rec["events"]

    def first(kind: str, prefix: str = "") -> float | None:
        return next((e["wall"] for e in ev if e["kind"] == kind and e["text"].startswith(prefix)), None)

    if args.no_flip:
        runs = rec.get("retrains", [])
        json.dump({"name": "learning_no_flip", "seed": args.seed, "symbols": cfg.symbols, "live_bars": len(rec["live"]),
                   "wall_s": round(time.perf_counter() - t0, 1),
                   "pipeline_runs": len(runs), "retrains_after_the_first_model": max(len(runs) - 1, 0),
                   "decay_triggers": sum(e["kind"] == "trigger" and "performance_decay" in e["text"] for e in ev),
                   "change_points": len(rec.get("change_points", [])),
                   "change_points_by_detector": _by_detector(rec.get("change_points", [])),
                   "loop_ticks": rec.get("loop_ticks")}, sys.stdout)
        sys.stdout.write("\n")
        return
    out = {
        "name": "learning",
        "seed": args.seed,
        **({"settings": {k: list(v) if isinstance(v, tuple) else v for k, v in changes.items()}} if changes else {}),
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
        "retrains": [_retrain(r, rec) for r in rec.get("retrains", [])],
        "seconds_to_trigger": first("trigger", "performance_decay"),
        "seconds_to_promotion": first("promoted", "retrained"), "seconds_to_rollback": first("rolled_back", "broken"),
        "loop_ticks": rec.get("loop_ticks"),
        "change_points": len(rec.get("change_points", [])),
        "change_points_by_detector": _by_detector(rec.get("change_points", [])),
        "rollouts": [_rollout(r, cfg.interval_bars) for r in rec.get("rollouts", [])],
        "cores": os.cpu_count(),
    }
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


def _by_detector(cps: list[dict]) -> dict[str, int]:
    """Distinct change points found (each is reported by every later tick: counted once) per detector/series."""
    out: dict[str, int] = {}
    for c in cps:
        k = f"{c['detector']} on {c['series']}"
        out[k] = out.get(k, 0) + 1
    return dict(sorted(out.items()))


def _retrain(r: dict, rec: dict) -> dict:
    """One pipeline run of the story: the bar (counted from the shift) it ran at, its gate's decision and the
    family of the best approved candidate."""
    import pandas as pd

    after = None
    if r.get("bar_time"):
        times = [pd.Timestamp(x["time"]).tz_localize(None) for x in rec["live"]]
        shift = pd.Timestamp(rec["market"]["shift_times"][0]).tz_localize(None) if rec["market"]["shift_times"] \
            else None
        at = pd.Timestamp(r["bar_time"]).tz_localize(None)
        if shift is not None:
            after = sum(shift <= t <= at for t in times)
    best = r.get("best") or {}
    return {"bars_after_shift": after, "decision": r.get("decision"), "best_family": best.get("family"),
            "best_version": best.get("version"), "reasons": r.get("reasons")}


def _rollout(r: dict, interval_bars: int) -> dict:
    """One rollout of the story: its path through the phases, and the bars (and analysis intervals) from its
    start to its decision (the step that entered Promoting, RolledBack or Reverted... or the last one)."""
    import pandas as pd

    steps = r.get("steps") or []
    path = [f"{s['phase']}{' ' + str(s['weight']) + '%' if s['weight'] else ''}" for s in steps]
    end = next((s for s in steps if s["phase"] in ("Promoting", "Promoted", "Watching", "RolledBack")),
               steps[-1] if steps else None)
    bars = None
    if steps and end is not None:
        bars = int((pd.Timestamp(end["time"]) - pd.Timestamp(steps[0]["time"])) / pd.Timedelta(hours=1))
    return {"label": r.get("label"), "phase": r.get("phase"), "path": path, "bars_to_decision": bars,
            "intervals_to_decision": None if bars is None else round(bars / interval_bars)}


if __name__ == "__main__":
    main()
