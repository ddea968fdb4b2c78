"""Time buckets in SQL, shared by SQLite and PostgreSQL (mixed into `SqlStorage`).

Three tables of one shape: `counts` (the bucket level), `counts_hour`, `counts_day`. Rows move
down a level by `rollup` (added to the coarser row and deleted in one transaction), so an
occurrence is in exactly one table and a window is the sum of the three.

Totals: `bucket_totals` holds, per level and bucket, the sum of the bucket's rows and the number
of distinct addresses among them (what the overview's chart shows), exact, written in the same
transaction as the rows: whoever adds rows to a level adds their sum, and counts as new addresses
the (address, bucket) pairs the level did not hold yet (a look-up of the table's key prefix,
made before the rows go in); a fold deletes the source level's totals of what it moved; expiry
deletes the day totals it drops. Reading them costs a few hundred rows instead of a scan of the
buckets (docs/dashboard.md, "On a big store"). `source_totals` holds, the same way, the sum of
each level's bucket rows per (bucket, agent, source), for the agents page: added with the rows,
moved with them by a fold, dropped with them by expiry.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from remote_uploader.collector.storage.model import (
    RollupResult,
    SeriesPoint,
    WindowCount,
    WindowQuery,
)
from remote_uploader.protocol import Network, ip_key

MAX_TOTAL = 2**63 - 1
KEYS_PER_QUERY = 2000  # addresses bound per query: under every backend's parameter limit
HOUR = 3600
SMALL_NETWORK = 4096  # addresses: a window limited to a network this small is added up whole
DAY = 86400
TIER_FLOOR = 3  # `ips_tier` (migration 12) holds the addresses whose total has at least this many digits


def in_window(bounds: Sequence[Any]) -> str:
    """The condition on `bucket` for a level's bounds (`_levels`: the lowest start, and the
    highest when the window has an end), for the parameters `*bounds`."""
    return "bucket >= ? AND bucket <= ?" if len(bounds) > 1 else "bucket >= ?"


def _seconds(moment: datetime) -> int:
    return int(moment.timestamp() // 1)


def _moment(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def ip_text(key: bytes) -> str:
    """The canonical text of a packed address."""
    import ipaddress

    if len(key) == 4:
        return str(ipaddress.IPv4Address(key))
    return str(ipaddress.IPv6Address(key))


class WindowsSql:
    """Needs `_read`, `_write`, `_sql` and `bucket_seconds` from the class it is mixed into."""

    bucket_seconds: int = 60
    # Candidates read at first by `_top`: this many times its limit, at least `top_block` (tests set less).
    top_factor: int = 32
    top_block: int = 4096
    # An agent's first addresses by count are searched among every address by tier (`_candidates`)
    # when the agent stored at least this share of the records (tests set 0 or 2 to force a route).
    tier_share: float = 1 / 64
    # A tier of more addresses than this is not read whole (one look-up of `ips` each, and a sort
    # in Python): from it down, `ips` is read in blocks sorted by the database, as without tiers.
    tier_rows: int = 65_536
    # The plans by time (`_top`), on every level's index of the buckets by time (SQLite's
    # migrations 10 and 13, PostgreSQL's 11): by count, a window of at most `time_first_rows`
    # bucket rows of which about `time_first_kept` pass its agent and source filters (estimates
    # from the totals) is added up whole; one of more than `search_first_rows` tries the
    # threshold search first, with a budget. By last seen, newest first. Tests turn `by_time`
    # off, or set the others, to run one plan or another.
    by_time: bool = True
    time_first_rows: int = 300_000
    time_first_kept: int = 80_000
    search_first_rows: int = 100_000
    # SQLite names the index of each level a read by time goes through (its planner may prefer
    # the key, whose first column is the address); PostgreSQL's planner picks its own.
    time_indexes: ClassVar[Mapping[str, str]] = {}
    # The time-first sum's working memory (PostgreSQL: `SET LOCAL work_mem`; None: as it is).
    time_first_memory: str | None = None
    least = "min"  # the dialect's two-argument minimum (PostgreSQL: least)

    if TYPE_CHECKING:

        def _read(self) -> Any: ...

        def _write(self) -> Any: ...

        def _sql(self, sql: str) -> str: ...

    # -- filters ------------------------------------------------------------------------------

    def _label_ids(self, cur: Any, kind: str, names: Sequence[str], patterns: bool) -> list[int]:
        cur.execute(self._sql("SELECT id, name FROM labels WHERE kind = ?"), (kind,))
        rows = cur.fetchall()
        if patterns:
            return [int(i) for i, name in rows if any(fnmatch.fnmatchcase(name, p) for p in names)]
        wanted = set(names)
        return [int(i) for i, name in rows if name in wanted]

    def _filters(
        self,
        cur: Any,
        agents: Sequence[str] | None,
        sources: Sequence[str] | None,
        network: Network | None,
    ) -> tuple[str, list[Any]] | None:
        """SQL conditions and parameters; None when the filters cannot match anything."""
        where: list[str] = []
        params: list[Any] = []
        if agents is not None:
            ids = self._label_ids(cur, "agent", agents, patterns=False)
            if not ids:
                return None
            where.append(f"agent IN ({','.join('?' * len(ids))})")
            params += ids
        if sources is not None:
            ids = self._label_ids(cur, "source", sources, patterns=True)
            if not ids:
                return None
            where.append(f"source IN ({','.join('?' * len(ids))})")
            params += ids
        if network is not None:
            where.append("ipkey BETWEEN ? AND ? AND length(ipkey) = ?")
            params += [
                network.network_address.packed,
                network.broadcast_address.packed,
                4 if network.version == 4 else 16,
            ]
        return "".join(f" AND {w}" for w in where), params

    def _length(self, table: str) -> int:
        return {"counts": self.bucket_seconds, "counts_hour": HOUR, "counts_day": DAY}[table]

    def _levels(self, since: datetime, until: datetime | None) -> list[tuple[str, int, list[Any]]]:
        """(table, bucket length, [lowest start, (highest start)]) for the buckets overlapping the window."""
        out = []
        start = _seconds(since)
        for table, length in (("counts", self.bucket_seconds), ("counts_hour", HOUR), ("counts_day", DAY)):
            bounds: list[Any] = [start - length + 1]
            out.append((table, length, bounds))
            if until is not None:
                bounds.append(_seconds(until))
        return out

    # -- reads --------------------------------------------------------------------------------

    def window_counts(self, query: WindowQuery) -> list[WindowCount]:
        with self._read() as cur:
            filters = self._filters(cur, query.agents, query.sources, query.network)
            if filters is None:
                return []
            # A small network is one short range of the buckets' key: its rows are fewer than `ips`.
            small = query.network is not None and query.network.num_addresses <= SMALL_NETWORK
            if query.ips is None and query.limit is not None and not small:
                return self._top(cur, query, filters)
            keys = None if query.ips is None else sorted({ip_key(ip) for ip in query.ips})
            found = self._counts(cur, query, filters, keys, query.limit if query.order == "count" else None)
        if query.limit is not None:
            by = _by_last_seen if query.order == "last_seen" else _by_count
            return sorted(found, key=lambda row: by(_sums(row)))[: query.limit]
        found.sort(key=lambda row: (len(row.key), row.key))
        return found

    def _counts(self, cur: Any, query: WindowQuery, filters: tuple[str, list[Any]], keys: list[bytes] | None,
                limit: int | None) -> list[WindowCount]:
        """The window's counts of `keys` (None: of every address), `limit` most counted (None: all)."""
        return [_row(sums) for sums in self._sums(cur, query, filters, keys, limit)]

    def _sums(self, cur: Any, query: WindowQuery, filters: tuple[str, list[Any]], keys: list[bytes] | None,
              limit: int | None, tables: Collection[str] | None = None) -> list[Sums]:
        """(key, count, first bucket, last bucket) of `_counts`, from the levels in `tables` only
        (None: all; those the caller knows hold no row of the window need not be read)."""
        conditions, params = filters
        key_sets: list[list[bytes] | None] = [None]
        if keys is not None:
            key_sets = [keys[i : i + KEYS_PER_QUERY] for i in range(0, len(keys), KEYS_PER_QUERY)]
        found: list[Sums] = []
        for chunk in key_sets:
            parts = []
            bound: list[Any] = []
            for table, _, bounds in self._levels(query.since, query.until):
                if tables is not None and table not in tables:
                    continue
                sql = f"SELECT ipkey, bucket, total FROM {table} WHERE {in_window(bounds)}"
                sql += conditions
                bound += bounds + params
                if chunk is not None:
                    sql += f" AND ipkey IN ({','.join('?' * len(chunk))})"
                    bound += chunk
                parts.append(sql)
            sql = (
                "SELECT ipkey, sum(total), min(bucket), max(bucket) FROM ("
                + " UNION ALL ".join(parts)
                + ") w GROUP BY ipkey HAVING sum(total) >= ?"
            )
            bound.append(query.min_count)
            if limit is not None:
                sql += " ORDER BY sum(total) DESC, length(ipkey), ipkey LIMIT ?"  # as `_by_count`
                bound.append(limit)
            cur.execute(self._sql(sql), bound)
            found += [(bytes(key), min(int(total), MAX_TOTAL), int(first), int(last))
                      for key, total, first, last in cur.fetchall()]
        return found

    def _top(self, cur: Any, query: WindowQuery, filters: tuple[str, list[Any]]) -> list[WindowCount]:
        """The `limit` first addresses of the window (most counted, or newest last bucket), exact:
        every plan for them is chosen here. By last seen, the window's buckets newest first
        (`_newest_first`); by count, the window added up whole where its rows are few
        (`_by_time`); otherwise, or with `by_time` off, the threshold search (`_threshold`)."""
        assert query.limit is not None
        levels = self._window_levels(cur, query.since, query.until)
        found: list[Sums] | None = None
        if self.by_time:
            if query.order == "last_seen":
                found = self._newest_first(cur, query, filters, levels)
            else:
                found = self._by_time(cur, query, filters, levels)
        if found is None:
            found = self._threshold(cur, query, filters, levels)
        assert found is not None  # no budget: the search always settles
        return [_row(sums) for sums in found]

    def _threshold(self, cur: Any, query: WindowQuery, filters: tuple[str, list[Any]],
                   levels: list[tuple[str, list[Any]]], budget: int | None = None) -> list[Sums] | None:
        """The window's first addresses without adding up every bucket row of it, or None once
        more than `budget` candidates were added up without settling it (None: no budget).

        Every bucket row of an address is bounded by its row in `ips` (or, per agent, in
        `ip_agents`), written from the same records in the same transaction (storage/sqlite.py,
        postgres.py `store_batch`): its bucket starts at or before the address's `last_seen`, and
        the address's `total` is at least the sum of its bucket rows (rows only ever move to a
        coarser level or expire; `ips` rows are never deleted). So only addresses last seen at or
        after the window's lowest bucket start can have a count in it, and none can count more
        than its total. The candidates come in the order of that bound (`_candidates`), and their
        exact counts are added up from their rows (one range of the buckets' key each) a part at
        a time (`limit` candidates, then twice as many each time); the search stops when the
        `limit`-th best so far is strictly ahead of the next candidate's bound, which no later
        candidate can then beat."""
        assert query.limit is not None
        limit = query.limit
        by = _by_last_seen if query.order == "last_seen" else _by_count
        tables = [table for table, _ in levels]
        lowest = min(int(bounds[0]) for _, bounds in levels)
        candidates = self._candidates(cur, query, lowest)
        best: list[Sums] = []
        chunk, summed = max(limit, 1), 0
        following = next(candidates, None)
        while following is not None:
            if budget is not None and summed >= budget:
                return None
            part = [following, *islice(candidates, chunk - 1)]
            following = next(candidates, None)
            summed += len(part)
            keys = sorted(bytes(key) for _, key, _ in part)
            best = sorted(best + self._sums(cur, query, filters, keys, None, tables), key=by)[:limit]
            chunk *= 2
            # `following`'s bound: its total, or its last seen (µs).
            if following is not None and len(best) == limit and _ahead(best[-1], query.order, int(following[2])):
                break
        return best

    def _candidates(self, cur: Any, query: WindowQuery, lowest: int) -> Iterator[tuple[str, bytes, int]]:
        """(ip, key, bound) of every address that can have a count in the window, by bound
        (highest first, then by text): by count, the addresses counted at least a hundred times from
        `ips_tier` (migration 12), a number of digits at a time, then the rest from `ips` in
        blocks; by last seen, `ips` in blocks. An agent's first addresses by count take that
        route too (the address's total bounds the agent's count) when the agent stored at least
        `tier_share` of the records, so that one in a few candidates at most is another agent's;
        otherwise the agent's own rows in blocks, bounded by the agent's totals."""
        column = "last_seen" if query.order == "last_seen" else "total"
        where = "c.last_seen >= ? AND c.total >= ?"
        params: list[Any] = [lowest * 1_000_000, query.min_count]
        if query.network is not None:
            network = query.network
            where += " AND c.family = ? AND c.ipkey BETWEEN ? AND ?"
            params += [network.version, network.network_address.packed, network.broadcast_address.packed]
        by_tier = column == "total" and (query.agents is None or self._share(cur, query.agents) >= self.tier_share)
        if not by_tier:
            source, head = ("ips", []) if query.agents is None else _agent_totals(query.agents)
            yield from self._blocks(cur, source, where, [*head, *params], column, query.limit or 1)
            return
        if query.agents is not None:
            marks = ",".join("?" * len(query.agents))
            where += (f" AND (c.agent IN ({marks}) OR EXISTS (SELECT 1 FROM ip_agents a "
                      f"WHERE a.ip = c.ip AND a.agent IN ({marks})))")
            params += [*query.agents, *query.agents]
        cur.execute(self._sql(f"SELECT max(tier) FROM ips WHERE tier >= {TIER_FLOOR}"))
        tier = int(cur.fetchone()[0] or 0)
        while tier >= TIER_FLOOR and self._tier_size(cur, tier) <= self.tier_rows:
            cur.execute(self._sql(f"SELECT c.ip, c.ipkey, c.total FROM ips c WHERE c.tier >= {TIER_FLOOR} "
                                  f"AND c.tier = ? AND {where}"), [tier, *params])
            yield from sorted(((str(ip), bytes(key), int(total)) for ip, key, total in cur.fetchall()),
                              key=lambda row: (-row[2], row[0]))
            tier -= 1
        # The rest (below the index, or from a tier too big to read whole) sorted by the database.
        below = 10 ** max(tier, TIER_FLOOR - 1)
        yield from self._blocks(cur, "ips", f"{where} AND c.total < {below}", params, "total", query.limit or 1)

    def _tier_size(self, cur: Any, tier: int) -> int:
        """How many addresses `tier` holds, counted up to `tier_rows` + 1 (the index alone)."""
        cur.execute(self._sql(f"SELECT count(*) FROM (SELECT 1 FROM ips WHERE tier >= {TIER_FLOOR} "
                              f"AND tier = ? LIMIT {self.tier_rows + 1}) t"), [tier])
        return int(cur.fetchone()[0])

    def _blocks(self, cur: Any, source: str, where: str, params: list[Any], column: str,
                limit: int) -> Iterator[tuple[str, bytes, int]]:
        """The rows of `source` that pass `where` by `column` (highest first, then by text), read
        in blocks: the first `top_factor` times the limit, each next one 4 times the one before,
        so that an unlucky store costs a few reads more than one, never an unbounded number."""
        block = max(self.top_factor * limit, self.top_block)
        after: list[Any] = []
        while True:
            sql = f"SELECT c.ip, c.ipkey, c.{column} FROM {source} c WHERE {where}"
            if after:
                sql += f" AND (c.{column} < ? OR (c.{column} = ? AND c.ip > ?))"
            cur.execute(self._sql(sql + f" ORDER BY c.{column} DESC, c.ip LIMIT ?"), [*params, *after, block])
            rows = [(str(ip), bytes(key), int(bound)) for ip, key, bound in cur.fetchall()]
            yield from rows
            if len(rows) < block:
                return
            after = [rows[-1][2], rows[-1][2], rows[-1][0]]
            block *= 4

    def _share(self, cur: Any, agents: Sequence[str]) -> float:
        """The share of every record stored that `agents` sent (the agents' own counters)."""
        marks = ",".join("?" * len(agents))
        cur.execute(self._sql(f"SELECT sum(CASE WHEN name IN ({marks}) THEN records ELSE 0 END), "
                              "sum(records) FROM agents"), list(agents))
        mine, every = cur.fetchone()
        return int(mine or 0) / max(int(every or 0), 1)

    # -- plans by time ---------------------------------------------------------------------------
    #
    # Why: the threshold search's bound (an address's total over every source and all time) is
    # weak for a short window or one source's, where it adds up most addresses last seen in the
    # window one key range at a time; the rows of a short window are few, and an index of the
    # buckets by time holds them in one range per level (and, on PostgreSQL, whose heap keeps
    # bucket rows in arrival order, each key range is a few scattered page reads: 1.5-18 s on the
    # 1M-address store before; docs/benchmarks.md).

    def _by_time(self, cur: Any, query: WindowQuery, filters: tuple[str, list[Any]],
                 levels: list[tuple[str, list[Any]]]) -> list[Sums] | None:
        """By count: the window added up whole (`_time_first`) when it holds at most
        `time_first_rows` bucket rows of which about `time_first_kept` pass its filters; a window
        of more than `search_first_rows` without a source filter tries the threshold search
        first, given a sixteenth of its rows' worth of candidates (about what adding it up whole
        costs, per row, on a store whose most counted addresses stand out: an hour of 200,000
        rows settles with a few hundred, by tier); where it gives up, the whole sum. None: a
        window too big for the whole sum (the threshold search then, unbounded). Not with a source
        filter: a total over every source is a weak bound of one source's count."""
        rows, occurrences = self._window_totals(cur, levels)
        if rows > self.time_first_rows or self._kept(cur, query, levels, rows, occurrences) > self.time_first_kept:
            return None
        if rows > self.search_first_rows and query.sources is None:
            found = self._threshold(cur, query, filters, levels, budget=rows // 16)
            if found is not None:
                return found
        return self._time_first(cur, query, filters, levels)

    def _window_totals(self, cur: Any, levels: list[tuple[str, list[Any]]]) -> tuple[int, int]:
        """About how many bucket rows the window holds, and its occurrences (`bucket_totals`): per
        bucket, its distinct addresses (an address seen there by several agents or sources has a
        row for each: more rows, never fewer) and the sum of its rows."""
        rows = occurrences = 0
        for table, bounds in levels:
            sql = ("SELECT coalesce(sum(addresses), 0), coalesce(sum(total), 0) FROM bucket_totals "
                   f"WHERE length = ? AND {in_window(bounds)}")
            cur.execute(self._sql(sql), [self._length(table), *bounds])
            found = cur.fetchone()
            rows, occurrences = rows + int(found[0]), occurrences + int(found[1])
        return rows, occurrences

    def _kept(self, cur: Any, query: WindowQuery, levels: list[tuple[str, list[Any]]], rows: int,
              occurrences: int) -> int:
        """About how many of the window's `rows` pass its agent and source filters: their share
        of the window's `occurrences` (`source_totals` against `bucket_totals`)."""
        if not rows or (query.agents is None and query.sources is None):
            return rows
        # `_filters` matched these labels already; only the agent and source conditions here.
        labels = self._filters(cur, query.agents, query.sources, None)
        assert labels is not None
        mine = 0
        for table, bounds in levels:
            cur.execute(self._sql(f"SELECT sum(total) FROM source_totals WHERE length = ? AND {in_window(bounds)}"
                                  + labels[0]), [self._length(table), *bounds, *labels[1]])
            mine += int(cur.fetchone()[0] or 0)
        return rows * mine // max(occurrences, 1)

    def _union(self, levels: list[tuple[str, list[Any]]], filters: tuple[str, list[Any]],
               low: int | None = None, high: int | None = None) -> tuple[str, list[Any]]:
        """The window's bucket rows (ipkey, bucket, total) of every level, read by time, those
        starting in [low, high) only if given (buckets of any level compared by their start)."""
        conditions, params = filters
        parts, bound = [], []
        for table, bounds in levels:
            via = f"{table} INDEXED BY {self.time_indexes[table]}" if table in self.time_indexes else table
            # One bound on each side, the narrower: SQLite ranges the index by one of two lower
            # bounds only (the window's start: a day of rows read for its newest minute).
            start = bounds[0] if low is None else max(bounds[0], low)
            sql = f"SELECT ipkey, bucket, total FROM {via} WHERE bucket >= ?"
            bound.append(start)
            if high is not None and (len(bounds) == 1 or high <= bounds[1]):
                sql += " AND bucket < ?"
                bound.append(high)
            elif len(bounds) > 1:
                sql += " AND bucket <= ?"
                bound.append(bounds[1])
            parts.append(sql + conditions)
            bound += params
        return " UNION ALL ".join(parts), bound

    def _time_first(self, cur: Any, query: WindowQuery, filters: tuple[str, list[Any]],
                    levels: list[tuple[str, list[Any]]]) -> list[Sums]:
        """The plain sum of the window, ordered and cut in SQL as `_by_count` orders (the count as
        stored, saturated; then the key's length, then the key: a key alone orders an IPv6 key
        starting 00 before every IPv4 key)."""
        rows, bound = self._union(levels, filters)
        if self.time_first_memory is not None:
            cur.execute(f"SET LOCAL work_mem = '{self.time_first_memory}'")
        count = f"{self.least}(sum(total), {MAX_TOTAL})"
        cur.execute(
            self._sql(f"SELECT ipkey, {count}, min(bucket), max(bucket) FROM ({rows}) w GROUP BY ipkey "
                      f"HAVING sum(total) >= ? ORDER BY {count} DESC, length(ipkey), ipkey LIMIT ?"),
            [*bound, query.min_count, query.limit],
        )
        return [(bytes(key), int(total), int(first), int(last)) for key, total, first, last in cur.fetchall()]

    def _newest_first(self, cur: Any, query: WindowQuery, filters: tuple[str, list[Any]],
                      levels: list[tuple[str, list[Any]]]) -> list[Sums]:
        """By last seen: the addresses whose last bucket in the window is newest are those of the
        window's newest buckets. Reading the buckets from the newest down (by time), every address
        of a bucket at or after B has its last bucket at or after B, and every other address
        before B; once the addresses read so far that pass `min_count` are at least the limit, no
        other can rank among the first, and only those candidates are added up (over the whole
        window, by key). How far down to read is guessed from `bucket_totals` (distinct addresses
        per bucket), then doubled until enough candidates qualify; the guess costs time, never
        exactness."""
        assert query.limit is not None
        limit = query.limit
        # Every bucket start of the window with its distinct addresses, newest first.
        starts: dict[int, int] = {}
        for table, bounds in levels:
            sql = f"SELECT bucket, addresses FROM bucket_totals WHERE length = ? AND {in_window(bounds)}"
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
                return sorted(qualified, key=_by_last_seen)[:limit]
            high, wanted = low, wanted * 2

    def _window_levels(self, cur: Any, since: datetime, until: datetime | None) -> list[tuple[str, list[Any]]]:
        """(table, bounds) of the levels that can hold a row of the window: the bucket level, and
        each coarser level with a row in the window (as `bucket_totals`, kept exact with the rows,
        tells). The lowest bucket start a row of the window can have is the lowest of their lower
        bounds."""
        (table, _, bounds), *coarser = self._levels(since, until)
        levels = [(table, bounds)]
        for table, _, bounds in coarser:
            sql = f"SELECT 1 FROM bucket_totals WHERE length = ? AND {in_window(bounds)}"
            cur.execute(self._sql(sql + " LIMIT 1"), [self._length(table), *bounds])
            if cur.fetchone() is not None:
                levels.append((table, bounds))
        return levels

    def window_series(
        self,
        since: datetime,
        until: datetime | None = None,
        *,
        ip: str | None = None,
        network: Network | None = None,
        agents: tuple[str, ...] | None = None,
        sources: tuple[str, ...] | None = None,
    ) -> list[SeriesPoint]:
        with self._read() as cur:
            filters = self._filters(cur, agents, sources, network)
            if filters is None:
                return []
            conditions, params = filters
            if ip is not None:
                conditions += " AND ipkey = ?"
                params = [*params, ip_key(ip)]
            points: list[SeriesPoint] = []
            for table, length, bounds in self._levels(since, until):
                sql = f"SELECT bucket, sum(total) FROM {table} WHERE {in_window(bounds)}"
                cur.execute(self._sql(sql + conditions + " GROUP BY bucket"), [*bounds, *params])
                points += [SeriesPoint(_moment(b), length, min(int(t), MAX_TOTAL)) for b, t in cur.fetchall()]
        points.sort(key=lambda p: (p.start, -p.seconds))
        return points

    def list_labels(self, kind: Literal["agent", "source"]) -> list[str]:
        with self._read() as cur:
            cur.execute(self._sql("SELECT name FROM labels WHERE kind = ? ORDER BY name"), (kind,))
            return [str(name) for (name,) in cur.fetchall()]

    # -- roll-up and expiry -------------------------------------------------------------------

    def rollup(
        self, now: datetime, bucket_retention: timedelta, hour_retention: timedelta, day_retention: timedelta
    ) -> RollupResult:
        def floor(moment: datetime, unit: int) -> int:
            seconds = _seconds(moment)
            return seconds - seconds % unit

        to_hour = self._fold("counts", "counts_hour", HOUR, floor(now - bucket_retention, HOUR))
        to_day = self._fold("counts_hour", "counts_day", DAY, floor(now - hour_retention, DAY))
        with self._write() as cur:
            cur.execute(self._sql("DELETE FROM counts_day WHERE bucket < ?"), (floor(now - day_retention, DAY),))
            dropped = cur.rowcount
            for totals in ("bucket_totals", "source_totals"):
                cur.execute(self._sql(f"DELETE FROM {totals} WHERE length = ? AND bucket < ?"),
                            (DAY, floor(now - day_retention, DAY)))
        return RollupResult(to_hour, to_day, dropped)

    def _fold(self, source: str, target: str, unit: int, before: int) -> int:
        """Add the rows of `source` that start before `before` into `target` rows of `unit`
        seconds, and delete them, in one transaction: if it dies half-way, nothing moved.

        SQLite runs this whole transaction alone (one writer), so the rows summed are the rows
        deleted. PostgreSQL overrides it with one DELETE ... RETURNING statement for that."""
        with self._write() as cur:
            cur.execute(self._sql(fold_totals(source, target, unit, MAX_TOTAL, "?")), (before,))
            cur.execute(self._sql("DELETE FROM bucket_totals WHERE length = ? AND bucket < ?"),
                        (self._length(source), before))
            # One writer: the finer level's per-(agent, source) totals below `before` are exactly
            # those of the rows moved below.
            cur.execute(
                self._sql(
                    "INSERT INTO source_totals (length, bucket, agent, source, total) "
                    f"SELECT {unit}, (bucket / {unit}) * {unit}, agent, source, "
                    f"CASE WHEN sum(total) > {MAX_TOTAL} THEN {MAX_TOTAL} ELSE sum(total) END "
                    "FROM source_totals WHERE length = ? AND bucket < ? GROUP BY 2, 3, 4 "
                    "ON CONFLICT (length, bucket, agent, source) DO UPDATE SET total = "
                    + saturating_add("source_totals")
                ),
                (self._length(source), before),
            )
            cur.execute(self._sql("DELETE FROM source_totals WHERE length = ? AND bucket < ?"),
                        (self._length(source), before))
            cur.execute(
                self._sql(
                    f"INSERT INTO {target} (ipkey, bucket, agent, source, total) "
                    f"SELECT ipkey, (bucket / {unit}) * {unit}, agent, source, "
                    f"CASE WHEN sum(total) > {MAX_TOTAL} THEN {MAX_TOTAL} ELSE sum(total) END "
                    f"FROM {source} WHERE bucket < ? GROUP BY ipkey, (bucket / {unit}) * {unit}, agent, source "
                    f"ORDER BY 1, 2, 3, 4 ON CONFLICT (ipkey, bucket, agent, source) DO UPDATE SET total = "
                    + saturating_add(target)
                ),
                (before,),
            )
            cur.execute(self._sql(f"DELETE FROM {source} WHERE bucket < ?"), (before,))
            return int(cur.rowcount)


Sums = tuple[bytes, int, int, int]  # key, count, first bucket, last bucket (seconds)


def _agent_totals(agents: Sequence[str]) -> tuple[str, list[Any]]:
    """The agents' own totals of each address they counted, as a table like `ips` (and its
    parameters). An address counted by one agent only has its totals in `ips` (`ips.agent`,
    migration 9) and no `ip_agents` row; once a second agent counts it, `ips.agent` is NULL and
    every agent's totals are in `ip_agents`: never both for one agent."""
    marks = ",".join("?" * len(agents))
    return (
        "(SELECT ip, ipkey, family, sum(total) AS total, max(last_seen) AS last_seen FROM ("
        "SELECT a.ip, i.ipkey, i.family, a.total, a.last_seen "
        f"FROM ip_agents a JOIN ips i ON i.ip = a.ip WHERE a.agent IN ({marks}) "
        "UNION ALL SELECT ip, ipkey, family, total, last_seen "
        f"FROM ips WHERE agent IN ({marks})) u GROUP BY ip, ipkey, family)",
        [*agents, *agents],
    )


def _row(sums: Sums) -> WindowCount:
    key, total, first, last = sums
    return WindowCount(ip_text(key), key, total, _moment(first), _moment(last))


def _sums(row: WindowCount) -> Sums:
    return row.key, row.count, _seconds(row.first_bucket), _seconds(row.last_bucket)


def _by_count(sums: Sums) -> tuple[int, int, bytes]:
    return -sums[1], len(sums[0]), sums[0]


def _by_last_seen(sums: Sums) -> tuple[int, int, int, bytes]:
    return -sums[3], -sums[1], len(sums[0]), sums[0]


def _ahead(sums: Sums, order: str, bound: int) -> bool:
    """Whether `sums` ranks strictly before any address whose bound (its total, or its last seen
    in µs) is `bound`: a tie could still be won by a smaller address."""
    if order == "last_seen":
        return sums[3] * 1_000_000 > bound
    return sums[1] > bound


def saturating_add(table: str) -> str:
    return (
        f"CASE WHEN {table}.total > {MAX_TOTAL} - excluded.total THEN {MAX_TOTAL} "
        f"ELSE {table}.total + excluded.total END"
    )


def add_totals(deltas: str, level: str, length: int, *, one_source: bool = False) -> str:
    """SQL that adds the rows of `deltas` (ipkey, bucket, total; buckets of `level`) to the
    totals of `length`-second buckets; run before those rows are upserted into `level`.

    An address is new in a bucket when `level` has no row of it there yet. With several sources
    an (address, bucket) can be in `deltas` once per source, so the new ones are counted
    distinct; `one_source` says that each is there once (a batch's rows are one per address,
    bucket and source), and a plain sum counts them without the sort that DISTINCT takes."""
    new = f"NOT EXISTS (SELECT 1 FROM {level} c WHERE c.ipkey = d.ipkey AND c.bucket = d.bucket)"
    addresses = f"sum({new})" if one_source else f"count(DISTINCT CASE WHEN {new} THEN d.ipkey END)"
    select = f"SELECT {length}, d.bucket, sum(d.total), {addresses} FROM {deltas} d WHERE true GROUP BY d.bucket"
    return (
        "INSERT INTO bucket_totals (length, bucket, total, addresses) " + select + " "
        "ON CONFLICT (length, bucket) DO UPDATE SET total = " + saturating_add("bucket_totals") + ", "
        "addresses = bucket_totals.addresses + excluded.addresses"
    )


def fold_totals(source: str, target: str, unit: int, max_total: int, marker: str) -> str:
    """SQL that adds the `source` rows below the bound (`marker`) to the totals of the `unit`-second
    buckets of `target`, counting as new the (address, bucket) pairs `target` does not hold yet:
    run before those rows are folded into `target`."""
    return (
        "INSERT INTO bucket_totals (length, bucket, total, addresses) "
        f"SELECT {unit}, (s.bucket / {unit}) * {unit}, "
        f"CASE WHEN sum(s.total) > {max_total} THEN {max_total} ELSE sum(s.total) END, "
        f"count(DISTINCT CASE WHEN NOT EXISTS (SELECT 1 FROM {target} t WHERE t.ipkey = s.ipkey "
        f"AND t.bucket = (s.bucket / {unit}) * {unit}) THEN s.ipkey END) "
        f"FROM {source} s WHERE s.bucket < {marker} GROUP BY (s.bucket / {unit}) * {unit} "
        "ON CONFLICT (length, bucket) DO UPDATE SET total = " + saturating_add("bucket_totals") + ", "
        "addresses = bucket_totals.addresses + excluded.addresses"
    )
