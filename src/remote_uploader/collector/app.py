"""The collector's HTTP API (FastAPI): ingest, reads, blocklists, health, metrics.

Status codes are the agent's instructions (docs/protocol.md): 2xx stored (or duplicate),
400 never send this again, 401/403 fix the token, 413 split, 415 fix the encoding, 429/503 try
later (Retry-After). Every error body is `{"detail": [{"field": ..., "error": ...}]}`. Bad input
of any kind is a 4xx; a 5xx means a bug or a broken database, never a bad request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from remote_uploader import __version__
from remote_uploader.collector import lapi_routes, routes
from remote_uploader.collector.api import ApiError, Who, error_response, errors, reject_unknown_query
from remote_uploader.collector.auth import Principal, authenticate, authenticate_bouncer
from remote_uploader.collector.batch import PRODUCER_PATTERN, AgentMismatch, BatchInvalid
from remote_uploader.collector.body import BodyError, ClientGone, check_headers, read_body
from remote_uploader.collector.decisions import api as decisions_api
from remote_uploader.collector.decisions.engine import DecisionEngine
from remote_uploader.collector.errors import CollectorError, StorageError, StorageUnavailable
from remote_uploader.collector.logs import AccessLog, fields
from remote_uploader.collector.metrics import Metrics
from remote_uploader.collector.models import BATCH_SCHEMA, BatchAccepted
from remote_uploader.collector.parsing import BatchParser
from remote_uploader.collector.settings import CollectorSettings
from remote_uploader.collector.storage.base import Batch, Storage
from remote_uploader.protocol import BATCHES_PATH, PRODUCER_LEN, STREAMS_PATH

logger = logging.getLogger(__name__)


class Collector:
    """The app's collaborators, shared by the route functions."""

    def __init__(self, settings: CollectorSettings, storage: Storage, metrics: Metrics) -> None:
        self.settings = settings
        self.storage = storage
        self.metrics = metrics
        self.parser = BatchParser(
            settings.parse_workers, storage.bulk_form, bucket=settings.bucket, addresses=bool(settings.rules)
        )
        self.decisions = DecisionEngine(
            storage,
            settings.rules,
            settings.allowlist,
            decision_interval=settings.decision_interval,
            rollup_interval=settings.rollup_interval,
            retentions=(
                timedelta(seconds=settings.bucket_retention),
                timedelta(seconds=settings.hour_retention),
                timedelta(seconds=settings.day_retention),
            ),
        )
        self.retry_after = {"Retry-After": str(settings.retry_after)}
        self._slots = asyncio.Semaphore(settings.max_concurrent_batches)
        self._stop = threading.Event()
        self._pruner: threading.Thread | None = None
        # Agent name -> the version its User-Agent header named, as this process last saw it (for
        # the dashboard's Agents page; not stored: a restart forgets it until the next batch).
        self.agent_versions: dict[str, str] = {}

    # -- auth ---------------------------------------------------------------------------------

    def principal(self, request: Request, credentials: HTTPAuthorizationCredentials | None) -> Principal:
        if credentials is None or not credentials.credentials:
            raise ApiError(401, "authorization", "missing bearer token", {"WWW-Authenticate": "Bearer"})
        found = authenticate(self.storage, credentials.credentials)
        if found is None:
            if authenticate_bouncer(self.storage, credentials.credentials) is not None:
                raise ApiError(403, "authorization", "a bouncer key may only pull decisions (GET /v1/decisions/stream)")
            raise ApiError(401, "authorization", "unknown or revoked token", {"WWW-Authenticate": "Bearer"})
        request.state.principal = found.name
        return found

    # -- ingest -------------------------------------------------------------------------------

    async def receive_batch(self, request: Request, who: Principal) -> BatchAccepted:
        if who.role != "agent":
            raise ApiError(403, "authorization", "this token may only read")
        gzip = check_headers(request.headers, self.settings.max_body)
        self._note_version(who.name, request.headers.get("user-agent", ""))
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 a wait_for that times out just as the
            # semaphore is granted can lose the permit; Semaphore.acquire gives it back when
            # cancelled this way.
            async with asyncio.timeout(self.settings.db_timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise ApiError(429, "body", "too many batches in flight", self.retry_after) from None
        try:
            payload = await read_body(request.receive, gzip=gzip, limit=self.settings.max_body)
            try:
                batch = await self.parser.parse(payload, who.name)
            except AgentMismatch as exc:
                # Checked before the rest of the batch: configuration, not data (see parse_batch).
                raise ApiError(403, "agent", str(exc)) from None
            del payload[:]  # the parsed form is all we need; give the memory back early
            if batch.producer is not None and batch.agent != who.name:
                # Counted under the token's name: batches queued before the agent id, the token or
                # its name changed are delivered, not stranded (see batch.parse_batch).
                batch = dataclasses.replace(batch, agent=who.name)
            return await run_in_threadpool(self._store, batch, request.state)
        finally:
            self._slots.release()

    def _note_version(self, agent: str, user_agent: str) -> None:
        product, _, version = user_agent.partition(" ")[0].partition("/")
        known = agent in self.agent_versions or len(self.agent_versions) < 100_000  # bounded memory
        if product == "remote-uploader" and 0 < len(version) <= 32 and version.isprintable() and known:
            self.agent_versions[agent] = version

    def _store(self, batch: Batch, state: Any) -> BatchAccepted:
        state.batch_id = batch.batch_id
        state.records = batch.records
        new = self.storage.store_batch(batch, datetime.now(UTC))
        state.duplicate = not new
        if new:
            self.metrics.batches.labels("accepted").inc()
            self.metrics.records.inc(batch.records)
            self.decisions.submit(batch.counted_addresses())
            if batch.clamped:
                # The agent's clock is off (or was stepped back inside a batch): say so, count it,
                # and store the batch with its times clamped rather than refuse it for ever.
                self.metrics.clamped_times.inc(batch.clamped)
                logger.warning("times clamped", extra=fields(agent=batch.agent, batch_id=batch.batch_id,
                                                              fields=batch.clamped))
        else:
            self.metrics.batches.labels("duplicate").inc()
        return BatchAccepted(batch_id=batch.batch_id, accepted=batch.records, duplicate=not new, agent=batch.agent)

    # -- pruning ------------------------------------------------------------------------------

    def start_pruner(self) -> None:
        self._pruner = threading.Thread(target=self._prune_loop, name="collector-pruner", daemon=True)
        self._pruner.start()

    def stop_pruner(self) -> None:
        self._stop.set()
        if self._pruner is not None:
            self._pruner.join(timeout=10)

    def prune_once(self) -> int:
        cutoff = datetime.now(UTC) - timedelta(days=self.settings.retention_days)
        return self.storage.prune_batches(cutoff)

    def _prune_loop(self) -> None:
        while True:
            try:
                deleted = self.prune_once()
                if deleted:
                    logger.info("pruned batch ids", extra=fields(deleted=deleted))
            except CollectorError as exc:
                logger.warning("pruning failed", extra=fields(error=exc))
            if self._stop.wait(self.settings.prune_interval):
                return


def create_app(settings: CollectorSettings, storage: Storage, *, close_storage: bool = False) -> FastAPI:
    """The ASGI app. `storage` must be migrated; it is closed at shutdown if `close_storage`."""
    metrics = Metrics()
    collector = Collector(settings, storage, metrics)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        collector.start_pruner()
        collector.decisions.start()
        try:
            yield
        finally:
            collector.decisions.stop()
            collector.stop_pruner()
            collector.parser.close()
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
        dependencies=[Depends(reject_unknown_query)],
    )
    app.state.collector = collector
    _install_error_handlers(app, collector)

    @app.post(
        BATCHES_PATH,
        response_model=BatchAccepted,
        summary="Deliver a batch (protocol v1)",
        responses=errors(400, 401, 403, 413, 415, 429, 503),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": BATCH_SCHEMA}},
                "description": "JSON, optionally with Content-Encoding: gzip",
            }
        },
    )
    async def post_batch(request: Request, who: Who) -> BatchAccepted:
        return await collector.receive_batch(request, who)

    @app.get(
        STREAMS_PATH,
        summary="The byte ranges of a producer's streams that stored batches covered (for `reset-state`)",
        responses=errors(400, 401, 403, 503),
    )
    def producer_streams(producer: str, who: Who) -> dict[str, Any]:
        """What `reset-state` asks after the agent's queue database was destroyed: per stream (one
        incarnation of one file's content), the ranges [start, end) stored, so that it resumes past a
        batch stored but never acknowledged instead of counting it twice (docs/protocol.md, "Streams").
        Agent tokens only; the producer id is the secret (128 random bits, never shown by the API)."""
        if who.role != "agent":
            raise ApiError(403, "authorization", "this token may only read")
        if not PRODUCER_PATTERN.fullmatch(producer):
            raise ApiError(400, "path.producer",
                           f"must be {PRODUCER_LEN[0]} to {PRODUCER_LEN[1]} lower-case hex digits")
        found = collector.storage.producer_streams(producer)
        return {"producer": producer,
                "streams": {sid: [list(r) for r in ranges] for sid, ranges in sorted(found.items())}}

    routes.add_read_routes(app, collector)
    lapi_routes.add_lapi_routes(app, collector)
    decisions_api.add_routes(app, collector)
    if settings.dashboard:
        from remote_uploader.collector.dashboard import add_dashboard

        add_dashboard(app, collector)

    @app.get("/metrics", include_in_schema=False)
    def get_metrics() -> Response:
        from remote_uploader.collector.metrics import CONTENT_TYPE_LATEST

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.add_middleware(AccessLog, metrics=metrics, enabled=settings.access_log)
    return app


