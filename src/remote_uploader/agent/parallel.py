"""Extraction of large backlogs across worker processes, merged back in file order.

`re` holds the GIL, so using both cores takes processes. The split keeps every guarantee of
the single-process reader because the workers only *count*: they never touch the queue or the
offsets. The main process consumes their results strictly in file order and feeds them to the
batch exactly as if it had scanned the blocks itself, so offsets still advance only in order and
only with the batch that covers them.

How a file is cut: the backlog [offset, end) is divided at nominal positions offset + k*block.
Each nominal position n becomes a real boundary with `boundary(fd, n)`: just after the first
newline at or after n-1 (or, within a line longer than BOUNDARY_SEARCH, just after the first
separator byte; failing both, n itself). Neighbouring tasks compute the same boundary from the
same bytes, so the ranges tile the backlog exactly, with no byte scanned twice or skipped.
Workers open the file through /proc/<pid>/fd/<fd> of the main process, so they read the very
inode the main process holds open even if the path was rotated away meanwhile.

Memory: a worker holds one range (block + at most BOUNDARY_SEARCH) and its counts; at most
2 x workers results are in flight; each part a worker returns has at most `cap` distinct
addresses (see `scan_parts`), so no batch ever needs more than `max_memory_ips` records.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from multiprocessing.pool import AsyncResult, Pool

from remote_uploader.agent.extract import SEPARATORS, Extractor, build_extractor, last_cut

BOUNDARY_SEARCH = 1024 * 1024
BOUNDARY_STEP = 64 * 1024
CONTEXT = 8


@dataclass(frozen=True, slots=True)
class Part:
    """Counts of a run of whole lines ending at file offset `end_offset`."""

    counts: dict[str, int]
    lines: int
    nbytes: int
    end_offset: int
    long_line: bool = False


@dataclass(frozen=True, slots=True)
class ExtractorSpec:
    """What a worker needs to rebuild a source's extractor (extractors hold caches, not sent)."""

    regex: str | None
    exclude: tuple[str, ...]
    engine: str = "auto"


