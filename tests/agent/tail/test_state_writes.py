"""Every write of the state directory by the reading thread waits for disk space, like the seal.

Registering a new file, moving a record, forgetting one and noting the last-seen time are writes
outside the seal transaction; on a full disk each used to raise DiskFullError out of the pass and
end `forever`. Here the queue's disk is full for its first writes (a real queue database whose
writes fail as a full disk's do), then space returns: the pass must wait, lose nothing, raise nothing.
The process-level twin is tests/reliability/test_disk_full.py (a real full tmpfs).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from remote_uploader.agent.runner import Agent
from remote_uploader.agent.spool import Spool
from remote_uploader.agent.tail import Tailer
from remote_uploader.errors import DiskFullError
from tests.agent.tail.test_identity import NoSink, config_for, queued_counts
from tests.helpers.agent import write_access_log


class FullAtFirst(Spool):
    """A queue database whose disk is full for the first write of each kind named in `full`."""

    full: set[str]
    refused: list[str]

    def _write(self, what: str) -> None:
        if what in self.full:
            self.full.discard(what)
            self.refused.append(what)
            raise DiskFullError(f"no space left for the queue database {self.path}")

    def register_file(self, *args: Any, **kwargs: Any) -> int:
        self._write("register_file")
        return super().register_file(*args, **kwargs)

    def update_file(self, *args: Any, **kwargs: Any) -> None:
        self._write("update_file")
        super().update_file(*args, **kwargs)

    def forget_files(self, fids: Sequence[int]) -> None:
        self._write("forget_files")
        super().forget_files(fids)

    def set_kv(self, key: str, value: str) -> None:
        self._write("set_kv")
        super().set_kv(key, value)


def agent_with_full_disk(tmp_path: Path, log: Path, *refused: str) -> tuple[Agent, FullAtFirst]:
    config = config_for(tmp_path, str(log) + "*", **{"read.poll_interval": 0.05})
    agent = Agent(config, sink=NoSink())
    agent.spool.close()
    full = FullAtFirst(config.agent.state_dir)
    full.full, full.refused = set(refused), []
    agent.spool = full
    return agent, full


def test_a_pass_waits_for_disk_space_to_register_a_new_file_and_note_when_it_looked(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    expected = write_access_log(log, 200, seed=1)
    agent, full = agent_with_full_disk(tmp_path, log, "register_file", "set_kv")
    try:
        tailer = Tailer(agent.collaborators())
        agent.consume(tailer.events())
        agent.seal_now()
        tailer.close()
        assert full.refused == ["register_file", "set_kv"]
        assert queued_counts(agent) == expected
        assert [state.path for state in agent.spool.files()] == [str(log)]
    finally:
        agent.close()


def test_a_pass_waits_for_disk_space_to_follow_a_rotation_and_forget_replaced_content(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    expected = write_access_log(log, 200, seed=2)
    agent, full = agent_with_full_disk(tmp_path, log)
    try:
        tailer = Tailer(agent.collaborators())
        agent.consume(tailer.events())
        full.full = {"update_file", "forget_files"}
        log.rename(tmp_path / "app.log.1")  # rename + create: the record's path changes (update_file)
        expected += write_access_log(log, 100, seed=3)
        agent.consume(tailer.events())
        (tmp_path / "app.log.1").unlink()
        with log.open("r+") as handle:  # truncated in place, no copy anywhere: forgotten (forget_files)
            handle.truncate(0)
        expected += write_access_log(log, 50, seed=4, append=True)
        agent.consume(tailer.events())
        agent.consume(tailer.events())
        agent.seal_now()
        tailer.close()
        assert sorted(full.refused) == ["forget_files", "update_file"]
        assert queued_counts(agent) == expected
    finally:
        agent.close()
