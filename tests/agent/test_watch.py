"""The file-event watcher (inotify): events name the paths written and renamed; an overflow of the
kernel's queue asks for a full pass."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

from remote_uploader.agent.watch import Watcher, WatchUnavailable

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux only")


def _inotify_or_skip(wake: threading.Event) -> Watcher:
    try:
        return Watcher(wake)
    except WatchUnavailable as exc:
        pytest.skip(f"inotify unavailable here: {exc}")


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
