"""Predictor latency and throughput against the floor: kserve's ModelServer serving a bare kserve.Model
that returns a constant (same server, same settings, same client). Prints one JSON line.

Both servers run as subprocesses on loopback, REST only, one worker; the client is http.client with one
keep-alive connection per server. Both servers run at once and the measurement alternates between them in
rounds, so machine load hits both alike. Latency: ``--requests`` one-row v1 requests after ``--warmup``;
throughput: ``--batches`` v1 requests of ``--batch-rows`` rows each. The predictor serves a LightGBM
version with the library's default parameters fitted like a cycle's final fit (early stopping on the
latest 10%), 57 features, prediction log on, no shadow. ``model_predict_us`` is the model alone
(``predict_array`` on one row, in-process): the part of the gap to the floor that is the model's work.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent




def floor_server(port: int) -> None:
    """A bare kserve.Model returning a constant per instance, on the same ModelServer settings."""
    sys.argv = [sys.argv[0]]
    import kserve
    from kserve import ModelServer

    from tideline.serving.server import quiet_per_request_logs

    class Constant(kserve.Model):
        def __init__(self) -> None:
            super().__init__("tideline")
            self.ready = True

        async def predict(self, payload: Any, headers: Any = None) -> dict[str, Any]:
            return {"predictions": [0.0] * len(payload["instances"])}

    server = ModelServer(http_port=port, enable_grpc=False, enable_latency_logging=False, workers=1)
    quiet_per_request_logs()
    server.start([Constant()])


def make_registry(root: Path) -> tuple[str, list[dict[str, float]]]:
    from tideline.config import FeatureConfig
    from tideline.data import synthetic_market
    from tideline.features import build_dataset, feature_config_hash
    from tideline.models import make_model
    from tideline.registry import open_registry

    cfg = FeatureConfig()
    ds = build_dataset(synthetic_market(n_symbols=8, n_bars=2500, seed=5), cfg)
    reg = open_registry((root / "reg").as_uri())
    info: dict[str, Any] = {}
    cut = int(len(ds.X) * 0.9)
    for early_stopping in (True, False):
        model = make_model("lightgbm", seed=1)
        if early_stopping:  # like a cycle's final fit: early stopping on the latest 10%
            model.fit(ds.X.iloc[:cut], ds.y[:cut], ds.spec, X_valid=ds.X.iloc[cut:], y_valid=ds.y[cut:])
        else:  # every one of the default 300 rounds
            model.fit(ds.X, ds.y, ds.spec)
        art = root / f"art-{early_stopping}"
        model.save(art)
        mv = reg.register(art, {"family": "lightgbm", "features": model.columns,
                                "feature_config": cfg.model_dump(),
                                "feature_config_hash": feature_config_hash(cfg)})
        info[mv.version] = {"trees": model.fit_info.get("n_trees"),
                            "model_predict_us": one_row_us(model, ds, 2000)}
    reg.promote("v1", reason="bench")
    info["by_family"] = one_row_us_by_family(ds)
    rows = [{k: float(v) for k, v in r.items()} for r in ds.X[model.columns].iloc[:2000].to_dict("records")]
    return (root / "reg").as_uri(), rows, info


def one_row_us_by_family(ds: Any) -> dict[str, float]:
    """In-process ``predict_array`` on one row, median us, for every tabular family (default params)."""
    from tideline.models import make_model

    out = {}
    for family in ("lightgbm", "xgboost", "sklearn"):
        model = make_model(family, seed=1)
        model.fit(ds.X, ds.y, ds.spec)
        out[family] = one_row_us(model, ds, 300)
    return out


def one_row_us(model: Any, ds: Any, repeat: int) -> float:
    """Median microseconds of ``model.predict_array`` on one row (the serving hot path), in process."""
    X1 = ds.X[model.columns].iloc[:1].to_numpy(np.float32)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        model.predict_array(X1)
        times.append(time.perf_counter() - t)
    return round(1e6 * statistics.median(times), 1)


def start(cmd: list[str], env: dict[str, str], port: int | None) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    if port is None:  # the predictor prints READY port=...
        line = proc.stdout.readline().strip()  # type: ignore[union-attr]
        if not line.startswith("READY "):
            proc.kill()
            raise SystemExit(f"predictor did not start: {line!r}")
        port = int(dict(kv.split("=", 1) for kv in line.split()[1:])["port"])
        threading.Thread(target=proc.stdout.read, daemon=True).start()  # type: ignore[union-attr]
        return proc, port
    from tideline.serving.server import wait_until_serving

    if not wait_until_serving(port, "/v2/models/tideline/ready", timeout=60):
        proc.kill()
        raise SystemExit("floor server did not start")
    return proc, port


class Client:
    """One keep-alive connection; v1 requests."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port)
        self.headers = {"content-type": "application/json"}
        self.lat: list[float] = []
        self.rows = 0
        self.batch_s = 0.0

    def call(self, body: bytes) -> float:
        t = time.perf_counter()
        self.conn.request("POST", "/v1/models/tideline:predict", body=body, headers=self.headers)
        r = self.conn.getresponse()
        data = r.read()
        dt = time.perf_counter() - t
        if r.status != 200:
            raise SystemExit(f"HTTP {r.status}: {data[:200]!r}")
        return dt

    def summary(self) -> dict[str, float]:
        lat = sorted(self.lat)
        return {
            "p50_ms": round(1000 * statistics.median(lat), 3),
            "p99_ms": round(1000 * lat[int(0.99 * (len(lat) - 1))], 3),
            "mean_ms": round(1000 * statistics.fmean(lat), 3),
            "rows_per_s": round(self.rows / self.batch_s, 1),
        }


