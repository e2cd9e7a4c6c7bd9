"""The HTTP side: kserve's ModelServer (REST only) plus tideline's gateway middleware and error handlers.

kserve serves the routes (``/v1/models/{name}:predict``, ``/v2/models/{name}/infer``, health, ``/metrics``)
from its module-level FastAPI app (``kserve.model_server.app``); before the server starts we add to it:

* ``GatewayMiddleware`` (pure ASGI, outside every route):
  - refuses a body larger than ``max_body_bytes`` with 413 before anything parses it: on the declared
    ``Content-Length`` first (before reading a byte of it), else while counting the streamed bytes of a
    chunked body (nothing past the limit is stored). The 413 is sent at once, on a connection kept open:
    the HTTP server discards the rest of that body as it arrives (without storing it), so a client still
    uploading reads the 413 instead of a reset connection;
  - refuses what kserve would answer with a 5xx or a misleading message, before the body is read:
    ``:explain`` (no explainer; kserve says 501), ``/v2/models/{name}/versions/{v}/...`` (kserve: 501
    "not supported"), the model repository API ``/v2/repository/...`` (load/unload: it would let any
    client unload the served model), a method other than POST on a prediction route (405), a v2 body that
    is not JSON (415; kserve would take it for the binary extension);
  - refuses the v2 binary-tensor extension (``inference-header-content-length``) with 400;
  - has kserve hand a v1 prediction's body over undecoded (``_raw_v1_headers``): the predictor parses and
    validates it in one pass;
  - adds ``x-model-version`` to every response that lacks it (the active version);
  - counts and times prediction requests: ``tideline_requests_total``, ``tideline_request_errors_total``,
    ``tideline_request_duration_seconds`` labelled with the version that answered; a request whose
    client disconnected before the answer is counted with code 499 (not as a server error);
  - makes every error answer ``{"error": "<one line>"}`` (whatever handler wrote it: control characters
    escaped, a non-JSON body wrapped, Content-Length fixed).
* exception handlers that turn tideline's ``RequestError``, FastAPI's body validation errors and
  Starlette's HTTP errors into ``{"error": "<what is wrong>"}`` with the right status. kserve's own
  handlers stay: InvalidInput -> 400, ModelNotFound -> 404, ModelNotReady -> 503,
  InferenceError/anything else -> 500 (``kserve.errors``).
* uvicorn runs tideline's protocol class (``protocol_class``, through uvicorn's public ``Config.http``
  option): timeouts for stalled clients, a JSON 503 over ``max_connections``, a JSON 400 for bytes that are
  not HTTP. ``model_server`` subclasses kserve's ModelServer to listen on ``host`` with that protocol.
  Nothing of uvicorn or kserve is patched.
"""

from __future__ import annotations

import http
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
_EXPLAIN_RE: Final = re.compile(r"^/v1/models/([^/]+):explain$")
# model metadata and readiness (kserve loads an unready model on metadata, and logs a traceback for each unready answer)
_MODEL_RE: Final = re.compile(r"^/v[12]/models/[^/]+(?:/ready)?$")
_VERSIONED_RE: Final = re.compile(r"^/v2/models/([^/]+)/versions/([^/]+)(/.*)?$")
_JSON_TYPES: Final = (b"application/json", b"text/json")
RAW_V1_TYPE: Final = b"application/x-tideline-v1+json"
"""the Content-Type a v1 prediction reaches kserve with: not one it decodes (``_raw_v1_headers``)"""
_RAW_V1_FROM: Final = (*_JSON_TYPES, b"", b"application/x-www-form-urlencoded")
TIMED_OUT: Final = "tideline.timed_out"  # scope key: protocol_class answered this request 408
SWEEP_S: Final = 0.25  # how often the protocol (protocol_class) looks for stalled connections
DEFAULT_READ_TIMEOUT: Final = 10.0  # seconds a client may pause while sending a body
DEFAULT_HEADER_TIMEOUT: Final = 10.0  # seconds for the request line and headers to arrive
DEFAULT_MAX_CONNECTIONS: Final = 1000  # open connections (and requests in flight) before new ones get a 503


