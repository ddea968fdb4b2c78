"""The agent's status report (docs/protocol.md, "Agent status") from a real agent to a real
collector: the queue it reported while its uploads were refused is on the Agents page and in
`GET /v1/agents` as soon as one request gets through; a batch without a report (an older agent)
is taken as before; whatever a report says is shown as text."""

from __future__ import annotations

import json
import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from remote_uploader import __version__
from remote_uploader.agent.sink import HttpSink
from remote_uploader.config import ServerConfig
from remote_uploader.protocol import STATUS_HEADER, STATUS_PATH, AgentReport, format_time
from tests.helpers.agent import run_agent, start_agent, wait_for, write_access_log, write_config
from tests.helpers.collector_fixtures import CollectorThread
from tests.helpers.faultproxy import FaultProxy

HOSTILE = "<script>alert('x')</script>\"é\u202e"


def _batch(agent: str, batch_id: str) -> dict[str, object]:
    now = format_time(datetime.now(UTC))
    record = {"ip": "203.0.113.7", "count": 2, "first_seen": now, "last_seen": now, "source": "/var/log/a.log"}
    return {"agent": agent, "batch_id": batch_id, "sent_at": now, "records": [record]}


def _agents(collector: CollectorThread) -> dict[str, dict[str, object]]:
    response = collector.get("/v1/agents")
    assert response.status_code == 200
    return {item["agent"]: item for item in response.json()["items"]}


def _agents_page(collector: CollectorThread) -> str:
    signed = httpx.post(collector.url + "/signin", data={"token": collector.add_token("viewer", read_only=True)})
    assert signed.status_code == 303
    page = httpx.get(collector.url + "/agents", cookies=signed.cookies)
    assert page.status_code == 200
    return page.text


def test_the_queue_an_agent_reported_while_refused_is_shown_once_a_batch_gets_through(
        collector_any: CollectorThread, tmp_path: Path) -> None:
    token = collector_any.token  # named test-agent, as write_config's agent.id
    proxy = FaultProxy(collector_any.port)
    try:
        proxy.add("status_503", 3)  # the collector "refuses for a while", then takes everything
        log = tmp_path / "access.log"
        expected = write_access_log(log, 300, distinct=40)
        config = write_config(tmp_path / "agent.toml", url=proxy.url, token=token, state_dir=tmp_path / "state",
                              sources=[str(log)])
        result = run_agent("once", "-c", str(config))
        assert result.returncode == 0, result.stderr
        assert proxy.applied["status_503"] == 3
    finally:
        proxy.close()
    assert collector_any.counts() == dict(expected)
    agent = _agents(collector_any)["test-agent"]
    assert agent["batches"] == 1  # one batch (a small log, one read), so its report is the last one kept
    status = agent["status"]
    assert isinstance(status, dict)
    # The report that got through was made for the batch being sent: it was still queued, and
    # the uploads had been failing since the first 503.
    assert status["version"] == __version__
    assert status["queued_batches"] >= 1 and status["queued_records"] >= 1 and status["queued_bytes"] > 0
    assert status["failing_since"] is not None and status["oldest_queued_at"] is not None
    assert status["backing_up"] is True
    page = _agents_page(collector_any)
    assert "QUEUE BACKING UP" in page and "uploads failing since" in page
    batches = status["queued_batches"]
    assert f"{batches} {'batch' if batches == 1 else 'batches'}, {status['queued_records']:,} records" in page


def test_a_batch_without_a_report_is_stored_as_before_and_shows_no_queue(collector_any: CollectorThread) -> None:
    token = collector_any.add_token("old-agent")
    response = collector_any.post_batch(_batch("old-agent", "b-1"), token=token)
    assert response.status_code == 200 and response.json()["accepted"] == 1
    assert _agents(collector_any)["old-agent"]["status"] is None
    assert "not reported" in _agents_page(collector_any)


@pytest.mark.parametrize("report", ["not json", "[1, 2]", '{"queued_batches": -1}', '{"version": "a\\u0000b"}',
                                    "{" * 10_000])
def test_an_invalid_report_never_refuses_its_batch(collector_any: CollectorThread, report: str) -> None:
    token = collector_any.add_token("careless")
    response = collector_any.post_batch(_batch("careless", "b-1"), token=token, headers={STATUS_HEADER: report})
    assert response.status_code == 200 and response.json()["duplicate"] is False
    assert _agents(collector_any)["careless"]["status"] is None


def test_a_hostile_version_and_source_are_shown_as_text(collector_any: CollectorThread) -> None:
    token = collector_any.add_token("hostile")
    report = json.dumps({"version": HOSTILE, "queued_batches": 2, "queued_records": 9, "queued_bytes": 100,
                         "oldest_age": 5.0, "failing_for": 0, "sources": [[HOSTILE, 12]], "unknown": {"x": 1}})
    response = collector_any.post_batch(_batch("hostile", "b-1"), token=token, headers={STATUS_HEADER: report})
    assert response.status_code == 200
    status = _agents(collector_any)["hostile"]["status"]
    assert isinstance(status, dict)
    assert status["version"] == HOSTILE and status["sources"] == [{"source": HOSTILE, "behind": 12}]
    assert status["backing_up"] is False  # queued, but not failing and not old
    page = _agents_page(collector_any)
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&#34;é\u202e" in page


