"""A destroyed queue database doubles nothing and loses nothing (issue 9, hole 10).

The queue database held the only record of the offsets: after it was destroyed, `reset-state`
re-read every file and counted what had been delivered a second time. delivered.json, beside it,
keeps each file's row as of what the collector acknowledged, so recovery resumes there: what was
delivered is not sent again, what was only queued (lost with the database) is read again. What the
collector stored without its answer reaching the agent, it tells `reset-state` (stream ranges,
docs/protocol.md "Streams"), which resumes past it.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers.agent import run_agent, write_access_log, write_config
from tests.helpers.receiver import Receiver


def _destroy(db: Path, kind: str) -> None:
    size = db.stat().st_size
    if kind == "truncated":
        os.truncate(db, size // 3)
    elif kind == "zero-filled":
        db.write_bytes(b"\0" * size)
    else:
        db.write_bytes(os.urandom(size))
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)


@pytest.mark.parametrize("kind", ["truncated", "zero-filled", "garbage"])
def test_reset_state_after_a_destroyed_queue_database_loses_and_doubles_nothing(
        tmp_path: Path, receiver: Receiver, kind: str) -> None:
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    delivered = write_access_log(logs[0], 2000, seed=21) + write_access_log(logs[1], 1000, seed=22)
    config = write_config(tmp_path / "agent.toml", url=receiver.url, token=receiver.token,
                          state_dir=tmp_path / "state", sources=[str(p) for p in logs],
                          server={"max_retry_time": 1.0})
    assert run_agent("once", "-c", str(config)).returncode == 0
    # More lines, sealed into batches that never leave: the collector is away.
    queued = write_access_log(logs[0], 700, seed=23, append=True) + write_access_log(logs[1], 300, seed=24,
                                                                                       append=True)
    receiver.fail_next(100_000, 503)
    away = run_agent("once", "-c", str(config))
    assert away.returncode == 3, away.stdout + away.stderr
    receiver.clear_faults()
    _destroy(tmp_path / "state" / "queue.db", kind)
    refused = run_agent("once", "-c", str(config))
    assert refused.returncode == 4 and "reset-state" in refused.stderr

    reset = run_agent("reset-state", "-c", str(config))
    assert reset.returncode == 0, reset.stdout + reset.stderr
    result = run_agent("once", "-c", str(config))

    assert result.returncode == 0, result.stdout + result.stderr
    assert Counter(receiver.counts()) == delivered + queued


# Killed right after an acknowledgement is recorded, one upload at a time: nothing is in flight, so what
# the collector holds is exactly what was acknowledged (a kill mid-POST is the documented window below).
@pytest.mark.parametrize("crash", ["after_ack:1", "after_ack:3"])
def test_a_queue_destroyed_after_a_sigkill_mid_delivery_is_recovered_exactly(
        tmp_path: Path, receiver: Receiver, crash: str) -> None:
    expected, config = _many_batches(tmp_path, receiver)
    killed = run_agent("once", "-c", str(config), env={"REMOTE_UPLOADER_CRASH_AT": crash})
    assert killed.returncode == -9, killed.stdout + killed.stderr
    _destroy(tmp_path / "state" / "queue.db", "garbage")

    reset = run_agent("reset-state", "-c", str(config))
    assert reset.returncode == 0, reset.stdout + reset.stderr
    result = run_agent("once", "-c", str(config))

    assert result.returncode == 0, result.stdout + result.stderr
    assert Counter(receiver.counts()) == expected


def test_a_batch_stored_but_unacknowledged_when_the_queue_is_destroyed_is_not_doubled(
        tmp_path: Path, receiver: Receiver) -> None:
    expected, config = _many_batches(tmp_path, receiver)
    killed = run_agent("once", "-c", str(config), env={"REMOTE_UPLOADER_CRASH_AT": "before_ack:3"})
    assert killed.returncode == -9
    _destroy(tmp_path / "state" / "queue.db", "garbage")
    reset = run_agent("reset-state", "-c", str(config))
    assert reset.returncode == 0, reset.stdout + reset.stderr
    assert "they resume after it" in reset.stdout, "the collector's stream ranges moved the file past batch 3"
    assert run_agent("once", "-c", str(config)).returncode == 0
    assert Counter(receiver.counts()) == expected


def _many_batches(tmp_path: Path, receiver: Receiver) -> tuple[Counter[str], Path]:
    """A log that makes many small batches, sent one at a time (nothing else in flight at a kill)."""
    log = tmp_path / "a.log"
    expected = write_access_log(log, 3000, seed=25, distinct=1500)
    config = write_config(tmp_path / "agent.toml", url=receiver.url, token=receiver.token,
                          state_dir=tmp_path / "state", sources=[str(log)], server={"upload_concurrency": 1},
                          batching={"min_upload_batch": 10, "force_upload_threshold": 100, "max_memory_ips": 200})
    return expected, config
