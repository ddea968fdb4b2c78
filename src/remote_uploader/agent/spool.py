"""The durable queue and the read offsets: the one module that knows the crash story.

One SQLite database (WAL, synchronous=FULL) in the state directory holds:

- ``files``: each file's identity (device, inode, fingerprint) and the offset up to which its
  content is safe (queued or delivered), with the anchor (a hash of the bytes just before it,
  `source.Anchor`) written in the same transaction as the offset, and its stream (a random id per
  incarnation of the file's content) with the end of the last byte range a sealed batch carried;
- ``batches``: sealed batches, each the exact request body that will be sent, under a batch id
  fixed at seal time, so every retry is byte-identical and the collector can drop replays;
- ``dead_letters``: batches the collector refused for good (a 4xx other than 401/403/408/413/429);
- ``kv``: the last upload result, for `status`; this queue's producer id and next batch number;
- ``pending`` and ``sealed``: which queued batch belongs to which batch number, and each sealed
  batch's file rows as the seal left them: what `delivered.json` is advanced from (below).

Beside the database, ``delivered.json`` (`Delivered`) keeps each file's row as of the newest batch
that the collector acknowledged together with every batch sealed before it: where reading
can resume without re-reading anything delivered when the database itself is destroyed
(`reset-state`; issue 9, hole 10); it names this queue's producer, whose stream ranges the collector
keeps, so that `reset-state` also skips what was stored but never acknowledged (docs/protocol.md,
"Streams").

The invariant, kept by `commit()`: every byte of a file below its recorded offset is in a queued
batch or was acknowledged by the collector; every byte above it will be read again. Sealing a
batch and moving the offsets are one transaction, so a crash anywhere leaves one side or the other,
never both, never neither. A batch leaves the queue only by an acknowledgement (`ack`), by the
dead-letter table (`dead_letter`, still on disk) or by being replaced by its halves (`split`).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from remote_uploader.agent.faults import crash_point
from remote_uploader.agent.source import Anchor, FileIdentity
from remote_uploader.errors import CorruptStateError, DiskFullError, StateError, StateLockedError
from remote_uploader.i18n import Message

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
CACHE_KIB = 256
WAL_CHECKPOINT_PAGES = 128
DB_NAME = "queue.db"
LOCK_NAME = "agent.lock"
DELIVERED_NAME = "delivered.json"

RECOVERY_HINT = Message(
    "move it aside and start again: `remote-uploader reset-state` keeps the recorded "
    "offsets where they can still be read (see docs/reliability.md, 'Corrupt state')"
)

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS files (
        fid INTEGER PRIMARY KEY,
        path TEXT NOT NULL,
        source TEXT NOT NULL,
        dev INTEGER NOT NULL,
        ino INTEGER NOT NULL,
        fp_len INTEGER NOT NULL,
        fp_hash BLOB NOT NULL,
        offset INTEGER NOT NULL,
        status TEXT NOT NULL DEFAULT 'active',
        updated REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS files_path ON files(path)",
    "CREATE INDEX IF NOT EXISTS files_inode ON files(dev, ino)",
    """CREATE TABLE IF NOT EXISTS batches (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        batch_id TEXT NOT NULL UNIQUE,
        created REAL NOT NULL,
        records INTEGER NOT NULL,
        occurrences INTEGER NOT NULL,
        encoding TEXT NOT NULL,
        body BLOB NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT)""",
    """CREATE TABLE IF NOT EXISTS dead_letters (
        batch_id TEXT PRIMARY KEY,
        created REAL NOT NULL,
        records INTEGER NOT NULL,
        occurrences INTEGER NOT NULL,
        encoding TEXT NOT NULL,
        body BLOB NOT NULL,
        status INTEGER,
        reason TEXT NOT NULL,
        dead_at REAL NOT NULL)""",
    "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)

# Added without a schema version: created where missing each time the queue is opened for writing,
# ignored by agents before them (they neither read nor need them).
DELIVERY_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS pending (batch_id TEXT PRIMARY KEY, pseq INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS pending_pseq ON pending(pseq)",
    "CREATE TABLE IF NOT EXISTS sealed (pseq INTEGER PRIMARY KEY, files TEXT NOT NULL)",
)

# Columns added to `files` after schema version 1, by ALTER TABLE when missing (an older agent's
# queries name their columns, so it still reads a database that has them): the anchor of the
# committed offset (`source.Anchor`); anchor_pos 0 means none yet. `stream_id`: a random id of this
# record's content, new whenever its offset moves back (the file was replaced: other bytes at the same
# offsets), and `sent_end`: the end of the last byte range a sealed batch carried for it; batches
# send (stream, sent_end, new offset) so that the collector can say, after this database was
# destroyed, how far each stream was stored (docs/protocol.md, "Streams"). -1: none yet.
FILE_COLUMNS_ADDED = (
    ("anchor_pos", "INTEGER NOT NULL DEFAULT 0"),
    ("anchor_len", "INTEGER NOT NULL DEFAULT 0"),
    ("anchor_hash", "BLOB NOT NULL DEFAULT x''"),
    ("stream_id", "TEXT NOT NULL DEFAULT ''"),
    ("sent_end", "INTEGER NOT NULL DEFAULT -1"),
)
NEW_STREAM_SQL = "lower(hex(randomblob(16)))"


@dataclass(frozen=True)
class FileState:
    fid: int
    path: str
    stream: str  # the stream label its records carry (column `source`, the records' wire field)
    identity: FileIdentity
    offset: int
    status: str
    anchor: Anchor | None = None


@dataclass(frozen=True)
class SealedBatch:
    """A batch ready to be stored: `body` is the complete request body (compressed per `encoding`)."""

    batch_id: str
    created: float
    records: int
    occurrences: int
    encoding: str
    body: bytes


@dataclass(frozen=True)
class QueuedBatch(SealedBatch):
    """A sealed batch as it sits in the queue: its place in the send order and its tries so far."""

    seq: int
    attempts: int


@dataclass(frozen=True)
class QueueStats:
    batches: int
    records: int
    occurrences: int
    body_bytes: int
    oldest_created: float | None
    dead_batches: int
    dead_records: int
    disk_bytes: int


class StateLock:
    """An exclusive `flock` on the state directory: two agents on one queue would double-send."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StateLockedError(Message(
                "another agent (pid {pid}) is using the state directory {path}; "
                "stop it first, or give this one its own agent.state_dir", pid=holder, path=self.path.parent,
            )) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            # Like every other write of the state directory on a full disk: the caller waits for
            # space (runner.open_agent) rather than exiting with a traceback.
            raise DiskFullError(Message("no space left to write the state lock {path}", path=self.path)) from exc
        self._fd = fd

    def is_held_elsewhere(self) -> bool:
        """True when another process holds the lock (used by `status` and `test`)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def prepare_state_dir(state_dir: Path) -> None:
    """Create the state directory private (0700); refuse one others can write to."""
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if state_dir.stat().st_mode & 0o077:
            os.chmod(state_dir, 0o700)
    except OSError as exc:
        raise StateError(Message("state directory {path}: {error}", path=state_dir, error=exc.strerror or exc)) from exc
    if not os.access(state_dir, os.W_OK | os.X_OK):
        raise StateError(Message("state directory {path} is not writable by this user", path=state_dir))


def _is_disk_full(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code == sqlite3.SQLITE_FULL or "disk is full" in str(exc) or getattr(exc, "errno", None) == errno.ENOSPC


def _is_write_failure(exc: BaseException) -> bool:
    """SQLITE_IOERR and its extended codes: the write did not happen (EFBIG past a file-size limit,
    EIO, a quota). Like a full disk, it is retried with the offsets unmoved, not a reason to stop."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF == sqlite3.SQLITE_IOERR


