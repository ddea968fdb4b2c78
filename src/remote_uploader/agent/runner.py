"""The runner: consumes what the follower produces and drives extract -> batch -> seal -> queue,
for `once` (one pass, then deliver) and `forever` (forever.py: passes and growth, until a signal).

The source side produces (tail.py: `Read`, `Rotated`, `Truncated`, `Gone`, `Problem` events, pass
by pass); `Agent.consume` is the one place they are acted on. The settings reading and sealing go
by are one immutable `Pipeline`, built whole from a configuration; a reload builds a new one and
the agent puts it in force itself (`reconfigure`), between two passes. Stats and metrics observe
(`Stats.on_sent`, `Tailer.lag`); nothing wraps or patches a live object.

Threads: the calling thread reads, extracts and seals; one `Uploader` thread sends. They share
nothing but the queue database (each its own connection) and two events. Every guarantee comes
from `Spool.commit` (offsets move only with the batch that covers them) and `Spool.ack` (a batch
leaves only when acknowledged); this module only decides *when* to call them.
"""

from __future__ import annotations

import logging
import os
import signal
import stat
import threading
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from remote_uploader.agent.batch import Batch, SealPolicy, seal
from remote_uploader.agent.clock import wall
from remote_uploader.agent.extract import Extractor
from remote_uploader.agent.extractors import extractor_for
from remote_uploader.agent.faults import crash_point
from remote_uploader.agent.parallel import ExtractorSpec, ParallelScanner, Part, scan_parts
from remote_uploader.agent.report import Reporter
from remote_uploader.agent.signals import SignalWatcher, hold_early
from remote_uploader.agent.sink import Backoff, HttpSink, Sink, Uploader
from remote_uploader.agent.source import A_DIRECTORY, NOT_REGULAR, Anchor, BlockReader, FileIdentity, expand_sources
from remote_uploader.agent.spool import FileState, Spool, StateLock, prepare_state_dir
from remote_uploader.agent.stats import Stats, render_block
from remote_uploader.agent.tail import Collaborators, Event, Gone, Problem, Read, Rotated, Tailer, Truncated
from remote_uploader.config import Config
from remote_uploader.errors import (
    EXIT_OK,
    EXIT_SOURCE,
    EXIT_UNDELIVERED,
    DiskFullError,
    RemoteUploaderError,
    SourceError,
    StateError,
)
from remote_uploader.i18n import _, translate_known
from remote_uploader.protocol import MAX_RECORDS_PER_BATCH

log = logging.getLogger(__name__)

T = TypeVar("T")

PROGRESS_MIN_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class Pipeline:
    """What reading, extraction and sealing go by, built whole from one configuration.

    Immutable: a reload builds a new one and the agent swaps it in one assignment between two
    passes (`Agent.reconfigure`), so a pass never sees half of an old configuration and half of
    a new one."""

    config: Config
    extractors: tuple[Extractor, ...]  # one per configured source, by index
    policy: SealPolicy
    cap: int  # records a batch may hold (`record_cap`)

    @classmethod
    def build(cls, config: Config) -> Pipeline:
        """The pipeline of `config`; ValueError/ConfigError when a source's rules do not compile."""
        extractors = tuple(extractor_for(s, config.agent.engine) for s in config.sources)
        return cls(config, extractors, SealPolicy.from_config(config.batching), record_cap(config))


@dataclass
class RunResult:
    exit_code: int
    message: str
    stats: Stats


