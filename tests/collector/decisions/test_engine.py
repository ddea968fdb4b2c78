"""Rules over time windows, on SQLite and PostgreSQL alike (the `storage` fixture)."""

from __future__ import annotations

import ipaddress
from datetime import timedelta

import pytest

from remote_uploader.collector.decisions.engine import DecisionEngine, DecisionRefused, add_manual, delete_value
from remote_uploader.collector.decisions.rules import Escalation, Rule
from remote_uploader.collector.storage.base import Storage
from remote_uploader.collector.storage.model import DecisionQuery
from tests.collector.storage.test_windows_contract import hits
from tests.helpers.batches import at, record

MINUTE = 60
TEN_MINUTES = timedelta(minutes=10)


def rule(**changes: object) -> Rule:
    fields: dict[str, object] = {"name": "ssh", "min_count": 5, "window": TEN_MINUTES, "duration": timedelta(hours=4)}
    fields.update(changes)
    return Rule(**fields)  # type: ignore[arg-type]


def send(storage: Storage, batch_id: str, *records: dict[str, object], agent: str = "web-1") -> None:
    assert storage.store_batch(hits(agent, batch_id, *records), at(0))


def active(storage: Storage) -> list[tuple[str, str]]:
    return [(d.value, d.scenario) for d in storage.list_decisions(DecisionQuery())]


def test_n_minus_one_hits_in_the_window_and_one_just_outside_decide_nothing(storage: Storage) -> None:
    engine = DecisionEngine(storage, [rule()])
    now = at(20 * MINUTE + 30)  # the window [10m30s, 20m30s] starts in the bucket [10m, 11m)
    send(storage, "1", record("198.51.100.7", 1, 9 * MINUTE + 59))  # the bucket before: outside
    send(storage, "2", record("198.51.100.7", 4, 15 * MINUTE))
    assert engine.evaluate(["198.51.100.7"], now) == []
    assert active(storage) == []


def test_n_hits_inside_the_window_decide(storage: Storage) -> None:
    engine = DecisionEngine(storage, [rule()])
    now = at(20 * MINUTE + 30)
    send(storage, "1", record("198.51.100.7", 1, 10 * MINUTE))  # first bucket of the window
    send(storage, "2", record("198.51.100.7", 4, 20 * MINUTE))
    (decision,) = engine.evaluate(["198.51.100.7"], now)
    assert (decision.value, decision.scope, decision.scenario, decision.origin) == (
        "198.51.100.7",
        "Ip",
        "ssh",
        "remote-uploader",
    )
    assert decision.until == now + timedelta(hours=4)
    detail = storage.get_decision(decision.id)
    assert detail is not None
    assert detail.details["rule"] == "ssh" and detail.details["count"] == 5 and detail.details["window"] == "10m"
    assert [(e.ip, e.count, e.first_bucket, e.last_bucket) for e in detail.evidence] == [
        ("198.51.100.7", 5, at(10 * MINUTE), at(20 * MINUTE))
    ]
    # Evaluated again: the active decision stands, nothing new.
    assert engine.evaluate(["198.51.100.7"], now + timedelta(seconds=5)) == []


def test_only_the_rules_sources_and_agents_count(storage: Storage) -> None:
    engine = DecisionEngine(storage, [rule(sources=("*/auth.log",), agents=("web-1",))])
    send(storage, "1", record("198.51.100.7", 4, source="/var/log/auth.log"), record("198.51.100.7", 9, source="/x"))
    send(storage, "2", record("198.51.100.7", 9, source="/var/log/auth.log"), agent="web-2")
    assert engine.evaluate(["198.51.100.7"], at(60)) == []
    send(storage, "3", record("198.51.100.7", 1, source="/var/log/auth.log"))
    assert [d.value for d in engine.evaluate(["198.51.100.7"], at(60))] == ["198.51.100.7"]


