"""`forever` woken by file events (inotify), polling as the fallback, and the adaptive seal.

The event tests set `read.poll_interval` to 60 s: no pass and no timed look at the files comes in
between, so only an event can bring the lines (the receiver's wait gives up long before 60 s).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from remote_uploader.agent.batch import Batch, SealPolicy
from remote_uploader.agent.watch import Watcher, WatchUnavailable
from tests.helpers.agent import start_agent, write_access_log, write_config

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux only")


def _inotify_or_skip(wake: threading.Event) -> Watcher:
    try:
        return Watcher(wake)
    except WatchUnavailable as exc:
        pytest.skip(f"inotify unavailable here: {exc}")


def _run_until(agent, receiver, expected: Counter[str]) -> None:  # type: ignore[no-untyped-def]
    try:
        assert receiver.wait_for_total(sum(expected.values()), timeout=20)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.communicate(timeout=30)
    assert agent.returncode == 0
    assert receiver.counts() == dict(expected)


@linux_only
def test_with_polling_effectively_off_a_write_and_a_new_file_arrive_by_their_events(
        tmp_path: Path, receiver) -> None:  # type: ignore[no-untyped-def]
    _inotify_or_skip(threading.Event()).close()
    logs = tmp_path / "logs"
    logs.mkdir()
    expected = write_access_log(logs / "a.log", 10, seed=1)
    config = write_config(tmp_path / "agent.toml", url=receiver.url, token=receiver.token,
                          state_dir=tmp_path / "state", sources=[str(logs / "*.log")],
                          read={"poll_interval": 60.0, "watch": "inotify"})
    agent = start_agent("forever", "-c", str(config))
    try:
        assert receiver.wait_for_total(sum(expected.values()), timeout=20)  # the first pass
        expected += write_access_log(logs / "a.log", 5, seed=2, append=True)  # a write to an open file
        assert receiver.wait_for_total(sum(expected.values()), timeout=20)
        expected += write_access_log(logs / "b.log", 5, seed=3)  # a new file: only a pass finds it
    except BaseException:
        agent.kill()
        raise
    _run_until(agent, receiver, expected)


def test_with_watch_poll_writes_and_new_files_arrive_by_polling(tmp_path: Path, receiver) -> None:  # type: ignore[no-untyped-def]
    logs = tmp_path / "logs"
    logs.mkdir()
    expected = write_access_log(logs / "a.log", 10, seed=1)
    config = write_config(tmp_path / "agent.toml", url=receiver.url, token=receiver.token,
                          state_dir=tmp_path / "state", sources=[str(logs / "*.log")],
                          read={"poll_interval": 0.2, "watch": "poll"})
    agent = start_agent("forever", "-c", str(config))
    try:
        assert receiver.wait_for_total(sum(expected.values()), timeout=20)
        expected += write_access_log(logs / "a.log", 5, seed=2, append=True)
        assert receiver.wait_for_total(sum(expected.values()), timeout=20)
        expected += write_access_log(logs / "b.log", 5, seed=3)
    except BaseException:
        agent.kill()
        raise
    _run_until(agent, receiver, expected)


@linux_only
def test_an_overflow_of_the_event_queue_asks_for_a_full_pass(tmp_path: Path) -> None:
    """More events than the kernel queues (fs.inotify.max_queued_events) before the watcher reads:
    which files changed is unknown, so the answer is a full pass, not a list of paths."""
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 200_000:
        pytest.skip(f"fs.inotify.max_queued_events is {limit}: too many writes to overflow it in a test")
    watcher = _inotify_or_skip(threading.Event())  # not started: nobody reads the queue meanwhile
    try:
        watcher.watch([str(tmp_path)])
        fds = [os.open(tmp_path / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600) for name in ("x", "y")]
        watcher.read_events()
        watcher.take()
        for n in range(limit + 10):  # alternate: the kernel merges an event identical to the last queued
            os.write(fds[n % 2], b"1")
        for fd in fds:
            os.close(fd)
        assert watcher.read_events()
        rescan, _written, _named = watcher.take()
        assert rescan
        assert watcher.overflows == 1
        os.write(os.open(tmp_path / "x", os.O_WRONLY | os.O_APPEND), b"2")  # descriptor closed at exit
        watcher.read_events()
        rescan, written, _named = watcher.take()
        assert not rescan and written == {str(tmp_path / "x")}  # the take reset it; events flow again
    finally:
        watcher.close()


@linux_only
def test_events_name_the_written_path_and_a_rename_as_a_name_event(tmp_path: Path) -> None:
    watcher = _inotify_or_skip(threading.Event())
    try:
        watcher.watch([str(tmp_path)])
        (tmp_path / "access.log").write_text("10.0.0.1\n")
        watcher.read_events()
        watcher.take()
        with open(tmp_path / "access.log", "a") as f:
            f.write("10.0.0.2\n")
        os.rename(tmp_path / "access.log", tmp_path / "access.log.1")
        watcher.read_events()
        rescan, written, named = watcher.take()
        assert not rescan
        assert str(tmp_path / "access.log") in written
        assert {str(tmp_path / "access.log"), str(tmp_path / "access.log.1")} <= named
    finally:
        watcher.close()


def test_a_caught_up_batch_goes_at_once_while_the_uploader_is_idle_and_waits_while_it_is_busy() -> None:
    policy = SealPolicy(force_upload_threshold=1000, min_upload_batch=10, max_batch_age=1.0)
    batch = Batch(100.0)
    batch.add("access.log", {"192.0.2.1": 1}, 100.0)
    assert policy.should_seal(batch, 100.0, caught_up=True, uploader_free=True)  # nothing in flight: now
    assert not policy.should_seal(batch, 100.4, caught_up=True, uploader_free=False)  # in flight: accumulate
    assert policy.should_seal(batch, 100.5, caught_up=True, uploader_free=False)  # the old bound still holds
    assert not policy.should_seal(batch, 100.0, caught_up=False, uploader_free=True)  # a backlog: the old rules
    assert not policy.should_seal(Batch(100.0), 100.0, caught_up=True, uploader_free=True)  # nothing to seal
