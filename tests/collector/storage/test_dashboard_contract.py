"""The dashboard's storage reads (storage/sql_dashboard.py and the token lookup), on SQLite and
PostgreSQL alike: the same batches must give the same answers."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from remote_uploader.collector.batch import parse_batch
from remote_uploader.collector.storage.base import Storage, ValidBatch
from remote_uploader.collector.storage.model import NewDecision
from remote_uploader.protocol import format_time
from tests.helpers.batches import as_worker_hands_it

NOW = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=10)


def _parsed(agent: str, batch_id: str, records: list[tuple[str, int, int, str]]) -> ValidBatch:
    """records: (ip, count, minutes before NOW, source)."""
    wire = []
    for ip, count, ago, source in records:
        stamp = format_time(NOW - timedelta(minutes=ago) + timedelta(seconds=5))
        wire.append({"ip": ip, "count": count, "first_seen": stamp, "last_seen": stamp, "source": source})
    body = {"agent": agent, "batch_id": batch_id, "sent_at": format_time(NOW), "records": wire}
    return parse_batch(json.dumps(body).encode(), agent)


def _store(storage: Storage, agent: str, batch_id: str, records: list[tuple[str, int, int, str]]) -> None:
    storage.store_batch(_parsed(agent, batch_id, records), NOW)


def test_minute_series_counts_occurrences_and_distinct_addresses_per_bucket(storage: Storage) -> None:
    _store(storage, "web-1", "b1", [("203.0.113.7", 5, 0, "/a.log"), ("203.0.113.8", 1, 0, "/b.log"),
                                    ("203.0.113.7", 2, 3, "/a.log")])
    _store(storage, "web-2", "b2", [("203.0.113.7", 4, 0, "/a.log"), ("2001:db8::1", 1, 60, "/a.log")])
    points = storage.minute_series(NOW - timedelta(minutes=30))
    assert [(p.start, p.seconds, p.occurrences, p.addresses) for p in points] == [
        (NOW - timedelta(minutes=3), 60, 2, 1),
        (NOW, 60, 10, 2),  # 203.0.113.7 from two agents is one address
    ]
    assert storage.minute_series(NOW - timedelta(minutes=30), NOW - timedelta(minutes=1))[-1].occurrences == 2


@pytest.mark.parametrize("form", ["tuples", "encoded"])
def test_an_address_from_several_sources_of_one_batch_is_one_address_of_its_minute(storage: Storage,
                                                                                    form: str) -> None:
    """The distinct count of a minute: one address under three sources of one batch is one address,
    and two addresses under one source are two; an address the minute holds already
    is not new, from whichever source or agent it comes again. As parsed in the server's process
    (tuples) and as a parsing worker hands it over (the backend's bulk form, with its buckets)."""
    def store(agent: str, batch_id: str, records: list[tuple[str, int, int, str]]) -> None:
        parsed = _parsed(agent, batch_id, records)
        if form == "encoded":
            assert storage.bulk_form is not None
            parsed = as_worker_hands_it(parsed, storage.bulk_form)
        assert storage.store_batch(parsed, NOW) is True

    store("web-1", "b1", [("203.0.113.7", 5, 0, "/a.log"), ("203.0.113.7", 2, 0, "/b.log"),
                          ("203.0.113.7", 1, 0, "/c.log"), ("203.0.113.8", 1, 1, "/a.log"),
                          ("203.0.113.9", 1, 1, "/a.log")])
    store("web-1", "b2", [("203.0.113.8", 3, 1, "/b.log"), ("203.0.113.8", 1, 1, "/c.log"),
                          ("203.0.113.10", 1, 1, "/c.log")])
    store("web-2", "b3", [("203.0.113.7", 4, 0, "/d.log"), ("203.0.113.9", 1, 1, "/d.log")])
    points = storage.minute_series(NOW - timedelta(minutes=30))
    assert [(p.start, p.occurrences, p.addresses) for p in points] == [
        (NOW - timedelta(minutes=1), 8, 3),  # .8 and .9, then .8 again (not new) and .10; .9 again
        (NOW, 12, 1),  # .7 from three sources, then from a fourth source of another agent
    ]


def test_ip_sources_sums_one_address_by_source(storage: Storage) -> None:
    _store(storage, "web-1", "b1", [("203.0.113.7", 5, 0, "/a.log"), ("203.0.113.7", 3, 2, "/b.log"),
                                    ("203.0.113.9", 9, 0, "/c.log")])
    _store(storage, "web-2", "b2", [("203.0.113.7", 4, 90, "/b.log")])
    assert storage.ip_sources("203.0.113.7", NOW - timedelta(hours=2)) == [("/b.log", 7), ("/a.log", 5)]
    assert storage.ip_sources("203.0.113.7", NOW - timedelta(minutes=30)) == [("/a.log", 5), ("/b.log", 3)]
    assert storage.ip_sources("198.51.100.1", NOW - timedelta(hours=2)) == []
    assert storage.agent_sources(NOW - timedelta(hours=2)) == [
        ("web-1", "/c.log", 9), ("web-1", "/a.log", 5), ("web-1", "/b.log", 3), ("web-2", "/b.log", 4)]
    assert storage.agent_sources(NOW - timedelta(minutes=30)) == [
        ("web-1", "/c.log", 9), ("web-1", "/a.log", 5), ("web-1", "/b.log", 3)]


def test_active_and_recently_ended_decisions(storage: Storage) -> None:
    now = datetime.now(UTC)
    made = storage.add_decisions(
        [NewDecision(f"203.0.113.{i}", "Ip", now + timedelta(hours=1), scenario="r1" if i % 2 else "r2")
         for i in range(1, 6)],
        now,
    )
    assert storage.count_active_decisions(now) == 5
    assert storage.active_by_rule(now) == [("r1", 3), ("r2", 2)]
    storage.delete_decisions(now, value="203.0.113.1")
    storage.delete_decisions(now, value="203.0.113.2")
    storage.delete_decisions(now, value="203.0.113.3")
    assert storage.count_active_decisions(now) == 2
    assert storage.count_active_decisions(now + timedelta(hours=2)) == 0  # past `until`, not yet expired
    ended = storage.recent_ended_decisions(2)
    assert [d.value for d in ended] == ["203.0.113.3", "203.0.113.2"]  # newest first, at most 2
    assert [d.value for d in storage.recent_ended_decisions(10, scenario="r1")] == ["203.0.113.3", "203.0.113.1"]
    assert len(made) == 5


def test_ingest_minutes_and_tokens_by_name(storage: Storage) -> None:
    _store(storage, "web-1", "b1", [("203.0.113.7", 5, 0, "/a.log")])
    _store(storage, "web-1", "b2", [("203.0.113.8", 1, 0, "/a.log"), ("203.0.113.9", 1, 0, "/a.log")])
    assert storage.ingest_minutes(NOW - timedelta(minutes=1)) == [(NOW, 2, 3)]
    storage.add_token("viewer", "ab" * 32, "read")
    assert storage.token_by_name("viewer") == ("read", "ab" * 32)
    assert storage.token_by_name("nobody") is None
