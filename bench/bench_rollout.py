"""Router overhead and time to rollback, with real processes on loopback. Prints TWO JSON lines:

1. ``{"name": "router", ...}``: one real predictor (``python -m tideline.serving``, LightGBM, 57 features,
   prediction log on) and the real router (``python -m tideline.rollout.router``) in front of it. One
   keep-alive ``http.client`` connection to each; ``--requests`` one-row v1 requests per side after
   ``--warmup``, in alternating rounds (both sides see the same machine load). ``overhead_p50_ms`` =
   routed p50 - direct p50.
2. ``{"name": "rollback", ...}``: production served by the local backend (predictor + router), a
   genuinely broken candidate (an infinite target scale: every prediction non-finite, the predictor answers
   500) rolled out straight to canary 10% (no shadow) by the real controller on the system clock with
   ``--interval`` second analyses, ``failure_limit`` 2. Client threads send requests through the router
   the whole time. ``seconds_to_rollback``: from the first bad candidate answer (the first response the
   router had to answer from the active model because the canary gave a 5xx) to the time the RolledBack
   status was persisted; ``intervals_to_rollback`` = that / interval. ``client_5xx`` of ``client_requests``:
   what the clients saw from start to end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any


def make_registry(root: Path) -> tuple[str, list[dict[str, float]], str, str]:
    """(uri, one-row instances, production version, broken version)."""
    from tideline.config import FeatureConfig
    from tideline.data import synthetic_market
    from tideline.features import build_dataset, feature_config_hash
    from tideline.models import make_model
    from tideline.registry import open_registry

    cfg = FeatureConfig()
    ds = build_dataset(synthetic_market(n_symbols=4, n_bars=1500, seed=5, signal_strength=0.5), cfg)
    reg = open_registry((root / "reg").as_uri())
    model = make_model("lightgbm", seed=1, params={"num_boost_round": 100}, n_threads=1)
    model.fit(ds.X, ds.y, ds.spec)
    art = root / "art"
    model.save(art)
    meta = {"family": "lightgbm", "features": model.columns, "feature_config": cfg.model_dump(),
            "feature_config_hash": feature_config_hash(cfg)}
    prod = reg.register(art, meta).version
    broken = root / "art-broken"
    shutil.copytree(art, broken)
    mj = json.loads((broken / "model.json").read_text())
    mj["target_scaler"]["scale"] = float("inf")
    (broken / "model.json").write_text(json.dumps(mj))
    bad = reg.register(broken, meta).version
    reg.promote(prod, reason="bench")
    rows = [{k: float(v) for k, v in r.items()} for r in ds.X[model.columns].iloc[:2000].to_dict("records")]
    return (root / "reg").as_uri(), rows, prod, bad


def start(cmd: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    line = proc.stdout.readline().strip()  # type: ignore[union-attr]
    if not line.startswith("READY "):
        proc.kill()
        raise SystemExit(f"{cmd[2]} did not start: {line!r}")
    port = int(dict(kv.split("=", 1) for kv in line.split()[1:])["port"])
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # type: ignore[union-attr]
    return proc, port


def router_bench(uri: str, rows: list[dict[str, float]], env: dict[str, str], n_req: int, warmup: int,
                 rounds: int = 10) -> dict[str, Any]:
    procs = []
    try:
        pred, pport = start([sys.executable, "-m", "tideline.serving", "--registry", uri, "--ref", "production",
                             "--http-port", "0", "--reload-interval", "0"], env)
        procs.append(pred)
        router, rport = start([sys.executable, "-m", "tideline.rollout.router", "--port", "0", "--active",
                               f"http://127.0.0.1:{pport}"], env)
        procs.append(router)
        bodies = [json.dumps({"instances": [rows[i % len(rows)]]}).encode() for i in range(256)]
        headers = {"content-type": "application/json"}
        conns = {"direct": http.client.HTTPConnection("127.0.0.1", pport),
                 "routed": http.client.HTTPConnection("127.0.0.1", rport)}
        lat: dict[str, list[float]] = {"direct": [], "routed": []}

        def call(c: http.client.HTTPConnection, body: bytes) -> float:
            t = time.perf_counter()
            c.request("POST", "/v1/models/tideline:predict", body=body, headers=headers)
            r = c.getresponse()
            data = r.read()
            dt = time.perf_counter() - t
            if r.status != 200:
                raise SystemExit(f"HTTP {r.status}: {data[:200]!r}")
            return dt

        for c in conns.values():
            for i in range(warmup):
                call(c, bodies[i % len(bodies)])
        per_round = max(1, n_req // rounds)
        for r in range(rounds):
            order = ["direct", "routed"] if r % 2 == 0 else ["routed", "direct"]
            for k in order:
                lat[k].extend(call(conns[k], bodies[i % len(bodies)]) for i in range(per_round))
        for c in conns.values():
            c.close()
    finally:
        for p in procs:
            p.terminate()
            p.wait(30)
    d, rt = statistics.median(lat["direct"]), statistics.median(lat["routed"])
    return {"name": "router", "overhead_p50_ms": round(1000 * (rt - d), 3), "direct_p50_ms": round(1000 * d, 3),
            "routed_p50_ms": round(1000 * rt, 3), "requests": len(lat["routed"])}


class Clients:
    """``n`` client threads, one keep-alive connection each, through the router."""

    def __init__(self, port: int, rows: list[dict[str, float]], n: int = 2) -> None:
        self.port = port
        self.bodies = [json.dumps({"instances": [rows[i % len(rows)]]}).encode() for i in range(256)]
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.requests = 0
        self.c5xx = 0
        self.first_bad: float | None = None  # wall time of the first answer that a canary 5xx caused
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]
        for t in self.threads:
            t.start()

    def _run(self, k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        i = k
        while not self.stop.is_set():
            i += 1
            try:
                conn.request("POST", "/v1/models/tideline:predict", self.bodies[i % len(self.bodies)],
                             {"content-type": "application/json", "x-request-id": uuid.uuid4().hex})
                r = conn.getresponse()
                r.read()
                status, retried = r.status, r.getheader("x-tideline-retried")
            except (OSError, http.client.HTTPException):
                status, retried = 599, None  # a failed exchange counts as a 5xx
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            now = time.time()
            with self.lock:
                self.requests += 1
                if status >= 500:
                    self.c5xx += 1
                if (status >= 500 or retried == "canary-5xx") and self.first_bad is None:
                    self.first_bad = now
            time.sleep(0.002)
        conn.close()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def rollback_bench(uri: str, rows: list[dict[str, float]], prod: str, bad: str, interval: float,
                   home: Path) -> dict[str, Any]:
    from tideline.clock import SystemClock
    from tideline.registry import open_registry
    from tideline.rollout import machine as m
    from tideline.rollout.analysis import Thresholds
    from tideline.rollout.backends.local import LocalBackend, default_predictor_factory
    from tideline.rollout.controller import RolloutController

    reg = open_registry(uri)
    factory = default_predictor_factory(uri, "tideline", env=lambda v, r: {"OMP_NUM_THREADS": "1"})
    backend = LocalBackend(reg, "tideline", predictor_factory=factory, home=home, ready_timeout=90)
    backend.start_serving(prod, port=0)
    clients = None
    try:
        clients = Clients(int(backend.router_url.rsplit(":", 1)[1]), rows)
        time.sleep(1.0)
        spec = m.RolloutSpec(name="tideline", target="tideline", candidate=bad, baseline=prod,
                             shadow=m.ShadowSpec(min_duration_s=0, min_labelled=0), steps=(10, 25, 50, 100),
                             interval_s=interval, failure_limit=2,
                             thresholds=Thresholds(min_requests=10))
        status = RolloutController(spec, backend, reg.store, SystemClock()).run(max_iterations=200)
        time.sleep(1.0)  # clients keep going after the switch back
        clients.finish()
    finally:
        if clients is not None:
            clients.finish()
        backend.shutdown()
        backend.close()
    if status.phase != m.Phase.ROLLED_BACK or clients.first_bad is None or status.phase_since is None:
        raise SystemExit(f"the broken candidate was not rolled back as expected: {status.phase.value} "
                         f"{status.message}")
    secs = status.phase_since - clients.first_bad
    return {"name": "rollback", "interval_s": interval, "seconds_to_rollback": round(secs, 2),
            "intervals_to_rollback": round(secs / interval, 2), "client_5xx": clients.c5xx,
            "client_requests": clients.requests}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--interval", type=float, default=1.0, help="analysis interval of the rollback run (s)")
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TIDELINE_CHAOS", None)
    os.environ.pop("TIDELINE_CHAOS", None)
    with tempfile.TemporaryDirectory(prefix="tideline-bench-") as tmp:
        uri, rows, prod, bad = make_registry(Path(tmp))
        router = router_bench(uri, rows, env, args.requests, args.warmup)
        rollback = rollback_bench(uri, rows, prod, bad, args.interval, Path(tmp) / "home")
    for r in (router, rollback):
        json.dump(r, sys.stdout)
        sys.stdout.write("\n")


if __name__ == "__main__":
    main()
