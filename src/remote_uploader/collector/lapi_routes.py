"""The CrowdSec LAPI routes: the decision stream, live lookups, usage metrics (see lapi.py).

Flat memory: a pull of any size is read in pages of `PAGE` decisions (keyset on the decision
id) and written out page by page as it is read, so a startup pull of 300,000 decisions holds
one page of rows and one page of JSON at a time, never the whole answer.

The delta: each bouncer key remembers the decision change sequence (and the time) its last
complete pull ended at. A pull first reads the current sequence S, then sends what changed
after the remembered one; once the last byte has been handed to the connection, S becomes the
key's new mark. A pull that fails half-way (client gone, database error) records nothing, and
the next pull sends the same changes again: bouncers receive every change at least once, and
adding what they have, or deleting what they do not have, is harmless to all of them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import msgspec
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from remote_uploader.collector.api import IGNORES_UNKNOWN_QUERY, ApiError
from remote_uploader.collector.auth import authenticate, authenticate_bouncer
from remote_uploader.collector.errors import CollectorError
from remote_uploader.collector.lapi import (
    API_KEY_HEADER,
    MAX_USER_AGENT,
    StreamFilter,
    decision_scope,
    go_duration,
    parse_bool,
    parse_network,
    parse_scopes,
)
from remote_uploader.collector.logs import fields
from remote_uploader.collector.storage.base import BouncerInfo, Network, Storage

if TYPE_CHECKING:
    from remote_uploader.collector.app import Collector

logger = logging.getLogger(__name__)

PAGE = 2000
STREAM_PATH = "/v1/decisions/stream"
DECISIONS_PATH = "/v1/decisions"
USAGE_METRICS_PATH = "/v1/usage-metrics"
LAPI_PATHS = frozenset({STREAM_PATH, DECISIONS_PATH, USAGE_METRICS_PATH})
MAX_METRICS_BODY = 1024 * 1024


class FeedRow(NamedTuple):
    """A decision as the stream needs it."""

    id: int
    value: str  # a canonical address, or a network with its prefix length
    type: str
    origin: str
    scenario: str
    until: datetime
    created_seq: int  # the change sequence at which the decision was made
    active: bool  # not deleted, and until is still ahead (as of the pull's `now`)


class DecisionFeed(Protocol):
    """What the stream reads from the decisions storage."""

    def decision_seq(self) -> int:
        """The newest change sequence number (0 when nothing was ever decided)."""

    def active_decisions(self, now: datetime, after_id: int, limit: int) -> Sequence[FeedRow]:
        """Decisions active at `now` with id > after_id, by id, at most `limit`."""

    def changed_decisions(
        self, since_seq: int, since: datetime, now: datetime, after_id: int, limit: int
    ) -> Sequence[FeedRow]:
        """Decisions changed after `since_seq`, or whose `until` fell in (since, now], by id."""

    def decisions_for(self, network: Network, now: datetime, contains: bool) -> list[FeedRow]:
        """Active decisions whose network contains `network` (contains) or lies inside it."""


def decision_json(row: FeedRow, now: datetime) -> dict[str, Any]:
    return {
        "id": row.id,
        "origin": row.origin,
        "type": row.type,
        "scope": decision_scope(row.value),
        "value": row.value,
        "duration": go_duration((row.until - now).total_seconds()),
        "scenario": row.scenario,
    }


_encode = msgspec.json.Encoder().encode


def _items(rows: Sequence[dict[str, Any]]) -> bytes:
    """Rows as JSON array items, without the brackets (to be joined with commas)."""
    return _encode(rows)[1:-1] if rows else b""


# -- the stream -------------------------------------------------------------------------------


class Pull:
    """One stream answer: what to send, read page by page while it is written."""

    def __init__(
        self,
        storage: Storage,
        feed: DecisionFeed,
        bouncer: BouncerInfo,
        startup: bool,
        chosen: StreamFilter,
        user_agent: str | None,
    ) -> None:
        self.storage = storage
        self.feed = feed
        self.bouncer = bouncer
        self.chosen = chosen
        self.user_agent = user_agent
        self.now = datetime.now(UTC)
        # Read before any row: whatever changes while the rows are read is sent again next time.
        self.seq = feed.decision_seq()
        # A key that never completed a pull gets everything, whatever it asked for.
        self.full = startup or bouncer.last_seq is None

    def _accepts(self, row: FeedRow) -> bool:
        return self.chosen.accepts(decision_scope(row.value), row.origin, row.scenario)

    def _new_pages(self) -> Iterator[list[dict[str, Any]]]:
        after = 0
        while True:
            if self.full:
                rows = self.feed.active_decisions(self.now, after, PAGE)
                chosen = [row for row in rows if self._accepts(row)]
            else:
                rows = self._changes(after)
                chosen = [row for row in rows if row.active and self._accepts(row)]
            yield [decision_json(row, self.now) for row in chosen]
            if len(rows) < PAGE:
                return
            after = rows[-1].id

    def _changes(self, after: int) -> Sequence[FeedRow]:
        assert self.bouncer.last_seq is not None and self.bouncer.last_pull_at is not None
        return self.feed.changed_decisions(self.bouncer.last_seq, self.bouncer.last_pull_at, self.now, after, PAGE)

    def _deleted_pages(self) -> Iterator[list[dict[str, Any]]]:
        if self.bouncer.last_seq is None:
            return  # nothing was ever sent to this key, so there is nothing to take back
        after = 0
        while True:
            rows = self._changes(after)
            deleted = []
            for row in rows:
                if not self._accepts(row):
                    continue
                if not row.active:
                    deleted.append(decision_json(row, self.now))
                elif row.created_seq <= self.bouncer.last_seq:
                    # Changed (extended) after the key had it: bouncers skip an address they
                    # hold already (the firewall bouncer keeps the old nftables timeout), so it
                    # is taken back here and sent again in `new` with its new duration.
                    deleted.append(decision_json(row, self.now))
            yield deleted
            if len(rows) < PAGE:
                return
            after = rows[-1].id

    def first_page(self) -> list[dict[str, Any]]:
        """Read the first page before the answer starts, so that a database that is down is a
        503 rather than a 200 cut short."""
        self._pages = self._new_pages()
        return next(self._pages)

    def body(self, first: list[dict[str, Any]]) -> Iterator[bytes]:
        try:
            # `deleted` first in the text is not required by JSON, but bouncers read the whole
            # object anyway; CrowdSec's own order is kept.
            yield b'{"new": ['
            needs_comma = False
            for page in _chain(first, self._pages):
                if page:
                    yield (b"," if needs_comma else b"") + _items(page)
                    needs_comma = True
            yield b'], "deleted": ['
            needs_comma = False
            for page in self._deleted_pages():
                if page:
                    yield (b"," if needs_comma else b"") + _items(page)
                    needs_comma = True
            yield b"]}"
        except CollectorError as exc:
            # The status line is gone already; ending the body here leaves invalid JSON, which
            # the bouncer reports and retries at its next tick. Nothing is recorded.
            logger.warning("decision stream cut short", extra=fields(bouncer=self.bouncer.name, error=exc))
            return
        # Reached only once the last chunk was handed to the connection.
        try:
            self.storage.record_pull(self.bouncer.name, self.seq, self.now, self.user_agent)
        except CollectorError as exc:
            logger.warning("could not record a pull", extra=fields(bouncer=self.bouncer.name, error=exc))


def _chain(first: list[dict[str, Any]], rest: Iterator[list[dict[str, Any]]]) -> Iterator[list[dict[str, Any]]]:
    yield first
    yield from rest


# -- auth -------------------------------------------------------------------------------------


def lapi_error(exc: ApiError) -> JSONResponse:
    """Our error body plus CrowdSec's `message`, which go-cs-bouncer shows in its log."""
    return JSONResponse(
        {"message": f"{exc.field}: {exc.error}", "detail": [{"field": exc.field, "error": exc.error}]},
        status_code=exc.status,
        headers=exc.headers or None,
    )


