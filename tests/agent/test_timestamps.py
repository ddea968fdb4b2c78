"""Timestamp patterns: each line's own time, and counting by the lines' minutes."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from remote_uploader.agent.batch import Batch
from remote_uploader.agent.extractors import build_extractor
from remote_uploader.agent.parallel import scan_parts
from remote_uploader.agent.timestamps import TimedExtractor
from remote_uploader.config import load
from remote_uploader.errors import ConfigError
from remote_uploader.timepatterns import PatternError, compile_pattern


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def time_of(pattern: str, line: str, now: str = "2026-12-02T12:00:00+00:00") -> float | None:
    compiled = compile_pattern(pattern, now=lambda: epoch(now))
    data = line.encode()
    return compiled.time_of(data, 0, len(data))


@pytest.mark.parametrize(
    ("pattern", "line", "expected"),
    [
        ("common", '203.0.113.7 - - [02/Dec/2026:10:04:05 +0100] "GET / HTTP/1.1" 200 1', "2026-12-02T09:04:05+00:00"),
        ("nginx", '203.0.113.7 - - [02/dec/2026:10:04:05 -0230] "GET /"', "2026-12-02T12:34:05+00:00"),
        ("iso8601", "2026-12-02T10:04:05.250Z sshd[1]: from 203.0.113.7", "2026-12-02T10:04:05.25+00:00"),
        ("rfc3339", "2026-12-02 10:04:05+01:00 host app: 203.0.113.7", "2026-12-02T09:04:05+00:00"),
        ("%Y-%m-%d %H:%M:%S %z", "at 2026-12-02  10:04:05 +0000 from 203.0.113.7", "2026-12-02T10:04:05+00:00"),
        ("%s", "ts=1764669845.5 ip=203.0.113.7", "2025-12-02T10:04:05.5+00:00"),
        ("%d %B %Y %T %z", "2 December 2026 10:04:05 Z", "2026-12-02T10:04:05+00:00"),
    ],
)
def test_a_line_has_the_time_its_pattern_reads(pattern: str, line: str, expected: str) -> None:
    assert time_of(pattern, line) == epoch(expected)


def test_syslog_times_take_the_year_that_is_not_ahead_of_now(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    line = "Dec 31 23:59:59 host sshd[1]: Failed password from 203.0.113.7"
    # Read on New Year's Day: December is last year's.
    assert time_of("syslog", line, now="2027-01-01T00:10:00+00:00") == epoch("2026-12-31T23:59:59+00:00")
    assert time_of("syslog", "Dec  2 10:04:05 host x", now="2026-12-02T12:00:00+00:00") == epoch(
        "2026-12-02T10:04:05+00:00"
    )


def test_lines_without_a_time_or_with_an_impossible_one_have_none() -> None:
    assert time_of("common", "203.0.113.7 - - no time here") is None
    assert time_of("iso8601", "2026-02-30T10:04:05Z 203.0.113.7") is None  # 30 February
    far = "x" * 600 + " [02/Dec/2026:10:04:05 +0000]"
    assert time_of("common", far) is None  # only the start of a line is searched


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("%Q", "not a supported directive"),
        ("%H:%M:%S", "must hold a date and an hour"),
        ("", "must be a preset"),
        ("%Y-%m-%d %H%", "lone %"),
        ("%s %H", "with other fields"),
    ],
)
def test_a_pattern_that_cannot_work_is_refused_saying_why(pattern: str, reason: str) -> None:
    with pytest.raises(PatternError, match=reason):
        compile_pattern(pattern)


def test_a_bad_pattern_in_the_config_names_its_key(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[server]\nurl = "http://127.0.0.1:9"\n[[sources]]\npaths = ["/var/log/x"]\n'
                      '[[sources]]\npaths = ["/var/log/y"]\ntimestamp_pattern = "%H:%M"\n')
    with pytest.raises(ConfigError) as caught:
        load(str(config), env={})
    assert caught.value.key == "sources[1].timestamp_pattern" and "date and an hour" in str(caught.value)
    config.write_text('[server]\nurl = "http://127.0.0.1:9"\n[[sources]]\npaths = ["/var/log/x"]\n'
                      'timestamp_pattern = "syslog"\n')
    assert load(str(config), env={}).sources[0].timestamp_pattern == "syslog"


LOG = (
    '198.51.100.1 - - [02/Dec/2026:10:00:01 +0000] "GET /a" 200 1 "-" "-" "192.0.2.9"\n'
    '198.51.100.1 - - [02/Dec/2026:10:00:59 +0000] "GET /b" 200 1\n'
    "  a continuation line without a time, from 198.51.100.2\n"
    '198.51.100.1 - - [02/Dec/2026:10:01:00 +0000] "GET /c" 200 1\n'
    '198.51.100.3 - - [02/Dec/2026:12:30:00 +0000] "GET /d" 200 1\n'
    '198.51.100.1 - - [02/Dec/2026:10:00:30 +0000] "GET /late" 200 1\n'  # out of order: back to 10:00
)


def test_counts_go_to_the_minute_of_their_line_and_untimed_lines_are_counted_apart() -> None:
    extractor = build_extractor(engine="stdlib", timestamp_pattern="common")
    assert isinstance(extractor, TimedExtractor)
    data = b"\n" * extractor.context + LOG.encode()
    (part,) = scan_parts(extractor, bytearray(data), extractor.context, len(data), len(LOG), cap=1000)
    assert part.counts == {"198.51.100.2": 1} and part.untimed_lines == 1
    assert part.minutes is not None
    ten = int(epoch("2026-12-02T10:00:00+00:00") // 60)
    cells = {minute - ten: (cell.counts, cell.first, cell.last) for minute, cell in part.minutes.items()}
    assert cells == {
        0: ({"198.51.100.1": 3, "192.0.2.9": 1}, epoch("2026-12-02T10:00:01Z"), epoch("2026-12-02T10:00:59Z")),
        1: ({"198.51.100.1": 1}, epoch("2026-12-02T10:01:00+00:00"), epoch("2026-12-02T10:01:00+00:00")),
        150: ({"198.51.100.3": 1}, epoch("2026-12-02T12:30:00+00:00"), epoch("2026-12-02T12:30:00+00:00")),
    }
    assert part.records == 5 and part.occurrences == 7
    # The totals are the same as without a pattern: only where they land differs.
    plain = build_extractor(engine="stdlib")
    assert Counter(extractor.scan(data, extractor.context, len(data))) == Counter(
        plain.scan(data, plain.context, len(data))
    )


def test_a_batch_sends_one_record_per_address_and_minute_with_the_lines_times() -> None:
    extractor = build_extractor(engine="stdlib", timestamp_pattern="common")
    data = b"\n" * extractor.context + LOG.encode()
    (part,) = scan_parts(extractor, bytearray(data), extractor.context, len(data), len(LOG), cap=1000)
    batch = Batch(0.0)
    read_at = epoch("2026-12-02T15:00:00+00:00")
    batch.add("/var/log/nginx/access.log", part.counts, read_at)
    assert part.minutes is not None
    batch.add_minutes("/var/log/nginx/access.log", part.minutes)
    batch.add_minutes("/var/log/nginx/access.log", part.minutes)  # the same again: counts add up
    assert len(batch) == 5 and batch.occurrences == 1 + 2 * 6
    groups = batch.groups()
    spans = {(ip, first, last): n for _, first, last, ips, counts in groups for ip, n in zip(ips, counts, strict=True)}

    def us(text: str) -> int:
        return int(epoch(text) * 1_000_000)

    assert spans == {
        ("198.51.100.2", us("2026-12-02T15:00:00Z"), us("2026-12-02T15:00:00Z")): 1,  # no time: read time
        ("198.51.100.1", us("2026-12-02T10:00:01Z"), us("2026-12-02T10:00:59Z")): 6,
        ("192.0.2.9", us("2026-12-02T10:00:01Z"), us("2026-12-02T10:00:59Z")): 2,
        ("198.51.100.1", us("2026-12-02T10:01:00Z"), us("2026-12-02T10:01:00Z")): 2,
        ("198.51.100.3", us("2026-12-02T12:30:00Z"), us("2026-12-02T12:30:00Z")): 2,
    }
    assert batch.new_keys("/var/log/nginx/access.log", {}, part.minutes) == 0


def test_a_dense_timed_range_is_cut_into_parts_under_the_cap() -> None:
    lines = "".join(f"[02/Dec/2026:10:{n % 60:02d}:00 +0000] from 10.0.{n // 250}.{n % 250}\n" for n in range(2000))
    extractor = build_extractor(engine="stdlib", timestamp_pattern="common")
    data = b"\n" * extractor.context + lines.encode()
    parts = scan_parts(extractor, bytearray(data), extractor.context, len(data), len(lines), cap=300)
    assert len(parts) > 1 and all(p.records <= 300 for p in parts)
    assert sum(p.occurrences for p in parts) == 2000 and sum(p.lines for p in parts) == 2000


def test_the_test_command_says_how_many_lines_the_pattern_reads_and_fails_when_none(tmp_path: Path) -> None:
    from remote_uploader.agent.checks import check_sources

    log, other = tmp_path / "access.log", tmp_path / "other.log"
    log.write_text(LOG)
    other.write_text(LOG)
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[server]\nurl = "http://127.0.0.1:9"\n[[sources]]\npaths = ["{log}"]\ntimestamp_pattern = "common"\n'
        f'[[sources]]\npaths = ["{other}"]\ntimestamp_pattern = "syslog"\n'
    )
    good, bad = check_sources(load(str(config), env={}))
    assert good.ok and "times read by timestamp_pattern in 5 of 6 lines" in good.detail
    assert not bad.ok and "in 0 of 6 lines" in bad.detail


def test_config_show_prints_the_pattern_and_its_toml_loads_back(tmp_path: Path) -> None:
    from remote_uploader.config import resolve
    from remote_uploader.config_show import to_toml

    config = tmp_path / "agent.toml"
    config.write_text('[server]\nurl = "http://127.0.0.1:9"\n[[sources]]\npaths = ["/var/log/auth.log"]\n'
                      'timestamp_pattern = "%b %e %H:%M:%S"\n')
    shown = to_toml(resolve(str(config), env={}))
    assert 'timestamp_pattern = "%b %e %H:%M:%S"' in shown
    again = tmp_path / "again.toml"
    again.write_text(shown)
    assert load(str(again), env={}).sources[0].timestamp_pattern == "%b %e %H:%M:%S"
