"""`POST /v1/batches`: an agent delivers a batch (docs/protocol.md); `GET /v1/producers/P/streams`: what
it stored of each stream, for the agent's `reset-state`.

The body is read under the size limit (body.py), parsed and validated (parsing.py, batch.py),
and stored with its batch id in one transaction: a batch seen before is a duplicate, answered
200 like the first time and counted once. At most `max_concurrent_batches` are parsed and
stored at once; the rest wait up to `db_timeout`, then get a 429 with Retry-After.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from remote_uploader.collector.auth import Principal
from remote_uploader.collector.batch import PRODUCER_PATTERN
from remote_uploader.collector.body import body_format, check_headers, read_body
from remote_uploader.collector.models import BATCH_SCHEMA, BATCH_SCHEMA_V2, STATUS_SCHEMA, BatchAccepted, StatusStored
from remote_uploader.collector.routers.deps import Service, Who, errors
from remote_uploader.collector.service import Collector
from remote_uploader.collector.storage.base import ValidBatch
from remote_uploader.errors import ApiError
from remote_uploader.logs import fields
from remote_uploader.protocol import (
    ACCEPT_POST,
    ACCEPTED_MEDIA,
    BATCHES_PATH,
    MAX_STATUS_LEN,
    MEDIA_V2,
    PRODUCER_LEN,
    STATUS_HEADER,
    STATUS_PATH,
    STREAMS_PATH,
    parse_report,
)

logger = logging.getLogger(__name__)

router = APIRouter()


@router.post(
    BATCHES_PATH,
    response_model=BatchAccepted,
    summary="Deliver a batch (protocol v1)",
    responses=errors(400, 401, 403, 413, 415, 429, 503),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": BATCH_SCHEMA}, MEDIA_V2: {"schema": BATCH_SCHEMA_V2}},
            "description": "JSON in body format 1 or 2 (docs/protocol.md), optionally with Content-Encoding: gzip",
        }
    },
)
async def post_batch(request: Request, response: Response, who: Who, collector: Service) -> BatchAccepted:
    response.headers[ACCEPT_POST] = ACCEPTED_MEDIA  # the body formats taken (docs/protocol.md)
    return await receive_batch(collector, request, who)


@router.get(
    STREAMS_PATH,
    summary="The byte ranges of a producer's streams that stored batches covered (for `reset-state`)",
    responses=errors(400, 401, 403, 503),
)
def producer_streams(producer: str, who: Who, collector: Service) -> dict[str, Any]:
    """What `reset-state` asks after the agent's queue database was destroyed: per stream (one
    incarnation of one file's content), the ranges [start, end) stored, so that it resumes past a
    batch stored but never acknowledged instead of counting it twice (docs/protocol.md, "Streams").
    Agent tokens only; the producer id is the secret (128 random bits, never shown by the API)."""
    if who.role != "agent":
        raise ApiError(403, "authorization", "this token may only read")
    if not PRODUCER_PATTERN.fullmatch(producer):
        raise ApiError(400, "path.producer", f"must be {PRODUCER_LEN[0]} to {PRODUCER_LEN[1]} lower-case hex digits")
    found = collector.storage.producer_streams(producer)
    return {"producer": producer, "streams": {sid: [list(r) for r in ranges] for sid, ranges in sorted(found.items())}}


@router.post(
    STATUS_PATH,
    response_model=StatusStored,
    summary="An agent's status report alone: a heartbeat when it has nothing to send",
    responses=errors(400, 401, 403, 413, 503),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": STATUS_SCHEMA}},
            "description": "the same JSON as the Agent-Status header of a batch (docs/protocol.md, \"Agent status\")",
        }
    },
)
async def post_status(request: Request, who: Who, collector: Service) -> StatusStored:
    """What an agent with nothing to send says every `server.status_every` seconds, so that its
    queue, version and liveness stay known between batches. Stored under the token's name."""
    if who.role != "agent":
        raise ApiError(403, "authorization", "this token may only read")
    payload = await read_body(request.receive, gzip=False, limit=MAX_STATUS_LEN)
    report = parse_report(bytes(payload))
    if isinstance(report, str):
        raise ApiError(400, "body", report)
    await run_in_threadpool(collector.reports.store, who.name, report, datetime.now(UTC))
    return StatusStored(agent=who.name, stored=True)


async def receive_batch(collector: Collector, request: Request, who: Principal) -> BatchAccepted:
    if who.role != "agent":
        raise ApiError(403, "authorization", "this token may only read")
    settings = collector.settings
    gzip = check_headers(request.headers, settings.max_body)
    form = body_format(request.headers)
    _note_version(collector, who.name, request.headers.get("user-agent", ""))
    try:
        # asyncio.timeout, not wait_for: on Python 3.11 a wait_for that times out just as the
        # semaphore is granted can lose the permit; Semaphore.acquire gives it back when
        # cancelled this way.
        async with asyncio.timeout(settings.db_timeout):
            await collector.slots.acquire()
    except TimeoutError:
        raise ApiError(429, "body", "too many batches in flight", collector.retry_after) from None
    try:
        payload = await read_body(request.receive, gzip=gzip, limit=settings.max_body)
        # An AgentMismatch (403) is checked before the rest of the batch: configuration, not
        # data (see batch.parse_batch).
        batch = await collector.parser.parse(payload, who.name, form)
        del payload[:]  # the parsed form is all we need; give the memory back early
        if batch.producer is not None and batch.agent != who.name:
            # Counted under the token's name: batches queued before the agent id, the token or
            # its name changed are delivered, not stranded (see batch.parse_batch).
            batch = dataclasses.replace(batch, agent=who.name)
        report = request.headers.get(STATUS_HEADER)
        return await run_in_threadpool(_store, collector, batch, request.state, report)
    finally:
        collector.slots.release()


def _note_version(collector: Collector, agent: str, user_agent: str) -> None:
    versions = collector.agent_versions
    product, _, version = user_agent.partition(" ")[0].partition("/")
    known = agent in versions or len(versions) < 100_000  # bounded memory
    if product == "remote-uploader" and 0 < len(version) <= 32 and version.isprintable() and known:
        versions[agent] = version


def _store(collector: Collector, batch: ValidBatch, state: Any, report: str | None = None) -> BatchAccepted:
    metrics = collector.metrics
    state.batch_id = batch.batch_id
    state.records = batch.records
    received_at = datetime.now(UTC)
    new = collector.storage.store_batch(batch, received_at)
    # After the batch, in a transaction of its own: a report never delays or refuses the counts.
    collector.reports.from_header(batch.agent, report, received_at)
    state.duplicate = not new
    if new:
        metrics.batches.labels("accepted").inc()
        metrics.records.inc(batch.records)
        collector.decisions.submit(batch.counted_addresses())
        if batch.clamped:
            # The agent's clock is off (or was stepped back inside a batch): say so, count it,
            # and store the batch with its times clamped rather than refuse it for ever.
            metrics.clamped_times.inc(batch.clamped)
            logger.warning("times clamped", extra=fields(agent=batch.agent, batch_id=batch.batch_id,
                                                          fields=batch.clamped))
    else:
        metrics.batches.labels("duplicate").inc()
    return BatchAccepted(batch_id=batch.batch_id, accepted=batch.records, duplicate=not new, agent=batch.agent)
