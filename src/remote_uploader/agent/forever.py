"""`forever`: follow the configured files and ship what is appended, until a signal says stop.

Polling is the source of truth (every `read.poll_interval` seconds every glob is expanded again
and every file read from its offset); shutdown seals the in-memory batch, drains the queue for
`shutdown.drain_timeout` seconds and exits 0 with whatever is unsent still queued.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from types import FrameType

from remote_uploader.agent.runner import Agent, StopReading, install_signal_handlers
from remote_uploader.config import Config
from remote_uploader.errors import RemoteUploaderError
from remote_uploader.i18n import _

log = logging.getLogger(__name__)


def run_forever(config: Config, *, say: Callable[[str], None] = lambda line: None,
                reload: Callable[[], Config] | None = None) -> int:
    agent = Agent(config, say=say)
    install_signal_handlers(agent)
    if reload is not None:
        _install_reload(agent, reload)
    try:
        agent.recover()
        agent.uploader.start()
        next_stats = time.monotonic() + config.agent.stats_interval
        while not agent.stop.is_set():
            try:
                agent.read_all(take_partial_after=agent.config.read.partial_line_idle)
                agent.maybe_seal(caught_up=True)
            except StopReading:
                break
            if agent.config.agent.stats_interval and time.monotonic() >= next_stats:
                for line in agent.stats_lines():
                    log.info("event=stats %s", line)
                next_stats = time.monotonic() + agent.config.agent.stats_interval
            agent.stop.wait(agent.config.read.poll_interval)
        return _shutdown(agent, say)
    finally:
        agent.close()


def _shutdown(agent: Agent, say: Callable[[str], None]) -> int:
    """Seal what is in memory, give the uploader `drain_timeout` seconds, then stop."""
    agent.stop_reason = agent.stop_reason or "stop"
    try:
        agent.seal_now()
    except RemoteUploaderError as exc:
        log.error("event=seal_at_shutdown_failed reason=%r (offsets unchanged: it will be read again)", str(exc))
    deadline = time.monotonic() + agent.config.shutdown.drain_timeout
    agent.stop.clear()
    agent.wake.set()
    while time.monotonic() < deadline and agent.spool.next_batch() is not None:
        agent.uploader.idle.wait(0.1)
    agent.stop.set()
    queue = agent.spool.stats()
    say(_("Stopped; {records} records in {batches} batches stay queued for the next start").format(
        records=queue.records, batches=queue.batches))
    return 0


def _install_reload(agent: Agent, reload: Callable[[], Config]) -> None:
    """SIGHUP: load the config again; on an error keep the old one and say why."""

    def handler(signum: int, frame: FrameType | None) -> None:
        try:
            agent.config = reload()
            log.info("event=config_reloaded sources=%d", len(agent.config.sources))
        except RemoteUploaderError as exc:
            log.error("event=config_reload_failed reason=%r action=keeping_old_config", str(exc))

    signal.signal(signal.SIGHUP, handler)
