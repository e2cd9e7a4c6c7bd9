"""Run a command that prints a Kubeflow Pipelines run id (``tideline pipeline submit ...``), then wait for that
run to finish; exit 0 only when it SUCCEEDED.

    python scripts/kfp_wait.py --host http://localhost:8888 --timeout 3600 -- tideline pipeline submit ...
"""

from __future__ import annotations

import argparse
import subprocess
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", required=True)
    p.add_argument("--timeout", type=int, default=3600, help="seconds to wait for the run")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the submitting command")
    a = p.parse_args(argv)
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not cmd:
        p.error("give the submitting command after --")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()
    run_id = out.splitlines()[-1].strip() if out else ""
    if not run_id:
        print("error: the command printed no run id", file=sys.stderr)
        return 1
    print(f"run {run_id}: waiting (up to {a.timeout}s)", flush=True)
    import kfp

    run = kfp.Client(host=a.host).wait_for_run_completion(run_id, timeout=a.timeout)
    state = str(getattr(run, "state", "")).upper()
    print(f"run {run_id}: {state}")
    return 0 if state == "SUCCEEDED" else 1


if __name__ == "__main__":
    sys.exit(main())
