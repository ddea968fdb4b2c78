"""A fault-injecting HTTP relay in front of the real collector, for the generative checker.

The fault-injecting receiver (receiver.py) stands in for the collector; this relay keeps the real
collector as the one that stores and counts, and puts the faults of a network and of a wrong server
between it and the agent. It forwards ``POST /v1/batches`` unless a fault is due:

    status_<code>   answered by the relay (500, 503, 429 with Retry-After, 413), nothing forwarded
    reset_before    the body is read, the connection is reset: nothing was stored
    reset_after     forwarded and stored by the collector, then the connection is reset: the agent
                    cannot know that it was stored
    html_200        ``200 <html>Welcome</html>``: what a wrong URL, a captive portal or a load
                    balancer's default page answers; nothing forwarded
    hold_after      forwarded and stored by the collector, then its answer held until `release()`:
                    the agent waits with its batch stored and not acknowledged (`held` is set then,
                    so a test acts at exactly that moment, e.g. stops the agent)
    hold_before     the body is read and held until `release()`, then the connection is reset:
                    the look-alike of hold_after where nothing was stored
    body limit      413 for a body over a limit (on the wire), which a test changes between attempts

Faults are scripted (``add(kind, n)``: the next n batch requests, in call order), so a schedule that
is replayed asks for the same faults. Everything else (health, reads) is forwarded untouched. When
the collector is down the relay resets the connection, as a closed port looks to the agent.
Standard library only, like the receiver, so it cannot share a bug with the agent.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import socketserver
import struct
import threading
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KINDS = ("status_500", "status_503", "status_429", "status_413", "reset_before", "reset_after", "html_200",
         "hold_before", "hold_after")
HOP_HEADERS = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "host"})
UPSTREAM_TIMEOUT = 60.0


class FaultProxy:
    """The relay on 127.0.0.1 (a free port), forwarding to the collector at `upstream_port`."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.applied: Counter[str] = Counter()  # fault kind -> requests it was applied to
        self.forwarded = 0
        self._lock = threading.Lock()
        self._script: deque[list[object]] = deque()  # [kind, remaining]
        self._limit: int | None = None
        self.held = threading.Event()  # a request is being held (hold_after: stored at the collector)
        self._release = threading.Event()
        self._server = _Server(("127.0.0.1", 0), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"faultproxy:{self.port}", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, kind: str, n: int = 1) -> None:
        """The next `n` batch requests (after those already scripted) get `kind`."""
        if kind not in KINDS:
            raise ValueError(f"unknown fault {kind!r}; known: {', '.join(KINDS)}")
        if n > 0:
            with self._lock:
                self._script.append([kind, n])

    def limit(self, nbytes: int | None) -> None:
        """413 for bodies over `nbytes` on the wire (None: no limit)."""
        with self._lock:
            self._limit = nbytes

    def clear(self) -> None:
        with self._lock:
            self._script.clear()
            self._limit = None

    def release(self) -> None:
        """Let every held request go on (and any held later: a hold is for one moment of a test)."""
        self._release.set()

    def hold(self) -> None:
        """Called by a handler: say that a request is held, and wait for `release()`."""
        self.held.set()
        self._release.wait()

    def close(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def draw(self, size: int) -> str | None:
        """The fault for a batch request of `size` bytes arriving now (and count it)."""
        with self._lock:
            kind: str | None = None
            if self._script:
                head = self._script[0]
                kind = str(head[0])
                head[1] = int(head[1]) - 1  # type: ignore[call-overload]
                if head[1] == 0:
                    self._script.popleft()
            elif self._limit is not None and size > self._limit:
                kind = "limit_413"
            if kind is not None:
                self.applied[kind] += 1
            else:
                self.forwarded += 1
            return kind

    def forward(self, method: str, path: str, headers: list[tuple[str, str]],
                body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        """One request to the collector on a fresh connection; OSError when it is down."""
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=UPSTREAM_TIMEOUT)
        try:
            conn.request(method, path, body=body or None, headers=dict(headers))
            response = conn.getresponse()
            data = response.read()
            kept = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_HEADERS]
            return response.status, kept, data
        except http.client.HTTPException as exc:
            raise OSError(f"bad answer from the collector: {exc}") from exc
        finally:
            conn.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], proxy: FaultProxy) -> None:
        self.proxy = proxy
        super().__init__(address, _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        """Quiet: a client that goes away mid-request (an agent SIGKILLed) is what these tests do."""

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS lookup of the host name."""
        socketserver.TCPServer.server_bind(self)
        host, self.server_port = self.server_address[:2]
        self.server_name = str(host)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the agent expects of a collector
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the collector logs every request already."""

    def do_GET(self) -> None:
        self._relay(b"")

    def do_POST(self) -> None:
        length = self.headers.get("Content-Length", "")
        if not length.isdigit():
            self._reset()  # the agent always sends Content-Length; anything else is not worth relaying
            return
        body = self.rfile.read(int(length))
        if self.path.split("?")[0] != "/v1/batches":
            self._relay(body)
            return
        kind = self.server.proxy.draw(len(body))
        if kind is None:
            self._relay(body)
        elif kind in ("status_413", "limit_413"):
            self._send(413, b'{"detail": [{"field": "body", "error": "too large"}]}')
        elif kind.startswith("status_"):
            status = int(kind.split("_")[1])
            extra = [("Retry-After", "0.1")] if status in (429, 503) else []
            self._send(status, json.dumps({"detail": [{"field": "storage", "error": kind}]}).encode(), extra)
        elif kind == "reset_before":
            self._reset()
        elif kind == "reset_after":
            with contextlib.suppress(OSError):
                self.server.proxy.forward("POST", self.path, self._headers(), body)
            self._reset()
        elif kind == "hold_before":
            self.server.proxy.hold()
            self._reset()
        elif kind == "hold_after":
            try:
                status, headers, data = self.server.proxy.forward("POST", self.path, self._headers(), body)
            except OSError:
                self._reset()
                return
            self.server.proxy.hold()
            self._send(status, data, headers, None)
        else:  # html_200
            self._send(200, b"<html><body>Welcome</body></html>", [], "text/html")

    def _headers(self) -> list[tuple[str, str]]:
        return [(k, v) for k, v in self.headers.items() if k.lower() not in HOP_HEADERS]

    def _relay(self, body: bytes) -> None:
        try:
            status, headers, data = self.server.proxy.forward(self.command, self.path, self._headers(), body)
        except OSError:
            self._reset()
            return
        self._send(status, data, headers, None)

    def _send(self, status: int, data: bytes, headers: list[tuple[str, str]] | None = None,
              content_type: str | None = "application/json") -> None:
        try:
            self.send_response(status)
            for name, value in headers or []:
                self.send_header(name, value)
            if content_type:
                self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True

    def _reset(self) -> None:
        """RST, not FIN: the client sees ECONNRESET, never a clean end it could take for an answer."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