def one_line(text: str, limit: int = 1000) -> str:
    """A message fit for ``{"error": ...}``: one line (control characters escaped), at most ``limit``."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text[:limit] if len(text) <= limit else text[:limit - 1] + "…"


_KSERVE_BYTES_HINT: Final = "header is missing"  # "received byte inputs, but the 'inference-header-...' header ..."


def _error_body(status: int, body: bytes) -> bytes:
    """``body`` of an error answer, made ``{"error": "<one line>"}`` whatever the handler wrote."""
    import orjson

    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    err = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(err, str) and _KSERVE_BYTES_HINT in err:  # kserve took a non-object JSON body for bytes
        err = 'the v2 body must be a JSON object {"inputs": [...]} (the binary tensor extension is not supported)'
    elif isinstance(err, str) and err.strip() and err.isprintable() and len(err) <= 1000:
        return body
    if not (isinstance(err, str) and err.strip()):
        err = body.decode("utf-8", "replace").strip() or http.HTTPStatus(status).phrase
    return orjson.dumps({**(doc if isinstance(doc, dict) else {}), "error": one_line(err)})


def _json_response(status: int, message: str, extra_headers: list[tuple[bytes, bytes]] | None = None
                   ) -> tuple[Message, Message]:
    import orjson

    body = orjson.dumps({"error": one_line(message)})
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
        state: dict[str, Any] = {"status": None, "version": None, "gone": False}
        held: list[Message] = []  # an error answer, held until complete to check its body
        upstream = receive

        async def receive_wrapper() -> Message:
            message = await upstream()
            if message["type"] == "http.disconnect":
                state["gone"] = True
            return message

        receive = receive_wrapper

        async def send_wrapper(message: Message) -> None:
            if held:  # the body of an error answer
                held.append(message)
                if message["type"] == "http.response.body" and not message.get("more_body", False):
                    await _send_error(send, held)
                return
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
                if message["status"] >= 400 and scope["method"] != "HEAD":
                    held.append(message)
                    return
            await send(message)

        try:
            refusal = self._route_refusal(scope, match)
            if refusal is not None:
                status, text, extra = refusal
                start, body = _json_response(status, text, extra)
                await send_wrapper(start)
                await send_wrapper(body)
                return  # the body (if any) was not read: the HTTP server discards it
            if scope["method"] in ("POST", "PUT", "PATCH"):
                replay = await self._read_body(scope, receive, send_wrapper)
                if replay is None:
                    return  # answered (413, 408, 400) or the client went away
                receive = replay
                if match and match.group(2) is not None and any(
                        k.lower() == _V2_BINARY_HEADER for k, _ in scope.get("headers", [])):
                    start, body = _json_response(
                        400, "the v2 binary tensor extension is not supported; send the tensors as JSON data")
                    await send_wrapper(start)
                    await send_wrapper(body)
                    return
                if match and match.group(1) is not None:
                    scope["headers"] = _raw_v1_headers(scope.get("headers", []))
            await self.app(scope, receive, send_wrapper)
        finally:
            if match:
                name = match.group(1) or match.group(2)
                status = state["status"]
                if scope.get(TIMED_OUT):
                    status = 408  # the protocol (protocol_class) answered it
                elif state["gone"] and (status is None or status >= 500):
                    status = 499  # the client went away mid-request (nginx's code): not a server error
                self._record(name, status or 500, state["version"] or predictor.version,
                             time.perf_counter() - t0)

    def _route_refusal(self, scope: Scope, match: re.Match[str] | None
                       ) -> tuple[int, str, list[tuple[bytes, bytes]] | None] | None:
        """(status, message, extra headers) for a request refused on its method, path or content type."""
        path: str = scope["path"]
        method: str = scope["method"]
        name = self.predictor.name
        waiting = getattr(self.predictor, "load_error", None)
        if waiting and self.predictor.serving is None and (
                match or path == "/v2/health/ready" or _MODEL_RE.match(path)):
            # started unloaded (--wait-for-model): not ready, and kserve must not try to load on a request
            return (503, f"not ready: no version of {name!r} is loaded yet: {waiting}",
                    [(b"retry-after", b"5")])
        if match:
            asked = match.group(1) or match.group(2)
            if asked != name:
                return (404, f"model {asked[:100]!r} is not served here; this predictor serves {name!r}", None)
            if method != "POST":
                return (405, f"{method[:16]} is not allowed on {path[:200]}; send a POST with a JSON body",
                        [(b"allow", b"POST")])
            ctype, encoding = b"", b""
            for k, v in scope.get("headers", []):
                k = k.lower()
                if k == b"content-type" and not ctype:
                    ctype = v.split(b";", 1)[0].strip().lower()
                elif k == b"content-encoding":
                    encoding = v.strip().lower()
            if encoding not in (b"", b"identity"):
                return (415, f"Content-Encoding {encoding.decode('latin-1')[:40]} is not supported: send the "
                        "JSON body uncompressed", None)
            v2 = match.group(2) is not None
            if v2:
                versioned = _VERSIONED_RE.match(path)
                if versioned:
                    return (404, f"version {versioned.group(2)[:64]!r} in the URL: this predictor serves "
                            f"one version ({self.predictor.version or 'none yet'}); "
                            f"use POST /v2/models/{name}/infer", None)
            if not _is_json_type(ctype, v2):
                shown = ctype.decode("latin-1")[:80] or "none"
                return (415, f"a {'v2 inference' if v2 else 'v1 prediction'} request must be JSON "
                        f"(Content-Type: application/json); got Content-Type {shown}", None)
            return None
        if _EXPLAIN_RE.match(path):
            return (404, f"this predictor has no explainer; use POST /v1/models/{name}:predict", None)
        if _VERSIONED_RE.match(path):
            return (404, f"model versions in the URL are not supported: this predictor serves one version "
                    f"({self.predictor.version or 'none yet'}) at /v2/models/{name}", None)
        if path.startswith("/v2/repository/") or path == "/v2/repository":
            return (403, "the model repository API (load/unload) is disabled on this predictor", None)
        return None

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
        """The whole body, read here and replayed to the app; None when it was answered instead: 413 too
        large (on the declared Content-Length, before reading a byte, or while counting a chunked body),
        nothing when the client went away mid-body (counted 499; the app never runs, so nothing logs a
        traceback for it). A body that stops arriving is answered 408 by the protocol (``protocol_class``)."""
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
            await self._too_large(send, f"the body is {declared} bytes; the limit is {limit} (--max-body-bytes)")
            return None
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()  # a body that stops arriving is answered 408 by the protocol (protocol_class)
            if message["type"] != "http.request":  # http.disconnect: the client went away (or was timed out)
                return None
            chunk = message.get("body", b"")
            more = message.get("more_body", False)
            size += len(chunk)
            if size > limit:
                chunks.clear()
                await self._too_large(send, f"the body is more than {limit} bytes (--max-body-bytes)")
                return None
            chunks.append(chunk)
        return _replay(b"".join(chunks), receive)

    @staticmethod
    async def _too_large(send: Send, message: str) -> None:
        """Answer 413 now, without reading further. The connection stays open: the HTTP server (uvicorn)
        discards the rest of this body as it arrives without storing it (its ``on_body`` drops data once
        the response is complete), so a client still uploading reads this answer rather than a reset."""
        start, body = _json_response(413, message)
        await send(start)
        await send(body)


async def _send_error(send: Send, held: list[Message]) -> None:
    """Send a held error answer with its body checked by ``_error_body`` (Content-Length fixed)."""
    start, parts = held[0], held[1:]
    raw = b"".join(m.get("body", b"") for m in parts if m["type"] == "http.response.body")
    body = _error_body(int(start["status"]), raw)
    if body is not raw:
        headers = [(k, v) for k, v in start.get("headers") or [] if k.lower() not in (b"content-length",
                                                                                   b"content-type")]
        start = {**start, "headers": [*headers, (b"content-type", b"application/json"),
                                      (b"content-length", str(len(body)).encode())]}
    held.clear()
    await send(start)
    await send({"type": "http.response.body", "body": body, "more_body": False})


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


_ROUTES_HINT: Final = "predictions: POST /v1/models/<name>:predict or POST /v2/models/<name>/infer"


async def _http_error_handler(request: Any, exc: Exception) -> Any:
    from fastapi.responses import ORJSONResponse

    status = int(getattr(exc, "status_code", 500))
    detail = str(getattr(exc, "detail", None) or "error")
    try:
        method, path = request.method, request.url.path[:200]
    except Exception:  # noqa: BLE001 - a message, never a failure
        method, path = "?", "?"
    if status == 404 and detail == "Not Found":
        detail = f"no such endpoint: {method[:16]} {path} ({_ROUTES_HINT})"
    elif status == 405 and detail == "Method Not Allowed":
        allow = (getattr(exc, "headers", None) or {}).get("Allow", "")
        detail = f"{method[:16]} is not allowed on {path}" + (f"; allowed: {allow}" if allow else "")
    elif status == 400 and detail == "There was an error parsing the body":
        detail = _body_parse_error(exc.__cause__)
    return ORJSONResponse(status_code=status, content={"error": detail},
                          headers=getattr(exc, "headers", None))


def _body_parse_error(cause: BaseException | None) -> str:
    """FastAPI's "There was an error parsing the body", with its cause (it hides it)."""
    if isinstance(cause, RecursionError):
        return "the body is not valid JSON: nested too deeply"
    if isinstance(cause, UnicodeDecodeError):
        return f"the body is not valid JSON: not UTF-8 (byte {cause.start})"
    if cause is not None:
        first = (str(cause).strip().splitlines() or [""])[0][:200]
        return f"the body is not valid JSON: {type(cause).__name__}{': ' + first if first else ''}"
    return "the body is not valid JSON"


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
    from starlette.requests import ClientDisconnect

    # ClientDisconnect: the client went away mid-body (nobody to answer); one line, not a traceback
    logging.getLogger("kserve").addFilter(_QuietClientErrors((InvalidInput, ModelNotFound, ClientDisconnect)))


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


