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
import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import ClassVar

from remote_uploader.collector.storage import bulk
from remote_uploader.collector.storage.base import BulkForm, EncodedDeltas, ValidBatch, to_micros
from remote_uploader.collector.storage.group import GroupCommit
from remote_uploader.collector.storage.migrations.sqlite import MIGRATIONS
from remote_uploader.collector.storage.sql import Cursor, SqlStorage
from remote_uploader.collector.storage.sql_windows import add_totals
from remote_uploader.errors import StorageError, StorageUnavailable

logger = logging.getLogger(__name__)

# Pages of 4 KiB (SQLite's default, set anyway so that a build with another default does not
# choose) for new databases; an existing file keeps its own (`collector compact` converts one).
# Ingest cost is per page dirtied more than per row: a dirty page is copied into the WAL at
# commit and again into the file at the checkpoint, and on a store that has grown past a batch's
# size each address of the batch dirties pages of its own in `ips`, `counts` and `ip_agents`.
# Measured (docs/benchmarks.md, "SQLite page size on a big store"): on a store of a million
# addresses and ten million minute rows, 4 KiB pages cost 0.63x the CPU per record of 16 KiB ones
# (most of it kernel time copying pages); the two cost the same at two million minute rows, and
# on a fresh store, whose few pages each take many rows of a batch, 4 KiB pages cost up to 1.2x.
PAGE_SIZE = 4096

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
# An address seen by one agent only (the common case: one agent per collector, or per address)
# keeps that agent in `ips.agent` and has no `ip_agents` row: its totals are the address's, and
# a batch writes one B-tree row per address instead of two (migration 9). When a second agent
# counts it, the first agent's row is written to `ip_agents` from the address's totals and
# `ips.agent` becomes NULL; from then on both tables are written, as before. Addresses stored
# before migration 9 have NULL and their `ip_agents` rows. The reads (sql.py) take either form.
# Both statements run before the `ips` upsert, which they read the state of:
# `ip_agents` gets, per staged address that has an `ips` row, this agent's delta when the address
# is in `ip_agents` already (agent NULL) or is about to be (another sole agent), and that other
# agent's totals in the second case (`temp.two` holds k = 0 and 1; CROSS JOIN fixes the
# loop order: one look-up in `ips` per staged address).
UPSERT_IP_AGENTS = (
    "INSERT INTO ip_agents (ip, agent, total, first_seen, last_seen) "
    "SELECT d.ip, CASE x.k WHEN 0 THEN ?1 ELSE i.agent END, CASE x.k WHEN 0 THEN d.total ELSE i.total END, "
    "CASE x.k WHEN 0 THEN d.first_seen ELSE i.first_seen END, CASE x.k WHEN 0 THEN d.last_seen ELSE i.last_seen END "
    "FROM staging.deltas d CROSS JOIN ips i CROSS JOIN temp.two x "
    "WHERE i.ip = d.ip AND ((i.agent IS NULL AND x.k = 0) OR i.agent <> ?1) "
    f"ON CONFLICT (ip, agent) DO UPDATE SET total = {_ADD}, "
    "first_seen = min(first_seen, excluded.first_seen), last_seen = max(last_seen, excluded.last_seen)"
)
UPSERT_IPS = (
    "INSERT INTO ips (ip, ipkey, family, total, first_seen, last_seen, agent, tier) "
    "SELECT ip, ipkey, CASE length(ipkey) WHEN 4 THEN 4 ELSE 6 END, total, first_seen, last_seen, ?, length(total) "
    "FROM staging.deltas WHERE true "
    f"ON CONFLICT (ip) DO UPDATE SET total = {_ADD}, "
    "first_seen = min(first_seen, excluded.first_seen), last_seen = max(last_seen, excluded.last_seen), "
    "agent = CASE WHEN agent = excluded.agent THEN agent END"
)
# Whether UPSERT_IP_AGENTS can have anything to do: an `ips` row of another agent, or one with
# NULL (whose address has `ip_agents` rows: migration 9's, or since a second agent counted it).
# Every `ips.agent` is the agent of a batch that wrote the address, and that batch wrote the
# agent's `agents` row in the same transaction (no statement deletes one): so with `ip_agents`
# empty and no other name in `agents`, every `ips` row has this agent, and the statement, a
# look-up in `ips` per staged address, would write nothing. (Three B-tree seeks a batch.)
OTHER_AGENTS = (
    "SELECT EXISTS (SELECT 1 FROM ip_agents) OR EXISTS (SELECT 1 FROM agents WHERE name < ?1) "
    "OR EXISTS (SELECT 1 FROM agents WHERE name > ?1)"
)
# (In schema temp, not staging: a worker's image replaces schema staging whole.)
CREATE_TWO = "CREATE TEMP TABLE IF NOT EXISTS two (k INTEGER PRIMARY KEY)"
FILL_TWO = "INSERT OR IGNORE INTO temp.two VALUES (0), (1)"
UPSERT_AGENT = (
    "INSERT INTO agents (name, first_seen, last_seen, batches, duplicates, records, last_batch_id, "
    "last_batch_sent_at) VALUES (?, ?, ?, 1, 0, ?, ?, ?) "
    "ON CONFLICT (name) DO UPDATE SET last_seen = max(last_seen, excluded.last_seen), "
    "batches = batches + 1, records = records + excluded.records, "
    "last_batch_id = excluded.last_batch_id, last_batch_sent_at = excluded.last_batch_sent_at"
)