class Spool:
    """One connection to the queue database. The reader and the uploader each open their own."""

    def __init__(self, state_dir: Path, *, readonly: bool = False) -> None:
        self.path = state_dir / DB_NAME
        self.readonly = readonly
        self._lock = threading.Lock()
        self._created = False
        self.producer_id = ""  # set by _check_and_migrate (a read-only spool does not need it)
        self.conn = self._connect()
        self.delivered = Delivered(state_dir / DELIVERED_NAME, self.producer_id)
        if self._created and not self.delivered.path.exists():
            # A new queue has delivered nothing: say so, so that `reset-state` can tell "nothing
            # acknowledged yet" (read every file from its start, exactly) from "no record".
            self.delivered.advance([], set())

    # --- opening ------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self.readonly:
            if not self.path.exists():
                raise StateError(Message("no queue database at {path} (the agent has not run yet)", path=self.path))
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None, timeout=5,
                                   check_same_thread=False)
        else:
            if not self.path.exists():
                try:
                    os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
                except OSError as exc:
                    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                        raise
                    raise DiskFullError(Message("no space left for the queue database {path}",
                                                path=self.path)) from exc
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30, check_same_thread=False)
        try:
            self._check_and_migrate(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            # Opening a WAL database writes its -wal and -shm files: on a full disk that fails with
            # SQLITE_FULL or SQLITE_IOERR, which is a full disk (the caller waits for space), not
            # damage (exit 4 and "reset-state" would keep the service down and invite a re-read).
            classified = self._classify(exc)
            if isinstance(classified, DiskFullError):
                raise classified from exc
            raise self._damaged(exc) from exc
        return conn

    def _check_and_migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise CorruptStateError(Message(
                "queue database {path} has schema version {version}, newer than this agent understands "
                "({supported}); run the newer agent, or {hint}",
                path=self.path, version=version, supported=SCHEMA_VERSION, hint=RECOVERY_HINT,
            ))
        if self.readonly:
            if version == 0:
                raise StateError(Message("queue database {path} is empty (the agent has not run yet)", path=self.path))
            return
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        # The agent reads each batch once and writes each once: a big page cache buys nothing
        # and costs memory twice (reader and uploader each have a connection).
        conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        # Checkpoint the WAL into the database every WAL_CHECKPOINT_PAGES pages (SQLite's default is
        # 1000, 4 MiB): every transaction appends each page it touched to the WAL, and a WAL that
        # is never checkpointed can take a small state disk whole, after which not even the
        # checkpoint that would free it can run (found by the 3 MiB full-disk scenario once the
        # seal and the acknowledgement touched a few more pages, for delivered.json).
        conn.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        conn.execute(f"PRAGMA journal_size_limit={WAL_CHECKPOINT_PAGES * 4096}")
        if version == 0:
            names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
            if names:
                raise CorruptStateError(Message(
                    "queue database {path} has tables but no schema version; {hint}",
                    path=self.path, hint=RECOVERY_HINT,
                ))
            conn.execute("BEGIN IMMEDIATE")
            for statement in SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
            self._created = True
        missing = {"files", "batches", "dead_letters", "kv"} - {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        if missing:
            raise CorruptStateError(Message("queue database {path} lacks tables {tables}; {hint}",
                                            path=self.path, tables=sorted(missing), hint=RECOVERY_HINT))
        columns = {row[1] for row in conn.execute("PRAGMA table_info(files)")}
        added = [(name, kind) for name, kind in FILE_COLUMNS_ADDED if name not in columns]
        if added:
            try:
                conn.execute("BEGIN IMMEDIATE")
                for name, kind in added:
                    conn.execute(f"ALTER TABLE files ADD COLUMN {name} {kind}")
                conn.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                if not (_is_disk_full(exc) or _is_write_failure(exc)):
                    raise
                raise DiskFullError(Message("no space left for the queue database {path}", path=self.path)) from exc
        conn.execute("SELECT count(*) FROM batches").fetchone()
        conn.execute("BEGIN IMMEDIATE")
        for statement in DELIVERY_SCHEMA:
            conn.execute(statement)
        # A random producer id per queue: a new queue (a new state directory, `reset-state`) is a
        # new producer, so its batch numbers can start again at 1 without meeting old ones.
        conn.execute("INSERT OR IGNORE INTO kv (key, value) VALUES ('producer', ?)", (os.urandom(16).hex(),))
        # Rows from before `stream_id` (or written by an older agent since) get one: their next batch starts
        # at their offset (sent_end -1).
        conn.execute(f"UPDATE files SET stream_id = {NEW_STREAM_SQL} WHERE stream_id = ''")
        conn.execute("COMMIT")
        self.producer_id = str(conn.execute("SELECT value FROM kv WHERE key = 'producer'").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT; on any error ROLLBACK. A full disk becomes DiskFullError."""
        with self._lock:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self.conn
                    self.conn.execute("COMMIT")
                except BaseException:
                    if self.conn.in_transaction:
                        self.conn.execute("ROLLBACK")
                    raise
            except sqlite3.DatabaseError as exc:
                raise self._classify(exc) from exc

    def _classify(self, exc: sqlite3.DatabaseError) -> Exception:
        """A full disk, a passing operational problem, a bug (constraint), or real damage."""
        if _is_disk_full(exc):
            return DiskFullError(Message("no space left for the queue database {path}", path=self.path))
        if _is_write_failure(exc):
            return DiskFullError(Message("cannot write the queue database {path} ({error})", path=self.path, error=exc))
        if isinstance(exc, sqlite3.OperationalError):
            return StateError(Message("queue database {path}: {error}", path=self.path, error=exc))
        if isinstance(exc, sqlite3.IntegrityError | sqlite3.ProgrammingError | sqlite3.InterfaceError):
            return exc
        return self._damaged(exc)

    def _damaged(self, exc: sqlite3.DatabaseError) -> CorruptStateError:
        return CorruptStateError(Message("queue database {path} is damaged ({error}); {hint}",
                                         path=self.path, error=exc, hint=RECOVERY_HINT))

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        with self._lock:
            try:
                return self.conn.execute(sql, params).fetchall()
            except sqlite3.DatabaseError as exc:
                raise self._classify(exc) from exc

    # --- files and offsets ----------------------------------------------------------------------

    def files(self) -> list[FileState]:
        columns = {row[1] for row in self._query("PRAGMA table_info(files)")}
        anchor = ", anchor_pos, anchor_len, anchor_hash" if "anchor_pos" in columns else ""  # read-only, older
        rows = self._query(
            f"SELECT fid, path, source, dev, ino, fp_len, fp_hash, offset, status{anchor} FROM files ORDER BY fid"
        )
        return [_file_state(row) for row in rows]

    def file_offset(self, fid: int) -> int | None:
        """The committed offset of one file (None if forgotten): read fresh before every read,
        because any seal in between may have moved it."""
        rows = self._query("SELECT offset FROM files WHERE fid = ?", (fid,))
        return int(rows[0][0]) if rows else None

    def register_file(self, path: str, stream: str, identity: FileIdentity, offset: int = 0) -> int:
        with self.transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO files (path, source, dev, ino, fp_len, fp_hash, offset, status, updated, stream_id, "
                "sent_end) VALUES (?, ?, ?, ?, ?, ?, ?, 'active', ?, ?, ?)",
                (path, stream, identity.dev, identity.ino, identity.fp_len, identity.fp_hash, offset, time.time(),
                 os.urandom(16).hex(), offset),
            )
            assert cursor.lastrowid is not None
            return cursor.lastrowid

    def update_file(
        self, fid: int, *, identity: FileIdentity | None = None, offset: int | None = None,
        status: str | None = None, path: str | None = None,
    ) -> None:
        """Change a file's identity, status or path. Moving an offset *backwards* (a replaced file) is
        safe at any time: it only means re-reading; moving it forwards happens only in `commit`.
        Moving it backwards also starts a new stream: the bytes at those offsets are other bytes now,
        and what the collector stored of the old ones must never move the new ones' offset."""
        sets: list[str] = ["updated = ?"]
        params: list[object] = [time.time()]
        if offset is not None:  # every right-hand side sees the row as it was before this UPDATE
            sets += [f"stream_id = CASE WHEN ? < offset THEN {NEW_STREAM_SQL} ELSE stream_id END",
                     "sent_end = CASE WHEN ? < offset THEN ? ELSE sent_end END"]
            params += [offset, offset, offset]
        if identity is not None:
            sets += ["dev = ?", "ino = ?", "fp_len = ?", "fp_hash = ?"]
            params += [identity.dev, identity.ino, identity.fp_len, identity.fp_hash]
        for column, value in (("offset", offset), ("status", status), ("path", path)):
            if value is not None:
                sets.append(f"{column} = ?")
                params.append(value)
        with self.transaction() as conn:
            conn.execute(f"UPDATE files SET {', '.join(sets)} WHERE fid = ?", (*params, fid))

    def forget_files(self, fids: Sequence[int]) -> None:
        with self.transaction() as conn:
            conn.executemany("DELETE FROM files WHERE fid = ?", [(fid,) for fid in fids])

    # --- the seal transaction ---------------------------------------------------------------------

    def commit(self, sealed: SealedBatch | None, offsets: dict[int, int],
               anchors: dict[int, Anchor] | None = None, seq: int = 0) -> None:
        """Queue `sealed` (if any) and move each file's offset forward, in one transaction, each with
        its anchor when one is given (`anchor.pos` at or below the new offset: the evidence
        `tail.py` needs to tell the record's content from a look-alike; without one the previous
        anchor stays, and it stays true: bytes below an offset never change for the record).

        Crash argument, line by line:
        - before BEGIN, or anywhere before COMMIT: nothing changed; the bytes after the old offsets
          are read again and yield the same occurrences into a new batch. No loss, no double.
        - COMMIT is atomic and durable (WAL, synchronous=FULL): after it, the batch is on disk
          and the offsets are past exactly the bytes the batch covers. A crash after COMMIT
          re-reads nothing and the uploader finds the batch. No loss, no double.
        - A full disk fails the transaction as a whole (ROLLBACK): the caller keeps the batch in
          memory and retries; the offsets did not move.
        The offset guard (`offset <= new`) makes a stale caller unable to move an offset backwards.

        With `seq` (the batch's number, `next_seq()`), the same transaction moves `next_seq` past it,
        records which batch carries that number (`pending`) and the file rows as they are now
        (`sealed`): `ack` advances delivered.json from them. All of it or none of it commits.
        """
        with self.transaction() as conn:
            if sealed is not None:
                conn.execute(
                    "INSERT INTO batches (batch_id, created, records, occurrences, encoding, body) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (sealed.batch_id, sealed.created, sealed.records, sealed.occurrences,
                     sealed.encoding, sealed.body),
                )
            now = time.time()
            anchors = anchors or {}
            conn.executemany(
                "UPDATE files SET offset = ?, updated = ? WHERE fid = ? AND offset <= ?",
                [(offset, now, fid, offset) for fid, offset in offsets.items()
                 if fid not in anchors or anchors[fid].pos > offset],
            )
            conn.executemany(
                "UPDATE files SET offset = ?, updated = ?, anchor_pos = ?, anchor_len = ?, anchor_hash = ? "
                "WHERE fid = ? AND offset <= ?",
                [(offset, now, anchors[fid].pos, anchors[fid].length, anchors[fid].digest, fid, offset)
                 for fid, offset in offsets.items() if fid in anchors and anchors[fid].pos <= offset],
            )
            if sealed is not None and seq:
                conn.execute("INSERT OR REPLACE INTO kv (key, value) VALUES ('next_seq', ?)", (str(seq + 1),))
                conn.execute("INSERT INTO pending (batch_id, pseq) VALUES (?, ?)", (sealed.batch_id, seq))
                # The batch carries each stream's bytes up to here (`stream_ranges`): the next one starts here.
                conn.executemany("UPDATE files SET sent_end = offset WHERE fid = ? AND offset = ?",
                                 [(fid, offset) for fid, offset in offsets.items()])
                marks = ",".join("?" * len(offsets))
                cursor = conn.execute(f"SELECT * FROM files WHERE fid IN ({marks})", tuple(offsets))
                columns = [column[0] for column in cursor.description]
                rows = [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
                conn.execute("INSERT INTO sealed (pseq, files) VALUES (?, ?)", (seq, json.dumps(
                    [{key: _jsonable(value) for key, value in row.items()} for row in rows])))

    def stream_ranges(self, offsets: dict[int, int]) -> list[tuple[str, int, int]]:
        """(stream, start, end) for a batch that moves each file in `offsets` to its new offset: from
        the end of the last range a sealed batch carried (so bytes without an address, committed
        without a batch, are in the next batch's range) or, without one, the committed offset.
        Read by the reading thread, the only writer of `files`, right before its seal."""
        if not offsets:
            return []
        marks = ",".join("?" * len(offsets))
        rows = self._query(f"SELECT fid, stream_id, sent_end, offset FROM files WHERE fid IN ({marks})", tuple(offsets))
        ranges = []
        for fid, stream, sent_end, committed in rows:
            start = int(sent_end) if 0 <= int(sent_end) <= int(committed) else int(committed)
            if stream and offsets[int(fid)] > start:
                ranges.append((str(stream), start, offsets[int(fid)]))
        return sorted(ranges)

    # --- the upload side --------------------------------------------------------------------------

    def next_batch(self, after_seq: int = 0, exclude: Sequence[int] = ()) -> QueuedBatch | None:
        """The oldest queued batch with seq > after_seq and not in `exclude` (those in flight): the
        uploader sends in seal order."""
        marks = ",".join("?" * len(exclude))
        rows = self._query(
            "SELECT seq, batch_id, created, records, occurrences, encoding, body, attempts FROM batches "
            f"WHERE seq > ? AND seq NOT IN ({marks}) ORDER BY seq LIMIT 1",
            (after_seq, *exclude),
        )
        if not rows:
            return None
        seq, batch_id, created, records, occurrences, encoding, body, attempts = rows[0]
        return QueuedBatch(batch_id=str(batch_id), created=float(created), records=int(records),
                           occurrences=int(occurrences), encoding=str(encoding), body=bytes(body),
                           seq=int(seq), attempts=int(attempts))

    def producer(self) -> str:
        """This queue's producer id (random, made when the queue was created)."""
        return str(self._query("SELECT value FROM kv WHERE key = 'producer'")[0][0])

    def next_seq(self) -> int:
        """The number the next sealed batch gets (`commit` moves it on with the batch)."""
        rows = self._query("SELECT value FROM kv WHERE key = 'next_seq'")
        return int(rows[0][0]) if rows else 1

    def ack(self, seq: int) -> None:
        """The collector stored it (or had it already): the only way a batch leaves the queue unsent.

        Crash argument, line by line (with `_settle`, which runs inside the same transaction):
        - the collector's answer named the batch: it is stored there, whatever happens next;
        - DELETE the batch and its `pending` row; every batch number below the smallest one still
          pending is now settled, and the newest `sealed` file rows among them are written to
          delivered.json (`Delivered.advance`: a new file, fsync, rename, fsync of the directory);
        - a crash before the rename: delivered.json is as before (behind, never ahead) and the
          transaction rolls back: the batch is sent again, the collector answers duplicate;
        - a crash after the rename, before COMMIT: delivered.json already counts this batch as
          delivered, which it is (the collector stored it); the queue still holds it and sends it
          again: a duplicate. Then the same `sealed` rows settle again, to the same result;
        - COMMIT: the batch and the settled `sealed` rows are gone; delivered.json matches.
        If delivered.json cannot be written (a full disk), the transaction fails whole and the
        uploader retries the acknowledgement later, as for any full disk.
        So delivered.json never claims a byte that the collector has not acknowledged, and lags
        the acknowledgements only while an older batch is still pending.
        """
        with self.transaction() as conn:
            pending = conn.execute("SELECT batch_id FROM batches WHERE seq = ?", (seq,)).fetchone()
            conn.execute("DELETE FROM batches WHERE seq = ?", (seq,))
            if pending is not None:
                conn.execute("DELETE FROM pending WHERE batch_id = ?", (pending[0],))
            self._settle(conn)

    def _settle(self, conn: sqlite3.Connection) -> None:
        """Advance delivered.json over every sealed batch number below the smallest one pending."""
        low = conn.execute("SELECT min(pseq) FROM pending").fetchone()[0]
        where, params = ("", ()) if low is None else (" WHERE pseq < ?", (low,))
        settled = conn.execute(f"SELECT pseq, files FROM sealed{where} ORDER BY pseq", params).fetchall()
        if not settled:
            return
        known = {int(row[0]) for row in conn.execute("SELECT fid FROM files")}
        self.delivered.advance([(int(pseq), json.loads(files)) for pseq, files in settled], known)
        conn.execute(f"DELETE FROM sealed{where}", params)

    def note_failure(self, seq: int, error: str) -> None:
        with self.transaction() as conn:
            conn.execute("UPDATE batches SET attempts = attempts + 1, last_error = ? WHERE seq = ?", (error, seq))

    def dead_letter(self, seq: int, status: int | None, reason: str) -> None:
        """Move a refused batch to the dead-letter table (kept on disk; `requeue` sends it again).

        For delivered.json a dead letter is settled: its lines are not read again after a
        destroyed queue (they are in the dead letter, which `reset-state` carries over when it
        can be read); a requeued dead letter keeps its producer and number, so it cannot double.
        """
        with self.transaction() as conn:
            conn.execute("DELETE FROM pending WHERE batch_id = (SELECT batch_id FROM batches WHERE seq = ?)", (seq,))
            self._settle(conn)
            conn.execute(
                "INSERT OR REPLACE INTO dead_letters (batch_id, created, records, occurrences, encoding, body, "
                "status, reason, dead_at) SELECT batch_id, created, records, occurrences, encoding, body, ?, ?, ? "
                "FROM batches WHERE seq = ?",
                (status, reason, time.time(), seq),
            )
            conn.execute("DELETE FROM batches WHERE seq = ?", (seq,))

    def split(self, seq: int, parts: Sequence[SealedBatch]) -> None:
        """Replace a batch the collector found too large by its parts, in one transaction.

        The parts go to the end of the queue: send order does not matter for correctness, only
        the offsets do, and those were made durable when the batch was sealed.
        """
        with self.transaction() as conn:
            parent = conn.execute("SELECT p.batch_id, p.pseq FROM pending p JOIN batches b ON b.batch_id = p.batch_id "
                                  "WHERE b.seq = ?", (seq,)).fetchone()
            conn.execute("DELETE FROM batches WHERE seq = ?", (seq,))
            conn.executemany(
                "INSERT INTO batches (batch_id, created, records, occurrences, encoding, body) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(p.batch_id, p.created, p.records, p.occurrences, p.encoding, p.body) for p in parts],
            )
            if parent is not None:  # the parts stand for the parent's number until all are acknowledged
                conn.execute("DELETE FROM pending WHERE batch_id = ?", (parent[0],))
                conn.executemany("INSERT INTO pending (batch_id, pseq) VALUES (?, ?)",
                                 [(p.batch_id, parent[1]) for p in parts])

    def requeue_dead_letters(self) -> int:
        """Put every dead letter back in the queue under its own batch id (a replay is still a no-op)."""
        with self.transaction() as conn:
            moved = conn.execute(
                "INSERT OR IGNORE INTO batches (batch_id, created, records, occurrences, encoding, body) "
                "SELECT batch_id, created, records, occurrences, encoding, body FROM dead_letters ORDER BY dead_at"
            ).rowcount
            conn.execute("DELETE FROM dead_letters")
        return int(moved)

    def dead_letters(self) -> list[tuple[str, int, int | None, str, float]]:
        rows = self._query("SELECT batch_id, records, status, reason, dead_at FROM dead_letters ORDER BY dead_at")
        return [(str(r[0]), int(r[1]), r[2], str(r[3]), float(r[4])) for r in rows]

    # --- bookkeeping -----------------------------------------------------------------------------------

    def set_kv(self, key: str, value: str) -> None:
        with self.transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, value))

    def get_kv(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self._query("SELECT key, value FROM kv")}

    def queued_bodies(self) -> list[tuple[bytes, str]]:
        """Every queued body and its encoding, oldest first (for `test`: what `once` will send)."""
        return [(bytes(body), str(encoding)) for body, encoding in
                self._query("SELECT body, encoding FROM batches ORDER BY seq")]

    def holds_batches(self, n: int) -> bool:
        """Whether the queue holds at least `n` batches, those in flight included (the reader's
        seal policy asks). Counts at most `n` rows: a long queue costs no more than a short one."""
        return int(self._query("SELECT count(*) FROM (SELECT 1 FROM batches LIMIT ?)", (n,))[0][0]) >= n

    def queued_bytes(self) -> int:
        return int(self._query("SELECT total(length(body)) FROM batches")[0][0])

    def import_legacy(self, marker: str, value: str, batches: Sequence[SealedBatch],
                      files: Sequence[tuple[str, FileIdentity, int]]) -> ImportOutcome:
        """Queue the old script's pending batches, record its offsets and the import's `marker`, in
        one transaction; or, if an import was recorded before, change nothing.

        Crash argument, line by line:
        - before BEGIN, or anywhere before COMMIT (the `during_import` crash point is there):
          nothing changed, no marker; importing again does it all. No loss, no double.
        - COMMIT is atomic and durable: after it, batches, offsets and marker are all on disk; an
          import again finds the marker and stores nothing. No loss, no double.
        - the batch ids are fixed by the files' digest, so even a batch that reached the collector
          by some other path is a duplicate there.
        A file the agent already has a record of keeps that record (its offset is the agent's own).
        """
        with self.transaction() as conn:
            return _import_legacy(conn, marker, value, batches, files)

    def stats(self) -> QueueStats:
        batches, records, occurrences, nbytes, oldest = self._query(
            "SELECT count(*), total(records), total(occurrences), total(length(body)), min(created) FROM batches"
        )[0]
        dead, dead_records = self._query("SELECT count(*), total(records) FROM dead_letters")[0]
        disk = sum(p.stat().st_size for p in self.path.parent.glob(DB_NAME + "*") if p.is_file())
        return QueueStats(
            int(batches), int(records), int(occurrences), int(nbytes),
            float(oldest) if oldest is not None else None,
            int(dead), int(dead_records), disk,
        )


def _jsonable(value: object) -> object:
    """A column value for JSON: bytes (fingerprints) as {"hex": ...}."""
    return {"hex": value.hex()} if isinstance(value, bytes) else value


def _from_json(value: object) -> object:
    return bytes.fromhex(value["hex"]) if isinstance(value, dict) else value


class Delivered:
    """delivered.json: per file, its row as of the newest batch settled at the collector.

    The queue database holds the only copy of the offsets, so a destroyed database used to mean
    reading every file again and counting what was delivered twice (issue 9, hole 10). This small
    file, beside it and written by rename (so it is always one whole version), keeps what is needed
    to resume without that: each file's row (identity, fingerprints, offset: every column, so it
    follows the `files` table as it grows) from the `sealed` snapshot of the newest batch such that
    it and every batch sealed before it were acknowledged (or dead-lettered). `reset-state` resumes
    from it when the database's own offsets are gone. Kept on the uploader's connection only.
    """

    def __init__(self, path: Path, producer: str = "") -> None:
        self.path = path
        self.producer = producer  # written into the file: whose stream ranges `reset-state` asks the collector for
        self._entries: dict[int, tuple[int, dict[str, object]]] | None = None

    def load(self) -> dict[int, tuple[int, dict[str, object]]]:
        """fid -> (batch number, row); empty when the file is absent. Raises ValueError if damaged."""
        if self._entries is None:
            try:
                document = json.loads(self.path.read_bytes())
            except FileNotFoundError:
                document = {"files": []}
            self._entries = {int(item["row"]["fid"]): (int(item["pseq"]), dict(item["row"]))
                             for item in document["files"]}
        return self._entries

    def recorded_producer(self) -> str:
        """The producer id this file was written under ('' for a file from before it)."""
        document = json.loads(self.path.read_bytes())
        producer = document.get("producer", "") if isinstance(document, dict) else ""
        return producer if isinstance(producer, str) else ""

    def rows(self) -> list[dict[str, object]]:
        """The recorded rows as column -> value, ready to insert into a new `files` table."""
        return [{key: _from_json(value) for key, value in row.items()} for _, row in self.load().values()]

    def restart(self, known: set[int], rows: list[dict[str, object]] | None = None) -> None:
        """For a new queue (a new producer, numbering from 1): keep the rows of the files in `known`
        (`rows`, the new queue's own, else the file's), under number 0, so the new queue's first
        acknowledgements replace them."""
        if rows is None:
            try:
                rows = [row for _, row in self.load().values()]
            except (OSError, ValueError, KeyError, TypeError):
                rows = []
        else:
            rows = [{key: _jsonable(value) for key, value in row.items()} for row in rows]
        self._entries = {}
        self.advance([(0, rows)], known)

    def advance(self, settled: list[tuple[int, list[dict[str, object]]]], known: set[int]) -> None:
        """Take the newest row per file from `settled` (batch number, rows), drop files the queue has
        forgotten, and replace the file durably. Raises DiskFullError when it cannot be written."""
        try:
            entries = dict(self.load())
        except (OSError, ValueError, KeyError, TypeError):
            entries = {}  # a damaged delivered.json is rewritten from what the queue knows now
        for pseq, rows in settled:
            for row in rows:
                fid = int(row["fid"])  # type: ignore[call-overload]
                if fid not in entries or entries[fid][0] <= pseq:
                    entries[fid] = (pseq, row)
        entries = {fid: entry for fid, entry in entries.items() if fid in known}
        document = {"version": 1, "producer": self.producer,
                    "files": [{"pseq": pseq, "row": row} for pseq, row in entries.values()]}
        temporary = self.path.with_name(self.path.name + ".new")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(json.dumps(document, separators=(",", ":")).encode())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
            directory = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as exc:
            raise DiskFullError(Message("cannot write {path} ({error})", path=self.path,
                                        error=exc.strerror or exc)) from exc
        self._entries = entries


@dataclass(frozen=True)
class ImportOutcome:
    """`Spool.import_legacy`: `already` is the marker found for these very files, `other` one for
    other files (nothing was stored in either case); `skipped` the paths the agent already follows."""

    already: str | None = None
    other: str | None = None
    skipped: tuple[str, ...] = ()


def _import_legacy(conn: sqlite3.Connection, marker: str, value: str, batches: Sequence[SealedBatch],
                   files: Sequence[tuple[str, FileIdentity, int]]) -> ImportOutcome:
    """The body of `Spool.import_legacy`'s transaction (see there for the crash argument)."""
    for key, found in conn.execute("SELECT key, value FROM kv WHERE key LIKE 'legacy_import:%'"):
        return ImportOutcome(already=str(found)) if key == marker else ImportOutcome(other=str(found))
    conn.executemany(
        "INSERT OR IGNORE INTO batches (batch_id, created, records, occurrences, encoding, body) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [(b.batch_id, b.created, b.records, b.occurrences, b.encoding, b.body) for b in batches],
    )
    crash_point("during_import")
    skipped = []
    now = time.time()
    for path, identity, offset in files:
        if conn.execute("SELECT 1 FROM files WHERE (dev = ? AND ino = ?) OR path = ?",
                        (identity.dev, identity.ino, path)).fetchone():
            skipped.append(path)
            continue
        conn.execute(
            "INSERT INTO files (path, source, dev, ino, fp_len, fp_hash, offset, status, updated) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, 'active', ?)",
            (path, path, identity.dev, identity.ino, identity.fp_len, identity.fp_hash, offset, now),
        )
    conn.execute("INSERT INTO kv (key, value) VALUES (?, ?)", (marker, value))
    return ImportOutcome(skipped=tuple(skipped))


def _file_state(row: Any) -> FileState:
    fid, path, stream, dev, ino, fp_len, fp_hash, offset, status = row[:9]
    identity = FileIdentity(int(dev), int(ino), int(fp_len), bytes(fp_hash))
    anchor = Anchor(int(row[9]), int(row[10]), bytes(row[11])) if len(row) > 9 and row[9] else None
    return FileState(int(fid), str(path), str(stream), identity, int(offset), str(status), anchor)
