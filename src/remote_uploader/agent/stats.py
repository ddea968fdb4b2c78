"""Counters of a run and the stats block the old guide printed (pending IPs, queue MB, pressure)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from remote_uploader.agent.spool import QueuedBatch, QueueStats


@dataclass
class Stats:
    """Plain counters; written by one thread each (reader or uploader), read by anyone.

    Observers of uploads (the metrics' latency histogram) add themselves to `on_sent`: each is
    called with the round trip of every acknowledged batch, in the uploader's thread."""

    started: float = field(default_factory=time.time)
    lines: int = 0
    bytes_read: int = 0
    occurrences: int = 0
    long_lines: int = 0
    untimed_lines: int = 0  # lines of sources with a timestamp pattern where no time was found
    rotations: int = 0  # followed files that left their live path
    truncations: int = 0  # followed files that lost their content (truncated, replaced)
    source_errors: int = 0
    batches_sealed: int = 0
    records_sealed: int = 0
    batches_sent: int = 0
    records_sent: int = 0
    occurrences_sent: int = 0
    batches_duplicate: int = 0
    batches_failed: int = 0
    batches_split: int = 0
    batches_dead: int = 0
    recovered_records: int = 0
    memory_ips: int = 0
    max_memory_ips: int = 0
    paused: bool = False
    last_success: float | None = None
    on_sent: list[Callable[[float], None]] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def note_sent(self, queued: QueuedBatch, latency: float, *, duplicate: bool) -> None:
        with self._lock:
            self.batches_sent += 1
            self.records_sent += queued.records
            self.occurrences_sent += queued.occurrences
            self.batches_duplicate += int(duplicate)
            self.last_success = time.time()
        for observe in self.on_sent:
            observe(latency)

    @property
    def memory_pressure(self) -> bool:
        """Near the in-memory cap (90%), or reading paused because the queue is full."""
        return self.paused or (self.max_memory_ips > 0 and self.memory_ips >= 0.9 * self.max_memory_ips)


def render_block(stats: Stats, queue: QueueStats) -> list[str]:
    """The stats block, line by line (English here; the CLI translates it when asked)."""
    from remote_uploader.i18n import _

    elapsed = max(time.time() - stats.started, 1e-9)
    mb = stats.bytes_read / 1e6
    lines = [
        _("Pending IPs: {memory} in memory, {queued} queued ({batches} batches)").format(
            memory=stats.memory_ips, queued=queue.records, batches=queue.batches),
        # What is queued (the request bodies), not the database files: SQLite's WAL keeps its size
        # after the batches in it were acknowledged, which read as "4 MB queued" with nothing queued.
        _("Persistent queue size: {size:.2f} MB").format(size=queue.body_bytes / 1e6),
        _("Read: {mb:.1f} MB, {lines} lines, {ips} IP occurrences ({rate:.1f} MB/s)").format(
            mb=mb, lines=stats.lines, ips=stats.occurrences, rate=mb / elapsed),
        _("Sent: {batches} batches, {records} records ({failed} failed attempts, {dead} dead letters)").format(
            batches=stats.batches_sent, records=stats.records_sent, failed=stats.batches_failed,
            dead=queue.dead_batches),
    ]
    if stats.long_lines:
        lines.append(_("Long lines scanned in pieces: {n}").format(n=stats.long_lines))
    if stats.untimed_lines:
        lines.append(_("Lines without a time matching their source's timestamp_pattern (read time used): {n}").format(
            n=stats.untimed_lines))
    if stats.memory_pressure:
        lines.append(_("WARNING: memory pressure: in-memory batch near MAX_MEMORY_IPS or reading paused "
                       "because the queue is full"))
    return lines