def _alone(item: tuple[ValidBatch, datetime]) -> bool:
    """A batch whose staged rows come as a database image: the image is loaded as schema
    `staging` before its transaction begins (SQLite cannot load it into a schema that the open
    transaction has read), so it takes a transaction of its own."""
    return isinstance(item[0].deltas, EncodedDeltas)


class SqliteStorage(SqlStorage):
    migrations = MIGRATIONS
    bulk_form: BulkForm | None = "sqlite-image" if bulk.HAS_SQLITE_IMAGE else None
    # Migrations 10 and 13: each level's index by time, for the plans by time of sql_windows.py.
    time_indexes: ClassVar[Mapping[str, str]] = {
        "counts": "counts_recent", "counts_hour": "counts_hour_recent", "counts_day": "counts_day_recent"}

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
        self._group: GroupCommit[tuple[ValidBatch, datetime], bool] = GroupCommit(
            self._write_lock, timeout, self._store_group, alone=_alone, what=self.path)
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
            with self._locked_write(staging) as cur:
                yield cur
        finally:
            self._write_lock.release()

    @contextmanager
    def _locked_write(self, staging: bytes | None = None) -> Iterator[Cursor]:
        """`_write` for a caller that holds the write lock already (the group commit's leader)."""
        if self._writer is None:
            self._writer = self._connect()
            self._writer.execute("PRAGMA cache_size=-65536")  # 64 MiB: the upserts walk the whole index
            self._writer.execute(ATTACH_STAGING)
            self._writer.execute(CREATE_DELTAS)
            self._writer.execute(CREATE_BUCKETS)
            self._writer.execute(CREATE_SOURCES)
            self._writer.execute(CREATE_BUCKET_SUMS)
            self._writer.execute(CREATE_TWO)
            self._writer.execute(FILL_TWO)
        if staging is not None:
            try:
                self._writer.deserialize(staging, name="staging")
            except sqlite3.Error as exc:
                raise StorageError(f"{self.path}: cannot load the staged deltas: {exc}") from exc
        with self._transaction(self._writer, "BEGIN IMMEDIATE") as cur:
            yield cur

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

    def page_size(self) -> int:
        with self._read() as cur:
            cur.execute("PRAGMA page_size")
            return int(cur.fetchone()[0])

    def compact(self, page_size: int = PAGE_SIZE) -> tuple[int, int]:
        """Rewrite the file (`VACUUM`) with pages of `page_size` bytes: frees the pages that
        retention emptied and converts a store made with another page size. Returns the page
        size before and after.

        SQLite changes the page size only outside WAL mode, so the file leaves WAL for the VACUUM
        and returns to it. Leaving WAL needs the file to itself: while a collector or another
        command has it open this fails (StorageUnavailable) and changes nothing. The VACUUM runs
        under the rollback journal, so a crash or a full disk during it leaves the store as it
        was (the journal is rolled back at the next open)."""
        size, free = os.path.getsize(self.path), shutil.disk_usage(Path(self.path).parent).free
        if free < size:  # the rollback journal takes up to the store's size beside it
            raise StorageUnavailable(f"{self.path}: not enough free space to rewrite it ({free:,} bytes free beside "
                                     f"it, up to {size:,} needed for its journal)")
        conn = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None)
        try:
            before = conn.execute("PRAGMA page_size").fetchone()[0]
            try:
                mode = conn.execute("PRAGMA journal_mode=DELETE").fetchone()[0]
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    raise
                mode = "wal"
            if mode != "delete":
                raise StorageUnavailable(f"{self.path}: in use by another process; stop the collector and try again")
            try:
                conn.execute(f"PRAGMA page_size={int(page_size)}")
                conn.execute("VACUUM")
            finally:
                conn.execute("PRAGMA journal_mode=WAL")
            after = conn.execute("PRAGMA page_size").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise self._translate(exc) from exc
        finally:
            conn.close()
        return before, after

    def store_batch(self, batch: ValidBatch, received_at: datetime) -> bool:
        """Stored in the next group commit (storage/group.py): with the batches that arrive while
        the transaction before it runs, in one transaction; answered once that one has committed."""
        return self._group.submit((batch, received_at))

    def _store_group(
        self, items: list[tuple[ValidBatch, datetime]], more: Callable[[], list[tuple[ValidBatch, datetime]]]
    ) -> list[bool | BaseException]:
        """One transaction for the group: each batch claimed and counted as if it were alone, then
        the batches queued meanwhile (`more()`), until none came, then one COMMIT.

        Each batch runs in a savepoint of its own: one that fails (its outcome is the error, its
        rows are rolled back) leaves the others to commit. The claim of each batch reads what the
        batches before it in the group wrote, so a replay beside its original is a duplicate.
        Crash argument: the batches' rows, their claims and their counts commit together or not
        at all (one transaction), and no caller is answered before the COMMIT returned: a crash
        before it loses only batches that nobody acknowledged, which their agents send again.
        """
        first = items[0][0]
        # A batch parsed by a worker process brings its staged rows as a database image, loaded as
        # schema `staging` before the transaction: it is always alone in its group (`_alone`).
        image = bulk.encoded(first.deltas, "sqlite-image").data if isinstance(first.deltas, EncodedDeltas) else None
        outcomes: list[bool | BaseException] = []
        with self._locked_write(staging=image) as cur:
            if image is not None:
                return [self._store_one(cur, first, items[0][1], staged=True)]
            while items:
                for batch, received_at in items:
                    cur.execute("SAVEPOINT batch")
                    try:
                        outcomes.append(self._store_one(cur, batch, received_at, staged=False))
                    except Exception as exc:  # this batch's outcome; the others go on
                        cur.execute("ROLLBACK TO batch")
                        outcomes.append(self._translate(exc))
                    cur.execute("RELEASE batch")
                items = more()
        return outcomes

    def _translate(self, exc: Exception) -> Exception:
        if isinstance(exc, sqlite3.OperationalError):
            return StorageUnavailable(f"{self.path}: {exc}")
        if isinstance(exc, sqlite3.DatabaseError):
            return StorageError(f"{self.path}: {exc}")
        return exc

    def _store_one(self, cur: Cursor, batch: ValidBatch, received_at: datetime, *, staged: bool) -> bool:
        """One batch inside the group's transaction; `staged`: its rows are in schema `staging`
        already (an image loaded before the transaction)."""
        now = to_micros(received_at)
        agent = batch.agent
        deltas = batch.deltas
        if not self._claim(cur, agent, batch.batch_id, batch.records, now, batch.producer, batch.seq, batch.part,
                           batch.streams):
            cur.execute(COUNT_DUPLICATE, (now, agent))
            return False
        if staged:
            sources = cur.execute("SELECT count(*) FROM staging.sources").fetchone()[0]
        else:
            assert not isinstance(deltas, EncodedDeltas)
            cur.execute("DELETE FROM staging.deltas")
            cur.execute("DELETE FROM staging.bdeltas")
            cur.execute("DELETE FROM staging.sources")
            cur.execute("DELETE FROM staging.bsums")
            bulk.insert_many(cur, "staging.deltas", 5, deltas, blobs=(1,))
            names, rows = bulk.source_indexes(batch.buckets)
            cur.executemany(INSERT_SOURCE, names)
            bulk.insert_many(cur, "staging.bdeltas", 4, rows, blobs=(0,))
            cur.executemany(INSERT_BUCKET_SUM, bulk.bucket_sums(rows))
            sources = len(names)
        if cur.execute(OTHER_AGENTS, (agent,)).fetchone()[0]:
            cur.execute(UPSERT_IP_AGENTS, (agent,))
        cur.execute(UPSERT_IPS, (agent,))
        # The time buckets (model.py): labels first, then the counts that refer to them.
        cur.execute(INSERT_AGENT_LABEL, (agent,))
        cur.execute(INSERT_SOURCE_LABELS)
        # The buckets' totals before the rows go in: they read which addresses a bucket holds already.
        cur.execute(add_totals("staging.bdeltas", "counts", self.bucket_seconds, one_source=sources <= 1))
        cur.execute(UPSERT_COUNTS, (agent,))
        cur.execute(ADD_SOURCE_TOTALS, (self.bucket_seconds, agent))
        cur.execute(UPSERT_AGENT, (agent, now, now, batch.records, batch.batch_id, to_micros(batch.sent_at)))
        return True
