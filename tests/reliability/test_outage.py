"""A long collector outage: the queue fills to queue.max_bytes, reading pauses (the files are the
buffer), the logs keep growing and rotating, nothing is dropped, and after the collector returns
everything arrives within about the backoff cap, not after minutes of idle waiting."""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers.agent import write_access_log, write_config
from tests.helpers.receiver import Receiver
from tests.reliability.harness import AgentProcess, Row, record, rotate, run, scales, status, tally

MAX_QUEUE = 24 * 1024
BACKOFF_CAP = 0.5
BEHIND = 64 * 1024  # bytes the reader must have fallen behind the writer while paused


def _paused_and_behind(agent_log: Path) -> tuple[bool, int]:
    """From the agent's log: did the queue fill and reading pause; the most it fell behind."""
    text = agent_log.read_text()
    paused = "event=queue_full" in text and "paused=True" in text
    behind = max((int(n) for n in re.findall(r"event=stats .* bytes_behind=([0-9]+)", text)), default=0)
    return paused, behind


@pytest.mark.parametrize("outage", scales(8.0, 180.0))
def test_long_outage_fills_the_queue_pauses_reading_and_delivers_everything_after(
        tmp_path: Path, receiver: Receiver, outage: float) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    live = logs / "access.log"
    expected = write_access_log(live, 500, seed=1, distinct=3000)
    config = write_config(
        tmp_path / "agent.toml", url=receiver.url, token=receiver.token, state_dir=tmp_path / "state",
        sources=[str(live)],  # the live name only: rotated files are followed by identity
        server={"backoff_base": 0.05, "backoff_cap": BACKOFF_CAP},
        queue={"max_bytes": MAX_QUEUE},
        batching={"min_upload_batch": 50, "force_upload_threshold": 200, "max_memory_ips": 400, "max_batch_age": 0.2},
        read={"block_size": "16KiB", "poll_interval": 0.1, "rotate_grace": 1.0},
        agent={"stats_interval": 1.0},
    )
    agent = AgentProcess(tmp_path, "forever", "-c", str(config)).start()
    assert receiver.wait_for_total(sum(expected.values()), timeout=60)

    receiver.stop()  # the collector goes away: connections refused
    down = time.monotonic()
    rotations = 0
    seed = 10
    max_queued = 0
    # At least `outage` seconds, and until the agent has shown what the test is about (queue full,
    # reading paused, behind the writer): how much a loaded machine writes and reads in a fixed
    # time varies, so the time alone did not always fill the queue. Bounded: a queue that never
    # fills fails below.
    paused, behind, shown = False, 0, False
    while (elapsed := time.monotonic() - down) < outage or (not shown and elapsed < outage + 120):
        seed += 1
        expected += write_access_log(live, 400, seed=seed, distinct=3000, append=True)
        if seed % 5 == 0:
            rotate(live, keep=10_000)  # logrotate deletes beyond `rotate N`: that is the buffer's size, see docs
            rotations += 1
        max_queued = max(max_queued, status(config)["queue"]["body_bytes"])
        time.sleep(0.5)
        paused, behind = _paused_and_behind(tmp_path / "state" / "agent.log")
        shown = paused and behind > BEHIND
    lasted = time.monotonic() - down

    receiver.start()
    back = time.monotonic()
    arrived = receiver.wait_for_total(sum(expected.values()), timeout=120)
    recovery = time.monotonic() - back
    assert agent.stop() == 0, agent.stderr()[-3000:]
    lost, doubled = tally(expected, receiver.counts())
    record(Row("outage/long", "collector away for a long time",
               f"collector unreachable for {lasted:.0f} s while the log grows ({seed - 10} appends) and rotates "
               f"({rotations} renames); queue.max_bytes {MAX_QUEUE // 1024} KiB, server.backoff_cap {BACKOFF_CAP} s; "
               "recovery = collector back to exact counts", 1, lost, doubled, recovery if arrived else None,
               long=outage > 60))
    assert paused, "the queue never reached queue.max_bytes: make the outage write more"
    assert max_queued <= MAX_QUEUE + 16 * 1024, "the queue grew past its limit by more than one batch"
    assert behind > BEHIND, "reading should have paused behind the writer (the files are the buffer)"
    assert arrived, f"{receiver.total()} of {sum(expected.values())} arrived"
    assert (lost, doubled) == (0, 0)


def test_once_gives_up_after_its_retry_budget_and_the_next_run_sends_the_queue(
        tmp_path: Path, receiver: Receiver) -> None:
    """`once` against a dead collector exits 3 saying what is queued; nothing is lost for the next run."""
    log = tmp_path / "access.log"
    expected = write_access_log(log, 3000, seed=4, distinct=2000)
    config = write_config(tmp_path / "agent.toml", url=receiver.url, token=receiver.token,
                          state_dir=tmp_path / "state", sources=[str(log)],
                          server={"max_retry_time": 2.0, "backoff_cap": 0.3})
    receiver.stop()
    failed = run(config, "once")
    queued = status(config)["queue"]
    receiver.start()
    back = time.monotonic()
    final = run(config, "once")
    recovery = time.monotonic() - back
    lost, doubled = tally(expected, receiver.counts())
    record(Row("outage/once-budget", "`once` past its retry budget",
               "`once` with the collector down: exits 3 after server.max_retry_time (2 s) with the data queued; "
               "the next run, collector back, sends it", 1, lost, doubled, recovery))
    assert failed.returncode == 3, failed.stderr
    assert "safely queued" in failed.stdout + failed.stderr
    assert queued["occurrences"] == sum(expected.values())
    assert final.returncode == 0, final.stderr
    assert Counter(receiver.counts()) == expected
    assert (lost, doubled) == (0, 0)
