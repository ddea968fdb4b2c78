"""Read endpoints: addresses, agents, blocklists and health.

Any valid token may read (agent or read-only); health needs none, so that load balancers and
monitoring can probe it. Handlers are plain `def`: FastAPI runs them in its thread pool, where
blocking database calls belong.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import FastAPI, Path, Query
from fastapi.responses import JSONResponse, Response

from remote_uploader import __version__
from remote_uploader.collector import blocklist
from remote_uploader.collector.api import ApiError, Who, bad_request, errors
from remote_uploader.collector.batch import check_text
from remote_uploader.collector.errors import StorageError
from remote_uploader.collector.models import (
    AgentCountOut,
    AgentList,
    AgentOut,
    ErrorOut,
    Health,
    IpDetailOut,
    IpOut,
    IpPage,
    WhoAmI,
)
from remote_uploader.collector.storage.base import IpQuery, IpSummary, SortKey, to_micros
from remote_uploader.collector.timeparse import DurationError, parse_moment
from remote_uploader.protocol import HEALTH_PATH, MAX_AGENT_LEN, WHOAMI_PATH, canonical_ip, format_time

if TYPE_CHECKING:
    from remote_uploader.collector.app import Collector

MAX_QUERY_COUNT = 2**62  # any larger min_count matches nothing anyway, and fits every database

Since = Annotated[
    str | None,
    Query(
        max_length=64,
        description="only addresses last seen at or after this RFC 3339 time, or this long ago (15m, 1h, 7d)",
    ),
]
MinCount = Annotated[int, Query(ge=1, le=MAX_QUERY_COUNT, description="only addresses counted at least this often")]


def _since(value: str | None) -> datetime | None:
    """RFC 3339, or a duration meaning that long before now (`since=1h`)."""
    if value is None:
        return None
    try:
        return parse_moment(value)
    except DurationError as exc:
        raise bad_request("query.since", str(exc)) from None


def encode_cursor(sort: SortKey, row: IpSummary) -> str:
    value = row.count if sort == "count" else to_micros(row.last_seen)
    raw = json.dumps([sort, value, row.ip], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(sort: SortKey, cursor: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        kind, value, ip = json.loads(raw)
    except (ValueError, TypeError, binascii.Error):
        raise bad_request("query.cursor", "not a cursor returned by this API") from None
    if kind != sort:
        raise bad_request("query.cursor", "the cursor belongs to a listing with another sort order")
    if type(value) is not int or not isinstance(ip, str) or abs(value) > MAX_QUERY_COUNT or len(ip) > 64:
        raise bad_request("query.cursor", "not a cursor returned by this API")
    return value, ip


def _ip_out(row: IpSummary) -> IpOut:
    return IpOut(
        ip=row.ip,
        count=row.count,
        first_seen=format_time(row.first_seen),
        last_seen=format_time(row.last_seen),
        agents=row.agents,
    )


def add_read_routes(app: FastAPI, collector: Collector) -> None:
    storage = collector.storage

    @app.get(
        HEALTH_PATH,
        response_model=Health,
        summary="Is the collector up, can it reach its database?",
        responses={503: {"model": Health, "description": "the database cannot be reached"}},
    )
    def health() -> Any:
        try:
            storage.ping()
        except StorageError as exc:
            body = Health(status="unavailable", storage=str(exc), version=__version__)
            return JSONResponse(body.model_dump(), status_code=503, headers=collector.retry_after)
        return Health(status="ok", storage="ok", version=__version__)

    @app.get(
        WHOAMI_PATH,
        response_model=WhoAmI,
        summary="The name and role of the token making the request",
        responses=errors(401),
    )
    def whoami(who: Who) -> WhoAmI:
        """For the agent's `test`: batches are counted under this name (docs/protocol.md)."""
        return WhoAmI(name=who.name, role=who.role)

    @app.get("/v1/ips", response_model=IpPage, summary="Addresses with their counts", responses=errors(400, 401, 503))
    def list_ips(
        _: Who,
        since: Since = None,
        min_count: MinCount = 1,
        agent: Annotated[
            str | None,
            Query(max_length=MAX_AGENT_LEN, description="only this agent's addresses, with its own counts"),
        ] = None,
        cidr: Annotated[str | None, Query(max_length=64, description="only addresses in this network")] = None,
        sort: Annotated[Literal["count", "last_seen"], Query(description="descending")] = "count",
        limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
        cursor: Annotated[str | None, Query(max_length=512, description="next_cursor of the previous page")] = None,
    ) -> IpPage:
        if agent is not None and (problem := check_text(agent, MAX_AGENT_LEN)):
            raise bad_request("query.agent", problem)
        network = None
        if cidr is not None:
            try:
                network = ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise bad_request("query.cidr", "not a CIDR network such as 203.0.113.0/24") from None
        query = IpQuery(
            since=_since(since),
            min_count=min_count,
            agent=agent,
            network=network,
            sort=sort,
            limit=limit,
            after=decode_cursor(sort, cursor) if cursor else None,
        )
        rows = storage.list_ips(query)
        next_cursor = encode_cursor(sort, rows[-1]) if len(rows) == limit else None
        return IpPage(items=[_ip_out(row) for row in rows], next_cursor=next_cursor)

    @app.get(
        "/v1/ips/{ip}",
        response_model=IpDetailOut,
        summary="One address, with per-agent counts",
        responses=errors(400, 401, 404, 503),
    )
    def get_ip(_: Who, ip: Annotated[str, Path(max_length=64)]) -> IpDetailOut:
        canonical = canonical_ip(ip)
        if canonical is None:
            raise bad_request("path.ip", "not an IP address")
        detail = storage.get_ip(canonical)
        if detail is None:
            raise ApiError(404, "path.ip", "no counts for this address")
        return IpDetailOut(
            **_ip_out(detail.summary).model_dump(),
            by_agent=[
                AgentCountOut(
                    agent=row.agent,
                    count=row.count,
                    first_seen=format_time(row.first_seen),
                    last_seen=format_time(row.last_seen),
                )
                for row in detail.by_agent
            ],
        )

    @app.get(
        "/v1/agents",
        response_model=AgentList,
        summary="Agents and their delivery statistics",
        responses=errors(401, 503),
    )
    def list_agents(_: Who) -> AgentList:
        return AgentList(
            items=[
                AgentOut(
                    agent=row.name,
                    first_seen=format_time(row.first_seen),
                    last_seen=format_time(row.last_seen),
                    batches=row.batches,
                    duplicates=row.duplicates,
                    records=row.records,
                    last_batch_id=row.last_batch_id,
                    last_batch_sent_at=format_time(row.last_batch_sent_at),
                )
                for row in storage.list_agents()
            ]
        )

    @app.get(
        "/v1/blocklist",
        summary="A blocklist for firewalls",
        response_class=Response,
        responses={
            200: {
                "description": "txt (default), nft and ipset are text/plain; json is application/json",
                "content": {"text/plain": {"schema": {"type": "string"}}, "application/json": {"schema": {}}},
            },
            **errors(400, 401, 503),
            404: {"model": ErrorOut, "description": "`part` is past the last part"},
        },
    )
    def get_blocklist(
        _: Who,
        format: Annotated[Literal["txt", "json", "nft", "ipset"], Query()] = "txt",
        min_count: MinCount = 1,
        since: Since = None,
        family: Annotated[Literal["4", "6"] | None, Query(description="only IPv4 or only IPv6")] = None,
        include_private: Annotated[
            bool, Query(description="include non-global addresses (private, loopback, documentation...)")
        ] = False,
        name: Annotated[
            str, Query(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,23}$", description="nftables table / ipset set prefix")
        ] = "remote_uploader",
        max_entries: Annotated[
            int | None, Query(ge=1, le=2**31, description="at most this many entries, ranked by `rank`")
        ] = None,
        rank: Annotated[
            Literal["count", "last_seen"], Query(description="what max_entries keeps: most counted or most recent")
        ] = "count",
        part_size: Annotated[int | None, Query(ge=1, le=2**31, description="parts of this size")] = None,
        part: Annotated[int | None, Query(ge=1, le=2**31, description="which part (1-based) of part_size")] = None,
    ) -> Response:
        moment = _since(since)
        version = int(family) if family else None
        rows = storage.blocklist_rows(min_count, moment, version)
        filters = {
            "min_count": str(min_count),
            "since": since or "-",
            "family": family or "any",
            "include_private": str(include_private).lower(),
        }
        chosen = blocklist.select(rows, collector.settings.allowlist, include_private)
        if max_entries is not None:
            filters["max_entries"] = str(max_entries)
            filters["rank"] = rank
            chosen = blocklist.cap(chosen, max_entries, rank)
        if part is not None and part_size is None:
            raise bad_request("query.part", "needs part_size")
        if part_size is not None:
            if format in ("nft", "ipset"):
                raise bad_request("query.part_size", "parts are for txt and json lists; nft and ipset load any size")
            chosen, parts = blocklist.split(chosen, part_size, part or 1)
            if (part or 1) > parts:
                raise ApiError(404, "query.part", f"there are {parts} parts")
            filters["part"] = f"{part or 1}/{parts}"
        document = blocklist.Blocklist(datetime.now(UTC), filters, chosen)
        media = "application/json" if format == "json" else "text/plain; charset=utf-8"
        return Response(blocklist.render(document, format, name), media_type=media)
