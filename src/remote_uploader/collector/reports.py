"""Agents' status reports (docs/protocol.md, "Agent status"): read from the `Agent-Status` header
of each batch, or from a heartbeat's body, and kept as each agent's latest (storage/sql_agents.py).

A report rides on a batch but never decides its fate: an invalid one is ignored (logged), one
that cannot be stored (a busy database) is dropped, and the batch is answered as without it. A
batch may come every few milliseconds, so a report with a batch is written at most once per
`WRITE_EVERY` seconds per agent and process, and at once when its "queue backing up" mark
(`backing_up`) would change: uploads start or stop failing, the oldest batch passes
`agent_lag_warn`, the queue drains. A heartbeat is always written.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta

from remote_uploader.collector.storage.base import Storage, StoredReport
from remote_uploader.errors import StorageError
from remote_uploader.logs import fields
from remote_uploader.protocol import MAX_AGENT_LEN, AgentReport, parse_report

logger = logging.getLogger(__name__)

WRITE_EVERY = 5.0  # seconds between two writes of one agent's report that came with batches
MAX_AGE = 100 * 365 * 86400.0  # seconds: an age beyond a century is shown as a century
MAX_AGENTS = 100_000  # the throttle's memory: agents beyond it are written every time


class Reports:
    """What the ingest and heartbeat routes hand the reports to."""

    def __init__(self, storage: Storage, lag_warn: float, write_every: float = WRITE_EVERY) -> None:
        self.storage = storage
        self.lag_warn = lag_warn
        self.write_every = write_every
        self._lock = threading.Lock()
        self._written: dict[str, tuple[float, bool]] = {}  # agent -> (monotonic time, its mark then)

    def from_header(self, agent: str, text: str | None, received_at: datetime) -> None:
        """Keep the report a batch carried, if any, valid and due; never raises."""
        if not text:
            return
        report = parse_report(text)
        if isinstance(report, str):
            logger.info("agent status ignored", extra=fields(agent=agent[:MAX_AGENT_LEN], reason=report))
            return
        if not self._due(agent, report):
            return
        try:
            self.storage.store_agent_report(agent, report, received_at)
        except StorageError as exc:  # the batch is stored: its report waits for the next one
            with self._lock:
                self._written.pop(agent, None)  # not written: the next one is due at once
            logger.info("agent status not stored", extra=fields(agent=agent, reason=str(exc)))

    def store(self, agent: str, report: AgentReport, received_at: datetime) -> None:
        """A heartbeat's report: always written (StorageError goes to the caller: a 503)."""
        self.storage.store_agent_report(agent, report, received_at)
        with self._lock:
            self._remember(agent, report)

    def _due(self, agent: str, report: AgentReport) -> bool:
        now = time.monotonic()
        with self._lock:
            last = self._written.get(agent)
            if last is not None and now - last[0] < self.write_every and last[1] == self._mark(report):
                return False
            self._remember(agent, report, now)
            return True

    def _remember(self, agent: str, report: AgentReport, now: float | None = None) -> None:
        if agent in self._written or len(self._written) < MAX_AGENTS:
            self._written[agent] = (time.monotonic() if now is None else now, self._mark(report))

    def _mark(self, report: AgentReport) -> bool:
        return backing_up(report, self.lag_warn)


def backing_up(report: AgentReport, lag_warn: float) -> bool:
    """The page's "queue backing up" mark: batches queued while uploads fail, or queued for
    longer than `agent_lag_warn` (the agent cannot send as fast as it reads)."""
    return report.queued_batches > 0 and (report.failing_for > 0 or (report.oldest_age or 0.0) > lag_warn)


def moment_before(stored: StoredReport, seconds: float | None) -> datetime | None:
    """`seconds` before the report arrived (the agent's ages, on the collector's clock)."""
    if seconds is None:
        return None
    return stored.received_at - timedelta(seconds=min(seconds, MAX_AGE))
