"""Which files to read, what identifies them, and reading them in large blocks from an offset.

Identity is (device, inode, fingerprint of the first bytes), never the path or the inode alone:
logrotate renames files, copytruncate keeps the inode while replacing the content, and file
systems reuse inodes. The reader never holds more than one block (plus one line's carry-over)
in memory, whatever the size of the file or of its lines.
"""

from __future__ import annotations

import errno
import glob
import logging
import os
import stat
from _blake2 import blake2b  # hashlib.blake2b itself; see fingerprint() for why not through hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from remote_uploader.agent.extract import last_cut
from remote_uploader.config import SourceConfig

log = logging.getLogger(__name__)

FINGERPRINT_BYTES = 1024
ANCHOR_BYTES = 1024  # hashed just before a committed offset: see Anchor
MIN_BUFFER = 64 * 1024  # the smallest first buffer of a BlockReader told what it will read (`expected`)
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zip", ".lz4")


@dataclass(frozen=True)
class FileIdentity:
    """What makes two opens the same file. `fp_len` grows until the file has FINGERPRINT_BYTES."""

    dev: int
    ino: int
    fp_len: int
    fp_hash: bytes


def fingerprint(fd: int, length: int = FINGERPRINT_BYTES) -> tuple[int, bytes]:
    """Hash of the first `length` bytes (fewer if the file is shorter): (bytes hashed, digest).

    BLAKE2b from the interpreter's own `_blake2`, the very function `hashlib.blake2b` is: importing
    `hashlib` would also load OpenSSL's libcrypto (3.4 MiB resident in every agent process) for
    algorithms the agent never uses.
    """
    head = os.pread(fd, length, 0)
    return len(head), blake2b(head, digest_size=16).digest()


def identify(fd: int, fp_len: int = FINGERPRINT_BYTES) -> FileIdentity:
    st = os.fstat(fd)
    length, digest = fingerprint(fd, fp_len)
    return FileIdentity(st.st_dev, st.st_ino, length, digest)


@dataclass(frozen=True)
class Anchor:
    """A hash of the bytes just before `pos` (ANCHOR_BYTES of them, fewer near the start).

    The head fingerprint alone cannot tell two files apart that start alike: a fixed header of a
    KiB or more, or a file rewritten from the same first lines. The bytes just before the offset
    a record has read to (its last line end) are what that record has and a look-alike does not:
    they are hashed after each read that is counted, and stored with the offset in the seal
    transaction. A file is the record's content (still, or copied) only if it holds both the head
    and the anchor.
    """

    pos: int
    length: int
    digest: bytes

    @classmethod
    def at(cls, fd: int, pos: int) -> Anchor:
        length = min(ANCHOR_BYTES, pos)
        data = os.pread(fd, length, pos - length)
        return cls(pos, len(data), blake2b(data, digest_size=16).digest())

    def held_by(self, fd: int) -> bool:
        """Does the file hold these bytes at this place? (False if it is shorter.)"""
        return Anchor.at(fd, self.pos) == self


@dataclass(frozen=True)
class SourceFile:
    """A regular file found by a look at the sources: matched by a source's globs (`source_index`
    says which), or at a rotated name beside a matched file (`tail.scan`: no source, None)."""

    path: str
    source_index: int | None
    dev: int
    ino: int
    size: int
    mtime: float

    @property
    def live(self) -> bool:
        """At a path the globs match (else: a rotated name of a live file)."""
        return self.source_index is not None

    @property
    def key(self) -> tuple[int, int]:
        return self.dev, self.ino


# Source problems, in English (they are log values); `i18n.translate_known` shows them translated.
NO_MATCH = "no file matches this pattern"
ONLY_COMPRESSED = "matches only compressed files, which are skipped (read.skip_compressed)"
A_DIRECTORY = "skipped: a directory"
NOT_REGULAR = "skipped: not a regular file (FIFO, socket or device)"
LINK_LOOP = "symbolic link loop"
DANGLING_LINK = "dangling symbolic link"


@dataclass(frozen=True)
class SourceProblem:
    path: str
    reason: str


