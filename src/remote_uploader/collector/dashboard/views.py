"""What each page shows, as plain values for its template; no HTML here.

Each function takes the storage (and settings) and the page's raw query parameters, checks every
parameter (a bad one is a `FilterError` naming it, shown as a 400 page), asks the storage and
shapes the answer. The numbers are the API's: the same `Storage` methods answer both.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from remote_uploader.collector.dashboard import charts
from remote_uploader.collector.dashboard.cache import TtlCache
from remote_uploader.collector.reports import backing_up, moment_before
from remote_uploader.collector.settings import CollectorSettings
from remote_uploader.collector.storage.base import AgentStats, Storage, StoredReport
from remote_uploader.collector.storage.model import (
    MAX_LABEL,
    Decision,
    DecisionQuery,
    MinutePoint,
    WindowCount,
    WindowQuery,
)
from remote_uploader.collector.timeparse import DurationError, parse_moment
from remote_uploader.protocol import MAX_AGENT_LEN, check_text

PAGE_SIZE = 50
TABLE_TTL = 60.0  # seconds a top-addresses result is reused
CHART_TTL = {"1h": 30.0, "24h": 120.0, "7d": 600.0}  # seconds an overview chart is reused
TREND_POINTS = 24
SOURCES_WINDOW = timedelta(hours=24)  # the Agents page's counts per source
MAX_PAGE = 200  # pages are counted by offset: deeper than this, narrow the filters
MAX_MIN_COUNT = 2**62
# The overview's windows: how far back, how many points, how the time axis is labelled.
WINDOWS: dict[str, tuple[timedelta, int, str]] = {
    "1h": (timedelta(hours=1), 60, "%H:%M"),
    "24h": (timedelta(days=1), 96, "%H:%M"),
    "7d": (timedelta(days=7), 168, "%a %d"),
}
SINCE_CHOICES = ("15m", "1h", "24h", "7d", "30d")

AgentState = Literal["up", "lagging", "silent"]


class FilterError(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def query_link(path: str, params: dict[str, str], **changes: str | None) -> str:
    """`path?...` with `changes` applied to `params` (None removes a key)."""
    from urllib.parse import urlencode

    merged: dict[str, str | None] = {**params, **changes}
    kept = {key: value for key, value in merged.items() if value not in (None, "")}
    return path + ("?" + urlencode(kept) if kept else "")


# -- agents -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgentRow:
    name: str
    stats: AgentStats | None  # None: it has only sent status reports (heartbeats), no batch yet
    state: AgentState
    lag: float  # seconds between sealing and arrival of its last batch
    quiet: float  # seconds since its last batch arrived
    version: str | None = None  # its report's, else its User-Agent's as this process last saw it
    sources: tuple[Any, ...] = ()  # (source, count) rows for the page's window
    report: StoredReport | None = None  # its latest status report (docs/protocol.md, "Agent status")
    backing_up: bool = False  # its queue is backing up (reports.backing_up)
    oldest_queued: datetime | None = None
    failing_since: datetime | None = None


def agent_rows(
    storage: Storage, settings: CollectorSettings, now: datetime, versions: dict[str, str] | None = None
) -> list[AgentRow]:
    rows = []
    versions = versions or {}
    reports = storage.agent_reports()
    listed = {stats.name: stats for stats in storage.list_agents()}
    # An agent that has only heartbeated (nothing to send since it started) is listed too: its
    # report says it is alive and what it has not read yet, which is what the page is for.
    for name in sorted(reports.keys() | listed.keys()):
        stats, report = listed.get(name), reports.get(name)
        # A heartbeat (a report alone) says the agent is alive with nothing to send.
        heard = max(([] if stats is None else [stats.last_seen]) + ([] if report is None else [report.received_at]))
        quiet = (now - heard).total_seconds()
        lag = 0.0 if stats is None else max(0.0, (stats.last_seen - stats.last_batch_sent_at).total_seconds())
        state: AgentState = "up"
        if quiet > settings.agent_silent_after:
            state = "silent"
        elif lag > settings.agent_lag_warn:
            state = "lagging"
        version = versions.get(name)
        row = AgentRow(name, stats, state, lag, quiet, version)
        if report is not None:
            failing = report.report.failing_for
            row = replace(row, version=report.report.version or version, report=report,
                          backing_up=backing_up(report.report, settings.agent_lag_warn),
                          oldest_queued=moment_before(report, report.report.oldest_age),
                          failing_since=moment_before(report, failing) if failing > 0 else None)
        rows.append(row)
    # Trouble first: silent, then lagging, then queues backing up, then the rest by name.
    order = {"silent": 0, "lagging": 1, "up": 2}
    rows.sort(key=lambda row: (order[row.state], not row.backing_up, row.name))
    return rows


def agents(storage: Storage, settings: CollectorSettings, versions: dict[str, str], cache: TtlCache) -> dict[str, Any]:
    now = datetime.now(UTC)
    rows = agent_rows(storage, settings, now, versions)

    def compute() -> tuple[datetime, list[tuple[str, str, int]]]:
        return datetime.now(UTC), storage.agent_sources(datetime.now(UTC) - SOURCES_WINDOW)

    (as_of, found), _ = cache.get("agent-sources", TABLE_TTL, compute)
    by_agent: dict[str, list[SourceRow]] = {}
    for agent, source, count in found:
        by_agent.setdefault(agent, []).append(SourceRow(source, count))
    rows = [replace(row, sources=tuple(by_agent.get(row.name, ()))) for row in rows]
    return {"agents": rows, "settings": settings, "sources_as_of": as_of, "sources_window": "24 h"}


# -- overview ---------------------------------------------------------------------------------


def overview(storage: Storage, settings: CollectorSettings, window: str, cache: TtlCache) -> dict[str, Any]:
    if window not in WINDOWS:
        raise FilterError("window", f"one of {', '.join(WINDOWS)}")
    span, points, time_format = WINDOWS[window]
    now = datetime.now(UTC)

    def compute() -> tuple[datetime, datetime, list[MinutePoint]]:
        end = datetime.now(UTC).replace(second=0, microsecond=0)  # complete minutes: the current one would dip
        return end - span, end, storage.minute_series(end - span, end - timedelta(microseconds=1))

    (start, end, series), _ = cache.get(("overview", window), CHART_TTL[window], compute)
    occurrences = charts.resample([(p.start, p.seconds, p.occurrences) for p in series], start, end, points)
    distinct = charts.resample([(p.start, p.seconds, p.addresses) for p in series], start, end, points)
    chart = charts.line_chart(
        "Per minute",
        start,
        end,
        [("occurrences", occurrences), ("distinct addresses", distinct)],
        time_format=time_format,
    )
    minutes = storage.ingest_minutes(end - timedelta(minutes=5))
    recent = [total for moment, _, total in minutes if moment < end]
    rows = agent_rows(storage, settings, now)
    states = {state: sum(1 for row in rows if row.state == state) for state in ("up", "lagging", "silent")}
    active = storage.count_active_decisions(now)
    return {
        "window": window,
        "windows": list(WINDOWS),
        "chart": chart,
        "ingest_rate": sum(recent) / 5,
        "occurrences_window": sum(p.occurrences for p in series),
        "states": states,
        "trouble": [row for row in rows if row.state != "up"],
        "agent_count": len(rows),
        "decisions_active": active,
        "as_of": end,
    }


# -- top addresses ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TopRow:
    ip: str
    count: int  # in the window
    first: datetime  # start of its first bucket in the window
    last: datetime  # start of its last bucket in the window
    trend: str  # sparkline points


def top_addresses(storage: Storage, params: dict[str, str], cache: TtlCache) -> dict[str, Any]:
    """The addresses most counted in a window (or most recently seen), with the page's filters."""
    now = datetime.now(UTC)
    since_text = params.get("since", "").strip() or "24h"
    try:
        since = parse_moment(since_text, now)
    except DurationError:
        raise FilterError("since", "a relative time such as 15m, 1h or 7d, or an RFC 3339 time") from None
    if since > now:
        raise FilterError("since", "must be in the past")
    try:
        min_count = int(params.get("min_count", "1") or "1")
    except ValueError:
        raise FilterError("min_count", "a whole number") from None
    if not 1 <= min_count <= MAX_MIN_COUNT:
        raise FilterError("min_count", "at least 1")
    agent = params.get("agent", "").strip() or None
    if agent is not None and (problem := check_text(agent, MAX_AGENT_LEN)):
        raise FilterError("agent", problem)
    source = params.get("source", "").strip() or None
    if source is not None and (problem := check_text(source, MAX_LABEL)):
        raise FilterError("source", problem)
    cidr = params.get("cidr", "").strip() or None
    network = None
    if cidr is not None:
        try:
            network = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise FilterError("cidr", "an address or a network such as 203.0.113.0/24") from None
    sort = params.get("sort", "count")
    if sort not in ("count", "last_seen"):
        raise FilterError("sort", "count or last_seen")
    try:
        page = int(params.get("page", "1") or "1")
    except ValueError:
        raise FilterError("page", "a whole number") from None
    if not 1 <= page <= MAX_PAGE:
        raise FilterError("page", f"1 to {MAX_PAGE}")
    query = WindowQuery(
        since=since,
        agents=(agent,) if agent else None,
        sources=(_literal_pattern(source),) if source else None,
        network=network,
        min_count=min_count,
        limit=_rows_for(page),
        order="last_seen" if sort == "last_seen" else "count",
    )
    key = ("top", since_text, min_count, agent, source, cidr, sort, query.limit)

    def compute() -> tuple[datetime, list[WindowCount]]:
        return datetime.now(UTC), storage.window_counts(query)

    (as_of, found), _ = cache.get(key, TABLE_TTL, compute)
    chosen = found[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
    more = len(found) > page * PAGE_SIZE

    def trends() -> list[TopRow]:
        rows = []
        series = storage.window_series_by_ip(since, [row.ip for row in chosen], agents=query.agents,
                                             sources=query.sources)
        for row in chosen:
            points = series[row.ip]
            values = charts.resample([(p.start, p.seconds, p.count) for p in points], since, now, TREND_POINTS)
            rows.append(TopRow(row.ip, row.count, row.first_bucket, row.last_bucket, charts.sparkline(values)))
        return rows

    rows, _ = cache.get((*key, page), TABLE_TTL, trends)
    kept = {key: value for key, value in params.items() if key not in ("page", "q") and value}
    return {
        "rows": rows,
        "filters": {
            "since": since_text,
            "min_count": str(min_count),
            "agent": agent or "",
            "cidr": cidr or "",
            "source": source or "",
            "sort": sort,
        },
        "since_choices": SINCE_CHOICES,
        "agent_names": storage.list_labels("agent"),
        "sources": storage.list_labels("source"),
        "sort_links": {key: query_link("/ips", kept, sort=key) for key in ("count", "last_seen")},
        "next_link": query_link("/ips", kept, page=str(page + 1)) if more else None,
        "previous_link": query_link("/ips", kept, page=str(page - 1) if page > 2 else None) if page > 1 else None,
        "page": page,
        "page_size": PAGE_SIZE,
        "since_moment": since,
        "as_of": as_of,
    }


def _rows_for(page: int) -> int:
    """How many first addresses the query of `page` asks for: the pages up to the next power of
    two (then one more, to know whether a next page exists), kept TABLE_TTL. A first page costs
    its 51 addresses only (the threshold search's cost grows with the limit: on the benchmark's
    big store a day's first 51 took 6 ms, its first 1,001 43 ms, one agent's 24 and 775 ms),
    and a reader going down the pages makes a query at pages 2, 3, 5, 9, ... only."""
    pages = 1 << (page - 1).bit_length()
    return pages * PAGE_SIZE + 1


def _literal_pattern(text: str) -> str:
    """A source label as an fnmatch pattern that matches only itself (labels may hold * ? [)."""
    return "".join(f"[{ch}]" if ch in "*?[" else ch for ch in text)


# -- one address ------------------------------------------------------------------------------


def firewall_lines(value: str) -> list[tuple[str, str]]:
    """Lines an operator pastes to block an address or range now (the sets of blocklist.py)."""
    v6 = ":" in value
    family = "v6" if v6 else "v4"
    ipset_type = "hash:net" if "/" in value else "hash:ip"
    return [
        ("nftables", f"nft add element inet remote_uploader remote_uploader_{family} {{ {value} }}"),
        (f"ipset ({ipset_type} set)", f"ipset add remote_uploader_{family} {value} -exist"),
        ("iptables", f"{'ip6tables' if v6 else 'iptables'} -I INPUT -s {value} -j DROP"),
    ]


@dataclass(frozen=True, slots=True)
class SourceRow:
    source: str
    count: int


def address(storage: Storage, settings: CollectorSettings, ip: str, window: str) -> dict[str, Any]:
    if window not in WINDOWS:
        raise FilterError("window", f"one of {', '.join(WINDOWS)}")
    detail = storage.get_ip(ip)
    span, points, time_format = WINDOWS[window]
    now = datetime.now(UTC)
    end = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    start = end - span
    chart = None
    sources: list[SourceRow] = []
    if detail is not None:
        series = storage.window_series(start, ip=ip)
        values = charts.resample([(p.start, p.seconds, p.count) for p in series], start, end, points)
        chart = charts.line_chart("Occurrences per minute", start, end, [("occurrences", values)],
                                  time_format=time_format)
        sources = [SourceRow(label, count) for label, count in storage.ip_sources(ip, start)]
    covering = storage.list_decisions(DecisionQuery(active=None, contains=ip, limit=200))
    covering.sort(key=lambda d: d.id, reverse=True)
    return {
        "ip": ip,
        "detail": detail,
        "firewall": firewall_lines(ip),
        "chart": chart,
        "window": window,
        "windows": list(WINDOWS),
        "sources": sources,
        "decisions": [decision_row(d, now) for d in covering],
    }


# -- decisions --------------------------------------------------------------------------------

BLOCKLIST_FORMATS = ("txt", "json", "nft", "ipset")
DECISIONS_SHOWN = 200  # active ones on the page (then: filter by rule); ended ones: half as many


@dataclass(frozen=True, slots=True)
class DecisionRow:
    decision: Decision
    active: bool
    remaining: float  # seconds until it ends (active ones)


def decision_row(decision: Decision, now: datetime) -> DecisionRow:
    active = decision.state == "active" and decision.until > now
    return DecisionRow(decision, active, (decision.until - now).total_seconds())


def decisions(storage: Storage, settings: CollectorSettings, params: dict[str, str]) -> dict[str, Any]:
    now = datetime.now(UTC)
    rule = params.get("rule", "").strip() or None
    if rule is not None and (problem := check_text(rule, 256)):
        raise FilterError("rule", problem)
    scenarios = (rule,) if rule else None
    active = storage.list_decisions(DecisionQuery(active=True, now=now, scenarios=scenarios, limit=DECISIONS_SHOWN))
    ended = storage.recent_ended_decisions(DECISIONS_SHOWN // 2, scenario=rule)
    by_rule = storage.active_by_rule(now)
    return {
        "active": [decision_row(d, now) for d in active],
        "active_count": sum(n for name, n in by_rule if rule is None or name == rule),
        "expired": [decision_row(d, now) for d in ended],
        "by_rule": by_rule,
        "rule": rule or "",
        "shown": DECISIONS_SHOWN,
        "formats": BLOCKLIST_FORMATS,
    }


def decision(storage: Storage, decision_id: int) -> dict[str, Any]:
    now = datetime.now(UTC)
    found = storage.get_decision(decision_id)
    if found is None:
        return {"found": None, "row": None, "evidence": [], "details": [], "firewall": []}
    return {
        "found": found,
        "row": decision_row(found.decision, now),
        "evidence": found.evidence,
        "details": sorted((str(key), _shown(value)) for key, value in found.details.items()),
        "firewall": firewall_lines(found.decision.value),
    }


def _shown(value: object) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)
