"""The predictor's edges found by the adversarial run: bodies that never finish, headers that trickle,
client disconnects, content types and encodings, integer tensors out of range, symbols with control
characters, the listening address, and the v2 metadata."""

from __future__ import annotations

import json
import selectors
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import wait_for
from reliability.predictor import Fixture, Server, build_fixture, error_of, raw_http, read_response, start_server

pytestmark = pytest.mark.slow
MODEL = "tideline"
V1 = f"/v1/models/{MODEL}:predict"
V2 = f"/v2/models/{MODEL}/infer"
TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    return build_fixture(tmp_path_factory.mktemp("edges"))


@pytest.fixture(scope="module")
def srv(fx: Fixture) -> Iterator[Server]:
    s = start_server(fx, "--ref", "v1", "--reload-interval", "0", "--read-timeout", str(TIMEOUT_S),
                     "--header-timeout", str(TIMEOUT_S), "--max-connections", "400", name="edges")
    yield s
    assert s.alive(), s.log.read_text()[-3000:]
    assert s.stop() == 0


def head(path: str, length: int | None = None, extra: str = "", ctype: str = "application/json") -> bytes:
    h = f"POST {path} HTTP/1.1\r\nHost: x\r\n"
    if ctype:
        h += f"Content-Type: {ctype}\r\n"
    if length is not None:
        h += f"Content-Length: {length}\r\n"
    return (h + extra + "\r\n").encode()


def post(srv: Server, path: str, body: bytes, ctype: str = "application/json", extra: str = "") -> tuple[int, str]:
    status, _, data = raw_http(srv.port, head(path, len(body), extra, ctype) + body)
    return status, error_of(data)


# ---------------------------------------------------------------------------- slow and broken clients
def test_a_body_that_never_finishes_gets_a_408_and_the_connection_closes(srv: Server) -> None:
    before = srv.metric("tideline_slow_clients_total", phase="body")
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
        s.sendall(head(V1, 1000) + b'{"instances"')  # 1000 declared, 12 sent
        status, headers, body = read_response(s)
        assert status == 408 and "stopped arriving" in error_of(body), body
        assert headers.get("connection") == "close"
        assert s.recv(10) == b""  # closed
    assert srv.metric("tideline_slow_clients_total", phase="body") == before + 1


def test_a_chunk_size_that_never_arrives_is_answered(srv: Server) -> None:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
        s.sendall(head(V1, extra="Transfer-Encoding: chunked\r\n") + b"FFFFFFFFFFFFFFFF\r\n{\"in")
        status, _, body = read_response(s)
    assert status in (400, 408, 413) and error_of(body), (status, body)


@pytest.mark.parametrize("sent", [b"", b"POST /v1/models/tideline:predict HTTP/1.1\r\nHost: x\r\nContent-Ty"])
def test_headers_that_never_finish_close_the_connection(srv: Server, sent: bytes) -> None:
    before = srv.metric("tideline_slow_clients_total", phase="headers")
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
        s.sendall(sent)
        status, _, body = read_response(s)
    if sent:  # some of a request arrived: it is told why
        assert status == 408 and "headers did not arrive" in error_of(body), body
    else:  # a connection that never said anything is just closed
        assert status == 0
    assert srv.metric("tideline_slow_clients_total", phase="headers") == before + 1


def test_many_half_sent_bodies_are_all_closed_and_the_server_still_answers(fx: Fixture, srv: Server) -> None:
    socks = []
    for _ in range(300):
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
        s.sendall(head(V1, 500) + b'{"inst')
        socks.append(s)
    try:
        ok = post(srv, V1, json.dumps({"instances": fx.instances(2)}).encode())
        assert ok[0] == 200, ok  # a real client still gets through while 300 stall
        for s in socks:  # each is answered 408 and closed after the read timeout
            status, _, _ = read_response(s)
            assert status == 408
            assert s.recv(10) == b""
    finally:
        for s in socks:
            s.close()


def test_client_disconnects_mid_body_are_counted_not_logged_as_tracebacks(srv: Server) -> None:
    before = srv.metric("tideline_requests_total", code="499")
    size0 = srv.log.stat().st_size
    for _ in range(200):
        with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
            s.sendall(head(V1, 5000) + b'{"instances": [')
    wait_for(lambda: srv.metric("tideline_requests_total", code="499") >= before + 200, what="200 disconnects")
    logged = srv.log.read_bytes()[size0:].decode(errors="replace")
    assert "Traceback" not in logged and "ClientDisconnect" not in logged, logged[:2000]
    assert logged.count("\n") <= 5, logged[:2000]


