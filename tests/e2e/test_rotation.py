"""`forever` through log rotation, per style: a writer appends lines with known IPs at a steady rate
while the file is rotated many times; the receiver's counts must equal what was written.

Each test reports one row (style, written, lost, doubled, ...) to stdout and, when the environment
names a file in ROTATION_REPORT, appends it there as JSON (docs/forever.md has the table).
Styles where the *rotation itself* destroys lines before anyone can read them (copytruncate's
window between the copy and the truncate; truncation in place) measure that residual: nothing may
be doubled, and what is lost must fit in the window the rotation opened.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.agent import start_agent, write_config

FAST = {"poll_interval": 0.1, "rotate_grace": 0.5, "partial_line_idle": 1.0}
BATCHING = {"max_batch_age": 0.2, "min_upload_batch": 50}
KEEP = 4  # rotated files kept, like logrotate's `rotate 4`


class Writer(threading.Thread):
    """A web server's access log: bursts of whole lines every 10 ms through one O_APPEND descriptor.

    Each line holds one address from a fixed pool and a unique sequence number (so no two files
    start alike). `lock` is held for each burst: a rotation that takes it happens between bursts.
    `window()` counts what was written while a rotation had opened a window (see copytruncate).
    """

    def __init__(self, path: Path, *, lines_per_second: int = 1500, seed: int = 0) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.rate = lines_per_second
        self.rng = random.Random(seed)
        self.pool = [f"10.{seed % 250}.{i // 250}.{i % 250 + 1}" for i in range(300)]
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.seq = 0
        self.fd = self._open()
        self.window_lines: int | None = None
        self.keep = KEEP
        self.written_before_open = 0

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def burst(self, n: int) -> None:
        lines = []
        for _ in range(n):
            ip = self.pool[self.rng.randrange(len(self.pool))]
            self.seq += 1
            lines.append(f'{ip} - - [28/Nov/2026:10:00:00 +0000] "GET /item/{self.seq} HTTP/1.1" 200 {self.seq}\n')
            self.counts[ip] += 1
        os.write(self.fd, "".join(lines).encode())
        if self.window_lines is not None:
            self.window_lines += n

    def run(self) -> None:
        per_burst = max(1, self.rate // 100)
        while not self.stop.wait(0.01):
            with self.lock:
                self.burst(per_burst)

    def reopen(self) -> None:
        """What `nginx -s reopen` does after logrotate: close the old file, open the path again."""
        with self.lock:
            os.close(self.fd)
            self.fd = self._open()
            self.written_before_open = sum(self.counts.values())

    def finish(self) -> Counter[str]:
        self.stop.set()
        self.join(timeout=10)
        with self.lock:
            os.close(self.fd)
        return self.counts

    def pause(self) -> Any:
        return self.lock


def shift_rotated(path: Path, keep: int = KEEP) -> Path:
    """logrotate's numbering: .3 -> .4, ..., .1 -> .2 (the oldest dropped); returns the `.1` path."""
    oldest = path.with_name(f"{path.name}.{keep}")
    if oldest.exists():
        oldest.unlink()
    for n in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{n}")
        if older.exists():
            older.rename(path.with_name(f"{path.name}.{n + 1}"))
    return path.with_name(f"{path.name}.1")


# --- rotation styles: each is one rotation of `writer.path` ------------------------------------------


def rename_create(writer: Writer, agent: Runner) -> None:
    """logrotate's default: rename, (late writes to the renamed file,) create, reopen."""
    shift_rotated(writer.path, writer.keep)
    writer.path.rename(writer.path.with_name(writer.path.name + ".1"))
    time.sleep(0.05)  # the server keeps writing to the renamed file until it reopens
    writer.reopen()


def copytruncate(writer: Writer, agent: Runner) -> None:
    """Copy then truncate, with no write in between: every line is in the copy or after the truncate."""
    target = shift_rotated(writer.path, writer.keep)
    with writer.lock:
        shutil.copyfile(writer.path, target)
        os.truncate(writer.path, 0)


