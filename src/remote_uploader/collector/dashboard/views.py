"""What each page shows, as plain values for its template; no HTML here.

Each function takes the storage (and settings) and the page's raw query parameters, checks every
parameter (a bad one is a `FilterError` naming it, shown as a 400 page), asks the storage and
shapes the answer. The numbers are the API's: the same `Storage` methods answer both.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from remote_uploader.collector.batch import check_text, check_time
from remote_uploader.collector.dashboard import charts
from remote_uploader.collector.routes import decode_cursor, encode_cursor
from remote_uploader.collector.settings import CollectorSettings
from remote_uploader.collector.storage.base import AgentStats, IpQuery, SortKey, Storage
from remote_uploader.protocol import MAX_AGENT_LEN

PAGE_SIZE = 50
MAX_MIN_COUNT = 2**62
# The overview's windows: how far back, how many points, how the time axis is labelled.
WINDOWS: dict[str, tuple[timedelta, int, str]] = {
    "1h": (timedelta(hours=1), 60, "%H:%M"),
    "24h": (timedelta(days=1), 96, "%H:%M"),
    "7d": (timedelta(days=7), 168, "%a %d"),
}
SINCE_CHOICES = ("15m", "1h", "24h", "7d", "30d")
_DURATION = re.compile(r"(?:(\d{1,6})([smhdw]))")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

AgentState = Literal["up", "lagging", "silent"]


class FilterError(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def parse_since(text: str, now: datetime) -> datetime:
    """`15m`, `1h`, `7d`, `1h30m` (before now) or an RFC 3339 time."""
    text = text.strip()
    if text and _DURATION.sub("", text) == "" and len(text) <= 32:
        seconds = sum(int(amount) * _UNIT[unit] for amount, unit in _DURATION.findall(text))
        return now - timedelta(seconds=seconds)
    moment = check_time(text)
    if isinstance(moment, str):
        raise FilterError("since", "a relative time such as 15m, 1h or 7d, or an RFC 3339 time")
    return moment


def query_link(path: str, params: dict[str, str], **changes: str | None) -> str:
    """`path?...` with `changes` applied to `params` (None removes a key)."""
    from urllib.parse import urlencode

    merged: dict[str, str | None] = {**params, **changes}
    kept = {key: value for key, value in merged.items() if value not in (None, "")}
    return path + ("?" + urlencode(kept) if kept else "")


# -- agents -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgentRow:
    stats: AgentStats
    state: AgentState
    lag: float  # seconds between sealing and arrival of its last batch
    quiet: float  # seconds since its last batch arrived
    version: str | None = None  # from its User-Agent, as this process last saw it
    sources: tuple[Any, ...] = ()  # (source, count) rows for the page's window


def agent_rows(
    storage: Storage, settings: CollectorSettings, now: datetime, versions: dict[str, str] | None = None
) -> list[AgentRow]:
    rows = []
    versions = versions or {}
    for stats in storage.list_agents():
        quiet = (now - stats.last_seen).total_seconds()
        lag = max(0.0, (stats.last_seen - stats.last_batch_sent_at).total_seconds())
        state: AgentState = "up"
        if quiet > settings.agent_silent_after:
            state = "silent"
        elif lag > settings.agent_lag_warn:
            state = "lagging"
        rows.append(AgentRow(stats, state, lag, quiet, versions.get(stats.name)))
    # Trouble first: silent, then lagging, then the rest by name.
    order = {"silent": 0, "lagging": 1, "up": 2}
    rows.sort(key=lambda row: (order[row.state], row.stats.name))
    return rows


def agents(storage: Storage, settings: CollectorSettings, versions: dict[str, str]) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {"agents": agent_rows(storage, settings, now, versions), "settings": settings}


# -- overview ---------------------------------------------------------------------------------


def overview(storage: Storage, settings: CollectorSettings, window: str) -> dict[str, Any]:
    if window not in WINDOWS:
        raise FilterError("window", f"one of {', '.join(WINDOWS)}")
    span, points, time_format = WINDOWS[window]
    now = datetime.now(UTC)
    end = now.replace(second=0, microsecond=0)  # complete minutes only: the current one would dip
    start = end - span
    minutes = storage.ingest_minutes(start)
    records = charts.resample([(moment, total) for moment, _, total in minutes], start, end, points)
    chart = charts.line_chart(
        "Records received per minute", start, end, [("records per minute", records)], time_format=time_format
    )
    recent = [total for moment, _, total in minutes if moment >= end - timedelta(minutes=5)]
    rows = agent_rows(storage, settings, now)
    states = {state: sum(1 for row in rows if row.state == state) for state in ("up", "lagging", "silent")}
    return {
        "window": window,
        "windows": list(WINDOWS),
        "chart": chart,
        "ingest_rate": sum(recent) / 5,
        "batches_window": sum(n for _, n, _ in minutes),
        "records_window": sum(total for _, _, total in minutes),
        "states": states,
        "trouble": [row for row in rows if row.state != "up"],
        "agent_count": len(rows),
        "decisions_active": None,
    }


# -- top addresses ----------------------------------------------------------------------------


def top_addresses(storage: Storage, params: dict[str, str]) -> dict[str, Any]:
    now = datetime.now(UTC)
    since_text = params.get("since", "24h").strip()
    since = parse_since(since_text, now) if since_text else None
    try:
        min_count = int(params.get("min_count", "1") or "1")
    except ValueError:
        raise FilterError("min_count", "a whole number") from None
    if not 1 <= min_count <= MAX_MIN_COUNT:
        raise FilterError("min_count", "at least 1")
    agent = params.get("agent", "").strip() or None
    if agent is not None and (problem := check_text(agent, MAX_AGENT_LEN)):
        raise FilterError("agent", problem)
    cidr = params.get("cidr", "").strip() or None
    network = None
    if cidr is not None:
        try:
            network = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise FilterError("cidr", "an address or a network such as 203.0.113.0/24") from None
    sort_text = params.get("sort", "count")
    if sort_text not in ("count", "last_seen"):
        raise FilterError("sort", "count or last_seen")
    sort: SortKey = "count" if sort_text == "count" else "last_seen"
    cursor = params.get("cursor") or None
    try:
        after = decode_cursor(sort, cursor) if cursor else None
    except Exception:
        raise FilterError("cursor", "not a page link of this listing") from None
    query = IpQuery(since, min_count, agent, network, sort, PAGE_SIZE, after)
    rows = storage.list_ips(query)
    kept = {key: value for key, value in params.items() if key != "cursor"}
    next_link = None
    if len(rows) == PAGE_SIZE:
        next_link = query_link("/ips", kept, cursor=encode_cursor(sort, rows[-1]))
    agent_names = [row.name for row in storage.list_agents()]
    return {
        "rows": rows,
        "trends": {},
        "filters": {
            "since": since_text,
            "min_count": str(min_count),
            "agent": agent or "",
            "cidr": cidr or "",
            "source": "",
            "sort": sort,
        },
        "since_choices": SINCE_CHOICES,
        "agent_names": agent_names,
        "sources": [],
        "sort_links": {key: query_link("/ips", kept, sort=key) for key in ("count", "last_seen")},
        "next_link": next_link,
        "first_link": query_link("/ips", kept) if after else None,
        "page_size": PAGE_SIZE,
    }


# -- one address ------------------------------------------------------------------------------


def firewall_lines(ip: str) -> list[tuple[str, str]]:
    """Lines an operator pastes to block one address now, by tool (table and sets of blocklist.py)."""
    v6 = ":" in ip
    family = "v6" if v6 else "v4"
    return [
        ("nftables", f"nft add element inet remote_uploader remote_uploader_{family} {{ {ip} }}"),
        ("ipset", f"ipset add remote_uploader_{family} {ip} -exist"),
        ("iptables", f"{'ip6tables' if v6 else 'iptables'} -I INPUT -s {ip} -j DROP"),
    ]


def address(storage: Storage, settings: CollectorSettings, ip: str) -> dict[str, Any]:
    detail = storage.get_ip(ip)
    return {"ip": ip, "detail": detail, "firewall": firewall_lines(ip), "chart": None, "decisions": [], "sources": []}


# -- decisions --------------------------------------------------------------------------------


def decisions(storage: Storage, settings: CollectorSettings) -> dict[str, Any]:
    return {"active": [], "expired": [], "available": False, "formats": BLOCKLIST_FORMATS}


BLOCKLIST_FORMATS = ("txt", "json", "nft", "ipset")
