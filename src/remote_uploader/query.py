"""Ask a collector what the dashboard shows: addresses and decisions, for a shell.

`remote-uploader ips` and `remote-uploader decisions` are thin commands over this module: it
builds the API request from the options, pages through the answer (keyset cursors) up to the
limit, and renders rows as a terminal table, JSON or CSV. HTTP goes through the agent's own
client (agent/transport.py: h11, no `ssl` import unless the URL is https://), with the agent's
`[server]` settings: URL, token (never an argument), CA file, timeout.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from remote_uploader import __version__
from remote_uploader.agent.transport import Connection, tls_context
from remote_uploader.config import ServerConfig
from remote_uploader.errors import QueryError
from remote_uploader.i18n import Message

MAX_PAGE = 10_000  # the API's largest page
MAX_ANSWER = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class IpFilters:
    since: str | None = None
    min_count: int | None = None
    source: str | None = None
    agent: str | None = None
    cidr: str | None = None
    sort: str = "count"
    limit: int = 100


class Client:
    """GET JSON from one collector with a token; every failure is a `QueryError` saying what."""

    def __init__(self, server: ServerConfig) -> None:
        parts = urlsplit(server.url)
        self.where = f"{parts.scheme}://{parts.netloc}"
        self.prefix = parts.path.rstrip("/")
        tls = tls_context(server.ca_file, server.verify_tls) if parts.scheme == "https" else None
        port = parts.port or (443 if parts.scheme == "https" else 80)
        self.token = str(server.token)
        self.conn = Connection(parts.hostname or "127.0.0.1", port, server.timeout, tls)

    def get(self, path: str, params: dict[str, Any]) -> Any:
        target = self.prefix + path + ("?" + urlencode(params) if params else "")
        if not self.token:
            raise QueryError(Message(
                "no token for {where}: set server.token_file, --token-file or REMOTE_UPLOADER_TOKEN", where=self.where))
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Accept": "application/json",
            "User-Agent": f"remote-uploader/{__version__}",
        }
        try:
            self.conn.send_request("GET", target, headers, None)
            response = self.conn.read_response(MAX_ANSWER)
        except OSError as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise QueryError(Message("cannot reach the collector at {where}: {reason}", where=self.where,
                                     reason=reason)) from None
        try:
            answer = json.loads(response.body) if response.body else None
        except ValueError:
            answer = None
        if response.status != 200:
            raise QueryError(Message("the collector at {where} answered {status}: {reason}", where=self.where,
                                     status=response.status, reason=_reason(answer)))
        if answer is None:
            raise QueryError(Message("the collector at {where} answered with something that is not JSON",
                                     where=self.where))
        return answer

    def close(self) -> None:
        self.conn.close()


def _reason(answer: Any) -> str:
    try:
        return "; ".join(f"{item['field']}: {item['error']}" for item in answer["detail"])
    except (KeyError, TypeError):
        return "no reason given"


def fetch_ips(client: Client, filters: IpFilters) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    """Addresses matching `filters`, at most `filters.limit`, and the columns to show.

    With a window (`since`) or a source, the counts are those of the window, per source and
    agent as filtered (`GET /v1/windows`, what the dashboard's table shows); without, they are
    the all-time totals (`GET /v1/ips`, paged through its cursors).
    """
    if filters.since is None and filters.source is None:
        return _fetch_totals(client, filters), IP_COLUMNS
    params: dict[str, Any] = {"since": filters.since or "24h"}
    for key in ("min_count", "source", "agent", "cidr"):
        value = getattr(filters, key)
        if value is not None:
            params[key] = value
    # Most counted first, cut at the limit by the collector; by last seen, the window's
    # addresses (up to the API's largest page) sorted here, then cut.
    params["limit"] = min(MAX_PAGE, filters.limit) if filters.sort == "count" else MAX_PAGE
    answer = client.get("/v1/windows", params)
    rows = [
        {"ip": item["ip"], "count": item["count"], "first_seen": item["first_bucket"], "last_seen": item["last_bucket"]}
        for item in answer["items"]
    ]
    if filters.sort == "last_seen":
        rows.sort(key=lambda row: (row["last_seen"], row["count"]), reverse=True)
    return rows[: filters.limit], WINDOW_COLUMNS


def _fetch_totals(client: Client, filters: IpFilters) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"sort": filters.sort}
    for key in ("min_count", "agent", "cidr"):
        value = getattr(filters, key)
        if value is not None:
            params[key] = value
    rows: list[dict[str, Any]] = []
    while len(rows) < filters.limit:
        params["limit"] = min(MAX_PAGE, filters.limit - len(rows))
        page = client.get("/v1/ips", params)
        rows += page["items"]
        if not page.get("next_cursor"):
            break
        params["cursor"] = page["next_cursor"]
    return rows


def fetch_decisions(client: Client, *, include_ended: bool = False, limit: int = 100_000) -> list[dict[str, Any]]:
    """Active decisions (or all), oldest first, paging through `GET /v1/rules/decisions`."""
    params: dict[str, Any] = {"state": "all" if include_ended else "active", "limit": MAX_PAGE}
    rows: list[dict[str, Any]] = []
    while len(rows) < limit:
        page = client.get("/v1/rules/decisions", params)
        rows += page["items"]
        if not page.get("next_cursor"):
            break
        params["cursor"] = page["next_cursor"]
    return rows[:limit]


# -- rendering --------------------------------------------------------------------------------


def render(rows: Sequence[dict[str, Any]], columns: Sequence[str], fmt: str) -> str:
    """`table` (aligned columns for a terminal), `json` (one array) or `csv` (with a header)."""
    if fmt == "json":
        return json.dumps(list(rows), indent=2, sort_keys=True)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(column)) for column in columns])
        return out.getvalue().rstrip("\n")
    return table(rows, columns)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max([len(column), *(len(line[i]) for line in cells)]) for i, column in enumerate(columns)]
    numeric = [all(_is_number(row.get(column)) for row in rows) and rows for column in columns]

    def line(values: Iterable[str]) -> str:
        return "  ".join(
            value.rjust(width) if numeric[i] else value.ljust(width)
            for i, (value, width) in enumerate(zip(values, widths, strict=True))
        ).rstrip()

    return "\n".join([line(columns), line("-" * width for width in widths), *(line(row) for row in cells)])


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return json.dumps(value, sort_keys=True)
    # A terminal must not be steered by a log-derived string: control characters are shown escaped.
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in str(value))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


IP_COLUMNS = ("ip", "count", "first_seen", "last_seen", "agents")
WINDOW_COLUMNS = ("ip", "count", "first_seen", "last_seen")
DECISION_COLUMNS = ("id", "state", "type", "value", "scope", "scenario", "origin", "until", "reason")
