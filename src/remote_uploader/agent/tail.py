"""Which files to read, under which identity, from which offset: following files through rotation.

`Tailer.events()` is one pass over everything the configured globs match; the runner consumes it:
`once` one pass, `forever` one every `read.poll_interval` seconds (polling is the source of
truth) and `growth()` between them. The follower is given narrow parts (`Collaborators`: its
records, where reading goes on, the stop, the configuration in force), never the agent. The rules:

- A *record* (a row of the spool's ``files`` table, a fid) is one stream of content: identified by
  device + inode + a fingerprint of its first bytes + its anchor (a hash of the bytes just before
  the offset it has counted to, `source.Anchor`), never by its path. Paths only say where the
  content is now. A record's offset never goes back; content that is replaced gets a new record.
  Files that start alike (a shared header, one file the start of another) are told apart by the
  anchor and by name: a copy of a record's content is looked for only at its rotated names.
- Files are found in two sets: the *live* files (what the globs match now) and the *rotated* files
  (the usual rotated names of a live file in its directory: ``access.log.1``,
  ``access.log-20261128``, ``access.log-2026-11-28.1``; compressed ones skipped). A live file
  nobody knows is new and read from 0. A rotated file is read only when it continues a record
  (by inode, or by fingerprint), or, at start-up, when it was written after the agent last looked
  (rotations while the agent was stopped).
- rename + create: the record keeps following the renamed inode (its fd stays open even if it was
  deleted) until it has been idle for `read.rotate_grace` and is read to its end, its final
  unterminated line included; the new file at the live path is a new record read from 0.
- copytruncate / truncation / replaced content / inode reuse: the record's inode is shorter than
  the offset or no longer holds the fingerprint and the anchor. The content is looked for at its
  rotated names by both (the copy, ``access.log.1``): found, the record moves to the copy and reads on from
  its offset (the bytes written between our last read and the copy); not found, the unread rest
  is gone (logged) and the record is forgotten. The inode's new content is a new record from 0.
- Bytes count only once they are known to be the record's: after each read, and before its bytes
  enter the batch, the file must still start with the record's fingerprint. A copytruncate between
  two reads (while we are behind) would otherwise have us count the new content at the old
  content's offsets: doubled (the new content is a new record) and, past the copy's bytes we then
  skip, lost. On a mismatch nothing of that read is counted and the record moves to the copy.
- The scan a pass starts with ages while the pass reads: a copy not found in it is looked for in a
  fresh scan before the content is given up.
- A new file at a rotated name of a record's that holds the record's content while the record's
  file still holds it too (the copy of a live file, before the truncate) is not read at all: it
  holds the same bytes. A file nobody knows at a rotated name (the globs may match it) that is
  empty, or shorter than a fingerprint and still growing, is identified at a later look: a copy
  being written cannot be told from new content yet. Anywhere else a file is its own stream:
  when the evidence cannot decide, read (a skipped file is lost for ever).
- A final line without a newline: in a live file, its bytes up to its last separator are counted
  once the file has been idle `read.partial_line_idle`; the rest (an address may be growing:
  `client=10.0.0.1` then `23`) waits for the byte after it, however long. A rotated or deleted
  file can no longer grow: its final line is taken whole once it has been idle `read.rotate_grace`.
  A `regex` source matches whole lines: it takes nothing of a live file's unterminated line.

Threads: `events()` and `growth()` run on the reading thread only. `lag()` may be called from any
thread (stats, metrics): it takes `lock`, which a step holds only while it opens or closes descriptors.
"""

from __future__ import annotations

import fnmatch
import glob
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeVar

from remote_uploader.agent.source import (
    ANCHOR_BYTES,
    COMPRESSED_SUFFIXES,
    FINGERPRINT_BYTES,
    Anchor,
    BlockReader,
    Chunk,
    FileIdentity,
    SourceFile,
    SourceProblem,
    expand_sources,
    fingerprint,
    identify,
)
from remote_uploader.config import Config, SourceConfig
from remote_uploader.errors import DiskFullError

if TYPE_CHECKING:
    from remote_uploader.agent.extract import Extractor
    from remote_uploader.agent.parallel import ParallelScanner, Part
    from remote_uploader.agent.spool import FileState

log = logging.getLogger(__name__)

Key = tuple[int, int]  # (device, inode)
T = TypeVar("T")

ROTATED_SUFFIX = re.compile(r"[.-][0-9][0-9._-]*")  # what follows the live name: .1, -20261128, -2026-11-28.1
FORGET_AFTER = 24 * 3600.0  # a record whose file is nowhere to be found is kept this long (a remount)
CLOSE_INACTIVE = 300.0  # a live file unchanged this long has its descriptor closed (reopened on growth)
LAST_SEEN_KEY = "tail_last_seen"  # kv: when the agent last looked at its files (rotations while stopped)
LAST_SEEN_EVERY = 10.0

ACTIVE = "active"  # at a path the globs match
ROTATED = "rotated"  # renamed away or deleted (still open): read to its end, then let go
COPY = "copy"  # the content found by fingerprint in another inode; its offset may be past the copy's end


@dataclass
class Scan:
    files: dict[Key, SourceFile]  # the live files (glob matches) and the rotated names beside them
    problems: list[SourceProblem]


