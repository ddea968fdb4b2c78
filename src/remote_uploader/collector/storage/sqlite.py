"""SQLite backend: the embedded default, one file, no server.

One writer connection behind a lock (SQLite has one writer anyway; queueing in Python gives a
bounded wait we control) and a pool of reader connections. WAL lets readers run while a batch
is written; `synchronous=FULL` makes a commit durable before we answer 200, because the agent
deletes a batch as soon as we acknowledge it. Every wait is bounded by `timeout`: the Python
lock, then SQLite's busy timeout (another process, e.g. `token add`, holding the file). Past
it, `StorageUnavailable`, which the HTTP layer answers with 503 and Retry-After.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from remote_uploader.collector.storage import bulk
from remote_uploader.collector.storage.base import BulkForm, EncodedDeltas, ValidBatch, to_micros
from remote_uploader.collector.storage.migrations.sqlite import MIGRATIONS
from remote_uploader.collector.storage.sql import Cursor, SqlStorage
from remote_uploader.collector.storage.sql_windows import add_totals
from remote_uploader.errors import StorageError, StorageUnavailable

logger = logging.getLogger(__name__)

# Pages of 16 KiB rather than SQLite's 4 KiB, for new databases (an existing file keeps its own;
# `VACUUM` after `PRAGMA page_size`, outside WAL mode, converts one). Ingest cost is per page
# touched more than per row: a batch of 100,000 addresses touches most leaf pages of both tables,
# and each dirty page costs a WAL frame at commit; with 16 KiB pages there are a quarter as many
# and a big batch is stored with about 30 % less CPU. The price: a batch of a few hundred
# addresses, which touches one page per address either way, writes bigger pages (measured: 200
# records ~14 -> ~21 ms; 2,000 records the same). See docs/collector.md, "Performance".
PAGE_SIZE = 16384

COUNT_DUPLICATE = "UPDATE agents SET duplicates = duplicates + 1, last_seen = max(last_seen, ?) WHERE name = ?"
# Totals saturate at the largest 64-bit integer instead of overflowing (SQLite would turn an
# overflowing sum into a float).
MAX_TOTAL = 2**63 - 1
_ADD = f"CASE WHEN total > {MAX_TOTAL} - excluded.total THEN {MAX_TOTAL} ELSE total + excluded.total END"
# A batch's deltas are staged in a schema of their own, `staging` (an in-memory database attached
# to the writer connection): by loading a database image of them (see bulk.py) when a parsing
# worker made one, else by multi-row INSERTs of the tuples parsed in this process. Each real
# table then takes them in one INSERT ... SELECT ... ON CONFLICT statement run inside SQLite.
# ("WHERE true" is SQLite's documented way to let ON CONFLICT follow a SELECT.)
ATTACH_STAGING = "ATTACH DATABASE ':memory:' AS staging"
CREATE_DELTAS = bulk.SQLITE_DELTAS.replace("CREATE TABLE deltas", "CREATE TABLE IF NOT EXISTS staging.deltas")
CREATE_BUCKETS = bulk.SQLITE_BUCKETS.replace("CREATE TABLE bdeltas", "CREATE TABLE IF NOT EXISTS staging.bdeltas")
CREATE_SOURCES = bulk.SQLITE_SOURCES.replace("CREATE TABLE sources", "CREATE TABLE IF NOT EXISTS staging.sources")
CREATE_BUCKET_SUMS = bulk.SQLITE_BUCKET_SUMS.replace("CREATE TABLE bsums", "CREATE TABLE IF NOT EXISTS staging.bsums")
INSERT_SOURCE = "INSERT INTO staging.sources VALUES (?, ?)"
INSERT_BUCKET_SUM = "INSERT INTO staging.bsums VALUES (?, ?, ?)"
INSERT_AGENT_LABEL = "INSERT INTO labels (kind, name) VALUES ('agent', ?) ON CONFLICT DO NOTHING"
INSERT_SOURCE_LABELS = (
    "INSERT INTO labels (kind, name) SELECT 'source', name FROM staging.sources WHERE true ON CONFLICT DO NOTHING"
)

UPSERT_COUNTS = (
    "INSERT INTO counts (ipkey, bucket, agent, source, total) "
    "SELECT b.ipkey, b.bucket, (SELECT id FROM labels WHERE kind = 'agent' AND name = ?), l.id, b.total "
    "FROM staging.bdeltas b JOIN staging.sources s ON s.idx = b.src "
    "JOIN labels l ON l.kind = 'source' AND l.name = s.name WHERE true "
    f"ON CONFLICT (ipkey, bucket, agent, source) DO UPDATE SET total = {_ADD}"
)
# The per-(agent, source) totals of the batch's buckets (sql_windows.py, "Totals"): a few rows.
# From the staged sums per (bucket, source) (bulk.py `bsums`): a few rows joined to their labels.
ADD_SOURCE_TOTALS = (
    "INSERT INTO source_totals (length, bucket, agent, source, total) "
    "SELECT ?, g.bucket, (SELECT id FROM labels WHERE kind = 'agent' AND name = ?), l.id, g.total "
    "FROM staging.bsums g JOIN staging.sources s ON s.idx = g.src "
    "JOIN labels l ON l.kind = 'source' AND l.name = s.name WHERE true "
    f"ON CONFLICT (length, bucket, agent, source) DO UPDATE SET total = {_ADD}"
)
UPSERT_IPS = (
    "INSERT INTO ips (ip, ipkey, family, total, first_seen, last_seen) "
    "SELECT ip, ipkey, CASE length(ipkey) WHEN 4 THEN 4 ELSE 6 END, total, first_seen, last_seen "
    "FROM staging.deltas WHERE true "
    f"ON CONFLICT (ip) DO UPDATE SET total = {_ADD}, "
    "first_seen = min(first_seen, excluded.first_seen), last_seen = max(last_seen, excluded.last_seen)"
)
UPSERT_IP_AGENTS = (
    "INSERT INTO ip_agents (ip, agent, total, first_seen, last_seen) "
    "SELECT ip, ?, total, first_seen, last_seen FROM staging.deltas WHERE true "
    f"ON CONFLICT (ip, agent) DO UPDATE SET total = {_ADD}, "
    "first_seen = min(first_seen, excluded.first_seen), last_seen = max(last_seen, excluded.last_seen)"
)
UPSERT_AGENT = (
    "INSERT INTO agents (name, first_seen, last_seen, batches, duplicates, records, last_batch_id, "
    "last_batch_sent_at) VALUES (?, ?, ?, 1, 0, ?, ?, ?) "
    "ON CONFLICT (name) DO UPDATE SET last_seen = max(last_seen, excluded.last_seen), "
    "batches = batches + 1, records = records + excluded.records, "
    "last_batch_id = excluded.last_batch_id, last_batch_sent_at = excluded.last_batch_sent_at"
)


class SqliteStorage(SqlStorage):
    migrations = MIGRATIONS
    bulk_form: BulkForm | None = "sqlite-image" if bulk.HAS_SQLITE_IMAGE else None

    def __init__(self, path: str | Path, *, timeout: float = 5.0, create_dir: bool = True) -> None:
        """`create_dir=False` (the CLI, for a path the operator typed): a missing directory is an
        error, not a new empty database that turns a typo into every agent being refused."""
        self.path = str(path)
        self.url = "sqlite://" + self.path
        self._timeout = timeout
        self._write_lock = threading.Lock()
        self._writer: sqlite3.Connection | None = None
        self._pool_lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._all: list[sqlite3.Connection] = []
        if self.path != ":memory:":
            self._prepare_file(create_dir)

    def _prepare_file(self, create_dir: bool) -> None:
        """The directory exists (or may be made: 0700), and the database file is private (0600):
        it holds token hashes and every agent's data."""
        directory = Path(self.path).parent
        if not directory.is_dir():
            if not create_dir:
                raise StorageError(f"the directory of {self.path} does not exist ({directory}); check the path, "
                                   "or pass --create-dir to create it")
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Only a file that does not exist yet is opened here: closing any descriptor of a database
        # file drops every POSIX lock this process holds on it, so opening and closing an existing
        # one while another SqliteStorage of this process has it open (a test, `token add` in the
        # server's process) corrupts that one's view of the WAL ("disk I/O error", stale reads).
        if os.path.exists(self.path):
            return
        try:
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        except FileExistsError:
            pass  # made meanwhile by another process
        except OSError as exc:
            raise StorageError(f"cannot open {self.path}: {exc.strerror or exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        try:
            # isolation_level=None: no implicit transactions; we spell out BEGIN ... COMMIT.
            conn = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA page_size={PAGE_SIZE}")  # before WAL; no effect on an existing file
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.OperationalError as exc:
            raise StorageUnavailable(f"cannot open {self.path}: {exc}") from exc
        with self._pool_lock:
            self._all.append(conn)
        return conn

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection, begin: str) -> Iterator[Cursor]:
        try:
            conn.execute(begin)
            try:
                yield conn.cursor()
                conn.execute("COMMIT")
            finally:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        logger.warning("rollback failed path=%s", self.path)
        except sqlite3.OperationalError as exc:
            # "database is locked", "disk I/O error", "database or disk is full": try later.
            raise StorageUnavailable(f"{self.path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"{self.path}: {exc}") from exc

    @contextmanager
    def _write(self, staging: bytes | None = None) -> Iterator[Cursor]:
        """One write transaction; `staging`: a database image to load as schema `staging` first."""
        if not self._write_lock.acquire(timeout=self._timeout):
            raise StorageUnavailable(f"{self.path}: busy (a write waited {self._timeout:g} s)")
        try:
            if self._writer is None:
                self._writer = self._connect()
                self._writer.execute("PRAGMA cache_size=-65536")  # 64 MiB: the upserts walk the whole index
                self._writer.execute(ATTACH_STAGING)
                self._writer.execute(CREATE_DELTAS)
                self._writer.execute(CREATE_BUCKETS)
                self._writer.execute(CREATE_SOURCES)
                self._writer.execute(CREATE_BUCKET_SUMS)
            if staging is not None:
                try:
                    self._writer.deserialize(staging, name="staging")
                except sqlite3.Error as exc:
                    raise StorageError(f"{self.path}: cannot load the staged deltas: {exc}") from exc
            with self._transaction(self._writer, "BEGIN IMMEDIATE") as cur:
                yield cur
        finally:
            self._write_lock.release()

    @contextmanager
    def _read(self) -> Iterator[Cursor]:
        with self._pool_lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._connect()
        try:
            # A deferred transaction: the queries of one call see one snapshot.
            with self._transaction(conn, "BEGIN") as cur:
                yield cur
        finally:
            with self._pool_lock:
                self._idle.append(conn)

    def close(self) -> None:
        with self._pool_lock:
            conns, self._all, self._idle = self._all, [], []
        self._writer = None
        for conn in conns:
            conn.close()

    def store_batch(self, batch: ValidBatch, received_at: datetime) -> bool:
        now = to_micros(received_at)
        agent = batch.agent
        deltas = batch.deltas
        # A parsing worker sends an image of the staged rows (made in its process: less work for
        # this one while it holds the write lock); deltas parsed in this process are staged
        # directly, which costs less CPU in all than making an image here and loading it.
        image = bulk.encoded(deltas, "sqlite-image").data if isinstance(deltas, EncodedDeltas) else None
        with self._write(staging=image) as cur:
            if not self._claim(cur, agent, batch.batch_id, batch.records, now, batch.producer, batch.seq, batch.part,
                               batch.streams):
                cur.execute(COUNT_DUPLICATE, (now, agent))
                return False
            if image is None:
                assert not isinstance(deltas, EncodedDeltas)
                cur.execute("DELETE FROM staging.deltas")
                cur.execute("DELETE FROM staging.bdeltas")
                cur.execute("DELETE FROM staging.sources")
                cur.execute("DELETE FROM staging.bsums")
                bulk.insert_many(cur, "staging.deltas", 5, deltas)
                sources, rows = bulk.source_indexes(batch.buckets)
                cur.executemany(INSERT_SOURCE, sources)
                bulk.insert_many(cur, "staging.bdeltas", 4, rows)
                cur.executemany(INSERT_BUCKET_SUM, bulk.bucket_sums(rows))
            cur.execute(UPSERT_IPS)
            cur.execute(UPSERT_IP_AGENTS, (agent,))
            # The time buckets (model.py): labels first, then the counts that refer to them.
            cur.execute(INSERT_AGENT_LABEL, (agent,))
            cur.execute(INSERT_SOURCE_LABELS)
            cur.execute(add_totals("staging.bdeltas", "counts", self.bucket_seconds))  # before the rows go in
            cur.execute(UPSERT_COUNTS, (agent,))
            cur.execute(ADD_SOURCE_TOTALS, (self.bucket_seconds, agent))
            cur.execute(UPSERT_AGENT, (agent, now, now, batch.records, batch.batch_id, to_micros(batch.sent_at)))
        return True