def bouncer_of(collector: Collector, request: Request) -> BouncerInfo:
    key = request.headers.get(API_KEY_HEADER)
    if not key:
        raise ApiError(401, "header.X-Api-Key", "missing: send a bouncer key (collector bouncer add NAME)")
    found = authenticate_bouncer(collector.storage, key)
    if found is None:
        if authenticate(collector.storage, key) is not None:
            raise ApiError(
                403, "header.X-Api-Key", "this is an agent or read token; pulling decisions needs a bouncer key"
            )
        raise ApiError(401, "header.X-Api-Key", "unknown or revoked bouncer key")
    request.state.principal = found.name
    return found


# -- routes -----------------------------------------------------------------------------------


def add_lapi_routes(app: FastAPI, collector: Collector, feed: DecisionFeed) -> None:
    @app.api_route(
        STREAM_PATH,
        methods=["GET", "HEAD"],
        summary="CrowdSec decision stream (for bouncers; X-Api-Key)",
        response_class=Response,
        responses={200: {"description": '{"new": [decision...], "deleted": [decision...]}'}},
        openapi_extra=IGNORES_UNKNOWN_QUERY,
    )
    async def decision_stream(request: Request) -> Response:
        try:
            bouncer = await run_in_threadpool(bouncer_of, collector, request)
            if request.method == "HEAD":
                return Response(status_code=200)  # a probe: nothing read, nothing recorded
            query = request.query_params
            startup = parse_bool("startup", query.get("startup"))
            chosen = StreamFilter.from_query(query)
        except ApiError as exc:
            return lapi_error(exc)
        agent = (request.headers.get("user-agent") or "")[:MAX_USER_AGENT] or None
        pull = await run_in_threadpool(Pull, collector.storage, feed, bouncer, startup, chosen, agent)
        first = await run_in_threadpool(pull.first_page)
        return StreamingResponse(pull.body(first), media_type="application/json")

    @app.api_route(
        DECISIONS_PATH,
        methods=["GET", "HEAD"],
        summary="CrowdSec live lookup: the decisions for ?ip= or ?range= (for bouncers; X-Api-Key)",
        response_class=Response,
        responses={200: {"description": "a list of decisions, or null when none matches"}},
        openapi_extra=IGNORES_UNKNOWN_QUERY,
    )
    async def decisions(request: Request) -> Response:
        try:
            await run_in_threadpool(bouncer_of, collector, request)
            if request.method == "HEAD":
                return Response(status_code=200)
            query = request.query_params
            ip, cidr = query.get("ip"), query.get("range")
            if ip is not None and cidr is not None:
                raise ApiError(400, "query.range", "give ip or range, not both")
            network = parse_network("ip", ip) if ip is not None else None
            if cidr is not None:
                network = parse_network("range", cidr)
            contains = parse_bool("contains", query.get("contains"), default=True)
            scope = parse_scopes("scope", query.get("scope"))
            value = query.get("value")
            kind = query.get("type")
            chosen = StreamFilter.from_query(query)
        except ApiError as exc:
            return lapi_error(exc)
        now = datetime.now(UTC)
        if network is None and value is not None:
            try:
                network = parse_network("value", value)
            except ApiError as exc:
                return lapi_error(exc)
        if network is None:
            rows = await run_in_threadpool(_all_active, feed, now)
        else:
            rows = await run_in_threadpool(feed.decisions_for, network, now, contains)
        found = [
            decision_json(row, now)
            for row in rows
            if chosen.accepts(decision_scope(row.value), row.origin, row.scenario)
            and (scope is None or decision_scope(row.value) in scope)
            and (kind is None or row.type == kind)
            and (value is None or row.value == value)
        ]
        # Exactly `null` when nothing matches: the lua bouncer compares the body to "null".
        return Response(_encode(found or None), media_type="application/json")

    @app.post(USAGE_METRICS_PATH, summary="CrowdSec usage metrics (accepted and dropped)", status_code=201)
    async def usage_metrics(request: Request) -> Response:
        try:
            await run_in_threadpool(bouncer_of, collector, request)
        except ApiError as exc:
            return lapi_error(exc)
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > MAX_METRICS_BODY:
                return lapi_error(ApiError(413, "body", f"larger than {MAX_METRICS_BODY} bytes"))
        return Response(status_code=201)


def _all_active(feed: DecisionFeed, now: datetime) -> list[FeedRow]:
    rows: list[FeedRow] = []
    after = 0
    while True:
        page = feed.active_decisions(now, after, PAGE)
        rows.extend(page)
        if len(page) < PAGE:
            return rows
        after = page[-1].id