def scan_parts(extractor: Extractor, buf: bytes | bytearray, start: int, end: int, end_offset: int, cap: int,
               *, scan: bool = True, long_line: bool = False) -> list[Part]:
    """Scan buf[start:end] into parts of at most `cap` distinct addresses each.

    A range holding more than `cap` distinct addresses (dense logs, a small max_memory_ips) is
    cut at line ends into enough pieces and each piece scanned again: each Part then fits in a
    batch on its own, and a batch can be sealed between two parts without splitting a range.
    """
    counts = extractor.scan(buf, start, end) if scan else {}
    if len(counts) <= cap:
        return [Part(counts, buf.count(b"\n", start, end), end - start, end_offset, long_line)]
    pieces = -(-len(counts) * 2 // cap)  # aim at half the cap per piece: one rescan, rarely two
    cuts = _line_cuts(buf, start, end, pieces)
    if len(cuts) < 2:
        return [Part(counts, buf.count(b"\n", start, end), end - start, end_offset, long_line)]
    parts: list[Part] = []
    for lo, hi in pairwise(cuts):
        parts += scan_parts(extractor, buf, lo, hi, end_offset - (end - hi), cap, scan=scan, long_line=long_line)
    return parts


def _line_cuts(buf: bytes | bytearray, start: int, end: int, pieces: int) -> list[int]:
    """start, then up to `pieces - 1` positions just after a newline (or separator), then end."""
    cuts = [start]
    step = (end - start) / pieces
    for index in range(1, pieces):
        target = int(start + index * step)
        cut = bytes(buf[cuts[-1]:target]).rfind(b"\n") + 1 if target > cuts[-1] else 0
        position = cuts[-1] + cut if cut else last_cut(buf, cuts[-1], target)
        if cuts[-1] < position < end:
            cuts.append(position)
    cuts.append(end)
    return cuts


def boundary(fd: int, nominal: int) -> int:
    """The real cut for a nominal position: just after the first newline at or after nominal-1.

    Deterministic from the file's bytes alone, so two workers computing the same boundary
    (one as its end, the next as its start) always agree.
    """
    fallback = None
    searched = 0
    while searched < BOUNDARY_SEARCH:
        data = os.pread(fd, BOUNDARY_STEP, nominal - 1 + searched)
        if not data:
            break
        newline = data.find(b"\n")
        if newline >= 0:
            return nominal + searched + newline
        if fallback is None:
            separator = next((i for i, byte in enumerate(data) if byte in SEPARATORS), None)
            if separator is not None:
                fallback = nominal + searched + separator
        searched += len(data)
    return fallback if fallback is not None else nominal


# --- the worker side ----------------------------------------------------------------------------

_extractors: list[Extractor] = []


def _init_worker(specs: Sequence[ExtractorSpec]) -> None:
    """Runs once in each worker: the parent alone handles Ctrl+C and SIGTERM."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _extractors[:] = [build_extractor(regex=s.regex, exclude=s.exclude, engine=s.engine) for s in specs]


def _scan_task(source: int, path: str, start: int, end: int, exact_start: bool, cap: int) -> list[Part]:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        real_start = start if exact_start else boundary(fd, start)
        real_end = boundary(fd, end)
        if real_end <= real_start:
            return [Part({}, 0, 0, real_start)] if real_end == real_start else []
        want = min(CONTEXT, real_start)
        buf = bytearray(CONTEXT + real_end - real_start)
        buf[:CONTEXT] = os.pread(fd, want, real_start - want).rjust(CONTEXT, b"\n")
        view = memoryview(buf)
        got = 0
        while got < real_end - real_start:
            n = os.preadv(fd, [view[CONTEXT + got:]], real_start + got)
            if n == 0:
                raise OSError(f"{path}: file shrank while being read")
            got += n
        return scan_parts(_extractors[source], buf, CONTEXT, len(buf), real_end, cap)
    finally:
        os.close(fd)


# --- the main-process side ------------------------------------------------------------------------


class ParallelScanner:
    """A pool of extraction workers, started on first use, ordered results with bounded lookahead."""

    def __init__(self, specs: Sequence[ExtractorSpec], workers: int, block_size: int, cap: int) -> None:
        self.specs = list(specs)
        self.workers = workers
        self.block_size = block_size
        self.cap = cap
        self._pool: Pool | None = None

    def worth_it(self, backlog: int) -> bool:
        """Only a backlog of several blocks pays for the hand-off to other processes."""
        return self.workers > 1 and backlog >= 4 * self.block_size

    def _ensure_pool(self) -> Pool:
        if self._pool is None:
            context = multiprocessing.get_context("spawn")  # a clean, small interpreter per worker
            self._pool = context.Pool(self.workers, initializer=_init_worker, initargs=(self.specs,))
        return self._pool

    def scan(self, fd: int, path: str, source: int, offset: int, size: int) -> Iterator[Part]:
        """Parts of [offset, about size - block) in file order; the caller reads the tail itself."""
        block = self.block_size
        last_nominal = offset + ((size - offset) // block - 1) * block
        if last_nominal <= offset:
            return
        proc_path = f"/proc/{os.getpid()}/fd/{fd}"
        open_path = proc_path if os.path.exists(proc_path) else path
        nominals = list(range(offset, last_nominal + 1, block))
        pool = self._ensure_pool()
        in_flight: deque[AsyncResult[list[Part]]] = deque()
        tasks = pairwise(nominals)
        for index, (start, end) in enumerate(tasks):
            in_flight.append(pool.apply_async(_scan_task, (source, open_path, start, end, index == 0, self.cap)))
            if len(in_flight) >= 2 * self.workers:
                yield from in_flight.popleft().get()
        while in_flight:
            yield from in_flight.popleft().get()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None