class Agent:
    """One agent process on one state directory (held by an exclusive lock for its lifetime)."""

    def __init__(self, config: Config, *, sink: Sink | None = None,
                 say: Callable[[str], None] = lambda line: None) -> None:
        pipeline = Pipeline.build(config)
        self.pipeline = pipeline
        self.say = say
        self.stop = threading.Event()
        self.wake = threading.Event()
        # Wakes `forever`'s reading loop: a file event, a stop, the uploader falling idle.
        self.nudge = threading.Event()
        self.stats = Stats(max_memory_ips=config.batching.max_memory_ips)
        prepare_state_dir(config.agent.state_dir)
        self.lock = StateLock(config.agent.state_dir)
        self.lock.acquire()
        try:
            self.spool = Spool(config.agent.state_dir)
            try:
                self.upload_spool = Spool(config.agent.state_dir)
                self.producer = self.spool.producer()
            except BaseException:
                self.spool.close()
                raise
        except BaseException:
            self.lock.release()
            raise
        self.scanner = _scanner(pipeline)
        self.reporter = Reporter()  # the status report sent with each batch (agent/report.py)
        self.sink = sink or HttpSink(config.server, self.reporter)
        server = config.server
        self.uploader = Uploader(self.upload_spool, self.sink,
                                 Backoff(server.backoff_base, server.backoff_cap, server.retry_after_cap),
                                 self.stats, config.agent.id, self.wake, self.stop, server.upload_concurrency,
                                 on_idle=self.nudge, reporter=self.reporter, status_every=server.status_every)
        self.batch = Batch(time.monotonic())
        # Per file: the anchor (source.Anchor) of the last bytes counted, committed with the offset
        # it stands at (see tail.py: the evidence that a file is still, or copied from, the record).
        self.anchors: dict[int, Anchor] = {}
        self.queued_estimate = 0
        self.stop_reason = ""
        self.source_problems: dict[str, str] = {}  # path or pattern -> reason (English), for the exit code
        self.disk_full_budget: float | None = None  # seconds `write_state` waits for space; None: for ever

    @property
    def config(self) -> Config:
        return self.pipeline.config

    @property
    def policy(self) -> SealPolicy:
        return self.pipeline.policy

    # --- life cycle -------------------------------------------------------------------------------

    def close(self) -> None:
        self.stop.set()
        self.wake.set()
        self.nudge.set()
        if self.scanner is not None:
            self.scanner.close()
        if self.uploader.is_alive():
            self.uploader.join(timeout=self.config.server.timeout + 1)
        self.spool.close()
        self.upload_spool.close()
        self.lock.release()

    def recover(self) -> int:
        """Say how many records a previous run left in the queue; the uploader sends them first."""
        queue = self.spool.stats()
        self.stats.recovered_records = queue.records
        self.queued_estimate = queue.body_bytes
        if queue.batches:
            log.info("event=recovered records=%d batches=%d", queue.records, queue.batches)
            self.say(_("Recovered {records} pending records ({batches} batches) from the queue").format(
                records=queue.records, batches=queue.batches))
        return queue.records

    def request_stop(self, reason: str) -> None:
        self.stop_reason = reason
        self.stop.set()
        self.wake.set()
        self.nudge.set()

    def reconfigure(self, pipeline: Pipeline) -> None:
        """Put a new pipeline in force (between two passes: `forever`'s reload). The extraction
        workers hold the old sources' extractors: they are let go when the sources changed (the
        next backlog starts new ones). A new server setting takes a new sink and backoff, which
        the uploader uses from its next request on."""
        old = self.pipeline
        if pipeline.config.sources != old.config.sources and self.scanner is not None:
            self.scanner.close()
            self.scanner = _scanner(pipeline)
        self.pipeline = pipeline
        self.stats.max_memory_ips = pipeline.config.batching.max_memory_ips
        if pipeline.config.server != old.config.server:
            server = pipeline.config.server
            self.sink = HttpSink(server, self.reporter)
            self.uploader.use(self.sink, Backoff(server.backoff_base, server.backoff_cap, server.retry_after_cap))

    # --- consuming what the follower produces ---------------------------------------------------------

    def collaborators(self) -> Collaborators:
        """What a follower of this agent's files is given (tail.Collaborators): its records in the
        spool (each write retried while the disk is full, `write_state`), where reading goes on
        (`offset`), the stop, and getters of the pipeline and workers in force (a reload swaps them
        between two steps). Not the agent: the runner drives, the follower only produces."""
        return Collaborators(registry=FollowerRecords(self.spool, self.write_state), progress=self, stop=self.stop,
                             pipeline=lambda: self.pipeline, scanner=lambda: self.scanner)

    def consume(self, events: Generator[Event, None, T]) -> T:
        """Act on each of the follower's events in order, each before the follower goes on (a
        Read's buffer is the reader's; a Gone must be sealed before its record is deleted).
        Returns what the follower's step returns."""
        try:
            while True:
                try:
                    event = next(events)
                except StopIteration as done:
                    result: T = done.value
                    return result
                if isinstance(event, Read):
                    self._take(event)
                elif isinstance(event, Gone):
                    if event.fid in self.batch.offsets:
                        self.seal_now()
                    self.anchors.pop(event.fid, None)
                elif isinstance(event, Problem):
                    self._source_problem(event.path, event.reason)
                elif isinstance(event, Rotated):
                    self.stats.rotations += 1
                elif isinstance(event, Truncated):
                    self.stats.truncations += 1
        finally:
            events.close()

    def offset(self, fid: int) -> int | None:
        """Where reading of record `fid` goes on (tail.Progress): past the bytes already in the
        in-memory batch, if any. The recorded offset only moves when a batch is sealed; bytes read
        since are in memory, and reading from the recorded offset again would count them twice.
        None when the record does not exist (forgotten)."""
        committed = self.spool.file_offset(fid)
        if committed is None:
            return None
        return max(committed, self.batch.offsets.get(fid, committed))

    def _take(self, read: Read) -> None:
        """A Read into the batch: extract a chunk (in parts that each fit under the cap), or take
        the workers' part; note its anchor; seal if the policy says so (reading is not caught up)."""
        if read.part is not None:
            self.feed_part(read.part, read.fid, read.stream)
        elif read.chunk is not None:
            chunk = read.chunk
            for part in scan_parts(self.pipeline.extractors[read.source], chunk.buf, chunk.start, chunk.end,
                                   chunk.end_offset, self.pipeline.cap, scan=chunk.scan, long_line=chunk.long_line):
                self.feed_part(part, read.fid, read.stream)
        if read.anchor is not None:
            self.anchors[read.fid] = read.anchor  # committed with the offset it stands at
        self.maybe_seal(caught_up=False)

    def _source_problem(self, path: str, reason: str) -> None:
        self.stats.source_errors += 1
        self.source_problems[path] = reason
        log.error("event=source_error path=%s reason=%r", path, reason)
        self.say(_("Cannot read {path}: {reason}").format(path=path, reason=translate_known(reason)))

    def feed_part(self, part: Part, fid: int, stream: str) -> None:
        """The one place counts enter the batch: seal first if they would not fit under the cap."""
        batch = self.batch
        cap = self.pipeline.cap
        if len(batch) + part.records > cap and len(batch) + batch.new_keys(stream, part.counts, part.minutes) > cap:
            self.seal_now()
            batch = self.batch
        batch.add(stream, part.counts, wall())
        if part.minutes is not None:
            batch.add_minutes(stream, part.minutes)
        batch.cover(fid, part.end_offset, part.lines, part.nbytes)
        stats = self.stats
        stats.occurrences += part.occurrences
        stats.untimed_lines += part.untimed_lines
        stats.lines += part.lines
        stats.bytes_read += part.nbytes
        stats.long_lines += int(part.long_line)
        stats.memory_ips = len(batch)

    def maybe_seal(self, *, caught_up: bool) -> None:
        """Seal if the policy says so; a caught-up reader seals at once while the uploader is idle
        (nothing queued, nothing in flight): low load gets latency, high load larger batches.

        Past `force_upload_threshold` the queue is asked whether it already holds a batch for each
        upload in flight (`server.upload_concurrency`): then the batch grows up to the record cap
        (SealPolicy). Asked only then, so at most a few times per batch, by the reader's own
        connection."""
        free = caught_up and self.uploader.idle.is_set() and self.uploader.is_alive()
        behind = (len(self.batch) >= self.policy.force_upload_threshold
                  and self.spool.holds_batches(self.config.server.upload_concurrency))
        if self.policy.should_seal(self.batch, time.monotonic(), caught_up=caught_up, uploader_free=free,
                                   uploader_behind=behind):
            self.seal_now()

    def seal_now(self) -> None:
        """Queue the in-memory batch and move its offsets, durably, in one transaction."""
        if self.batch.empty:
            return
        seq = self.spool.next_seq()
        streams = self.spool.stream_ranges(self.batch.offsets)
        sealed = seal(self.batch, self.config.agent.id, self.config.server.compress, self.producer, seq, streams)
        if sealed is not None:
            self._wait_for_queue_space()
        offsets = self.batch.offsets
        anchors = {fid: a for fid, a in self.anchors.items() if a.pos <= offsets.get(fid, -1)}
        self.write_state(lambda: self.spool.commit(sealed, offsets, anchors, seq))
        self.anchors = {fid: a for fid, a in self.anchors.items() if a.pos > offsets.get(fid, -1)}
        if sealed is not None:
            crash_point("after_seal")
            self.queued_estimate += len(sealed.body)
            self.stats.batches_sealed += 1
            self.stats.records_sealed += sealed.records
            self.wake.set()
        self.batch = Batch(time.monotonic())
        self.stats.memory_ips = 0

    def write_state(self, write: Callable[[], T]) -> T:
        """Run one write of the state directory, retrying while the disk is full (every
        `poll_interval`, said once): the seal, and every other write of the reading thread (a new
        record, a move, a forget, the last-seen time), so a full disk pauses reading and never
        ends the agent. A write that fails changed nothing (one transaction), so retrying it is
        exact. When a stop is requested meanwhile, the DiskFullError is raised; so it is when the
        disk stays full longer than `disk_full_budget` (`once`: its retry budget, so a run from
        cron or a timer ends with exit 3 and everything safe instead of hanging; `forever`: None,
        it waits as long as it takes)."""
        warned = False
        since = time.monotonic()
        while True:
            try:
                result = write()
                if warned:
                    log.info("event=disk_space_back")
                return result
            except DiskFullError as exc:
                if not warned:
                    log.error("event=disk_full reason=%r action=retrying offsets_unchanged=true", str(exc))
                    self.say(_("Disk full: {reason}; nothing lost, retrying").format(reason=exc.translated()))
                    warned = True
                self.stats.paused = True
                budget = self.disk_full_budget
                if budget is not None and time.monotonic() - since > budget:
                    self.request_stop(f"state disk full ({exc})")
                    raise
                if self.stop.wait(self.config.read.poll_interval):
                    raise
            finally:
                self.stats.paused = False

    def _wait_for_queue_space(self) -> None:
        """Backpressure: when the queue is at its byte limit, reading waits (the file is the buffer)."""
        limit = self.config.queue.max_bytes
        if self.queued_estimate < limit:
            return
        self.queued_estimate = self.spool.queued_bytes()
        if self.queued_estimate < limit:
            return
        log.warning("event=queue_full bytes=%d limit=%d action=pause_reading", self.queued_estimate, limit)
        self.stats.paused = True
        try:
            while self.queued_estimate >= limit and not self.stop.is_set():
                self.stop.wait(0.2)
                self.queued_estimate = self.spool.queued_bytes()
        finally:
            self.stats.paused = False
        if self.stop.is_set():
            raise StopReading

    # --- once -----------------------------------------------------------------------------------------

    def run_once(self, *, max_retry_time: float | None = None,
                 progress: Callable[[str], None] | None = None) -> RunResult:
        """Read every file to its end, deliver everything, return when the queue is empty.

        Exit 3 when the collector stays unreachable for `max_retry_time`: what was read is queued.
        """
        budget = self.config.server.max_retry_time if max_retry_time is None else max_retry_time
        self.uploader.give_up_after = budget
        self.disk_full_budget = budget
        self.recover()
        self.uploader.start()
        watchdog = threading.Thread(target=self._give_up_when_failing, args=(budget,), daemon=True)
        watchdog.start()
        reading_done = threading.Event()
        shower: threading.Thread | None = None
        if progress is not None:
            shower = threading.Thread(target=self._show_progress, args=(progress, reading_done), daemon=True)
            shower.start()
        try:
            self.read_all()
            self.seal_now()
        except (StopReading, DiskFullError):  # DiskFullError: a stop came while waiting for space
            pass
        finally:
            reading_done.set()
            if shower is not None:
                shower.join()  # its last frame ends its line before anything else is printed
        self.wake.set()
        while not self.stop.is_set():
            if self.uploader.idle.wait(0.2) and self.spool.next_batch() is None:
                break
        return self._result()

    def read_all(self) -> None:
        """One pass over every configured file, rotated remainders included (rules: tail.py)."""
        read_pass(self)

    def _show_progress(self, show: Callable[[str], None], reading_done: threading.Event) -> None:
        """A progress line (bytes read of the backlog at start) while reading large files.

        Frames rewrite one line; once reading is over (or stopped), one last frame shows where
        it ended (100% when everything was read) and ends the line, so that what is printed
        next starts on a line of its own.
        """
        files, _problems = expand_sources(self.config.sources, skip_compressed=self.config.read.skip_compressed)
        offsets = {state.path: state.offset for state in self.spool.files()}
        total = sum(max(0, f.size - offsets.get(f.path, 0)) for f in files)
        if total < PROGRESS_MIN_BYTES:
            return

        def frame() -> str:
            done = min(self.stats.bytes_read, total)
            return _("Reading: {done:.0f} of {total:.0f} MB ({pct:.0f}%)").format(
                done=done / 1e6, total=total / 1e6, pct=100 * done / total)

        while not reading_done.wait(0.5):
            show(frame())
        show(frame() + "\n")

    def _give_up_when_failing(self, budget: float) -> None:
        while not self.stop.wait(0.2):
            if self.uploader.failing_for() > budget:
                self.request_stop("state disk full" if self.uploader.disk_full else "collector unreachable")
                return
            if self.uploader.fatal is not None:
                self.request_stop(str(self.uploader.fatal))
                return

    def _result(self) -> RunResult:
        queue = self.spool.stats()
        if queue.batches == 0 and not self.stop_reason:
            if self.source_problems:
                return RunResult(EXIT_SOURCE, _("Delivered what could be read, but {n} sources could not be "
                                                "read: {paths}").format(n=len(self.source_problems),
                                                                         paths=", ".join(self.source_problems)),
                                 self.stats)
            return RunResult(EXIT_OK, _("All data delivered"), self.stats)
        reason = self.stop_reason or "stopped"
        if reason.startswith("signal"):
            code = 128 + int(reason.split()[-1])
        elif isinstance(self.uploader.fatal, RemoteUploaderError):
            code = self.uploader.fatal.exit_code
        else:
            code = EXIT_UNDELIVERED
        detail = self.uploader.last_error or reason
        message = _("Not delivered ({reason}); {records} records in {batches} batches are safely queued "
                    "and will be sent by the next run").format(reason=detail, records=queue.records,
                                                                 batches=queue.batches)
        return RunResult(code, message, self.stats)

    def stats_lines(self) -> list[str]:
        return render_block(self.stats, self.spool.stats())