_BAD_HTTP: Final = ("the request is not valid HTTP/1.1 (request line, a header, Content-Length or a chunk "
                     "of the body is malformed)")


def _raw_v1_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """A v1 prediction's headers with a Content-Type kserve hands over undecoded. kserve's v1 handler
    (``kserve.protocol.dataplane.DataPlane.decode``) parses a body with orjson when its Content-Type is absent
    or one of its ``JSON_HEADERS``, and gives the model the bytes as they came for any other type; the
    predictor then parses and validates the common body in one pass (``validation.decode_v1``) instead of
    validating the dicts orjson made. A CloudEvent (its binary ``ce-*`` headers, or a structured one's
    ``application/cloudevents+json``) keeps its headers: kserve decodes and answers those itself."""
    ctype = b""
    names = set()
    for k, v in headers:
        k = k.lower()
        names.add(k)
        if k == b"content-type" and not ctype:
            ctype = v.split(b";", 1)[0].strip().lower()
    if ctype not in _RAW_V1_FROM or {b"ce-specversion", b"ce-source", b"ce-type", b"ce-id"} <= names:
        return headers
    return [*(h for h in headers if h[0].lower() != b"content-type"), (b"content-type", RAW_V1_TYPE)]


def _is_json_type(ctype: bytes, v2: bool) -> bool:
    """The Content-Types a prediction body may carry. JSON types always. v1 also takes none at all and
    ``application/x-www-form-urlencoded``, which is what ``curl -d`` sends when no type is given (KServe's
    own v1 examples do so); the body must still be JSON. v2 takes JSON types only: kserve reads any other
    type as its binary tensor extension."""
    if ctype in _JSON_TYPES or ctype.endswith(b"+json"):
        return True
    return not v2 and ctype in (b"", b"application/x-www-form-urlencoded")


