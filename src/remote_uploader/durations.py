"""Durations as people write them: `30s`, `15m`, `4h`, `7d`, `1h30m`.

One parser for the collector's settings and `[[rules]]`, its API and its CLI, so that `window = "10m"`
in a rule, `?since=10m` in a URL and `--duration 10m` on the command line mean the same. Below both
halves (it needs nothing of either), so that the settings can read durations without importing the
collector's request handling; collector/timeparse.py adds times (`since=`) on top.
"""

from __future__ import annotations

import re
from datetime import timedelta

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
PART = re.compile(r"(\d{1,9})([smhdw])")
MAX_DURATION = timedelta(days=36500)


class DurationError(ValueError):
    """The text is not a duration; the message says what one looks like."""


def parse_duration(text: object, *, allow_zero: bool = False) -> timedelta:
    """`30s`, `15m`, `4h`, `7d`, `2w` and combinations (`1h30m`, `1d12h`); whole units only.

    A bare number is refused: "10" could be seconds or minutes, and a ban ten times too short
    or sixty times too long is the kind of mistake this should catch.
    """
    if not isinstance(text, str):
        raise DurationError(f"{text!r} is not a duration such as 30s, 15m, 4h, 7d or 1h30m")
    cleaned = text.strip().lower()
    position = 0
    seconds = 0
    seen: set[str] = set()
    for match in PART.finditer(cleaned):
        if match.start() != position or match.group(2) in seen:
            break
        seen.add(match.group(2))
        seconds += int(match.group(1)) * UNITS[match.group(2)]
        position = match.end()
    if not cleaned or position != len(cleaned):
        raise DurationError(f"{text!r} is not a duration such as 30s, 15m, 4h, 7d or 1h30m")
    duration = timedelta(seconds=seconds)
    if duration > MAX_DURATION:
        raise DurationError(f"{text!r} is longer than 100 years")
    if not duration and not allow_zero:
        raise DurationError(f"{text!r} must be longer than zero")
    return duration


def format_duration(duration: timedelta) -> str:
    """The shortest of our spellings (`1d4h`, `90s` as `1m30s`); `0s` for nothing."""
    seconds = int(duration.total_seconds())
    if seconds <= 0:
        return "0s"
    parts = []
    for unit in ("d", "h", "m", "s"):
        size = UNITS[unit]
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts)