def read_pass(agent: Agent) -> None:
    """`once`: one pass of a follower over every file (rotated remainders included), consumed by
    the agent, then let go of them all."""
    tailer = Tailer(agent.collaborators())
    tailer.single_pass = True
    try:
        agent.consume(tailer.events())
    finally:
        tailer.close()


class WriteState(Protocol):
    """`Agent.write_state`: run one write of the state directory, retried while the disk is full."""

    def __call__(self, write: Callable[[], T]) -> T: ...


class FollowerRecords:
    """The follower's records (tail.Registry) in the agent's spool: reads as they are, each write
    one transaction run through `write_state`, so a full disk pauses the follower as it pauses a
    seal (and a stop while waiting raises DiskFullError out of the step) instead of ending it."""

    def __init__(self, spool: Spool, write: WriteState) -> None:
        self.spool = spool
        self.write = write

    def get_kv(self) -> dict[str, str]:
        return self.spool.get_kv()

    def files(self) -> list[FileState]:
        return self.spool.files()

    def register_file(self, path: str, stream: str, identity: FileIdentity) -> int:
        return self.write(lambda: self.spool.register_file(path, stream, identity))

    def update_file(self, fid: int, *, identity: FileIdentity | None = None, status: str | None = None,
                    path: str | None = None) -> None:
        self.write(lambda: self.spool.update_file(fid, identity=identity, status=status, path=path))

    def forget_files(self, fids: Sequence[int]) -> None:
        self.write(lambda: self.spool.forget_files(fids))

    def set_kv(self, key: str, value: str) -> None:
        self.write(lambda: self.spool.set_kv(key, value))


