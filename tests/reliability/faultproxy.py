"""A small TCP proxy that can play a dead S3/MinIO endpoint, for outage drills and tests.

``FaultProxy(upstream_host, upstream_port)`` listens on ``127.0.0.1:<free port>`` (``.endpoint`` is its
``http://`` URL) and relays bytes both ways, one pair of threads per connection:

* ``down()`` closes every open connection at once and resets every new one (accepted, then closed with
  an RST): a server that died mid-request. ``down(refuse=True)`` closes the listening socket instead, so
  connects are refused outright (ECONNREFUSED), like a stopped MinIO. ``up()`` serves again (same port).
* ``on_request(predicate, action, times=1)`` arms a fault on the next HTTP requests ``predicate(method,
  path)`` accepts (the proxy follows request boundaries using ``Content-Length``): ``"down"`` goes down
  before forwarding the request (it never reaches the server), ``"drop"`` forwards the whole request but
  cuts the client's connection instead of relaying the response (the write lands, its answer is lost),
  ``"drop_down"`` does that and then goes down.
* counters: ``connections`` (relayed), ``refused`` (reset while down), ``requests`` (seen), ``dropped``
  (responses cut), ``faults`` (armed faults fired); ``downs`` counts ``down()`` calls and ``down_at``
  is the ``time.monotonic()`` of the last one.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

Predicate = Callable[[str, str], bool]
_ACTIONS = ("down", "drop", "drop_down")


@dataclass
class _Fault:
    predicate: Predicate
    action: str
    times: int
    refuse: bool = False


def _reset(sock: socket.socket) -> None:
    """Close at once, like a process that died (RST where the kernel can; wakes threads blocked on it)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)  # a close() alone would wait for a recv() blocked in another thread
    with contextlib.suppress(OSError):
        sock.close()


class _Conn:
    """One relayed client connection and its upstream connection."""

    def __init__(self, proxy: FaultProxy, client: socket.socket, upstream: socket.socket) -> None:
        self.proxy, self.client, self.upstream = proxy, client, upstream
        self.drop_armed = False  # cut the connection when the response to the current request starts
        self.drop_then_down = False
        self.refuse = False
        self.body_left = 0  # bytes of the current request body still to forward
        self.closed = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        _reset(self.client)
        _reset(self.upstream)
        self.proxy._forget(self)

    # client -> upstream, following request boundaries
    def pump_requests(self) -> None:
        buf = b""
        opaque = False  # a body without Content-Length (chunked): relay blindly from here on
        try:
            while not self.closed:
                data = self.client.recv(65536)
                if not data:
                    break
                if opaque:
                    self.upstream.sendall(data)
                    continue
                buf += data
                while buf and not self.closed:
                    if self.body_left:
                        part, buf = buf[: self.body_left], buf[self.body_left :]
                        self.body_left -= len(part)  # before sending: the answer can beat the line below
                        self.upstream.sendall(part)
                        continue
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        if len(buf) > 65536:  # not HTTP as we know it
                            opaque = True
                            self.upstream.sendall(buf)
                            buf = b""
                        break
                    head, buf = buf[: end + 4], buf[end + 4 :]
                    method, path, length, chunked = _parse_head(head)
                    action, refuse = self.proxy._request_seen(method, path)
                    if action == "down":
                        self.proxy.down(refuse=refuse)
                        return
                    # armed before the head goes upstream: a fast answer must not slip past the fault
                    self.body_left = length
                    if action in ("drop", "drop_down"):
                        self.drop_armed = True
                        self.drop_then_down = action == "drop_down"
                        self.refuse = refuse
                    self.upstream.sendall(head)
                    if chunked:
                        opaque = True
                        self.upstream.sendall(buf)
                        buf = b""
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                self.upstream.shutdown(socket.SHUT_WR)

    # upstream -> client
    def pump_responses(self) -> None:
        try:
            while not self.closed:
                data = self.upstream.recv(65536)
                if not data:
                    break
                if self.drop_armed and self.body_left == 0 and data.startswith(b"HTTP/1.1 100"):
                    # an interim 100 Continue goes through; the final answer may share its read (the server
                    # sends both back to back once it has the body): that part is the one to drop
                    end = data.find(b"\r\n\r\n")
                    if end < 0 or end + 4 == len(data):
                        self.client.sendall(data)
                        continue
                    self.client.sendall(data[: end + 4])
                    data = data[end + 4 :]
                if self.drop_armed and self.body_left == 0:
                    self.proxy._dropped()
                    down = self.drop_then_down
                    self.close()
                    if down:
                        self.proxy.down(refuse=self.refuse)
                    return
                self.client.sendall(data)
        except OSError:
            pass
        finally:
            self.close()


