"""The CrowdSec LAPI routes (a router): the decision stream, live lookups, usage metrics (see lapi.py).

Flat memory: a pull of any size is read in pages of `PAGE` decisions (keyset on the decision
id) and written out page by page as it is read, so a startup pull of 300,000 decisions holds
one page of rows and one page of JSON at a time, never the whole answer.

Compression: a bouncer that sends `Accept-Encoding: gzip` (Go's HTTP client does by itself, so
crowdsec-firewall-bouncer and every go-cs-bouncer do) gets its answer gzipped, compressed chunk
by chunk as it is written (each chunk flushed whole, so the bouncer can decode as it reads):
the collector holds one deflate state (about 256 KiB) more, never the answer.

The delta: each bouncer key remembers the decision change sequence (and the time) its last
complete pull ended at. A pull first reads the current sequence S, then sends what changed
after the remembered one; once the last byte has been handed to the connection, S becomes the
key's new mark. A pull that fails half-way (client gone, database error) records nothing, and
the next pull sends the same changes again: bouncers receive every change at least once, and
adding what they have, or deleting what they do not have, is harmless to all of them.
"""

from __future__ import annotations

import ipaddress
import logging
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from remote_uploader.collector.auth import authenticate, authenticate_bouncer
from remote_uploader.collector.lapi import (
    API_KEY_HEADER,
    MAX_USER_AGENT,
    StreamFilter,
    parse_bool,
    parse_network,
    parse_scopes,
)
from remote_uploader.collector.routers.deps import IGNORES_UNKNOWN_QUERY, Service, errors
from remote_uploader.collector.service import Collector
from remote_uploader.collector.storage.base import BouncerInfo, Storage
from remote_uploader.collector.storage.model import Decision, DecisionQuery
from remote_uploader.collector.timeparse import go_duration
from remote_uploader.errors import ApiError, CollectorError
from remote_uploader.logs import fields
from remote_uploader.protocol import Network

logger = logging.getLogger(__name__)

PAGE = 2000
RECORD_EVERY = timedelta(seconds=60)
CHUNK = 256 * 1024
STREAM_PATH = "/v1/decisions/stream"
DECISIONS_PATH = "/v1/decisions"
USAGE_METRICS_PATH = "/v1/usage-metrics"
LAPI_PATHS = frozenset({STREAM_PATH, DECISIONS_PATH, USAGE_METRICS_PATH})
MAX_METRICS_BODY = 1024 * 1024
GZIP_LEVEL = 6  # zlib's default: decision JSON shrinks about 10x, at a few % of a core per MB/s
GZIP_HEADERS = {"Content-Encoding": "gzip", "Vary": "Accept-Encoding"}
IDENTITY_HEADERS = {"Vary": "Accept-Encoding"}

router = APIRouter()


# -- the OpenAPI description (the handlers read the query themselves: unknown names are ignored)

API_KEY_PARAMETER = {
    "name": API_KEY_HEADER,
    "in": "header",
    "required": True,
    "schema": {"type": "string"},
    "description": "a bouncer key (collector bouncer add NAME)",
}
_LIST = {"type": "string", "description": "comma-separated"}
STREAM_PARAMETERS = [
    API_KEY_PARAMETER,
    {"name": "startup", "in": "query", "schema": {"type": "boolean"}, "description": "true: every active decision"},
    {"name": "scopes", "in": "query", "schema": _LIST, "description": "ip, range, country, as (default ip,range)"},
    *(
        {"name": name, "in": "query", "schema": _LIST}
        for name in ("origins", "scenarios_containing", "scenarios_not_containing")
    ),
]
LIVE_PARAMETERS = [
    API_KEY_PARAMETER,
    {"name": "ip", "in": "query", "schema": {"type": "string"}},
    {"name": "range", "in": "query", "schema": {"type": "string"}},
    {"name": "contains", "in": "query", "schema": {"type": "boolean"}},
    {"name": "scope", "in": "query", "schema": {"type": "string"}},
    {"name": "value", "in": "query", "schema": {"type": "string"}},
    {"name": "type", "in": "query", "schema": {"type": "string"}},
    *(
        {"name": name, "in": "query", "schema": _LIST}
        for name in ("origins", "scenarios_containing", "scenarios_not_containing")
    ),
]
DECISION_SCHEMA = {
    "type": "object",
    "required": ["id", "origin", "type", "scope", "value", "duration", "scenario"],
    "properties": {
        "id": {"type": "integer"},
        "origin": {"type": "string"},
        "type": {"type": "string"},
        "scope": {"type": "string", "enum": ["Ip", "Range"]},
        "value": {"type": "string"},
        "duration": {"type": "string", "description": "Go syntax, h, m and s always written: 3h59m58.9s"},
        "scenario": {"type": "string"},
    },
}
STREAM_ANSWER = {
    "description": "new: active decisions (all with startup=true, else those made since this key's last "
    "complete pull); deleted: those that ended since then",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["new", "deleted"],
                "properties": {
                    "new": {"type": "array", "items": DECISION_SCHEMA},
                    "deleted": {"type": "array", "items": DECISION_SCHEMA},
                },
            }
        }
    },
}
LIVE_ANSWER = {
    "description": "the active decisions holding the address or range, or null when there is none",
    "content": {
        "application/json": {"schema": {"anyOf": [{"type": "array", "items": DECISION_SCHEMA}, {"type": "null"}]}}
    },
}


