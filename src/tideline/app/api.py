"""The loop's HTTP API and status page (``tideline loop --api-port``): the embedded default, for a person.

Everything under ``/api/v1`` needs ``Authorization: Bearer <token>`` (the token from ``--api-token-file`` or
``TIDELINE_API_TOKEN``; with none configured the server refuses to start: never an open API). The OpenAPI
description is generated from this code (``/openapi.json``); the status page (``/``) and its scripts
(``/static/``, plotly served from the installed package: no CDN, no build step) carry no data: the page asks
for the token and reads the API like any client.

* ``GET /api/v1/status`` production, previous, candidate, the kill switch, rollouts (phase, weight), the last
  tick, the retraining run in progress;
* ``GET /api/v1/triggers`` the rules of the latest decision; ``GET /api/v1/decisions`` the latest ticks;
  ``GET /api/v1/live`` live accuracy per version over time (from the ticks' monitor steps);
* ``GET /api/v1/alerts``, ``POST /api/v1/alerts/{id}/ack|resolve``;
* ``POST /api/v1/retrain`` (409 with the run's id while one is in progress), ``POST
  /api/v1/rollouts/{name}/approve`` (409 unless it awaits approval).

Errors are one-line JSON ``{"error": "..."}``: 401 without the right token (nothing done), 404, 409, 422 for a
malformed body.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import threading
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from tideline.config import Settings
from tideline.errors import ConfigError, PolicyError, StorageUnavailable, TidelineError
from tideline.loop import alerts as alerts_mod
from tideline.loop.core import list_ticks
from tideline.registry import Registry

log = logging.getLogger(__name__)

API = "/api/v1"
TOKEN_ENV = "TIDELINE_API_TOKEN"

# POST /retrain: starts one forced tick and says so, or raises Busy(what is still running)
Retrain = Callable[[str], str]


class Busy(Exception):
    """A retraining run is in progress: its id."""

    def __init__(self, run: str) -> None:
        super().__init__(f"a retraining run is in progress: {run}")
        self.run = run


class By(BaseModel):
    """Who does it (recorded with the time)."""
    by: str = Field(min_length=1, max_length=100, pattern=r"^[\w.@+ -]+$")


class RetrainRequest(BaseModel):
    """Why a retrain is requested (recorded with the run)."""
    reason: str = Field(min_length=1, max_length=200)


def load_token(token_file: str | Path | None, env: dict[str, str]) -> str:
    """The API token: the file's content (a mounted Secret) or ``TIDELINE_API_TOKEN``; ``ConfigError`` when none
    is configured (the API is never served open) or it is shorter than 16 characters."""
    token = ""
    if token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(f"cannot read the API token file {token_file}: {e.strerror}") from None
    token = token or env.get(TOKEN_ENV, "").strip()
    if not token:
        raise ConfigError("the API needs a token: --api-token-file PATH or TIDELINE_API_TOKEN (it is never served "
                          "without one)")
    if len(token) < 16:
        raise ConfigError("the API token is shorter than 16 characters", hint="e.g. openssl rand -hex 32")
    return token


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())[:500], **extra}, status_code=status)


def create_app(registry: Registry, settings: Settings, *, token: str, retrain: Retrain | None = None) -> FastAPI:
    """The API and status page over ``registry`` (``retrain``: how ``POST /retrain`` starts a run; None: 409)."""
    app = FastAPI(title="tideline loop API", version="1", description=__doc__,
                  docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    bearer = HTTPBearer(auto_error=False, description="the loop's API token")

    def valid(header: str | None) -> bool:
        scheme, _, given = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())

    def authorized(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        """Declares the bearer scheme in the OpenAPI description (the middleware below enforces it first)."""
        if creds is None or not valid(f"Bearer {creds.credentials}"):
            raise StarletteHTTPException(401, "a valid bearer token is required (Authorization: Bearer <token>)")

    @app.middleware("http")
    async def require_token(request: Request, call_next: Callable[[Request], Any]) -> Response:
        # before routing and body validation: without the token nothing under /api is parsed, let alone done
        if request.url.path.startswith("/api/") and not valid(request.headers.get("authorization")):
            resp = _error(401, "a valid bearer token is required (Authorization: Bearer <token>)")
            resp.headers["WWW-Authenticate"] = "Bearer"
            return resp
        return await call_next(request)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        resp = _error(exc.status_code, str(exc.detail))
        if exc.status_code == 401:
            resp.headers["WWW-Authenticate"] = "Bearer"
        return resp

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(TidelineError)
    async def tideline_error(_: Request, exc: TidelineError) -> Response:
        status = 503 if isinstance(exc, StorageUnavailable) else 409 if isinstance(exc, PolicyError) else 400
        return _error(status, str(exc))

    auth = [Depends(authorized)]

    @app.get(f"{API}/status", dependencies=auth, summary="Production, rollouts, the last tick, a run in progress")
    def status() -> dict[str, Any]:
        aliases = registry.aliases()
        ks = registry.kill_switch()
        ticks = list_ticks(registry, limit=1)
        return {"production": aliases.get("production"), "previous": aliases.get("previous"),
                "candidate": aliases.get("candidate"), "kill_switch": None if ks is None else ks.reason,
                "rollouts": _rollouts(registry), "last_tick": _tick_summary(ticks[0]) if ticks else None,
                "run": _run_in_progress(registry, settings), "experience": _experience(registry)}

    @app.get(f"{API}/triggers", dependencies=auth, summary="The rules of the latest decision")
    def triggers() -> dict[str, Any]:
        for t in list_ticks(registry, limit=50):
            decide = next((s for s in t.get("steps", []) if s.get("step") == "decide"), None)
            if decide is not None:
                return {"tick": t.get("id"), "at": t.get("wall"), "outcome": decide.get("outcome"),
                        "summary": decide.get("summary"), "rules": decide.get("rules") or []}
        return {"tick": None, "at": None, "outcome": None, "summary": "no decision yet", "rules": []}

    @app.get(f"{API}/decisions", dependencies=auth, summary="The latest ticks: what each saw, did and why")
    def decisions(limit: int = 20) -> list[dict[str, Any]]:
        if not 1 <= limit <= 200:
            raise StarletteHTTPException(422, "limit must be between 1 and 200")
        return [_tick_summary(t) for t in list_ticks(registry, limit=limit)]

    @app.get(f"{API}/live", dependencies=auth, summary="Live accuracy per version over time")
    def live(limit: int = 200) -> dict[str, list[dict[str, Any]]]:
        if not 1 <= limit <= 2000:
            raise StarletteHTTPException(422, "limit must be between 1 and 2000")
        series: dict[str, list[dict[str, Any]]] = {}
        for t in reversed(list_ticks(registry, limit=limit)):
            for s in t.get("steps", []):
                rec = s.get("live") if s.get("step") == "monitor" else None
                if rec and rec.get("n"):
                    version = alerts_mod.monitored_version(s)
                    series.setdefault(version, []).append({"at": t.get("at"), "n": rec["n"],  # the loop's clock
                                                           "directional_accuracy": rec.get("directional_accuracy"),
                                                           "sharpe": rec.get("sharpe")})
        return series

    @app.get(f"{API}/alerts", dependencies=auth, summary="Alerts, newest first")
    def alerts(all: bool = False) -> list[dict[str, Any]]:  # noqa: A002 - the query parameter's name
        return [a.to_dict() for a in alerts_mod.list_alerts(registry, include_resolved=all)]

    @app.post(f"{API}/alerts/{{alert_id}}/ack", dependencies=auth, summary="Acknowledge an alert")
    def ack(alert_id: str, body: By) -> dict[str, Any]:
        return _alert_change(lambda: alerts_mod.acknowledge(registry, alert_id, by=body.by))

    @app.post(f"{API}/alerts/{{alert_id}}/resolve", dependencies=auth, summary="Resolve an alert")
    def resolve(alert_id: str, body: By) -> dict[str, Any]:
        return _alert_change(lambda: alerts_mod.resolve(registry, alert_id, by=body.by))

    @app.post(f"{API}/retrain", dependencies=auth, status_code=202, summary="Request a retrain now")
    def request_retrain(body: RetrainRequest) -> Response:
        running = _run_in_progress(registry, settings)
        if running:
            return _error(409, f"a retraining run is in progress: {running['run']}", run=running["run"])
        if retrain is None:
            return _error(409, "this loop cannot start a run from the API")
        try:
            started = retrain(body.reason)
        except Busy as e:
            return _error(409, str(e), run=e.run)
        return JSONResponse({"started": started, "reason": body.reason}, status_code=202)

    @app.post(f"{API}/rollouts/{{name}}/approve", dependencies=auth, summary="Approve a rollout's promotion")
    def approve(name: str, body: By) -> dict[str, Any]:
        from tideline.rollout.status import request_action

        try:
            doc = request_action(registry.store, name, "approve", by=body.by)
        except PolicyError as e:
            raise StarletteHTTPException(409, str(e)) from None
        except ConfigError as e:
            raise StarletteHTTPException(404, str(e)) from None
        return {"rollout": name, "phase": doc.status.phase.value, "requested": doc.requested_action}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return resources.files("tideline.app").joinpath("templates/status.html").read_text(encoding="utf-8")

    @app.get("/static/plotly.min.js", include_in_schema=False)
    def plotly_js() -> Response:
        return Response(_plotly_js(), media_type="application/javascript",
                        headers={"Cache-Control": "max-age=86400"})

    return app


@functools.cache
def _plotly_js() -> str:
    """The installed plotly's bundle (read once: about 4 MB)."""
    from plotly.offline import get_plotlyjs

    return str(get_plotlyjs())