def _parse_head(head: bytes) -> tuple[str, str, int, bool]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    method, path = (parts[0], parts[1]) if len(parts) >= 2 else ("", "")
    length, chunked = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            with contextlib.suppress(ValueError):
                length = int(value.strip())
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    return method, path, length, chunked


class FaultProxy:
    """A threaded TCP proxy to ``upstream_host:upstream_port`` that can go down and come back."""

    def __init__(self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, int(upstream_port))
        self.host = host
        self._lock = threading.Lock()
        self._conns: set[_Conn] = set()
        self._faults: list[_Fault] = []
        self._up = True
        self._closed = False
        self.connections = self.refused = self.requests = self.dropped = self.faults = self.downs = 0
        self.down_at: float | None = None
        self._listener = self._listen(0)
        self.port = int(self._listener.getsockname()[1])
        self.endpoint = f"http://{host}:{self.port}"
        self._start_acceptor()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FaultProxy({self.endpoint} -> {self.upstream[0]}:{self.upstream[1]}, {'up' if self._up else 'down'})"

    # -- control ---------------------------------------------------------------------------------------
    @property
    def is_up(self) -> bool:
        return self._up

    def down(self, *, refuse: bool = False) -> None:
        """Close every open connection; reset new ones (or, with ``refuse``, stop listening)."""
        with self._lock:
            self._up = False
            self.downs += 1
            self.down_at = time.monotonic()
            conns = list(self._conns)
            listener = self._listener if refuse else None
            if refuse:
                self._listener = None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                listener.close()
        for c in conns:
            c.close()

    def up(self) -> None:
        """Relay again (on the same port)."""
        with self._lock:
            relisten = self._listener is None and not self._closed
        if relisten:
            sock = self._listen(self.port)
            with self._lock:
                self._listener = sock
            self._start_acceptor()
        with self._lock:
            self._up = True

    def on_request(self, predicate: Predicate, action: str = "down", *, times: int = 1,
                   refuse: bool = False) -> None:
        """Arm a fault for the next ``times`` requests that ``predicate(method, path)`` accepts.

        ``refuse``: when the fault takes the proxy down, it stops listening (see ``down``)."""
        if action not in _ACTIONS:
            raise ValueError(f"unknown action {action!r}; one of {_ACTIONS}")
        with self._lock:
            self._faults.append(_Fault(predicate, action, times, refuse))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def close(self) -> None:
        """Stop listening and close every connection."""
        with self._lock:
            self._closed = True
        self.down(refuse=True)

    # -- internals -------------------------------------------------------------------------------------
    def _listen(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, port))
        sock.listen(256)
        return sock

    def _start_acceptor(self) -> None:
        sock = self._listener
        threading.Thread(target=self._accept_loop, args=(sock,), daemon=True, name="faultproxy-accept").start()

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # listener closed
            with self._lock:
                up = self._up
            if not up:
                with self._lock:
                    self.refused += 1
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _reset(client)
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(self, client, upstream)
            with self._lock:
                if not self._up:  # went down meanwhile
                    self.refused += 1
                    conn.closed = True
                else:
                    self._conns.add(conn)
                    self.connections += 1
            if conn.closed:
                _reset(client)
                upstream.close()
                continue
            threading.Thread(target=conn.pump_requests, daemon=True, name="faultproxy-req").start()
            threading.Thread(target=conn.pump_responses, daemon=True, name="faultproxy-resp").start()

    def _forget(self, conn: _Conn) -> None:
        with self._lock:
            self._conns.discard(conn)

    def _request_seen(self, method: str, path: str) -> tuple[str | None, bool]:
        with self._lock:
            self.requests += 1
            for f in self._faults:
                if f.times > 0 and f.predicate(method, path):
                    f.times -= 1
                    self.faults += 1
                    if f.times == 0:
                        self._faults.remove(f)
                    return f.action, f.refuse
        return None, False

    def _dropped(self) -> None:
        with self._lock:
            self.dropped += 1


__all__ = ["FaultProxy"]
