"""Rules, decisions and windows through a real collector process (SQLite; the storage contract
covers PostgreSQL): a batch that crosses a rule is decided within seconds, survives a restart,
explains itself; bad input is a 400 naming the field."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from remote_uploader.protocol import format_time
from tests.helpers.collector_fixtures import CollectorThread

RULES = """allowlist = ["192.0.2.0/24"]
decision_interval = "1s"

[[rules]]
name = "sshd"
min_count = 5
window = "10m"
duration = "1h"
sources = ["*/auth.log"]

[[rules]]
name = "scan-24"
min_count = 2
window = "10m"
duration = "4h"
prefix_v4 = 24
min_addresses = 3
"""


def now_batch(batch_id: str, *records: tuple[str, int, str]) -> dict[str, Any]:
    stamp = format_time(datetime.now(UTC))
    return {
        "agent": "test-agent",
        "batch_id": batch_id,
        "sent_at": stamp,
        "records": [
            {"ip": ip, "count": count, "first_seen": stamp, "last_seen": stamp, "source": source}
            for ip, count, source in records
        ],
    }


def wait_for(probe: Callable[[], list[dict[str, Any]]], what: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30
    while True:
        found = probe()
        if found:
            return found
        assert time.monotonic() < deadline, f"no {what} within 30 s"
        time.sleep(0.1)


def decisions(collector: CollectorThread, **params: Any) -> list[dict[str, Any]]:
    response = collector.get("/v1/rules/decisions", **params)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def test_a_batch_crossing_a_rule_is_decided_explained_and_survives_a_restart(make_collector) -> None:  # type: ignore[no-untyped-def]
    collector: CollectorThread = make_collector(config=RULES)
    batch = now_batch("1", ("198.51.100.7", 4, "/var/log/auth.log"), ("198.51.100.8", 9, "/var/log/nginx.log"))
    assert collector.post_batch(batch).status_code == 200
    assert collector.post_batch(now_batch("2", ("198.51.100.7", 1, "/var/log/auth.log"))).status_code == 200
    (made,) = wait_for(lambda: decisions(collector, scenario="sshd"), "decision")
    assert (made["value"], made["scope"], made["origin"], made["state"]) == (
        "198.51.100.7",
        "Ip",
        "remote-uploader",
        "active",
    )
    explained = collector.get(f"/v1/rules/decisions/{made['id']}").json()
    assert explained["details"]["rule"] == "sshd" and explained["details"]["count"] == 5
    assert [(e["ip"], e["count"]) for e in explained["evidence"]] == [("198.51.100.7", 5)]
    # The /24 rule: three addresses of 203.0.113.0/24 with 2 or more hits each; one is allowlisted elsewhere.
    collector.post_batch(now_batch("3", *[(f"203.0.113.{n}", 2, "/x") for n in (1, 2, 3)], ("192.0.2.9", 50, "/x")))
    (ranged,) = wait_for(lambda: decisions(collector, scenario="scan-24"), "range decision")
    assert (ranged["value"], ranged["scope"]) == ("203.0.113.0/24", "Range")
    window = collector.get("/v1/windows", since="15m").json()
    assert {item["ip"]: item["count"] for item in window["items"]}["198.51.100.8"] == 9
    assert collector.get("/v1/series", since="1h", ip="198.51.100.7").json()["points"][-1]["count"] >= 1
    collector.stop()
    collector.start()
    assert {d["value"] for d in decisions(collector)} == {"198.51.100.7", "203.0.113.0/24"}
    assert not any(d["value"] == "192.0.2.9" for d in decisions(collector, state="all"))


def test_decisions_by_hand_through_the_api(collector: CollectorThread) -> None:
    made = httpx.post(
        collector.url + "/v1/rules/decisions",
        json={"value": "2001:DB8::/48", "duration": "1h30m", "reason": "abuse report"},
        headers=collector.headers(),
    )
    assert made.status_code == 201, made.text
    (item,) = made.json()["items"]
    assert (item["value"], item["origin"], item["scenario"], item["reason"]) == (
        "2001:db8::/48",
        "cscli",
        "manual",
        "abuse report",
    )
    assert [d["id"] for d in decisions(collector, contains="2001:db8::5")] == [item["id"]]
    ended = httpx.delete(
        collector.url + "/v1/rules/decisions", params={"value": "2001:db8:0::/48"}, headers=collector.headers()
    )
    assert ended.status_code == 200 and ended.json()["items"][0]["state"] == "deleted"
    assert decisions(collector) == []
    again = httpx.delete(collector.url + f"/v1/rules/decisions/{item['id']}", headers=collector.headers())
    assert again.status_code == 404


def test_bad_input_names_the_field(collector: CollectorThread) -> None:
    def post(body: dict[str, Any], token: str | None = None) -> httpx.Response:
        return httpx.post(collector.url + "/v1/rules/decisions", json=body, headers=collector.headers(token))

    def field(response: httpx.Response) -> str:
        assert response.status_code == 400, response.text
        return str(response.json()["detail"][0]["field"])

    assert field(post({"value": "198.51.100.7", "duration": "10"})) == "body.duration"
    assert field(post({"value": "198.51.100.7", "duration": "1x"})) == "body.duration"
    assert field(post({"value": "198.51.100.0/33", "duration": "1h"})) == "body.value"
    assert field(post({"value": "not-an-ip", "duration": "1h"})) == "body.value"
    assert field(post({"duration": "1h"})).endswith("value")
    assert field(collector.get("/v1/windows", since="yesterday")) == "query.since"
    assert field(collector.get("/v1/windows", since="15m", cidr="10.0.0.0/99")) == "query.cidr"
    assert field(collector.get("/v1/windows")).endswith("since")
    assert field(collector.get("/v1/ips", since="5 minutes")) == "query.since"
    assert field(collector.get("/v1/rules/decisions", contains="x")) == "query.contains"
    assert field(collector.get("/v1/rules/decisions", state="gone")).endswith("state")
    assert field(collector.get("/v1/rules/decisions", cursor="abc")) == "query.cursor"
    reader = collector.add_token("dashboard", read_only=True)
    refused = post({"value": "198.51.100.7", "duration": "1h"}, token=reader)
    assert refused.status_code == 403 and refused.json()["detail"][0]["field"] == "authorization"
    assert collector.get("/v1/rules/decisions", token=reader).status_code == 200


def test_relative_since_is_accepted_where_times_are(collector: CollectorThread) -> None:
    collector.post_batch(now_batch("1", ("198.51.100.7", 3, "/x")))
    assert [i["ip"] for i in collector.get("/v1/ips", since="1h").json()["items"]] == ["198.51.100.7"]
    assert collector.get("/v1/ips", since="2024-01-01T00:00:00Z").json()["items"]
    assert "198.51.100.7" in collector.get("/v1/blocklist", since="1h", include_private="true").text


def test_a_bad_rule_stops_the_collector_with_the_key_named(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        f'[collector]\ndb = "sqlite://{tmp_path}/c.db"\n'
        '[[rules]]\nname = "x"\nmin_count = 5\nwindow = "10"\nduration = "1h"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "remote_uploader.collector.cli", "serve", "-c", str(config), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "rules[0].window" in result.stderr and "not a duration" in result.stderr


def test_blocklists_for_appliances_are_capped_ranked_and_split(collector: CollectorThread) -> None:
    records = [(f"198.51.100.{n}", n, "/x") for n in range(1, 11)]
    collector.post_batch(now_batch("1", *records, ("192.0.2.1", 99, "/x")))

    def listed(**params: Any) -> list[str]:
        response = collector.get("/v1/blocklist", include_private="true", **params)
        assert response.status_code == 200, response.text
        return [line for line in response.text.splitlines() if not line.startswith("#")]

    assert listed(max_entries=3) == ["192.0.2.1", "198.51.100.9", "198.51.100.10"]  # top 3 by count, numeric order
    first = listed(max_entries=9, part_size=4, part=1)
    rest = listed(max_entries=9, part_size=4, part=2) + listed(max_entries=9, part_size=4, part=3)
    assert len(first) == 4 and len(rest) == 5 and not set(first) & set(rest)
    assert "part=2/3" in collector.get("/v1/blocklist", part_size=4, part=2, include_private="true").text
    assert collector.get("/v1/blocklist", part_size=4, part=9, include_private="true").status_code == 404
    assert collector.get("/v1/blocklist", part=2).json()["detail"][0]["field"] == "query.part"
    assert collector.get("/v1/blocklist", part_size=2, format="nft").json()["detail"][0]["field"] == "query.part_size"
    assert collector.get("/v1/blocklist", max_entries=0).status_code == 400