def expand_sources(
    sources: Sequence[SourceConfig], *, skip_compressed: bool = True
) -> tuple[list[SourceFile], list[SourceProblem]]:
    """Expand every source's globs into regular files, each (device, inode) once.

    A file matched twice (two globs, or a symlink to a matched file) would otherwise be read
    twice and every address in it counted twice. Directories, FIFOs, sockets, dangling links and
    link loops are reported, not read: reading a FIFO would block the agent forever. So is a glob
    that matches nothing: a typo in a pattern must not look like a quiet log to a cron job.
    """
    files: list[SourceFile] = []
    problems: list[SourceProblem] = []
    seen: set[tuple[int, int]] = set()
    for index, source in enumerate(sources):
        for pattern in source.paths:
            matches = sorted(glob.glob(os.path.expanduser(pattern))) if glob.has_magic(pattern) else [pattern]
            if not matches:
                problems.append(SourceProblem(pattern, NO_MATCH))
            elif skip_compressed and all(path.endswith(COMPRESSED_SUFFIXES) for path in matches):
                problems.append(SourceProblem(pattern, ONLY_COMPRESSED))
            for path in matches:
                if skip_compressed and path.endswith(COMPRESSED_SUFFIXES):
                    continue
                found = _stat_source(path, index, problems)
                if found and (found.dev, found.ino) not in seen:
                    seen.add((found.dev, found.ino))
                    files.append(found)
    return files, problems


def _stat_source(path: str, index: int, problems: list[SourceProblem]) -> SourceFile | None:
    try:
        st = os.stat(path)
    except OSError as exc:
        reason = LINK_LOOP if exc.errno == errno.ELOOP else (exc.strerror or str(exc))
        if exc.errno == errno.ENOENT and os.path.islink(path):
            reason = DANGLING_LINK
        problems.append(SourceProblem(path, reason))
        return None
    if not stat.S_ISREG(st.st_mode):
        problems.append(SourceProblem(path, A_DIRECTORY if stat.S_ISDIR(st.st_mode) else NOT_REGULAR))
        return None
    return SourceFile(path, index, st.st_dev, st.st_ino, st.st_size, st.st_mtime)


@dataclass
class Chunk:
    """A run of whole lines in the reader's buffer: buf[start:end], ending at file offset `end_offset`.

    `scan` is False for the middle of a run longer than a block with no separator in it: such a
    run cannot hold a delimited address, so it is skipped (and counted as a long line).
    """

    buf: bytearray
    start: int
    end: int
    end_offset: int
    scan: bool = True
    long_line: bool = False

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    def lines(self) -> int:
        return self.buf.count(b"\n", self.start, self.end)


