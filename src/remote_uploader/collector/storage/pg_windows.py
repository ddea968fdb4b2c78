"""PostgreSQL's own paths to the first addresses of a window (mixed into `PostgresStorage` before
`SqlStorage`, so that its `_top` is found first; the threshold search of sql_windows.py stays the
fallback).

Why PostgreSQL needs them: the threshold search reads candidates by their bound in `ips` and
adds up each candidate's rows by a look-up of the buckets' key. Where the bound is weak (a short
window: an address's total is mostly older rows), it adds up tens of thousands of candidates;
SQLite does those look-ups in process, PostgreSQL pays a scattered heap read for each bucket row
(its heap is in arrival order, not the key's) and took 1.5-18 s on the 1M-address / 10M-row
store (docs/benchmarks.md). Migration 11 gives PostgreSQL an index of the buckets by time, so:

- **Time first, by count:** a window of few bucket rows (as `bucket_totals` tells, before any
  row is read) is added up whole from its rows, read by time, and cut in SQL: the plain sum,
  exact by construction.
- **Newest first, by last seen:** the addresses whose last bucket in the window is newest are
  those of the newest buckets. Reading the window's buckets from the newest down (by time),
  every address of a bucket at or after B has its last bucket at or after B, and every other
  address before B; once the addresses read so far that pass `min_count` are at least the
  limit, no other can rank among the first, and only those candidates are added up (over the
  whole window, by key). How far down to read is guessed from `bucket_totals` (distinct
  addresses per bucket), then doubled until enough candidates qualify; the guess costs time,
  never exactness.

Everything else (a long window by count) keeps the threshold search.

The page's trends (`window_series_by_ip`): one statement for the 50 addresses of a page instead
of 50 transactions of four statements each (about 150 ms of round trips on a loaded machine).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from remote_uploader.collector.storage.model import SeriesPoint, WindowCount, WindowQuery
from remote_uploader.collector.storage.sql_windows import (
    KEYS_PER_QUERY,
    MAX_TOTAL,
    Sums,
    _by_last_seen,
    _row,
)
from remote_uploader.protocol import Network, ip_key


class PostgresWindows:
    """Needs `_read`, `_sql`, `_filters`, `_sums`, `_levels`, `_lowest_bucket` and `_length` from
    WindowsSql (after it in the MRO), whose `_top` is the fallback."""

    # A window of at most this many bucket rows (estimated from `bucket_totals`) is added up
    # whole, time first; tests set 0 (never) or a huge number (always) to check both paths.
    time_first_rows: int = 250_000
    # Such a window of more rows tries the threshold search first, given a sixteenth of its rows'
    # worth of candidates (about what adding up the whole window costs, measured per row, on a
    # store whose most counted addresses stand out): the search settles an hour of 200,000 rows
    # with a few hundred, by tier (`ips_tier`, migration 12); where the totals are flat, it gives
    # up and the window is added up whole. Not with a source filter: an address's total over every
    # source is a weak bound of one source's count (the search would spend its budget in vain).
    # Tests set a huge number (never) or 0 (always).
    search_first_rows: int = 100_000
    # The threshold search's first block of candidates: small enough for PostgreSQL to keep the
    # ORDER BY ... LIMIT of `ips` in memory (a top-N heapsort within the default work_mem of 4 MB;
    # 32 times the limit spilled to disk and took twice as long).
    top_factor: int = 4
    # Memory for the time-first sum (this transaction only): about 220 bytes per address group, so
    # that `time_first_rows` rows aggregate in memory instead of in batches written to disk.
    time_first_memory = "64MB"

    if TYPE_CHECKING:

        def _threshold(self, cur: Any, query: WindowQuery, filters: tuple[str, list[Any]],
                       budget: int | None = None) -> list[Sums] | None: ...

        def _sums(self, cur: Any, query: WindowQuery, filters: tuple[str, list[Any]], keys: list[bytes] | None,
                  limit: int | None, tables: Collection[str] | None = None, by_time: bool = False) -> list[Sums]: ...

        def _levels(self, since: Any, until: Any) -> list[tuple[str, int, list[Any]]]: ...

        def _lowest_bucket(self, cur: Any, since: Any, until: Any) -> tuple[int, set[str]]: ...

        def _length(self, table: str) -> int: ...

        def _sql(self, sql: str) -> str: ...

        def _read(self) -> Any: ...

        def _filters(self, cur: Any, agents: Sequence[str] | None, sources: Sequence[str] | None,
                     network: Network | None) -> tuple[str, list[Any]] | None: ...

    def _top(self, cur: Any, query: WindowQuery, filters: tuple[str, list[Any]]) -> list[WindowCount]:
        assert query.limit is not None
        _, tables = self._lowest_bucket(cur, query.since, query.until)
        levels = [(table, bounds) for table, _, bounds in self._levels(query.since, query.until) if table in tables]
        if query.order == "last_seen":
            return self._newest_first(cur, query, filters, levels)
        rows = self._window_rows(cur, levels)
        if rows <= self.time_first_rows:
            if rows > self.search_first_rows and query.sources is None:
                found = self._threshold(cur, query, filters, budget=rows // 16)
                if found is not None:
                    return [_row(sums) for sums in found]
            return self._time_first(cur, query, filters, levels)
        top: list[WindowCount] = super()._top(cur, query, filters)  # type: ignore[misc]
        return top

    def _window_rows(self, cur: Any, levels: list[tuple[str, list[Any]]]) -> int:
        """About how many bucket rows the window holds: per bucket, its distinct addresses (an
        address seen there by several agents or sources has a row for each: more, never fewer)."""
        rows = 0
        for table, bounds in levels:
            sql = "SELECT coalesce(sum(addresses), 0) FROM bucket_totals WHERE length = ? AND bucket >= ?"
            if len(bounds) > 1:
                sql += " AND bucket <= ?"
            cur.execute(self._sql(sql), [self._length(table), *bounds])
            rows += int(cur.fetchone()[0])
        return rows

    def _union(self, levels: list[tuple[str, list[Any]]], filters: tuple[str, list[Any]],
               low: int | None = None, high: int | None = None) -> tuple[str, list[Any]]:
        """The window's bucket rows (ipkey, bucket, total) of every level, those starting in
        [low, high) only if given (buckets of any level compared by their start)."""
        conditions, params = filters
        parts, bound = [], []
        for table, bounds in levels:
            sql = f"SELECT ipkey, bucket, total FROM {table} WHERE bucket >= ?"
            if len(bounds) > 1:
                sql += " AND bucket <= ?"
            if low is not None:
                sql += " AND bucket >= ?"
            if high is not None:
                sql += " AND bucket < ?"
            parts.append(sql + conditions)
            bound += [*bounds, *([low] if low is not None else []), *([high] if high is not None else []), *params]
        return " UNION ALL ".join(parts), bound

    def _time_first(self, cur: Any, query: WindowQuery, filters: tuple[str, list[Any]],
                    levels: list[tuple[str, list[Any]]]) -> list[WindowCount]:
        """The plain sum of the window, ordered and cut in SQL as `_by_count` orders (the count as
        stored, saturated; then the key's length, then the key: bytea alone orders an IPv6 key
        starting 00 before every IPv4 key)."""
        rows, bound = self._union(levels, filters)
        cur.execute(f"SET LOCAL work_mem = '{self.time_first_memory}'")
        count = f"least(sum(total), {MAX_TOTAL})"
        cur.execute(
            self._sql(f"SELECT ipkey, {count}, min(bucket), max(bucket) FROM ({rows}) w GROUP BY ipkey "
                      f"HAVING sum(total) >= ? ORDER BY {count} DESC, length(ipkey), ipkey LIMIT ?"),
            [*bound, query.min_count, query.limit],
        )
        return [_row((bytes(key), int(total), int(first), int(last))) for key, total, first, last in cur.fetchall()]

    def _newest_first(self, cur: Any, query: WindowQuery, filters: tuple[str, list[Any]],
                      levels: list[tuple[str, list[Any]]]) -> list[WindowCount]:
        """See the module's docstring: candidates from the newest buckets down, until enough of
        them pass `min_count`; then only they are ranked."""
        assert query.limit is not None
        limit = query.limit
        # Every bucket start of the window with its distinct addresses, newest first.
        starts: dict[int, int] = {}
        for table, bounds in levels:
            sql = "SELECT bucket, addresses FROM bucket_totals WHERE length = ? AND bucket >= ?"
            if len(bounds) > 1:
                sql += " AND bucket <= ?"
            cur.execute(self._sql(sql), [self._length(table), *bounds])
            for bucket, addresses in cur.fetchall():
                starts[int(bucket)] = starts.get(int(bucket), 0) + int(addresses)
        newest = sorted(starts, reverse=True)
        checked: set[bytes] = set()
        qualified: list[Sums] = []
        high: int | None = None  # buckets starting at or after `high` are read already
        wanted, taken = limit, 0
        while True:
            # Down to the bucket where the addresses of the buckets taken reach `wanted` (None:
            # down to the window's start, whatever the totals say).
            seen = 0
            while taken < len(newest) and seen < wanted:
                seen += starts[newest[taken]]
                taken += 1
            low = newest[taken - 1] if taken < len(newest) else None
            rows, bound = self._union(levels, filters, low, high)
            cur.execute(self._sql(f"SELECT DISTINCT ipkey FROM ({rows}) w"), bound)
            keys = sorted(key for key in (bytes(k) for (k,) in cur.fetchall()) if key not in checked)
            checked.update(keys)
            for i in range(0, len(keys), KEYS_PER_QUERY):
                # Over the whole window; `_sums` keeps those at or above `min_count` only.
                qualified += self._sums(cur, query, filters, keys[i : i + KEYS_PER_QUERY], None,
                                        [table for table, _ in levels])
            if len(qualified) >= limit or low is None:
                return [_row(found) for found in sorted(qualified, key=_by_last_seen)[:limit]]
            high, wanted = low, wanted * 2

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
