"""Debian's own CrowdSec bouncers, unchanged, against a real collector process.

- crowdsec-custom-bouncer runs a script that records each add and delete;
- crowdsec-firewall-bouncer programs nftables inside a network namespace made for the test
  (the collector runs there too: the bouncer reaches it on that namespace's 127.0.0.1), and
  `nft list ruleset` there shows what it did.

Both pull every second. Each test: a decision is added within seconds; a short one (3 s)
expires and is deleted; the collector is restarted on the same database and port, and the
bouncer carries on from where it was (a decision made meanwhile arrives, nothing is sent
twice); a /24 decision arrives as a range. Skipped, saying why, where the packages are not
installed or a namespace cannot be made.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from remote_uploader.collector.auth import create_bouncer_key
from remote_uploader.collector.storage import open_storage
from remote_uploader.collector.storage.base import Storage
from remote_uploader.collector.storage.model import NewDecision
from tests.helpers.bouncers import CustomBouncer, FirewallBouncer, entered, netns, require, wait_for
from tests.helpers.collector_fixtures import CollectorProcess

SHORT = 3.0  # seconds: a decision that expires while the test watches


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


def start_collector(tmp_path: Path, request: pytest.FixtureRequest) -> CollectorProcess:
    workdir = tmp_path / "collector"
    workdir.mkdir(exist_ok=True)
    collector = CollectorProcess(workdir, f"sqlite://{tmp_path}/collector.db")
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

    decide(db, "198.51.100.7", SHORT, scenario="sshd-bruteforce")
    decide(db, "203.0.113.0/24", 3600, scenario="sshd-range")
    [added] = wait_for(lambda: calls("add", "198.51.100.7"), "the address added", log=bouncer.log)
    assert added[3]["scope"] == "Ip" and added[3]["scenario"] == "sshd-bruteforce" and added[2] <= SHORT
    [ranged] = wait_for(lambda: calls("add", "203.0.113.0/24"), "the /24 added", log=bouncer.log)
    assert ranged[3]["scope"] == "Range" and 3500 < ranged[2] <= 3600  # whole seconds, as the script gets them

    wait_for(lambda: calls("del", "198.51.100.7"), "the expired address deleted", log=bouncer.log)

    collector.stop()
    decide(db, "198.51.100.8", 3600)  # made while the collector is down
    collector.start()  # same database, same port: the bouncer never restarts
    wait_for(lambda: calls("add", "198.51.100.8"), "a decision made across the restart", log=bouncer.log)
    assert bouncer.alive(), bouncer.log()
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
            decide(db, "198.51.100.7", SHORT)
            decide(db, "2001:db8::5", 3600)
            decide(db, "203.0.113.0/24", 3600, scenario="sshd-range")
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

            # nftables drops the element at its timeout by itself; the stream's `deleted` comes too.
            wait_for(
                lambda: "198.51.100.7" not in bouncer.elements(),
                "the expired address gone",
                log=lambda: bouncer.log() + bouncer.ruleset(),
            )
            wait_for(lambda: "deleted '198.51.100.7'" in bouncer.log(), "the expiry streamed", log=bouncer.log)
            db.delete_decisions(datetime.now(UTC), value="2001:db8::5")  # by hand: only the stream removes it
            wait_for(
                lambda: "2001:db8::5" not in bouncer.elements(),
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
            assert "2001:db8::5" not in bouncer.elements()
        finally:
            bouncer.stop()
            collector.stop()
