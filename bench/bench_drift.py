"""Benchmark: feature drift check on 100,000 current x 50 features against a reference of the same size.

Half of the columns get a known, realistic shift (mean +0.2..0.5 std, scale x1.3..1.5, or both, or a
heavier tail); the other half are new draws from the same distributions. Reports the check's time
(median of 3, Evidently imported beforehand), recall of the shifted columns, the share of unshifted
columns flagged, the time of the HTML report path and, for comparison, Evidently's default
``DataDriftPreset`` on the same data (run once).

Target: <= 2 s, recall >= 0.95, false-positive rate <= 5%.
Prints one JSON object; ``bench/run_all.py`` collects it. Run alone with
``.venv/bin/python bench/bench_drift.py [--rows 100000 --features 50 --no-preset]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.signal import lfilter


def make_data(rows: int, features: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Reference and current frames with shifts injected into every other column; returns the shifted names."""
    rng = np.random.default_rng(seed)
    kinds = ["normal", "student_t", "lognormal", "uniform", "ar1", "discrete"]
    ref: dict[str, np.ndarray] = {}
    cur: dict[str, np.ndarray] = {}
    shifted: list[str] = []
    shift_kinds = ["mean", "scale", "mean+scale", "tail"]

    def draw(kind: str, n: int) -> np.ndarray:
        if kind == "normal":
            return rng.standard_normal(n)
        if kind == "student_t":
            return rng.standard_t(4, n)
        if kind == "lognormal":
            return rng.lognormal(0.0, 0.5, n)
        if kind == "uniform":
            return rng.uniform(-1, 1, n)
        if kind == "ar1":  # autocorrelated like a rolling-window feature (unit variance)
            return lfilter([np.sqrt(1 - 0.81)], [1.0, -0.9], rng.standard_normal(n))
        return rng.integers(0, 5, n).astype(float)  # discrete, 5 levels

    for j in range(features):
        kind = kinds[(j // 2) % len(kinds)]  # every kind appears shifted and unshifted
        name = f"f{j:02d}_{kind}"
        r = draw(kind, rows)
        c = draw(kind, rows)
        if j % 2 == 1:
            sk = shift_kinds[int(rng.integers(len(shift_kinds)))]
            sd = float(np.std(r))
            m = float(np.mean(r))
            if kind == "discrete":  # move probability mass to the top level
                move = rng.random(rows) < 0.2
                c = np.where(move, 4.0, c)
            elif sk == "mean":
                c = c + rng.uniform(0.2, 0.5) * sd
            elif sk == "scale":
                c = m + (c - m) * rng.uniform(1.3, 1.5)
            elif sk == "mean+scale":
                c = m + (c - m) * 1.3 + 0.2 * sd
            else:  # heavier tails: a fifth of the rows get 2.5x the spread
                wide = rng.random(rows) < 0.2
                c = np.where(wide, m + (c - m) * 2.5, c)
            name = f"{name}_shift_{sk if kind != 'discrete' else 'mass'}"
            shifted.append(name)
        ref[name], cur[name] = r.astype(np.float32), c.astype(np.float32)
    return pd.DataFrame(ref), pd.DataFrame(cur), shifted


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--features", type=int, default=50)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-preset", action="store_true", help="skip Evidently's DataDriftPreset (slow)")
    args = ap.parse_args()

    ref, cur, shifted = make_data(args.rows, args.features, args.seed)
    t0 = time.perf_counter()
    import evidently  # noqa: F401 - timed separately: one-off cost of a process

    from tideline.config import DriftConfig
    from tideline.monitoring.drift import check_drift, drift_report_html

    import_s = time.perf_counter() - t0
    cfg = DriftConfig()
    times = []
    res = None
    for _ in range(3):
        t1 = time.perf_counter()
        res = check_drift(ref, cur, cfg=cfg)
        times.append(time.perf_counter() - t1)
    assert res is not None
    flagged = {c.column for c in res.columns if c.drifted}
    unshifted = [c for c in ref.columns if c not in shifted]
    recall = len(flagged & set(shifted)) / len(shifted)
    fpr = len(flagged & set(unshifted)) / len(unshifted)
    methods = sorted({c.method for c in res.columns})

    with tempfile.TemporaryDirectory(prefix="tideline-bench-drift-") as tmp:
        t2 = time.perf_counter()
        rep = drift_report_html(ref, cur, Path(tmp) / "report.html", cfg=cfg)
        report_s = time.perf_counter() - t2
        html_bytes = (Path(tmp) / "report.html").stat().st_size
    rep_flagged = {c.column for c in rep.columns if c.drifted}

    preset_s = None
    preset_share = None
    if not args.no_preset:
        from evidently import Report
        from evidently.presets import DataDriftPreset

        t3 = time.perf_counter()
        snap = Report([DataDriftPreset()]).run(cur, ref)
        preset_s = time.perf_counter() - t3
        for m in snap.dict()["metrics"]:
            if "DriftedColumnsCount" in m["metric_name"]:
                preset_share = m["value"]["share"]

    out = {
        "name": "drift",
        "rows": args.rows,
        "reference_rows": len(ref),
        "features": args.features,
        "shifted_columns": len(shifted),
        "sample_size": cfg.sample_size,
        "methods": methods,
        "seconds": round(statistics.median(times), 3),
        "seconds_runs": [round(t, 3) for t in times],
        "recall": round(recall, 4),
        "false_positive_rate": round(fpr, 4),
        "dataset_drifted": res.dataset_drifted,
        "drifted_share": round(res.drifted_share, 4),
        "report_html_seconds": round(report_s, 2),
        "report_sample_size": cfg.report_sample_size,
        "report_html_bytes": html_bytes,
        "report_recall": round(len(rep_flagged & set(shifted)) / len(shifted), 4),
        "report_false_positive_rate": round(len(rep_flagged & set(unshifted)) / len(unshifted), 4),
        "default_preset_seconds": None if preset_s is None else round(preset_s, 2),
        "default_preset_drifted_share": preset_share,
        "evidently_import_s": round(import_s, 2),
        "cores": os.cpu_count(),
    }
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
