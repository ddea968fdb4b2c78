"""A rotation the agent never saw live, of a file whose header is longer than a fingerprint, next to
the new file holding only that header (generative checker, seed 7001: 170 addresses lost).

The new file's record covers only the header, so its head fingerprint and its anchor (the KiB
before its offset) are both header bytes, and the rotated file holds them at the same places. The
rotated file was taken for a copy of content still in place and ignored; it is longer than that
content, so it cannot be its copy, and is read."""

from __future__ import annotations

from pathlib import Path

from remote_uploader.agent.runner import Agent
from remote_uploader.agent.tail import Tailer
from remote_uploader.config import load
from tests.agent.tail.test_identity import NoSink as _NoSink
from tests.helpers.agent import write_access_log

HEADER = b"#Version: 1.0\n" + b"".join(b"#Comment: " + bytes([65 + i]) * 100 + b"\n" for i in range(11))


def test_an_unseen_rotation_sharing_a_long_header_with_the_new_file_is_read_not_taken_for_its_copy(
        tmp_path: Path) -> None:
    assert len(HEADER) > 1024  # longer than the fingerprint: head and anchor of a header-only file
    logs = tmp_path / "logs"
    logs.mkdir()
    live = logs / "h3.log"
    (tmp_path / "token").write_text("t\n")
    config = load(None, env={}, sources=[str(logs / "*.log")], overrides={
        "agent.state_dir": str(tmp_path / "state"), "agent.workers": 1, "server.url": "http://127.0.0.1:9",
        "server.token_file": str(tmp_path / "token")})
    agent = Agent(config, sink=_NoSink())
    tailer = Tailer(agent.collaborators())
    try:
        agent.consume(tailer.events())  # it has looked: nothing there yet
        live.write_bytes(HEADER)
        write_access_log(live, 85, seed=7001, append=True)  # written and rotated before its next pass
        live.rename(logs / "h3.log.1")
        live.write_bytes(HEADER)  # logrotate `create`: the new file holds only its header
        agent.consume(tailer.events())  # the new file: its record covers the header
        agent.consume(tailer.events())  # the rotated file beside it
        rotated = [t for t in tailer.tracked.values() if t.path == str(logs / "h3.log.1")]
        assert rotated, "h3.log.1 was taken for a copy of h3.log and not read"
        assert rotated[0].pos == (logs / "h3.log.1").stat().st_size
    finally:
        tailer.close()
        agent.close()