# ------------------------------------------------------------------------- what a request may carry
@pytest.mark.parametrize(("ctype", "status"), [
    ("application/json", 200), ("application/json; charset=utf-8", 200), ("", 200),
    ("application/x-www-form-urlencoded", 200),  # curl -d with no -H (KServe's own v1 examples)
    ("text/plain", 415), ("application/octet-stream", 415), ("multipart/form-data; boundary=x", 415),
])
def test_v1_content_types(fx: Fixture, srv: Server, ctype: str, status: int) -> None:
    got, err = post(srv, V1, json.dumps({"instances": fx.instances(1)}).encode(), ctype=ctype)
    assert got == status, err
    if status == 415:
        assert "must be JSON" in err


def test_kserve_hands_a_v1_body_over_undecoded_under_the_gateways_content_type() -> None:
    """The rule the gateway relies on (kserve/protocol/dataplane.py, ``DataPlane.decode``): a body whose
    Content-Type is absent or one of ``JSON_HEADERS`` is parsed with orjson; any other type reaches the model
    as the bytes that came. The gateway gives plain-JSON v1 predictions ``RAW_V1_TYPE``; CloudEvents keep theirs."""
    from kserve.model_repository import ModelRepository
    from kserve.protocol.dataplane import JSON_HEADERS, DataPlane

    from tideline.serving.server import RAW_V1_TYPE, _raw_v1_headers

    plane = DataPlane(model_registry=ModelRepository())
    body = b'{"instances": [{"a": 1.0}]}'
    assert RAW_V1_TYPE.decode() not in JSON_HEADERS
    assert plane.decode(body, {"content-type": RAW_V1_TYPE.decode()})[0] == body
    assert plane.decode(body, {"content-type": "application/json"})[0] == {"instances": [{"a": 1.0}]}
    for ctype in (b"application/json", b"application/json; charset=utf-8", b"text/json",
                  b"application/x-www-form-urlencoded", None):
        headers = [(b"host", b"x")] + ([(b"content-type", ctype)] if ctype else [])
        assert dict(_raw_v1_headers(headers))[b"content-type"] == RAW_V1_TYPE, ctype
    kept = [[(b"content-type", b"application/cloudevents+json")],
            [(b"content-type", b"application/json"), (b"ce-specversion", b"1.0"), (b"ce-source", b"s"),
             (b"ce-type", b"t"), (b"ce-id", b"1")]]
    for headers in kept:
        assert _raw_v1_headers(headers) == headers


def test_the_gateway_hands_v1_predictions_to_kserve_under_the_raw_type_and_v2_as_they_came() -> None:
    """The gateway itself (an ASGI app behind it records what it was given): a v1 prediction's Content-Type is
    swapped, after the body was read whole; a v2 request and any other route keep theirs."""
    import asyncio
    from types import SimpleNamespace

    from tideline.serving.server import RAW_V1_TYPE, GatewayMiddleware

    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen[scope["path"]] = (dict(scope["headers"]).get(b"content-type"), (await receive())["body"])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-model-version", b"v1")]})
        await send({"type": "http.response.body", "body": b"{}"})

    predictor = SimpleNamespace(name="tideline", version="v1", role="active", serving=object(), load_error=None)
    gateway = GatewayMiddleware(app, predictor=predictor, max_body_bytes=1 << 20)

    async def call(path: str) -> None:
        body = b'{"instances": []}'
        scope = {"type": "http", "method": "POST", "path": path, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}
        messages = iter([{"type": "http.request", "body": body, "more_body": False}])

        async def receive() -> Any:
            return next(messages)

        async def send(_: Any) -> None:
            return None

        await gateway(scope, receive, send)

    for path in ("/v1/models/tideline:predict", "/v2/models/tideline/infer"):
        asyncio.run(call(path))
    assert seen["/v1/models/tideline:predict"] == (RAW_V1_TYPE, b'{"instances": []}')
    assert seen["/v2/models/tideline/infer"] == (b"application/json", b'{"instances": []}')


def test_v2_needs_a_json_content_type(fx: Fixture, srv: Server) -> None:
    body = json.dumps({"inputs": [{"name": c, "shape": [1], "datatype": "FP64", "data": [0.0]}
                                  for c in fx.columns]}).encode()
    assert post(srv, V2, body)[0] == 200
    assert post(srv, V2, body, ctype="")[0] == 415
    assert post(srv, V2, body, ctype="application/x-www-form-urlencoded")[0] == 415


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
def test_a_content_encoding_is_refused_not_misread(fx: Fixture, srv: Server, encoding: str) -> None:
    status, err = post(srv, V1, json.dumps({"instances": fx.instances(1)}).encode(),
                       extra=f"Content-Encoding: {encoding}\r\n")
    assert status == 415 and f"Content-Encoding {encoding} is not supported" in err


