"""`remote-uploader ips` and `decisions`: filters and output formats against real collectors."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from remote_uploader.cli import main
from remote_uploader.protocol import format_time
from tests.helpers.collector_fixtures import CollectorThread


def _record(ip: str, count: int, seen: datetime, source: str = "/var/log/auth.log") -> dict[str, object]:
    stamp = format_time(seen)
    return {"ip": ip, "count": count, "first_seen": stamp, "last_seen": stamp, "source": source}


def _feed(c: CollectorThread) -> None:
    now = datetime.now(UTC)
    old = now - timedelta(days=3)
    records = [
        _record("203.0.113.7", 40, now),
        _record("203.0.113.9", 5, now),
        _record("198.51.100.23", 12, old),
        _record("2001:db8::5", 7, now, source="/var/log/nginx/access.log"),
    ]
    body = {"agent": "test-agent", "batch_id": "q-1", "sent_at": format_time(now), "records": records}
    assert c.post_batch(body).status_code == 200
    c.add_token("web-2")


def _run(
    c: CollectorThread, tmp_path: Path, capsys: pytest.CaptureFixture[str], *options: str, command: str = "ips"
) -> tuple[int, str, str]:
    token_file = tmp_path / "token"
    token_file.write_text(c.add_token("reader", read_only=True) + "\n")
    config = tmp_path / "agent.toml"
    config.write_text("")
    code = main([command, "-c", str(config), "--url", c.url, "--token-file", str(token_file), *options])
    out, err = capsys.readouterr()
    return code, out, err


def test_ips_filters_by_window_count_and_range_and_sorts(
    collector_any: CollectorThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _feed(collector_any)
    code, out, _ = _run(collector_any, tmp_path, capsys, "--json")
    assert code == 0
    assert [row["ip"] for row in json.loads(out)] == ["203.0.113.7", "198.51.100.23", "2001:db8::5", "203.0.113.9"]

    code, out, _ = _run(collector_any, tmp_path, capsys, "--json", "--since", "1h", "--min-count", "6")
    assert [row["ip"] for row in json.loads(out)] == ["203.0.113.7", "2001:db8::5"]

    code, out, _ = _run(collector_any, tmp_path, capsys, "--json", "--cidr", "203.0.113.0/24", "--limit", "1")
    assert [(row["ip"], row["count"]) for row in json.loads(out)] == [("203.0.113.7", 40)]

    code, out, _ = _run(collector_any, tmp_path, capsys, "--json", "--agent", "web-2")
    assert json.loads(out) == []

    code, out, _ = _run(collector_any, tmp_path, capsys, "--json", "--source", "/var/log/nginx/*", "--since", "7d")
    assert [(row["ip"], row["count"]) for row in json.loads(out)] == [("2001:db8::5", 7)]

    code, out, _ = _run(collector_any, tmp_path, capsys, "--json", "--since", "7d", "--sort", "last_seen")
    assert [row["ip"] for row in json.loads(out)][-1] == "198.51.100.23"  # three days old: last


def test_ips_pages_through_the_api_up_to_the_limit(
    collector: CollectorThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = datetime.now(UTC)
    records = [_record(f"192.0.2.{i}", i, now) for i in range(1, 30)]
    body = {"agent": "test-agent", "batch_id": "many", "sent_at": format_time(now), "records": records}
    assert collector.post_batch(body).status_code == 200
    code, out, _ = _run(collector, tmp_path, capsys, "--csv", "--limit", "25")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0
    assert len(rows) == 25
    assert rows[0]["ip"] == "192.0.2.29" and rows[0]["count"] == "29"
    assert list(rows[0]) == ["ip", "count", "first_seen", "last_seen", "agents"]


def test_ips_prints_an_aligned_table_when_asked_for_no_format(
    collector: CollectorThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _feed(collector)
    _, out, _ = _run(collector, tmp_path, capsys)
    # Not a terminal here, so JSON is the default; the table is what a terminal gets.
    assert json.loads(out)[0]["ip"] == "203.0.113.7"
    from remote_uploader.query import IP_COLUMNS, render

    table = render(json.loads(out), IP_COLUMNS, "table").splitlines()
    assert table[0].split() == list(IP_COLUMNS)
    assert set(table[1]) <= {"-", " "}
    assert len({len(line) for line in table[2:]}) == 1  # aligned: every row as wide


def test_decisions_lists_active_ones_and_with_all_the_ended_too(
    collector_any: CollectorThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c = collector_any
    for value in ("203.0.113.7", "198.51.100.0/24"):
        body = {"value": value, "duration": "4h", "reason": "seen scanning, \"by hand\""}
        made = httpx.post(c.url + "/v1/rules/decisions", json=body, headers=c.headers(), timeout=30)
        assert made.status_code in (200, 201), made.text
    assert httpx.delete(c.url + "/v1/rules/decisions", params={"value": "198.51.100.0/24"}, headers=c.headers(),
                        timeout=30).status_code == 200
    code, out, _ = _run(c, tmp_path, capsys, "--json", command="decisions")
    assert code == 0
    assert [(row["value"], row["state"]) for row in json.loads(out)] == [("203.0.113.7", "active")]
    code, out, _ = _run(c, tmp_path, capsys, "--csv", "--all", command="decisions")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(row["value"], row["state"], row["scope"]) for row in rows] == [
        ("203.0.113.7", "active", "Ip"), ("198.51.100.0/24", "deleted", "Range")]
    assert rows[0]["reason"] == 'seen scanning, "by hand"'


def test_a_bad_filter_is_refused_with_the_collector_naming_it(
    collector: CollectorThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(collector, tmp_path, capsys, "--cidr", "not-a-network")
    assert code == 3
    assert out == ""
    assert "query.cidr" in err and "400" in err


def test_a_wrong_token_or_an_absent_collector_is_one_clear_error(
    collector: CollectorThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("ru_not-a-token")
    config = tmp_path / "agent.toml"
    config.write_text("")
    code = main(["ips", "-c", str(config), "--url", collector.url, "--token-file", str(wrong)])
    assert code == 3
    assert "401" in capsys.readouterr().err
    code = main(["ips", "-c", str(config), "--url", "http://127.0.0.1:9", "--token-file", str(wrong)])
    err = capsys.readouterr().err
    assert code == 3 and "cannot reach the collector at http://127.0.0.1:9" in err
    assert "ru_not-a-token" not in err


def test_control_characters_from_logs_cannot_steer_the_terminal() -> None:
    from remote_uploader.query import render

    out = render([{"agent": "evil\x1b[2J\x07name"}], ("agent",), "table")
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b[2J" in out
