"""PostgreSQL's settings of the window plans of sql_windows.py, and its one-statement trends
(mixed into `PostgresStorage` before `SqlStorage`).

The plans themselves (threshold search by tier, whole sum by time, newest first) are the same on
both backends (sql_windows.py, `_top`); PostgreSQL differs in what they cost: its heap keeps the
bucket rows in arrival order (by minute), not by address, so a key range costs scattered page
reads and the whole sum of a window by time is the cheaper plan up to more rows than on SQLite,
whose grouping in process costs more per row (docs/dashboard.md, "On PostgreSQL").

The page's trends (`window_series_by_ip`): one statement for the 50 addresses of a page instead
of 50 transactions of four statements each (about 150 ms of round trips on a loaded machine).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from remote_uploader.collector.storage.model import SeriesPoint
from remote_uploader.collector.storage.sql_windows import MAX_TOTAL
from remote_uploader.protocol import Network, ip_key


class PostgresWindows:
    """Needs `_read`, `_sql`, `_filters` and `_levels` from WindowsSql (after it in the MRO)."""

    # Every window of at most this many bucket rows (estimated from `bucket_totals`) may be added
    # up whole, whatever share of them its filters keep.
    time_first_rows: int = 250_000
    time_first_kept: int = 250_000
    # The threshold search's first block of candidates: small enough for PostgreSQL to keep the
    # ORDER BY ... LIMIT of `ips` in memory (a top-N heapsort within the default work_mem of 4 MB;
    # 32 times the limit spilled to disk and took twice as long).
    top_factor: int = 4
    # Memory for the time-first sum (this transaction only): about 220 bytes per address group, so
    # that `time_first_rows` rows aggregate in memory instead of in batches written to disk.
    time_first_memory: str | None = "64MB"
    least = "least"

    if TYPE_CHECKING:

        def _levels(self, since: Any, until: Any) -> list[tuple[str, int, list[Any]]]: ...

        def _read(self) -> Any: ...

        def _sql(self, sql: str) -> str: ...

        def _filters(self, cur: Any, agents: Sequence[str] | None, sources: Sequence[str] | None,
                     network: Network | None) -> tuple[str, list[Any]] | None: ...

    def window_series_by_ip(
        self,
        since: datetime,
        ips: Sequence[str],
        *,
        agents: tuple[str, ...] | None = None,
        sources: tuple[str, ...] | None = None,
    ) -> dict[str, list[SeriesPoint]]:
        """As `window_series(since, ip=ip, ...)` of each address (its points, its order), in one
        statement: every level's rows of the addresses' keys (`= ANY`, one array parameter)."""
        series: dict[str, list[SeriesPoint]] = {ip: [] for ip in ips}
        if not ips:
            return series
        by_key = {ip_key(ip): ip for ip in ips}
        with self._read() as cur:
            filters = self._filters(cur, agents, sources, None)
            if filters is None:
                return series
            conditions, params = filters
            parts, bound = [], []
            for table, length, bounds in self._levels(since, None):
                parts.append(f"SELECT ipkey, bucket, {length} AS length, total FROM {table} "
                             f"WHERE bucket >= ? AND ipkey = ANY(?){conditions}")
                bound += [*bounds, list(by_key), *params]
            cur.execute(self._sql("SELECT ipkey, bucket, length, sum(total) FROM (" + " UNION ALL ".join(parts)
                                  + ") w GROUP BY ipkey, bucket, length"), bound)
            for key, bucket, length, total in cur.fetchall():
                series[by_key[bytes(key)]].append(SeriesPoint(datetime.fromtimestamp(int(bucket), UTC), int(length),
                                                              min(int(total), MAX_TOTAL)))
        for points in series.values():
            points.sort(key=lambda p: (p.start, -p.seconds))
        return series
