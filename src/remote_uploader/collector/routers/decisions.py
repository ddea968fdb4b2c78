"""HTTP endpoints of decisions, rules and time windows (docs/decisions.md).

    GET    /v1/rules                        the configured rules
    GET    /v1/rules/decisions              decisions (active by default), paged by id
    POST   /v1/rules/decisions              a decision by hand: {"value", "duration", "reason"}
    GET    /v1/rules/decisions/{id}         one decision and why it was made
    DELETE /v1/rules/decisions/{id}         end it
    DELETE /v1/rules/decisions?value=V      end the active decisions of V
    GET    /v1/windows                      counts per address in a window (since=10m ...)
    GET    /v1/series                       counts per bucket

`/v1/decisions` itself is CrowdSec's live-mode endpoint (the crowdsec branch), hence the
prefix. Any token reads; writing needs an agent token: a read token is for firewalls and
dashboards, and an agent could cause any decision by sending counts anyway.
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Body, Path, Query
from pydantic import BaseModel, Field

from remote_uploader.collector.decisions.engine import DecisionRefused, add_manual, delete_value
from remote_uploader.collector.decisions.values import ValueRejected, decision_value
from remote_uploader.collector.routers.deps import Service, Who, bad_request, errors, moment
from remote_uploader.collector.storage.model import Decision, DecisionQuery, WindowQuery
from remote_uploader.collector.timeparse import DurationError, parse_duration
from remote_uploader.errors import ApiError
from remote_uploader.protocol import Network, canonical_ip, check_text, format_time

router = APIRouter()

MAX_LIMIT = 10000
MAX_REASON = 1024


class DecisionOut(BaseModel):
    id: int
    value: str
    scope: str = Field(description="Ip or Range")
    type: str
    origin: str = Field(description="remote-uploader (a rule) or cscli (by hand)")
    scenario: str = Field(description="the rule's name, or manual")
    reason: str
    created_at: str
    until: str
    state: str = Field(description="active, deleted or expired")
    ended_at: str | None


class DecisionPage(BaseModel):
    items: list[DecisionOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last")


class EvidenceOut(BaseModel):
    ip: str
    count: int
    first_bucket: str
    last_bucket: str


class DecisionExplained(DecisionOut):
    details: dict[str, object] = Field(description="the rule as it decided: window, min_count, escalation...")
    evidence: list[EvidenceOut] = Field(description="the addresses counted, with their counts and buckets")


class NewDecisionIn(BaseModel):
    value: str = Field(max_length=64, description="an address or a CIDR network")
    duration: str = Field(max_length=32, description="30s, 15m, 4h, 7d or combinations")
    reason: str = Field(default="", max_length=MAX_REASON)


class DecisionsMade(BaseModel):
    items: list[DecisionOut] = Field(description="one decision, or the pieces of a range the allowlist cut")


class WindowOut(BaseModel):
    ip: str
    count: int
    first_bucket: str
    last_bucket: str


class WindowPage(BaseModel):
    since: str
    until: str | None
    items: list[WindowOut]


class PointOut(BaseModel):
    start: str
    seconds: int
    count: int


class Series(BaseModel):
    since: str
    until: str | None
    points: list[PointOut]


class RuleList(BaseModel):
    items: list[dict[str, object]]


def decision_out(decision: Decision) -> DecisionOut:
    return DecisionOut(
        id=decision.id,
        value=decision.value,
        scope=decision.scope,
        type=decision.type,
        origin=decision.origin,
        scenario=decision.scenario,
        reason=decision.reason,
        created_at=format_time(decision.created_at),
        until=format_time(decision.until),
        state=decision.state,
        ended_at=format_time(decision.ended_at) if decision.ended_at else None,
    )


def network(field: str, text: str | None) -> Network | None:
    if text is None:
        return None
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise bad_request(field, "not a CIDR network such as 203.0.113.0/24") from None


def address(field: str, text: str | None) -> str | None:
    if text is None:
        return None
    canonical = canonical_ip(text)
    if canonical is None:
        raise bad_request(field, "not an IP address")
    return canonical


def value(field: str, text: str) -> str:
    try:
        return decision_value(text)[0]
    except ValueRejected as exc:
        raise bad_request(field, str(exc)) from None


Since = Annotated[str, Query(max_length=64, description="RFC 3339 time, or how long ago: 15m, 1h, 7d")]
Until = Annotated[str | None, Query(max_length=64, description="RFC 3339 time, or how long ago (default: now)")]
Agents = Annotated[list[str] | None, Query(max_length=128, description="only these agents' counts (repeatable)")]
Sources = Annotated[list[str] | None, Query(max_length=512, description="only these sources (glob; repeatable)")]


def writer(who: Who) -> None:
    if who.role != "agent":
        raise ApiError(403, "authorization", "this token may only read; decisions need an agent token")

@router.get("/v1/rules", response_model=RuleList, summary="The configured rules", responses=errors(401))
def list_rules(_: Who, collector: Service) -> RuleList:
    return RuleList(items=[rule.describe() for rule in collector.settings.rules])

@router.get(
    "/v1/rules/decisions",
    response_model=DecisionPage,
    summary="Decisions (active ones by default)",
    responses=errors(400, 401, 503),
)
def list_decisions(
    _: Who,
    collector: Service,
    state: Annotated[str, Query(pattern="^(active|ended|all)$", description="active, ended or all")] = "active",
    value_: Annotated[str | None, Query(alias="value", max_length=64)] = None,
    contains: Annotated[str | None, Query(max_length=64, description="decisions that hold this address")] = None,
    scenario: Annotated[str | None, Query(max_length=128)] = None,
    origin: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 1000,
    cursor: Annotated[str | None, Query(max_length=32, description="next_cursor of the previous page")] = None,
) -> DecisionPage:
    after = 0
    if cursor is not None:
        if not cursor.isdigit() or len(cursor) > 18:
            raise bad_request("query.cursor", "not a cursor returned by this API")
        after = int(cursor)
    active = {"active": True, "ended": False, "all": None}[state]
    query = DecisionQuery(
        active=active,
        now=datetime.now(UTC) if active else None,
        value=value("query.value", value_) if value_ is not None else None,
        contains=address("query.contains", contains),
        scenarios=(scenario,) if scenario is not None else None,
        origins=(origin,) if origin is not None else None,
        after_id=after,
        limit=limit,
    )
    rows = collector.storage.list_decisions(query)
    next_cursor = str(rows[-1].id) if len(rows) == limit else None
    return DecisionPage(items=[decision_out(row) for row in rows], next_cursor=next_cursor)

@router.post(
    "/v1/rules/decisions",
    response_model=DecisionsMade,
    status_code=201,
    summary="Make a decision by hand (replaces an active one of the same value)",
    responses=errors(400, 401, 403, 503),
)
def post_decision(who: Who, collector: Service, body: Annotated[NewDecisionIn, Body()]) -> DecisionsMade:
    writer(who)
    try:
        duration = parse_duration(body.duration)
    except DurationError as exc:
        raise bad_request("body.duration", str(exc)) from None
    if problem := _check_reason(body.reason):
        raise bad_request("body.reason", problem)
    try:
        made = add_manual(
            collector.storage, collector.settings.allowlist, body.value, duration, body.reason, datetime.now(UTC)
        )
    except DecisionRefused as exc:
        raise bad_request(f"body.{exc.field}", exc.reason) from None
    return DecisionsMade(items=[decision_out(d) for d in made])

@router.get(
    "/v1/rules/decisions/{decision_id}",
    response_model=DecisionExplained,
    summary="One decision and why it was made",
    responses=errors(400, 401, 404, 503),
)
def explain(_: Who, collector: Service, decision_id: Annotated[int, Path(ge=1, le=2**62)]) -> DecisionExplained:
    detail = collector.storage.get_decision(decision_id)
    if detail is None:
        raise ApiError(404, "path.decision_id", "no such decision")
    return DecisionExplained(
        **decision_out(detail.decision).model_dump(),
        details=detail.details,
        evidence=[
            EvidenceOut(
                ip=e.ip,
                count=e.count,
                first_bucket=format_time(e.first_bucket),
                last_bucket=format_time(e.last_bucket),
            )
            for e in detail.evidence
        ],
    )

@router.delete(
    "/v1/rules/decisions/{decision_id}",
    response_model=DecisionsMade,
    summary="End one decision",
    responses=errors(400, 401, 403, 404, 503),
)
def delete_one(who: Who, collector: Service, decision_id: Annotated[int, Path(ge=1, le=2**62)]) -> DecisionsMade:
    writer(who)
    ended = collector.storage.delete_decisions(datetime.now(UTC), decision_id=decision_id)
    if not ended:
        raise ApiError(404, "path.decision_id", "no active decision with this id")
    return DecisionsMade(items=[decision_out(d) for d in ended])

@router.delete(
    "/v1/rules/decisions",
    response_model=DecisionsMade,
    summary="End the active decisions of an address or range",
    responses=errors(400, 401, 403, 404, 503),
)
def delete_by_value(
    who: Who, collector: Service, value_: Annotated[str, Query(alias="value", max_length=64)]
) -> DecisionsMade:
    writer(who)
    try:
        ended = delete_value(collector.storage, value_, datetime.now(UTC))
    except DecisionRefused as exc:
        raise bad_request(f"query.{exc.field}", exc.reason) from None
    if not ended:
        raise ApiError(404, "query.value", "no active decision for this value")
    return DecisionsMade(items=[decision_out(d) for d in ended])

@router.get(
    "/v1/windows",
    response_model=WindowPage,
    summary="Counts per address over a time window",
    responses=errors(400, 401, 503),
)
def windows(
    _: Who,
    collector: Service,
    since: Since,
    until: Until = None,
    agent: Agents = None,
    source: Sources = None,
    cidr: Annotated[str | None, Query(max_length=64)] = None,
    ip: Annotated[str | None, Query(max_length=64)] = None,
    min_count: Annotated[int, Query(ge=1, le=2**62)] = 1,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 1000,
) -> WindowPage:
    start = moment("query.since", since)
    end = moment("query.until", until)
    assert start is not None
    one = address("query.ip", ip)
    rows = collector.storage.window_counts(
        WindowQuery(
            since=start,
            until=end,
            agents=tuple(agent) if agent else None,
            sources=tuple(source) if source else None,
            network=network("query.cidr", cidr),
            ips=(one,) if one else None,
            min_count=min_count,
            limit=limit,
        )
    )
    return WindowPage(
        since=format_time(start),
        until=format_time(end) if end else None,
        items=[
            WindowOut(
                ip=r.ip,
                count=r.count,
                first_bucket=format_time(r.first_bucket),
                last_bucket=format_time(r.last_bucket),
            )
            for r in rows
        ],
    )

@router.get("/v1/series", response_model=Series, summary="Counts per time bucket", responses=errors(400, 401, 503))
def series(
    _: Who,
    collector: Service,
    since: Since,
    until: Until = None,
    agent: Agents = None,
    source: Sources = None,
    cidr: Annotated[str | None, Query(max_length=64)] = None,
    ip: Annotated[str | None, Query(max_length=64)] = None,
) -> Series:
    start = moment("query.since", since)
    end = moment("query.until", until)
    assert start is not None
    points = collector.storage.window_series(
        start,
        end,
        ip=address("query.ip", ip),
        network=network("query.cidr", cidr),
        agents=tuple(agent) if agent else None,
        sources=tuple(source) if source else None,
    )
    return Series(
        since=format_time(start),
        until=format_time(end) if end else None,
        points=[PointOut(start=format_time(p.start), seconds=p.seconds, count=p.count) for p in points],
    )


def _check_reason(reason: str) -> str | None:
    return check_text(reason, MAX_REASON, empty=True)
