"""Timestamp patterns: the log's own time of a line (as fail2ban's `datepattern`).

Below both halves (the config checks a source's `timestamp_pattern` when it is loaded; the
agent's agent/timestamps.py counts by the times it reads). Why log times at all: without a
pattern the agent stamps what it counts with the time it *read* it, which is right for a log
followed live and wrong for a backlog: `once` over yesterday's log would put a day of attempts
into the collector's current minute, where rules see a burst that never happened.

A pattern is a preset name or a strptime-like format:

- `common` (also `nginx`, `apache`, `clf`): `[%d/%b/%Y:%H:%M:%S %z]`, the common/combined log;
- `syslog`: `%b %e %H:%M:%S` (classic syslog, no year: the year is inferred, below);
- `iso8601` (also `rfc3339`): `2026-12-02T15:04:05`, a `T` or a space, optional fraction,
  optional `Z` or offset (journalctl -o short-iso, rsyslog's high-precision format, most apps);
- a format of these directives: `%Y` `%y` `%m` `%d` `%e` `%H` `%M` `%S` `%f` (fraction) `%b`
  `%B` (English month names, any case) `%z` (`Z`, `+0100`, `+01:00`) `%s` (epoch seconds)
  `%T` (= `%H:%M:%S`) `%F` (= `%Y-%m-%d`) `%%`; a space matches any run of blanks; any
  other character matches itself. Anything else is refused when the config is loaded.

The first match in a line wins, searched within the line's first `SEARCH_BYTES` bytes (times
are at the start of log lines; a bound keeps a 1 MB line from being searched whole). A time
without a zone is local time (the agent's TZ), as the log daemon wrote it. A format without a
year (syslog) takes the year that puts the time at most a day ahead of `now`, so December's
lines read in January land in December.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Final

#: A line's time must start within its first this many bytes.
SEARCH_BYTES: Final = 512
#: Parsed time texts remembered (many lines share a second); emptied when full.
CACHE_LIMIT: Final = 4096

PRESETS: Final = {
    "common": "[%d/%b/%Y:%H:%M:%S %z]",
    "nginx": "[%d/%b/%Y:%H:%M:%S %z]",
    "apache": "[%d/%b/%Y:%H:%M:%S %z]",
    "clf": "[%d/%b/%Y:%H:%M:%S %z]",
    "syslog": "%b %e %H:%M:%S",
    "iso8601": "%F{T}%T{frac}{zone}",
    "rfc3339": "%F{T}%T{frac}{zone}",
}

_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_FULL_MONTHS = [
    "january", "february", "march", "april", "may", "june",
    "july", "august", "september", "october", "november", "december",
]  # fmt: skip
_DIRECTIVES: Final = {
    "Y": r"(?P<Y>\d{4})",
    "y": r"(?P<y>\d{2})",
    "m": r"(?P<m>1[0-2]|0?[1-9])",
    "d": r"(?P<d>3[01]|[12]\d|0?[1-9])",
    "e": r"(?P<d>3[01]|[12]\d| ?[1-9]|0[1-9])",
    "H": r"(?P<H>2[0-3]|[01]?\d)",
    "M": r"(?P<M>[0-5]\d)",
    "S": r"(?P<S>[0-5]\d|60)",
    "f": r"(?P<f>\d{1,9})",
    "b": r"(?P<b>(?i:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec))",
    "B": r"(?P<B>(?i:january|february|march|april|may|june|july|august|september|october|november|december))",
    "z": r"(?P<z>Z|z|[+-]\d{2}:?\d{2})",
    "s": r"(?P<s>\d{9,11})(?:\.(?P<f>\d{1,9}))?",
}
_EXPANSIONS: Final = {"T": "%H:%M:%S", "F": "%Y-%m-%d"}
_ISO_PARTS: Final = {"T": "[T ]", "frac": r"(?:[.,](?P<f>\d{1,9}))?", "zone": r"(?:\s?(?P<z>Z|z|[+-]\d{2}:?\d{2}))?"}


class PatternError(ValueError):
    """A timestamp pattern that cannot be used (the config names the key)."""


@dataclass(frozen=True, slots=True)
class TimePattern:
    """A compiled pattern: `time_of(buf, start, end)` gives the epoch seconds of a line's time."""

    text: str
    regex: re.Pattern[bytes]
    now: Callable[[], float] = time.time
    _cache: dict[bytes, float | None] = field(default_factory=dict)

    def time_of(self, buf: bytes | bytearray | memoryview, start: int, end: int) -> float | None:
        """The time of the line buf[start:end], or None where it has none."""
        found = self.regex.search(buf, start, min(end, start + SEARCH_BYTES))
        return None if found is None else self.seconds_of(found)

    def seconds_of(self, found: re.Match[bytes]) -> float | None:
        """The time a match of `regex` spells (None for an impossible date), remembered by text."""
        text = found.group()
        seconds = self._cache.get(text, -1.0)
        if seconds == -1.0:
            if len(self._cache) >= CACHE_LIMIT:
                self._cache.clear()
            seconds = self._cache[text] = self._convert(found)
        return seconds

    def _convert(self, found: re.Match[bytes]) -> float | None:
        parts = found.groupdict()
        fraction = parts.get("f")
        extra = int(fraction) / 10 ** len(fraction) if fraction else 0.0
        if parts.get("s") is not None:
            return int(parts["s"]) + extra
        if parts.get("b") is not None:
            month = _MONTHS.index(parts["b"].decode().lower()) + 1
        elif parts.get("B") is not None:
            month = _FULL_MONTHS.index(parts["B"].decode().lower()) + 1
        else:
            month = int(parts["m"] or 1)
        day, hour = int(parts["d"] or 1), int(parts.get("H") or 0)
        minute, second = int(parts.get("M") or 0), min(int(parts.get("S") or 0), 59)
        zone = _zone(parts.get("z"))
        if parts.get("Y") is not None:
            years = [int(parts["Y"])]
        elif parts.get("y") is not None:
            years = [2000 + int(parts["y"])]
        else:
            this_year = datetime.fromtimestamp(self.now(), UTC).year
            years = [this_year, this_year - 1]  # the first not more than a day ahead of now
        for year in years:
            try:
                moment = datetime(year, month, day, hour, minute, second, tzinfo=zone)
            except ValueError:  # 31 April, 29 February of a common year: not a time
                continue
            seconds = moment.timestamp() if zone is not None else time.mktime(moment.timetuple())
            if len(years) == 1 or seconds <= self.now() + 86400:
                return seconds + extra
        return None


