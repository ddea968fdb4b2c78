"""copytruncate at each step of the agent's first pass over a directory, step by step.

The copytruncate benchmark once counted 455 lines twice with its old start (the writer and the
first rotation began after a fixed pause, so on a loaded machine a rotation could happen while
`forever` was starting up). The suspected race: the agent lists `access.log`, reads part of it, and
the copy `access.log.1` appears in the same first pass, so the copy is read in full as new content
(or the truncated original is read again from 0). In process and deterministic: the rotation is
split at chosen steps of the first pass (before the listing, between the listing and the
identification, in the middle of the read, after the read and before the copy is listed): the copy
at one step, the truncate at the same or a later one, lines written inside the copy -> truncate
window and the file regrown after it, as the benchmark's writer does; then `once` on the same
state, as the benchmark ends. Every line is its own address, so a count of 2 is a line read twice.
None of these doubles or loses a line outside the window (a follower that lost the copy and
forgot the record, `_find_copy` finding nothing, doubles all 2,000 in every case).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from remote_uploader.agent.parallel import Part
from remote_uploader.agent.runner import Agent, read_pass
from remote_uploader.agent.source import SourceFile
from remote_uploader.agent.tail import Events, Scan, Tailer
from remote_uploader.config import load
from tests.agent.tail.test_midread import NoSink, queued_counts


def ip(n: int) -> str:
    return f"10.{n // 62500 % 250}.{n // 250 % 250}.{n % 250 + 1}"


def write_lines(path: Path, first: int, count: int) -> set[str]:
    """Append lines `first` .. `first + count - 1` (the benchmark's format, one address each)."""
    with path.open("ab") as out:
        out.write(b"".join(f'{ip(n)} - - [28/Nov/2026:10:00:00 +0000] "GET /latency/{n} HTTP/1.1" 200 1\n'.encode()
                           for n in range(first, first + count)))
    return {ip(n) for n in range(first, first + count)}


POINTS = ["before-listing", "between-listing-and-identity", "mid-read", "after-read-before-copy-listed"]


class Rotation:
    """logrotate's copytruncate of `live` with the writer going on: the copy at one step of the
    first pass, lines written in the window, the truncate at the same or a later step, regrowth.
    Remembers which addresses went where."""

    def __init__(self, live: Path, copy_at: str, truncate_at: str) -> None:
        self.live, self.copy_at, self.truncate_at = live, copy_at, truncate_at
        self.copied = self.done = False
        self.window: set[str] = set()
        self.regrow: set[str] = set()

    def at(self, point: str) -> None:
        if point == self.copy_at and not self.copied:
            self.copied = True
            shutil.copyfile(self.live, self.live.with_name(self.live.name + ".1"))
            self.window = write_lines(self.live, 100_000, 40)  # written between the copy and the truncate
        if point == self.truncate_at and self.copied and not self.done:
            self.done = True
            with self.live.open("r+b") as handle:
                handle.truncate(0)
            self.regrow = write_lines(self.live, 200_000, 300)


class AtFirstPart(Agent):
    """Tells the rotation once the first piece of the original has been counted (mid-read)."""

    rotation: Rotation | None = None

    def feed_part(self, part: Part, fid: int, path: str) -> None:
        super().feed_part(part, fid, path)
        if self.rotation is not None:
            self.rotation.at("mid-read")


class SteppedTailer(Tailer):
    """Tells the rotation the steps of the first pass: right after the listing (before any file of
    it is opened and identified), and right after the live file was discovered and read."""

    rotation: Rotation

    def _scan(self) -> Scan:
        found = super()._scan()
        if self.polls == 1:
            self.rotation.at("between-listing-and-identity")
        return found

    def _discover(self, seen: SourceFile, found: Scan, since: float) -> Events:
        yield from super()._discover(seen, found, since)
        if self.polls == 1 and seen.live:
            self.rotation.at("after-read-before-copy-listed")


STEPS = [(copy_at, truncate_at) for n, copy_at in enumerate(POINTS) for truncate_at in POINTS[n:]]


@pytest.mark.parametrize(("copy_at", "truncate_at"), [*STEPS, ("empty-at-first-look", "empty-at-first-look")],
                         ids=[*(f"copy-{c}-truncate-{t}" for c, t in STEPS), "empty-at-first-look-then-read"])
@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "worker-processes"])
def test_copytruncate_during_the_first_pass_counts_no_line_twice_even_with_a_once_after(
        tmp_path: Path, copy_at: str, truncate_at: str, workers: int) -> None:
    live = tmp_path / "access.log"
    empty = copy_at.startswith("empty")
    original = write_lines(live, 0, 0 if empty else 2000)
    (tmp_path / "token").write_text("t\n")
    config = load(None, env={}, sources=[str(live)], overrides={
        "agent.state_dir": str(tmp_path / "state"), "agent.workers": workers, "server.url": "http://127.0.0.1:9",
        "server.token_file": str(tmp_path / "token"), "read.block_size": 16 * 1024,
        "batching.max_memory_ips": 200, "batching.force_upload_threshold": 100, "batching.min_upload_batch": 20})
    agent = AtFirstPart(config, sink=NoSink())
    rotation = Rotation(live, copy_at, truncate_at)
    try:
        tailer = SteppedTailer(agent.collaborators())
        tailer.rotation = agent.rotation = rotation
        rotation.at("before-listing")
        agent.consume(tailer.events())
        agent.rotation = None
        if empty:
            original = write_lines(live, 0, 2000)  # the writer starts after the agent's first look
            assert agent.consume(tailer.growth())
            rotation.at(copy_at)
        assert rotation.done
        for _ in range(3):
            agent.consume(tailer.events())
            agent.consume(tailer.growth())
        agent.seal_now()
        tailer.close()
    finally:
        agent.close()
    # The benchmark stops `forever` and runs `once` on the same state (it delivers what was queued):
    # its first pass reads rotated files nobody knows back to before `forever` last looked.
    again = Agent(config, sink=NoSink())
    try:
        read_pass(again)
        again.seal_now()
        counts = queued_counts(again)
    finally:
        again.close()
    doubled = sorted(address for address, n in counts.items() if n > 1)
    assert doubled == []
    assert set(counts) <= original | rotation.window | rotation.regrow
    assert rotation.regrow <= set(counts)  # what was written after the truncate is all read
    if copy_at != "before-listing":  # a copy already there at the first look is history (docs/forever.md)
        assert original <= set(counts)