def scan(sources: Sequence[SourceConfig], *, skip_compressed: bool, names: Iterable[str] = ()) -> Scan:
    """The live files (glob matches) and the rotated names beside them (and beside `names`)."""
    matched, problems = expand_sources(sources, skip_compressed=skip_compressed)
    files: dict[Key, SourceFile] = {found.key: found for found in matched}
    bases = {found.path for found in matched} | set(names)
    bases |= {os.path.expanduser(p) for s in sources for p in s.paths if not glob.has_magic(p)}
    live_paths = {found.path for found in matched}
    for path in rotated_names(bases):
        if path in live_paths or path.endswith(COMPRESSED_SUFFIXES):
            continue
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in files:
            files[(st.st_dev, st.st_ino)] = SourceFile(path, None, st.st_dev, st.st_ino, st.st_size, st.st_mtime)
    return Scan(files, problems)


def rotated_names(bases: Iterable[str]) -> list[str]:
    """Existing files named like rotations of `bases` (``base.1``, ``base-20261128``), sorted."""
    by_dir: dict[str, set[str]] = {}
    for base in bases:
        directory, name = os.path.split(base)
        if name:
            by_dir.setdefault(directory or ".", set()).add(name)
    found: list[str] = []
    for directory, names in by_dir.items():
        try:
            entries = os.listdir(directory)
        except OSError:
            continue
        # An entry is a rotated name of `name` if it is `name` then a rotation suffix, which starts
        # with "." or "-": only the entry's own "." and "-" need trying (not every name per entry).
        for entry in entries:
            if any(entry[i] in ".-" and entry[:i] in names and ROTATED_SUFFIX.fullmatch(entry, i)
                   for i in range(1, len(entry))):
                found.append(os.path.join(directory, entry))
    return sorted(found)


@dataclass
class Tracked:
    """A record being followed, with what this process knows beyond the database row."""

    fid: int
    stream: str  # the stream label: the live path the content was first found at (records' `source` field)
    path: str  # where the content is now
    identity: FileIdentity
    status: str
    fd: int | None = None
    size: int = -1  # at the last look; -1: not looked at yet in this process
    mtime: float = -1.0  # at the last look
    pos: int = 0  # reading position at the last look (committed offset or past the in-memory batch)
    live: bool = False
    rotated_at: float | None = None  # monotonic time the file left the live set
    changed_at: float = field(default_factory=time.monotonic)  # monotonic time its size last changed
    missing_since: float | None = None
    followed: int = -1  # number of the last poll that found its content in place
    anchor: Anchor | None = None  # the bytes just before the last counted offset (None: nothing counted yet)

    @property
    def key(self) -> Key:
        return self.identity.dev, self.identity.ino

    @property
    def copy(self) -> bool:
        return self.status == COPY


# --- what the follower produces ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Read:
    """Bytes of record `fid` up to `end`, known to be the record's (read, then checked intact).

    `chunk`: whole lines to extract (a view of the reader's buffer, valid only until the follower
    resumes); or `part`: counts the extraction workers already made of a backlog. `source` is the
    configured source whose extractor applies; `stream` the label its records carry. `anchor`
    (the bytes just before the last line end counted) is committed with the offset it stands at."""

    fid: int
    stream: str
    source: int
    end: int
    chunk: Chunk | None = None
    part: Part | None = None
    anchor: Anchor | None = None


@dataclass(frozen=True)
class Rotated:
    """Record `fid`'s file left its live path (renamed to `now_at`, or deleted: None)."""

    fid: int
    stream: str
    now_at: str | None


@dataclass(frozen=True)
class Truncated:
    """Record `fid`'s file no longer holds its content (truncated, replaced, inode reused); what
    happens to the content follows: a Read of its copy, or Gone with `unread` bytes lost."""

    fid: int
    stream: str
    unread: int


@dataclass(frozen=True)
class Gone:
    """Record `fid` is let go: the consumer seals any of its bytes still in memory *before* the
    follower deletes the record (SQLite gives a deleted highest rowid to the next insert: a new
    record could otherwise get this fid while the in-memory batch carries the old file's offset)."""

    fid: int
    reason: str


@dataclass(frozen=True)
class Problem:
    """A configured path that cannot be read (said once per path and reason)."""

    path: str
    reason: str


Event = Read | Rotated | Truncated | Gone | Problem
# A follower's step: the events in order; `growth` returns whether any open file had grown.
Events = Generator[Event, None, None]


# --- what the follower is given ---------------------------------------------------------------------------
# Narrow parts, not the agent: the follower reads and identifies files and keeps its records; it
# neither drives the pipeline nor sees the batch, the queue or the uploader. The runner builds these
# (`runner.Agent.collaborators`) and consumes what the follower yields.


class Progress(Protocol):
    """What the consumer tells the follower: where a record's reading goes on."""

    def offset(self, fid: int) -> int | None:
        """The committed offset, or past the bytes of it already consumed into memory (never read
        twice); None when the record no longer exists."""
        ...


class Registry(Protocol):
    """The records the follower keeps: the spool's ``files`` table (where each content is, its
    identity and status) and the last-seen time. Offsets are not written here: they move only with
    the batch that covers them, in the consumer's transaction (`Spool.commit`). Each write is one
    transaction, durable when it returns (retried while the disk is full: the runner's adapter)."""

    def get_kv(self) -> dict[str, str]: ...

    def files(self) -> list[FileState]: ...

    def register_file(self, path: str, stream: str, identity: FileIdentity) -> int: ...

    def update_file(self, fid: int, *, identity: FileIdentity | None = None, status: str | None = None,
                    path: str | None = None) -> None: ...

    def forget_files(self, fids: Sequence[int]) -> None: ...

    def set_kv(self, key: str, value: str) -> None: ...


class Setup(Protocol):
    """The configuration in force (`runner.Pipeline`): the sources and reading settings, and one
    extractor per source. A reload replaces it whole, between two steps of the follower."""

    @property
    def config(self) -> Config: ...

    @property
    def extractors(self) -> Sequence[Extractor]: ...


