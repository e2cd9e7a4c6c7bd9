"""Run every benchmark (each in its own process, so peak RSS is its own), write bench/results.json and
bench/RESULTS.md (the table docs/benchmarks.md includes)."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = [["bench_cycle.py"], ["bench_drift.py"], ["bench_predictor.py"], ["bench_rollout.py"], ["bench_learning.py"],
           ["bench_learning.py", "--before"], ["bench_learning.py", "--no-flip"],
           ["bench_bars.py"], ["bench_real.py"], ["bench_gate.py"], ["bench_gate.py", "--tune", "20", "--rules", "sign"],
           ["bench_tuning.py"], ["bench_replay.py"], ["bench_rl.py"]]


def run(argv: list[str]) -> list[dict]:
    """Every JSON object line a benchmark printed (one benchmark may report several results), each tagged with the
    command that made it (``bench``) and the day."""
    return [{**r, "bench": " ".join(argv), "date": dt.date.today().isoformat()} for r in _run(argv)]


def _run(argv: list[str]) -> list[dict]:
    p = subprocess.run([sys.executable, str(HERE / argv[0]), *argv[1:]], capture_output=True, text=True)
    if p.returncode != 0:
        return [{"name": argv[0], "error": (p.stderr.strip().splitlines() or ["failed"])[-1]}]
    out = []
    for line in p.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and "name" in obj:
                out.append(obj)
    return out or [{"name": argv[0], "error": "printed no JSON result line"}]


def markdown(meta: dict, results: list[dict]) -> str:
    later = sorted({(r["bench"].split()[0], r["date"]) for r in results
                    if r.get("date") and r.get("bench") and r["date"] != meta["date"]})
    lines = [f"Measured {meta['date']} on {meta['cores']} cores ({meta['machine']}), Python {meta['python']}"
             + "".join(f"; {b} on {d}" for b, d in later) + ".", ""]
    for r in results:
        if r.get("name") == "cycle":
            lines += [
                "| cycle benchmark | value | target |", "|---|---|---|",
                f"| bars (symbols x bars) | {r['bars']:,} ({r['symbols']} x {r['bars'] // r['symbols']:,}) | 1,000,000 |",
                f"| families | {', '.join(r['families'])} | all |",
                f"| wall time | {r['wall_s']} s | <= 120 s |",
                f"| peak RSS | {r['peak_rss_gib']} GiB | <= 4 GiB |",
                f"| dataset | {r['dataset_rows']:,} rows x {r['features']} features | |",
                "", "| stage | seconds |", "|---|---|",
                *[f"| {k} | {v} |" for k, v in r["stages_s"].items()], "",
                "| family | hold-out Sharpe | hold-out dir. accuracy |", "|---|---|---|",
                *[f"| {k} | {v['sharpe']} | {v['directional_accuracy']} |" for k, v in r["holdout"].items()], "",
            ]
        elif r.get("name") == "drift":
            lines += [
                "| drift benchmark | value | target |", "|---|---|---|",
                f"| data | {r['rows']:,} current x {r['features']} features (reference {r.get('reference_rows', r['rows']):,}) | 100k x 50 |",
                f"| drift check (median of 3) | {r['seconds']} s | <= 2 s |",
                f"| recall of shifted columns | {r['recall']} | >= 0.95 |",
                f"| unshifted columns flagged | {r['false_positive_rate']} | <= 0.05 |",
                f"| Evidently HTML report | {r.get('report_html_seconds')} s | |",
                f"| Evidently default DataDriftPreset, same data | {r.get('default_preset_seconds')} s | (for comparison) |",
                "",
            ]
        elif r.get("name") == "predictor":
            lines += [
                "| predictor benchmark (one-row v1 requests, keep-alive, loopback) | value | target |",
                "|---|---|---|",
                f"| tideline predictor p50 / p99 | {r['p50_ms']} ms / {r['p99_ms']} ms | |",
                f"| floor: bare kserve.Model returning a constant, p50 / p99 | {r['floor_p50_ms']} ms / {r['floor_p99_ms']} ms | |",
                f"| p50 ratio to the floor | {r['ratio_p50']} | <= 1.5 |",
                f"| batch throughput ({r['batch_rows']} rows/request) | {r['rows_per_s']:,} rows/s (floor "
                f"{r['floor_rows_per_s']:,}) = {r.get('batch_ratio', 0)}x the floor | >= {r.get('goal_batch_ratio', 0.8)}x |",
                f"| one {r['batch_rows']}-row body, in process: JSON parse (the floor's work) / parse and validation "
                f"in one pass (ours) | {r.get('batch_parse_ms', '-')} ms / {r.get('batch_one_pass_ms', '-')} ms | |",
                f"| the same body on the row path (a body the one pass does not take): validation after the parse | "
                f"{r.get('batch_validate_ms', '-')} ms | |",
                f"| model | {r['model']} | |",
                "| one-row model call alone, in process (lightgbm / xgboost / sklearn) | "
                + " / ".join(f"{v} us" for v in (r.get("one_row_predict_us_by_family") or {}).values())
                + " | |",
                "",
            ]
        elif r.get("name") == "router":
            lines += [
                "| router benchmark | value | target |", "|---|---|---|",
                f"| p50 added by the local router | {r['overhead_p50_ms']} ms (direct {r['direct_p50_ms']} ms, routed {r['routed_p50_ms']} ms) | <= 1 ms |",
                "",
            ]
        elif r.get("name") == "rollback":
            lines += [
                "| time to rollback (bad candidate, real processes) | value | target |", "|---|---|---|",
                f"| analysis interval | {r['interval_s']} s | |",
                f"| first bad response -> rolled back | {r['seconds_to_rollback']} s = {r['intervals_to_rollback']} intervals | <= 3 intervals |",
                f"| 5xx seen by clients during the switch | {r['client_5xx']} of {r['client_requests']} | 0 |",
                "",
            ]
        elif r.get("name") == "learning_no_flip":
            lines += [
                f"| the same market without the flip (`bench_learning.py --no-flip`, seed {r['seed']}, "
                f"{r['live_bars']} live bars) | value |", "|---|---|",
                f"| retrains after the first model | {r['retrains_after_the_first_model']} |",
                f"| decay triggers | {r['decay_triggers']} |",
                f"| change points the live detectors found (none move the training window without a trigger) | "
                f"{r.get('change_points')} ({', '.join(f'{k}: {v}' for k, v in r.get('change_points_by_detector', {}).items())}) |",
                "",
            ]
        elif r.get("name") == "learning":
            before = " as before issue 23 (`--before`)" if "recalibrate" in (r.get("settings") or {}) else ""
            lines += [
                f"| learning quality (`tideline demo`{before}, seed {r['seed']}: {r['symbols']} symbols, "
                f"{r['live_bars']} live bars, signal flips at bar {r['shift_at_bar']}) | value |", "|---|---|",
                f"| story complete (decay triggered a retrain, promoted through a rollout, stood the guard's watch, "
                f"broken candidate rolled back, 0 5xx, nothing lost) | "
                f"{'yes' if r['story_ok'] else 'NO: ' + ', '.join(r['failed_checks'])} |",
                f"| directional accuracy before the shift | {r['pre_shift_accuracy']} |",
                f"| after the shift: continuously retrained system / static v1 | {r['post_shift_live_accuracy']} / "
                f"{r['post_shift_static_accuracy']} |",
                *[f"| {w['label']}: retrained / static | {w['live']} / {w['static']} |" for w in r["windows"]],
                f"| bars until the trailing {r['window_bars']}-bar accuracy is within {r['tolerance']} of the pre-shift level | "
                f"{r['recovery_bars']} |",
                *[f"| retrain {k + 1}: bars after the shift, gate, promoted family | "
                  f"{'-' if t['bars_after_shift'] is None else t['bars_after_shift']}, {t['decision']}, "
                  f"{t['best_family'] or '-'} |" for k, t in enumerate(r.get("retrains", []))],
                *[f"| rollout of the {o['label']} candidate: path, intervals to its decision | "
                  f"{' -> '.join(o['path'])}, {o['intervals_to_decision']} |" for o in r.get("rollouts", [])],
                f"| pipeline runs (seconds each) | {r['pipeline_runs']} ({', '.join(map(str, r['pipeline_run_s']))}) |",
                f"| loop ticks (every decision is `tideline loop`'s) | {r.get('loop_ticks')} |",
                f"| whole story, wall time | {r['wall_s']} s |",
                "",
            ]
        elif r.get("name") == "real_data":
            lines += ["| data (costs, positions) | model / baseline | hold-out Sharpe | dir. acc. | max DD | total return | "
                      "trades | exposure | long share | WF Sharpe | deflated Sharpe | PBO | p vs best baseline | gate |",
                      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
            seen: set[str] = set()
            for f in r["results"]:
                if "error" in f:
                    if f["file"] not in seen:
                        lines.append(f"| {f['file']} | refused: {f['error']} |" + " |" * 12)
                    seen.add(f["file"])
                    continue
                # the baselines hold the same positions whatever the models' rule: shown once per file
                base = {} if f["file"] in seen else {f"*{k}*": v for k, v in f["baselines"].items()}
                seen.add(f["file"])
                for name, m in {**f["models"], **base}.items():
                    gate = ("" if "approved" not in m else "approved" if m["approved"]
                            else "rejected: " + ", ".join(m["failed"]))
                    lines.append(f"| {f['file']} ({f['cost_bps']} bps, {f.get('positions', 'sign')}) | {name} | "
                                 f"{m['sharpe']} | {m['directional_accuracy']} | {m['max_drawdown']} | "
                                 f"{m['total_return']} | {m['n_trades']} | {_cell(m.get('exposure'))} | "
                                 f"{_cell(m.get('long_share'))} | {_cell(m.get('wf_sharpe_mean'))} | "
                                 f"{_cell(m.get('deflated_sharpe'))} | {_cell(m.get('pbo'))} | "
                                 f"{_cell(m.get('p_vs_baseline'))} | {gate} |")
                lines.append(f"| {f['file']} ({f.get('positions', 'sign')}) | promoted | {f['promoted'] or 'nothing'} |"
                             + " |" * 11)
            lines.append("")
        elif r.get("name") == "bars":
            lines += [
                "| bars in, position out (bench_bars.py) | value | target |", "|---|---|---|",
                f"| one request: {r['symbols']} symbols x {r['bars_per_symbol']} bars ({r['body_mib']} MiB), "
                f"features by the version's config, p50 / p99 | {r['p50_ms']} ms / {r['p99_ms']} ms | p50 <= 50 ms |",
                "| in process: parse and validate the bars / features / whole request | "
                f"{r['in_process_ms']['parse_and_validate_bars']} / {r['in_process_ms']['features']} / "
                f"{r['in_process_ms']['whole_request']} ms | |",
                "",
            ]
        elif r.get("name") == "gate":
            lines += [
                f"| the gate with trained models (bench_gate.py), positions: {r.get('positions', 'sign')}"
                + (f" ({r['note']})" if r.get("note") else "") + " | value | target |",
                "|---|---|---|",
                f"| market | {r['symbols']} symbols x {r['bars']:,} daily bars, 20% hold-out, {r['cost_bps']} bp costs, "
                f"{', '.join(r['families'])}{' and their ensemble' if r.get('ensemble') else ''}"
                + (f", each family tuned with {r['tune_trials']} Optuna trials (every trial counted in the deflated "
                   f"Sharpe)" if r.get("tune_trials") else "") + " | the issue's |",
                f"| pure noise: seeds with a promotion | {r['noise_approved']} of {r['seeds']} | <= 1 of 20 |",
                f"| planted signal (strength {r['strength']}): seeds with a promotion | {r['signal_approved']} of "
                f"{r['seeds']} | >= 16 of 20 |",
                f"| planted signal: median net hold-out Sharpe, ideal strategy / best trained family | "
                f"{r['signal_ideal_sharpe_median']} / {r['signal_best_sharpe_median']} | about 3 |",
                f"| wall time | {r['wall_s']} s | |",
                "",
            ]
        elif r.get("name") == "tuning":
            lines += [
                f"| one tuning trial per family (bench_tuning.py): {r['bars']:,} bars ({r['dataset_rows']:,} rows), "
                f"{r['folds']} purged folds, fold fits capped at {r['cv_max_train_rows']:,} rows | seconds per trial "
                "(median) | trials run |", "|---|---|---|",
                *[f"| {fam} | {v['seconds_per_trial_median']} s | {v['complete']} of {v['trials']} |"
                  for fam, v in r["families"].items()],
                "",
            ]
        elif r.get("name") == "replay":
            lines += [
                "| `tideline replay` (bench_replay.py) | value | target |", "|---|---|---|",
                f"| data | {r['data']}: {r['bars']:,} bars {r['start']} .. {r['end']}, replayed from "
                f"{r['replay_start']} | 20 years of daily bars, one index |",
                f"| families / policies | {', '.join(r['families'])} / {', '.join(r['policies'])} | the issue's |",
                f"| wall time | {r['wall_s']} s | <= {r['goal_s']} s |",
                f"| peak RSS | {r['peak_rss_gib']} GiB | |",
                *[f"| {k}: seconds, ticks, retrains, promotions | {v['seconds']} s, {v['ticks']}, {v['retrains']}, "
                  f"{v['promotions']}" + "".join(f", {n} {w}" for w, n in (v.get("not_run") or {}).items())
                  + " | |" for k, v in r["per_policy"].items()],
                "",
            ]
        elif r.get("name") == "rl_train":
            lines += [
                "| the rl family (bench_rl.py) | value | target |", "|---|---|---|",
                f"| training the policy: {r['rows']:,} rows x {r['features']} features, {r['timesteps']:,} environment "
                f"steps | {r['fit_s']} s | <= {r['goal_s']} s |",
                f"| one-row model call, rl policy / torch network | {r['one_row_predict_us']['rl']} us / "
                f"{r['one_row_predict_us']['torch']} us | rl <= torch |",
                "",
            ]
        elif r.get("name") == "rl_gate":
            lines += [
                "| the rl family against the gate (bench_rl.py) | value | target |", "|---|---|---|",
                f"| market | {r['symbols']} symbols x {r['bars']:,} daily bars (the gate benchmark's), 1 bp costs | |",
                f"| planted signal (strength {r['strength']}): hold-out net Sharpe beats every baseline | "
                f"{r['signal_beats_baselines']} of {r['seeds']} seeds | >= 80% |",
                f"| planted signal: promoted by the gate / median hold-out Sharpe | {r['signal_approved']} of "
                f"{r['seeds']} / {r['signal_sharpe_median']} | |",
                f"| pure noise: promoted by the gate | {r['noise_approved']} of {r['seeds']} | none (<= 1 of 20) |",
                f"| wall time | {r['wall_s']} s | |",
                "",
            ]
        elif r.get("name") == "rl_warm_start":
            lines += [
                "| rl warm start (bench_rl.py): steps to reach the cold start's final figure on the later rows | "
                "cold | warm |", "|---|---|---|",
                *[f"| seed {x['seed']} (cold final {x['cold_final_bps']} bps per row) | "
                  f"{x['steps_to_cold_final']['cold']:,} | {x['steps_to_cold_final']['warm']:,} |"
                  if x["steps_to_cold_final"]["warm"] is not None else
                  f"| seed {x['seed']} (cold final {x['cold_final_bps']} bps per row) | "
                  f"{x['steps_to_cold_final']['cold']:,} | not reached |" for x in r["runs"]],
                "",
            ]
            if r.get("after_flip"):
                lines += [
                    "| rl warm start after a flip of the signal (bench_rl.py): steps to the cold start's final figure, "
                    "and the best checked figure | cold | warm (as decided) | warm forced on |", "|---|---|---|---|",
                    *[f"| seed {x['seed']} (cold final {x['cold_final_bps']} bps per row; "
                      + ("warm start declined: " + str((x.get('warm_start') or {}).get('why_not'))
                         if (x.get('warm_start') or {}).get('why_not') else "warm start kept") + ") | "
                      + " | ".join(f"{_steps(x['steps_to_cold_final'][k])}, best {x['best_bps'][k]} bps"
                                   for k in ("cold", "warm", "forced")) + " |" for x in r["after_flip"]],
                    "",
                ]
        elif "error" in r:
            lines += [f"{r['name']}: failed: {r['error']}", ""]
    return "\n".join(lines)


def _steps(n: int | None) -> str:
    return "not reached" if n is None else f"{n:,} steps"


def _cell(v: object) -> str:
    return "" if v is None else str(v)


def main() -> None:
    """All benchmarks; ``--only FILE ...`` re-runs those (e.g. ``bench_rl.py``) and keeps the other results."""
    meta = {"date": dt.date.today().isoformat(), "cores": os.cpu_count(), "machine": platform.machine(),
            "python": platform.python_version()}
    only = sys.argv[sys.argv.index("--only") + 1:] if "--only" in sys.argv else None
    if only is None:
        results = [r for b in BENCHES for r in run(b)]
    else:
        chosen = [b for b in BENCHES if b[0] in only]
        if not chosen:
            raise SystemExit(f"no benchmark named {only}; known: {sorted({b[0] for b in BENCHES})}")
        old = json.loads((HERE / "results.json").read_text())
        meta = old["meta"]
        tags = {" ".join(b) for b in chosen}
        new = [r for b in chosen for r in run(b)]
        names = {r.get("name") for r in new}

        def replaced(r: dict) -> bool:  # an older result of these: tagged with its command, or untagged (older
            return r.get("bench") in tags or (r.get("bench") is None and r.get("name") in names)  # runs) and named so

        first = next((i for i, r in enumerate(old["results"]) if replaced(r)), len(old["results"]))
        kept = [r for r in old["results"] if not replaced(r)]
        at = sum(1 for r in old["results"][:first] if not replaced(r))
        results = kept[:at] + new + kept[at:]  # in the place of the results they replace
    (HERE / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    md = markdown(meta, results)
    (HERE / "RESULTS.md").write_text(md + "\n")
    doc = HERE.parent / "docs" / "benchmarks.md"
    text = doc.read_text()
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    if start in text and end in text:  # the docs page shows the latest measured table
        head, rest = text.split(start, 1)
        doc.write_text(head + start + "\n" + md + "\n" + end + rest.split(end, 1)[1])
    print(md)


if __name__ == "__main__":
    main()