def decision_json(decision: Decision, now: datetime) -> dict[str, Any]:
    return {
        "id": decision.id,
        "origin": decision.origin,
        "type": decision.type,
        "scope": decision.scope,
        "value": decision.value,
        "duration": go_duration(decision.until - now),
        "scenario": decision.scenario,
    }


_encode = msgspec.json.Encoder().encode


def _items(rows: Sequence[dict[str, Any]]) -> bytes:
    """Rows as JSON array items, without the brackets (to be joined with commas)."""
    return _encode(rows)[1:-1] if rows else b""


# -- compression ------------------------------------------------------------------------------


def wants_gzip(accept_encoding: str | None) -> bool:
    """Whether `Accept-Encoding` takes gzip: `gzip` or `x-gzip` named without `q=0`. A bare
    `*` is not taken as gzip: a client that only tolerates anything gets plain JSON."""
    for item in (accept_encoding or "").split(","):
        name, _, params = item.partition(";")
        if name.strip().lower() not in ("gzip", "x-gzip"):
            continue
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
        return True
    return False


class Encoder:
    """The answer's chunks as they go out: unchanged, or one gzip stream. `finish` ends it
    (the gzip trailer): an answer cut short without it is not valid gzip either."""

    def __init__(self, gzip: bool) -> None:
        self.gzip = gzip
        self._deflate = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS) if gzip else None

    @property
    def headers(self) -> dict[str, str]:
        return GZIP_HEADERS if self.gzip else IDENTITY_HEADERS

    def chunk(self, data: bytes) -> bytes:
        if self._deflate is None:
            return data
        return self._deflate.compress(data) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    def finish(self, data: bytes = b"") -> bytes:
        if self._deflate is None:
            return data
        return self._deflate.compress(data) + self._deflate.flush()


def _encoded(chunks: Iterator[bytes], encoder: Encoder) -> Iterator[bytes]:
    for data in chunks:
        if out := encoder.chunk(data):
            yield out
    if out := encoder.finish():
        yield out


# -- the stream -------------------------------------------------------------------------------