def _scanner(pipeline: Pipeline) -> ParallelScanner | None:
    """Extraction workers for large backlogs (`agent.workers` > 1), started on first use."""
    config = pipeline.config
    if config.agent.workers <= 1:
        return None
    specs = [ExtractorSpec(s.regex, s.exclude, config.agent.engine, s.timestamp_pattern) for s in config.sources]
    return ParallelScanner(specs, list(pipeline.extractors), config.agent.workers, config.read.block_size,
                           pipeline.cap)


def record_cap(config: Config) -> int:
    """Records a batch may hold: `max_memory_ips`, but never more than the collector accepts in
    one batch (a larger one would be refused as invalid, at every retry)."""
    return min(config.batching.max_memory_ips, MAX_RECORDS_PER_BATCH)


class StopReading(Exception):
    """Raised inside the reader when a stop was requested while it waited for queue space."""


def stop_on_signals(agent: Agent, extra: Mapping[int, Callable[[int], None]] | None = None) -> SignalWatcher:
    """First SIGINT/SIGTERM: finish the current step, persist, stop. A second: exit at once.

    Exiting at once loses nothing either: everything not committed is re-read from the offsets.
    The actions run in the watcher thread (see signals.py for why not in a handler).
    """

    def stop(signum: int) -> None:
        if agent.stop.is_set():
            os._exit(128 + signum)
        log.info("event=signal signal=%d action=stop", signum)
        agent.request_stop(f"signal {signum}")

    return SignalWatcher({signal.SIGINT: stop, signal.SIGTERM: stop, **(extra or {})})


