"""A file replaced between two reads of the agent (copytruncate while it is behind), step by step.

In process and deterministic: the rotation happens inside the reading pass, right after the first
piece of the file entered the batch, and the regrown file is longer than the reader's position, so
a reader that trusted its descriptor would read the new content at the old content's offsets.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest

from remote_uploader.agent.parallel import Part
from remote_uploader.agent.runner import Agent
from remote_uploader.agent.tail import Tailer
from remote_uploader.config import load
from tests.helpers.agent import NoSink, queued_counts, write_access_log


class RotatedMidRead(Agent):
    """An agent whose file is copytruncated, and regrown, once its first part has been counted."""

    live: Path
    regrow: Counter[str] | None = None

    def feed_part(self, part: Part, fid: int, path: str) -> None:
        super().feed_part(part, fid, path)
        if self.regrow is None:
            shutil.copyfile(self.live, self.live.with_name(self.live.name + ".1"))
            with self.live.open("r+b") as handle:
                handle.truncate(0)
            self.regrow = write_access_log(self.live, 3000, seed=2, distinct=300, append=True)


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "worker-processes"])
def test_content_replaced_between_two_reads_is_neither_counted_twice_nor_lost(tmp_path: Path, workers: int) -> None:
    live = tmp_path / "app.log"
    original = write_access_log(live, 2000, seed=1, distinct=300)
    (tmp_path / "token").write_text("t\n")
    config = load(None, env={}, sources=[str(live)], overrides={
        "agent.state_dir": str(tmp_path / "state"), "agent.workers": workers, "server.url": "http://127.0.0.1:9",
        "server.token_file": str(tmp_path / "token"), "read.block_size": 16 * 1024,
        "batching.max_memory_ips": 200, "batching.force_upload_threshold": 100, "batching.min_upload_batch": 20})
    agent = RotatedMidRead(config, sink=NoSink())
    agent.live = live
    try:
        tailer = Tailer(agent.collaborators())
        agent.consume(tailer.events())  # reads a piece, the file is replaced, the rest of the original is in app.log.1
        assert agent.regrow is not None and live.stat().st_size > 16 * 1024 * 2
        agent.consume(tailer.events())
        agent.seal_now()
        tailer.close()
        assert queued_counts(agent) == original + agent.regrow
        copies = [state for state in agent.spool.files() if state.path.endswith(".1")]
        assert [state.status for state in copies] == ["copy"]
    finally:
        agent.close()


def test_a_copy_being_written_is_not_taken_for_new_content(tmp_path: Path) -> None:
    """copytruncate's copy is empty for a moment: seen then, it must still be known as the copy."""
    live = tmp_path / "app.log"
    original = write_access_log(live, 500, seed=3, distinct=100)
    (tmp_path / "token").write_text("t\n")
    config = load(None, env={}, sources=[str(live)], overrides={
        "agent.state_dir": str(tmp_path / "state"), "agent.workers": 1, "server.url": "http://127.0.0.1:9",
        "server.token_file": str(tmp_path / "token")})
    agent = Agent(config, sink=NoSink())
    try:
        tailer = Tailer(agent.collaborators())
        agent.consume(tailer.events())
        copy = live.with_name("app.log.1")
        copy.touch()  # the copier has created its file and not written yet
        agent.consume(tailer.events())
        shutil.copyfile(live, copy)
        with live.open("r+b") as handle:
            handle.truncate(0)
        regrow = write_access_log(live, 200, seed=4, distinct=100, append=True)
        agent.consume(tailer.events())
        agent.consume(tailer.events())
        agent.seal_now()
        tailer.close()
        assert queued_counts(agent) == original + regrow
    finally:
        agent.close()


class RenamesMidRead(Agent):
    """An agent under which app.log.1 is renamed to app.log.2 while it reads, once armed."""

    live: Path
    armed = False

    def feed_part(self, part: Part, fid: int, path: str) -> None:
        super().feed_part(part, fid, path)
        if self.armed:
            self.armed = False
            rotated = self.live.with_name("app.log.2")
            self.live.with_name("app.log.1").rename(rotated)
            old = time.time() - 3600  # as if the pass had lasted long: older than the next pass's horizon
            os.utime(rotated, (old, old))


def test_a_rotated_file_renamed_before_the_pass_looked_at_it_is_still_read(tmp_path: Path) -> None:
    live = tmp_path / "app.log"
    expected = write_access_log(live, 10, seed=5)
    (tmp_path / "token").write_text("t\n")
    config = load(None, env={}, sources=[str(live)], overrides={
        "agent.state_dir": str(tmp_path / "state"), "agent.workers": 1, "server.url": "http://127.0.0.1:9",
        "server.token_file": str(tmp_path / "token"), "read.block_size": 16 * 1024})
    agent = RenamesMidRead(config, sink=NoSink())
    agent.live = live
    try:
        tailer = Tailer(agent.collaborators())
        agent.consume(tailer.events())
        # Content the agent never saw, rotated twice between two passes (app.log.1), and more lines.
        expected += write_access_log(live.with_name("app.log.1"), 300, seed=6)
        expected += write_access_log(live, 1000, seed=7, append=True)
        agent.armed = True
        agent.consume(tailer.events())  # app.log.1 is in this pass's scan, renamed before the pass gets to it
        assert not agent.armed
        agent.consume(tailer.events())
        agent.seal_now()
        tailer.close()
        assert queued_counts(agent) == expected
    finally:
        agent.close()
