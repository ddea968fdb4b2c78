"""`forever`: follow the configured files and ship what is appended, until a signal says stop.

The reading thread makes a pass (see tail.py for the rules) every `read.poll_interval`. Between
two passes it waits on `agent.nudge`, which file events set (agent/watch.py, `read.watch`):
a write to a file it holds open is read at once (`Tailer.growth`), a name created, renamed or
deleted, or an overflow of the event queue, brings the next pass forward. Events only wake; the
pass and `growth()` decide everything, as they do when polling. Without events (`read.watch
= poll`, another platform, a directory the kernel would not watch) it looks at the size of the
open files several times a second instead (GROWTH_CHECK). It seals per the policy: at once when
the uploader is idle (it nudges the reader when it falls idle, so what accumulated while
requests were in flight goes out in the next, larger batch), else half `max_batch_age` after the
previous seal at the latest. Other threads: the uploader, the watcher, a stats reporter, and the
optional Prometheus endpoint; none of them blocks reading, and reading never blocks them.

Shutdown (SIGINT/SIGTERM): stop reading, seal the in-memory batch, upload for at most
`shutdown.drain_timeout` seconds, exit 0; what is not sent stays queued for the next start.
A second signal exits at once (runner.stop_on_signals): nothing is lost either, since
the offsets only cover what is queued. SIGHUP reloads the configuration at the next poll; a bad
one is refused with the reason logged, and the old one stays in force.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
from collections.abc import Callable

from remote_uploader.agent.runner import Agent, Pipeline, StopReading, open_agent, stop_on_signals
from remote_uploader.agent.sink import Backoff, Sink, Uploader
from remote_uploader.agent.spool import Spool
from remote_uploader.agent.stats import render_block
from remote_uploader.agent.tail import Lag, Tailer
from remote_uploader.agent.watch import Watcher, WatchUnavailable
from remote_uploader.config import Config
from remote_uploader.errors import EXIT_OK, ConfigError, DiskFullError, RemoteUploaderError
from remote_uploader.i18n import _

log = logging.getLogger(__name__)

# Between passes, the sizes of the files held open are looked at every GROWTH_CHECK seconds after
# one of them grew, twice as far apart after each look that found nothing, up to GROWTH_CHECK_IDLE
# (or the policy's caught-up age, if shorter: a line after a quiet spell then waits no longer to be
# noticed than one in a trickle waits to be sealed): an idle agent wakes a few times a second, and
# each timed wake-up costs more than the looks.
GROWTH_CHECK = 0.1
GROWTH_CHECK_IDLE = 0.4
# While file events cover every watched directory and no file waits on a timer (`Tailer.waiting_on_time`:
# an unfinished line, a rotated file's grace, a missing file), the safety-net pass comes every
# EVENTS_PASS_EVERY seconds (or `read.poll_interval`, if longer) instead of every `read.poll_interval`:
# every write, truncation, create, rename and delete wakes the reader anyway, and the pass was
# most of an idle agent's CPU (docs/forever.md, Idle cost). What events cannot report (writes on
# NFS by another host, a lost event) then waits up to this long instead of a second.
EVENTS_PASS_EVERY = 5.0
STATS_OFF_RECHECK = 60.0


def run_forever(config: Config, *, say: Callable[[str], None] = lambda line: None,
                reload: Callable[[], Config] | None = None) -> int:
    agent = open_agent(config, say)
    if isinstance(agent, int):  # SIGINT/SIGTERM while waiting for disk space: a clean stop
        say(_("Stopped while waiting for disk space; nothing was read"))
        return EXIT_OK
    reload_requested = threading.Event()

    def on_hup(signum: int) -> None:
        reload_requested.set()
        agent.nudge.set()  # the reload is applied before the next pass: bring it forward

    signals = stop_on_signals(agent, {signal.SIGHUP: on_hup} if reload else None)
    tailer: Tailer | None = None
    reporter: StatsReporter | None = None
    watcher: Watcher | None = None
    metrics = None
    try:
        watcher = start_watcher(config.read.watch, agent.nudge)
        tailer = Tailer(agent.collaborators())
        tailer.patience = max(config.read.rotate_grace, 2 * config.read.poll_interval)
        if watcher is not None:
            watcher.watch(tailer.watch_dirs())  # before the first pass: no write falls between
        if config.agent.metrics_listen:
            from remote_uploader.agent.metrics import serve_metrics

            metrics = serve_metrics(config.agent.metrics_listen, agent, tailer)
        agent.recover()
        follower = tailer
        agent.reporter.watch_lags(lambda: [(item.path, item.behind) for item in follower.lag()])
        agent.uploader.start()
        say(_("Following {n} sources; stop with Ctrl-C or SIGTERM").format(n=len(config.sources)))
        check_every = GROWTH_CHECK
        reporter = StatsReporter(agent, tailer, say)
        reporter.start()
        while not agent.stop.is_set():
            if reload_requested.is_set() and reload is not None:
                reload_requested.clear()
                apply_reload(agent, reload, say)
            try:
                agent.consume(tailer.events())
                if watcher is not None:
                    watcher.watch(tailer.watch_dirs())
                if tailer.polls == 1 and not agent.stop.is_set():
                    # The first whole pass: from here on, what reaches a followed file (or is rotated
                    # away from it while the agent is stopped) is the agent's to deliver. Before it,
                    # rotated files are history it never looked at (docs/forever.md, Restarts).
                    log.info("event=following files=%d", len(tailer.tracked))
                agent.maybe_seal(caught_up=True)
                check_every = _until_next_pass(agent, tailer, check_every, watcher, reload_requested)
            except (StopReading, DiskFullError):  # DiskFullError: a stop came while waiting for space
                break
        return shutdown(agent, say)
    finally:
        signals.close()
        if reporter is not None:
            reporter.stop.set()
        if watcher is not None:
            watcher.close()
        if tailer is not None:
            tailer.close()
        if metrics is not None:
            metrics.close()
        _stop_workers(agent)
        agent.close()


def start_watcher(mode: str, wake: threading.Event) -> Watcher | None:
    """File events for `read.watch` (auto: if the platform has them), or None: polling only."""
    if mode == "poll":
        return None
    try:
        watcher = Watcher(wake)
    except (WatchUnavailable, OSError) as exc:
        if mode == "inotify":
            raise ConfigError("read.watch", f"inotify is not available here ({exc}); use auto or poll") from exc
        log.info("event=watch_unavailable reason=%r action=polling", str(exc))
        return None
    watcher.start()
    return watcher


def _until_next_pass(agent: Agent, tailer: Tailer, check_every: float, watcher: Watcher | None = None,
                     reload_requested: threading.Event | None = None) -> float:
    """Wait `read.poll_interval` for the next pass, woken by file events (`watcher`) or, without
    them, every `check_every` seconds (GROWTH_CHECK); meanwhile read what was appended to the files
    held open and seal the batch as soon as the policy says (at once while the uploader is idle).
    Returns early, for a pass now, when the events say files appeared, went or were renamed, or
    that events were lost (overflow), or for a reload (SIGHUP). Returns the next `check_every`."""
    every = agent.config.read.poll_interval
    if watcher is not None and watcher.complete and not tailer.waiting_on_time():
        every = max(every, EVENTS_PASS_EVERY)
    next_pass = time.monotonic() + every
    while (remaining := next_pass - time.monotonic()) > 0:
        timed = watcher is None or not watcher.complete
        agent.nudge.wait(min(remaining, check_every if timed else remaining, _seal_due_in(agent)))
        agent.nudge.clear()  # before `take`: an event after it sets the nudge again
        if agent.stop.is_set() or (reload_requested is not None and reload_requested.is_set()):
            break
        if agent.queued_estimate >= agent.config.queue.max_bytes:
            # The queue is full, or nearly: a seal would pause reading here, before the next pass
            # has found the files created meanwhile (so the stats could not show them behind).
            # Latency is moot until uploads free space; the pass reads, seals and pauses.
            continue
        if watcher is not None:
            rescan, written, named = watcher.take()
            if rescan or tailer.needs_pass(named, written):
                break
            if written:
                agent.consume(tailer.growth())
        if timed and time.monotonic() < next_pass:
            grew = agent.consume(tailer.growth())
            longest = max(GROWTH_CHECK, min(GROWTH_CHECK_IDLE, agent.policy.caught_up_age))
            check_every = GROWTH_CHECK if grew else min(longest, 2 * check_every)
        agent.maybe_seal(caught_up=True)
    return check_every


def _seal_due_in(agent: Agent) -> float:
    """Seconds until the in-memory batch comes of age for a caught-up reader (never 0: no spin)."""
    if agent.batch.empty:
        return float("inf")
    return max(0.01, agent.batch.created + agent.policy.caught_up_age - time.monotonic())


# --- shutdown ----------------------------------------------------------------------------------------


def shutdown(agent: Agent, say: Callable[[str], None]) -> int:
    """Seal what is in memory, give the uploader `drain_timeout` seconds, then stop; exit 0.

    The uploader thread ends on the stop signal (after its request in flight); a fresh one, with
    its own stop event, drains the queue for the rest of the period. A request still in flight at
    the deadline is cut: its batch stays queued and is sent again (same batch id) on the next start.
    """
    agent.stop_reason = agent.stop_reason or "stop"
    log.info("event=shutdown reason=%r drain_timeout=%.1f", agent.stop_reason, agent.config.shutdown.drain_timeout)
    try:
        agent.seal_now()
    except StopReading:
        log.info("event=seal_at_shutdown_skipped reason=queue_full (offsets unchanged: it will be read again)")
    except RemoteUploaderError as exc:
        log.error("event=seal_at_shutdown_failed reason=%r (offsets unchanged: it will be read again)", str(exc))
    deadline = time.monotonic() + agent.config.shutdown.drain_timeout
    agent.uploader.join(timeout=max(0.0, deadline - time.monotonic()))
    sink = agent.uploader.sink
    if agent.uploader.is_alive():
        abort_in_flight(sink)
    elif agent.spool.next_batch() is not None and time.monotonic() < deadline:
        _drain(agent, sink, deadline)
    queue = agent.spool.stats()
    log.info("event=stopped queued_batches=%d queued_records=%d", queue.batches, queue.records)
    if queue.batches:
        say(_("Stopped; {records} records in {batches} batches stay queued for the next start").format(
            records=queue.records, batches=queue.batches))
    else:
        say(_("Stopped; everything read was delivered"))
    return EXIT_OK


def _drain(agent: Agent, sink: Sink, deadline: float) -> None:
    server = agent.config.server
    done = threading.Event()
    backoff = Backoff(server.backoff_base, server.backoff_cap, server.retry_after_cap)
    drainer = Uploader(agent.upload_spool, sink, backoff, agent.stats, agent.config.agent.id, threading.Event(), done,
                       server.upload_concurrency)
    drainer.start()
    while (remaining := deadline - time.monotonic()) > 0 and drainer.is_alive():
        if drainer.idle.wait(min(0.1, remaining)) and agent.spool.next_batch() is None:
            break
    done.set()
    if drainer.is_alive():
        abort_in_flight(sink)
        drainer.join(timeout=2.0)


def abort_in_flight(sink: Sink) -> None:
    """Cut an HTTP request in flight (shutting its socket down wakes the thread blocked on it).
    Sinks without a connection (tests' own) have nothing to cut."""
    abort = getattr(sink, "abort", None)
    if abort is not None:
        abort()


def _stop_workers(agent: Agent) -> None:
    """Kill the extraction workers: they hold no state, and after a stop in the middle of a backlog
    their answers, which nobody will read, can fill their pipes so that they never see the end of
    their input (ParallelScanner.close would then wait 5 s for each)."""
    if agent.scanner is not None:
        agent.scanner.kill()


# --- reload ------------------------------------------------------------------------------------------


def apply_reload(agent: Agent, reload: Callable[[], Config], say: Callable[[str], None]) -> bool:
    """Load the configuration again, build its pipeline, and have the agent put it in force
    between two passes; keep the old one on error (nothing is changed until the new one is whole).

    Sources, batching, read and shutdown settings take effect at once, server settings with the
    next request; the state directory, metrics address and worker count need a restart.
    """
    old = agent.config
    try:
        new = reload()
        for key in ("state_dir", "metrics_listen", "workers"):
            if getattr(new.agent, key) != getattr(old.agent, key):
                log.warning("event=config_reload_partial key=agent.%s action=restart_to_apply", key)
        pipeline = Pipeline.build(dataclasses.replace(new, agent=dataclasses.replace(
            new.agent, state_dir=old.agent.state_dir, metrics_listen=old.agent.metrics_listen,
            workers=old.agent.workers)))
    except (RemoteUploaderError, ValueError) as exc:
        log.error("event=config_reload_failed reason=%r action=keeping_old_config", str(exc))
        say(_("Configuration not reloaded ({reason}); the old one stays in force").format(
            reason=exc.translated() if isinstance(exc, RemoteUploaderError) else exc))
        return False
    agent.reconfigure(pipeline)
    log.info("event=config_reloaded sources=%d", len(new.sources))
    say(_("Configuration reloaded: {n} sources").format(n=len(new.sources)))
    return True


# --- stats -------------------------------------------------------------------------------------------


class StatsReporter(threading.Thread):
    """Every `agent.stats_interval` seconds: the stats block to the terminal (translated) and a
    `key=value` line to the log (English). Runs beside reading, so it reports while reading is
    paused by a full queue too: which files are behind, and by how many bytes."""

    def __init__(self, agent: Agent, tailer: Tailer, say: Callable[[str], None]) -> None:
        super().__init__(name="stats", daemon=True)
        self.agent = agent
        self.tailer = tailer
        self.say = say
        self.stop = threading.Event()

    def run(self) -> None:
        spool: Spool | None = None
        try:
            # Stats off (0): look again once a minute only, for a reload that turns them on; an
            # idle agent's threads should not wake for nothing (docs/forever.md, Idle cost).
            while not self.stop.wait(self.agent.config.agent.stats_interval or STATS_OFF_RECHECK):
                if not self.agent.config.agent.stats_interval:
                    continue
                if spool is None:
                    spool = Spool(self.agent.config.agent.state_dir, readonly=True)
                for line in self.lines(spool):
                    self.say(line)
        except Exception as exc:  # stats must never take the agent down
            log.warning("event=stats_failed reason=%r", str(exc))
        finally:
            if spool is not None:
                spool.close()

    def lines(self, spool: Spool) -> list[str]:
        stats, queue = self.agent.stats, spool.stats()
        lags = self.tailer.lag()
        behind = [lag for lag in lags if lag.behind > 0]
        log.info("event=stats memory_ips=%d queued_batches=%d queued_records=%d queue_mb=%.2f lines=%d "
                 "occurrences=%d batches_sent=%d failed_attempts=%d dead=%d paused=%s files=%d files_behind=%d "
                 "bytes_behind=%d", stats.memory_ips, queue.batches, queue.records, queue.disk_bytes / 1e6,
                 stats.lines, stats.occurrences, stats.batches_sent, stats.batches_failed, queue.dead_batches,
                 stats.paused, len(lags), len(behind), sum(lag.behind for lag in behind))
        for lag in behind:
            log.info("event=file_behind path=%s bytes=%d status=%s open=%s", lag.path, lag.behind, lag.status,
                     lag.open)
        return render_block(stats, queue) + behind_lines(behind, paused=stats.paused)


def behind_lines(behind: list[Lag], *, paused: bool) -> list[str]:
    lines = []
    if paused:
        lines.append(_("Reading paused: the queue is full (waiting for uploads); the files are the buffer"))
    names = {"active": _("active"), "rotated": _("rotated"), "copy": _("copy of a truncated file")}
    for lag in sorted(behind, key=lambda lag: -lag.behind):
        state = names.get(lag.status, lag.status)
        if lag.status != "active" and lag.open:
            state = _("{state}, kept open").format(state=state)
        lines.append(_("Behind: {path}: {bytes} bytes ({state})").format(path=lag.path, bytes=lag.behind,
                                                                          state=state))
    return lines