def _zone(text: bytes | None) -> timezone | None:
    if text is None:
        return None
    if text in (b"Z", b"z"):
        return UTC
    digits = text[1:].replace(b":", b"")
    offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    return timezone(-offset if text[:1] == b"-" else offset)


def compile_pattern(pattern: str, now: Callable[[], float] = time.time) -> TimePattern:
    """A preset name or a format, compiled; `PatternError` names what is wrong."""
    if not isinstance(pattern, str) or not pattern.strip():
        raise PatternError("must be a preset (common, syslog, iso8601) or a format such as %Y-%m-%d %H:%M:%S")
    preset = PRESETS.get(pattern.strip().lower())
    iso = preset is not None and "{T}" in preset
    source = preset if preset is not None else pattern
    out: list[str] = []
    used: set[str] = set()
    index = 0
    while index < len(source):
        char = source[index]
        if iso and char == "{":
            name = source[index + 1 : source.index("}", index)]
            out.append(_ISO_PARTS[name])
            used.update({"f", "z"} if name in ("frac", "zone") else ())
            index += len(name) + 2
            continue
        if char == "%":
            if index + 1 >= len(source):
                raise PatternError(f"{pattern!r} ends with a lone %")
            directive = source[index + 1]
            index += 2
            if directive == "%":
                out.append("%")
            elif directive in _EXPANSIONS:
                source = source[:index] + _EXPANSIONS[directive] + source[index:]
            elif directive in _DIRECTIVES:
                group = "d" if directive == "e" else directive
                if group in used or "s" in used or (directive == "s" and used):
                    raise PatternError(f"{pattern!r} uses %{directive} twice, or %s with other fields")
                used.update({"s", "f"} if directive == "s" else {group})
                out.append(_DIRECTIVES[directive])
            else:
                raise PatternError(f"{pattern!r}: %{directive} is not a supported directive (docs/configuration.md)")
            continue
        out.append(r"\s+" if char == " " else re.escape(char))
        index += 1
    if "s" not in used and not ({"d"} <= used and ({"m"} & used or {"b", "B"} & used) and "H" in used):
        raise PatternError(f"{pattern!r} must hold a date and an hour (%d, %m or %b, %H) or %s")
    try:
        regex = re.compile("".join(out).encode())
    except re.error as exc:  # pragma: no cover: every piece above is a valid expression
        raise PatternError(f"{pattern!r}: {exc}") from None
    return TimePattern(pattern, regex, now)
