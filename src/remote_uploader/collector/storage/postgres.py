"""PostgreSQL backend (psycopg 3 with a connection pool): for fleets, where several collector
processes behind a load balancer share one database.

Exactly once across processes: two collectors receiving the same replayed batch both run
INSERT INTO batches ... ON CONFLICT DO NOTHING. The second waits on the first's uncommitted
row; when the first commits, the second inserts nothing and answers duplicate; if the first
rolls back, the second counts the batch. No check-then-insert, so no window between them.

Every wait is bounded: the pool hands out a connection within `timeout` or we give up, and each
session runs with lock_timeout and statement_timeout, so a locked table or a stuck server turns
into `StorageUnavailable` (HTTP 503 + Retry-After), never a hung request.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import psycopg.errors
from psycopg_pool import ConnectionPool, PoolTimeout

from remote_uploader.collector.storage import bulk
from remote_uploader.collector.storage.base import BulkForm, EncodedDeltas, ValidBatch, to_micros
from remote_uploader.collector.storage.migrations.postgres import MIGRATIONS
from remote_uploader.collector.storage.pg_windows import PostgresWindows
from remote_uploader.collector.storage.sql import Cursor, SqlStorage
from remote_uploader.collector.storage.sql_windows import fold_totals, saturating_add
from remote_uploader.errors import StorageError, StorageUnavailable

logger = logging.getLogger(__name__)

MIGRATION_LOCK = 0x72752D636F6C  # any constant; pg_advisory_xact_lock serialises migrate()
ROLLUP_LOCK = MIGRATION_LOCK + 1  # serialises the roll-ups of several collector processes
ATTEMPTS = 3  # a deadlock or serialisation failure is retried this many times in all
MAX_TOTAL = 2**63 - 1
# SQLSTATE class 40: the server rolled the transaction back and says a retry may succeed.
RETRYABLE = (
    psycopg.errors.TransactionRollback,
    psycopg.errors.SerializationFailure,
    psycopg.errors.DeadlockDetected,
)


def _add(table: str) -> str:
    """Saturating addition: a total stops at the largest bigint instead of failing the batch."""
    return (
        f"CASE WHEN {table}.total > {MAX_TOTAL} - excluded.total THEN {MAX_TOTAL} "
        f"ELSE {table}.total + excluded.total END"
    )


COUNT_DUPLICATE = "UPDATE agents SET duplicates = duplicates + 1, last_seen = greatest(last_seen, %s) WHERE name = %s"
# A batch's deltas are COPYed into a temporary table, then each real table takes them in one
# INSERT ... SELECT ... ON CONFLICT. COPY is several times cheaper than binding arrays as
# parameters (psycopg escapes text arrays element by element in Python). ORDER BY ip is the lock
# order: concurrent ingests touching the same addresses lock them in the same order.
CREATE_DELTAS = (
    'CREATE TEMP TABLE IF NOT EXISTS deltas (ip TEXT COLLATE "C" NOT NULL, ipkey BYTEA NOT NULL, '
    "total BIGINT NOT NULL, first_seen BIGINT NOT NULL, last_seen BIGINT NOT NULL) ON COMMIT DELETE ROWS"
)
# The rows come ready in COPY's text format (bulk.postgres_copy), often from a parsing worker.
COPY_DELTAS = "COPY deltas (ip, ipkey, total, first_seen, last_seen) FROM STDIN"
UPSERT_IPS = (
    "INSERT INTO ips (ip, ipkey, family, total, first_seen, last_seen) "
    "SELECT ip, ipkey, CASE length(ipkey) WHEN 4 THEN 4 ELSE 6 END, total, first_seen, last_seen "
    "FROM deltas ORDER BY ip "
    f"ON CONFLICT (ip) DO UPDATE SET total = {_add('ips')}, "
    "first_seen = least(ips.first_seen, excluded.first_seen), "
    "last_seen = greatest(ips.last_seen, excluded.last_seen)"
)
UPSERT_IP_AGENTS = (
    "INSERT INTO ip_agents (ip, agent, total, first_seen, last_seen) "
    "SELECT ip, %s, total, first_seen, last_seen FROM deltas ORDER BY ip "
    f"ON CONFLICT (ip, agent) DO UPDATE SET total = {_add('ip_agents')}, "
    "first_seen = least(ip_agents.first_seen, excluded.first_seen), "
    "last_seen = greatest(ip_agents.last_seen, excluded.last_seen)"
)
CREATE_BUCKETS = (
    "CREATE TEMP TABLE IF NOT EXISTS bdeltas (ipkey BYTEA NOT NULL, bucket BIGINT NOT NULL, "
    "source TEXT NOT NULL, total BIGINT NOT NULL) ON COMMIT DELETE ROWS"
)
COPY_BUCKETS = "COPY bdeltas (ipkey, bucket, source, total) FROM STDIN"
INSERT_AGENT_LABEL = "INSERT INTO labels (kind, name) VALUES ('agent', %s) ON CONFLICT DO NOTHING"
INSERT_SOURCE_LABELS = (
    "INSERT INTO labels (kind, name) SELECT DISTINCT 'source', source FROM bdeltas ORDER BY 2 ON CONFLICT DO NOTHING"
)
UPSERT_COUNTS = (
    "INSERT INTO counts (ipkey, bucket, agent, source, total) "
    "SELECT b.ipkey, b.bucket, (SELECT id FROM labels WHERE kind = 'agent' AND name = %s), l.id, sum(b.total) "
    "FROM bdeltas b JOIN labels l ON l.kind = 'source' AND l.name = b.source "
    "GROUP BY b.ipkey, b.bucket, l.id ORDER BY b.ipkey, b.bucket, l.id "
    f"ON CONFLICT (ipkey, bucket, agent, source) DO UPDATE SET total = {_add('counts')}"
)
LOCK_TOTALS = (
    "INSERT INTO bucket_totals (length, bucket, total, addresses) "
    "SELECT DISTINCT %s::bigint, bucket, 0::bigint, 0::bigint FROM bdeltas ORDER BY 2 "
    "ON CONFLICT (length, bucket) DO UPDATE SET total = bucket_totals.total"
)
ADD_TOTALS = (
    f"UPDATE bucket_totals t SET total = least(t.total::numeric + n.total, {MAX_TOTAL}), "
    "addresses = t.addresses + n.addresses "
    "FROM (SELECT d.bucket, sum(d.total) AS total, count(DISTINCT d.ipkey) FILTER (WHERE NOT EXISTS "
    "(SELECT 1 FROM counts c WHERE c.ipkey = d.ipkey AND c.bucket = d.bucket)) AS addresses "
    "FROM bdeltas d GROUP BY d.bucket) n WHERE t.length = %s AND t.bucket = n.bucket"
)
# The per-(agent, source) totals of the batch's buckets (sql_windows.py, "Totals"): a few rows,
# locked in order after the minutes' `bucket_totals` rows.
ADD_SOURCE_TOTALS = (
    "INSERT INTO source_totals (length, bucket, agent, source, total) "
    "SELECT %s, b.bucket, (SELECT id FROM labels WHERE kind = 'agent' AND name = %s), l.id, "
    f"least(sum(b.total), {MAX_TOTAL}) FROM bdeltas b JOIN labels l ON l.kind = 'source' AND l.name = b.source "
    "GROUP BY b.bucket, l.id ORDER BY 2, 4 "
    f"ON CONFLICT (length, bucket, agent, source) DO UPDATE SET total = {_add('source_totals')}"
)
UPSERT_AGENT = (
    "INSERT INTO agents (name, first_seen, last_seen, batches, duplicates, records, last_batch_id, "
    "last_batch_sent_at) VALUES (%s, %s, %s, 1, 0, %s, %s, %s) "
    "ON CONFLICT (name) DO UPDATE SET last_seen = greatest(agents.last_seen, excluded.last_seen), "
    "batches = agents.batches + 1, records = agents.records + excluded.records, "
    "last_batch_id = excluded.last_batch_id, last_batch_sent_at = excluded.last_batch_sent_at"
)


def redact_url(url: str) -> str:
    """The URL without its password, for logs and error messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "postgresql://..."
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{userinfo}:***@{netloc[-1]}"))


