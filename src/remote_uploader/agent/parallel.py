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

import os
import pickle
import signal
import struct
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from itertools import pairwise
from typing import IO, TYPE_CHECKING

from remote_uploader.agent.extract import SEPARATORS, Extractor, count_lines, last_cut
from remote_uploader.agent.extractors import extractor_for
from remote_uploader.agent.timestamps import Minute, TimedExtractor

if TYPE_CHECKING:
    import subprocess

BOUNDARY_SEARCH = 1024 * 1024
BOUNDARY_STEP = 64 * 1024
#: The largest range a task scans, whatever `read.block_size`: each process holds its range and
#: its counts, and up to two answers per process are in flight, so with 4 MiB ranges two workers
#: peaked at 61-64 MiB against the 2-worker budget of 64 (2 MiB: about 53; docs/benchmarks.md).
MAX_TASK = 2 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Part:
    """Counts of a run of whole lines ending at file offset `end_offset`."""

    counts: dict[str, int]
    lines: int
    nbytes: int
    end_offset: int
    long_line: bool = False
    # A source with a timestamp pattern: the counts of its lines with a time, by their minute;
    # `counts` then holds only those of the lines without one (`untimed_lines`).
    minutes: dict[int, Minute] | None = None
    untimed_lines: int = 0

    @property
    def records(self) -> int:
        """How many records it could add to an empty batch."""
        if self.minutes is None:
            return len(self.counts)
        return len(self.counts) + sum(len(cell.counts) for cell in self.minutes.values())

    @property
    def occurrences(self) -> int:
        found = sum(self.counts.values())
        if self.minutes is not None:
            found += sum(sum(cell.counts.values()) for cell in self.minutes.values())
        return found


# (source index, path to open, start, end, start is exact, cap): one range of a file to count.
Task = tuple[int, str, int, int, bool, int]


@dataclass(frozen=True, slots=True)
class ExtractorSpec:
    """What a worker needs to rebuild a source's extractor (extractors hold caches, not sent)."""

    regex: str | None
    exclude: tuple[str, ...]
    engine: str = "auto"
    timestamp_pattern: str | None = None


def scan_parts(extractor: Extractor, buf: bytes | bytearray, start: int, end: int, end_offset: int, cap: int,
               *, scan: bool = True, long_line: bool = False) -> list[Part]:
    """Scan buf[start:end] into parts of at most `cap` distinct addresses each.

    A range holding more than `cap` distinct addresses (dense logs, a small max_memory_ips) is
    cut at line ends into enough pieces and each piece scanned again: each Part then fits in a
    batch on its own, and a batch can be sealed between two parts without splitting a range.
    """
    if scan and isinstance(extractor, TimedExtractor):
        untimed, minutes, untimed_lines = extractor.scan_minutes(buf, start, end)
        whole = Part(untimed, count_lines(buf, start, end), end - start, end_offset, long_line, minutes,
                     untimed_lines)
    else:
        # The native engine counts the newlines in its scanning pass (NativeExtractor.scan_counting).
        counting = getattr(extractor, "scan_counting", None) if scan else None
        if counting is not None:
            counts, lines = counting(buf, start, end)
        else:
            counts = extractor.scan(buf, start, end) if scan else {}
            lines = count_lines(buf, start, end)
        whole = Part(counts, lines, end - start, end_offset, long_line)
    if whole.records <= cap:
        return [whole]
    pieces = -(-whole.records * 2 // cap)  # aim at half the cap per piece: one rescan, rarely two
    cuts = _line_cuts(buf, start, end, pieces)
    if len(cuts) < 2:
        return [whole]
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
#
# A worker is `python -m remote_uploader.agent.worker`: a plain subprocess that imports only the
# extractor (not the CLI, not the queue), reads length-prefixed pickled tasks on stdin and writes
# length-prefixed pickled results on stdout, in order. When its parent dies, its stdin closes and
# it exits: a SIGKILLed agent leaves no orphan workers behind.

_FRAME = struct.Struct("!I")


def write_frame(stream: IO[bytes], payload: object) -> None:
    data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_FRAME.pack(len(data)) + data)
    stream.flush()


def read_frame(stream: IO[bytes]) -> object:
    head = stream.read(_FRAME.size)
    if len(head) < _FRAME.size:
        raise EOFError("worker stream closed")
    (size,) = _FRAME.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("worker stream closed mid-message")
    return pickle.loads(data)


def scan_task(extractors: Sequence[Extractor], source: int, path: str, start: int, end: int,
              exact_start: bool, cap: int) -> list[Part]:
    """Count one range of a file: [boundary(start), boundary(end)), or from `start` itself if exact."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        real_start = start if exact_start else boundary(fd, start)
        real_end = boundary(fd, end)
        if real_end <= real_start:
            return [Part({}, 0, 0, real_start)] if real_end == real_start else []
        extractor = extractors[source]
        context = extractor.context  # the real bytes before the range: validation reads them
        want = min(context, real_start)
        buf = bytearray(context + real_end - real_start)
        buf[:context] = os.pread(fd, want, real_start - want).rjust(context, b"\n")
        view = memoryview(buf)
        got = 0
        while got < real_end - real_start:
            n = os.preadv(fd, [view[context + got:]], real_start + got)
            if n == 0:
                raise OSError(f"{path}: file shrank while being read")
            got += n
        return scan_parts(extractor, buf, context, len(buf), real_end, cap)
    finally:
        os.close(fd)


def worker_main() -> int:
    """The worker's loop: first message the extractor specs, then tasks until stdin closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent alone decides when to stop
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    try:
        specs = read_frame(stdin)
        assert isinstance(specs, list)
        extractors = [extractor_for(s, s.engine) for s in specs]
        while True:
            task = read_frame(stdin)
            assert isinstance(task, tuple)
            try:
                result: object = scan_task(extractors, *task)
            except OSError as exc:
                result = exc
            write_frame(stdout, result)
    except (EOFError, BrokenPipeError):
        return 0


