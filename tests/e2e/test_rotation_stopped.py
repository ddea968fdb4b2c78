"""Rotations while the agent is stopped (SIGTERM or SIGKILL): on restart it reads the rest of the
file it was in (found among the rotated names by inode or fingerprint), the files rotated in
between, and the new one; an inode reused for new content is read from its start."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from remote_uploader.agent.runner import Agent
from remote_uploader.agent.tail import LAST_SEEN_KEY, Tailer
from remote_uploader.config import load
from tests.e2e.test_rotation import Runner, Writer, compare, copytruncate, rename_create, running, settle
from tests.helpers.agent import NoSink, run_agent, write_access_log


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
@pytest.mark.parametrize("rotate", [rename_create, copytruncate], ids=["rename_create", "copytruncate"])
def test_two_or_more_rotations_while_stopped_lose_and_double_nothing(tmp_path: Path, receiver, rotate,  # type: ignore[no-untyped-def]
                                                                     signum) -> None:
    log = tmp_path / "access.log"
    writer = Writer(log, seed=7)
    writer.keep = 16  # no rotated file is deleted before the agent is back: a SIGKILL loses what was
    writer.burst(50)  # read but not sealed, and a file deleted meanwhile cannot be read again
    with running(tmp_path, receiver, [str(log)]) as runner:
        runner.wait_for(sum(writer.counts.values()))  # rotations before its first look are history to it
        writer.start()
        for round_ in range(3):
            wait_following(tmp_path, starts=round_ + 1)  # rotations are the agent's to follow from its first look
            time.sleep(0.4)
            rotate(writer, runner)  # one rotation while it runs
            time.sleep(0.3)
            # Stopped once it has caught up, so it is running: a SIGTERM that arrives while the
            # interpreter is still starting (a loaded machine) kills it before it has handlers.
            runner.wait_for(sum(writer.counts.values()))
            runner.stop(signum)
            for _ in range(2 + round_):  # two or more while it is stopped, the writer going on
                time.sleep(0.25)
                rotate(writer, runner)
            time.sleep(0.2)
            runner.start()
        wait_following(tmp_path, starts=4)
        time.sleep(0.5)
        written = writer.finish()
        received = settle(runner, written)
    row = compare(f"{rotate.__name__}_while_stopped[{signal.Signals(signum).name}]", written, received)
    assert row["lost"] == 0 and row["doubled"] == 0, row


def test_inode_reused_while_stopped_is_new_content(tmp_path: Path, receiver) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "access.log"
    writer = Writer(log, seed=11)
    writer.burst(400)
    with running(tmp_path, receiver, [str(log)]) as runner:
        runner.wait_for(sum(writer.counts.values()))
        runner.stop()
        old = log.stat()
        writer.reopen()  # the writer's descriptor must not keep the old inode alive
        os.close(writer.fd)
        log.unlink()
        reused = _create_with_inode(tmp_path, old.st_ino)
        writer.fd = os.open(reused, os.O_WRONLY | os.O_APPEND)
        while os.fstat(writer.fd).st_size <= old.st_size:  # longer than the recorded offset
            writer.burst(100)
        os.rename(reused, log)
        same_inode = log.stat().st_ino == old.st_ino
        if not same_inode:  # the file system gave another inode: make the reuse happen in place
            os.close(writer.fd)
            writer.fd = os.open(log, os.O_WRONLY | os.O_APPEND)
        runner.start()
        writer.start()
        time.sleep(1.0)
        written = writer.finish()
        received = settle(runner, written)
    row = compare("inode_reuse_while_stopped", written, received, same_inode=int(same_inode))
    assert row["lost"] == 0 and row["doubled"] == 0, row


def wait_following(tmp_path: Path, starts: int) -> None:
    """Wait for the agent's readiness point (`event=following`: its first whole pass) of its
    `starts`-th start. An agent stopped before it has ever looked at the files has no claim on
    what is rotated away meanwhile (docs/forever.md, Restarts): a fixed sleep instead would, on a
    loaded machine, stop it before that and count those rotations as lost."""
    agent_log = tmp_path / "state" / "agent.log"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if agent_log.exists() and agent_log.read_text().count("event=following ") >= starts:
            return
        time.sleep(0.05)
    raise AssertionError(f"the agent's start {starts} never logged event=following")


def _create_with_inode(directory: Path, inode: int, tries: int = 200) -> Path:
    """A new file that got `inode` back from the file system, if it gives it within `tries` files."""
    made = []
    try:
        for n in range(tries):
            path = directory / f"new-{n}"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.close(fd)
            if path.stat().st_ino == inode:
                return path
            made.append(path)
        return made.pop(0)
    finally:
        for path in made:
            path.unlink()



def test_once_reads_the_rest_of_the_rotated_file_and_the_rotations_in_between(tmp_path: Path, receiver) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "access.log"
    writer = Writer(log, seed=13)
    writer.burst(300)
    runner = Runner(tmp_path, receiver, [str(log)])  # its config; `once` runs, not `forever`
    assert run_agent("once", "-c", str(runner.config)).returncode == 0
    for _ in range(3):  # written, then rotated, three times between two runs of `once`
        writer.burst(200)
        rename_create(writer, runner)
    writer.burst(100)
    result = run_agent("once", "-c", str(runner.config))
    assert result.returncode == 0, result.stderr
    with writer.lock:
        os.close(writer.fd)
    row = compare("once_after_three_rotations", writer.counts, receiver.counts())
    assert row["lost"] == 0 and row["doubled"] == 0, row



def test_an_agent_stopped_before_its_first_pass_still_reads_what_was_rotated_while_it_was_stopped(
        tmp_path: Path) -> None:
    """A start that is stopped before it has looked (SIGTERM during start-up) must not note "looked
    now": the file rotated while the agent was stopped would look older than that to the next start."""
    live = tmp_path / "app.log"
    write_access_log(live, 200, seed=1)
    (tmp_path / "token").write_text("t\n")
    config = load(None, env={}, sources=[str(live)], overrides={
        "agent.state_dir": str(tmp_path / "state"), "agent.workers": 1, "server.url": "http://127.0.0.1:9",
        "server.token_file": str(tmp_path / "token")})

    def start() -> tuple[Agent, Tailer]:
        agent = Agent(config, sink=NoSink())
        return agent, Tailer(agent.collaborators())

    agent, tailer = start()  # a whole pass, an hour ago
    agent.consume(tailer.events())
    tailer.close()
    agent.spool.set_kv(LAST_SEEN_KEY, repr(time.time() - 3600))
    agent.close()
    live.rename(tmp_path / "app.log.1")  # stopped: rotated twice; the middle one it never saw live
    write_access_log(live, 300, seed=2)
    half_an_hour_ago = time.time() - 1800
    os.utime(live, (half_an_hour_ago, half_an_hour_ago))
    (tmp_path / "app.log.1").rename(tmp_path / "app.log.2")
    live.rename(tmp_path / "app.log.1")
    write_access_log(live, 100, seed=3)

    agent, tailer = start()  # stopped during start-up: no pass
    tailer.close()
    agent.close()

    agent, tailer = start()
    try:
        agent.consume(tailer.events())
        assert str(tmp_path / "app.log.1") in {state.path for state in agent.spool.files()}
    finally:
        tailer.close()
        agent.close()
