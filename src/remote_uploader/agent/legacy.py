"""`import-legacy`: the old script's pending addresses and read offsets, taken over exactly once.

The old script kept what it had not uploaded yet in ``/tmp/pending_upload_queue.json`` and how far
it had read each log in ``/tmp/file_offsets.json``. Ignoring them loses the first and, worse,
re-reads every log from its start, counting again what the old script already sent. The
import moves both into the state directory:

- the pending addresses become queued batches (the uploader sends them like any other), under
  batch ids derived from a digest of the two files, so even a batch sent twice is one at the
  collector;
- each offset becomes a file record (identity taken now, offset as recorded), so the first run
  reads on from where the old script stopped;
- a marker keyed by the same digest is written in the same transaction (`Spool.import_legacy`):
  importing again finds it and does nothing, and a crash before COMMIT leaves nothing at all.

The old files are only read, never changed: the way back stays open. The exact format was never
written down, so the plausible shapes are accepted (docs/migration.md lists them) and anything
else is refused whole, naming the file and the entry, before anything is stored.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from _blake2 import blake2b  # hashlib's blake2b without loading OpenSSL (see source.fingerprint)
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from remote_uploader.agent.batch import encode_sealed
from remote_uploader.agent.faults import crash_point
from remote_uploader.agent.source import FileIdentity, identify
from remote_uploader.agent.spool import DB_NAME, SealedBatch, Spool, StateLock
from remote_uploader.config import Config
from remote_uploader.errors import LegacyImportError, RemoteUploaderError
from remote_uploader.i18n import Message
from remote_uploader.protocol import MAX_COUNT, Record, canonical_ip, format_timestamp

log = logging.getLogger(__name__)

MARKER_PREFIX = "legacy_import:"
RECORDS_PER_BATCH = 5_000
MAX_FILE_BYTES = 256 * 1024 * 1024  # a pending queue larger than this is not something the old script wrote

ADDRESS_KEYS = ("ip", "address", "addr")
COUNT_KEYS = ("count", "hits", "n")
TIME_KEYS = ("time", "timestamp", "ts", "first_seen", "last_seen")
OFFSET_OBJECT_KEYS = ("offset", "inode", "size", "mtime")


@dataclass
class Pending:
    """Per canonical address: occurrences, earliest and latest time (epoch seconds)."""

    counts: dict[str, list[float]] = field(default_factory=dict)

    def add(self, ip: str, count: int, first: float, last: float) -> None:
        known = self.counts.get(ip)
        if known is None:
            self.counts[ip] = [count, first, last]
        else:
            known[0] += count
            known[1] = min(known[1], first)
            known[2] = max(known[2], last)


@dataclass(frozen=True)
class OldOffset:
    path: str
    offset: int
    inode: int | None


@dataclass
class Report:
    """What the import did, line by line, for the CLI to print."""

    imported: bool
    lines: list[str]


def _refuse(path: Path, where: str, problem: Message) -> LegacyImportError:
    return LegacyImportError(Message("{path}: {where}: {problem}; nothing was imported (the file is unchanged; "
                                     "docs/migration.md lists the shapes understood)",
                                     path=path, where=where, problem=problem))


def _load_json(path: Path) -> Any:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        problem = Message("cannot read {path}: {error}", path=path, error=exc.strerror or str(exc))
        raise LegacyImportError(problem) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise LegacyImportError(Message("{path}: not a regular file", path=path))
        if st.st_size > MAX_FILE_BYTES:
            raise _refuse(path, "file", Message("larger than {limit} bytes", limit=MAX_FILE_BYTES))
        with os.fdopen(os.dup(fd), "rb") as handle:
            raw = handle.read()
    finally:
        os.close(fd)
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _refuse(path, "file", Message("not JSON ({error})", error=exc)) from exc


def _bad_time(value: Any) -> Message:
    return Message("a time must be epoch seconds or an ISO 8601 time, got {value!r}", value=value)


def _time(value: Any, path: Path, where: str) -> float:
    if isinstance(value, bool):
        raise _refuse(path, where, _bad_time(value))
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return moment.timestamp()
    raise _refuse(path, where, _bad_time(value))


def _address(value: Any, path: Path, where: str) -> str:
    """The address in the extractor's canonical spelling (so it merges with what the agent counts)."""
    canonical = canonical_ip(value.strip()) if isinstance(value, str) else None
    if canonical is None:
        raise _refuse(path, where, Message("not an IP address the agent counts: {value!r}", value=value))
    return canonical


