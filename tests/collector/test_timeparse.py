"""Durations and relative times, as the config, the API and the CLI read them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from remote_uploader.collector.timeparse import DurationError, go_duration, parse_duration, parse_moment

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("15m", timedelta(minutes=15)),
        ("4h", timedelta(hours=4)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(days=14)),
        ("1h30m", timedelta(minutes=90)),
        ("1d12h5m3s", timedelta(days=1, hours=12, minutes=5, seconds=3)),
        (" 4H ", timedelta(hours=4)),
    ],
)
def test_durations_take_units_and_combinations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["10", "", "h", "1.5h", "-5m", "1h1h", "1m1h x", "0s", "5 m", "999999999d", 10])
def test_malformed_durations_are_refused_with_an_example(text: object) -> None:
    with pytest.raises(DurationError, match=r"duration|zero|100 years"):
        parse_duration(text)


def test_a_time_is_rfc3339_or_a_duration_before_now() -> None:
    assert parse_moment("15m", NOW) == NOW - timedelta(minutes=15)
    assert parse_moment("7d", NOW) == NOW - timedelta(days=7)
    assert parse_moment("2024-04-30T00:00:00Z", NOW) == datetime(2024, 4, 30, tzinfo=UTC)
    for bad in ("2024-04-30T00:00:00", "yesterday", "15", "-1h"):
        with pytest.raises(DurationError):
            parse_moment(bad, NOW)


def test_go_durations_always_write_hours_minutes_and_seconds() -> None:
    assert go_duration(timedelta(hours=3, minutes=59, seconds=58, microseconds=900000)) == "3h59m58.9s"
    assert go_duration(timedelta(hours=4)) == "4h0m0s"
    assert go_duration(timedelta(seconds=5)) == "0h0m5s"
    assert go_duration(timedelta(days=2)) == "48h0m0s"
    assert go_duration(-timedelta(seconds=1)) == "-0h0m1s"
