"""TEST DOUBLE of the predictor process (``python -m tideline.serving``), for the router and rollout tests.

The real predictor is being written elsewhere; this double speaks the same contract (docs/CONTRACTS.md,
"Serving and rollouts") so the router and the local backend are tested against real HTTP servers on
loopback: ``READY port=<p> version=<vN>`` on stdout, ``POST /v1/models/{name}:predict`` answering
``{"predictions", "model_name", "model_version", "role"}`` with ``x-model-version``, the v2 health
endpoints, and ``GET /metrics`` with the contract's metric names (``tideline_requests_total{model,version,
role,code}``, ``tideline_request_errors_total``, ``tideline_request_duration_seconds``).

Faults for the bad-candidate tests: ``--error-rate`` (share of 500s), ``--delay-ms`` (added latency),
``--bias`` (added to every prediction). Predictions are ``scale * sum(numeric features) + bias``.
Not a model: it never loads anything from the registry.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def build_app(args: argparse.Namespace) -> web.Application:
    reg = CollectorRegistry()
    labels = ("model", "version", "role", "code")
    requests = Counter("tideline_requests_total", "requests", labels, registry=reg)
    errors = Counter("tideline_request_errors_total", "errors", labels, registry=reg)
    duration = Histogram("tideline_request_duration_seconds", "latency", ("model", "version", "role"),
                         buckets=BUCKETS, registry=reg)
    Gauge("tideline_model_info", "info", ("version", "role", "ref"), registry=reg).labels(
        args.version, args.role, args.version).set(1)
    rng = random.Random(args.seed)
    lab = {"model": args.name, "version": args.version, "role": args.role}
    hdr = {"x-model-version": args.version}

    async def predict(request: web.Request) -> web.Response:
        t0 = time.perf_counter()
        if request.match_info["name"] != args.name:
            code, resp = 404, web.json_response({"error": "unknown model"}, status=404, headers=hdr)
        else:
            try:
                body = await request.json()
                instances = body["instances"]
                preds = [args.scale * sum(v for v in inst.values() if isinstance(v, (int, float))) + args.bias
                         for inst in instances]
            except (ValueError, KeyError, TypeError, AttributeError):
                code, resp = 400, web.json_response({"error": "bad request"}, status=400, headers=hdr)
            else:
                if args.delay_ms:
                    await asyncio.sleep(args.delay_ms / 1000)
                if args.error_rate and rng.random() < args.error_rate:
                    code, resp = 500, web.json_response({"error": "chaos"}, status=500, headers=hdr)
                else:
                    code = 200
                    resp = web.json_response({"predictions": preds, "model_name": args.name,
                                              "model_version": args.version, "role": args.role}, headers=hdr)
        requests.labels(**lab, code=str(code)).inc()
        if code >= 400:
            errors.labels(**lab, code=str(code)).inc()
        duration.labels(**lab).observe(time.perf_counter() - t0)
        return resp

    async def ready(request: web.Request) -> web.Response:
        return web.json_response({"ready": True}, headers=hdr)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(reg), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_post("/v1/models/{name}:predict", predict)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/v2/models/{name}/ready", ready)
    app.router.add_get("/v1/models/{name}", ready)
    app.router.add_get("/metrics", metrics)
    return app


async def serve(args: argparse.Namespace) -> None:
    runner = web.AppRunner(build_app(args), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.http_port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001
    sys.stdout.write(f"READY port={port} version={args.version}\n")
    sys.stdout.flush()
    await asyncio.Event().wait()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--name", default="tideline")
    p.add_argument("--version", required=True)
    p.add_argument("--role", default="active")
    p.add_argument("--http-port", type=int, default=0)
    p.add_argument("--error-rate", type=float, default=0.0)
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument("--bias", type=float, default=0.0)
    p.add_argument("--scale", type=float, default=0.001)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    import uvloop

    uvloop.run(serve(args))


if __name__ == "__main__":
    main()
