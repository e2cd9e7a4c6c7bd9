"""The HTTP side: kserve's ModelServer (REST only) plus tideline's gateway middleware and error handlers.

kserve serves the routes (``/v1/models/{name}:predict``, ``/v2/models/{name}/infer``, health, ``/metrics``)
from its module-level FastAPI app (``kserve.model_server.app``); before the server starts we add to it:

* ``GatewayMiddleware`` (pure ASGI, outside every route):
  - refuses a body larger than ``max_body_bytes`` with 413 before anything parses it: on the declared
    ``Content-Length`` first, else while counting the streamed bytes (the rest is drained, not stored, so
    the client reads the 413 instead of a reset connection);
  - refuses the v2 binary-tensor extension (``inference-header-content-length``) with 400;
  - adds ``x-model-version`` to every response that lacks it (the active version);
  - counts and times prediction requests: ``tideline_requests_total``, ``tideline_request_errors_total``,
    ``tideline_request_duration_seconds`` labelled with the version that answered.
* exception handlers that turn tideline's ``RequestError``, FastAPI's body validation errors and
  Starlette's HTTP errors into ``{"error": "<what is wrong>"}`` with the right status. kserve's own
  handlers stay: InvalidInput -> 400, ModelNotFound -> 404, ModelNotReady -> 503,
  InferenceError/anything else -> 500 (``kserve.errors``).
"""

from __future__ import annotations

import http.client
import logging
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

from tideline.serving import metrics as m
from tideline.serving.validation import RequestError

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_PREDICT_RE: Final = re.compile(
    r"^/v1/models/([^/]+):predict$|^/v2/models/([^/]+)(?:/versions/[^/]+)?/infer$")
_V2_BINARY_HEADER: Final = b"inference-header-content-length"
_DRAIN_FACTOR: Final = 8  # read (and discard) at most this many times the limit before closing


def _json_response(status: int, message: str, extra_headers: list[tuple[bytes, bytes]] | None = None
                   ) -> tuple[Message, Message]:
    import orjson

    body = orjson.dumps({"error": message})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += extra_headers or []
    return ({"type": "http.response.start", "status": status, "headers": headers},
            {"type": "http.response.body", "body": body, "more_body": False})


class GatewayMiddleware:
    """Body-size limit, version header and per-request metrics (see the module docstring)."""

    def __init__(self, app: Callable[..., Awaitable[None]], *, predictor: Any, max_body_bytes: int) -> None:
        self.app = app
        self.predictor = predictor
        self.max_body_bytes = int(max_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        predictor = self.predictor
        match = _PREDICT_RE.match(scope["path"])
        t0 = time.perf_counter()
        state: dict[str, Any] = {"status": None, "version": None}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                headers = message.get("headers") or []
                for k, v in headers:
                    if k.lower() == b"x-model-version":
                        state["version"] = v.decode("latin-1")
                        break
                else:
                    version = predictor.version
                    state["version"] = version
                    if version:
                        message["headers"] = [*headers, (b"x-model-version", version.encode())]
            await send(message)

        try:
            if scope["method"] in ("POST", "PUT", "PATCH"):
                replay = await self._read_body(scope, receive, send_wrapper)
                if replay is None:
                    return  # answered 413
                receive = replay
                if match and match.group(2) is not None and any(
                        k.lower() == _V2_BINARY_HEADER for k, _ in scope.get("headers", [])):
                    start, body = _json_response(
                        400, "the v2 binary tensor extension is not supported; send the tensors as JSON data")
                    await send_wrapper(start)
                    await send_wrapper(body)
                    return
            await self.app(scope, receive, send_wrapper)
        finally:
            if match:
                name = match.group(1) or match.group(2)
                self._record(name, state["status"] or 500, state["version"] or predictor.version,
                             time.perf_counter() - t0)

    def _record(self, name: str, status: int, version: str, seconds: float) -> None:
        p = self.predictor
        model = p.name if name == p.name else "_unknown"
        role = p.role
        code = str(status)
        m.child(m.REQUESTS, model, version, role, code).inc()
        if status >= 400:
            m.child(m.REQUEST_ERRORS, model, version, role, code).inc()
        m.child(m.REQUEST_DURATION, model, version, role).observe(seconds)

    async def _read_body(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """A ``receive`` for the app, or None after answering 413. With a Content-Length within the limit
        the body is passed through (the server reads exactly that many bytes); without one (chunked) it is
        read here, counting, and replayed."""
        limit = self.max_body_bytes
        declared = None
        for k, v in scope.get("headers", []):
            if k.lower() == b"content-length":
                try:
                    declared = int(v)
                except ValueError:
                    declared = -1
                break
        if declared is not None and declared < 0:
            start, body = _json_response(400, "the Content-Length header is not a number")
            await send(start)
            await send(body)
            return None
        if declared is not None and declared > limit:
            await self._refuse(receive, send,
                               f"the body is {declared} bytes; the limit is {limit} (--max-body-bytes)")
            return None
        if declared is not None:
            return receive  # the HTTP server delivers exactly Content-Length bytes: nothing to count
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # http.disconnect
                return _replay(b"", receive, message)
            chunk = message.get("body", b"")
            more = message.get("more_body", False)
            size += len(chunk)
            if size > limit:
                await self._refuse(receive, send, f"the body is more than {limit} bytes (--max-body-bytes)",
                                   already=size, more=more)
                return None
            chunks.append(chunk)
        return _replay(b"".join(chunks), receive)

    async def _refuse(self, receive: Receive, send: Send, message: str, *, already: int = 0,
                      more: bool = True) -> None:
        """Drain (without keeping) a bounded amount of the rest, then answer 413."""
        cap = max(self.max_body_bytes, 1 << 20) * _DRAIN_FACTOR
        drained = already
        close = False
        while more:
            if drained > cap:
                close = True
                break
            msg = await receive()
            if msg["type"] != "http.request":
                break
            drained += len(msg.get("body", b""))
            more = msg.get("more_body", False)
        start, body = _json_response(413, message, [(b"connection", b"close")] if close else None)
        await send(start)
        await send(body)


def _replay(body: bytes, receive: Receive, first: Message | None = None) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            if first is not None:
                return first
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


# ------------------------------------------------------------------------------------ error handlers


async def _request_error_handler(_: Any, exc: Exception) -> Any:
    from fastapi.responses import ORJSONResponse

    assert isinstance(exc, RequestError)
    return ORJSONResponse(status_code=exc.status, content={"error": exc.message})


async def _validation_error_handler(_: Any, exc: Exception) -> Any:
    from fastapi.responses import ORJSONResponse

    errors = list(getattr(exc, "errors", lambda: [])())
    if any(e.get("type") == "json_invalid" for e in errors):
        e = next(e for e in errors if e.get("type") == "json_invalid")
        detail = (e.get("ctx") or {}).get("error", "JSON decode error")
        return ORJSONResponse(status_code=400, content={"error": f"the body is not valid JSON: {detail}"})
    parts = []
    for e in errors[:3]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "InferenceRequest"))
        if loc.startswith("bytes"):
            continue  # the alternative kserve accepts for its binary extension; not useful to show
        parts.append(f"{loc or 'body'}: {e.get('msg', 'invalid')}")
    msg = "; ".join(parts) or "the body is not a valid request"
    return ORJSONResponse(status_code=422, content={"error": f"invalid v2 inference request: {msg}"[:1000]})


