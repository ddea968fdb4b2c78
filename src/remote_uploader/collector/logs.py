"""The collector's access log (the formatters are remote_uploader/logs.py, shared with the agent).

The access log records method, route, status, duration, client, agent name and sizes (the
bytes sent, compressed when the line says `encoding=gzip`). It never records request headers,
so a bearer token cannot end up in a log file; the query string is logged only for read
endpoints, whose parameters are filters.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from remote_uploader.collector.metrics import Metrics
from remote_uploader.logs import fields

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

access_logger = logging.getLogger("remote_uploader.collector.access")


class AccessLog:
    """Pure ASGI middleware: time every HTTP request, log it and record its latency metric.

    Pure ASGI rather than Starlette's BaseHTTPMiddleware, which would buffer streamed bodies.
    The endpoint may leave `principal` (a token name) in the request state for the log line.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, enabled: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.enabled = enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0
        sent = 0
        scope.setdefault("state", {})

        async def send_wrapper(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = int(message["status"])
                for name, value in message.get("headers", ()):
                    if name.lower() == b"content-encoding":
                        scope["state"]["encoding"] = value.decode("latin-1")
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.latency.labels(template, scope["method"], str(status or 500)).observe(elapsed)
            if self.enabled:
                self._log(scope, status, sent, elapsed)

    def _log(self, scope: Scope, status: int, sent: int, elapsed: float) -> None:
        client = scope.get("client")
        path = scope.get("path", "")
        query = scope.get("query_string", b"").decode("latin-1")
        values: dict[str, object] = {
            "method": scope["method"],
            "path": path + ("?" + query if query and path.startswith("/v1/") else ""),
            "status": status or 500,
            "duration_ms": round(elapsed * 1000, 2),
            "client": client[0] if client else "-",
            "principal": scope["state"].get("principal", "-"),
            "bytes_out": sent,
        }
        for key in ("batch_id", "records", "duplicate", "encoding"):
            if key in scope["state"]:
                values[key] = scope["state"][key]
        access_logger.info("request", extra=fields(**values))
