"""Rotations while the agent is stopped (SIGTERM or SIGKILL): on restart it reads the rest of the
file it was in (found among the rotated names by inode or fingerprint), the files rotated in
between, and the new one; an inode reused for new content is read from its start."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.helpers.agent import run_agent
from tests.test_rotation import Runner, Writer, compare, copytruncate, rename_create, running, settle


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
