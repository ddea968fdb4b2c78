"""`reset-state`: the documented way out of a damaged queue database.

The agent never deletes or rewrites a damaged queue by itself (that would hide a loss): it
refuses to start and names this command. Here the damaged file is moved aside (kept for
inspection), a new queue is created, and whatever can still be read is carried over: queued
and dead-lettered batches always (they are data), and the recorded offsets unless
--forget-offsets is given.

Keeping the offsets is the default because it is the safe choice: files resume where they
were, so nothing delivered is sent twice (batches that were queued and can no longer be read
are lost, and the command names them). Forgetting them reads every file from the start: nothing
is lost, but what was already delivered is counted again, so it takes an explicit flag.

When the offsets themselves cannot be read (a truncated, zero-filled or overwritten file),
nothing is moved and the command refuses: carrying on would silently re-read every file from its
start, which is exactly the re-send the default avoids. The operator then chooses that re-read
explicitly (--forget-offsets), or restores a backup.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from remote_uploader.agent.spool import DB_NAME, Spool, StateLock
from remote_uploader.errors import CorruptStateError


def reset_state(state_dir: Path, *, keep_offsets: bool) -> list[str]:
    lock = StateLock(state_dir)
    lock.acquire()
    try:
        return _reset(state_dir, keep_offsets)
    finally:
        lock.release()


def _reset(state_dir: Path, keep_offsets: bool) -> list[str]:
    db = state_dir / DB_NAME
    if not db.exists():
        return [f"no queue database at {db}; nothing to reset"]
    if keep_offsets:
        unreadable = _unreadable_offsets(db)
        if unreadable is not None:
            raise CorruptStateError(
                f"the recorded offsets cannot be read from {db} ({unreadable}); nothing was changed. "
                "There is no exact recovery without them: `remote-uploader reset-state --forget-offsets` "
                "reads every file again from its start, so what was already delivered is counted again; "
                "or restore the state directory from a backup"
            )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = state_dir / f"{DB_NAME}.damaged-{stamp}"
    for suffix in ("", "-wal", "-shm"):
        source = Path(str(db) + suffix)
        if source.exists():
            source.rename(Path(str(aside) + suffix))
    report = [f"moved the old queue database to {aside}"]
    salvaged = _salvage(aside, keep_offsets)
    fresh = Spool(state_dir)
    try:
        with fresh.transaction() as conn:
            for table, (columns, rows) in salvaged.items():
                if rows:  # by column name: a database from an older agent may lack columns added since
                    marks = ", ".join("?" * len(columns))
                    conn.executemany(f"INSERT OR IGNORE INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)
                report.append(f"recovered {len(rows)} rows of {table}")
    finally:
        fresh.close()
    missing = [t for t in ("batches", "dead_letters") if t not in salvaged]
    if missing:
        report.append(f"could not read {', '.join(missing)} from the old database")
    if not keep_offsets:
        report.append("offsets were not kept: every file will be read again from its start")
    return report


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
