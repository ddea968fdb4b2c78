"""The collector's HTTP API (FastAPI): `create_app()` includes one router per thing served
(collector/routers/) and installs one exception handler.

Status codes are the agent's instructions (docs/protocol.md): 2xx stored (or duplicate),
400 never send this again, 401/403 fix the token, 413 split, 415 fix the encoding, 429/503 try
later (Retry-After). Every error body is `{"detail": [{"field": ..., "error": ...}]}`. Bad input
of any kind is a 4xx; a 5xx means a bug or a broken database, never a bad request.

    routers/ingest.py       POST /v1/batches
    routers/reads.py        GET /v1/health, /v1/whoami, /v1/ips, /v1/ips/{ip}, /v1/agents
    routers/blocklists.py   GET /v1/blocklist
    routers/lapi.py         CrowdSec's /v1/decisions/stream, /v1/decisions, /v1/usage-metrics
    routers/decisions.py    /v1/rules, /v1/rules/decisions..., /v1/windows, /v1/series
    routers/dashboard.py    the web pages at / (unless `dashboard = false`)
    routers/metrics.py      GET /metrics
    routers/deps.py         the dependencies they share
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from remote_uploader import __version__
from remote_uploader.collector.logs import AccessLog
from remote_uploader.collector.metrics import Metrics
from remote_uploader.collector.routers import blocklists, decisions, deps, ingest, lapi, metrics, reads
from remote_uploader.collector.service import Collector
from remote_uploader.collector.settings import CollectorSettings
from remote_uploader.collector.storage import open_storage
from remote_uploader.collector.storage.base import Storage
from remote_uploader.errors import RequestError, StorageError
from remote_uploader.logs import fields
from remote_uploader.protocol import BATCHES_PATH

logger = logging.getLogger(__name__)


def create_app(settings: CollectorSettings, storage: Storage | None = None, *, close_storage: bool = False) -> FastAPI:
    """The ASGI app.

    `storage` must be migrated; it is closed at shutdown if `close_storage`. Without one, the
    app opens and migrates `settings.db` now and closes it at shutdown: `create_app(settings)`
    is a whole collector, ready for any ASGI server (uvicorn in `serve`, or in a test's thread).
    """
    if storage is None:
        storage = open_storage(settings.db, timeout=settings.db_timeout, pool_size=settings.pool_size)
        close_storage = True
        try:
            storage.migrate()
        except BaseException:
            storage.close()
            raise
    collector = Collector(settings, storage, Metrics())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        collector.start()
        try:
            yield
        finally:
            collector.stop()
            if close_storage:
                storage.close()

    app = FastAPI(
        title="remote-uploader collector",
        version=__version__,
        description="Receives per-IP counts from remote-uploader agents (protocol v1) and serves "
        "lists, per-agent statistics and blocklists. See docs/collector.md and docs/protocol.md.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        dependencies=[Depends(deps.reject_unknown_query)],
    )
    app.state.collector = collector
    for handled in (RequestError, StorageError, RequestValidationError, StarletteHTTPException):
        app.add_exception_handler(handled, answer_error)
    routers = [ingest.router, reads.router, blocklists.router, lapi.router, decisions.router]
    if settings.dashboard:
        from remote_uploader.collector.routers import dashboard

        app.state.dashboard = dashboard.Dashboard(collector)
        routers.append(dashboard.router)
    routers.append(metrics.router)
    for router in routers:
        app.include_router(router)
    # Every route served, for the Allow header of a 405 (FastAPI keeps included routers whole).
    app.state.routes = [route for router in routers for route in router.routes]
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.add_middleware(AccessLog, metrics=collector.metrics, enabled=settings.access_log)
    return app


async def answer_error(request: Request, exc: Exception) -> Response:
    """The one exception handler: the answer is the error's `status`, `problems()` and `headers`.

    Our errors carry all three (errors.py); FastAPI's request validation (a bad query or path
    parameter) is our 400, and Starlette's 404/405 get our body too. On any 429 or 503 the
    client is told when to come back (Retry-After). Each answer is counted: a refused batch
    (4xx to POST /v1/batches, other than 429) in `collector_batches{result="rejected"}`, a
    failing database in `collector_storage_errors`.
    """
    collector: Collector = request.app.state.collector
    status, problems, headers = _answer(request, exc)
    if isinstance(exc, StorageError):
        if status == 503:
            collector.metrics.storage_errors.labels("unavailable").inc()
            logger.warning("database unavailable", extra=fields(path=request.url.path, error=exc))
        else:
            collector.metrics.storage_errors.labels("error").inc()
            logger.error("database error", extra=fields(path=request.url.path, error=exc))
    elif problems and request.url.path == BATCHES_PATH and request.method == "POST" and 400 <= status < 500 \
            and status != 429:
        collector.metrics.batches.labels("rejected").inc()
    if status in (429, 503):
        headers = {**collector.retry_after, **headers}
    if not problems:
        return Response(status_code=status)  # nobody is listening (ClientGone): for the access log only
    return JSONResponse({"detail": problems}, status_code=status, headers=headers or None)


def _answer(request: Request, exc: Exception) -> tuple[int, list[dict[str, str]], dict[str, str]]:
    if isinstance(exc, RequestError | StorageError):
        return exc.status, exc.problems(), dict(exc.headers)
    if isinstance(exc, RequestValidationError):
        problems = [
            {"field": ".".join(str(part) for part in error.get("loc", ())), "error": str(error.get("msg", ""))}
            for error in exc.errors()
        ]
        return 400, problems or [{"field": "request", "error": "invalid"}], {}
    assert isinstance(exc, StarletteHTTPException)
    field = {404: "path", 405: "method"}.get(exc.status_code, "request")
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # Starlette names the methods of the first route of the path only; a path served by
        # several routes (GET, POST and DELETE /v1/rules/decisions) allows all of theirs.
        allowed = set()
        for route in request.app.state.routes:
            if route.matches(request.scope)[0] == Match.PARTIAL:
                allowed |= set(getattr(route, "methods", None) or ())
        if allowed:
            headers["Allow"] = ", ".join(sorted(allowed))
    return exc.status_code, [{"field": field, "error": str(exc.detail)}], headers


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, with its 422 answers replaced by our 400 (we answer 400, never 422)."""
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            responses = operation.get("responses", {})
            if responses.pop("422", None) is not None:
                responses.setdefault(
                    "400",
                    {
                        "description": "invalid request",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}},
                    },
                )
    components = schema.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    app.openapi_schema = schema
    return schema
