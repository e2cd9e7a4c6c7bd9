"""Bars in, position out: one v1 request of ``--symbols`` x ``--bars`` OHLCV bars (default 100 x 128) to a
predictor process on loopback, features computed by the served version's own config; p50/p99 over
``--requests`` after a warm-up, plus the in-process split of one request (parse and validate the bars,
compute the features, predict). Prints one JSON line. Target: p50 <= 50 ms on 2 cores.

The served version: LightGBM with the library's default parameters on 100 symbols x 600 daily synthetic bars
(57 features, cross-sectional ranks included), prediction log on, no shadow.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--symbols", type=int, default=100)
    ap.add_argument("--bars", type=int, default=128)
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import pandas as pd

    from bench_predictor import start
    from tideline.config import FeatureConfig
    from tideline.data import synthetic_market, validate_bars
    from tideline.features import build_dataset, feature_config_hash
    from tideline.models import make_model
    from tideline.registry import open_registry

    with tempfile.TemporaryDirectory(prefix="tideline-bench-bars-") as tmp:
        root = Path(tmp)
        cfg = FeatureConfig()
        bars = validate_bars(synthetic_market(args.symbols, 600 + args.bars, seed=5, freq="1D")).clean
        times = bars["timestamp"].drop_duplicates().sort_values()
        train, recent = bars[bars["timestamp"] < times.iloc[600]], bars[bars["timestamp"] >= times.iloc[600]]
        ds = build_dataset(train, cfg)
        model = make_model("lightgbm", seed=1).fit(ds.X, ds.y, ds.spec)
        model.save(root / "art")
        reg = open_registry((root / "reg").as_uri())
        v = reg.register(root / "art", {"family": "lightgbm", "features": model.columns,
                                        "feature_config": cfg.model_dump(),
                                        "feature_config_hash": feature_config_hash(cfg)}).version
        instances = [{"symbol": r.symbol, "timestamp": pd.Timestamp(r.timestamp).isoformat(), "open": r.open,
                      "high": r.high, "low": r.low, "close": r.close, "volume": r.volume}
                     for r in recent.itertuples(index=False)]
        body = json.dumps({"instances": instances}).encode()
        split = in_process(reg, v, json.loads(body))

        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc, port = start([sys.executable, "-m", "tideline.serving", "--registry", (root / "reg").as_uri(),
                            "--ref", v, "--http-port", "0", "--max-body-bytes", str(64 << 20)], env, None)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            lat = []
            for i in range(args.warmup + args.requests):
                t = time.perf_counter()
                conn.request("POST", "/v1/models/tideline:predict", body=body,
                             headers={"content-type": "application/json"})
                r = conn.getresponse()
                data = r.read()
                dt = time.perf_counter() - t
                if r.status != 200:
                    raise SystemExit(f"HTTP {r.status}: {data[:300]!r}")
                if i >= args.warmup:
                    lat.append(dt)
            answers = len(json.loads(data)["predictions"])
        finally:
            proc.terminate()
            proc.wait(30)
    lat.sort()
    print(json.dumps({
        "name": "bars", "symbols": args.symbols, "bars_per_symbol": args.bars, "answers": answers,
        "body_mib": round(len(body) / 2**20, 2), "requests": args.requests,
        "p50_ms": round(1000 * statistics.median(lat), 1), "p99_ms": round(1000 * lat[int(0.99 * (len(lat) - 1))], 1),
        "in_process_ms": split, "cores": os.cpu_count(),
    }))


def in_process(reg: Any, version: str, payload: dict) -> dict[str, float]:
    """Median milliseconds of each step of one request, in process (no HTTP, no JSON)."""
    from tideline.serving.bars import last_bar_features, parse_bars
    from tideline.serving.predictor import TidelinePredictor

    p = TidelinePredictor("tideline", reg, ref=version)
    p.load()
    src = p.serving.active.features
    steps: dict[str, list[float]] = {"parse_and_validate_bars": [], "features": [], "whole_request": []}
    for _ in range(15):
        t = time.perf_counter()
        bars = parse_bars(payload["instances"])
        steps["parse_and_validate_bars"].append(time.perf_counter() - t)
        t = time.perf_counter()
        last_bar_features(bars, src)
        steps["features"].append(time.perf_counter() - t)

        async def whole() -> None:
            await p.predict(await p.preprocess(payload))

        t = time.perf_counter()
        asyncio.run(whole())
        steps["whole_request"].append(time.perf_counter() - t)
    p.stop()
    return {k: round(1000 * statistics.median(v), 1) for k, v in steps.items()}


if __name__ == "__main__":
    main()