class BlockReader:
    """Reads a file from `offset` in blocks of `block_size`, yielding chunks that end at a line end.

    Memory: one buffer of at most `context + block_size` bytes, reused. The bytes after the last
    newline of a block are carried to the front of the buffer for the next read; `context` bytes
    before each chunk are kept in place so the extractor can see what precedes the chunk's first
    byte. A line longer than the block is cut at its last separator byte, so it is scanned in
    pieces and never loaded whole.

    `expected` (the bytes the caller knows are there to read, e.g. a file's growth) sizes the
    first buffer: a reader made for a few appended lines allocates (and zeroes: `bytearray(n)`
    writes every byte) 64 KiB, not a whole block. A read that fills the buffer doubles it, up
    to the block, before anything is judged a long line, so chunks and long lines are exactly
    those of a whole-block buffer: only the allocation is smaller.
    """

    def __init__(self, fd: int, offset: int, block_size: int, context: int, expected: int | None = None) -> None:
        self.fd = fd
        self.context = context
        self.block_size = block_size
        first = block_size if expected is None else min(block_size, max(expected, MIN_BUFFER))
        self.buf = bytearray(context + first)
        self.view = memoryview(self.buf)
        self.base_offset = offset  # file offset of buf[context]
        self.read_pos = offset  # file offset of the next byte to read
        self.carry = 0  # bytes at buf[context:context+carry] not yet returned
        self._pending_cut: int | None = None
        self._load_context(offset)

    def _load_context(self, offset: int) -> None:
        want = min(self.context, offset)
        before = os.pread(self.fd, want, offset - want) if want else b""
        self.buf[: self.context] = before.rjust(self.context, b"\n")

    @property
    def offset(self) -> int:
        """File offset up to which everything has been returned as chunks."""
        return self.base_offset + (self._consumed() - self.context)

    def _consumed(self) -> int:
        return self._pending_cut if self._pending_cut is not None else self.context

    def _settle(self) -> None:
        """Move the carry-over (and its left context) to the front after the last chunk was used."""
        cut = self._pending_cut
        if cut is None:
            return
        data_end = self.context + self.carry
        self.buf[: data_end - cut + self.context] = self.buf[cut - self.context : data_end]
        self.base_offset += cut - self.context
        self.carry = data_end - cut
        self._pending_cut = None

    def next_chunk(self) -> Chunk | None:
        """The next run of complete lines, or None when only a partial line (or nothing) is left now."""
        self._settle()
        filled = self.context + self.carry
        while filled < len(self.buf):
            got = os.preadv(self.fd, [self.view[filled:]], self.read_pos)
            self.read_pos += got
            self.carry += got
            filled += got
            if filled < len(self.buf) or len(self.buf) >= self.context + self.block_size:
                break
            self._grow()  # filled a buffer smaller than the block: there may be more to read
        newline = self.buf.rfind(b"\n", self.context, filled)
        if newline >= 0:
            return self._chunk(newline + 1)
        if filled < len(self.buf):
            return None  # an incomplete line: wait for its end
        cut = last_cut(self.buf, self.context, filled)
        if cut > self.context:
            return self._chunk(cut, long_line=True)
        return self._chunk(filled, scan=False, long_line=True)

    def _grow(self) -> None:
        """Twice the buffer, at most the block (its data kept: nothing handed out is in it)."""
        size = min(self.context + self.block_size, 2 * len(self.buf))
        grown = bytearray(size)
        grown[: len(self.buf)] = self.buf
        self.buf, self.view = grown, memoryview(grown)

    def take_partial(self, *, whole: bool = True) -> Chunk | None:
        """Hand out the held-back final line: all of it (`whole`: the file can no longer grow, it
        was rotated away or deleted), or only up to its last separator (a live file).

        The bytes after the last separator of the data read so far could still become part of a
        longer token when the writer goes on (`client=10.0.0.1` + `23`): counting them now would
        count an address that is not the one written, and the offset would move past them. Up to
        a separator nothing can change meaning, since no address contains one and no rule reads
        across one (the cut the reader makes in lines longer than a block); the rest waits for
        the next byte. None when nothing can be handed out.
        """
        self._settle()
        if not self.carry:
            return None
        end = self.context + self.carry
        if not whole:
            end = last_cut(self.buf, self.context, end)
            if end <= self.context:
                return None
        return self._chunk(end)

    def _chunk(self, cut: int, *, scan: bool = True, long_line: bool = False) -> Chunk:
        self._pending_cut = cut
        end_offset = self.base_offset + (cut - self.context)
        return Chunk(self.buf, self.context, cut, end_offset, scan=scan, long_line=long_line)

    @property
    def pending(self) -> int:
        """Bytes read but not yet handed out (an incomplete final line)."""
        return self.context + self.carry - self._consumed()

    def chunks(self, partial: bool | None = None) -> Iterator[Chunk]:
        """The one read loop (the follower, `extract`'s whole-file count, `check`'s sample): every
        run of whole lines to the current end of the file, then, per `partial`, its final
        unterminated line: all of it (True: the file can no longer grow, or a whole-file count),
        up to its last separator (False: a live file idle long enough; see `take_partial`), or
        nothing (None: it waits for its end). A chunk is a view of the reader's buffer, valid
        until the next one is asked for."""
        while True:
            chunk = self.next_chunk()
            if chunk is None and partial is not None and self.pending:
                chunk = self.take_partial(whole=partial)
            if chunk is None:
                return
            yield chunk
