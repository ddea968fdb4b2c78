"""Tailing rules of `forever` one by one: new files, compressed rotations, unfinished lines, copies."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from remote_uploader.agent.tail import rotated_names
from tests.helpers.agent import start_agent, write_access_log, write_config

READ = {"poll_interval": 0.1, "rotate_grace": 0.5, "partial_line_idle": 30.0}


@pytest.fixture
def follow(tmp_path: Path, receiver: Any) -> Iterator[Any]:
    """Start `forever` on the given globs; stops it (SIGTERM, exit 0 checked) after the test."""
    agents = []

    def start(*paths: str) -> None:
        config = write_config(tmp_path / "agent.toml", url=receiver.url, token=receiver.token,
                              state_dir=tmp_path / "state", sources=list(paths), read=READ,
                              batching={"max_batch_age": 0.1})
        agents.append(start_agent("forever", "-c", str(config)))

    yield start
    for agent in agents:
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=30)
        assert agent.returncode == 0, err


def line(ip: str, n: int = 0) -> str:
    return f'{ip} - - [28/Nov/2026:10:00:00 +0000] "GET /{n} HTTP/1.1" 200 1\n'


def test_a_new_file_matching_the_glob_is_picked_up(tmp_path: Path, receiver, follow) -> None:  # type: ignore[no-untyped-def]
    first = write_access_log(tmp_path / "a.log", 100, seed=1)
    follow(str(tmp_path / "*.log"))
    assert receiver.wait_for_total(sum(first.values()), timeout=20)
    second = write_access_log(tmp_path / "b.log", 100, seed=2)
    assert receiver.wait_for_total(sum((first + second).values()), timeout=10)
    time.sleep(0.5)
    assert receiver.counts() == dict(first + second)


def test_compressed_rotations_are_skipped(tmp_path: Path, receiver, follow) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "access.log"
    expected = write_access_log(log, 100, seed=3)
    write_access_log(tmp_path / "plain.log", 100, seed=4)
    with open(tmp_path / "plain.log", "rb") as src, open(tmp_path / "access.log.2.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)  # not even gzip: a .gz name is enough to be skipped
    follow(str(log) + "*")
    assert receiver.wait_for_total(sum(expected.values()), timeout=20)
    time.sleep(1.0)
    assert receiver.counts() == dict(expected)


def test_an_unfinished_last_line_waits_for_its_end(tmp_path: Path, receiver, follow) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "access.log"
    log.write_text(line("192.0.2.1"))
    follow(str(log))
    assert receiver.wait_for_total(1, timeout=20)
    with log.open("a") as handle:
        handle.write("203.0.113.")  # the writer is in the middle of a line
    time.sleep(1.0)  # ten polls
    with log.open("a") as handle:
        handle.write('77 - - [28/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 1\n')
    assert receiver.wait_for_total(2, timeout=10)
    time.sleep(0.5)
    assert receiver.counts() == {"192.0.2.1": 1, "203.0.113.77": 1}


def test_an_unfinished_last_line_of_a_rotated_file_is_taken_after_the_grace(tmp_path: Path, receiver,  # type: ignore[no-untyped-def]
                                                                          follow) -> None:
    log = tmp_path / "access.log"
    log.write_text(line("192.0.2.1") + "198.51.100.9 - - unfinished")
    follow(str(log))
    assert receiver.wait_for_total(1, timeout=20)
    os.rename(log, tmp_path / "access.log.1")
    log.write_text(line("192.0.2.2"))
    assert receiver.wait_for_total(3, timeout=10)
    time.sleep(0.5)
    assert receiver.counts() == {"192.0.2.1": 1, "192.0.2.2": 1, "198.51.100.9": 1}


def test_a_copy_of_a_live_file_is_never_read(tmp_path: Path, receiver, follow) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "access.log"
    expected = write_access_log(log, 300, seed=5)
    follow(str(log) + "*")
    assert receiver.wait_for_total(sum(expected.values()), timeout=20)
    shutil.copyfile(log, tmp_path / "access.log.1")  # logrotate `copy` (no truncate), or an operator's cp
    expected += write_access_log(log, 100, seed=6, append=True)
    assert receiver.wait_for_total(sum(expected.values()), timeout=10)
    time.sleep(1.0)
    assert receiver.counts() == dict(expected)


def test_rotated_names_are_the_usual_logrotate_suffixes(tmp_path: Path) -> None:
    names = ["access.log", "access.log.1", "access.log.12", "access.log-20261128", "access.log-2026-11-28.1",
             "access.log-20261128-1764300000", "access.log.2.gz", "access.log.bak", "access.logger", "error.log.1"]
    for name in names:
        (tmp_path / name).write_text("")
    found = {Path(p).name for p in rotated_names([str(tmp_path / "access.log")])}
    assert found == {"access.log.1", "access.log.12", "access.log-20261128", "access.log-2026-11-28.1",
                     "access.log-20261128-1764300000"}


def _bytes_read(port: int) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return -1
    found = [line for line in text.splitlines() if line.startswith("remote_uploader_bytes_read_total ")]
    return float(found[0].split()[1]) if found else -1


def test_a_writer_flushing_mid_address_is_counted_once_complete(tmp_path: Path, receiver) -> None:  # type: ignore[no-untyped-def]
    """stdio block buffering cuts lines anywhere: `client 10.0.0.` now, `123 GET /` later."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tmp_path / "app.log"
    log.write_bytes(b"start 192.0.2.9 ok\nclient 10.0.0.")
    config = write_config(tmp_path / "agent.toml", url=receiver.url, token=receiver.token,
                          state_dir=tmp_path / "state", sources=[str(log)],
                          read={**READ, "partial_line_idle": 0.2}, batching={"max_batch_age": 0.1},
                          agent={"metrics_listen": f"127.0.0.1:{port}"})
    agent = start_agent("forever", "-c", str(config))
    try:
        # The complete part of the unfinished line ("client ") is taken once the file is idle.
        assert receiver.wait_for_total(1, timeout=30)
        complete = len(b"start 192.0.2.9 ok\nclient ")
        deadline = time.monotonic() + 30
        while _bytes_read(port) < complete and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _bytes_read(port) >= complete
        with log.open("ab") as handle:
            handle.write(b"123 GET /\n")
        assert receiver.wait_for_total(2, timeout=30)
        time.sleep(0.3)  # room for a wrong count to arrive
    finally:
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=30)
    assert agent.returncode == 0, err
    assert receiver.counts() == {"192.0.2.9": 1, "10.0.0.123": 1}
