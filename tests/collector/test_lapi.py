"""The CrowdSec LAPI helpers: durations every bouncer parses alike, and the stream's filters."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from remote_uploader.collector.lapi import StreamFilter, decision_scope, parse_bool, parse_network
from remote_uploader.collector.timeparse import go_duration as go_timedelta
from remote_uploader.errors import ApiError


def go_duration(seconds: float) -> str:
    return go_timedelta(timedelta(seconds=seconds))


# The lua bouncer's pattern (lib/plugins/crowdsec/stream.lua): hours and minutes optional,
# seconds required, a fraction ignored. It reads "4h" as 4 seconds.
LUA = re.compile(r"^((?P<hours>[0-9]+)h)?((?P<minutes>[0-9]+)m)?(?P<seconds>[0-9]+)")
# Go's time.ParseDuration, for the units we write.
GO = re.compile(r"^-?(?:(?P<hours>[0-9]+)h)?(?:(?P<minutes>[0-9]+)m)?(?:(?P<seconds>[0-9]+(?:\.[0-9]+)?)s)?$")


def lua_seconds(text: str) -> int:
    match = LUA.match(text)
    assert match is not None
    return int(match["hours"] or 0) * 3600 + int(match["minutes"] or 0) * 60 + int(match["seconds"])


def go_seconds(text: str) -> float:
    match = GO.match(text)
    assert match is not None and text not in ("", "-")
    value = int(match["hours"] or 0) * 3600 + int(match["minutes"] or 0) * 60 + float(match["seconds"] or 0)
    return -value if text.startswith("-") else value


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (14398.9, "3h59m58.9s"),
        (4 * 3600, "4h0m0s"),
        (30 * 60, "0h30m0s"),
        (2.5, "0h0m2.5s"),
        (0.25, "0h0m0.25s"),
        (0, "0h0m0s"),
        (7 * 86400 + 1.001, "168h0m1.001s"),
        (-1.5, "-0h0m1.5s"),
    ],
)
def test_durations_always_write_hours_minutes_and_seconds(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


@pytest.mark.parametrize("seconds", [0.4, 1, 59.999, 60, 3599.5, 3600, 14398.9, 86400 * 30 + 17.25])
def test_the_lua_bouncer_and_go_read_the_same_whole_seconds(seconds: float) -> None:
    text = go_duration(seconds)
    assert lua_seconds(text) == int(seconds)
    assert go_seconds(text) == pytest.approx(seconds, abs=0.001)
    assert go_seconds(text) <= seconds  # never overstated


def test_a_bare_hours_duration_would_be_misread_by_the_lua_bouncer() -> None:
    assert lua_seconds("4h") == 4  # why go_duration never writes one
    assert lua_seconds(go_duration(4 * 3600)) == 4 * 3600


def test_scope_follows_the_value() -> None:
    assert decision_scope("198.51.100.7") == "Ip"
    assert decision_scope("2001:db8::5") == "Ip"
    assert decision_scope("203.0.113.0/24") == "Range"


def test_default_filter_takes_ip_and_range_decisions_of_any_origin_and_scenario() -> None:
    chosen = StreamFilter.from_query({})
    assert chosen.accepts("Ip", "remote-uploader", "ssh-bf")
    assert chosen.accepts("Range", "cscli", "manual")
    assert not chosen.accepts("Country", "remote-uploader", "ssh-bf")


def test_filters_match_as_crowdsec_does() -> None:
    chosen = StreamFilter.from_query(
        {
            "scopes": "IP",
            "origins": "remote-uploader,cscli",
            "scenarios_containing": "SSH,http",
            "scenarios_not_containing": "probe",
        }
    )
    assert chosen.accepts("Ip", "cscli", "sshd-bruteforce")  # scopes and scenarios ignore case
    assert chosen.accepts("Ip", "remote-uploader", "web-http-scan")
    assert not chosen.accepts("Range", "cscli", "sshd-bruteforce")  # scope
    assert not chosen.accepts("Ip", "CAPI", "sshd-bruteforce")  # origins are exact
    assert not chosen.accepts("Ip", "cscli", "manual")  # contains none of the wanted parts
    assert not chosen.accepts("Ip", "cscli", "http-probe-scan")  # contains an unwanted part


def test_empty_filters_mean_no_filter() -> None:
    chosen = StreamFilter.from_query({"scopes": "", "origins": ",", "scenarios_containing": ""})
    assert chosen == StreamFilter()


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"scopes": "ip,username"}, "query.scopes"),
        ({"origins": "x" * 5000}, "query.origins"),
    ],
)
def test_bad_filters_are_refused_naming_the_parameter(query: dict[str, str], field: str) -> None:
    with pytest.raises(ApiError) as caught:
        StreamFilter.from_query(query)
    assert caught.value.status == 400 and caught.value.field == field


def test_booleans_and_networks_are_checked() -> None:
    assert parse_bool("startup", None) is False
    assert parse_bool("startup", "TRUE") is True
    assert parse_bool("startup", "false") is False
    with pytest.raises(ApiError, match=r"query\.startup"):
        parse_bool("startup", "yes please")
    assert str(parse_network("ip", "198.51.100.7")) == "198.51.100.7/32"
    assert str(parse_network("range", "203.0.113.9/24")) == "203.0.113.0/24"
    with pytest.raises(ApiError, match=r"query\.ip"):
        parse_network("ip", "not-an-address")