def open_agent(config: Config, say: Callable[[str], None], give_up_after: float | None = None) -> Agent | int:
    """The agent, once its state directory can be written: on a full disk at start-up (the lock's
    pid, the queue database's -wal/-shm, a migration), say so once and retry every
    `read.poll_interval`, as `Agent.write_state` does for every later write; a full disk is never
    a reason to exit (a restart loop, or exit 4 "damaged", would lose rotated lines meanwhile).
    The signal number instead when SIGINT/SIGTERM came while waiting: nothing was read.

    Signals are watched only while waiting; on the ordinary path the early hold (signals.py) stays
    for `stop_on_signals` to adopt, so a SIGTERM during start-up is acted on there.

    With `give_up_after` (`once`: its retry budget), the DiskFullError is raised once the disk has
    stayed full that long: a bounded run must end, with nothing read and nothing lost."""
    try:
        return Agent(config, say=say)
    except DiskFullError as exc:
        first = exc
    stop = threading.Event()
    signals: list[int] = []

    def stopped(signum: int) -> None:
        signals.append(signum)
        stop.set()

    since = time.monotonic()
    log.error("event=disk_full reason=%r action=retrying phase=start", str(first))
    say(_("Disk full: {reason}; nothing lost, retrying").format(reason=first.translated()))
    with SignalWatcher({signal.SIGINT: stopped, signal.SIGTERM: stopped}):
        while True:
            if stop.wait(config.read.poll_interval):
                log.info("event=signal signal=%d action=stop phase=waiting_for_disk_space", signals[0])
                return signals[0]
            try:
                agent = Agent(config, say=say)
            except DiskFullError:
                if give_up_after is not None and time.monotonic() - since > give_up_after:
                    log.error("event=disk_full action=give_up phase=start waited=%.1fs", time.monotonic() - since)
                    raise
                continue
            log.info("event=disk_space_back")
            if signals:  # the signal came while the agent was being opened
                agent.close()
                return signals[0]
            break
    hold_early()  # this watcher put the handlers back: hold again until stop_on_signals opens its own
    return agent


