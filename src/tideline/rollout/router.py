"""A small async HTTP router in front of predictor processes (the local traffic backend's data plane).

* ``/v1/...`` and ``/v2/...`` go to the active upstream or, with probability ``weight``%, to the canary
  upstream. With an ``x-request-id`` header the choice is a deterministic hash of it (the same request id
  always takes the same route); without one it is a seeded random draw.
* Every such request is also mirrored to the shadow upstream, if one is set: fire-and-forget through a
  bounded queue (full queue: the copy is dropped and counted); the shadow's answer and failures never
  touch the client's response. When the client's answer came from the active upstream, the two answers'
  ``predictions`` are kept as pairs (``GET /_tideline/pairs``) for the divergence check.
* Status codes, bodies and headers (``x-model-version`` included) pass through; ``x-tideline-route:
  active|canary`` is added. A connection failure on the canary route is retried once on the active
  upstream, so a dead canary never causes a client-visible 5xx; so is a 5xx *answer* from the canary
  (``retry_canary_5xx``, on by default: predictions are pure functions of the request, so replaying one
  is safe). The canary's own ``/metrics`` still count its 5xx (that is what the rollout analysis reads),
  and the router counts the retries (``tideline_router_canary_retries_total{reason}``); a retried answer
  carries ``x-tideline-retried: canary-5xx|canary-unreachable``. A connection failure on the active route
  right after the active upstream was switched (an old predictor stopping) is retried once on the new one.
* Admin API on the same server: ``GET /_tideline/state``, ``PUT /_tideline/state`` (JSON with any of
  ``active``, ``canary``, ``weight``, ``shadow``; applied atomically), ``GET /_tideline/pairs``,
  ``GET /_tideline/health`` and ``GET /metrics`` (``tideline_router_requests_total{route,code}``,
  ``tideline_router_shadow_total{outcome}``, ``tideline_router_fallbacks_total``,
  ``tideline_router_canary_retries_total{reason}``).

Entry: ``python -m tideline.rollout.router --port 0 --active URL`` prints ``READY port=<p>``.
aiohttp on uvloop with keep-alive upstream pools was measured at well under 1 ms of added p50 latency on
loopback (tests/test_router.py prints the figure).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import logging
import random
import signal
import sys
import uuid
import zlib
from dataclasses import asdict, dataclass, replace
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)

_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                  "trailers", "transfer-encoding", "upgrade", "host", "content-length"})


@dataclass(frozen=True)
class RouterState:
    """Where the router sends traffic: the active upstream URL, the canary URL and its weight (%), the shadow URL."""
    active: str
    canary: str | None = None
    weight: int = 0
    shadow: str | None = None

    def validate(self) -> RouterState:
        """The state with trailing slashes stripped, once checked: URLs are http(s), the weight an integer
        0..100, and a weight above 0 has a canary. Raises ``ValueError`` naming the bad field.
        """
        for name in ("active", "canary", "shadow"):
            v = getattr(self, name)
            if v is None and name != "active":
                continue
            if not isinstance(v, str) or not v.startswith(("http://", "https://")):
                raise ValueError(f"{name} must be an http(s) URL, got {v!r}")
        if isinstance(self.weight, bool) or not isinstance(self.weight, int) or not 0 <= self.weight <= 100:
            raise ValueError(f"weight must be an integer percentage 0..100, got {self.weight!r}")
        if self.weight > 0 and not self.canary:
            raise ValueError("a canary weight above 0 needs a canary upstream")
        return replace(self, active=self.active.rstrip("/"),
                       canary=self.canary.rstrip("/") if self.canary else None,
                       shadow=self.shadow.rstrip("/") if self.shadow else None)

    def to_dict(self) -> dict[str, Any]:
        """The state as a plain dict (what ``GET /_tideline/state`` answers)."""
        return asdict(self)


def canary_bucket(request_id: str) -> int:
    """0..9999: a request goes to the canary when its bucket is below weight * 100."""
    return zlib.crc32(request_id.encode()) % 10_000


class Router:
    """The router app. ``await start(host, port)`` serves; ``state`` is replaced atomically."""

    def __init__(self, state: RouterState, *, seed: int | None = None, timeout_s: float = 30.0,
                 shadow_queue: int = 1000, shadow_workers: int = 32, pairs_kept: int = 5000,
                 retry_canary_5xx: bool = True) -> None:
        self.state = state.validate()
        self.retry_canary_5xx = retry_canary_5xx
        self._rng = random.Random(seed)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._shadow_q: asyncio.Queue[tuple[Any, ...]] | None = None
        self._shadow_queue_size = shadow_queue
        self._shadow_workers = shadow_workers
        self._workers: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.pairs: collections.deque[tuple[int, str, str, float, float]] = collections.deque(maxlen=pairs_kept)
        self._pair_seq = 0
        self.registry = CollectorRegistry()
        self._requests = Counter("tideline_router_requests_total", "Requests answered by the router",
                                 ["route", "code"], registry=self.registry)
        self._shadow = Counter("tideline_router_shadow_total", "Mirrored requests by outcome",
                               ["outcome"], registry=self.registry)
        self._fallbacks = Counter("tideline_router_fallbacks_total",
                                  "Canary connection failures retried on the active upstream",
                                  registry=self.registry)
        self._retries = Counter("tideline_router_canary_retries_total",
                                "Canary requests answered by the active upstream instead (why)",
                                ["reason"], registry=self.registry)
        self._retry_children = {r: self._retries.labels(reason=r) for r in ("5xx", "unreachable")}
        self._children: dict[tuple[str, int], Any] = {}
        self._shadow_children = {o: self._shadow.labels(outcome=o) for o in ("sent", "error", "dropped")}

    # -- app ------------------------------------------------------------------------------------------
    def app(self) -> web.Application:
        """The aiohttp application: the admin API, ``/metrics`` and the proxied ``/v1``/``/v2`` routes."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/_tideline/state", self._get_state)
        app.router.add_put("/_tideline/state", self._put_state)
        app.router.add_get("/_tideline/pairs", self._get_pairs)
        app.router.add_get("/_tideline/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_route("*", "/v1/{tail:.*}", self._proxy)
        app.router.add_route("*", "/v2/{tail:.*}", self._proxy)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, app: web.Application) -> None:
        conn = aiohttp.TCPConnector(limit=512, limit_per_host=256, keepalive_timeout=60, ttl_dns_cache=None)
        self._session = aiohttp.ClientSession(connector=conn, timeout=self._timeout, auto_decompress=False,
                                              skip_auto_headers=("User-Agent", "Accept-Encoding"))
        self._shadow_q = asyncio.Queue(maxsize=self._shadow_queue_size)
        self._workers = [asyncio.create_task(self._shadow_worker()) for _ in range(self._shadow_workers)]

    async def _on_cleanup(self, app: web.Application) -> None:
        for w in self._workers:
            w.cancel()
        for w in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await w
        if self._session is not None:
            await self._session.close()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve on ``host:port`` (0: a free port) and return the bound port."""
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await site.start()
        server = site._server  # noqa: SLF001 - the only way to learn the bound port
        assert server is not None and server.sockets
        return int(server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop serving and clean up (shadow workers, the upstream session); no-op when not started."""
        if self._runner is not None:
            await self._runner.cleanup()

    # -- admin ----------------------------------------------------------------------------------------
    async def _get_state(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.to_dict())

    async def _put_state(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            unknown = set(body) - {"active", "canary", "weight", "shadow"}
            if unknown:
                raise ValueError(f"unknown keys {sorted(unknown)}")
            new = replace(self.state, **body).validate()
        except (ValueError, TypeError, json.JSONDecodeError) as e:
            return web.json_response({"error": str(e)}, status=400)
        old, self.state = self.state, new
        if old != new:
            log.info("router state %s -> %s", old.to_dict(), new.to_dict())
        return web.json_response(new.to_dict())

    async def _get_pairs(self, request: web.Request) -> web.Response:
        try:
            since = int(request.query.get("since", "0"))
        except ValueError:
            return web.json_response({"error": "since must be an integer"}, status=400)
        version = request.query.get("version")
        rows = [p for p in self.pairs if p[0] > since and (version is None or p[1] == version)]
        return web.json_response({"seq": self._pair_seq, "shadow_version": [p[1] for p in rows],
                                  "active_version": [p[2] for p in rows],
                                  "shadow": [p[3] for p in rows], "active": [p[4] for p in rows]})

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, **self.state.to_dict()})

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    # -- data plane -----------------------------------------------------------------------------------
    def _count(self, route: str, code: int) -> None:
        child = self._children.get((route, code))
        if child is None:
            child = self._children[(route, code)] = self._requests.labels(route=route, code=str(code))
        child.inc()

    async def _send(self, base: str, method: str, path: str, headers: dict[str, str],
                    body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        assert self._session is not None
        async with self._session.request(method, base + path, headers=headers, data=body or None,
                                         allow_redirects=False) as resp:
            data = await resp.read()
            return resp.status, [(k, v) for k, v in resp.headers.items() if k.lower() not in _HOP], data

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        st = self.state
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        rid = request.headers.get("x-request-id")
        route = "active"
        if st.canary is not None and st.weight > 0:
            if rid:
                route = "canary" if canary_bucket(rid) < st.weight * 100 else "active"
            else:
                route = "canary" if self._rng.random() * 100 < st.weight else "active"
        if not rid:
            headers["x-request-id"] = uuid.uuid4().hex  # lets shadow and prediction logs pair up
        path = request.path_qs
        retried = None
        try:
            try:
                status, rh, data = await self._send(st.canary if route == "canary" else st.active,
                                                    request.method, path, headers, body)
            except aiohttp.ClientConnectionError:
                cur = self.state
                if route == "canary":
                    self._fallbacks.inc()
                    self._retry_children["unreachable"].inc()
                    retried = "canary-unreachable"
                elif cur.active == st.active:
                    raise  # the active upstream itself is down: a real outage
                route, st = "active", cur  # the active was switched while this request was on its way
                status, rh, data = await self._send(st.active, request.method, path, headers, body)
            if route == "canary" and status >= 500 and self.retry_canary_5xx:
                self._retry_children["5xx"].inc()
                retried, route = "canary-5xx", "active"
                status, rh, data = await self._send(st.active, request.method, path, headers, body)
        except aiohttp.ClientConnectionError as e:
            self._count(route, 502)
            return web.json_response({"error": f"upstream {route} unreachable: {e}"}, status=502,
                                     headers={"x-tideline-route": route})
        except TimeoutError:
            self._count(route, 504)
            return web.json_response({"error": f"upstream {route} timed out"}, status=504,
                                     headers={"x-tideline-route": route})
        self._count(route, status)
        if st.shadow is not None and self._shadow_q is not None:
            item = (st.shadow, request.method, path, headers, body,
                    data if route == "active" and status == 200 else None, dict(rh).get("x-model-version", ""))
            try:
                self._shadow_q.put_nowait(item)
            except asyncio.QueueFull:
                self._shadow_children["dropped"].inc()
        resp = web.Response(status=status, body=data)
        for k, v in rh:
            resp.headers.add(k, v)
        resp.headers["x-tideline-route"] = route
        if retried:
            resp.headers["x-tideline-retried"] = retried
        return resp

    async def _shadow_worker(self) -> None:
        assert self._shadow_q is not None
        while True:
            base, method, path, headers, body, active_body, active_version = await self._shadow_q.get()
            try:
                status, rh, data = await self._send(base, method, path, headers, body)
            except (TimeoutError, aiohttp.ClientError, OSError):
                self._shadow_children["error"].inc()
                continue
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a shadow must never take the router down
                log.exception("shadow request failed")
                self._shadow_children["error"].inc()
                continue
            self._shadow_children["sent" if status < 500 else "error"].inc()
            if active_body is not None and status == 200:
                self._record_pairs(dict(rh).get("x-model-version", ""), active_version, data, active_body)

    def _record_pairs(self, shadow_version: str, active_version: str, shadow_body: bytes,
                      active_body: bytes) -> None:
        try:
            sp = json.loads(shadow_body).get("predictions")
            ap = json.loads(active_body).get("predictions")
        except (ValueError, AttributeError):
            return
        if not isinstance(sp, list) or not isinstance(ap, list) or len(sp) != len(ap):
            return
        for s, a in zip(sp, ap, strict=True):
            if isinstance(s, (int, float)) and isinstance(a, (int, float)):
                self._pair_seq += 1
                self.pairs.append((self._pair_seq, shadow_version, active_version, float(s), float(a)))


# ---- entry point ----------------------------------------------------------------------------------------
def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tideline.rollout.router", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: pick a free port (printed on the READY line)")
    p.add_argument("--active", required=True, help="active upstream URL, e.g. http://127.0.0.1:8081")
    p.add_argument("--canary", default=None)
    p.add_argument("--weight", type=int, default=0)
    p.add_argument("--shadow", default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--timeout", type=float, default=30.0, help="upstream timeout in seconds")
    p.add_argument("--shadow-queue", type=int, default=1000, help="mirrored requests waiting at most")
    p.add_argument("--shadow-workers", type=int, default=32, help="mirrored requests in flight at most")
    p.add_argument("--retry-canary-5xx", action=argparse.BooleanOptionalAction, default=True,
                   help="answer a canary's 5xx from the active upstream instead (default: on)")
    return p.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    router = Router(RouterState(args.active, args.canary, args.weight, args.shadow), seed=args.seed,
                    timeout_s=args.timeout, shadow_queue=args.shadow_queue,
                    shadow_workers=args.shadow_workers, retry_canary_5xx=args.retry_canary_5xx)
    port = await router.start(args.host, args.port)
    sys.stdout.write(f"READY port={port}\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await router.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m tideline.rollout.router``: validate the arguments, serve until SIGTERM/SIGINT (printing
    ``READY port=<p>`` once listening) and return the exit status (2 for an invalid state).
    """
    args = _parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        RouterState(args.active, args.canary, args.weight, args.shadow).validate()
    except ValueError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional
        asyncio.run(_serve(args))
    else:
        uvloop.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
