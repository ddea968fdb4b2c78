"""Debian's own CrowdSec bouncers, unchanged, against a real collector process.

- crowdsec-custom-bouncer runs a script that records each add and delete;
- crowdsec-firewall-bouncer programs nftables inside a network namespace made for the test
  (the collector runs there too: the bouncer reaches it on that namespace's 127.0.0.1), and
  `nft list ruleset` there shows what it did.

Both pull every second. Each test: an address that crosses a rule (5 hits in 10 minutes, sent
as an agent's batch) is banned within seconds; its ban expires (the test moves its end into the
past once the bouncer has it: a ban of a few seconds could end, on a loaded machine, before the
bouncer's first pull) and is deleted; the
collector is restarted on the same database and port, and the bouncer carries on from where it
was (a decision made meanwhile arrives, nothing is sent twice); three addresses of one /24
crossing the subnet rule make a decision that arrives as a range. Skipped, saying why, where
the packages are not installed or a namespace cannot be made.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from remote_uploader.collector.auth import create_bouncer_key
from remote_uploader.collector.storage import open_storage
from remote_uploader.collector.storage.base import Storage
from remote_uploader.collector.storage.model import NewDecision
from remote_uploader.protocol import format_time
from tests.helpers.bouncers import CustomBouncer, FirewallBouncer, entered, netns, require, wait_for
from tests.helpers.collector_fixtures import CollectorProcess

RULES = """
decision_interval = "1s"

[[rules]]
name = "sshd-bruteforce"
min_count = 5
window = "10m"
duration = "1h"

[[rules]]
name = "sshd-subnet"
min_count = 5
window = "10m"
duration = "1h"
prefix_v4 = 24
min_addresses = 3
"""


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Storage]:
    storage = open_storage(f"sqlite://{tmp_path}/collector.db", pool_size=2)
    storage.migrate()
    yield storage
    storage.close()


def decide(db: Storage, value: str, seconds: float, scenario: str = "manual") -> None:
    scope = "Range" if "/" in value else "Ip"
    until = datetime.now(UTC) + timedelta(seconds=seconds)
    [(_, created)] = db.add_decisions(
        [NewDecision(value=value, scope=scope, until=until, scenario=scenario, origin="cscli")], datetime.now(UTC)
    )
    assert created


def end_now(tmp_path: Path, value: str) -> None:
    """Move the end of `value`'s active decision into the past, in the collector's database: the
    collector's own expiry (timer and pulls) then ends it as if its time had run out."""
    past = int((datetime.now(UTC) - timedelta(seconds=1)).timestamp() * 1_000_000)
    with sqlite3.connect(tmp_path / "collector.db") as connection:
        moved = connection.execute(
            "UPDATE decisions SET until = ? WHERE value = ? AND state = 'active'", (past, value)
        ).rowcount
    assert moved == 1, f"no active decision on {value}"


def hits(collector: CollectorProcess, *addresses: str, count: int = 5) -> None:
    """An agent's batch: `count` hits of each address on sshd's log, seen just now."""
    now = format_time(datetime.now(UTC))
    records = [
        {"ip": ip, "count": count, "first_seen": now, "last_seen": now, "source": "/var/log/auth.log"}
        for ip in addresses
    ]
    batch = {"agent": "test-agent", "batch_id": uuid.uuid4().hex, "sent_at": now, "records": records}
    response = collector.post_batch(batch)
    assert response.status_code == 200, response.text


def start_collector(tmp_path: Path, request: pytest.FixtureRequest) -> CollectorProcess:
    workdir = tmp_path / "collector"
    workdir.mkdir(exist_ok=True)
    config = workdir / "collector.toml"
    config.write_text("[collector]\n" + RULES)
    collector = CollectorProcess(workdir, f"sqlite://{tmp_path}/collector.db", ["-c", str(config)])
    request.addfinalizer(collector.stop)
    collector.start()
    return collector