def copytruncate_window(writer: Writer, agent: Runner) -> None:
    """Copy, let the writer go on for 30 ms, truncate: the lines of those 30 ms are in neither file,
    unless the agent read them in time (logrotate's own window; `copytruncate` in its manual)."""
    target = shift_rotated(writer.path)
    with writer.lock:
        shutil.copyfile(writer.path, target)
        writer.window_lines = writer.window_lines or 0
    time.sleep(0.03)
    with writer.lock:
        os.truncate(writer.path, 0)
        agent.window += writer.window_lines or 0
        writer.window_lines = None


def truncate_caught_up(writer: Writer, agent: Runner) -> None:
    """Truncate in place once the agent has shipped everything written (an operator's `: > file`)."""
    with writer.lock:
        agent.wait_for(sum(writer.counts.values()))
        os.truncate(writer.path, 0)


def truncate_blind(writer: Writer, agent: Runner) -> None:
    """Truncate in place while writing: what the agent had not read yet is destroyed (measured)."""
    with writer.lock:
        os.truncate(writer.path, 0)


def delete_recreate(writer: Writer, agent: Runner) -> None:
    """Delete, (late writes to the deleted file,) create: the agent reads the deleted one to its end.

    Only once the agent has shipped a line of the current file, so it holds it open: a file created
    and deleted between two polls is never seen by a polling agent (docs/forever.md, limits)."""
    agent.wait_for(writer.written_before_open + 1)
    writer.path.unlink()
    time.sleep(0.05)
    writer.reopen()


def replace_in_place(writer: Writer, agent: Runner) -> None:
    """Same inode, new content longer than the agent's offset, in one step: the agent must see by the
    fingerprint (not the size) that this is new content, as when a file system reuses an inode."""
    with writer.lock:
        agent.wait_for(sum(writer.counts.values()))
        size = writer.path.stat().st_size
        fd = os.open(writer.path, os.O_WRONLY | os.O_TRUNC)
        os.close(fd)
        while writer.path.stat().st_size <= size:
            writer.burst(200)


# --- the agent under test ------------------------------------------------------------------------------


