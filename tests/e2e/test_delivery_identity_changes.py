"""Changing the agent id, the token or the token's name never strands or doubles queued batches
(issue 9, hole 9); `test` says what `once` will send, and the agent shows the collector's reason."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tests.helpers.agent import run_agent, write_access_log, write_config
from tests.helpers.collector_fixtures import CollectorThread


def _config(tmp_path: Path, url: str, token: str, agent_id: str) -> Path:
    return write_config(tmp_path / "agent.toml", url=url, token=token, state_dir=tmp_path / "state",
                        sources=[str(tmp_path / "access.log")], agent={"id": agent_id},
                        server={"max_retry_time": 3.0})


def _queue_while_the_collector_is_away(tmp_path: Path, collector: CollectorThread) -> Counter[str]:
    expected = write_access_log(tmp_path / "access.log", 1500, seed=11)
    collector.stop()
    away = run_agent("once", "-c", str(_config(tmp_path, collector.url, collector.token, "test-agent")))
    assert away.returncode == 3, away.stdout + away.stderr
    collector.start()
    return expected


def test_batches_queued_before_the_agent_id_and_token_changed_are_delivered_once(
        tmp_path: Path, collector: CollectorThread) -> None:
    expected = _queue_while_the_collector_is_away(tmp_path, collector)
    config = _config(tmp_path, collector.url, collector.add_token("web-2"), "web-2")

    checked = run_agent("test", "-c", str(config))
    result = run_agent("once", "-c", str(config))

    assert "test-agent" in checked.stdout and "web-2" in checked.stdout, checked.stdout
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert result.returncode == 0, result.stdout + result.stderr
    assert collector.counts() == dict(expected)


def test_a_batch_stored_before_the_token_was_renamed_is_not_counted_again(
        tmp_path: Path, collector: CollectorThread) -> None:
    expected = write_access_log(tmp_path / "access.log", 1500, seed=12)
    first = _config(tmp_path, collector.url, collector.token, "test-agent")
    crashed = run_agent("once", "-c", str(first), env={"REMOTE_UPLOADER_CRASH_AT": "before_ack:1"})
    assert crashed.returncode == -9
    # The operator renames the agent: a new token under the new name, the old one revoked.
    config = _config(tmp_path, collector.url, collector.add_token("renamed"), "renamed")

    result = run_agent("once", "-c", str(config))

    assert result.returncode == 0, result.stdout + result.stderr
    assert collector.counts() == dict(expected)


def test_a_refusal_shows_the_collectors_own_reason(tmp_path: Path, collector: CollectorThread) -> None:
    write_access_log(tmp_path / "access.log", 100, seed=13)
    config = _config(tmp_path, collector.url, collector.add_token("reader", read_only=True), "test-agent")

    result = run_agent("once", "-c", str(config))

    assert result.returncode == 3
    assert "this token may only read" in result.stdout + result.stderr