# --- the main-process side ------------------------------------------------------------------------


class WorkerError(OSError):
    """A worker died or could not read its range; nothing was fed, so nothing is lost."""


class ParallelScanner:
    """Worker processes, started on first use; results in file order with bounded lookahead."""

    def __init__(self, specs: Sequence[ExtractorSpec], extractors: Sequence[Extractor], workers: int,
                 block_size: int, cap: int) -> None:
        self.specs = list(specs)
        self.extractors = list(extractors)  # this process's own, built from the same specs
        self.workers = workers  # processes that scan, this one included: workers - 1 are started
        self.block_size = block_size
        self.cap = cap
        self._procs: list[subprocess.Popen[bytes]] = []

    def worth_it(self, backlog: int) -> bool:
        """Only a backlog of several blocks pays for the hand-off to other processes."""
        return self.workers > 1 and backlog >= 4 * self.block_size

    def _ensure_workers(self) -> list[subprocess.Popen[bytes]]:
        # subprocess (with selectors and threading) is imported here, not at the top: the worker
        # processes import this module and never start one, nor does an agent with one worker.
        import subprocess

        if not self._procs:
            for _ in range(self.workers - 1):
                # cwd "/": from a directory holding the compat script remote_uploader.py, `-m`
                # would find that file instead of the package.
                proc = subprocess.Popen([sys.executable, "-m", "remote_uploader.agent.worker"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True, cwd="/")
                assert proc.stdin is not None
                write_frame(proc.stdin, self.specs)
                self._procs.append(proc)
        return self._procs

    def scan(self, fd: int, path: str, source: int, offset: int, size: int) -> Iterator[Part]:
        """Parts of [offset, about size - block) in file order; the caller reads the tail itself.

        Task k goes to slot k mod `workers`: a worker process, or (the last slot) this process,
        which scans its task when its turn to be answered comes, while the workers scan theirs.
        Each worker answers in the order it was asked, so taking the answers in task order gives
        them in file order. At most two tasks wait per slot.
        """
        block = min(self.block_size, MAX_TASK)
        last_nominal = offset + ((size - offset) // block - 1) * block
        if last_nominal <= offset:
            return
        proc_path = f"/proc/{os.getpid()}/fd/{fd}"
        open_path = proc_path if os.path.exists(proc_path) else os.path.abspath(path)
        nominals = list(range(offset, last_nominal + 1, block))
        slots: list[subprocess.Popen[bytes] | None] = [*self._ensure_workers(), None]
        pending: deque[tuple[subprocess.Popen[bytes] | None, Task]] = deque()
        for index, (start, end) in enumerate(pairwise(nominals)):
            proc = slots[index % len(slots)]
            task: Task = (source, open_path, start, end, index == 0, self.cap)
            if proc is not None:
                assert proc.stdin is not None
                write_frame(proc.stdin, task)
            pending.append((proc, task))
            if len(pending) >= 2 * len(slots):
                yield from self._answer(*pending.popleft())
        while pending:
            yield from self._answer(*pending.popleft())

    def _answer(self, proc: subprocess.Popen[bytes] | None, task: Task) -> list[Part]:
        if proc is None:
            try:
                return scan_task(self.extractors, *task)
            except OSError as exc:
                self.close()
                raise WorkerError(str(exc)) from exc
        assert proc.stdout is not None
        try:
            result = read_frame(proc.stdout)
        except EOFError as exc:
            self.close()
            raise WorkerError(f"an extraction worker exited unexpectedly (code {proc.poll()})") from exc
        if isinstance(result, OSError):
            self.close()
            raise WorkerError(str(result))
        assert isinstance(result, list)
        return result

    def kill(self) -> None:
        """Kill the workers at once (they hold no state): at shutdown after a stop in the middle of
        a backlog, their answers can fill their pipes so that they never see the end of their input."""
        for proc in self._procs:
            with suppress(OSError):
                proc.kill()

    def close(self) -> None:
        """Stop the workers and reap them, also in the middle of an abandoned scan.

        Our end of their stdout is closed first: a worker blocked writing an answer nobody will
        read gets EPIPE and exits at once; closing its stdin ends the loop of an idle one.
        """
        for proc in self._procs:
            for stream in (proc.stdout, proc.stdin):
                if stream is not None:
                    with suppress(OSError):
                        stream.close()
        import subprocess  # already loaded if there are workers (_ensure_workers)

        for proc in self._procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs = []

