"""A full disk under the state directory: a clear error, offsets that do not move, an agent that keeps
running, and no loss once space returns. The state directory is a small tmpfs mounted for the test."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from remote_uploader.agent.sink import Backoff, Delivered, Uploader
from remote_uploader.agent.spool import SealedBatch, Spool
from remote_uploader.agent.stats import Stats
from remote_uploader.errors import DiskFullError
from tests.helpers.agent import write_access_log, write_config
from tests.helpers.receiver import Receiver
from tests.reliability.harness import (
    AgentProcess,
    Row,
    fill,
    offsets,
    record,
    run,
    small_filesystem,
    tally,
    tmpfs_unavailable_reason,
    wait_until,
)

SKIP = tmpfs_unavailable_reason()


@dataclass
class FullDiskRun:
    """What a `forever` that lived through a full state disk showed: alive while full, everything
    arrived once space came back (and how long that took), and how it stopped."""

    alive: bool
    arrived: bool
    recovery: float | None
    code: int
    stdout: str
    stderr: str


def forever_through_a_full_disk(tmp_path: Path, receiver: Receiver, config: Path, state: Path,
                                expected: Counter[str], while_full: Callable[[AgentProcess], Counter[str]]
                                ) -> FullDiskRun:
    """Starts `forever`, waits for `expected` to arrive, fills the state disk, lets `while_full`
    write more lines (it returns them) and wait for what it must see, holds the disk full 2 s
    more, then gives the space back and waits for every line to arrive. `expected` grows by what
    `while_full` wrote."""
    agent = AgentProcess(tmp_path, "forever", "-c", str(config)).start()
    assert receiver.wait_for_total(sum(expected.values()), timeout=60), agent.stderr()[-2000:]
    filler = fill(state)
    expected += while_full(agent)
    time.sleep(2.0)
    alive = agent.alive()
    filler.unlink()
    back = time.monotonic()
    arrived = receiver.wait_for_total(sum(expected.values()), timeout=120)
    recovery = time.monotonic() - back
    code = agent.stop()
    return FullDiskRun(alive, arrived, recovery if arrived else None, code, agent.stdout(), agent.stderr())


@pytest.mark.skipif(SKIP is not None, reason=f"full-disk scenario skipped: {SKIP}")
def test_full_state_disk_pauses_without_moving_offsets_and_loses_nothing(tmp_path: Path, receiver: Receiver) -> None:
    log = tmp_path / "access.log"
    expected = write_access_log(log, 1000, seed=1, distinct=800)
    seen: dict[str, object] = {}

    def while_full(agent: AgentProcess) -> Counter[str]:
        written = write_access_log(log, 3000, seed=2, distinct=3000, append=True)
        assert wait_until(lambda: "event=disk_full" in agent.stderr(), timeout=30), agent.stderr()[-2000:]
        seen["before"] = offsets(config)
        written += write_access_log(log, 1000, seed=3, distinct=3000, append=True)
        time.sleep(2.0)
        seen["after"] = offsets(config)
        seen["stuck_total"] = receiver.total()
        return written

    with small_filesystem(tmp_path / "state", "3m") as state:
        config = write_config(tmp_path / "agent.toml", url=receiver.url, token=receiver.token, state_dir=state,
                              sources=[str(log)], read={"poll_interval": 0.1, "block_size": "16KiB"},
                              batching={"min_upload_batch": 20, "force_upload_threshold": 100,
                                        "max_memory_ips": 200, "max_batch_age": 0.2})
        result = forever_through_a_full_disk(tmp_path, receiver, config, state, expected, while_full)
    lost, doubled = tally(expected, receiver.counts())
    record(Row("disk/full", "state directory disk full",
               "the state directory (a 3 MiB tmpfs) filled up while `forever` reads new lines; space given back "
               "after 2+ s; recovery = space back to exact counts", 1, lost, doubled, result.recovery))
    assert result.alive, "the agent must keep running on a full disk"
    assert seen["before"] == seen["after"], "offsets moved while nothing could be queued"
    assert isinstance(seen["stuck_total"], int) and seen["stuck_total"] < sum(expected.values())
    assert "nothing lost" in result.stdout or "offsets_unchanged=true" in result.stderr
    assert result.stderr.count("event=disk_full") <= 3, "the disk-full error should be said once, not on every retry"
    assert result.arrived and result.code == 0
    assert Counter(receiver.counts()) == expected


class _AckFailsWhileDiskFull(Spool):
    """A queue whose disk is full for the first `full` acknowledgements."""

    full = 2

    def ack(self, seq: int) -> None:
        if self.full > 0:
            self.full -= 1
            raise DiskFullError(f"no space left for the queue database {self.path}")
        super().ack(seq)


class _CountingSink:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, batch_id: str, body: bytes, encoding: str) -> Delivered:
        self.sent.append(batch_id)
        return Delivered(1, duplicate=len(self.sent) > 1)

    def health(self) -> dict[str, object]:
        return {}

    def close(self) -> None:
        pass


def test_uploader_keeps_sending_after_a_full_disk_refused_an_acknowledgement(tmp_path: Path) -> None:
    """Regression: a DiskFullError from `ack` used to end the uploader thread for the rest of the run."""
    spool = _AckFailsWhileDiskFull(tmp_path)
    spool.commit(SealedBatch("b-1", time.time(), 1, 1, "identity", b"{}"), {})
    sink = _CountingSink()
    wake, stop = threading.Event(), threading.Event()
    uploader = Uploader(spool, sink, Backoff(0.01, 0.02, 1.0), Stats(), "agent", wake, stop)
    uploader.start()
    try:
        assert wait_until(lambda: spool.next_batch() is None, timeout=30)
    finally:
        stop.set()
        uploader.join(10)
        spool.close()
    assert uploader.fatal is None
    assert sink.sent == ["b-1"] * 3  # resent until the ack could be recorded; the collector saw duplicates


@pytest.mark.skipif(SKIP is not None, reason=f"full-disk scenario skipped: {SKIP}")
def test_forever_keeps_running_when_a_new_file_appears_on_a_full_state_disk(tmp_path: Path,
                                                                              receiver: Receiver) -> None:
    """Registering a new file writes the state directory too (outside the seal): it must wait for
    space like the seal does, not end `forever`."""
    logs = tmp_path / "logs"
    logs.mkdir()
    expected = write_access_log(logs / "a.log", 200, seed=11)

    def while_full(agent: AgentProcess) -> Counter[str]:
        written = write_access_log(logs / "b.log", 300, seed=12)  # a new file: a new record to write
        written += write_access_log(logs / "a.log", 100, seed=13, append=True)
        assert wait_until(lambda: "event=disk_full" in agent.stderr() or not agent.alive(), timeout=30)
        return written

    with small_filesystem(tmp_path / "state", "3m") as state:
        config = write_config(tmp_path / "agent.toml", url=receiver.url, token=receiver.token, state_dir=state,
                              sources=[str(logs / "*.log")], read={"poll_interval": 0.1},
                              batching={"max_batch_age": 0.2})
        result = forever_through_a_full_disk(tmp_path, receiver, config, state, expected, while_full)
    lost, doubled = tally(expected, receiver.counts())
    record(Row("disk/full-new-file", "state directory disk full as a new file appears",
               "the state directory (a 3 MiB tmpfs) filled up, then a new log file appears in the glob (a new "
               "record to write) while the old one grows; space given back after 2+ s; recovery = space back "
               "to exact counts", 1, lost, doubled, result.recovery))
    assert result.alive, "forever must keep running on a full state disk: " + result.stderr[-2000:]
    assert result.arrived and result.code == 0, result.stderr[-2000:]
    assert Counter(receiver.counts()) == expected


@pytest.mark.skipif(SKIP is not None, reason=f"full-disk scenario skipped: {SKIP}")
def test_forever_started_on_a_full_state_disk_waits_for_space_then_delivers_everything_once(
        tmp_path: Path, receiver: Receiver) -> None:
    """Generative finding F1: opening the queue database on a full disk (a WAL database needs space
    for its -wal and -shm files) is a full disk, not damage: no exit 4, no "run reset-state"; the
    agent waits for space like every other disk-full write."""
    log = tmp_path / "access.log"
    expected = write_access_log(log, 200, seed=21)
    with small_filesystem(tmp_path / "state", "1m") as state:
        config = write_config(tmp_path / "agent.toml", url=receiver.url, token=receiver.token, state_dir=state,
                              sources=[str(log)], read={"poll_interval": 0.1}, batching={"max_batch_age": 0.2})
        first = AgentProcess(tmp_path, "forever", "-c", str(config)).start()
        assert receiver.wait_for_total(sum(expected.values()), timeout=60)
        assert first.stop() == 0

        filler = fill(state)
        expected += write_access_log(log, 300, seed=22, append=True)
        agent = AgentProcess(tmp_path, "forever", "-c", str(config)).start()
        said = wait_until(lambda: "Disk full" in agent.stdout() or not agent.alive(), timeout=30)
        time.sleep(1.0)
        alive = agent.alive()
        filler.unlink()
        arrived = receiver.wait_for_total(sum(expected.values()), timeout=120)
        code = agent.stop()
        out, errors = agent.stdout(), agent.stderr()
    assert said and alive, f"forever must wait on a full state disk, not exit: {out[-1000:]} {errors[-2000:]}"
    assert "damaged" not in out + errors and "reset-state" not in out + errors
    assert out.count("Disk full") == 1, "the full disk should be said once, not on every retry"
    assert arrived and code == 0, errors[-2000:]
    assert Counter(receiver.counts()) == expected


@pytest.mark.skipif(SKIP is not None, reason=f"full-disk scenario skipped: {SKIP}")
def test_forever_whose_lock_cannot_be_written_waits_and_stops_cleanly_on_sigterm(
        tmp_path: Path, receiver: Receiver) -> None:
    """A fresh state directory on a full disk: the pid cannot be written into the lock. A clear
    disk-full message and a wait (no traceback, no exit 1); SIGTERM meanwhile is a clean stop."""
    log = tmp_path / "access.log"
    write_access_log(log, 50, seed=23)
    with small_filesystem(tmp_path / "state", "1m") as state:
        fill(state)
        config = write_config(tmp_path / "agent.toml", url=receiver.url, token=receiver.token, state_dir=state,
                              sources=[str(log)], read={"poll_interval": 0.1})
        agent = AgentProcess(tmp_path, "forever", "-c", str(config)).start()
        said = wait_until(lambda: "Disk full" in agent.stdout() or not agent.alive(), timeout=30)
        alive = agent.alive()
        code = agent.stop()
        out, errors = agent.stdout(), agent.stderr()
    assert said and alive, f"forever must wait on a full state disk, not exit: {out[-1000:]} {errors[-2000:]}"
    assert "Traceback" not in errors
    assert code == 0, errors[-2000:]
    assert receiver.total() == 0


@pytest.mark.skipif(SKIP is not None, reason=f"full-disk scenario skipped: {SKIP}")
@pytest.mark.parametrize("full_at", ["start", "reading"])
def test_once_on_a_state_disk_that_stays_full_gives_up_after_its_retry_budget_and_loses_nothing(
        tmp_path: Path, receiver: Receiver, full_at: str) -> None:
    """`once` runs from cron or a timer: on a disk that stays full it must end, not hang (a `once`
    of the generative checker, seed 7005, still waited after 120 s). It waits for space as long as
    for an unreachable collector (server.max_retry_time), then exits 3 with nothing lost: the next
    run, with space back, delivers everything once."""
    log = tmp_path / "access.log"
    expected = write_access_log(log, 200, seed=24)
    with small_filesystem(tmp_path / "state", "1m") as state:
        config = write_config(tmp_path / "agent.toml", url=receiver.url, token=receiver.token, state_dir=state,
                              sources=[str(log)], server={"max_retry_time": 2.0}, read={"poll_interval": 0.1})
        if full_at == "reading":  # the queue exists; new lines cannot be sealed
            assert run(config, "once").returncode == 0
            expected += write_access_log(log, 300, seed=25, append=True)
        filler = fill(state)
        gave_up = run(config, "once", timeout=120)
        filler.unlink()
        again = run(config, "once", timeout=120)
    assert gave_up.returncode == 3, gave_up.stdout + gave_up.stderr
    assert "disk full" in (gave_up.stdout + gave_up.stderr).lower()
    assert "damaged" not in gave_up.stdout + gave_up.stderr
    assert again.returncode == 0, again.stdout + again.stderr
    assert Counter(receiver.counts()) == expected