def protocol_class(*, header_timeout: float, read_timeout: float, max_connections: int) -> type[Any]:
    """uvicorn's httptools protocol plus what uvicorn has no option for, handed to uvicorn through its public
    ``Config(http=<protocol class>)`` option: a subclass, nothing of uvicorn is patched.

    * **Stalled clients time out** (uvicorn's only timer is the keep-alive between requests): a connection
      whose request line and headers are not complete ``header_timeout`` seconds after it opened or its
      request began is closed (with a 408 when some of a request had arrived); a body that receives nothing
      for ``read_timeout`` seconds before the answer starts gets a 408 and the connection is closed. Each
      connection only notes the time of its last step; one sweep per ``SWEEP_S`` seconds looks at all of
      them, so no request pays for a timer.
    * **Over ``max_connections``** open connections or running requests a request gets a JSON 503 with
      ``Retry-After`` at once (uvicorn's ``limit_concurrency`` answers text/plain and logs a line per refusal).
    * **Bytes that are not HTTP** (a non-numeric or doubled Content-Length, a broken chunk) get a JSON 400
      like every other refusal; uvicorn answers them itself, before any application code, in text/plain.

    The overridden methods are the asyncio/httptools callbacks (``connection_made``, ``on_message_begin``,
    ``on_headers_complete``, ``on_body``, ``on_message_complete``) and uvicorn's ``send_400_response``; a
    uvicorn without them fails here, at start, not silently.
    """
    import orjson
    from uvicorn.protocols.http import httptools_impl

    base = httptools_impl.HttpToolsProtocol
    hooks = ("connection_made", "on_message_begin", "on_headers_complete", "on_body", "on_message_complete",
             "send_400_response")
    missing = [h for h in hooks if not hasattr(base, h)]
    if not hasattr(httptools_impl, "STATUS_LINE"):
        missing.append("STATUS_LINE")
    if missing:
        raise RuntimeError(f"uvicorn {_uvicorn_version()}'s httptools protocol lacks {missing}: "
                           "pin the uvicorn of requirements.lock")
    status_line = httptools_impl.STATUS_LINE
    monotonic = time.monotonic
    busy_body = orjson.dumps({"error": f"the predictor has {max_connections} connections open "
                                       "(--max-connections); try again shortly"})

    def answer(transport: Any, status: int, payload: bytes, extra: bytes = b"") -> None:
        transport.write(b"".join([status_line[status], b"content-type: application/json\r\n", extra,
                                  b"content-length: " + str(len(payload)).encode() + b"\r\n",
                                  b"connection: close\r\n\r\n", payload]))

    async def busy(scope: Any, receive: Receive, send: Send) -> None:
        m.SLOW_CLIENTS.labels(phase="over_limit").inc()
        await send({"type": "http.response.start", "status": 503, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(busy_body)).encode()),
            (b"connection", b"close"), (b"retry-after", b"1")]})
        await send({"type": "http.response.body", "body": busy_body, "more_body": False})

    def sweep(loop: Any, connections: set[Any]) -> None:
        now = monotonic()
        for c in list(connections):
            phase = getattr(c, "_tl_phase", None)
            if phase is None or c.transport.is_closing():
                continue
            idle = now - c._tl_since
            if phase in ("new", "headers") and idle > header_timeout:
                m.SLOW_CLIENTS.labels(phase="headers").inc()
                if phase == "headers":
                    msg = f"the request headers did not arrive within {header_timeout:g} s"
                    answer(c.transport, 408, orjson.dumps({"error": msg}))
                c._tl_phase = None
                c.transport.close()
            elif phase == "body" and idle > read_timeout and c.cycle is not None \
                    and not c.cycle.response_started:
                m.SLOW_CLIENTS.labels(phase="body").inc()
                msg = f"the body stopped arriving: nothing for {read_timeout:g} s"
                answer(c.transport, 408, orjson.dumps({"error": msg}))
                c.cycle.response_started = True  # the app's own answer, if any, is not sent after it
                c.cycle.scope[TIMED_OUT] = True  # the gateway counts it 408, not as a client gone (499)
                c._tl_phase = None
                c.transport.close()
        loop.call_later(SWEEP_S, sweep, loop, connections)

    class TidelineHttpProtocol(base):  # type: ignore[misc, valid-type]
        _tl_phase: str | None = None
        _tl_since: float = 0.0

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._tl_phase, self._tl_since = "new", monotonic()
            if not getattr(self.server_state, "_tl_sweeping", False):
                self.server_state._tl_sweeping = True
                self.loop.call_later(SWEEP_S, sweep, self.loop, self.connections)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._tl_phase, self._tl_since = "headers", monotonic()

        def on_headers_complete(self) -> None:
            self._tl_phase, self._tl_since = "body", monotonic()
            if len(self.connections) >= max_connections or len(self.tasks) >= max_connections:  # as uvicorn's
                app, self.app = self.app, busy  # this request only: the cycle takes its app now
                try:
                    super().on_headers_complete()
                finally:
                    self.app = app
            else:
                super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            self._tl_since = monotonic()
            super().on_body(body)

        def on_message_complete(self) -> None:
            self._tl_phase = None
            super().on_message_complete()

        def send_400_response(self, msg: str) -> None:
            answer(self.transport, 400, orjson.dumps({"error": _BAD_HTTP}))
            self.transport.close()

    return TidelineHttpProtocol