@pytest.mark.parametrize(("datatype", "value", "why"), [
    ("INT8", 1000, "outside INT8's range"), ("INT8", -129, "outside INT8's range"),
    ("UINT64", -1, "outside UINT64's range"), ("UINT8", 256, "outside UINT8's range"),
    ("INT32", 1.5, "not a whole number"), ("INT64", 2**63, "outside INT64's range"),
])
def test_v2_integers_must_fit_their_datatype(fx: Fixture, srv: Server, datatype: str, value: float,
                                             why: str) -> None:
    inputs = [{"name": c, "shape": [1], "datatype": "FP64", "data": [0.0]} for c in fx.columns]
    inputs[0] = {"name": fx.columns[0], "shape": [1], "datatype": datatype, "data": [value]}
    status, err = post(srv, V2, json.dumps({"inputs": inputs}).encode())
    assert status == 422 and why in err, err
    inputs[0]["data"] = [1]
    assert post(srv, V2, json.dumps({"inputs": inputs}).encode())[0] == 200


@pytest.mark.parametrize("symbol", ["AB\x00C", "A\nB", "\tABC", "ABC ", "X\x1b[31m"])
def test_symbols_with_control_characters_are_refused(fx: Fixture, srv: Server, symbol: str) -> None:
    inst = {**fx.instances(1)[0], "symbol": symbol}
    status, err = post(srv, V1, json.dumps({"instances": [inst]}).encode())
    assert status == 422 and "control characters" in err, err


@pytest.mark.parametrize("ts", ["9999-12-31T23:59:59", "0001-01-01T00:00:00", "1677-01-01T00:00:00+00:00"])
def test_a_timestamp_the_log_cannot_hold_is_a_422(fx: Fixture, srv: Server, ts: str) -> None:
    inst = {**fx.instances(1)[0], "symbol": "S00", "timestamp": ts}
    status, err = post(srv, V1, json.dumps({"instances": [inst]}).encode())
    assert status == 422 and "outside the bar times tideline stores" in err, err


# ------------------------------------------------------------------------------------ address, metadata
def _listening_addresses(port: int) -> set[str]:
    addrs = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        hexip, hexport = local.split(":")
        if state == "0A" and int(hexport, 16) == port:  # LISTEN
            addrs.add(socket.inet_ntoa(bytes.fromhex(hexip)[::-1]))
    return addrs


def test_it_listens_on_loopback_unless_told_otherwise(fx: Fixture, srv: Server) -> None:
    assert _listening_addresses(srv.port) == {"127.0.0.1"}
    wide = start_server(fx, "--ref", "v1", "--reload-interval", "0", "--host", "0.0.0.0", name="wide")
    try:
        assert _listening_addresses(wide.port) == {"0.0.0.0"}
    finally:
        assert wide.stop() == 0


def test_v2_metadata_names_the_features(fx: Fixture, srv: Server) -> None:
    meta = srv.client.get(f"/v2/models/{MODEL}").json()
    names = [i["name"] for i in meta["inputs"]]
    assert names == [*fx.columns, "symbol", "timestamp"]
    assert {i["datatype"] for i in meta["inputs"][: len(fx.columns)]} == {"FP64"}
    assert meta["outputs"] == [{"name": "prediction", "datatype": "FP64", "shape": [-1]},
                               {"name": "position", "datatype": "FP64", "shape": [-1]}]


def test_beyond_max_connections_a_request_gets_a_json_503(fx: Fixture) -> None:
    capped = start_server(fx, "--ref", "v1", "--reload-interval", "0", "--max-connections", "5",
                          "--read-timeout", "30", name="capped")
    socks = []
    try:
        for _ in range(8):  # connections that stay open mid-body
            s = socket.create_connection(("127.0.0.1", capped.port), timeout=30)
            s.sendall(head(V1, 100) + b'{"inst')
            socks.append(s)
        answered = []
        sel = selectors.DefaultSelector()  # the ones beyond the cap are answered at once, the others wait
        for s in socks:
            sel.register(s, selectors.EVENT_READ)
        deadline = time.monotonic() + 60  # a hang guard
        while len(answered) < 3 and time.monotonic() < deadline:
            for key, _ in sel.select(1.0):
                status, headers, body = read_response(key.fileobj)  # type: ignore[arg-type]
                answered.append((status, error_of(body), headers.get("retry-after")))
                sel.unregister(key.fileobj)
        sel.close()
        assert len(answered) >= 3 and all(a == (503, a[1], "1") and "--max-connections" in a[1] for a in answered)
    finally:
        for s in socks:
            s.close()
        capped.stop()
