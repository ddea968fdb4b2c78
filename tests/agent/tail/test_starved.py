"""copytruncate rotations faster than the reader: the reader starved (a loaded machine) while the
file was copied and truncated twice. In process, pass by pass."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from remote_uploader.agent.runner import Agent
from remote_uploader.agent.tail import Tailer
from tests.agent.tail.test_events import LINE, step
from tests.agent.tail.test_identity import NoSink, config_for, queued_counts


def append(log: Path, numbers: range) -> None:
    with log.open("a") as handle:
        handle.write("".join(LINE.format(n=n) for n in numbers))


@pytest.mark.parametrize("shift", [True, False], ids=["copies-shifted", "copies-numbered-up"])
@pytest.mark.parametrize("regrown", [5, 10, 30])
def test_two_copytruncates_between_two_looks_lose_nothing_written_outside_their_windows(
        tmp_path: Path, shift: bool, regrown: int) -> None:
    log = tmp_path / "app.log"
    append(log, range(1, 11))
    agent = Agent(config_for(tmp_path, log), sink=NoSink())
    try:
        tailer = Tailer(agent.collaborators())
        step(agent, tailer)
        append(log, range(11, 21))  # not looked at yet
        shutil.copyfile(log, tmp_path / "app.log.1")
        os.truncate(log, 0)
        append(log, range(21, 41))  # after the first truncate: only in the second copy
        if shift:
            os.rename(tmp_path / "app.log.1", tmp_path / "app.log.2")  # logrotate shifts the copies
        shutil.copyfile(log, tmp_path / ("app.log.1" if shift else "app.log.2"))
        os.truncate(log, 0)
        append(log, range(41, 41 + regrown))
        step(agent, tailer)
        step(agent, tailer)
        agent.seal_now()
        assert queued_counts(agent) == {f"203.0.113.{n}": 1 for n in range(1, 41 + regrown)}
    finally:
        agent.close()