def _install_error_handlers(app: FastAPI, collector: Collector) -> None:
    metrics = collector.metrics

    def rejected(request: Request, status: int) -> None:
        if request.url.path == BATCHES_PATH and status not in (429, 503):
            metrics.batches.labels("rejected").inc()

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        rejected(request, exc.status)
        return error_response(exc.status, [{"field": exc.field, "error": exc.error}], exc.headers)

    @app.exception_handler(BodyError)
    async def body_error(request: Request, exc: BodyError) -> JSONResponse:
        rejected(request, exc.status)
        return error_response(exc.status, [{"field": exc.field, "error": exc.message}])

    @app.exception_handler(BatchInvalid)
    async def batch_invalid(request: Request, exc: BatchInvalid) -> JSONResponse:
        rejected(request, 400)
        return error_response(400, [error.to_json() for error in exc.errors])

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, exc: ClientGone) -> Response:
        return Response(status_code=400)  # nobody is listening; for the access log only

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": ".".join(str(part) for part in error.get("loc", ())), "error": str(error.get("msg", ""))}
            for error in exc.errors()
        ]
        rejected(request, 400)
        return error_response(400, errors or [{"field": "request", "error": "invalid"}])

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        field = {404: "path", 405: "method"}.get(exc.status_code, "request")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names the methods of the first route of the path only; a path served by
            # several routes (GET, POST and DELETE /v1/rules/decisions) allows all of theirs.
            allowed = set()
            for route in request.app.routes:
                if route.matches(request.scope)[0] == Match.PARTIAL:
                    allowed |= set(getattr(route, "methods", None) or ())
            if allowed:
                headers["Allow"] = ", ".join(sorted(allowed))
        return error_response(exc.status_code, [{"field": field, "error": str(exc.detail)}], headers)

    @app.exception_handler(StorageUnavailable)
    async def unavailable(request: Request, exc: StorageUnavailable) -> JSONResponse:
        metrics.storage_errors.labels("unavailable").inc()
        logger.warning("database unavailable", extra=fields(path=request.url.path, error=exc))
        return error_response(
            503, [{"field": "storage", "error": "database unavailable; retry later"}], collector.retry_after
        )

    @app.exception_handler(StorageError)
    async def storage_error(request: Request, exc: StorageError) -> JSONResponse:
        metrics.storage_errors.labels("error").inc()
        logger.error("database error", extra=fields(path=request.url.path, error=exc))
        return error_response(500, [{"field": "storage", "error": "database error"}])


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
