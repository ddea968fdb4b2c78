"""`forever` woken by file events (inotify), polling as the fallback, and the adaptive seal.

The event tests set `read.poll_interval` to 60 s: no pass and no timed look at the files comes in
between, so only an event can bring the lines (the receiver's wait gives up long before 60 s).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

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