class Pull:
    """One stream answer, read page by page while it is written.

    All reads are "as of" the sequence S read first (storage/model.py: the state of every
    decision at S follows from its created_seq and ended_seq), so the pages of one answer fit
    together however long it takes to send them and whatever is decided meanwhile.

    - full (startup=true, or a key that never completed a pull): `new` = active at S;
    - delta since the key's mark L: `new` = created in (L, S] and active at S; `deleted` = ended
      in (L, S] and created at or before L (what the key was sent and must take back). One
      made and ended between two pulls is in neither: the bouncer never had it.

    A startup pull of a key that pulled before also gets that `deleted`: a restarted custom
    bouncer's script hears of the decisions that ended while it was down.
    """

    def __init__(
        self, storage: Storage, bouncer: BouncerInfo, startup: bool, chosen: StreamFilter, user_agent: str | None
    ) -> None:
        self.storage = storage
        self.bouncer = bouncer
        self.chosen = chosen
        self.user_agent = user_agent
        self.now = datetime.now(UTC)
        # Decisions past their `until` become changes now rather than at the engine's next
        # timer tick, so that bouncers hear of them at their next pull. Cheap when nothing is
        # due (one indexed read); when something is, the first pull writes and the rest find
        # nothing. Only a convenience: on failure the timer does it later.
        try:
            storage.expire_decisions(self.now)
        except CollectorError as exc:
            logger.info("could not expire decisions before a pull", extra=fields(error=exc))
        self.seq = storage.decision_seq()
        self.mark = None if startup else bouncer.last_seq
        self._pages = self._new_pages()

    def _query(self, after: int, **what: Any) -> DecisionQuery:
        origins = self.chosen.origins
        return DecisionQuery(
            as_of_seq=self.seq, scopes=self.chosen.scopes, origins=origins, after_id=after, limit=PAGE, **what
        )

    def _pages_of(self, **what: Any) -> Iterator[list[Decision]]:
        after = 0
        while True:
            rows = self.storage.list_decisions(self._query(after, **what))
            yield [row for row in rows if self.chosen.accepts(row.scope, row.origin, row.scenario)]
            if len(rows) < PAGE:
                return
            after = rows[-1].id

    def _new_pages(self) -> Iterator[list[dict[str, Any]]]:
        what: dict[str, Any] = {"active": True, "now": self.now}
        if self.mark is not None:
            what["new_after_seq"] = self.mark
        for page in self._pages_of(**what):
            # Active at S but already past `until` (not yet marked expired): not worth sending.
            yield [decision_json(row, self.now) for row in page if row.until > self.now]

    def _deleted_pages(self) -> Iterator[list[dict[str, Any]]]:
        if self.bouncer.last_seq is None:
            return  # nothing was ever sent to this key, so there is nothing to take back
        for page in self._pages_of(active=None, ended_after_seq=self.bouncer.last_seq):
            yield [decision_json(row, self.now) for row in page]

    def first_page(self) -> list[dict[str, Any]]:
        """Read before the answer starts, so that a database that is down is a 503, not a 200
        cut short."""
        return next(self._pages)

    def _pieces(self, first: list[dict[str, Any]]) -> Iterator[bytes]:
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

    def body(self, first: list[dict[str, Any]], encoder: Encoder | None = None) -> Iterator[bytes]:
        """The answer in chunks of about CHUNK bytes before compression (each chunk is one trip
        to the thread pool and one write; a poll that finds nothing new is one chunk)."""
        encoder = encoder or Encoder(gzip=False)
        buffer = bytearray()
        try:
            for piece in self._pieces(first):
                buffer += piece
                if len(buffer) >= CHUNK:
                    yield encoder.chunk(bytes(buffer))
                    buffer.clear()
        except CollectorError as exc:
            # The status line is gone already; ending the body here leaves invalid JSON (and,
            # gzipped, a stream without its trailer), which the bouncer reports and retries at
            # its next tick. Nothing is recorded.
            logger.warning("decision stream cut short", extra=fields(bouncer=self.bouncer.name, error=exc))
            yield encoder.chunk(bytes(buffer))  # what was read: never a complete object ("]}" comes last)
            return
        yield encoder.finish(bytes(buffer))
        # Reached only once the last chunk was handed to the connection.
        if not self._worth_recording():
            return
        try:
            self.storage.record_pull(self.bouncer.name, self.seq, self.now, self.user_agent)
        except CollectorError as exc:
            logger.warning("could not record a pull", extra=fields(bouncer=self.bouncer.name, error=exc))

    def _worth_recording(self) -> bool:
        """A write (an fsync on SQLite) per poll would be most of a poll's cost; when the mark
        did not move, the pull time is refreshed only every RECORD_EVERY (as CrowdSec does)."""
        known = self.bouncer
        if known.last_seq != self.seq or known.last_pull_at is None or known.user_agent != self.user_agent:
            return True
        return self.now - known.last_pull_at >= RECORD_EVERY


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


@router.head(STREAM_PATH, include_in_schema=False, openapi_extra=IGNORES_UNKNOWN_QUERY)
@router.get(
    STREAM_PATH,
    summary="CrowdSec decision stream (for bouncers; X-Api-Key; HEAD too)",
    response_class=Response,
    responses={200: STREAM_ANSWER, **errors(400, 401, 403, 503)},
    openapi_extra={**IGNORES_UNKNOWN_QUERY, "parameters": STREAM_PARAMETERS},
)
async def decision_stream(request: Request, collector: Service) -> Response:
    try:
        started = await run_in_threadpool(_start_pull, collector, request)
    except ApiError as exc:
        return lapi_error(exc)
    if started is None:
        return Response(status_code=200)  # HEAD, a probe: nothing read, nothing recorded
    pull, first = started
    encoder = Encoder(wants_gzip(request.headers.get("accept-encoding")))
    return StreamingResponse(pull.body(first, encoder), media_type="application/json", headers=encoder.headers)