def test_allowlisted_addresses_are_never_decided(storage: Storage) -> None:
    engine = DecisionEngine(storage, [rule()], [ipaddress.ip_network("198.51.100.0/28")])
    send(storage, "1", record("198.51.100.7", 50), record("198.51.100.77", 50))
    assert [d.value for d in engine.evaluate(["198.51.100.7", "198.51.100.77"], at(60))] == ["198.51.100.77"]


def test_a_range_decision_has_the_allowlist_cut_out(storage: Storage) -> None:
    engine = DecisionEngine(storage, [rule(prefix_v4=24, min_addresses=2)], [ipaddress.ip_network("203.0.113.128/25")])
    send(storage, "1", record("203.0.113.1", 5), record("203.0.113.2", 5), record("203.0.113.200", 5))
    made = engine.evaluate(["203.0.113.1"], at(60))
    assert [(d.value, d.scope) for d in made] == [("203.0.113.0/25", "Range")]


def test_a_range_is_decided_when_enough_of_its_addresses_crossed(storage: Storage) -> None:
    engine = DecisionEngine(storage, [rule(name="scan-24", prefix_v4=24, prefix_v6=64, min_addresses=3)])
    send(storage, "1", record("203.0.113.1", 5), record("203.0.113.2", 9), record("203.0.113.3", 4))
    assert engine.evaluate(["203.0.113.1", "203.0.113.2", "203.0.113.3"], at(60)) == []  # .3 is under 5
    send(storage, "2", record("203.0.113.3", 1), record("2001:db8:1:2::1", 5), record("2001:db8:1:2::2", 5))
    made = engine.evaluate(["203.0.113.3", "2001:db8:1:2::1"], at(60))
    assert [(d.value, d.scope) for d in made] == [("203.0.113.0/24", "Range")]  # the /64 has two
    detail = storage.get_decision(made[0].id)
    assert detail is not None
    assert sorted((e.ip, e.count) for e in detail.evidence) == [
        ("203.0.113.1", 5),
        ("203.0.113.2", 9),
        ("203.0.113.3", 5),
    ]
    assert detail.details["addresses"] == 3 and detail.details["prefix_v4"] == 24
    send(storage, "3", record("2001:db8:1:2::3", 5))
    made = engine.evaluate(["2001:db8:1:2::3"], at(60))
    assert [(d.value, d.scope) for d in made] == [("2001:db8:1:2::/64", "Range")]


def test_repeat_offenders_get_longer_decisions(storage: Storage) -> None:
    escalation = Escalation(factor=3, max_duration=timedelta(hours=10), remember=timedelta(days=7))
    engine = DecisionEngine(storage, [rule(duration=timedelta(hours=1), escalation=escalation)])
    durations = []
    now = at(0)
    for round_ in range(4):
        send(storage, f"r{round_}", record("198.51.100.7", 5, (now - at(0)).total_seconds()))
        (decision,) = engine.evaluate(["198.51.100.7"], now)
        durations.append(decision.until - decision.created_at)
        now = decision.until + timedelta(minutes=1)
        assert storage.expire_decisions(now)
    assert durations == [timedelta(hours=1), timedelta(hours=3), timedelta(hours=9), timedelta(hours=10)]


def test_old_hits_do_not_bring_back_a_deleted_decision(storage: Storage) -> None:
    engine = DecisionEngine(storage, [rule()])
    send(storage, "1", record("198.51.100.7", 5, 0))
    assert engine.evaluate(["198.51.100.7"], at(60))
    assert delete_value(storage, "198.51.100.7", at(120))
    send(storage, "2", record("198.51.100.7", 1, 180))
    assert engine.evaluate(["198.51.100.7"], at(181)) == []  # 1 hit since the deletion
    send(storage, "3", record("198.51.100.7", 4, 240))
    assert [d.value for d in engine.evaluate(["198.51.100.7"], at(241))] == ["198.51.100.7"]


def test_a_round_evaluates_what_was_submitted_and_expires(storage: Storage) -> None:
    clock = [at(60)]
    engine = DecisionEngine(storage, [rule(duration=timedelta(minutes=5))], clock=lambda: clock[0])
    send(storage, "1", record("198.51.100.7", 5))
    engine.submit(["198.51.100.7"])
    assert [d.value for d in engine.run_once()] == ["198.51.100.7"]
    clock[0] = at(60 + 300)
    assert engine.run_once() == []
    assert active(storage) == []
    (ended,) = storage.list_decisions(DecisionQuery(active=False))
    assert ended.state == "expired"


