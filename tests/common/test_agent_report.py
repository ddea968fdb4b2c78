"""The agent status report's wire form (protocol.py; docs/protocol.md, "Agent status"): both ends
read and write it through one definition."""

from __future__ import annotations

import json

import pytest

from remote_uploader.protocol import MAX_STATUS_LEN, MAX_STATUS_SOURCES, AgentReport, parse_report


def test_a_report_survives_its_wire_form() -> None:
    report = AgentReport(version="0.1.0", queued_batches=2, queued_records=7, queued_bytes=512, oldest_age=1.5,
                         failing_for=3.0, dead_batches=1, sources=(("/var/log/é.log", 10),))
    assert parse_report(report.encode()) == report
    assert report.encode().isascii()  # it travels as a header


def test_a_failure_younger_than_a_millisecond_is_not_sent_as_passing() -> None:
    parsed = parse_report(AgentReport(queued_batches=1, failing_for=0.0001).encode())
    assert isinstance(parsed, AgentReport) and parsed.failing_for > 0


def test_unknown_fields_are_ignored_and_missing_ones_take_their_default() -> None:
    assert parse_report('{"queued_batches": 4, "from_the_future": [1, {"x": 2}]}') == AgentReport(queued_batches=4)


def test_a_report_too_long_for_a_header_drops_its_least_behind_sources_first() -> None:
    sources = tuple((f"/var/log/{'x' * 200}-{n}.log", 1000 - n) for n in range(MAX_STATUS_SOURCES))
    text = AgentReport(version="1", queued_batches=5, sources=sources).encode()
    parsed = parse_report(text)
    assert len(text) <= MAX_STATUS_LEN and isinstance(parsed, AgentReport)
    assert parsed.queued_batches == 5 and 0 < len(parsed.sources) < MAX_STATUS_SOURCES
    assert parsed.sources == sources[:len(parsed.sources)]


@pytest.mark.parametrize(("text", "reason"), [
    ("nope", "not valid JSON"),
    ("[]", "must be a JSON object"),
    ('{"version": "a\\nb"}', "version: contains control characters"),
    ('{"version": "' + "v" * 65 + '"}', "version: longer than 64 characters"),
    ('{"queued_batches": true}', "queued_batches: must be an integer"),
    ('{"queued_bytes": 1.5}', "queued_bytes: must be an integer"),
    ('{"dead_batches": 9007199254740992}', "dead_batches: must be an integer"),
    ('{"oldest_age": -1}', "oldest_age: must be a number of seconds in"),
    ('{"failing_for": "1"}', "failing_for: must be a number of seconds"),
    ('{"failing_for": NaN}', "failing_for: must be a number of seconds in"),
    ('{"sources": [["a", -1]]}', "sources[0]: must be [file, bytes behind]"),
    ('{"sources": {}}', "sources: must be a list"),
    (json.dumps({"sources": [["a", 1]] * (MAX_STATUS_SOURCES + 1)}), "sources: must be a list"),
    (" " * (MAX_STATUS_LEN + 1), "longer than 4096 bytes"),
])
def test_an_invalid_report_says_why(text: str, reason: str) -> None:
    problem = parse_report(text)
    assert isinstance(problem, str) and problem.startswith(reason), problem