@router.head(DECISIONS_PATH, include_in_schema=False, openapi_extra=IGNORES_UNKNOWN_QUERY)
@router.get(
    DECISIONS_PATH,
    summary="CrowdSec live lookup: the decisions for ?ip= or ?range= (for bouncers; X-Api-Key; HEAD too)",
    response_class=Response,
    responses={200: LIVE_ANSWER, **errors(400, 401, 403, 503)},
    openapi_extra={**IGNORES_UNKNOWN_QUERY, "parameters": LIVE_PARAMETERS},
)
async def decisions(request: Request, collector: Service) -> Response:
    try:
        await run_in_threadpool(bouncer_of, collector, request)
        if request.method == "HEAD":
            return Response(status_code=200)
        lookup = Lookup.from_query(request.query_params)
    except ApiError as exc:
        return lapi_error(exc)
    pages = lookup.pages(collector.storage, datetime.now(UTC))
    first = await run_in_threadpool(_first_nonempty, pages)
    encoder = Encoder(wants_gzip(request.headers.get("accept-encoding")))
    if first is None:
        # Exactly `null` when nothing matches: the lua bouncer compares the body to "null".
        return Response(encoder.finish(b"null"), media_type="application/json", headers=encoder.headers)
    chunks = _encoded(_array(first, pages), encoder)
    return StreamingResponse(chunks, media_type="application/json", headers=encoder.headers)

@router.post(
    USAGE_METRICS_PATH,
    summary="CrowdSec usage metrics (accepted and dropped; X-Api-Key)",
    status_code=201,
    response_class=Response,
    responses={201: {"description": "accepted"}, **errors(400, 401, 403, 413, 503)},
    openapi_extra={"parameters": [API_KEY_PARAMETER]},
)
async def usage_metrics(request: Request, collector: Service) -> Response:
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


@dataclass(frozen=True, slots=True)
class Lookup:
    """`GET /v1/decisions`: active decisions for an address or a range (CrowdSec's filters)."""

    chosen: StreamFilter
    network: Network | None = None
    contains: bool = True  # decisions holding the range (True) or held by it (False)
    value: str | None = None
    kind: str | None = None

    @classmethod
    def from_query(cls, query: Any) -> Lookup:
        ip, cidr = query.get("ip"), query.get("range")
        if ip is not None and cidr is not None:
            raise ApiError(400, "query.range", "give ip or range, not both")
        network = parse_network("ip", ip) if ip is not None else None
        if cidr is not None:
            network = parse_network("range", cidr)
        scopes = parse_scopes("scope", query.get("scope"))
        chosen = StreamFilter.from_query(query)
        if scopes is not None:
            chosen = StreamFilter(scopes, chosen.origins, chosen.containing, chosen.not_containing)
        return cls(
            chosen=chosen,
            network=network,
            contains=parse_bool("contains", query.get("contains"), default=True),
            value=query.get("value") or None,
            kind=query.get("type") or None,
        )

    def _matches(self, row: Decision) -> bool:
        if not self.chosen.accepts(row.scope, row.origin, row.scenario):
            return False
        if self.kind is not None and row.type != self.kind:
            return False
        if self.network is None:
            return True
        held = ipaddress.ip_network(row.value)
        if held.version != self.network.version:
            return False
        if self.contains:
            return self.network.subnet_of(held)  # type: ignore[arg-type]
        return held.subnet_of(self.network)  # type: ignore[arg-type]

    def pages(self, storage: Storage, now: datetime) -> Iterator[list[dict[str, Any]]]:
        # An address or range held by decisions: the storage finds those holding its first
        # address (indexed); the rest is checked here. Anything else pages through all.
        holder = str(self.network.network_address) if self.network is not None and self.contains else None
        after = 0
        while True:
            query = DecisionQuery(
                active=True,
                now=now,
                value=self.value,
                contains=holder,
                scopes=self.chosen.scopes,
                origins=self.chosen.origins,
                after_id=after,
                limit=PAGE,
            )
            rows = storage.list_decisions(query)
            yield [decision_json(row, now) for row in rows if self._matches(row)]
            if len(rows) < PAGE:
                return
            after = rows[-1].id


def _start_pull(collector: Collector, request: Request) -> tuple[Pull, list[dict[str, Any]]] | None:
    """Authenticate, check the parameters, read the first page: one trip to the thread pool."""
    bouncer = bouncer_of(collector, request)
    if request.method == "HEAD":
        return None
    query = request.query_params
    startup = parse_bool("startup", query.get("startup"))
    chosen = StreamFilter.from_query(query)
    agent = (request.headers.get("user-agent") or "")[:MAX_USER_AGENT] or None
    pull = Pull(collector.storage, bouncer, startup, chosen, agent)
    return pull, pull.first_page()


def _first_nonempty(pages: Iterator[list[dict[str, Any]]]) -> list[dict[str, Any]] | None:
    for page in pages:
        if page:
            return page
    return None


def _array(first: list[dict[str, Any]], rest: Iterator[list[dict[str, Any]]]) -> Iterator[bytes]:
    yield b"[" + _items(first)
    for page in rest:
        if page:
            yield b"," + _items(page)
    yield b"]"