def _uvicorn_version() -> str:
    import uvicorn

    return str(uvicorn.__version__)


def free_port() -> int:
    """A TCP port free right now (bound on every interface, then released; another process may take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def wait_until_serving(port: int, path: str, *, timeout: float = 120.0,
                       stop: threading.Event | None = None, host: str = "127.0.0.1") -> bool:
    """Poll ``GET path`` (on loopback by default) until it answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not (stop and stop.is_set()):
        try:
            conn = http.client.HTTPConnection(host, port, timeout=2)
            conn.request("GET", path)
            ok = conn.getresponse().status == 200
            conn.close()
            if ok:
                return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def model_server(*, host: str, protocol: type[Any], http_port: int) -> Any:
    """kserve's ModelServer (REST only, one process) listening on ``host`` with ``protocol``.

    kserve builds uvicorn's ``Config`` inside ``ModelServer.start`` with ``host="0.0.0.0"`` (every interface)
    and offers no option for the host or the protocol; its ``setup_event_loop`` hook runs after that and
    before the server starts, so the subclass sets both there (public ``Config`` fields, nothing patched).
    """
    import kserve.model_server as ks

    class TidelineModelServer(ks.ModelServer):  # type: ignore[misc]
        def setup_event_loop(self) -> None:
            super().setup_event_loop()
            if self._rest_server is None:
                raise RuntimeError("kserve did not build its REST server before setup_event_loop")
            self._rest_server.config.host = host
            self._rest_server.config.http = protocol
            self._rest_server.config.limit_concurrency = None  # the protocol answers over-limit requests

    return TidelineModelServer(http_port=http_port, enable_grpc=False, enable_latency_logging=False, workers=1)


def serve(predictor: Any, *, http_port: int, max_body_bytes: int, host: str = "127.0.0.1",
          read_timeout: float = DEFAULT_READ_TIMEOUT, header_timeout: float = DEFAULT_HEADER_TIMEOUT,
          max_connections: int = DEFAULT_MAX_CONNECTIONS, on_ready: Callable[[int], None] | None = None) -> None:
    """Run kserve's ModelServer (REST only, one process) with ``predictor`` until a signal stops it."""
    import kserve.model_server as ks

    configure_app(ks.app, predictor, max_body_bytes=max_body_bytes)
    protocol = protocol_class(header_timeout=header_timeout, read_timeout=read_timeout,
                              max_connections=max_connections)
    server = model_server(host=host, protocol=protocol, http_port=http_port)
    quiet_per_request_logs()
    stop = threading.Event()
    if on_ready is not None:
        def announce() -> None:
            probe = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
            if wait_until_serving(http_port, f"/v2/models/{predictor.name}/ready", stop=stop, host=probe):
                on_ready(http_port)

        threading.Thread(target=announce, name="tideline-ready", daemon=True).start()
    try:
        server.start([predictor])
    finally:
        stop.set()