def measure(ports: dict[str, int], rows: list[dict[str, float]], n_req: int, warmup: int, batches: int,
            batch_rows: int, rounds: int = 10) -> dict[str, dict[str, float]]:
    """Both servers are up; rounds alternate between them so both see the same machine load."""
    clients = {k: Client(p) for k, p in ports.items()}
    bodies = [json.dumps({"instances": [rows[i % len(rows)]]}).encode() for i in range(256)]
    big = json.dumps({"instances": [rows[i % len(rows)] for i in range(batch_rows)]}).encode()
    for c in clients.values():
        for i in range(warmup):
            c.call(bodies[i % len(bodies)])
        c.call(big)
    per_round = max(1, n_req // rounds)
    batches_per_round = max(1, batches // rounds)
    for r in range(rounds):
        order = list(clients.values()) if r % 2 == 0 else list(clients.values())[::-1]
        for c in order:
            c.lat.extend(c.call(bodies[i % len(bodies)]) for i in range(per_round))
            for _ in range(batches_per_round):
                c.batch_s += c.call(big)
                c.rows += batch_rows
    for c in clients.values():
        c.conn.close()
    return {k: c.summary() for k, c in clients.items()}


def batch_parts(rows: list[dict[str, float]], n: int) -> dict[str, float]:
    """In process, median of 20, in ms, for one ``n``-row v1 body: parsing it (orjson: what kserve does for the
    floor), the predictor's one pass from its bytes to a validated feature matrix (``decode_v1``), and the
    row path a body the one pass does not take goes through (orjson, then ``validate_v1``'s validation)."""
    import orjson

    from tideline.serving.validation import Schema, decode_v1, validate_v1

    body = json.dumps({"instances": [rows[i % len(rows)] for i in range(n)]}).encode()
    schema = Schema(required=tuple(rows[0]))
    payload = orjson.loads(body)

    def median_ms(fn: Any) -> float:
        times = []
        for _ in range(20):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return round(1000 * statistics.median(times), 3)

    assert decode_v1(body, schema) is not None  # the bench body takes the one pass
    return {"batch_parse_ms": median_ms(lambda: orjson.loads(body)),
            "batch_one_pass_ms": median_ms(lambda: decode_v1(body, schema)),
            "batch_validate_ms": median_ms(lambda: validate_v1(payload, schema))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--batch-rows", type=int, default=1000)
    ap.add_argument("--floor-server", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.floor_server is not None:
        floor_server(args.floor_server)
        return

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TIDELINE_CHAOS", None)
    with tempfile.TemporaryDirectory(prefix="tideline-bench-") as tmp:
        uri, rows, info = make_registry(Path(tmp))
        from tideline.serving.server import free_port

        procs = []
        try:
            fport = free_port()
            proc, fport = start([sys.executable, __file__, "--floor-server", str(fport)], env, fport)
            procs.append(proc)
            ports = {"floor": fport}
            for ref in ("v1", "v2"):
                cmd = [sys.executable, "-m", "tideline.serving", "--registry", uri, "--ref", ref,
                       "--http-port", "0", "--reload-interval", "30", "--max-rows", str(args.batch_rows)]
                proc, ports[ref] = start(cmd, env, None)
                procs.append(proc)
            results = measure(ports, rows, args.requests, args.warmup, args.batches, args.batch_rows)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(30)
    p, f, p300 = results["v1"], results["floor"], results["v2"]
    out = {
        "name": "predictor",
        "requests": args.requests,
        "p50_ms": p["p50_ms"],
        "p99_ms": p["p99_ms"],
        "floor_p50_ms": f["p50_ms"],
        "floor_p99_ms": f["p99_ms"],
        "ratio_p50": round(p["p50_ms"] / f["p50_ms"], 3),
        "ratio_p99": round(p["p99_ms"] / f["p99_ms"], 3),
        "goal_ratio_p50": 1.5,
        "batch_rows": args.batch_rows,
        "rows_per_s": p["rows_per_s"],
        "floor_rows_per_s": f["rows_per_s"],
        "batch_ratio": round(p["rows_per_s"] / f["rows_per_s"], 3),
        "goal_batch_ratio": 0.8,
        **batch_parts(rows, args.batch_rows),
        "model_predict_us": info["v1"]["model_predict_us"],
        "one_row_predict_us_by_family": info["by_family"],
        "model": f"lightgbm, default params, early stopping ({info['v1']['trees']} trees), 57 features; "
                 "prediction log on",
        "full_300_trees": {**p300, "ratio_p50": round(p300["p50_ms"] / f["p50_ms"], 3),
                           "model_predict_us": info["v2"]["model_predict_us"], "trees": info["v2"]["trees"]},
        "cores": os.cpu_count(),
    }
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