def _count(value: Any, path: Path, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_COUNT:
        raise _refuse(path, where, Message("a count must be a whole number from 1 to {limit}, got {value!r}",
                      limit=MAX_COUNT, value=value))
    return value


def read_pending(path: Path) -> Pending:
    """Accepted: a list of address strings (one occurrence each); a list of objects with an address
    (`ip`, `address` or `addr`) and maybe a count (`count`, `hits`, `n`) and times (`time`,
    `timestamp`, `ts`, `first_seen`, `last_seen`); an object from address to count."""
    data = _load_json(path)
    when = os.stat(path).st_mtime  # entries without a time: seen at the latest when the file was written
    pending = Pending()
    if isinstance(data, dict):
        for key, count in data.items():
            where = f"entry {key!r}"
            pending.add(_address(key, path, where), _count(count, path, where), when, when)
        return pending
    if not isinstance(data, list):
        raise _refuse(path, "file", Message("expected a list of addresses or an object from address to count, "
                                            "got {kind}",
                      kind=type(data).__name__))
    for index, item in enumerate(data):
        where = f"entry {index}"
        if isinstance(item, str):
            pending.add(_address(item, path, where), 1, when, when)
            continue
        if not isinstance(item, dict):
            raise _refuse(path, where, Message("expected an address or an object, got {kind}",
                                               kind=type(item).__name__))
        unknown = sorted(set(item) - {*ADDRESS_KEYS, *COUNT_KEYS, *TIME_KEYS})
        if unknown:
            raise _refuse(path, where, Message("unknown key {key!r} (understood: {known})", key=unknown[0],
                          known=", ".join((*ADDRESS_KEYS, *COUNT_KEYS, *TIME_KEYS))))
        addresses = [key for key in ADDRESS_KEYS if key in item]
        counts = [key for key in COUNT_KEYS if key in item]
        if len(addresses) != 1 or len(counts) > 1:
            raise _refuse(path, where, Message("needs exactly one address key ({keys}) and at most one count",
                          keys=", ".join(ADDRESS_KEYS)))
        times = [_time(item[key], path, where) for key in TIME_KEYS if key in item] or [when]
        count = _count(item[counts[0]], path, where) if counts else 1
        pending.add(_address(item[addresses[0]], path, where), count, min(times), max(times))
    return pending


def read_offsets(path: Path) -> list[OldOffset]:
    """Accepted: an object from path to byte offset (or to an object with `offset` and maybe `inode`)."""
    data = _load_json(path)
    if not isinstance(data, dict):
        raise _refuse(path, "file", Message("expected an object from file path to byte offset, got {kind}",
                      kind=type(data).__name__))
    found = []
    for name, value in data.items():
        where = f"entry {name!r}"
        if not name:
            raise _refuse(path, where, Message("an empty file path"))
        inode = None
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(OFFSET_OBJECT_KEYS))
            if unknown or "offset" not in value:
                raise _refuse(path, where, Message("expected a byte offset or an object with `offset` "
                                                   "(understood: {known})",
                              known=", ".join(OFFSET_OBJECT_KEYS)))
            inode = value.get("inode")
            if inode is not None and (isinstance(inode, bool) or not isinstance(inode, int)):
                raise _refuse(path, where, Message("`inode` must be a whole number, got {value!r}", value=inode))
            value = value["offset"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise _refuse(path, where, Message("a byte offset must be a whole number of 0 or more, got {value!r}",
                                               value=value))
        found.append(OldOffset(name, value, inode))
    return found


def digest_of(paths: list[Path]) -> str:
    """What identifies one import: the two files' names and contents."""
    hasher = blake2b(digest_size=16)
    for path in paths:
        hasher.update(str(path).encode() + b"\0")
        hasher.update(path.read_bytes() if path.exists() else b"")
        hasher.update(b"\0")
    return hasher.hexdigest()


def batches_for(pending: Pending, source: str, agent: str, digest: str, compress: bool) -> list[SealedBatch]:
    """Queue entries for the pending addresses; ids fixed by the digest (a resend is a duplicate)."""
    records = [Record(ip, int(count), format_timestamp(first), format_timestamp(last), source)
               for ip, (count, first, last) in sorted(pending.counts.items())]
    now = time.time()
    return [encode_sealed(agent, f"legacy-{digest}-{n}", records[start:start + RECORDS_PER_BATCH], now, compress)
            for n, start in enumerate(range(0, len(records), RECORDS_PER_BATCH))]


def files_for(offsets: list[OldOffset]) -> tuple[list[tuple[str, FileIdentity, int]], list[str]]:
    """File records for the offsets that still fit their file; notes on the ones that do not."""
    records: list[tuple[str, FileIdentity, int]] = []
    notes: list[str] = []
    for old in offsets:
        try:
            fd = os.open(old.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            notes.append(f"{old.path}: skipped ({exc.strerror}); if it appears, it is read from its start")
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                notes.append(f"{old.path}: skipped (not a regular file)")
            elif old.inode is not None and old.inode != st.st_ino:
                notes.append(f"{old.path}: skipped (another file now: inode {st.st_ino}, the old offset was for "
                             f"inode {old.inode}); it is read from its start")
            elif st.st_size < old.offset:
                notes.append(f"{old.path}: skipped (now {st.st_size} bytes, shorter than the old offset "
                             f"{old.offset}: rotated or truncated since); it is read from its start")
            else:
                records.append((old.path, identify(fd), old.offset))
        finally:
            os.close(fd)
    return records, notes


def import_legacy(config: Config, pending: str | None = None, offsets: str | None = None) -> Report:
    """Move the old script's pending addresses and offsets into the state directory, once."""
    pending_path, offsets_path = config.legacy.files(pending, offsets)
    present = [path for path in (pending_path, offsets_path) if path.exists()]
    if not present:
        raise LegacyImportError(Message("neither {pending} nor {offsets} exists: nothing to import",
                                        pending=pending_path, offsets=offsets_path))
    addresses = read_pending(pending_path) if pending_path.exists() else Pending()
    old_offsets = read_offsets(offsets_path) if offsets_path.exists() else []
    digest = digest_of([pending_path, offsets_path])
    batches = batches_for(addresses, str(pending_path), config.agent.id, digest, config.server.compress)
    records, notes = files_for(old_offsets)
    lock = StateLock(config.agent.state_dir)
    lock.acquire()
    try:
        spool = Spool(config.agent.state_dir)
        try:
            outcome = spool.import_legacy(MARKER_PREFIX + digest, json.dumps({
                "at": time.time(), "pending_file": str(pending_path), "offsets_file": str(offsets_path),
                "records": len(addresses.counts), "files": len(records)}), batches, records)
        finally:
            spool.close()
    finally:
        lock.release()
    crash_point("after_import")
    if outcome.already is not None:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(json.loads(outcome.already)["at"]))
        return Report(False, [f"already imported on {when} (same files); nothing done"])
    if outcome.other is not None:
        raise LegacyImportError(Message(
            "another import of the old script's files was made before ({earlier}); these files changed since, "
            "and importing them again would send their pending addresses a second time. Nothing was imported",
            earlier=outcome.other))
    occurrences = sum(int(count) for count, _first, _last in addresses.counts.values())
    lines = [f"imported {len(addresses.counts)} pending addresses ({occurrences} occurrences) from {pending_path} "
             f"as {len(batches)} queued batches" if present.count(pending_path) else f"{pending_path}: not found",
             f"imported {len(records) - len(outcome.skipped)} read offsets from {offsets_path}"
             if present.count(offsets_path) else f"{offsets_path}: not found"]
    lines += notes
    lines += [f"{path}: skipped (the agent already follows it; its own offset is kept)" for path in outcome.skipped]
    lines.append("the old files were left as they are; the next `once` or `forever` sends the pending addresses")
    log.info("event=legacy_imported digest=%s records=%d batches=%d files=%d", digest, len(addresses.counts),
             len(batches), len(records) - len(outcome.skipped))
    return Report(True, lines)


def legacy_hint(config: Config) -> Message | None:
    """A hint when the old script's files are there and no import was ever made (None otherwise)."""
    paths = [path for path in config.legacy.files() if path.exists()]
    if not paths:
        return None
    if (config.agent.state_dir / DB_NAME).exists():
        try:
            spool = Spool(config.agent.state_dir, readonly=True)
        except RemoteUploaderError:
            return None  # a damaged or empty queue has its own message
        try:
            if any(key.startswith(MARKER_PREFIX) for key in spool.get_kv()):
                return None
        finally:
            spool.close()
    return Message("the old script's files are here ({files}) and were not imported: its pending addresses are "
                   "not sent and its logs are read again from their start. Run `remote-uploader import-legacy` "
                   "first (docs/migration.md)", files=", ".join(str(path) for path in paths))
