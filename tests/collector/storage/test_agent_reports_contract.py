"""The latest status report per agent (migration 8), on SQLite and a real PostgreSQL."""

from __future__ import annotations

from remote_uploader.collector.storage.base import Storage
from remote_uploader.protocol import AgentReport
from tests.helpers.batches import at


def test_the_latest_report_of_each_agent_is_kept_and_an_earlier_arrival_does_not_replace_it(storage: Storage) -> None:
    assert storage.agent_reports() == {}
    first = AgentReport(version="1.0", queued_batches=3, queued_records=30, queued_bytes=900, oldest_age=12.5,
                        failing_for=4.25, dead_batches=1, sources=(("/var/log/a.log", 100), ("", 0)))
    storage.store_agent_report("web-1", first, at(10))
    storage.store_agent_report("web-2", AgentReport(version="1.1"), at(10))
    stored = storage.agent_reports()
    assert set(stored) == {"web-1", "web-2"}
    assert (stored["web-1"].report, stored["web-1"].received_at) == (first, at(10))
    assert stored["web-2"].report == AgentReport(version="1.1")  # oldest_age None: an empty queue

    later = AgentReport(version="1.0", queued_batches=0)
    storage.store_agent_report("web-1", later, at(20))
    storage.store_agent_report("web-1", first, at(15))  # answered out of order: older than the kept one
    assert storage.agent_reports()["web-1"].report == later
    assert storage.agent_reports()["web-1"].received_at == at(20)
