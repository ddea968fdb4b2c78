"""Durations and times as people write them: `30s`, `15m`, `4h`, `7d`, `1h30m`; `since=1h`.

One parser for the config file, the API and the CLI, so that `window = "10m"` in a rule,
`?since=10m` in a URL and `--duration 10m` on the command line mean the same. A time is either
RFC 3339 with an offset or a duration, meaning that long before now. The durations themselves are
durations.py's (below both halves, so that the settings read them without this module).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from remote_uploader.durations import MAX_DURATION, PART, UNITS, DurationError, format_duration, parse_duration
from remote_uploader.protocol import check_time

# The durations are durations.py's; imported from here too, as they always were.
__all__ = ["MAX_DURATION", "UNITS", "DurationError", "format_duration", "go_duration", "parse_duration",
           "parse_moment"]


def parse_moment(text: str, now: datetime | None = None) -> datetime:
    """An RFC 3339 time with an offset, or a duration meaning that long before `now`."""
    stripped = text.strip()
    if stripped and stripped[0].isdigit() and PART.match(stripped.lower()) and "-" not in stripped:
        return (now or datetime.now(UTC)) - parse_duration(stripped)
    moment = check_time(stripped)
    if isinstance(moment, str):
        raise DurationError(f"{text!r} is neither an RFC 3339 time ({moment}) nor a duration such as 15m, 1h, 7d")
    return moment


def go_duration(duration: timedelta) -> str:
    """Go's `time.Duration` text with hours, minutes and seconds always written (`3h59m58.9s`,
    `0h0m5s`): what CrowdSec's bouncers parse; a bare `4h` is misread by the lua bouncer."""
    micros = duration // timedelta(microseconds=1)
    sign = "-" if micros < 0 else ""
    micros = abs(micros)
    hours, rest = divmod(micros, 3_600_000_000)
    minutes, rest = divmod(rest, 60_000_000)
    whole, fraction = divmod(rest, 1_000_000)
    seconds = f"{whole}" if not fraction else f"{whole}.{fraction:06d}".rstrip("0")
    return f"{sign}{hours}h{minutes}m{seconds}s"