def test_decisions_by_hand_replace_and_respect_the_allowlist(storage: Storage) -> None:
    allow = [ipaddress.ip_network("192.0.2.0/25")]
    (made,) = add_manual(storage, allow, "2001:DB8::1", timedelta(hours=1), "seen in a report", at(0))
    assert (made.value, made.origin, made.scenario, made.reason) == (
        "2001:db8::1",
        "cscli",
        "manual",
        "seen in a report",
    )
    (again,) = add_manual(storage, allow, "2001:db8::1", timedelta(hours=2), "", at(10))
    assert again.id != made.id and again.until == at(10) + timedelta(hours=2)
    assert [d.value for d in add_manual(storage, allow, "192.0.2.0/24", timedelta(hours=1), "", at(0))] == [
        "192.0.2.128/25"
    ]
    with pytest.raises(DecisionRefused, match="allowlist"):
        add_manual(storage, allow, "192.0.2.5", timedelta(hours=1), "", at(0))
    with pytest.raises(DecisionRefused, match="not an IP address"):
        add_manual(storage, allow, "192.0.2.0/33", timedelta(hours=1), "", at(0))
    assert [d.value for d in delete_value(storage, "2001:db8:0::1", at(20))] == ["2001:db8::1"]


def test_an_address_inside_an_active_range_decision_gets_no_decision_of_its_own(storage: Storage) -> None:
    rules = [rule(name="ssh"), rule(name="ssh-24", prefix_v4=24, min_addresses=2, duration=timedelta(minutes=30))]
    engine = DecisionEngine(storage, rules)
    send(storage, "1", record("203.0.113.1", 5), record("203.0.113.2", 5))
    made = engine.evaluate(["203.0.113.1", "203.0.113.2"], at(60))
    # The range and its addresses cross in the same round: the range rule goes first, and the
    # addresses it covers get nothing of their own; nor does one crossing later.
    assert [(d.value, d.scope) for d in made] == [("203.0.113.0/24", "Range")]
    send(storage, "2", record("203.0.113.3", 5, 70))
    assert engine.evaluate(["203.0.113.3"], at(80)) == []
    assert ("203.0.113.3", "ssh") not in active(storage)
    # A range made by hand covers as well, for both families.
    add_manual(storage, [], "2001:db8:5::/48", timedelta(hours=1), "", at(80))
    send(storage, "3", record("2001:db8:5::1", 9, 80))
    assert engine.evaluate(["2001:db8:5::1"], at(90)) == []


def test_when_a_range_ends_the_addresses_still_over_a_rule_get_their_own_decisions(storage: Storage) -> None:
    clock = [at(60)]
    engine = DecisionEngine(storage, [rule(name="ssh")], clock=lambda: clock[0])
    add_manual(storage, [], "203.0.113.0/24", timedelta(minutes=2), "", at(0))
    add_manual(storage, [], "198.51.100.0/24", timedelta(hours=1), "", at(0))
    send(storage, "1", record("203.0.113.7", 6, 30), record("203.0.113.8", 2, 30), record("198.51.100.7", 6, 30))
    engine.submit(["203.0.113.7", "203.0.113.8", "198.51.100.7"])
    assert engine.run_once() == []  # both ranges cover them
    # Expired: .7 still has 6 hits in the last 10 minutes, .8 only 2.
    clock[0] = at(120)
    assert [(d.value, d.scenario) for d in engine.run_once()] == [("203.0.113.7", "ssh")]
    # Deleted elsewhere (the CLI, another collector): found by the change sequence, no new hit needed.
    delete_value(storage, "198.51.100.0/24", at(125))
    clock[0] = at(126)
    assert [d.value for d in engine.run_once()] == ["198.51.100.7"]
    assert engine.run_once() == []
