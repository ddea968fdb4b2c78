"""`Tailer.waiting_on_time`: whether a pass has time-bound work (then `forever` keeps its safety-net
pass at `read.poll_interval` even while file events cover everything). In process, pass by pass."""

from __future__ import annotations

import time
from pathlib import Path

from remote_uploader.agent.runner import Agent
from remote_uploader.agent.tail import Tailer
from tests.agent.tail.test_events import LINE, step
from tests.agent.tail.test_identity import NoSink, config_for


def test_quiet_files_wait_on_nothing_but_an_unfinished_line_or_a_rotated_file_in_its_grace_does(
        tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text(LINE.format(n=1))
    agent = Agent(config_for(tmp_path, log, **{"read.rotate_grace": 0.3}), sink=NoSink())
    try:
        tailer = Tailer(agent.collaborators())
        assert tailer.waiting_on_time() is False  # nothing known yet: events or the first pass bring it
        step(agent, tailer)
        assert tailer.waiting_on_time() is False
        with log.open("a") as handle:
            handle.write("203.0.113.2 - - unfinished")  # taken after read.partial_line_idle, by a pass
        step(agent, tailer)
        assert tailer.waiting_on_time() is True
        with log.open("a") as handle:
            handle.write("\n")
        step(agent, tailer)
        assert tailer.waiting_on_time() is False
        log.rename(tmp_path / "app.log.1")  # held open until its grace: only a pass lets it go
        log.write_text("")
        step(agent, tailer)  # the rotated file read to its end, not let go in the pass that found it
        assert tailer.waiting_on_time() is True
        time.sleep(0.4)
        step(agent, tailer)  # its grace (0.3 s here) is over: let go; only an event can bring work now
        assert tailer.waiting_on_time() is False
    finally:
        agent.close()
