"""The agent's status report (agent/report.py), made from a real queue database."""

from __future__ import annotations

import time
from pathlib import Path

from remote_uploader import __version__
from remote_uploader.agent.report import Reporter
from remote_uploader.agent.spool import SealedBatch, Spool
from remote_uploader.protocol import AgentReport, parse_report


def sealed(batch_id: str, records: int, created: float) -> SealedBatch:
    return SealedBatch(batch_id, created, records, records * 3, "identity", b"{" + b" " * 98 + b"}")


def report(text: str) -> AgentReport:
    parsed = parse_report(text)
    assert isinstance(parsed, AgentReport), parsed
    return parsed


def test_the_report_says_what_the_queue_holds_and_the_files_most_behind_first(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    try:
        reporter = Reporter(lags=lambda: [("/var/log/a.log", 5), ("/var/log/b.log", 0), ("/var/log/c.log", 9)])
        empty = report(reporter.refresh(spool, 0.0))
        assert (empty.version, empty.queued_batches, empty.oldest_age) == (__version__, 0, None)
        assert empty.sources == (("/var/log/c.log", 9), ("/var/log/a.log", 5))  # nothing behind: not listed
        spool.commit(sealed("b1", 10, time.time() - 100), {})
        spool.commit(sealed("b2", 5, time.time()), {})
        full = report(reporter.refresh(spool, 2.5, force=True))
        assert (full.queued_batches, full.queued_records, full.queued_bytes) == (2, 15, 200)
        assert full.oldest_age is not None and full.oldest_age >= 100
        assert full.failing_for == 2.5
        assert reporter.text() == full.encode()
    finally:
        spool.close()


def test_a_report_is_made_again_within_a_second_only_when_uploads_start_or_stop_failing(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    try:
        reporter = Reporter()
        first = reporter.refresh(spool, 0.0)
        spool.commit(sealed("b1", 10, time.time()), {})
        assert reporter.refresh(spool, 0.0) == first  # the same state, under a second later: reused
        failing = report(reporter.refresh(spool, 1.0))
        assert failing.queued_batches == 1 and failing.failing_for == 1.0
    finally:
        spool.close()

