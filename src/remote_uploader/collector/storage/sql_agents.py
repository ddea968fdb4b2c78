"""The latest status report of each agent (docs/protocol.md, "Agent status"), in SQL shared by
SQLite and PostgreSQL (mixed into `SqlStorage`). One row per agent name, replaced by each report
it stores: the page shows the last word of every agent, never a history (migration 8).

A report is written in a transaction of its own, never in a batch's: the counts do not wait for
it, and a report that cannot be written (a busy database) is dropped, not a reason to refuse
the batch it came with.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from remote_uploader.collector.storage.base import StoredReport, from_micros, to_micros
from remote_uploader.protocol import AgentReport

_COLUMNS = ("version, queued_batches, queued_records, queued_bytes, oldest_age, failing_for, "
            "dead_batches, sources")


class AgentReportsSql:
    """Needs `_read`, `_write` and `_sql` from the classes it is mixed with."""

    if TYPE_CHECKING:

        def _read(self) -> Any: ...

        def _write(self) -> Any: ...

        def _sql(self, sql: str) -> str: ...

    def store_agent_report(self, agent: str, report: AgentReport, received_at: datetime) -> None:
        """Keep `report` as `agent`'s latest, unless one that arrived later is stored already (two
        requests in flight answered out of order)."""
        values = (report.version, report.queued_batches, report.queued_records, report.queued_bytes,
                  report.oldest_age, report.failing_for, report.dead_batches,
                  json.dumps([list(item) for item in report.sources]))
        with self._write() as cur:
            cur.execute(
                self._sql(
                    f"INSERT INTO agent_reports (agent, received_at, {_COLUMNS}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (agent) DO UPDATE SET "
                    "received_at = excluded.received_at, version = excluded.version, "
                    "queued_batches = excluded.queued_batches, queued_records = excluded.queued_records, "
                    "queued_bytes = excluded.queued_bytes, oldest_age = excluded.oldest_age, "
                    "failing_for = excluded.failing_for, dead_batches = excluded.dead_batches, "
                    "sources = excluded.sources WHERE agent_reports.received_at <= excluded.received_at"
                ),
                (agent, to_micros(received_at), *values),
            )

    def agent_reports(self) -> dict[str, StoredReport]:
        """Every agent's latest report, by agent name."""
        with self._read() as cur:
            cur.execute(f"SELECT agent, received_at, {_COLUMNS} FROM agent_reports")
            rows = cur.fetchall()
        found = {}
        for agent, received, version, batches, records, nbytes, oldest, failing, dead, sources in rows:
            report = AgentReport(
                version=version, queued_batches=int(batches), queued_records=int(records),
                queued_bytes=int(nbytes), oldest_age=None if oldest is None else float(oldest),
                failing_for=float(failing), dead_batches=int(dead),
                sources=tuple((str(name), int(lag)) for name, lag in json.loads(sources)),
            )
            found[agent] = StoredReport(agent, from_micros(int(received)), report)
        return found
