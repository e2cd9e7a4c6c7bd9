"""Real-market cycles: per file (default: ../shared/data/*.csv, else examples/data) one cycle with each
position rule (``sign``, the default, and ``zscore``), into a throw-away registry, reporting hold-out
metrics of every family next to the baselines, net of costs, its exposure and long share, and the gate's
verdict (deflated Sharpe, PBO, walk-forward, the checks that failed). Honest figures: whatever they are.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="*")
    ap.add_argument("--cost-bps", type=float, default=None)
    ap.add_argument("--rules", default="sign,zscore", help="position rules to run, comma-separated")
    args = ap.parse_args()
    files = [Path(f) for f in args.files] or sorted((ROOT.parent / "shared" / "data").glob("*.csv")) \
        or sorted((ROOT / "examples" / "data").glob("*.csv"))

    from tideline.config import load_settings
    from tideline.errors import TidelineError
    from tideline.registry import open_registry
    from tideline.training.cycle import CycleRunner

    results = []
    for f, rule in ((f, r) for f in files for r in args.rules.split(",")):
        with tempfile.TemporaryDirectory(prefix="tideline-real-") as tmp:
            s = load_settings(registry=Path(tmp).as_uri(), positions={"rule": rule})
            if args.cost_bps is not None:
                s = s.model_copy(update={"evaluation": s.evaluation.model_copy(update={"cost_bps": args.cost_bps})})
            try:
                res = CycleRunner(s, open_registry(s.registry_uri())).run(str(f))
            except TidelineError as e:
                results.append({"file": f.name, "positions": rule, "error": str(e)})
                continue
            row = {
                "file": f.name, "positions": rule, "bars": res.data["rows"], "holdout": res.data["holdout"],
                "cost_bps": res.data["cost_bps"], "periods_per_year": round(res.data["periods_per_year"], 1),
                "models": {c.family: _m(c.holdout) | _gate(c) for c in res.candidates},
                "baselines": {k: _m(v) for k, v in res.baselines.items()},
                "promoted": res.promoted_version, "wall_s": round(res.timings["total"], 1),
            }
            results.append(row)
    json.dump({"name": "real_data", "results": results}, sys.stdout)
    sys.stdout.write("\n")


def _gate(c) -> dict:  # noqa: ANN001
    """The gate's verdict on one candidate: approved, deflated Sharpe, PBO, walk-forward and the failed checks."""
    ev = c.evidence
    return {"approved": c.decision.approved,
            "deflated_sharpe": None if ev is None else round(ev.deflated_sharpe, 3),
            "pbo": None if ev is None or ev.pbo is None else round(ev.pbo, 3),
            "wf_sharpe_mean": round(c.walk_forward.get("sharpe_mean", float("nan")), 2),
            "p_vs_baseline": None if ev is None or ev.p_value_vs_baseline is None else round(ev.p_value_vs_baseline, 3),
            "failed": [ch.name for ch in c.decision.checks if not ch.passed]}


def _m(m) -> dict:  # noqa: ANN001
    return {"sharpe": round(m.sharpe, 2), "directional_accuracy": round(m.directional_accuracy, 4),
            "max_drawdown": round(m.max_drawdown, 3), "total_return": round(m.total_return, 4),
            "n_trades": m.n_trades, "exposure": round(m.exposure, 2), "long_share": round(m.long_share, 2)}


if __name__ == "__main__":
    main()
