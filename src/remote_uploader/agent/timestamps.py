"""Counting by the lines' own minutes, for a source with a `timestamp_pattern`.

With a pattern (remote_uploader/timepatterns.py), every line's own time is read, and its
addresses are counted in the minute the line says (`TimedExtractor.scan_minutes`, then
`batch.Batch.add_minutes`): a backlog read by `once` lands in the collector's buckets of when
it happened.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from remote_uploader.timepatterns import SEARCH_BYTES, TimePattern, compile_pattern


@dataclass(slots=True)
class Minute:
    """What one minute of a source's lines holds: counts per address, and the earliest and the
    latest line time seen in it (a record's first_seen and last_seen: exact to the minute)."""

    counts: dict[str, int]
    first: float
    last: float


class TimedExtractor:
    """A source's extractor that also reads each line's time (see the module docstring).

    `scan` is the inner extractor's (totals: what `count` and `test` show). `scan_minutes` cuts
    the range into runs of consecutive lines of one minute and scans each run whole with the
    inner extractor, so the per-address work stays the engine's: the added cost is one bounded
    regular-expression search per line (logs are in time order, so runs are long).
    """

    def __init__(self, inner: Any, pattern: TimePattern) -> None:
        self.inner = inner
        self.pattern = pattern
        self.context: int = inner.context

    def scan(self, buf: bytes | bytearray | memoryview, start: int, end: int) -> dict[str, int]:
        counts: dict[str, int] = self.inner.scan(buf, start, end)
        return counts

    def scan_minutes(
        self, buf: bytes | bytearray, start: int, end: int
    ) -> tuple[dict[str, int], dict[int, Minute], int]:
        """(counts of the lines without a time, counts per minute of the others, lines without a time)."""
        untimed: dict[str, int] = {}
        minutes: dict[int, Minute] = {}
        untimed_lines = 0
        search, seconds_of = self.pattern.regex.search, self.pattern.seconds_of
        runs: list[tuple[int, int, int | None, float, float]] = []  # (start, end, minute, first, last)
        run_start, run_key, first, last = start, None, 0.0, 0.0
        previous = b""  # the time text of the line before, if it had one
        pos = start
        while pos < end:
            newline = buf.find(b"\n", pos, end)
            line_end = end if newline < 0 else newline + 1
            found = search(buf, pos, min(line_end, pos + SEARCH_BYTES))
            if found is not None:
                text = found.group()
                if text == previous:  # the same second as the line before: same run, same span
                    pos = line_end
                    continue
                previous = text
                seconds = seconds_of(found)
            else:
                previous, seconds = b"", None
            key = None if seconds is None else int(seconds // 60)
            if pos == start or key != run_key:
                if pos > start:
                    runs.append((run_start, pos, run_key, first, last))
                run_start, run_key = pos, key
                if seconds is not None:
                    first = last = seconds
            elif seconds is not None:
                first, last = min(first, seconds), max(last, seconds)
            if seconds is None:
                untimed_lines += 1
            pos = line_end
        if end > start:
            runs.append((run_start, end, run_key, first, last))
        for lo, hi, minute, earliest, latest in runs:
            counts = self.inner.scan(buf, lo, hi)
            if not counts:
                continue
            if minute is None:
                known = untimed
            elif (cell := minutes.get(minute)) is None:
                minutes[minute] = Minute(counts, earliest, latest)
                continue
            else:
                known = cell.counts
                cell.first, cell.last = min(cell.first, earliest), max(cell.last, latest)
            for ip, n in counts.items():
                known[ip] = known.get(ip, 0) + n
        return untimed, minutes, untimed_lines


def with_times(extractor: Any, pattern: str | None) -> Any:
    """The extractor as is without a pattern (the fast path is untouched), else timed."""
    return extractor if pattern is None else TimedExtractor(extractor, compile_pattern(pattern))