class PostgresStorage(PostgresWindows, SqlStorage):
    placeholder = "%s"
    migrations = MIGRATIONS
    lock_row = " FOR UPDATE"
    bulk_form: BulkForm | None = "postgres-copy"

    def __init__(self, url: str, *, timeout: float = 5.0, pool_size: int = 10) -> None:
        self.url = redact_url(url)
        self._timeout = timeout
        statement_ms = int(max(30.0, 6 * timeout) * 1000)
        options = (
            f"-c statement_timeout={statement_ms} -c lock_timeout={int(timeout * 1000)} "
            "-c idle_in_transaction_session_timeout=60000"
        )
        self._pool = ConnectionPool(
            url,
            kwargs={"autocommit": True, "options": options, "connect_timeout": max(1, math.ceil(timeout))},
            min_size=1,
            max_size=pool_size,
            timeout=timeout,
            check=ConnectionPool.check_connection,  # a server restart leaves dead connections behind
            name="remote-uploader-collector",
            open=False,
        )
        # Do not wait for the first connection: a database that is down at start is reported by
        # the first request (503) or by migrate(), not by a hang here.
        self._pool.open(wait=False)

    @contextmanager
    def _session(self, *, read_only: bool) -> Iterator[Cursor]:
        try:
            with self._pool.connection(timeout=self._timeout) as conn, conn.transaction():
                if read_only:
                    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                with conn.cursor() as cur:
                    yield cur
        except PoolTimeout as exc:
            raise StorageUnavailable(f"{self.url}: no database connection within {self._timeout:g} s") from exc
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            # Includes query_canceled (statement_timeout), lock_not_available (lock_timeout),
            # deadlocks, admin shutdown and lost connections: all worth retrying later.
            raise StorageUnavailable(f"{self.url}: {exc}") from exc
        except psycopg.Error as exc:
            raise StorageError(f"{self.url}: {exc}") from exc

    def _write(self) -> Any:
        return self._session(read_only=False)

    def _read(self) -> Any:
        return self._session(read_only=True)

    def _lock_for_migration(self, cur: Cursor) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))

    def close(self) -> None:
        self._pool.close()

    def _fold(self, source: str, target: str, unit: int, before: int) -> int:
        """One statement: the rows deleted are exactly the rows added up. (An INSERT ... SELECT
        then a DELETE would each see their own snapshot: a row that an ingest committed between
        the two would be deleted without having been added.) An advisory lock keeps two
        collector processes from folding at once."""
        with self._write() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (ROLLUP_LOCK,))
            # One snapshot for every part: the totals see `target` as it was before the fold.
            cur.execute(
                f"WITH moved AS (DELETE FROM {source} WHERE bucket < %s "
                "RETURNING ipkey, bucket, agent, source, total), "
                f"totals AS ({fold_totals('moved', target, unit, MAX_TOTAL, '%s')}), "
                f"folded AS (INSERT INTO {target} (ipkey, bucket, agent, source, total) "
                f"SELECT ipkey, (bucket / {unit}) * {unit}, agent, source, least(sum(total), {MAX_TOTAL}) "
                f"FROM moved GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4 "
                f"ON CONFLICT (ipkey, bucket, agent, source) DO UPDATE SET total = {saturating_add(target)}), "
                # The per-(agent, source) totals: what moved is added to the coarser level and
                # taken off the finer one (not deleted: an ingest of a late row may have added to
                # a finer row since this statement's snapshot; its row was not moved, so neither
                # is its part of the total).
                "src AS (SELECT bucket, agent, source, sum(total) AS total FROM moved GROUP BY 1, 2, 3), "
                "src_up AS (INSERT INTO source_totals (length, bucket, agent, source, total) "
                f"SELECT {unit}, (bucket / {unit}) * {unit}, agent, source, least(sum(total), {MAX_TOTAL}) "
                "FROM src GROUP BY 2, 3, 4 ORDER BY 2, 3, 4 ON CONFLICT (length, bucket, agent, source) "
                f"DO UPDATE SET total = {saturating_add('source_totals')}), "
                "src_down AS (UPDATE source_totals t SET total = t.total - s.total FROM src s "
                "WHERE t.length = %s AND t.bucket = s.bucket AND t.agent = s.agent AND t.source = s.source) "
                "SELECT count(*) FROM moved",
                (before, before, self._length(source)),
            )
            moved = int(cur.fetchone()[0])
            cur.execute("DELETE FROM source_totals WHERE length = %s AND bucket < %s AND total = 0",
                        (self._length(source), before))
            cur.execute("DELETE FROM bucket_totals WHERE length = %s AND bucket < %s", (self._length(source), before))
            return moved

    def store_batch(self, batch: ValidBatch, received_at: datetime) -> bool:
        # Encoded (unless the parser did) before a connection is taken.
        rows = bulk.encoded(batch.deltas, "postgres-copy", batch.buckets)
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return self._store_batch_once(batch, rows, received_at)
            except StorageUnavailable as exc:
                if attempt == ATTEMPTS or not isinstance(exc.__cause__, RETRYABLE):
                    raise
                logger.info("retrying batch agent=%s batch_id=%s reason=%s", batch.agent, batch.batch_id, exc)
        raise AssertionError("unreachable")

    def _store_batch_once(self, batch: ValidBatch, rows: EncodedDeltas, received_at: datetime) -> bool:
        agent = batch.agent
        now = to_micros(received_at)
        with self._write() as cur:
            if not self._claim(cur, agent, batch.batch_id, batch.records, now, batch.producer, batch.seq, batch.part,
                               batch.streams):
                cur.execute(COUNT_DUPLICATE, (now, agent))
                return False
            if rows.count:
                cur.execute(CREATE_DELTAS)
                with cur.copy(COPY_DELTAS) as copy:
                    copy.write(rows.data)
                cur.execute(UPSERT_IPS)
                cur.execute(UPSERT_IP_AGENTS, (agent,))
            if rows.buckets:
                # The time buckets (model.py): labels first, then the counts that refer to them.
                cur.execute(CREATE_BUCKETS)
                with cur.copy(COPY_BUCKETS) as copy:
                    copy.write(rows.bucket_data)
                cur.execute(INSERT_AGENT_LABEL, (agent,))
                cur.execute(INSERT_SOURCE_LABELS)
                # The totals (sql_windows.py): their rows locked first, in order, and only then,
                # in a statement of its own (so a snapshot taken after any other ingest of these
                # minutes committed), which addresses are new to a minute; then the rows.
                cur.execute(LOCK_TOTALS, (self.bucket_seconds,))
                cur.execute(ADD_TOTALS, (self.bucket_seconds,))
                cur.execute(UPSERT_COUNTS, (agent,))
                cur.execute(ADD_SOURCE_TOTALS, (self.bucket_seconds, agent))
            cur.execute(UPSERT_AGENT, (agent, now, now, batch.records, batch.batch_id, to_micros(batch.sent_at)))
        return True
