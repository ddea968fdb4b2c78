"""Crash safety: `once` killed with SIGKILL at random moments, restarted each time, while the
server fails some requests. At the end the server's counts equal the input exactly."""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers.agent import kill, run_agent, start_agent, write_access_log, write_config

KILLS = 24


def test_sigkill_at_random_moments_loses_and_doubles_nothing(tmp_path: Path, receiver_process) -> None:  # type: ignore[no-untyped-def]
    logs = [tmp_path / f"access-{i}.log" for i in range(2)]
    expected: Counter[str] = Counter()
    for index, log in enumerate(logs):
        expected += write_access_log(log, 50_000, seed=100 + index, distinct=3000)  # ~5 MB each
    assert sum(log.stat().st_size for log in logs) > 8_000_000
    receiver_process.fail_fraction(0.15, statuses=(500, 503), seed=7)
    receiver_process.reset_fraction(0.1, after_store=True, seed=8)
    config = write_config(
        tmp_path / "agent.toml", url=receiver_process.url, token=receiver_process.token,
        state_dir=tmp_path / "state", sources=[str(tmp_path / "access-*.log")],
        batching={"min_upload_batch": 50, "force_upload_threshold": 400, "max_memory_ips": 800},
        read={"block_size": "64KiB"},
    )
    rng = random.Random(2026)
    kills = 0
    while kills < KILLS:
        agent = start_agent("once", "-c", str(config))
        time.sleep(rng.uniform(0.05, 0.6))
        if agent.poll() is not None:  # it finished before the kill: nothing left to interrupt
            agent.communicate()
            break
        kill(agent)
        kills += 1
    receiver_process.clear_faults()
    final = run_agent("once", "-c", str(config), timeout=300)
    assert final.returncode == 0, final.stderr
    assert kills >= 20, f"the agent finished after only {kills} kills; make the input larger"
    got = receiver_process.counts()
    lost = sum((expected - Counter(got)).values())
    doubled = sum((Counter(got) - expected).values())
    assert (lost, doubled) == (0, 0)
    assert got == dict(expected)


@pytest.mark.parametrize("point", ["after_seal:3", "after_post:2", "before_ack:2", "after_ack:4"])
def test_sigkill_at_each_chosen_point_loses_and_doubles_nothing(tmp_path: Path, receiver, point: str) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "access.log"
    expected = write_access_log(log, 4000, seed=5, distinct=800)
    config = write_config(tmp_path / "agent.toml", url=receiver.url, token=receiver.token,
                          state_dir=tmp_path / "state", sources=[str(log)],
                          batching={"min_upload_batch": 20, "force_upload_threshold": 100, "max_memory_ips": 200},
                          read={"block_size": "16KiB"})
    crashed = run_agent("once", "-c", str(config), env={"REMOTE_UPLOADER_CRASH_AT": point})
    assert crashed.returncode == -9, crashed.stderr  # it really died at that point
    final = run_agent("once", "-c", str(config))
    assert final.returncode == 0, final.stderr
    assert receiver.counts() == dict(expected)
