"""The reliability table: faults, bad input and attacks, each tried many times, and what was lost.

Runs every scenario module of ``tests/reliability/`` in its own process (a crash or a leaked server in one
cannot spoil another) and collects their rows (see ``tests/reliability/__init__.py`` for the row contract).
A full run of every module writes the record ``docs/reliability.json`` and the table of the docs page
``docs/reliability.md`` between ``<!-- reliability:start -->`` and ``<!-- reliability:end -->``; the table is
printed in every case. Exits 1 when any scenario failed a check or lost anything. The test suite runs the
same modules in their reduced form (``tests/reliability/test_scenarios.py``).

    python tests/reliability/run.py              # full stress (make reliability), several minutes
    python tests/reliability/run.py --quick      # the reduced form the tests run
    python tests/reliability/run.py --only registry,outage
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent  # on the children's sys.path: ``import reliability.<module>``
ROOT = TESTS.parent
DOC = ROOT / "docs" / "reliability.md"  # the docs page that shows the table (make docs)
RECORD = ROOT / "docs" / "reliability.json"  # the rows behind that table
START, END = "<!-- reliability:start -->", "<!-- reliability:end -->"
MODULES = ["registry", "outage", "controller", "predictor", "inputs", "security"]
AREAS = ["Faults", "Bad input", "Security"]
KEYS = {"area", "scenario", "times", "unit", "result", "lost", "ok", "seconds"}
ROW_PREFIX = "@@row "

# The child: import one scenario module, run it, print each row on its own marked line.
CHILD = f"""
import json, sys
from pathlib import Path
from reliability.{{module}} import scenarios
for row in scenarios(quick={{quick}}, work=Path({{work!r}})):
    print({ROW_PREFIX!r} + json.dumps(row, default=str), flush=True)
"""


def _failed_row(module: str, why: str, seconds: float) -> dict[str, Any]:
    return {"area": "Faults", "scenario": f"{module}: the scenario module did not finish", "times": 0,
            "unit": "runs", "result": why, "lost": None, "ok": False, "seconds": round(seconds, 1)}


def check_row(module: str, row: Any) -> dict[str, Any]:
    """A row as the contract says, or a failed row naming what is wrong with it."""
    if not isinstance(row, dict) or set(row) != KEYS:
        got = sorted(row) if isinstance(row, dict) else type(row).__name__
        return _failed_row(module, f"malformed row (keys {got})", 0.0)
    if row["area"] not in AREAS or not isinstance(row["times"], int) or not isinstance(row["ok"], bool):
        return _failed_row(module, f"malformed row {row!r:.200}", 0.0)
    return row


def run_module(module: str, quick: bool, timeout_s: float) -> list[dict[str, Any]]:
    """Every row one module reports; a failed row when it crashed, hung or reported nothing."""
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"tideline-rel-{module}-") as work:
        code = CHILD.format(module=module, quick=quick, work=work)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
        try:
            p = subprocess.run([sys.executable, "-c", code], cwd=TESTS, env=env, capture_output=True, text=True,
                               timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return [_failed_row(module, f"timed out after {timeout_s:.0f} s", time.monotonic() - t0)]
    rows = [check_row(module, json.loads(line[len(ROW_PREFIX):]))
            for line in p.stdout.splitlines() if line.startswith(ROW_PREFIX)]
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["no output"])[-1]
        rows.append(_failed_row(module, f"exit {p.returncode}: {last[:300]}", time.monotonic() - t0))
    elif not rows:
        rows.append(_failed_row(module, "reported no rows", time.monotonic() - t0))
    return rows


def _lost(row: dict[str, Any]) -> str:
    return "?" if row["lost"] is None else f"{row['lost']:,}"


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The table docs/reliability.md shows: what was tried, how many times, what happened, what was lost."""
    n_ok = sum(1 for r in rows if r["ok"] and r["lost"] == 0)
    lines = [f"Measured {meta['date']} on {meta['cores']} cores ({meta['machine']}), "
             f"{'reduced (--quick)' if meta['quick'] else 'full'} run, {meta['wall_s']:.0f} s: "
             f"**{n_ok} of {len(rows)} scenarios held**, "
             f"{sum(r['lost'] or 0 for r in rows)} things lost.", "",
             "| area | what was tried | times | what happened | lost | ok |", "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: AREAS.index(r["area"])):
        result = str(r["result"]).replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {r['area']} | {r['scenario']} | {r['times']:,} {r['unit']} | {result} | {_lost(r)} | "
                     f"{'yes' if r['ok'] and r['lost'] == 0 else '**NO**'} |")
    return "\n".join(lines) + "\n"


def write_doc(table: str, doc: Path = DOC) -> bool:
    """Replace the docs page's block between the markers; False when the markers are missing."""
    text = doc.read_text()
    if START not in text or END not in text:
        return False
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{START}\n{table}{END}{tail}")
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the reduced form (what CI runs)")
    ap.add_argument("--only", default="", help=f"comma-separated modules out of {','.join(MODULES)}")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON record (default: docs/reliability.json for a full run of every module, else none)")
    ap.add_argument("--doc", "--readme", dest="doc", action=argparse.BooleanOptionalAction, default=None,
                    help="write the table into docs/reliability.md (default: only for a full run of every module)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per module (default 300 quick, 1800 full)")
    args = ap.parse_args(argv)
    modules = [m for m in args.only.split(",") if m] or MODULES
    unknown = sorted(set(modules) - set(MODULES))
    if unknown:
        ap.error(f"unknown module(s) {', '.join(unknown)}; choose from {', '.join(MODULES)}")
    timeout = args.timeout or (300.0 if args.quick else 1800.0)

    t0 = time.monotonic()
    rows: list[dict[str, Any]] = []
    for module in modules:
        t = time.monotonic()
        got = run_module(module, args.quick, timeout)
        rows += got
        bad = sum(1 for r in got if not r["ok"] or r["lost"] != 0)
        print(f"{module}: {len(got)} scenarios, {bad} failed, {time.monotonic() - t:.0f} s", file=sys.stderr)
    meta = {"date": dt.date.today().isoformat(), "cores": os.cpu_count(), "machine": platform.machine(),
            "python": platform.python_version(), "quick": args.quick, "modules": modules,
            "wall_s": round(time.monotonic() - t0, 1)}
    full = not args.quick and modules == MODULES
    out = args.out or (RECORD if full else None)
    if out is not None:
        out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    table = markdown(meta, rows)
    print(table)
    doc = args.doc if args.doc is not None else full
    if doc and not write_doc(table):
        print(f"{DOC.relative_to(ROOT)} has no {START} / {END} block; table not written there", file=sys.stderr)
    return 0 if all(r["ok"] and r["lost"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
