"""Splits and replays that cannot double count (issue 9, holes 6 and 7), against the real collector.

Each scenario stores a batch at the collector and kills the agent before it records the
acknowledgement (crash point `before_ack`), so the batch is stored *and* still queued; then
something changes that today's batch-id dedup cannot see through (a smaller body limit turns the
replay into halves; pruned batch ids; a dead letter requeued long after), and the next `once`
must count nothing twice. Both storage backends.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.e2e.test_delivery_answers import Impostor
from tests.helpers.agent import run_agent, write_access_log, write_config
from tests.helpers.collector_fixtures import CollectorProcess, CollectorThread

CRASH_AFTER_STORED = {"REMOTE_UPLOADER_CRASH_AT": "before_ack:1"}


def _setup(tmp_path: Path, collector: CollectorThread, lines: int = 2000) -> tuple[Path, Counter[str]]:
    log = tmp_path / "access.log"
    expected = write_access_log(log, lines, seed=7, distinct=1500)
    config = write_config(tmp_path / "agent.toml", url=collector.url, token=collector.token,
                          state_dir=tmp_path / "state", sources=[str(log)], server={"max_retry_time": 30.0})
    return config, expected


def _once_crashing_after_the_first_batch_is_stored(config: Path) -> None:
    crashed = run_agent("once", "-c", str(config), env=CRASH_AFTER_STORED)
    assert crashed.returncode == -9, crashed.stdout + crashed.stderr


def _prune_every_batch_id(collector: CollectorThread) -> None:
    """What `retention_days` does after a month, or at once after a collector clock jump."""
    from remote_uploader.collector.storage import open_storage

    storage = open_storage(collector.db_url, pool_size=1)
    try:
        storage.prune_batches(datetime.now(UTC) + timedelta(days=3650))
        assert storage.count_batches() == 0
    finally:
        storage.close()


def test_a_stored_batch_split_after_the_collector_lowered_its_body_limit_is_counted_once(
        tmp_path: Path, collector_process_any: CollectorProcess) -> None:
    collector = collector_process_any  # a process: the test reads its log
    config, expected = _setup(tmp_path, collector)
    _once_crashing_after_the_first_batch_is_stored(config)
    collector.stop()
    collector.extra_args = ["--max-body", "4096"]
    collector.start()

    result = run_agent("once", "-c", str(config))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "413" in collector.log(), "the replay must have been split"
    assert collector.counts() == dict(expected)


def test_a_replay_after_the_collector_pruned_its_batch_ids_is_counted_once(
        tmp_path: Path, collector_any: CollectorThread) -> None:
    collector = collector_any
    config, expected = _setup(tmp_path, collector)
    _once_crashing_after_the_first_batch_is_stored(config)
    collector.stop()
    _prune_every_batch_id(collector)
    collector.start()

    result = run_agent("once", "-c", str(config))

    assert result.returncode == 0, result.stdout + result.stderr
    assert collector.counts() == dict(expected)


def test_dead_letters_requeued_long_after_they_were_stored_are_counted_once(
        tmp_path: Path, collector: CollectorThread) -> None:
    config, expected = _setup(tmp_path, collector)
    _once_crashing_after_the_first_batch_is_stored(config)
    # The stored batch's retry meets a proxy that refuses it for good: it is dead-lettered.
    proxy = Impostor(400, b'{"detail": [{"field": "body", "error": "refused by a proxy"}]}')
    try:
        refused = write_config(tmp_path / "refused.toml", url=proxy.url, token=collector.token,
                               state_dir=tmp_path / "state", sources=[str(tmp_path / "access.log")])
        run_agent("once", "-c", str(refused))
    finally:
        proxy.close()
    status = run_agent("status", "-c", str(config))
    assert "Dead letters: 0" not in status.stdout, status.stdout
    # Months later: the collector has pruned its batch ids; the operator requeues.
    collector.stop()
    _prune_every_batch_id(collector)
    collector.start()
    assert run_agent("requeue", "-c", str(config)).returncode == 0

    result = run_agent("once", "-c", str(config))

    assert result.returncode == 0, result.stdout + result.stderr
    assert collector.counts() == dict(expected)