def _alert_change(change: Callable[[], alerts_mod.Alert]) -> dict[str, Any]:
    try:
        return change().to_dict()
    except ConfigError as e:
        raise StarletteHTTPException(409 if "is resolved" in str(e) else 404, str(e)) from None


def _tick_summary(t: dict[str, Any]) -> dict[str, Any]:
    return {"id": t.get("id"), "at": t.get("at"), "wall": t.get("wall"), "outcome": t.get("outcome"),
            "error": t.get("error"), "did": t.get("did") or [],
            "steps": [{k: s.get(k) for k in ("step", "outcome", "summary")} for s in t.get("steps", [])]}


def _experience(registry: Registry) -> dict[str, Any] | None:
    """The latest experience pass's counts (None before the first): one small object, not the buffer."""
    from tideline.monitoring.experience import read_state

    last = read_state(registry).get("last_pass")
    if not isinstance(last, dict):
        return None
    return {"at": last.get("at"), "added": last.get("added", 0), "pending": last.get("pending", 0),
            "skew": sum(int(n) for n in (last.get("skew") or {}).values()),
            "quarantined": sum(int(n) for n in (last.get("quarantined") or {}).values())}


def _rollouts(registry: Registry) -> list[dict[str, Any]]:
    out = []
    for key in sorted(registry.store.list("rollouts/")):
        if not key.endswith(".json") or key.count("/") != 1:
            continue  # the current document of each rollout name (ended ones are under rollouts/history/)
        try:
            doc = json.loads(registry.store.get(key)[0])
        except (ValueError, TidelineError):
            continue
        st, spec = doc.get("status") or {}, doc.get("spec") or {}
        out.append({"name": spec.get("name"), "candidate": spec.get("candidate"), "baseline": spec.get("baseline"),
                    "phase": st.get("phase"), "weight": st.get("weight", 0), "message": st.get("message"),
                    "approved_by": st.get("approved_by")})
    return out


def _run_in_progress(registry: Registry, settings: Settings) -> dict[str, Any] | None:
    from tideline.clock import utcnow
    from tideline.triggers import RunLock

    holder = RunLock(registry.store, settings.triggers.lock_ttl_seconds).current(utcnow())
    return None if holder is None else {"run": holder.run_id, "reason": holder.reason}


def serve_in_thread(app: FastAPI, port: int, host: str = "127.0.0.1") -> tuple[Any, int]:
    """Run ``app`` with uvicorn in a daemon thread; returns (server, port) once it listens (0: a free port)."""
    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="tideline-api", daemon=True).start()
    return server, int(sock.getsockname()[1])
