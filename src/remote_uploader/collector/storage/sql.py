"""What the SQLite and PostgreSQL backends share: migrations, tokens and every read query.

A subclass provides two context managers, `_read()` (a snapshot) and `_write()` (one write
transaction), each yielding a DB-API cursor. Times are stored as integer microseconds since the
epoch in both backends. SQL is written with `?` placeholders; `_sql()` rewrites them for psycopg.
Only `store_batch`, where the fast bulk path differs, is written twice.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any, Protocol, cast

from remote_uploader.collector.storage.base import (
    AgentCount,
    AgentStats,
    BlocklistRow,
    BouncerInfo,
    IpDetail,
    IpQuery,
    IpSummary,
    Role,
    Storage,
    TokenInfo,
    from_micros,
    network_range,
    to_micros,
)
from remote_uploader.collector.storage.migrations import Migration
from remote_uploader.collector.storage.producers import ProducerState, merge_range
from remote_uploader.collector.storage.sql_agents import AgentReportsSql
from remote_uploader.collector.storage.sql_dashboard import DashboardSql
from remote_uploader.collector.storage.sql_decisions import DecisionsSql
from remote_uploader.collector.storage.sql_windows import WindowsSql
from remote_uploader.errors import BouncerError, SchemaError, TokenError


class Cursor(Protocol):
    """The part of DB-API cursors (sqlite3 and psycopg) that we use."""

    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Any: ...

    def executemany(self, sql: str, params: Sequence[Sequence[Any]], /) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class SqlStorage(WindowsSql, DecisionsSql, DashboardSql, AgentReportsSql, Storage):
    placeholder = "?"
    migrations: tuple[Migration, ...] = ()
    lock_row = ""  # PostgreSQL: " FOR UPDATE" (SQLite's BEGIN IMMEDIATE already serialises writers)

    @abc.abstractmethod
    def _read(self) -> AbstractContextManager[Cursor]: ...

    @abc.abstractmethod
    def _write(self) -> AbstractContextManager[Cursor]: ...

    def _time_param(self, moment: datetime) -> int:
        return to_micros(moment)

    def _time_value(self, value: int) -> datetime:
        return from_micros(value)

    def _lock_for_migration(self, cur: Cursor) -> None:
        """Serialise racing `migrate()` calls (SQLite's BEGIN IMMEDIATE already does)."""

    def _sql(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    # -- schema -----------------------------------------------------------------------------

    def migrate(self) -> int:
        newest = self.migrations[-1][0]
        with self._write() as cur:
            self._lock_for_migration(cur)
            cur.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            cur.execute("SELECT max(version) FROM schema_version")
            row = cur.fetchone()
            current = int(row[0]) if row and row[0] is not None else 0
            if current > newest:
                raise SchemaError(
                    f"the database {self.url} has schema version {current}, newer than this "
                    f"collector knows ({newest}); upgrade remote-uploader"
                )
            for version, statements in self.migrations:
                if version <= current:
                    continue
                for statement in statements:
                    cur.execute(statement)
                cur.execute(self._sql("DELETE FROM schema_version"))
                cur.execute(self._sql("INSERT INTO schema_version (version) VALUES (?)"), (version,))
        return newest

    def ping(self) -> None:
        with self._read() as cur:
            cur.execute("SELECT 1")
            cur.fetchone()

    # -- tokens -----------------------------------------------------------------------------

    def add_token(self, name: str, token_hash: str, role: Role, *, replace: bool = False) -> None:
        now = self._time_param(datetime.now(UTC))
        with self._write() as cur:
            cur.execute(self._sql("SELECT 1 FROM tokens WHERE name = ?"), (name,))
            if cur.fetchone() is not None and not replace:
                raise TokenError(name, "a token with this name exists; revoke it first or use --replace")
            cur.execute(self._sql("DELETE FROM tokens WHERE name = ?"), (name,))
            cur.execute(
                self._sql("INSERT INTO tokens (name, token_hash, role, created_at) VALUES (?, ?, ?, ?)"),
                (name, token_hash, role, now),
            )

    def find_token(self, token_hash: str) -> tuple[str, Role, str] | None:
        with self._read() as cur:
            cur.execute(self._sql("SELECT name, role, token_hash FROM tokens WHERE token_hash = ?"), (token_hash,))
            row = cur.fetchone()
        if row is None:
            return None
        return str(row[0]), cast(Role, row[1]), str(row[2])

    def token_by_name(self, name: str) -> tuple[Role, str] | None:
        with self._read() as cur:
            cur.execute(self._sql("SELECT role, token_hash FROM tokens WHERE name = ?"), (name,))
            row = cur.fetchone()
        return None if row is None else (cast(Role, row[0]), str(row[1]))

    def list_tokens(self) -> list[TokenInfo]:
        with self._read() as cur:
            cur.execute("SELECT name, role, created_at FROM tokens ORDER BY name")
            rows = cur.fetchall()
        return [TokenInfo(name, role, self._time_value(created)) for name, role, created in rows]

    def revoke_token(self, name: str) -> bool:
        with self._write() as cur:
            cur.execute(self._sql("DELETE FROM tokens WHERE name = ?"), (name,))
            return cur.rowcount > 0

    # -- bouncer keys -----------------------------------------------------------------------

    def add_bouncer(self, name: str, key_hash: str, *, replace: bool = False) -> None:
        now = self._time_param(datetime.now(UTC))
        with self._write() as cur:
            cur.execute(self._sql("SELECT 1 FROM bouncers WHERE name = ?"), (name,))
            if cur.fetchone() is not None and not replace:
                raise BouncerError(name, "a bouncer with this name exists; revoke it first or use --replace")
            cur.execute(self._sql("DELETE FROM bouncers WHERE name = ?"), (name,))
            cur.execute(
                self._sql("INSERT INTO bouncers (name, key_hash, created_at) VALUES (?, ?, ?)"),
                (name, key_hash, now),
            )

    _BOUNCER_COLUMNS = "name, created_at, last_seq, last_pull_at, user_agent"

    def _bouncer(self, row: Sequence[Any]) -> BouncerInfo:
        name, created, seq, pulled, agent = row
        return BouncerInfo(
            name=name,
            created_at=self._time_value(created),
            last_seq=None if seq is None else int(seq),
            last_pull_at=None if pulled is None else self._time_value(pulled),
            user_agent=agent,
        )

    def find_bouncer(self, key_hash: str) -> tuple[BouncerInfo, str] | None:
        with self._read() as cur:
            cur.execute(
                self._sql(f"SELECT {self._BOUNCER_COLUMNS}, key_hash FROM bouncers WHERE key_hash = ?"), (key_hash,)
            )
            row = cur.fetchone()
        if row is None:
            return None
        return self._bouncer(row[:5]), str(row[5])

    def list_bouncers(self) -> list[BouncerInfo]:
        with self._read() as cur:
            cur.execute(f"SELECT {self._BOUNCER_COLUMNS} FROM bouncers ORDER BY name")
            rows = cur.fetchall()
        return [self._bouncer(row) for row in rows]

    def revoke_bouncer(self, name: str) -> bool:
        with self._write() as cur:
            cur.execute(self._sql("DELETE FROM bouncers WHERE name = ?"), (name,))
            return cur.rowcount > 0

    def record_pull(self, name: str, seq: int, at: datetime, user_agent: str | None) -> None:
        # The sequence only moves forward: a slow pull that finishes after a newer one must not
        # send the key back to changes it already has (it would get them twice, harmlessly, but
        # never skip any either way).
        with self._write() as cur:
            cur.execute(
                self._sql(
                    "UPDATE bouncers SET last_seq = ?, last_pull_at = ?, user_agent = ? "
                    "WHERE name = ? AND (last_seq IS NULL OR last_seq <= ?)"
                ),
                (seq, self._time_param(at), user_agent, name, seq),
            )

    # -- batch ids --------------------------------------------------------------------------

    def prune_batches(self, received_before: datetime) -> int:
        # In chunks, so that a large backlog never holds the write lock for long.
        chunk = 5000
        deleted = 0
        cutoff = self._time_param(received_before)
        while True:
            with self._write() as cur:
                cur.execute(
                    self._sql(
                        "DELETE FROM batches WHERE (agent, batch_id) IN (SELECT agent, batch_id "
                        "FROM batches WHERE received_at < ? LIMIT ?)"
                    ),
                    (cutoff, chunk),
                )
                count = cur.rowcount
            deleted += count
            if count < chunk:
                return deleted

    def _claim(self, cur: Cursor, agent: str, batch_id: str, records: int, now: int, producer: str | None,
               seq: int, part: str, streams: Sequence[tuple[str, int, int]] = ()) -> bool:
        """Inside the write transaction: True if this batch is new (and now recorded as stored).

        Without a producer: the (agent, batch_id) row, ON CONFLICT DO NOTHING (the unique key decides
        between racing replays). With one: the producer's row, created if absent, then read under
        a row lock (PostgreSQL: FOR UPDATE; a second transaction for the same producer waits here
        and then reads the first one's result), decided by `ProducerState.admit` and written back.
        Either way the decision commits or rolls back with the counts: a crash before COMMIT leaves
        neither, after it both. So do the batch's `streams` ranges, recorded once its seq is settled
        (stored whole, or its last part): a part alone records nothing, since the ranges are the whole
        batch's, and a destroyed queue whose batch was stored in part reads it again (docs/protocol.md).
        """
        if producer is None:
            cur.execute(self._sql("INSERT INTO batches (agent, batch_id, received_at, records) VALUES (?, ?, ?, ?) "
                                  "ON CONFLICT DO NOTHING"), (agent, batch_id, now, records))
            return cur.rowcount > 0
        cur.execute(self._sql("INSERT INTO producers (producer, agent, watermark, pending, updated_at) "
                              "VALUES (?, ?, 0, '', ?) ON CONFLICT DO NOTHING"), (producer, agent, now))
        cur.execute(self._sql("SELECT watermark, pending FROM producers WHERE producer = ?" + self.lock_row),
                    (producer,))
        watermark, pending = cur.fetchone()
        state = ProducerState.load(int(watermark), str(pending))
        if not state.admit(seq, part):
            return False
        cur.execute(self._sql("UPDATE producers SET agent = ?, watermark = ?, pending = ?, updated_at = ? "
                              "WHERE producer = ?"), (agent, state.watermark, state.dump(), now, producer))
        if streams and state.settled(seq):
            self._record_streams(cur, producer, streams, now)
        return True

    def _record_streams(self, cur: Cursor, producer: str, streams: Sequence[tuple[str, int, int]], now: int) -> None:
        """Merge each range into its (producer, stream) row; the producer's row lock, held since
        `_claim` read it, serialises every writer of these rows."""
        for stream, start, end in sorted(streams):
            cur.execute(self._sql("SELECT ranges FROM producer_streams WHERE producer = ? AND stream = ?"),
                        (producer, stream))
            row = cur.fetchone()
            ranges = merge_range(json.loads(row[0]) if row else [], start, end)
            cur.execute(self._sql("INSERT INTO producer_streams (producer, stream, ranges, updated_at) "
                                  "VALUES (?, ?, ?, ?) ON CONFLICT (producer, stream) DO UPDATE "
                                  "SET ranges = excluded.ranges, updated_at = excluded.updated_at"),
                        (producer, stream, json.dumps(ranges, separators=(",", ":")), now))

    def producer_streams(self, producer: str) -> dict[str, list[tuple[int, int]]]:
        with self._read() as cur:
            cur.execute(self._sql("SELECT stream, ranges FROM producer_streams WHERE producer = ?"), (producer,))
            rows = cur.fetchall()
        return {str(stream): [(int(lo), int(hi)) for lo, hi in json.loads(ranges)] for stream, ranges in rows}

    def producer_state(self, producer: str) -> tuple[int, int] | None:
        with self._read() as cur:
            cur.execute(self._sql("SELECT watermark, pending FROM producers WHERE producer = ?"), (producer,))
            row = cur.fetchone()
        if row is None:
            return None
        state = ProducerState.load(int(row[0]), str(row[1]))
        return state.watermark, state.size

    def count_batches(self) -> int:
        with self._read() as cur:
            cur.execute("SELECT count(*) FROM batches")
            return int(cur.fetchone()[0])

    # -- reads ------------------------------------------------------------------------------

    def list_ips(self, query: IpQuery) -> list[IpSummary]:
        params: list[Any] = []
        if query.agent is None:
            source = "ips"
        else:
            # That agent's rows in `ip_agents`, and the addresses it alone counted (migration 9).
            source = (
                "(SELECT a.ip, i.ipkey, i.family, a.total, a.first_seen, a.last_seen, i.agent "
                "FROM ip_agents a JOIN ips i ON i.ip = a.ip WHERE a.agent = ? "
                "UNION ALL SELECT ip, ipkey, family, total, first_seen, last_seen, agent FROM ips WHERE agent = ?)"
            )
            params += [query.agent, query.agent]
        where = ["t.total >= ?"]
        params.append(query.min_count)
        if query.since is not None:
            where.append("t.last_seen >= ?")
            params.append(self._time_param(query.since))
        if query.network is not None:
            family, low, high = network_range(query.network)
            where.append("t.family = ? AND t.ipkey BETWEEN ? AND ?")
            params += [family, low, high]
        column = "t.total" if query.sort == "count" else "t.last_seen"
        if query.after is not None:
            value, ip = query.after
            where.append(f"({column} < ? OR ({column} = ? AND t.ip > ?))")
            params += [value, value, ip]
        sql = (
            "SELECT t.ip, t.total, t.first_seen, t.last_seen, "
            "CASE WHEN t.agent IS NULL THEN (SELECT count(*) FROM ip_agents c WHERE c.ip = t.ip) ELSE 1 END "
            f"FROM {source} t WHERE {' AND '.join(where)} "
            f"ORDER BY {column} DESC, t.ip ASC LIMIT ?"
        )
        params.append(query.limit)
        with self._read() as cur:
            cur.execute(self._sql(sql), params)
            rows = cur.fetchall()
        return [
            IpSummary(ip, int(total), self._time_value(first), self._time_value(last), int(agents))
            for ip, total, first, last, agents in rows
        ]

    def get_ip(self, ip: str) -> IpDetail | None:
        with self._read() as cur:
            cur.execute(self._sql("SELECT total, first_seen, last_seen, agent FROM ips WHERE ip = ?"), (ip,))
            row = cur.fetchone()
            if row is None:
                return None
            total, first, last, sole = row
            if sole is not None:  # counted by one agent only (migration 9): its totals are the address's
                agents = [(sole, total, first, last)]
            else:
                cur.execute(
                    self._sql(
                        "SELECT agent, total, first_seen, last_seen FROM ip_agents WHERE ip = ? "
                        "ORDER BY total DESC, agent ASC"
                    ),
                    (ip,),
                )
                agents = cur.fetchall()
        by_agent = [
            AgentCount(agent, int(count), self._time_value(since), self._time_value(until))
            for agent, count, since, until in agents
        ]
        summary = IpSummary(ip, int(total), self._time_value(first), self._time_value(last), len(by_agent))
        return IpDetail(summary, by_agent)

    def list_agents(self) -> list[AgentStats]:
        with self._read() as cur:
            cur.execute(
                "SELECT name, first_seen, last_seen, batches, duplicates, records, last_batch_id, "
                "last_batch_sent_at FROM agents ORDER BY name"
            )
            rows = cur.fetchall()
        return [
            AgentStats(
                name=name,
                first_seen=self._time_value(first),
                last_seen=self._time_value(last),
                batches=int(batches),
                duplicates=int(duplicates),
                records=int(records),
                last_batch_id=batch_id,
                last_batch_sent_at=self._time_value(sent),
            )
            for name, first, last, batches, duplicates, records, batch_id, sent in rows
        ]

    def ingest_minutes(self, since: datetime) -> list[tuple[datetime, int, int]]:
        # Integer division of microseconds by a minute, in both SQLite and PostgreSQL (bigint).
        sql = (
            "SELECT received_at / 60000000 AS minute, count(*), sum(records) FROM batches "
            "WHERE received_at >= ? GROUP BY minute ORDER BY minute"
        )
        with self._read() as cur:
            cur.execute(self._sql(sql), (self._time_param(since),))
            rows = cur.fetchall()
        return [(from_micros(int(minute) * 60_000_000), int(n), int(records)) for minute, n, records in rows]

    def blocklist_rows(self, min_count: int, since: datetime | None, family: int | None) -> list[BlocklistRow]:
        where = ["total >= ?"]
        params: list[Any] = [min_count]
        if since is not None:
            where.append("last_seen >= ?")
            params.append(self._time_param(since))
        if family is not None:
            where.append("family = ?")
            params.append(family)
        sql = f"SELECT ip, ipkey, total, last_seen FROM ips WHERE {' AND '.join(where)} ORDER BY family, ipkey"
        with self._read() as cur:
            cur.execute(self._sql(sql), params)
            rows = cur.fetchall()
        return [BlocklistRow(ip, bytes(key), int(total), self._time_value(last)) for ip, key, total, last in rows]


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