@dataclass
class Runner:
    tmp: Path
    receiver: Any
    sources: list[str]
    config: Path = field(init=False)
    process: subprocess.Popen[str] | None = None
    window: int = 0

    def __post_init__(self) -> None:
        self.config = write_config(self.tmp / "agent.toml", url=self.receiver.url, token=self.receiver.token,
                                   state_dir=self.tmp / "state", sources=self.sources, read=FAST,
                                   batching=BATCHING, shutdown={"drain_timeout": 5.0})

    def start(self) -> None:
        self.process = start_agent("forever", "-c", str(self.config))

    def stop(self, signum: int = signal.SIGTERM) -> str:
        assert self.process is not None
        self.process.send_signal(signum)
        _, stderr = self.process.communicate(timeout=60)
        code = self.process.returncode
        self.process = None
        if signum == signal.SIGTERM:
            assert code == 0, stderr
        return stderr

    def wait_for(self, total: int) -> None:
        assert self.receiver.wait_for_total(total, timeout=60), (self.receiver.total(), total)

    def kill_if_running(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.communicate(timeout=30)


@contextmanager
def running(tmp: Path, receiver: Any, sources: list[str]) -> Iterator[Runner]:
    runner = Runner(tmp, receiver, sources)
    runner.start()
    try:
        yield runner
    finally:
        runner.kill_if_running()


def settle(runner: Runner, written: Counter[str]) -> dict[str, int]:
    """Wait for everything written (or, where lines were destroyed, until nothing more comes), give
    late doubles the time to show, stop (exit 0), return the counts."""
    deadline = time.monotonic() + 60
    last, quiet_since = -1, time.monotonic()
    while runner.receiver.total() < sum(written.values()) and time.monotonic() < deadline:
        runner.receiver.wait_for_total(sum(written.values()), timeout=0.5)
        total = runner.receiver.total()
        if total != last:
            last, quiet_since = total, time.monotonic()
        elif time.monotonic() - quiet_since > 3.0:
            break
    time.sleep(FAST["rotate_grace"] + 5 * FAST["poll_interval"])
    runner.stop()
    counts: dict[str, int] = runner.receiver.counts()
    return counts


def compare(style: str, written: Counter[str], received: dict[str, int], **extra: int) -> dict[str, Any]:
    lost = sum(max(0, n - received.get(ip, 0)) for ip, n in written.items())
    doubled = sum(max(0, n - written.get(ip, 0)) for ip, n in received.items())
    row = {"style": style, "written": sum(written.values()), "received": sum(received.values()),
           "lost": lost, "doubled": doubled, **extra}
    print(json.dumps(row))
    report = os.environ.get("ROTATION_REPORT")
    if report:
        with open(report, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
    return row


def run_style(tmp: Path, receiver: Any, rotate: Callable[[Writer, Runner], None], *, glob_all: bool,
              rotations: int = 10, every: float = 0.35) -> tuple[Counter[str], dict[str, int], Runner]:
    log = tmp / "access.log"
    writer = Writer(log, seed=len(rotate.__name__))
    writer.burst(50)
    with running(tmp, receiver, [str(log) + ("*" if glob_all else "")]) as runner:
        # Rotations before the agent's first look are history to it (rotated files older than its
        # first pass are not read): start writing and rotating once it has read the file.
        runner.wait_for(sum(writer.counts.values()))
        writer.start()
        for _ in range(rotations):
            time.sleep(every)
            rotate(writer, runner)
        time.sleep(every)
        written = writer.finish()
        received = settle(runner, written)
    return written, received, runner


EXACT_STYLES = [
    pytest.param(rename_create, False, id="rename_create"),
    pytest.param(rename_create, True, id="rename_create-glob_matches_rotated"),
    pytest.param(copytruncate, True, id="copytruncate-copy_matches_glob"),
    pytest.param(copytruncate, False, id="copytruncate"),
    pytest.param(truncate_caught_up, False, id="truncate"),
    pytest.param(delete_recreate, False, id="delete_recreate"),
    pytest.param(replace_in_place, False, id="inode_reuse-replaced_in_place"),
]


@pytest.mark.parametrize(("rotate", "glob_all"), EXACT_STYLES)
def test_rotation_loses_nothing_and_doubles_nothing(tmp_path: Path, receiver, rotate, glob_all) -> None:  # type: ignore[no-untyped-def]
    written, received, _ = run_style(tmp_path, receiver, rotate, glob_all=glob_all)
    row = compare(rotate.__name__ + ("[glob*]" if glob_all else ""), written, received)
    assert row["doubled"] == 0 and row["lost"] == 0, row
    assert received == dict(written)


def test_copytruncate_window_is_read_from_the_copy_when_possible_and_never_doubled(tmp_path: Path, receiver) -> None:  # type: ignore[no-untyped-def]
    written, received, runner = run_style(tmp_path, receiver, copytruncate_window, glob_all=True)
    row = compare("copytruncate_window", written, received, window_lines=runner.window)
    assert row["doubled"] == 0, row
    assert row["lost"] <= runner.window, row  # only lines the rotation itself destroyed


def test_truncate_while_writing_never_doubles(tmp_path: Path, receiver) -> None:  # type: ignore[no-untyped-def]
    written, received, _ = run_style(tmp_path, receiver, truncate_blind, glob_all=False)
    row = compare("truncate_blind", written, received)
    assert row["doubled"] == 0, row
    assert row["lost"] < row["written"] // 4, row  # destroyed only between the last read and the truncate
