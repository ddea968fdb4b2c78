"""The few reads only the dashboard makes, in SQL shared by SQLite and PostgreSQL (mixed into
`SqlStorage` beside WindowsSql and DecisionsSql, whose tables they read)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from remote_uploader.collector.storage.base import to_micros
from remote_uploader.collector.storage.model import Decision, MinutePoint
from remote_uploader.collector.storage.sql_windows import in_window
from remote_uploader.protocol import ip_key


class DashboardSql:
    """Needs `_read`, `_sql`, `_levels` and `_select` from the classes it is mixed with."""

    if TYPE_CHECKING:

        def _read(self) -> Any: ...

        def _sql(self, sql: str) -> str: ...

        def _levels(self, since: datetime, until: datetime | None) -> list[tuple[str, int, list[Any]]]: ...

        def _select(self, cur: Any, where: str, params: Sequence[Any], tail: str = "") -> list[Decision]: ...

    def minute_series(self, since: datetime, until: datetime | None = None) -> list[MinutePoint]:
        """From the per-bucket totals kept at ingest (sql_windows.py, "Totals"): exact, and a few
        hundred rows read instead of every bucket row of the window."""
        points: list[MinutePoint] = []
        with self._read() as cur:
            for _, length, bounds in self._levels(since, until):
                sql = f"SELECT bucket, total, addresses FROM bucket_totals WHERE length = ? AND {in_window(bounds)}"
                cur.execute(self._sql(sql), [length, *bounds])
                points += [
                    MinutePoint(datetime.fromtimestamp(int(bucket), UTC), length, int(total), int(addresses))
                    for bucket, total, addresses in cur.fetchall()
                ]
        points.sort(key=lambda point: (point.start, -point.seconds))
        return points

    def ip_sources(self, ip: str, since: datetime) -> list[tuple[str, int]]:
        parts, params = [], []
        for table, _, bounds in self._levels(since, None):
            parts.append(f"SELECT source, total FROM {table} WHERE ipkey = ? AND bucket >= ?")
            params += [ip_key(ip), bounds[0]]
        sql = (
            "SELECT l.name, sum(c.total) FROM (" + " UNION ALL ".join(parts) + ") c "
            "JOIN labels l ON l.id = c.source GROUP BY l.name ORDER BY sum(c.total) DESC, l.name"
        )
        with self._read() as cur:
            cur.execute(self._sql(sql), params)
            return [(str(name), int(total)) for name, total in cur.fetchall()]

    def agent_sources(self, since: datetime) -> list[tuple[str, str, int]]:
        """From the per-(agent, source) totals kept at ingest (sql_windows.py, "Totals"): exact,
        and a few rows per bucket instead of every bucket row of the window."""
        parts, params = [], []
        for _, length, bounds in self._levels(since, None):
            parts.append("SELECT agent, source, total FROM source_totals WHERE length = ? AND bucket >= ?")
            params += [length, bounds[0]]
        sql = (
            "SELECT a.name, s.name, sum(c.total) FROM (" + " UNION ALL ".join(parts) + ") c "
            "JOIN labels a ON a.id = c.agent JOIN labels s ON s.id = c.source "
            "GROUP BY a.name, s.name ORDER BY a.name, sum(c.total) DESC, s.name"
        )
        with self._read() as cur:
            cur.execute(self._sql(sql), params)
            return [(str(agent), str(source), int(total)) for agent, source, total in cur.fetchall()]

    def active_by_rule(self, now: datetime) -> list[tuple[str, int]]:
        with self._read() as cur:
            cur.execute(
                self._sql(
                    "SELECT scenario, count(*) FROM decisions WHERE state = 'active' AND until > ? "
                    "GROUP BY scenario ORDER BY count(*) DESC, scenario"
                ),
                (to_micros(now),),
            )
            return [(str(name), int(n)) for name, n in cur.fetchall()]

    def count_active_decisions(self, now: datetime) -> int:
        with self._read() as cur:
            cur.execute(
                self._sql("SELECT count(*) FROM decisions WHERE state = 'active' AND until > ?"), (to_micros(now),)
            )
            return int(cur.fetchone()[0])

    def recent_ended_decisions(self, limit: int, scenario: str | None = None) -> list[Decision]:
        where = "state <> 'active'"
        params: list[Any] = [limit]
        if scenario is not None:
            where += " AND scenario = ?"
            params = [scenario, limit]
        with self._read() as cur:
            return self._select(cur, where, params, "ORDER BY id DESC LIMIT ?")