@dataclass(frozen=True)
class Collaborators:
    """Everything the follower is given. `pipeline` and `scanner` are getters: a reload puts a new
    pipeline (and, with new sources, new extraction workers) in force between two steps, and the
    next step reads by it."""

    registry: Registry
    progress: Progress
    stop: threading.Event  # set: end the step at the next file or block (nothing half counted)
    pipeline: Callable[[], Setup]
    scanner: Callable[[], ParallelScanner | None]  # extraction workers for large backlogs, if any


@dataclass(frozen=True)
class Lag:
    path: str
    behind: int
    status: str
    open: bool


class Tailer:
    """The follower: follows the configured files and *produces*, step by step, the reads and
    events of the module rules (`events()`: one pass; `growth()`: the open files' appends); the
    runner consumes each step (`Agent.consume`: extract, batch, seal, queue), acting on every event
    before the follower resumes. It owns the identity bookkeeping and its records (`Registry`:
    where each content is, its status, the last-seen time); offsets and the queue are the
    consumer's, and reach it only as `Progress`."""

    def __init__(self, given: Collaborators) -> None:
        self.registry = given.registry
        self.progress = given.progress
        self.stop = given.stop
        self.pipeline = given.pipeline
        self.scanner = given.scanner
        self.lock = threading.Lock()
        self.tracked: dict[int, Tracked] = {}
        self.polls = 0
        self.patience = 0.0  # forever: how long a configured path may be missing before we say so
        self.problem_since: dict[tuple[str, str], float] = {}
        self.said: set[tuple[str, str]] = set()
        self.ignored_copies: set[Key] = set()
        # Unknown rotated files to look at again at the next pass, whatever their age: too short to
        # identify yet (their size at our look), or renamed between the scan and our look (-1).
        self.recheck: dict[Key, int] = {}
        self.single_pass = False  # `once`: no second look (a short rotated file is taken as it is)
        self.last_seen_written = 0.0
        self.scanned = float("inf")  # when the last scan started (none yet: no rotated file is new)
        # When the last *whole* pass started its scan: what "last looked" means. None until one ran
        # in this process: an agent stopped during start-up, or in its first pass, has not looked,
        # and noting "now" would hide the files rotated while it was stopped from its next start.
        self.looked_at: float | None = None
        self.noted: list[Event] = []  # events noted where nothing yields (see `_with_notes`)
        self._matcher: tuple[object, dict[str, int], list[tuple[int, str]]] | None = None  # see source_index
        kv = self.registry.get_kv()
        self.last_seen: float | None = float(kv[LAST_SEEN_KEY]) if LAST_SEEN_KEY in kv else None
        for state in self.registry.files():
            self.tracked[state.fid] = Tracked(state.fid, state.stream or state.path, state.path, state.identity,
                                              state.status, pos=state.offset, live=state.status == ACTIVE,
                                              anchor=state.anchor)

    # --- the pass ---------------------------------------------------------------------------------------

    def events(self) -> Events:
        """One pass: read every followed file from where it stands to its current end, and find new
        content (see the module rules); yields what it read and what happened, in order."""
        yield from self._with_notes(self._pass())

    def _with_notes(self, events: Generator[Event, None, T]) -> Generator[Event, None, T]:
        """`events`, with the problems and rotations noted on the way (deep in helpers that do not
        yield) given out before each event and at the end."""
        while True:
            yield from self._notes()
            try:
                event = next(events)
            except StopIteration as done:
                result: T = done.value
                yield from self._notes()
                return result
            yield event

    def _notes(self) -> Iterator[Event]:
        while self.noted:
            yield self.noted.pop(0)

    def _pass(self) -> Events:
        self.polls += 1
        # Rotated files nobody knows are read if written since we last looked: they were at the live
        # path after our last scan (rotated twice between two polls, or while the agent was stopped).
        since = self.last_seen - 2 * LAST_SEEN_EVERY if self.polls == 1 and self.last_seen else self.scanned - 1.0
        self.scanned = time.time()
        found = self._scan()
        self._report(found.problems)
        for t in sorted(self.tracked.values(), key=lambda t: (t.live, t.fid)):  # rotated ones first
            if self.stop.is_set():
                return
            if t.fid in self.tracked:
                yield from self._follow(t, found)
        owned = {t.key for t in self.tracked.values()}
        for key, seen in sorted(found.files.items(), key=lambda item: item[1].path):
            if self.stop.is_set():
                return
            if key not in owned and (seen.live or seen.mtime >= since or key in self.recheck):
                yield from self._discover(seen, found, since)
        for key in [key for key in self.recheck if key not in found.files or key in owned]:
            del self.recheck[key]
        self.looked_at = self.scanned
        self._note_last_seen()

    def close(self) -> None:
        """Close every descriptor (the records stay) and note when we last looked (not at all when
        the disk is full at shutdown: a last-seen time older than it should be is only a wider
        window for rotations while stopped, and rotated files we hold are known by inode)."""
        with self.lock:
            for t in self.tracked.values():
                self._close_fd(t)
        try:
            self._note_last_seen(force=True)
        except DiskFullError as exc:
            log.warning("event=last_seen_not_written reason=%r", str(exc))

    # --- known content --------------------------------------------------------------------------------

    def _follow(self, t: Tracked, found: Scan) -> Events:
        seen = found.files.get(t.key)
        now = time.monotonic()
        if seen is None and t.fd is None:
            yield from self._missing(t, now)
            return
        t.missing_since = None
        index = seen.source_index if seen is not None and seen.source_index is not None else self.source_index(t.stream)
        if index is None:  # its source is no longer configured: stop following it, keep the record
            with self.lock:
                self._close_fd(t)
            return
        self._place(t, seen, now)
        if t.fd is None and seen is not None and (seen.size, seen.mtime) == (t.size, t.mtime) and t.followed >= 0:
            t.followed = self.polls  # closed, and unchanged since we last read it: nothing to do
            return
        fd = t.fd if t.fd is not None else self._open(seen.path if seen else t.path, t.key)
        if fd is None:
            return
        with self.lock:
            t.fd = fd
        yield from self._catch_up(t, fd, index, now, found)

    def _catch_up(self, t: Tracked, fd: int, index: int, now: float, found: Scan | None) -> Events:
        """Read the record's file (open at `fd`) from where it stands to its end, if it still holds
        the record's content; else follow the content to its copy or let it go (see `_replaced`)."""
        st = os.fstat(fd)
        t.mtime = st.st_mtime
        if st.st_size == t.size and t.pos >= t.size and t.followed >= 0:
            t.followed = self.polls  # nothing new (t.pos, what we consumed, only moves when we read)
            self._maybe_let_go(t, now)
            return
        pos = self._position(t)
        if pos is None:
            return
        shrunk = st.st_size < pos and not t.copy
        if shrunk or ((st.st_size != t.size or t.followed < 0) and not self._same_content(t, fd)):
            yield from self._replaced(t, found, st.st_size, pos)
            return
        t.followed = self.polls
        if st.st_size != t.size:
            t.size, t.changed_at = st.st_size, now
        if st.st_size > pos and not (yield from self._read(t, fd, pos, index, st.st_mtime)):
            yield from self._replaced(t, found, os.fstat(fd).st_size, t.pos)  # replaced while we read it
            return
        self._maybe_let_go(t, now)

    def growth(self) -> Generator[Event, None, bool]:
        """Between two passes: read what was appended to the files held open (one `fstat` each).
        Returns True if any of them had changed size.

        Cheap enough to run several times a second, so a line is read within a fraction of the
        poll interval. New files, rotations, and files closed after CLOSE_INACTIVE wait for the
        next pass; a file found shorter or replaced is handled as the pass would (`_catch_up`).
        """
        grew = False
        for t in list(self.tracked.values()):
            if self.stop.is_set():
                break
            fd = t.fd
            if fd is None or t.followed < 0 or t.fid not in self.tracked or os.fstat(fd).st_size == t.size:
                continue
            grew = True
            index = self.source_index(t.stream)
            if index is not None:
                yield from self._with_notes(self._catch_up(t, fd, index, time.monotonic(), None))
        return grew

    def _place(self, t: Tracked, seen: SourceFile | None, now: float) -> None:
        """Note where the content is now (live or rotated, which path) and store a change."""
        live = seen is not None and seen.live
        if t.live and not live:
            t.rotated_at = now
            log.info("event=file_rotated path=%s now_at=%s offset=%d", t.stream,
                     seen.path if seen else "(deleted)", t.pos)
            self.noted.append(Rotated(t.fid, t.stream, seen.path if seen else None))
        elif live:
            t.rotated_at = None
        elif t.rotated_at is None:
            t.rotated_at = now  # found rotated at start-up: the grace starts now
        t.live = live
        status = COPY if t.copy else ACTIVE if live else ROTATED
        path = seen.path if seen is not None else t.path
        if (status, path) != (t.status, t.path):
            self.registry.update_file(t.fid, status=status, path=path)
            t.status, t.path = status, path

    def _same_content(self, t: Tracked, fd: int) -> bool:
        """Is the file still the record's content (same inode, head and anchor: see `_intact`)?
        Lengthen a short fingerprint on the way."""
        old = t.identity
        if os.fstat(fd).st_ino != old.ino or not self._intact(t, fd):
            return False
        if old.fp_len < FINGERPRINT_BYTES:
            longer = identify(fd)
            if longer.fp_len > old.fp_len:
                self.registry.update_file(t.fid, identity=longer)
                t.identity = longer
        return True

    def _position(self, t: Tracked) -> int | None:
        """Committed offset, or past the bytes already consumed into memory (never read twice)."""
        pos = self.progress.offset(t.fid)
        if pos is not None:
            t.pos = pos
        return pos

    def _read(self, t: Tracked, fd: int, pos: int, index: int, mtime: float) -> Generator[Event, None, bool]:
        """Read from `pos` to the end; False if the content was replaced while we read (nothing of
        the new content counted: the caller looks for the copy and reads on from our offset there)."""
        pipeline = self.pipeline()
        read = pipeline.config.read
        extractor = pipeline.extractors[index]
        idle = time.time() - mtime
        # What of a final unterminated line to take (module rules): None nothing, False the part up
        # to its last separator (a live file), True all of it (a file that can no longer grow).
        partial: bool | None = None
        if not t.live:
            partial = True if idle >= read.rotate_grace else None
        elif idle >= read.partial_line_idle and not getattr(extractor, "per_line", False):
            partial = False
        try:
            intact = yield from self._read_intact(t, fd, pos, index, extractor, partial)
        except OSError as exc:
            try:
                intact = self._intact(t, fd)  # e.g. a worker found the file shorter: truncated under us
            except OSError:
                intact = True
            if intact:
                self._problem(t.path, exc.strerror or str(exc))
        self._position(t)
        return intact

    def _read_intact(self, t: Tracked, fd: int, pos: int, index: int, extractor: Extractor,
                     partial: bool | None) -> Generator[Event, None, bool]:
        """Count bytes only once they are known to be the record's content: read, check, then feed.

        A file can be truncated and written again between two reads (copytruncate while we are
        behind). A read after that returns the *new* content at the old content's offsets: counting
        it would double it (the new content is a new record, read from 0) and move the offset past
        old bytes that only the copy still holds (lost). So after each read, and before its bytes
        enter the batch, the file must still start with the record's fingerprint: every byte of
        that read was then read before any truncation. (Worker scan of a large backlog, then the
        tail block by block, with that check between reading and feeding.) Each Read is consumed
        (counted into the batch) before this resumes: the anchor then becomes the record's evidence.
        """
        scanner = self.scanner()
        size = os.fstat(fd).st_size
        if scanner is not None and scanner.worth_it(size - pos):
            for part in scanner.scan(fd, t.path, index, pos, size):  # a part arrives after its read
                if self.stop.is_set():
                    return True
                part_anchor = Anchor.at(fd, part.end_offset)  # workers' parts end at a line end
                if not self._intact(t, fd):
                    scanner.close()  # abandon the scan: answers still in the workers' pipes are stale
                    return False
                yield Read(t.fid, t.stream, index, part.end_offset, part=part, anchor=part_anchor)
                self._counted(t, part_anchor, part.end_offset)
                pos = part.end_offset
        chunks = BlockReader(fd, pos, self.pipeline().config.read.block_size, extractor.context,
                             expected=size - pos).chunks(partial)
        while not self.stop.is_set():
            chunk = next(chunks, None)
            if chunk is None:
                break
            # At the chunk's last line end: a final line taken unfinished may still be written into
            # (a writer that preallocates and fills), and must not be evidence against its record.
            newline = chunk.buf.rfind(b"\n", chunk.start, chunk.end)
            anchor = Anchor.at(fd, chunk.end_offset - (chunk.end - newline - 1)) if newline >= 0 else None
            if not self._intact(t, fd):
                return False
            yield Read(t.fid, t.stream, index, chunk.end_offset, chunk=chunk, anchor=anchor)
            self._counted(t, anchor, chunk.end_offset)
        return True

    def _counted(self, t: Tracked, anchor: Anchor | None, end: int) -> None:
        """Bytes up to `end` were consumed: reading goes on from there, and the anchor (read before
        the check that found the file intact, so it is the record's bytes) is the new evidence. The
        consumer commits it with the offset it stands at or below (a line end: `_read_intact`)."""
        t.pos = max(t.pos, end)
        if anchor is not None:
            t.anchor = anchor

    def _intact(self, t: Tracked, fd: int) -> bool:
        """Does the file still hold the record's content: its head fingerprint, and the anchor
        (the bytes just before the last counted offset)?

        The head alone is shared by files that start alike (a header of 1 KiB or more): rewritten
        under the same header, the file would pass and be read on at the old offset. The anchor is
        what the record read last; content replaced since does not hold it there. A copy shorter
        than the anchor (made before our last read of its original: copytruncate's window) holds
        only the head: it was taken as the copy on that evidence, and nothing in it is read.
        """
        length, digest = fingerprint(fd, t.identity.fp_len)
        if (length, digest) != (t.identity.fp_len, t.identity.fp_hash):
            return False
        anchor = t.anchor
        if anchor is None or (t.copy and os.fstat(fd).st_size < anchor.pos):
            return True
        return anchor.held_by(fd)

    def _maybe_let_go(self, t: Tracked, now: float) -> None:
        """Close a rotated file once read to its end and idle for the grace (the record stays: a
        deleted one is forgotten after FORGET_AFTER, so a copy of it is still known meanwhile)."""
        if t.fd is None or t.pos < t.size:
            return
        idle = now - max(t.changed_at, t.rotated_at or 0.0)
        if t.live:
            if idle >= CLOSE_INACTIVE:
                with self.lock:
                    self._close_fd(t)
            return
        if idle < self.pipeline().config.read.rotate_grace:
            return
        with self.lock:
            self._close_fd(t)
        log.info("event=rotated_file_done path=%s offset=%d", t.path, t.pos)

    def _replaced(self, t: Tracked, found: Scan | None, size: int, pos: int) -> Events:
        """The record's inode no longer holds its content: follow a copy, or let the content go."""
        with self.lock:
            self._close_fd(t)
        copy = self._find_copy(t, found) if found is not None else None
        if found is None or copy is None:
            # The scan is as old as this pass, and reading other files may have taken a while: a
            # copy made since is not in it (nor is one renamed since, .1 -> .2). Look again before
            # giving the content up; forgetting it here would read its copy from 0 as unseen later.
            found = self._scan()
            copy = self._find_copy(t, found)
        unread = max(0, t.size - pos) if t.size >= 0 else 0
        if copy is not None:
            seen, identity = copy
            log.info("event=copy_found path=%s copy=%s offset=%d copy_size=%d", t.stream, seen.path, pos, seen.size)
            yield Truncated(t.fid, t.stream, 0)
            yield from self._move(t, seen, identity, found)
            return
        log.warning("event=file_replaced path=%s offset=%d size_now=%d unread_bytes_lost=%d "
                    "cause=truncated_or_inode_reused action=read_new_content_from_start", t.path, pos, size, unread)
        yield Truncated(t.fid, t.stream, unread)
        yield from self._forget(t, "content replaced")

    def _move(self, t: Tracked, seen: SourceFile, identity: FileIdentity, found: Scan) -> Events:
        """The record's content is now `seen` (a copy): read on from the record's offset there."""
        self.registry.update_file(t.fid, identity=identity, path=seen.path, status=COPY)
        t.identity, t.path, t.status, t.live = identity, seen.path, COPY, False
        t.rotated_at, t.size, t.followed, t.missing_since = time.monotonic(), -1, -1, None
        yield from self._follow(t, found)

    def _find_copy(self, t: Tracked, found: Scan) -> tuple[SourceFile, FileIdentity] | None:
        """A file at a rotated name of the record's that holds the record's content (`_holds`).

        A file whose inode a record verified in this pass, and that still holds that record's
        content, is that record's; any other may be the copy, even at an inode a stale record still
        names. File systems reuse inodes: between two passes logrotate deletes the oldest rotation
        and creates the copy, which may get the deleted file's inode number, verified for its
        record earlier in the pass (`growth()` looks for copies between passes). Skipped on
        that stale verification, the copy was not found, the record forgotten, and the copy read
        from 0 at the next pass as a rotation nobody knew: counted twice."""
        if t.identity.fp_len == 0:
            return None
        verified = {other.key: other for other in self.tracked.values()
                    if other.followed == self.polls and other is not t}
        for seen in found.files.values():
            if seen.key == t.key or seen.size < t.identity.fp_len or not is_rotation_of(seen.path, t.stream):
                continue
            fd = self._open(seen.path, seen.key)
            if fd is None:
                continue
            try:
                other = verified.get(seen.key)
                if other is not None and self._intact(other, fd):
                    continue
                if self._holds(fd, t, in_place=False):
                    return seen, identify(fd, t.identity.fp_len)
            finally:
                os.close(fd)
        return None

    def _holds(self, fd: int, t: Tracked, *, in_place: bool) -> bool:
        """Is the file at `fd` (at a rotated name of the record's) a copy of record `t`'s content?

        The evidence: the record's head fingerprint, and its anchor (the bytes just before what it
        has counted) at the same place. A copy shorter than the anchor was made before our last
        read of the original. While the original still holds the record's content (`in_place`,
        and still intact now), the copy must be the start of it: its first and last bytes are
        compared with the original's. Once the original has lost it (truncated since: the copy was
        made in copytruncate's window), the head is all the evidence left, and the file is taken
        for the copy: reading a real copy from 0 would count it twice. A file longer than the
        original still in place is never its copy (`_outgrows`).
        """
        head = t.identity
        if head.fp_len == 0 or fingerprint(fd, head.fp_len) != (head.fp_len, head.fp_hash):
            return False
        size = os.fstat(fd).st_size
        if t.anchor is not None and size >= t.anchor.pos:
            return t.anchor.held_by(fd) and not (in_place and self._outgrows(t, size))
        return self._starts(t, fd, size) if in_place else True

    def _outgrows(self, t: Tracked, size: int) -> bool:
        """Is a file of `size` bytes longer than record `t`'s file, which still holds the record's
        content? Then it is no copy of that content (a copy never holds more than its original,
        which only grows while in place): it is another file that starts the same way, such as the
        rotation of a file we never saw whose header is longer than a fingerprint and so matches
        the head and anchor of a new file holding only that header (generative finding F3, seed 7001)."""
        original = t.fd if t.fd is not None else self._open(t.path, t.key)
        if original is None:
            return False
        try:
            return self._intact(t, original) and os.fstat(original).st_size < size
        finally:
            if original != t.fd:
                os.close(original)

    def _starts(self, t: Tracked, fd: int, size: int) -> bool:
        """Is the file at `fd` (`size` bytes) the start of record `t`'s file, or has that file lost
        the record's content since it was last verified (then nothing can be compared: True)?"""
        original = t.fd if t.fd is not None else self._open(t.path, t.key)
        if original is None:
            return True
        try:
            if not self._intact(t, original):
                return True
            if os.fstat(original).st_size < size:
                return False
            last = min(ANCHOR_BYTES, size)
            return all(os.pread(fd, n, at) == os.pread(original, n, at)
                       for n, at in ((min(FINGERPRINT_BYTES, size), 0), (last, size - last)))
        finally:
            if original != t.fd:
                os.close(original)

    def _missing(self, t: Tracked, now: float) -> Events:
        if t.missing_since is None:
            t.missing_since = now
            t.live = False
            log.info("event=file_missing path=%s offset=%d", t.path, t.pos)
        elif now - t.missing_since >= FORGET_AFTER:
            yield from self._forget(t, f"not seen for {FORGET_AFTER:.0f}s")

    # --- new content --------------------------------------------------------------------------------------

    def _discover(self, seen: SourceFile, found: Scan, since: float) -> Events:
        """A file no record holds: a copy of known content, rotated while we were stopped, or new."""
        fd = self._open(seen.path, seen.key)
        if fd is None:
            if not seen.live:
                # Renamed since the scan (a long pass, rotations meanwhile): by the next pass it may
                # be older than `since`, yet nobody has looked at it.
                self.recheck[seen.key] = -1
            return
        identity = identify(fd)
        owner = self._copy_owner(seen.path, fd, identity)
        if owner is not None and owner.followed == self.polls:
            os.close(fd)  # a copy of content still in place (copytruncate, before the truncate): same bytes
            if seen.key not in self.ignored_copies:
                self.ignored_copies.add(seen.key)
                log.info("event=copy_ignored path=%s copy_of=%s", seen.path, owner.path)
            return
        if owner is not None:  # its content moved here (copied while we were not looking, then gone)
            moved = identify(fd, owner.identity.fp_len)
            os.close(fd)
            log.info("event=content_moved path=%s now_at=%s offset=%d", owner.stream, seen.path, owner.pos)
            yield from self._move(owner, seen, moved, found)
            return
        if not seen.live and seen.mtime < since and seen.key not in self.recheck:
            os.close(fd)  # an old rotation, from before the agent looked: not ours
            return
        size = os.fstat(fd).st_size
        if (not seen.live or self._may_be_a_copy(seen.path)) and (size == 0 or (
                identity.fp_len < FINGERPRINT_BYTES and self.recheck.get(seen.key) != size and not self.single_pass)):
            # Too short to tell whether it is the copy of a record (copytruncate's copy is empty
            # for a moment, then written): taken as new now, a copy would be read from 0 again.
            # Identified once it has bytes and its size held still between two looks. (A file at a
            # live name no rotation produces is never a copy: it is read at once.)
            self.recheck[seen.key] = size
            os.close(fd)
            return
        self.recheck.pop(seen.key, None)
        if not seen.live:
            log.info("event=rotated_unseen path=%s size=%d action=read_from_start", seen.path, seen.size)
        name = seen.path if seen.live else _live_name(seen.path)
        fid = self.registry.register_file(seen.path, name, identity)
        t = Tracked(fid, name, seen.path, identity, ACTIVE, live=seen.live)
        if not seen.live:
            self.registry.update_file(fid, status=ROTATED)
            t.status, t.rotated_at = ROTATED, time.monotonic()
        with self.lock:
            t.fd = fd
            self.tracked[fid] = t
        log.info("event=file_new path=%s fid=%d size=%d", seen.path, fid, seen.size)
        yield from self._follow(t, found)

    def _copy_owner(self, path: str, fd: int, identity: FileIdentity) -> Tracked | None:
        """The record this file is a copy of, if any: only a record whose name `path` is a rotated
        name of (`access.log.1` for `access.log`) can have a copy there, and only on the evidence
        of `_holds`. A file that merely starts like another (a copy of its first line, an
        identical file at another name, a shared header) is not a copy: it is read, since a file
        wrongly skipped is lost for ever."""
        if identity.fp_len == 0:
            return None
        size = os.fstat(fd).st_size
        for t in self._rotated_from(path):
            if t.identity.fp_len == 0:
                continue
            in_place = t.followed == self.polls
            if t.identity.fp_len <= identity.fp_len:
                # Content that moved here (its record's file is gone) must reach the record's anchor:
                # a shorter file that shares the head is a look-alike as likely as a copy; read it.
                reaches = in_place or t.anchor is None or size >= t.anchor.pos
                if reaches and self._holds(fd, t, in_place=in_place):
                    return t
            elif in_place and self._starts(t, fd, size):  # shorter than the record's fingerprint
                return t
        return None

    def _may_be_a_copy(self, path: str) -> bool:
        """Is `path` a rotated name of a record's (where a copy of its content could be made)?"""
        return bool(self._rotated_from(path))

    def _rotated_from(self, path: str) -> list[Tracked]:
        """The records `path` is a rotated name of (one set lookup per record, not a match)."""
        bases = rotation_bases(path)
        return [t for t in self.tracked.values() if t.stream in bases] if bases else []

    # --- what file events mean (forever, agent/watch.py) -----------------------------------------------------

    def watch_dirs(self) -> set[str]:
        """The directories whose events concern us: each configured path's or glob's (globbed if
        its directory has wildcards), and each followed file's (rotated names live beside it)."""
        dirs: set[str] = set()
        for source in self.pipeline().config.sources:
            for pattern in source.paths:
                directory = os.path.dirname(os.path.expanduser(pattern)) or "."
                dirs.update(glob.glob(directory) if glob.has_magic(directory) else [directory])
        # Every record's (even one no longer configured: a spare watch is harmless, while
        # `source_index` per record, a match against every pattern, cost more than the pass).
        dirs.update(os.path.dirname(t.path) or "." for t in self.tracked.values())
        return dirs

    def needs_pass(self, named: Iterable[str], written: Iterable[str]) -> bool:
        """Do these file events call for a pass, or does reading the open files' growth cover them?

        A name created, renamed or deleted that a glob matches, or that is a record's file or a
        rotated name of one, may be a rotation or a new file: only a pass decides. A write to such
        a path that no open descriptor covers (a file closed after CLOSE_INACTIVE, or not taken up
        yet) too. Everything else in a watched directory (other logs in /var/log) is not ours."""
        # Events name absolute paths (the watched directory's); configured paths may be relative.
        absolute = os.path.abspath
        open_paths = {absolute(t.path) for t in self.tracked.values() if t.fd is not None}
        names = {absolute(n) for t in self.tracked.values() for n in (t.stream, t.path)}
        patterns = [absolute(os.path.expanduser(p)) for s in self.pipeline().config.sources for p in s.paths]

        def ours(path: str) -> bool:
            return (path in names or bool(rotation_bases(path) & names)
                    or any(fnmatch.fnmatchcase(path, p) if glob.has_magic(p) else path == p for p in patterns))

        return any(ours(path) for path in named) or any(path not in open_paths and ours(path) for path in written)

    def waiting_on_time(self) -> bool:
        """Is there something only a pass does, and only once some time has passed? A file held
        open with bytes past what its record counted (an unfinished last line, taken after
        `read.partial_line_idle`), a rotated or copied file not let go yet (its grace, its final
        line; writes to it once deleted give no event), a file to identify at the next look, a
        problem not said yet (a missing path, after `patience`). While file events cover every
        watched directory and this is False, events are all that can bring work (a write to a
        closed or let-go file is an event on its directory, and calls for a pass), and the
        safety-net pass may come less often (`forever`, EVENTS_PASS_EVERY). A record whose file
        is missing is forgotten after FORGET_AFTER: a day, no matter a few seconds."""
        if self.recheck or any(key not in self.said for key in self.problem_since):
            return True
        return any(t.fd is not None and (not t.live or t.pos < t.size) for t in self.tracked.values())

    # --- bookkeeping ------------------------------------------------------------------------------------------

    def _scan(self) -> Scan:
        return scan(self.pipeline().config.sources, skip_compressed=self.pipeline().config.read.skip_compressed,
                    names=[t.stream for t in self.tracked.values() if self.source_index(t.stream) is not None])

    def source_index(self, name: str) -> int | None:
        """The configured source a stream name belongs to (None: no longer configured): the first
        source with a path equal to it or a glob matching it.

        Asked for every record at every pass: the patterns are expanded once per configuration
        (a pass over 100 quiet files spent two thirds of its time expanding them again)."""
        sources = self.pipeline().config.sources
        matcher = self._matcher
        if matcher is None or matcher[0] is not sources:
            exact: dict[str, int] = {}
            globs: list[tuple[int, str]] = []
            for index, source in enumerate(sources):
                for pattern in source.paths:
                    pattern = os.path.expanduser(pattern)
                    if glob.has_magic(pattern):
                        globs.append((index, pattern))
                    else:
                        exact.setdefault(pattern, index)
            matcher = self._matcher = (sources, exact, globs)
        best = matcher[1].get(name)
        for index, pattern in matcher[2]:
            if best is not None and index >= best:
                break
            if fnmatch.fnmatchcase(name, pattern):
                return index
        return best

    def _open(self, path: str, key: Key) -> int | None:
        """Open `path` if it is still the inode the scan saw (it may have been rotated since)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            if os.path.exists(path):
                self._problem(path, exc.strerror or str(exc))
            return None
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != key:
            os.close(fd)
            return None
        return fd

    def _close_fd(self, t: Tracked) -> None:
        if t.fd is not None:
            os.close(t.fd)
            t.fd = None

    def _forget(self, t: Tracked, why: str) -> Events:
        yield Gone(t.fid, why)  # consumed (its bytes in memory sealed) before the record is deleted
        with self.lock:
            self._close_fd(t)
            self.tracked.pop(t.fid, None)
        self.registry.forget_files([t.fid])
        log.info("event=file_forgotten path=%s fid=%d reason=%r", t.path, t.fid, why)

    def _report(self, problems: list[SourceProblem]) -> None:
        """Say each problem once, and a missing file only after `patience` seconds: between a
        rename and the create of the new file, a live path is missing for a moment."""
        now = time.monotonic()
        current = {p.path: p.reason for p in problems}
        for path, reason in current.items():
            first = self.problem_since.setdefault((path, reason), now)
            missing = not os.path.lexists(path)
            if (path, reason) not in self.said and (not missing or now - first >= self.patience):
                self._problem(path, reason)
        for key in [key for key in self.problem_since if key[0] not in current]:
            del self.problem_since[key]
            self.said.discard(key)

    def _problem(self, path: str, reason: str) -> None:
        if (path, reason) not in self.said:
            self.said.add((path, reason))
            self.noted.append(Problem(path, reason))

    def _note_last_seen(self, *, force: bool = False) -> None:
        if self.looked_at is None:
            return  # no whole pass yet: the time in the database is still when we last looked
        now = time.time()
        if force or now - self.last_seen_written >= LAST_SEEN_EVERY:
            self.registry.set_kv(LAST_SEEN_KEY, repr(self.looked_at))
            self.last_seen_written = now

    # --- for stats and metrics (any thread) ----------------------------------------------------------------------

    def lag(self) -> list[Lag]:
        """Per followed file: bytes not yet read (by size now), its status, whether it is held open.

        Files the globs match that no pass has taken up yet count too, all their bytes behind: while
        reading is paused (a full queue) no pass runs, and a log created by a rotation meanwhile
        is where the writer's lines pile up."""
        result: list[Lag] = []
        matched, _problems = expand_sources(self.pipeline().config.sources,
                                            skip_compressed=self.pipeline().config.read.skip_compressed)
        with self.lock:
            for t in list(self.tracked.values()):
                if self.source_index(t.stream) is None:
                    continue  # no longer configured: not followed
                try:
                    st = os.fstat(t.fd) if t.fd is not None else os.stat(t.path)
                except OSError:
                    continue
                if (st.st_dev, st.st_ino) != t.key:
                    continue  # its path holds another file now (its content was compressed away): nothing to read
                result.append(Lag(t.path, max(0, st.st_size - t.pos), t.status, t.fd is not None))
            known = {t.key for t in self.tracked.values()} | set(self.ignored_copies)
        result += [Lag(f.path, f.size, ACTIVE, False) for f in matched if (f.dev, f.ino) not in known]
        return result


def is_rotation_of(path: str, name: str) -> bool:
    """Could a rotation of the log `name` produce `path`? Same directory, `name` then a rotation
    suffix (``.1``, ``-20261202``, ``-2026-12-02.1``), maybe compressed (``.1.gz``)."""
    return name in rotation_bases(path)


def rotation_bases(path: str) -> set[str]:
    """Every log name a rotation of which `path` could be: ``x.log.1.2`` -> ``x.log``, ``x.log.1``."""
    directory, entry = os.path.split(path)
    for suffix in COMPRESSED_SUFFIXES:
        if entry.endswith(suffix):
            entry = entry[: -len(suffix)]
            break
    return {os.path.join(directory, entry[:i]) for i in range(1, len(entry))
            if entry[i] in ".-" and ROTATED_SUFFIX.fullmatch(entry, i)}


def _live_name(path: str) -> str:
    """``/var/log/access.log.1`` -> ``/var/log/access.log``: the stream a rotated file came from."""
    directory, name = os.path.split(path)
    for i in range(1, len(name)):  # the longest rotation suffix: access.log-2026-11-28.1 -> access.log
        if name[i] in ".-" and ROTATED_SUFFIX.fullmatch(name, i):
            return os.path.join(directory, name[:i])
    return path

