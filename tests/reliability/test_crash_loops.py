"""Crash loops: the agent SIGKILLed again and again, at random moments and at chosen points, while the
peer fails requests, resets connections after storing, answers slowly, and is itself killed.

tests/e2e/test_crash.py already kills `once` 24 times at random and once at each crash point; these go
further: `forever` with growing logs, every crash point many times under faults, the collector
stand-in killed mid-ingest, and (in the long run) hundreds of kills.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers.agent import write_access_log, write_config
from tests.helpers.receiver import Receiver
from tests.helpers.receiver_fixtures import ReceiverProcess
from tests.reliability.harness import AgentProcess, Row, record, run, scales, tally

SMALL_BATCHES = {"min_upload_batch": 20, "force_upload_threshold": 150, "max_memory_ips": 300, "max_batch_age": 0.2}


def _faulty(peer: Receiver | ReceiverProcess, seed: int) -> None:
    """The fault mix of every loop: 5xx/429/408, resets before or after storing, slow answers."""
    peer.fail_fraction(0.12, statuses=(500, 503, 429, 408), seed=seed, retry_after=0.1)
    peer.reset_fraction(0.08, after_store=seed % 2 == 0, seed=seed + 1)
    peer.delay_fraction(0.05, seconds=0.3, seed=seed + 2)


def _config(tmp_path: Path, url: str, token: str) -> Path:
    return write_config(tmp_path / "agent.toml", url=url, token=token, state_dir=tmp_path / "state",
                        sources=[str(tmp_path / "logs" / "*.log")], batching=SMALL_BATCHES,
                        read={"block_size": "16KiB", "poll_interval": 0.05, "partial_line_idle": 0.2},
                        shutdown={"drain_timeout": 10.0})


@pytest.mark.parametrize("kills", scales(12, 200))
def test_forever_killed_at_random_moments_while_logs_grow_and_the_peer_fails(
        tmp_path: Path, receiver: Receiver, kills: int) -> None:
    (tmp_path / "logs").mkdir()
    logs = [tmp_path / "logs" / f"app-{i}.log" for i in range(3)]
    expected: Counter[str] = Counter()
    for index, log in enumerate(logs):
        expected += write_access_log(log, 3000, seed=index, distinct=1500)
    config = _config(tmp_path, receiver.url, receiver.token)
    agent = AgentProcess(tmp_path, "forever", "-c", str(config))
    rng = random.Random(6)
    for n in range(kills):
        _faulty(receiver, seed=n)
        agent.start()
        time.sleep(rng.uniform(0.1, 0.9))
        agent.kill()
        log = rng.choice(logs)  # the logs keep growing between (and during) the agent's lives
        expected += write_access_log(log, rng.randint(50, 600), seed=1000 + n, distinct=2000, append=True)

    receiver.clear_faults()
    back = time.monotonic()
    agent.start()
    arrived = receiver.wait_for_total(sum(expected.values()), timeout=120)
    recovery = time.monotonic() - back
    assert agent.stop() == 0, agent.stderr()[-3000:]
    lost, doubled = tally(expected, receiver.counts())
    record(Row("crash/forever-random", "SIGKILL of `forever` at random moments",
               "`forever` on 3 growing logs killed at a random moment (0.1-0.9 s) and restarted; the peer "
               "fails 12% (5xx/429/408), resets 8% of connections, delays 5%", kills, lost, doubled,
               recovery if arrived else None, long=kills > 50))
    assert arrived, f"only {receiver.total()} of {sum(expected.values())} occurrences arrived"
    assert (lost, doubled) == (0, 0)


POINTS = ("after_seal", "after_post", "before_ack", "after_ack")


@pytest.mark.parametrize("kills", scales(16, 200))
def test_every_crash_point_many_times_under_faults(tmp_path: Path, receiver: Receiver, kills: int) -> None:
    (tmp_path / "logs").mkdir()
    log = tmp_path / "logs" / "app.log"
    expected = write_access_log(log, 2000, seed=3, distinct=1000)
    config = _config(tmp_path, receiver.url, receiver.token)
    rng = random.Random(11)
    killed_at: Counter[str] = Counter()
    runs = 0
    while sum(killed_at.values()) < kills:
        point = POINTS[sum(killed_at.values()) % len(POINTS)]
        _faulty(receiver, seed=runs)
        runs += 1
        result = run(config, "once", env={"REMOTE_UPLOADER_CRASH_AT": f"{point}:{rng.randint(1, 4)}"})
        if result.returncode == -9:
            killed_at[point] += 1
        else:  # it finished before reaching the point that often: give it more to do
            assert result.returncode == 0, result.stderr[-3000:]
        expected += write_access_log(log, rng.randint(100, 500), seed=500 + runs, distinct=1500, append=True)
        assert runs < kills * 4, f"the crash points were reached only {dict(killed_at)} times in {runs} runs"

    receiver.clear_faults()
    back = time.monotonic()
    final = run(config, "once")
    recovery = time.monotonic() - back
    lost, doubled = tally(expected, receiver.counts())
    record(Row("crash/points", "SIGKILL at each crash point",
               "`once` killed right after a batch is sealed, after a POST is sent, before and after its "
               f"acknowledgement is recorded (each point {kills // 4}+ times, at its 1st-4th pass), under the "
               "same peer faults", kills, lost, doubled, recovery, long=kills > 50))
    assert final.returncode == 0, final.stderr[-3000:]
    assert min(killed_at[p] for p in POINTS) >= kills // len(POINTS) - 1
    assert (lost, doubled) == (0, 0)


@pytest.mark.parametrize("kills", scales(8, 100))
def test_peer_killed_and_restarted_during_ingest(tmp_path: Path, receiver_process: ReceiverProcess,
                                                 kills: int) -> None:
    """The collector stand-in (its counts in SQLite) is SIGKILLed mid-ingest; sometimes the agent too."""
    (tmp_path / "logs").mkdir()
    log = tmp_path / "logs" / "app.log"
    expected = write_access_log(log, 4000, seed=8, distinct=2500)
    config = _config(tmp_path, receiver_process.url, receiver_process.token)
    agent = AgentProcess(tmp_path, "forever", "-c", str(config)).start()
    rng = random.Random(21)
    both = 0
    for n in range(kills):
        receiver_process.wait_for_requests(1, timeout=10)
        time.sleep(rng.uniform(0.05, 0.5))
        receiver_process.kill()
        if rng.random() < 0.3:  # a power cut takes both
            agent.kill()
            both += 1
        expected += write_access_log(log, rng.randint(100, 800), seed=100 + n, distinct=2500, append=True)
        time.sleep(rng.uniform(0.0, 0.6))
        receiver_process.start()
        receiver_process.reset_fraction(0.1, after_store=True, seed=n)
        if not agent.alive():
            agent.start()

    receiver_process.clear_faults()
    back = time.monotonic()
    arrived = receiver_process.wait_for_total(sum(expected.values()), timeout=120)
    recovery = time.monotonic() - back
    assert agent.stop() == 0, agent.stderr()[-3000:]
    lost, doubled = tally(expected, receiver_process.counts())
    record(Row("collector/peer-kill", "peer SIGKILLed during ingest",
               f"the fault-injecting peer (counts in SQLite) killed mid-ingest and restarted while `forever` "
               f"runs; {both} of the kills also took the agent; 10% of connections reset after storing",
               kills, lost, doubled, recovery if arrived else None, long=kills > 50))
    assert arrived
    assert (lost, doubled) == (0, 0)