def test_the_custom_bouncer_adds_expires_survives_a_restart_and_gets_ranges(
    tmp_path: Path, db: Storage, request: pytest.FixtureRequest
) -> None:
    require("crowdsec-custom-bouncer")
    collector = start_collector(tmp_path, request)
    bouncer = CustomBouncer(tmp_path / "custom", collector.url, create_bouncer_key(db, "custom-1"))
    request.addfinalizer(bouncer.stop)
    bouncer.start()

    def calls(action: str, value: str) -> list[tuple[str, str, int, dict[str, object]]]:
        return [call for call in bouncer.events() if call[0] == action and call[1] == value]

    hits(collector, "198.51.100.7", count=4)
    hits(collector, "198.51.100.7", count=1)  # the fifth hit crosses the rule
    hits(collector, "203.0.113.5", "203.0.113.6", "203.0.113.7")  # three of one /24
    [added] = wait_for(lambda: calls("add", "198.51.100.7"), "the address added", log=bouncer.log)
    assert added[3]["scope"] == "Ip" and added[3]["scenario"] == "sshd-bruteforce" and 3500 < added[2] <= 3600
    assert added[3]["origin"] == "remote-uploader"
    [ranged] = wait_for(lambda: calls("add", "203.0.113.0/24"), "the /24 added", log=bouncer.log)
    assert ranged[3]["scope"] == "Range" and ranged[3]["scenario"] == "sshd-subnet"
    assert 3500 < ranged[2] <= 3600  # whole seconds left, as the script gets them

    end_now(tmp_path, "198.51.100.7")
    wait_for(lambda: calls("del", "198.51.100.7"), "the expired address deleted", log=bouncer.log)

    collector.stop()
    decide(db, "198.51.100.8", 3600)  # made by hand while the collector is down
    collector.start()  # same database, same port: the bouncer never restarts
    wait_for(lambda: calls("add", "198.51.100.8"), "a decision made across the restart", log=bouncer.log)
    hits(collector, "198.51.100.9", "203.0.113.8")  # .8 crosses the address rule inside the banned /24
    wait_for(lambda: calls("add", "198.51.100.9"), "a rule crossed after the restart", log=bouncer.log)
    assert bouncer.alive(), bouncer.log()
    # The addresses of the /24 crossed the address rule too, but the range covers them: the
    # bouncer never got a redundant Ip decision for any of them.
    assert not [call for call in bouncer.events() if call[1].startswith("203.0.113.") and call[1] != "203.0.113.0/24"]
    # The key's delta survived the restart: nothing it had was sent again.
    assert len(calls("add", "203.0.113.0/24")) == 1 and len(calls("add", "198.51.100.7")) == 1
    assert (db.list_bouncers()[0].user_agent or "").startswith("crowdsec-custom-bouncer/")


def test_the_firewall_bouncer_programs_nftables_in_a_namespace(
    tmp_path: Path, db: Storage, request: pytest.FixtureRequest
) -> None:
    require("crowdsec-firewall-bouncer")
    require("nft")
    name = f"ru-cs-{uuid.uuid4().hex[:8]}"
    with netns(name), entered(name):
        collector = start_collector(tmp_path, request)
        bouncer = FirewallBouncer(tmp_path / "firewall", collector.url, create_bouncer_key(db, "fw-1"))
        try:
            bouncer.start()
            hits(collector, "198.51.100.7", "2001:db8::5")
            hits(collector, "203.0.113.5", "203.0.113.6", "203.0.113.7")
            wait_for(
                lambda: {"198.51.100.7", "2001:db8::5"} <= bouncer.elements(),
                "the addresses in nftables",
                log=lambda: bouncer.log() + bouncer.ruleset(),
            )
            ruleset = bouncer.ruleset()
            assert "table ip crowdsec" in ruleset and "ip saddr @crowdsec-blacklists" in ruleset and "drop" in ruleset
            # The range reached the bouncer as a range ...
            wait_for(lambda: "Adding '203.0.113.0/24'" in bouncer.log(), "the /24 received", log=bouncer.log)
            # ... and Debian 12's bouncer (0.0.25) stores it as its first address: its nftables
            # sets have no interval flag. Newer releases store 203.0.113.0/24 itself.
            assert bouncer.elements() & {"203.0.113.0/24", "203.0.113.0"}

            # The ban ends (its end moved into the past): the stream's `deleted` removes the element.
            end_now(tmp_path, "198.51.100.7")
            wait_for(
                lambda: "198.51.100.7" not in bouncer.elements(),
                "the expired address gone",
                log=lambda: bouncer.log() + bouncer.ruleset(),
            )
            wait_for(lambda: "deleted '198.51.100.7'" in bouncer.log(), "the expiry streamed", log=bouncer.log)
            decide(db, "2001:db8:1::5", 3600)  # by hand, for an hour ...
            wait_for(
                lambda: "2001:db8:1::5" in bouncer.elements(),
                "the decision made by hand",
                log=lambda: bouncer.log() + bouncer.ruleset(),
            )
            db.delete_decisions(datetime.now(UTC), value="2001:db8:1::5")  # ... and deleted: only the stream removes it
            wait_for(
                lambda: "2001:db8:1::5" not in bouncer.elements(),
                "the deleted address gone",
                log=lambda: bouncer.log() + bouncer.ruleset(),
            )

            collector.stop()
            decide(db, "198.51.100.8", 3600)
            collector.start()
            wait_for(
                lambda: "198.51.100.8" in bouncer.elements(),
                "a decision made across the restart",
                log=lambda: bouncer.log() + bouncer.ruleset(),
            )
            assert bouncer.alive(), bouncer.log()
            assert "2001:db8:1::5" not in bouncer.elements()
            # Go's HTTP client asked for gzip by itself, and every stream answer was gzipped.
            pulls = [line for line in collector.log().splitlines() if "path=/v1/decisions/stream" in line]
            assert pulls and all("encoding=gzip" in line for line in pulls), pulls[:3]
        finally:
            bouncer.stop()
            collector.stop()
