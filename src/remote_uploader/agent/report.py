"""The agent's status report (docs/protocol.md, "Agent status"): what its queue holds, since when
its uploads fail, its version. The collector shows it on its Agents page, so that an agent whose
queue backs up while its uploads fail is visible as soon as one request gets through.

The uploader, the one thread that reads the queue, makes the report (`refresh`); the sink's
sender threads read the latest text (`text`) and send it as the `Agent-Status` header of every
batch. A report is made at most once a second while the state it describes stays the same (a
queue of 100,000 batches takes a scan to count), and at once when uploads start or stop failing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from remote_uploader import __version__
from remote_uploader.agent.spool import Spool
from remote_uploader.errors import StateError
from remote_uploader.protocol import MAX_STATUS_SOURCES, AgentReport

log = logging.getLogger(__name__)

REFRESH_EVERY = 1.0  # seconds between two reports made from the queue while nothing changed
LAGS_EVERY = 10.0  # seconds between two looks at the files' read lag (a glob and a stat per file)

# Per followed file: (path, bytes not read yet). The tailer's `lag`, where there is one (`forever`).
Lags = Callable[[], Sequence[tuple[str, int]]]


class Reporter:
    """The latest report, made by the uploader thread and read by the sender threads."""

    def __init__(self, lags: Lags | None = None) -> None:
        self._lock = threading.Lock()
        self._text = ""
        self._made = -REFRESH_EVERY
        self._failing = False
        self._lags = lags
        self._sources: tuple[tuple[str, int], ...] = ()
        self._lags_made = -LAGS_EVERY

    def watch_lags(self, lags: Lags) -> None:
        """Report the read lag of each followed file too (`forever`, once its tailer exists)."""
        self._lags, self._lags_made = lags, -LAGS_EVERY

    def refresh(self, spool: Spool, failing_for: float, *, force: bool = False) -> str:
        """Make a new report unless the last one is recent and uploads are in the same state; the
        latest report's text."""
        now = time.monotonic()
        failing = failing_for > 0
        if not force and failing == self._failing and now - self._made < REFRESH_EVERY and self._text:
            return self._text
        # A report is a courtesy: trouble making one (the queue database busy or failing, a file
        # gone between a glob and its stat) keeps the last one and never stops the uploads.
        try:
            queue = spool.stats()
        except (StateError, OSError) as exc:
            log.debug("event=report_failed reason=%r", str(exc))
            return self.text()
        if self._lags is not None and now - self._lags_made >= LAGS_EVERY:
            try:
                lags = self._lags()
            except OSError as exc:
                log.debug("event=report_lags_failed reason=%r", str(exc))
            else:
                behind = sorted(((path, lag) for path, lag in lags if lag > 0), key=lambda item: -item[1])
                self._sources, self._lags_made = tuple(behind[:MAX_STATUS_SOURCES]), now
        report = AgentReport(
            version=__version__, queued_batches=queue.batches, queued_records=queue.records,
            queued_bytes=queue.body_bytes,
            oldest_age=None if queue.oldest_created is None else max(0.0, time.time() - queue.oldest_created),
            failing_for=failing_for, dead_batches=queue.dead_batches, sources=self._sources,
        )
        text = report.encode()
        with self._lock:
            self._text, self._made, self._failing = text, now, failing
        return text

    def text(self) -> str:
        """The latest report as JSON ("" before the first)."""
        with self._lock:
            return self._text