def run_once(config: Config, *, say: Callable[[str], None] = lambda line: None,
             max_retry_time: float | None = None, progress: Callable[[str], None] | None = None) -> RunResult:
    budget = config.server.max_retry_time if max_retry_time is None else max_retry_time
    try:
        agent = open_agent(config, say, give_up_after=budget)
    except DiskFullError as exc:
        return RunResult(EXIT_UNDELIVERED, _("Not started: {reason}; nothing was read, nothing is lost: run again "
                                             "when there is space").format(reason=exc.translated()),
                         Stats(max_memory_ips=config.batching.max_memory_ips))
    if isinstance(agent, int):  # stopped by a signal as usual: 128 + its number
        return RunResult(128 + agent, _("Stopped while waiting for disk space; nothing was read"),
                         Stats(max_memory_ips=config.batching.max_memory_ips))
    try:
        with stop_on_signals(agent):
            result = agent.run_once(max_retry_time=max_retry_time, progress=progress)
        for line in agent.stats_lines():
            say(line)
        return result
    finally:
        agent.close()


def count_files(paths: list[str], extractor: Extractor, block_size: int,
                problems: list[SourceError] | None = None) -> tuple[dict[str, int], int, int]:
    """Per-IP counts of whole files, touching no state: what `once` would send for them.

    A file that cannot be read is a SourceError: raised, or, with `problems`, added to it while
    the other files are counted (as `once` delivers the others).
    """
    totals: dict[str, int] = {}
    lines = nbytes = 0
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO must not block the open
        except OSError as exc:
            unopened = SourceError(path, exc.strerror or str(exc))
            if problems is None:
                raise unopened from exc
            problems.append(unopened)
            continue
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise SourceError(path, NOT_REGULAR if not stat.S_ISDIR(os.fstat(fd).st_mode) else A_DIRECTORY)
            reader = BlockReader(fd, 0, block_size, extractor.context)
            for chunk in reader.chunks(partial=True):
                if chunk.scan:
                    for ip, count in extractor.scan(chunk.buf, chunk.start, chunk.end).items():
                        totals[ip] = totals.get(ip, 0) + count
                lines += chunk.lines()
                nbytes += chunk.nbytes
        except SourceError as refused:
            if problems is None:
                raise
            problems.append(refused)
        except OSError as exc:  # e.g. EIO halfway: what was counted of it stays counted, as in `once`
            failed = SourceError(path, exc.strerror or str(exc))
            if problems is None:
                raise failed from exc
            problems.append(failed)
        finally:
            os.close(fd)
    return totals, lines, nbytes


__all__ = ["Agent", "RunResult", "StateError", "count_files", "read_pass", "run_once"]