async def _http_error_handler(_: Any, exc: Exception) -> Any:
    from fastapi.responses import ORJSONResponse

    status = int(getattr(exc, "status_code", 500))
    detail = getattr(exc, "detail", None) or "error"
    return ORJSONResponse(status_code=status, content={"error": str(detail)},
                          headers=getattr(exc, "headers", None))


class _QuietClientErrors(logging.Filter):
    """kserve logs a full traceback for every refused request (InvalidInput, ModelNotFound ...): keep one
    line instead. Server errors keep their traceback."""

    def __init__(self, quiet: tuple[type[BaseException], ...]) -> None:
        super().__init__()
        self.quiet = quiet

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and isinstance(exc, self.quiet):
            record.msg, record.args, record.exc_info = "refused request: %s", (str(exc),), None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def configure_app(app: Any, predictor: Any, *, max_body_bytes: int) -> None:
    """Add the middleware and error handlers to kserve's FastAPI app (before the server starts)."""
    from fastapi.exceptions import RequestValidationError
    from kserve.errors import InvalidInput, ModelNotFound
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app.add_middleware(GatewayMiddleware, predictor=predictor, max_body_bytes=max_body_bytes)
    app.add_exception_handler(RequestError, _request_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)
    logging.getLogger("kserve").addFilter(_QuietClientErrors((InvalidInput, ModelNotFound)))


def quiet_per_request_logs() -> None:
    """uvicorn's access log and kserve's timing trace write lines per request (latency, noise); keep them
    only at TIDELINE_LOG_LEVEL=DEBUG. Also drop prometheus_client's ``*_created`` series."""
    import os
    import warnings

    from prometheus_client import disable_created_metrics

    disable_created_metrics()
    warnings.filterwarnings("ignore", message=".*ORJSONResponse is deprecated.*")
    if os.environ.get("TIDELINE_LOG_LEVEL", "").upper() != "DEBUG":
        logging.getLogger("uvicorn.access").disabled = True
        logging.getLogger("kserve.trace").setLevel(logging.WARNING)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def wait_until_serving(port: int, path: str, *, timeout: float = 120.0,
                       stop: threading.Event | None = None) -> bool:
    """Poll ``GET path`` on loopback until it answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not (stop and stop.is_set()):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            ok = conn.getresponse().status == 200
            conn.close()
            if ok:
                return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def serve(predictor: Any, *, http_port: int, max_body_bytes: int,
          on_ready: Callable[[int], None] | None = None) -> None:
    """Run kserve's ModelServer (REST only, one process) with ``predictor`` until a signal stops it."""
    import kserve.model_server as ks

    configure_app(ks.app, predictor, max_body_bytes=max_body_bytes)
    server = ks.ModelServer(http_port=http_port, enable_grpc=False, enable_latency_logging=False, workers=1)
    quiet_per_request_logs()
    stop = threading.Event()
    if on_ready is not None:
        def announce() -> None:
            if wait_until_serving(http_port, f"/v2/models/{predictor.name}/ready", stop=stop):
                on_ready(http_port)

        threading.Thread(target=announce, name="tideline-ready", daemon=True).start()
    try:
        server.start([predictor])
    finally:
        stop.set()
