"""Read endpoints: addresses, agents, health, whoami (the blocklist is in blocklists.py).

Any valid token may read (agent or read-only); health needs none, so that load balancers and
monitoring can probe it. Handlers are plain `def`: FastAPI runs them in its thread pool, where
blocking database calls belong.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse

from remote_uploader import __version__
from remote_uploader.collector.models import (
    AgentCountOut,
    AgentList,
    AgentOut,
    AgentStatusOut,
    Health,
    IpDetailOut,
    IpOut,
    IpPage,
    SourceLagOut,
    WhoAmI,
)
from remote_uploader.collector.reports import backing_up, moment_before
from remote_uploader.collector.routers.deps import (
    MAX_QUERY_COUNT,
    MinCount,
    Service,
    Since,
    Who,
    bad_request,
    errors,
    moment,
)
from remote_uploader.collector.storage.base import IpQuery, IpSummary, SortKey, StoredReport, to_micros
from remote_uploader.errors import ApiError, StorageError
from remote_uploader.protocol import HEALTH_PATH, MAX_AGENT_LEN, WHOAMI_PATH, canonical_ip, check_text, format_time

router = APIRouter()

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


@router.get(
    HEALTH_PATH,
    response_model=Health,
    summary="Is the collector up, can it reach its database?",
    responses={503: {"model": Health, "description": "the database cannot be reached"}},
)
def health(collector: Service) -> Any:
    try:
        collector.storage.ping()
    except StorageError as exc:
        body = Health(status="unavailable", storage=str(exc), version=__version__)
        return JSONResponse(body.model_dump(), status_code=503, headers=collector.retry_after)
    return Health(status="ok", storage="ok", version=__version__)

@router.get(
    WHOAMI_PATH,
    response_model=WhoAmI,
    summary="The name and role of the token making the request",
    responses=errors(401),
)
def whoami(who: Who) -> WhoAmI:
    """For the agent's `test`: batches are counted under this name (docs/protocol.md)."""
    return WhoAmI(name=who.name, role=who.role)

@router.get("/v1/ips", response_model=IpPage, summary="Addresses with their counts", responses=errors(400, 401, 503))
def list_ips(
    _: Who,
    collector: Service,
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
        since=moment("query.since", since),
        min_count=min_count,
        agent=agent,
        network=network,
        sort=sort,
        limit=limit,
        after=decode_cursor(sort, cursor) if cursor else None,
    )
    rows = collector.storage.list_ips(query)
    next_cursor = encode_cursor(sort, rows[-1]) if len(rows) == limit else None
    return IpPage(items=[_ip_out(row) for row in rows], next_cursor=next_cursor)

@router.get(
    "/v1/ips/{ip}",
    response_model=IpDetailOut,
    summary="One address, with per-agent counts",
    responses=errors(400, 401, 404, 503),
)
def get_ip(_: Who, collector: Service, ip: Annotated[str, Path(max_length=64)]) -> IpDetailOut:
    canonical = canonical_ip(ip)
    if canonical is None:
        raise bad_request("path.ip", "not an IP address")
    detail = collector.storage.get_ip(canonical)
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

@router.get(
    "/v1/agents",
    response_model=AgentList,
    summary="Agents and their delivery statistics",
    responses=errors(401, 503),
)
def list_agents(_: Who, collector: Service) -> AgentList:
    reports = collector.storage.agent_reports()
    lag_warn = collector.settings.agent_lag_warn
    items = [
        AgentOut(
            status=_status(reports.pop(row.name, None), lag_warn),
            agent=row.name,
            first_seen=format_time(row.first_seen),
            last_seen=format_time(row.last_seen),
            batches=row.batches,
            duplicates=row.duplicates,
            records=row.records,
            last_batch_id=row.last_batch_id,
            last_batch_sent_at=format_time(row.last_batch_sent_at),
        )
        for row in collector.storage.list_agents()
    ]
    # Agents that have only heartbeated: alive, with nothing sent yet (docs/protocol.md).
    items += [
        AgentOut(status=_status(stored, lag_warn), agent=name, first_seen=None, last_seen=None, batches=0,
                 duplicates=0, records=0, last_batch_id=None, last_batch_sent_at=None)
        for name, stored in reports.items()
    ]
    return AgentList(items=sorted(items, key=lambda item: item.agent))


def _status(stored: StoredReport | None, lag_warn: float) -> AgentStatusOut | None:
    if stored is None:
        return None
    report = stored.report
    oldest = moment_before(stored, report.oldest_age)
    failing = moment_before(stored, report.failing_for) if report.failing_for > 0 else None
    return AgentStatusOut(
        reported_at=format_time(stored.received_at),
        version=report.version,
        queued_batches=report.queued_batches,
        queued_records=report.queued_records,
        queued_bytes=report.queued_bytes,
        oldest_queued_at=None if oldest is None else format_time(oldest),
        failing_since=None if failing is None else format_time(failing),
        dead_batches=report.dead_batches,
        backing_up=backing_up(report, lag_warn),
        sources=[SourceLagOut(source=name, behind=lag) for name, lag in report.sources],
    )
