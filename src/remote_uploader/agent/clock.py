"""The agent's wall clock, with a test-only hook to step it (like `REMOTE_UPLOADER_CRASH_AT`).

Every wall-clock time the agent writes into a batch (a record's `first_seen`/`last_seen`, a
batch's `sent_at`) is taken with `wall()`, so that tests can step that clock backwards or forwards
under a running agent, the way NTP or an operator does on a real host, without touching the
host's clock. Durations (ages, timeouts, backoff) use `time.monotonic()`, which no step moves.

`REMOTE_UPLOADER_CLOCK_FILE=/path/offset` makes `wall()` return `time.time()` plus the offset in
seconds written in that file (a float, e.g. `-0.5` or `86400`). The file is looked at again when
its mtime (or size, or inode) changes, at most every 50 ms (write it to a temporary file and
rename it over the old one, so that no half-written offset is read); a missing or unreadable
file, or one that does not hold a float, means an offset of 0. Unset, `wall` *is* `time.time`: it costs nothing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

ENV = "REMOTE_UPLOADER_CLOCK_FILE"
CHECK_EVERY = 0.05  # seconds between two looks at the file's mtime


class _SteppedClock:
    """`time.time()` plus the offset in a file, re-read when the file changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0.0
        self.seen: tuple[int, int, int] | None = None  # (mtime, size, inode) of the file last read
        self.checked = float("-inf")

    def __call__(self) -> float:
        now = time.monotonic()
        if now - self.checked >= CHECK_EVERY:
            self.checked = now
            self._refresh()
        return time.time() + self.offset

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
        except OSError:
            self.seen, self.offset = None, 0.0
            return
        # Size and inode too: a coarse mtime may not change between two quick writes.
        seen = (st.st_mtime_ns, st.st_size, st.st_ino)
        if seen == self.seen:
            return
        self.seen = seen
        try:
            with open(self.path, encoding="ascii") as handle:
                text = handle.read(64)
            offset = float(text.strip())
        except (OSError, ValueError, UnicodeDecodeError):
            offset = 0.0
        self.offset = offset if offset == offset and abs(offset) != float("inf") else 0.0  # no NaN, no inf


def _make_wall() -> Callable[[], float]:
    path = os.environ.get(ENV, "")
    return _SteppedClock(path) if path else time.time


#: Seconds since the epoch, as the agent's records and batches are stamped.
wall: Callable[[], float] = _make_wall()
