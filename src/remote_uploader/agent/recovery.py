"""`reset-state`: the documented way out of a damaged queue database.

The agent never deletes or rewrites a damaged queue by itself (that would hide a loss): it
refuses to start and names this command. Here the damaged file is moved aside (kept for
inspection), a new queue is created, and whatever can still be read is carried over.

Keeping the offsets is the default because it is the safe choice. When the database's `files`
table reads whole (a future schema, damage elsewhere), files resume where they were and the
queued batches are carried over: nothing delivered is sent twice, but queued batches that can
no longer be read are lost, and the command says how many.

When the offsets in the database cannot be read (a truncated, zero-filled or overwritten file),
files resume from delivered.json (`spool.Delivered`): each file's row as of the newest batch the
collector acknowledged with all before it. Nothing delivered is read again, and the batches that
were only queued are not carried over: their lines lie after those rows and are read again
(issue 9, hole 10). What delivered.json cannot know, the collector can: a batch it stored whose
answer never came back. So before resuming from delivered.json, the command asks the collector for
the byte ranges it stored of each stream of the producer that delivered.json names (docs/protocol.md,
"Streams"), and moves each file past the stored range that holds its row's offset. Only without a
readable delivered.json too is there no exact recovery: then
nothing is moved and the command refuses, and the operator chooses the re-read of every file
explicitly (--forget-offsets: what was delivered is counted again), or restores a backup.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from remote_uploader.agent.spool import DB_NAME, DELIVERED_NAME, Delivered, Spool, StateLock
from remote_uploader.errors import CorruptStateError

# Asks the collector, for a producer id, the ranges [start, end) it stored per stream; raises saying why not.
AskStreams = Callable[[str], dict[str, list[tuple[int, int]]]]


def reset_state(state_dir: Path, *, keep_offsets: bool, ask: AskStreams | None = None) -> list[str]:
    lock = StateLock(state_dir)
    lock.acquire()
    try:
        return _reset(state_dir, keep_offsets, ask)
    finally:
        lock.release()


def _reset(state_dir: Path, keep_offsets: bool, ask: AskStreams | None = None) -> list[str]:
    """Move the damaged queue aside and start a new one, resuming each file as exactly as can be.

    The offsets come from, in this order: the old database's `files` table (when it reads whole),
    carried over with its queued batches, which cover the bytes after those offsets; else
    delivered.json, without the queued batches (the bytes after its rows are read again, so
    carrying them would count them twice); else, only with `keep_offsets` False
    (--forget-offsets), nowhere: every file from its start.
    Dead letters are carried over whenever they can be read (delivered.json counts them as settled).
    A new queue is a new producer (a fresh random id) whose batch numbers start at 1, so
    delivered.json is rewritten to hold the rows it starts from, under number 0.
    """
    db = state_dir / DB_NAME
    if not db.exists():
        return [f"no queue database at {db}; nothing to reset"]
    delivered = _delivered_rows(state_dir)
    unreadable = _unreadable_offsets(db)
    source: str | None = None
    if keep_offsets:
        source = "queue" if unreadable is None else "delivered" if delivered is not None else None
    if keep_offsets and source is None:
        raise CorruptStateError(
            f"the recorded offsets cannot be read from {db} ({unreadable}), and there is no readable "
            f"{DELIVERED_NAME}; nothing was changed. There is no exact recovery without them: "
            "`remote-uploader reset-state --forget-offsets` reads every file again from its start, so what was "
            "already delivered is counted again; or restore the state directory from a backup"
        )
    stored_notes: list[str] = []
    if source == "delivered":
        assert delivered is not None
        stored_notes = _past_stored(delivered, _recorded_producer(state_dir), ask)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = state_dir / f"{DB_NAME}.damaged-{stamp}"
    for suffix in ("", "-wal", "-shm"):
        old = Path(str(db) + suffix)
        if old.exists():
            old.rename(Path(str(aside) + suffix))
    report = [f"moved the old queue database to {aside}"]
    salvaged = _salvage(aside, source == "queue")
    dropped = len(salvaged.pop("batches", ([], []))[1]) if source == "delivered" else 0
    fresh = Spool(state_dir)
    try:
        with fresh.transaction() as conn:
            for table, (columns, rows) in salvaged.items():
                if rows:  # by column name: a database from an older agent may lack columns added since
                    marks = ", ".join("?" * len(columns))
                    conn.executemany(f"INSERT OR IGNORE INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)
                report.append(f"recovered {len(rows)} rows of {table}")
            if source == "delivered":
                assert delivered is not None
                known_columns = {row[1] for row in conn.execute("PRAGMA table_info(files)")}
                for row in delivered:
                    names = [name for name in row if name in known_columns]
                    conn.execute(f"INSERT OR IGNORE INTO files ({', '.join(names)}) VALUES "
                                 f"({', '.join('?' * len(names))})", [row[name] for name in names])
                report.append(f"recovered the offsets of {len(delivered)} files from {DELIVERED_NAME} (what the "
                              "collector acknowledged): nothing delivered is read again")
                report.extend(stored_notes)
                if dropped:
                    report.append(f"{dropped} queued batches were not carried over: their lines are read again")
            cursor = conn.execute("SELECT * FROM files")
            columns = [column[0] for column in cursor.description]
            resumed = [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
            # From delivered.json: its rows as resumed (past what the collector stored), now under the new
            # producer's name. From the queue: delivered.json's own rows (the queue's offsets also cover
            # the batches carried over, which are not acknowledged yet).
            fresh.delivered.restart({int(row["fid"]) for row in resumed}, resumed if source == "delivered" else None)
    finally:
        fresh.close()
    missing = [t for t in ("batches", "dead_letters") if t not in salvaged and not (t == "batches" and dropped)]
    if missing and source != "delivered":
        report.append(f"could not read {', '.join(missing)} from the old database")
    if source is None:
        report.append("offsets were not kept: every file will be read again from its start")
    return report


def resume_past_stored(rows: list[dict[str, object]], stored: dict[str, list[tuple[int, int]]]) -> int:
    """Move each row's offset past the stored range of *its own stream* that holds it; the number moved.

    A range counts only when it holds the offset (start <= offset < end): the bytes from the offset
    on were stored. A range that starts above the offset leaves a gap of bytes that were not stored
    (a batch lost with the queue, sealed before one that was stored: two uploads in flight), so the
    row stays and those bytes, and the stored ones after them, are read again: counted twice, the
    residual risk (docs/reliability.md, 'Corrupt state'), never a loss. Ranges are keyed by the
    stream id, new for every incarnation of a file's content (`Spool.update_file`), so a range stored
    for other bytes (the same path or inode before a truncation, another file) never moves a row.
    """
    moved = 0
    for row in rows:
        offset = row.get("offset")
        if not isinstance(offset, int):
            continue
        for lo, hi in stored.get(str(row.get("stream_id") or ""), []):
            if lo <= offset < hi:
                row["offset"] = row["sent_end"] = hi
                moved += 1
                break
    return moved


def _past_stored(rows: list[dict[str, object]], producer: str, ask: AskStreams | None) -> list[str]:
    """Move `rows` (delivered.json's) past what the collector stored; the lines to report."""
    risk = ("a batch the collector stored but never acknowledged before the damage (at most "
            "server.upload_concurrency of them) is read again and counted twice")
    if not producer:
        return [f"{DELIVERED_NAME} names no producer (written by an older agent): {risk}"]
    if ask is None:
        return [f"the collector was not asked what it stored: {risk}"]
    try:
        stored = ask(producer)
    except Exception as exc:  # any failure to ask: the recovery goes on, as exact as without asking
        return [f"could not ask the collector what it stored ({exc}): {risk}"]
    moved = resume_past_stored(rows, stored)
    if moved:
        return [f"the collector had stored more of {moved} files than it acknowledged (answers lost): "
                "they resume after it"]
    return ["the collector had stored nothing past those offsets"]


def _recorded_producer(state_dir: Path) -> str:
    try:
        return Delivered(state_dir / DELIVERED_NAME).recorded_producer()
    except (OSError, ValueError):
        return ""


def _delivered_rows(state_dir: Path) -> list[dict[str, object]] | None:
    """The file rows recorded in delivered.json, or None when it is absent or cannot be read."""
    record = Delivered(state_dir / DELIVERED_NAME)
    if not record.path.exists():
        return None
    try:
        return record.rows()
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _unreadable_offsets(path: Path) -> str | None:
    """None when the `files` table of the database at `path` reads whole; else SQLite's complaint."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        return str(exc)
    try:
        conn.execute("SELECT * FROM files").fetchall()
    except sqlite3.Error as exc:
        return str(exc)
    finally:
        conn.close()
    return None


def _salvage(path: Path, keep_offsets: bool) -> dict[str, tuple[list[str], list[tuple[object, ...]]]]:
    """Per table that reads whole: its column names and rows."""
    tables = ["batches", "dead_letters"] + (["files"] if keep_offsets else [])
    found: dict[str, tuple[list[str], list[tuple[object, ...]]]] = {}
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return found
    try:
        for table in tables:
            try:
                cursor = conn.execute(f"SELECT * FROM {table}")
                found[table] = ([str(d[0]) for d in cursor.description], cursor.fetchall())
            except sqlite3.Error:
                continue
    finally:
        conn.close()
    return found
