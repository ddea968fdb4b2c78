"""Reports that ride on batches are throttled, but never past a change of the page's mark."""

from __future__ import annotations

from pathlib import Path

from remote_uploader.collector.reports import Reports
from remote_uploader.collector.storage.sqlite import SqliteStorage
from remote_uploader.protocol import AgentReport
from tests.helpers.batches import at


def test_a_report_with_a_batch_is_written_when_due_or_when_its_mark_changes(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "c.db", timeout=2)
    storage.migrate()
    try:
        reports = Reports(storage, lag_warn=60, write_every=3600)

        def kept() -> AgentReport:
            return storage.agent_reports()["web-1"].report

        calm = AgentReport(version="1", queued_batches=1, oldest_age=1.0)
        reports.from_header("web-1", calm.encode(), at(0))
        assert kept() == calm
        reports.from_header("web-1", AgentReport(version="1", queued_batches=2, oldest_age=2.0).encode(), at(1))
        assert kept() == calm  # the same mark, within write_every: not written
        failing = AgentReport(version="1", queued_batches=3, oldest_age=3.0, failing_for=2.0)
        reports.from_header("web-1", failing.encode(), at(2))
        assert kept() == failing  # uploads fail now: the mark changes, written at once
        old = AgentReport(version="1", queued_batches=3, oldest_age=61.0)
        reports.from_header("web-1", old.encode(), at(3))
        assert kept() == failing  # still backing up (by age now): the same mark
        reports.from_header("web-1", calm.encode(), at(4))
        assert kept() == calm  # caught up: written at once
        reports.from_header("web-1", "not json", at(5))
        reports.from_header("web-1", None, at(6))
        assert kept() == calm
        heartbeat = AgentReport(version="1")
        reports.store("web-1", heartbeat, at(7))
        assert kept() == heartbeat  # a heartbeat is always written
    finally:
        storage.close()