def test_a_heartbeat_keeps_the_latest_report_under_the_token_name(collector_any: CollectorThread) -> None:
    token = collector_any.add_token("quiet")
    assert collector_any.post_batch(_batch("quiet", "b-1"), token=token).status_code == 200
    report = {"version": "9.9", "queued_batches": 0, "queued_records": 0, "queued_bytes": 0, "oldest_age": None,
              "failing_for": 0}
    answer = httpx.post(collector_any.url + STATUS_PATH, json=report, headers=collector_any.headers(token))
    assert (answer.status_code, answer.json()) == (200, {"agent": "quiet", "stored": True})
    status = _agents(collector_any)["quiet"]["status"]
    assert isinstance(status, dict)
    assert (status["version"], status["queued_batches"], status["oldest_queued_at"]) == ("9.9", 0, None)
    reader = collector_any.add_token("reader", read_only=True)
    refused = httpx.post(collector_any.url + STATUS_PATH, json=report, headers=collector_any.headers(reader))
    assert refused.status_code == 403
    invalid = httpx.post(collector_any.url + STATUS_PATH, content=b"[]", headers=collector_any.headers(token))
    assert invalid.status_code == 400 and invalid.json()["detail"][0]["field"] == "body"
    huge = httpx.post(collector_any.url + STATUS_PATH, content=b" " * 5000, headers=collector_any.headers(token))
    assert huge.status_code == 413


def test_an_agent_with_nothing_to_send_reports_its_empty_queue_alone(
        collector_any: CollectorThread, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    expected = write_access_log(log, 50, distinct=5)
    config = write_config(tmp_path / "agent.toml", url=collector_any.url, token=collector_any.token,
                          state_dir=tmp_path / "state", sources=[str(log)], read={"poll_interval": 0.1},
                          batching={"max_batch_age": 0.2}, server={"status_every": 0.2})
    agent = start_agent("forever", "-c", str(config))
    try:
        # A batch's own report always counts that batch: an empty queue can only come from a
        # heartbeat, sent once the agent had nothing to send for `status_every`.
        def heartbeat_seen() -> bool:
            status = _agents(collector_any).get("test-agent", {}).get("status")
            return isinstance(status, dict) and status["queued_batches"] == 0 and status["oldest_queued_at"] is None
        assert wait_for(heartbeat_seen, timeout=60)
    finally:
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=60)
    assert agent.returncode == 0, err
    assert collector_any.counts() == dict(expected)
    status = _agents(collector_any)["test-agent"]["status"]
    assert isinstance(status, dict)
    assert (status["version"], status["failing_since"], status["backing_up"]) == (__version__, None, False)
    assert "QUEUE BACKING UP" not in _agents_page(collector_any)


def test_a_collector_before_reports_answers_the_heartbeat_404_and_the_sink_stops_asking(
        receiver: Any) -> None:
    sink = HttpSink(ServerConfig(url=receiver.url, token=receiver.token, timeout=10.0))
    try:
        assert sink.status_refused is False
        assert sink.send_status(AgentReport(version=__version__).encode()) == 404
        assert sink.status_refused is True
    finally:
        sink.close()


def test_an_agent_that_has_only_heartbeated_is_listed_with_its_report_and_no_batch(
        collector_any: CollectorThread, tmp_path: Path) -> None:
    """An agent with nothing to send since it started is alive, and says so by heartbeats only:
    it is listed (API and page), with its report, as having sent no batch yet."""
    log = tmp_path / "access.log"
    log.write_bytes(b"")  # nothing to send
    config = write_config(tmp_path / "agent.toml", url=collector_any.url, token=collector_any.token,
                          state_dir=tmp_path / "state", sources=[str(log)], read={"poll_interval": 0.1},
                          server={"status_every": 0.2})
    agent = start_agent("forever", "-c", str(config))
    try:
        assert wait_for(lambda: "test-agent" in _agents(collector_any), timeout=60)
        page = _agents_page(collector_any)
    finally:
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=60)
    assert agent.returncode == 0, err
    assert collector_any.counts() == {}
    item = _agents(collector_any)["test-agent"]
    assert (item["batches"], item["records"], item["duplicates"]) == (0, 0, 0)
    assert (item["first_seen"], item["last_seen"], item["last_batch_id"], item["last_batch_sent_at"]) == (
        None, None, None, None)
    status = item["status"]
    assert isinstance(status, dict)
    assert (status["version"], status["queued_batches"], status["backing_up"]) == (__version__, 0, False)
    assert ">test-agent</a>" in page and "no batch yet" in page and '<strong class="state up">UP</strong>' in page


def test_a_file_not_read_to_its_end_is_shown_with_its_bytes_behind(
        collector_any: CollectorThread, tmp_path: Path) -> None:
    """The per-file read lag a `forever` agent reports, end to end. Deterministic: the file ends
    in an unterminated line that a live file holds back for `partial_line_idle` (an hour here),
    so the agent stays exactly that many bytes behind for as long as the test looks."""
    log = tmp_path / "access.log"
    held = b"client 198.51.100.2 half-writ"
    log.write_bytes(b"client 198.51.100.1 ok\n" + held)
    config = write_config(tmp_path / "agent.toml", url=collector_any.url, token=collector_any.token,
                          state_dir=tmp_path / "state", sources=[str(log)],
                          read={"poll_interval": 0.1, "partial_line_idle": 3600},
                          batching={"max_batch_age": 0.2}, server={"status_every": 0.2})
    agent = start_agent("forever", "-c", str(config))

    def behind() -> list[object]:
        status = _agents(collector_any).get("test-agent", {}).get("status")
        return status["sources"] if isinstance(status, dict) else []

    try:
        # Its first reports may come before its first read (the whole file behind); the lag is
        # looked at again every 10 s (agent/report.py, LAGS_EVERY), by heartbeats meanwhile.
        assert wait_for(lambda: behind() == [{"source": str(log), "behind": len(held)}], timeout=90), behind()
        page = _agents_page(collector_any)
    finally:
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=60)
    assert agent.returncode == 0, err
    assert collector_any.counts() == {"198.51.100.1": 1}
    assert f'Not read yet, by its report: <span class="source">{log}</span> {len(held)} B' in page
