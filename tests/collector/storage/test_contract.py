"""The Storage contract: every test runs against SQLite and against a real PostgreSQL."""

from __future__ import annotations

import dataclasses
import ipaddress
import threading
from datetime import timedelta

import pytest

from remote_uploader.collector.storage import bulk
from remote_uploader.collector.storage.base import IpQuery, Storage, ValidBatch, to_micros
from remote_uploader.collector.storage.postgres import PostgresStorage
from remote_uploader.collector.storage.sqlite import SqliteStorage
from remote_uploader.errors import SchemaError, StorageUnavailable, TokenError
from tests.helpers.batches import T0, as_worker_hands_it, at, batch, delta


def totals(storage: Storage) -> dict[str, int]:
    return {row.ip: row.count for row in storage.list_ips(IpQuery(limit=10000))}


def test_migrate_is_idempotent_and_reports_the_version(storage: Storage) -> None:
    assert storage.migrate() == storage.migrate() >= 1


def test_a_database_from_a_newer_collector_is_refused(storage: Storage) -> None:
    with storage._write() as cur:  # type: ignore[attr-defined]
        cur.execute("UPDATE schema_version SET version = 999")
    with pytest.raises(SchemaError, match="999"):
        storage.migrate()


def test_a_new_batch_is_counted_and_a_replay_is_not(storage: Storage) -> None:
    first = batch("web-1", "b1", delta("203.0.113.7", 3), delta("2001:db8::1", 2))
    assert storage.store_batch(first, at(100)) is True
    assert storage.store_batch(first, at(200)) is False
    assert totals(storage) == {"203.0.113.7": 3, "2001:db8::1": 2}
    (agent,) = storage.list_agents()
    assert (agent.name, agent.batches, agent.duplicates, agent.records) == ("web-1", 1, 1, 2)
    assert agent.first_seen == at(100) and agent.last_seen == at(200)
    assert storage.count_batches() == 1


def test_the_same_batch_id_from_two_agents_is_two_batches(storage: Storage) -> None:
    storage.store_batch(batch("web-1", "same", delta("198.51.100.1", 1)), at(0))
    storage.store_batch(batch("web-2", "same", delta("198.51.100.1", 1)), at(0))
    assert totals(storage) == {"198.51.100.1": 2}


def test_counts_add_up_and_times_widen_across_batches(storage: Storage) -> None:
    storage.store_batch(batch("a", "1", delta("192.0.2.1", 5, first=10, last=20)), at(0))
    storage.store_batch(batch("a", "2", delta("192.0.2.1", 7, first=5, last=15)), at(1))
    storage.store_batch(batch("b", "3", delta("192.0.2.1", 1, first=30, last=40)), at(2))
    detail = storage.get_ip("192.0.2.1")
    assert detail is not None
    assert (detail.summary.count, detail.summary.agents) == (13, 2)
    assert (detail.summary.first_seen, detail.summary.last_seen) == (at(5), at(40))
    assert [(row.agent, row.count, row.first_seen, row.last_seen) for row in detail.by_agent] == [
        ("a", 12, at(5), at(20)),
        ("b", 1, at(30), at(40)),
    ]
    assert storage.get_ip("192.0.2.2") is None


def test_an_empty_batch_updates_the_agent_only(storage: Storage) -> None:
    assert storage.store_batch(batch("quiet", "0"), at(0)) is True
    assert totals(storage) == {}
    assert [a.name for a in storage.list_agents()] == ["quiet"]


def test_agent_stats_follow_the_latest_batch(storage: Storage) -> None:
    storage.store_batch(batch("a", "1", delta("192.0.2.1", 1), records=4), at(0))
    storage.store_batch(batch("a", "2", delta("192.0.2.2", 1), records=6), at(5))
    (stats,) = storage.list_agents()
    assert (stats.batches, stats.records, stats.last_batch_id, stats.last_batch_sent_at) == (2, 10, "2", T0)


def _fill(storage: Storage) -> None:
    storage.store_batch(
        batch(
            "a",
            "1",
            delta("192.0.2.1", 5, last=100),
            delta("192.0.2.2", 5, last=50),
            delta("192.0.2.3", 9, last=10),
            delta("10.0.0.1", 1, last=300),
            delta("2001:db8::1", 5, last=200),
        ),
        at(0),
    )
    storage.store_batch(batch("b", "1", delta("192.0.2.3", 1, last=10), delta("2001:db8::2", 2, last=5)), at(0))


def test_list_ips_sorts_by_count_then_address(storage: Storage) -> None:
    _fill(storage)
    rows = storage.list_ips(IpQuery())
    assert [(r.ip, r.count) for r in rows] == [
        ("192.0.2.3", 10),
        ("192.0.2.1", 5),
        ("192.0.2.2", 5),
        ("2001:db8::1", 5),
        ("2001:db8::2", 2),
        ("10.0.0.1", 1),
    ]
    assert rows[0].agents == 2 and rows[1].agents == 1


def test_list_ips_sorts_by_last_seen(storage: Storage) -> None:
    _fill(storage)
    rows = storage.list_ips(IpQuery(sort="last_seen"))
    assert [r.ip for r in rows] == ["10.0.0.1", "2001:db8::1", "192.0.2.1", "192.0.2.2", "192.0.2.3", "2001:db8::2"]


def test_list_ips_filters(storage: Storage) -> None:
    _fill(storage)

    def ips(**filters: object) -> list[str]:
        return sorted(r.ip for r in storage.list_ips(IpQuery(**filters)))  # type: ignore[arg-type]

    assert ips(min_count=5) == ["192.0.2.1", "192.0.2.2", "192.0.2.3", "2001:db8::1"]
    assert ips(since=at(100)) == ["10.0.0.1", "192.0.2.1", "2001:db8::1"]
    assert ips(network=ipaddress.ip_network("192.0.2.0/30")) == ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
    assert ips(network=ipaddress.ip_network("2001:db8::/64")) == ["2001:db8::1", "2001:db8::2"]
    assert ips(network=ipaddress.ip_network("0.0.0.0/0")) == ["10.0.0.1", "192.0.2.1", "192.0.2.2", "192.0.2.3"]
    assert ips(network=ipaddress.ip_network("::/0")) == ["2001:db8::1", "2001:db8::2"]


def test_list_ips_for_one_agent_shows_that_agents_numbers(storage: Storage) -> None:
    _fill(storage)
    rows = storage.list_ips(IpQuery(agent="b"))
    assert [(r.ip, r.count, r.agents) for r in rows] == [("2001:db8::2", 2, 1), ("192.0.2.3", 1, 2)]
    assert storage.list_ips(IpQuery(agent="b", min_count=2))[0].ip == "2001:db8::2"
    assert storage.list_ips(IpQuery(agent="nobody")) == []


@pytest.mark.parametrize("sort", ["count", "last_seen"])
def test_keyset_pages_cover_every_address_once(storage: Storage, sort: str) -> None:
    deltas = [delta(f"198.51.100.{i}", 1 + i % 3, last=i % 4) for i in range(1, 60)]
    storage.store_batch(batch("a", "1", *deltas), at(0))
    seen: list[str] = []
    after = None
    while True:
        page = storage.list_ips(IpQuery(sort=sort, limit=7, after=after))  # type: ignore[arg-type]
        seen += [r.ip for r in page]
        if len(page) < 7:
            break
        last = page[-1]
        after = (last.count if sort == "count" else to_micros(last.last_seen), last.ip)
    assert sorted(seen) == sorted(d.ip for d in deltas)
    assert len(seen) == len(set(seen))


def test_blocklist_rows_filter_and_come_in_numeric_order(storage: Storage) -> None:
    _fill(storage)
    rows = storage.blocklist_rows(min_count=2, since=None, family=None)
    assert [r.ip for r in rows] == ["192.0.2.1", "192.0.2.2", "192.0.2.3", "2001:db8::1", "2001:db8::2"]
    assert [r.ip for r in storage.blocklist_rows(1, None, 6)] == ["2001:db8::1", "2001:db8::2"]
    assert [r.ip for r in storage.blocklist_rows(1, at(100), 4)] == ["10.0.0.1", "192.0.2.1"]
    assert rows[0].key == bytes([192, 0, 2, 1]) and rows[0].count == 5


def test_numeric_order_is_not_text_order(storage: Storage) -> None:
    storage.store_batch(batch("a", "1", delta("10.0.0.10", 1), delta("9.0.0.1", 1), delta("10.0.0.9", 1)), at(0))
    assert [r.ip for r in storage.blocklist_rows(1, None, 4)] == ["9.0.0.1", "10.0.0.9", "10.0.0.10"]


def test_totals_saturate_instead_of_overflowing(storage: Storage) -> None:
    big = 2**62
    for number in range(3):
        storage.store_batch(batch("a", str(number), delta("192.0.2.1", big)), at(0))
    assert totals(storage) == {"192.0.2.1": 2**63 - 1}


def test_tokens_are_stored_listed_found_replaced_and_revoked(storage: Storage) -> None:
    storage.add_token("web-1", "h1", "agent")
    storage.add_token("dash", "h2", "read")
    with pytest.raises(TokenError, match="exists"):
        storage.add_token("web-1", "h3", "agent")
    assert storage.find_token("h1") == ("web-1", "agent", "h1")
    storage.add_token("web-1", "h3", "agent", replace=True)
    assert storage.find_token("h1") is None
    assert [(t.name, t.role) for t in storage.list_tokens()] == [("dash", "read"), ("web-1", "agent")]
    assert storage.revoke_token("web-1") is True
    assert storage.revoke_token("web-1") is False
    assert storage.find_token("h3") is None


def test_pruning_forgets_old_batch_ids_only(storage: Storage) -> None:
    storage.store_batch(batch("a", "old", delta("192.0.2.1", 1)), T0)
    storage.store_batch(batch("a", "new", delta("192.0.2.1", 1)), T0 + timedelta(days=40))
    assert storage.prune_batches(T0 + timedelta(days=10)) == 1
    assert storage.count_batches() == 1
    # The documented consequence of retention: a replay older than it is counted again.
    assert storage.store_batch(batch("a", "old", delta("192.0.2.1", 1)), T0 + timedelta(days=41)) is True
    assert storage.store_batch(batch("a", "new", delta("192.0.2.1", 1)), T0 + timedelta(days=41)) is False


def test_pruning_many_batch_ids_works_in_chunks(storage: Storage) -> None:
    for number in range(12):
        storage.store_batch(batch("a", f"b{number}"), T0)
    assert storage.prune_batches(T0 + timedelta(seconds=1)) == 12
    assert storage.count_batches() == 0


def test_racing_replays_of_one_batch_count_it_once(storage: Storage) -> None:
    work = batch("a", "race", *[delta(f"198.51.100.{i}", 2) for i in range(1, 200)])
    results: list[bool] = []
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def send() -> None:
        start.wait()
        try:
            results.append(storage.store_batch(work, at(0)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=send) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(results) == [False] * 5 + [True]
    assert set(totals(storage).values()) == {2}


def test_concurrent_batches_with_shared_addresses_all_count(storage: Storage) -> None:
    addresses = [f"203.0.113.{i}" for i in range(1, 100)]
    errors: list[BaseException] = []

    def send(worker: int) -> None:
        try:
            for number in range(5):
                # Opposite orders on purpose: storage must still take locks in one order.
                chosen = addresses if worker % 2 else list(reversed(addresses))
                storage.store_batch(batch(f"agent-{worker}", str(number), *[delta(ip, 1) for ip in chosen]), at(0))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert totals(storage) == {ip: 20 for ip in addresses}


def test_a_locked_database_fails_fast_instead_of_hanging(storage: Storage, request: pytest.FixtureRequest) -> None:
    release = _hold_write_lock(storage, request)
    try:
        with pytest.raises(StorageUnavailable):
            storage.store_batch(batch("a", "blocked", delta("192.0.2.1", 1)), at(0))
    finally:
        release()
    assert storage.store_batch(batch("a", "blocked", delta("192.0.2.1", 1)), at(0)) is True


def _hold_write_lock(storage: Storage, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Another client takes the write lock, as `token add` or an operator's psql session could."""
    if isinstance(storage, SqliteStorage):
        import sqlite3

        other = sqlite3.connect(storage.path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        return lambda: (other.rollback(), other.close())
    assert isinstance(storage, PostgresStorage)
    import psycopg

    other_pg = psycopg.connect(request.getfixturevalue("pg_url"))
    other_pg.execute("LOCK TABLE batches IN ACCESS EXCLUSIVE MODE")
    return lambda: (other_pg.rollback(), other_pg.close())


def test_ping_succeeds_on_a_working_database_even_while_a_write_holds_its_lock(
        storage: Storage, request: pytest.FixtureRequest) -> None:
    """`ping` is the health check: a long write (an ingest, an operator's session) must not make a
    working database look down, so it neither takes the write lock nor reads a table a write locks."""
    assert storage.ping() is None
    release = _hold_write_lock(storage, request)
    try:
        assert storage.ping() is None
        with pytest.raises(StorageUnavailable):  # the lock is really held: a write gives up meanwhile
            storage.store_batch(batch("a", "while-locked", delta("192.0.2.1", 1)), at(0))
    finally:
        release()


def test_deltas_encoded_beforehand_store_like_plain_ones(storage: Storage) -> None:
    """What a parsing worker hands over (the backend's bulk form) counts exactly as tuples do."""
    assert storage.bulk_form is not None
    first = batch("web-1", "b1", delta("203.0.113.7", 3, 0, 9), delta("2001:db8::1", 2), records=7)
    encoded = as_worker_hands_it(first, storage.bulk_form)
    assert storage.store_batch(encoded, at(1)) is True
    assert storage.store_batch(encoded, at(2)) is False
    assert storage.store_batch(batch("web-1", "b2", delta("203.0.113.7", 1, 20)), at(3)) is True
    detail = storage.get_ip("203.0.113.7")
    assert detail is not None
    assert (detail.summary.count, detail.summary.first_seen, detail.summary.last_seen) == (4, at(0), at(20))
    assert totals(storage) == {"203.0.113.7": 4, "2001:db8::1": 2}
    (agent,) = storage.list_agents()
    assert (agent.batches, agent.duplicates, agent.records) == (2, 1, 8)


def test_deltas_encoded_for_another_backend_are_refused(storage: Storage) -> None:
    other: bulk.BulkForm = "postgres-copy" if storage.bulk_form == "sqlite-image" else "sqlite-image"
    if other == "sqlite-image" and not bulk.HAS_SQLITE_IMAGE:
        pytest.skip("this SQLite cannot serialize databases")
    wrong = batch("web-1", "b1", delta("203.0.113.7", 3))
    with pytest.raises(TypeError):
        storage.store_batch(as_worker_hands_it(wrong, other), at(1))
    assert storage.count_batches() == 0


def test_a_big_batch_is_staged_and_counted_exactly(storage: Storage) -> None:
    deltas = [delta(f"10.{n >> 8}.{n & 255}.1", n % 7 + 1, n % 60) for n in range(5000)]
    assert storage.store_batch(batch("web-1", "big", *deltas), at(0)) is True
    assert storage.store_batch(batch("web-1", "big-2", *deltas[::2]), at(1)) is True
    expected = {d.ip: d.total * (2 if n % 2 == 0 else 1) for n, d in enumerate(deltas)}
    assert totals(storage) == expected


# -- delivery identity: (producer, seq, part) --------------------------------------------------

PRODUCER = "a1" * 16


def identified(seq: int, part: str = "", ip: str = "192.0.2.1", agent: str = "web-1", count: int = 1) -> ValidBatch:
    return dataclasses.replace(batch(agent, f"id-{seq}-{part}", delta(ip, count)), producer=PRODUCER, seq=seq,
                               part=part)


def test_a_replay_is_recognised_after_every_batch_id_was_pruned(storage: Storage) -> None:
    for seq in (1, 2, 3):
        assert storage.store_batch(identified(seq), at(0)) is True
    storage.prune_batches(at(10**9))
    assert [storage.store_batch(identified(seq), at(1)) for seq in (1, 2, 3)] == [False, False, False]
    assert totals(storage) == {"192.0.2.1": 3}


def test_parts_of_a_stored_batch_and_parts_of_stored_parts_are_duplicates(storage: Storage) -> None:
    assert storage.store_batch(identified(1), at(0)) is True
    assert storage.store_batch(identified(1, "0"), at(1)) is False
    assert storage.store_batch(identified(1, "11"), at(1)) is False
    assert storage.store_batch(identified(2, "1"), at(2)) is True
    assert storage.store_batch(identified(2, "10"), at(2)) is False  # a descendant of a stored part
    assert storage.store_batch(identified(2, ""), at(2)) is False  # the whole, after one of its parts
    assert storage.store_batch(identified(2, "0"), at(2)) is True
    assert totals(storage) == {"192.0.2.1": 3}
    assert storage.producer_state(PRODUCER) == (2, 0), "both batches settled: nothing kept above the watermark"


def test_a_producer_keeps_a_watermark_and_only_the_gaps_above_it(storage: Storage) -> None:
    order = [2, 1, 4, 3, 6, 5, *range(8, 200)]  # out of order, and 7 never arrives (a dead letter)
    for seq in order:
        assert storage.store_batch(identified(seq), at(0)) is True
    assert storage.producer_state(PRODUCER) == (6, 1), "one range above the gap at 7"
    assert storage.store_batch(identified(7), at(1)) is True  # the dead letter, requeued
    assert storage.producer_state(PRODUCER) == (199, 0)
    assert totals(storage) == {"192.0.2.1": 199}
    assert storage.producer_state("b2" * 16) is None


def test_a_batch_with_a_producer_is_recognised_whatever_agent_name_it_is_sent_under(storage: Storage) -> None:
    assert storage.store_batch(identified(1, agent="web-1"), at(0)) is True
    assert storage.store_batch(identified(1, agent="renamed"), at(1)) is False
    assert totals(storage) == {"192.0.2.1": 1}


S1, S2 = "c3" * 16, "d4" * 16  # two stream ids (docs/protocol.md, "Streams")


def test_stream_ranges_are_kept_per_producer_and_stream_with_each_stored_batch(storage: Storage) -> None:
    assert storage.producer_streams(PRODUCER) == {}
    first = dataclasses.replace(identified(1), streams=((S1, 0, 100), (S2, 0, 50)))
    assert storage.store_batch(first, at(0)) is True
    assert storage.store_batch(dataclasses.replace(identified(3), streams=((S1, 300, 400),)), at(0)) is True
    assert storage.store_batch(dataclasses.replace(identified(2), streams=((S1, 100, 300),)), at(0)) is True
    # A replay is a duplicate: nothing of it is recorded, whatever ranges it claims.
    assert storage.store_batch(dataclasses.replace(identified(1), streams=((S1, 0, 9999),)), at(1)) is False
    # The same stream id under another producer is another stream.
    other = dataclasses.replace(identified(1), producer="b2" * 16, streams=((S1, 5000, 6000),))
    assert storage.store_batch(other, at(1)) is True
    assert storage.producer_streams(PRODUCER) == {S1: [(0, 400)], S2: [(0, 50)]}
    assert storage.producer_streams("b2" * 16) == {S1: [(5000, 6000)]}


def test_a_stream_range_missing_below_stored_ones_stays_a_gap(storage: Storage) -> None:
    for seq, start, end in ((1, 0, 100), (3, 200, 300), (4, 300, 350)):  # seq 2 (100..200) never stored
        assert storage.store_batch(dataclasses.replace(identified(seq), streams=((S1, start, end),)), at(0))
    assert storage.producer_streams(PRODUCER) == {S1: [(0, 100), (200, 350)]}


def test_a_split_batch_records_its_ranges_only_once_its_parts_make_the_whole(storage: Storage) -> None:
    assert storage.store_batch(dataclasses.replace(identified(1, "0"), streams=((S1, 0, 100),)), at(0)) is True
    assert storage.producer_streams(PRODUCER) == {}, "half a batch: its ranges are not all stored"
    assert storage.store_batch(dataclasses.replace(identified(1, "1"), streams=((S1, 0, 100),)), at(0)) is True
    assert storage.producer_streams(PRODUCER) == {S1: [(0, 100)]}


def test_racing_parts_and_replays_of_one_producer_count_each_record_once(storage: Storage) -> None:
    # ValidBatch `seq` holds 4 occurrences of 192.0.2.<seq>: a half holds 2, a quarter 1.
    arrivals = [identified(seq, part, ip=f"192.0.2.{seq}", count=4 >> len(part))
                for seq in range(1, 9) for part in ("", "0", "1", "00", "01")] * 2
    barrier = threading.Barrier(4)

    def send(items: list[ValidBatch]) -> None:
        barrier.wait()
        for item in items:
            storage.store_batch(item, at(0))

    threads = [threading.Thread(target=send, args=(arrivals[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Whichever came first, whole or parts, every batch is counted exactly once, never more.
    assert totals(storage) == {f"192.0.2.{seq}": 4 for seq in range(1, 9)}
    assert storage.producer_state(PRODUCER) == (8, 0)


def test_an_address_counted_by_one_agent_then_by_others_keeps_every_agents_own_totals(storage: Storage) -> None:
    """Migration 9: an address of one agent keeps it in `ips.agent`; a second agent's batch moves
    the first one's totals to `ip_agents`. The two agents in one batch group (SQLite) or not, the
    reads give each agent's own numbers, before and after."""
    storage.store_batch(batch("a", "1", delta("192.0.2.1", 5, first=10, last=20), delta("192.0.2.2", 1)), at(0))
    storage.store_batch(batch("a", "2", delta("192.0.2.1", 2, first=30, last=31)), at(1))
    assert [(r.ip, r.count, r.agents) for r in storage.list_ips(IpQuery(agent="a"))] == [
        ("192.0.2.1", 7, 1), ("192.0.2.2", 1, 1)]
    assert storage.list_ips(IpQuery(agent="b")) == []
    storage.store_batch(batch("b", "1", delta("192.0.2.1", 4, first=5, last=6)), at(2))
    storage.store_batch(batch("a", "3", delta("192.0.2.1", 1, first=40, last=40)), at(3))
    storage.store_batch(batch("c", "1", delta("192.0.2.1", 1, first=50, last=50)), at(4))
    detail = storage.get_ip("192.0.2.1")
    assert detail is not None
    assert (detail.summary.count, detail.summary.agents) == (13, 3)
    assert (detail.summary.first_seen, detail.summary.last_seen) == (at(5), at(50))
    assert [(row.agent, row.count, row.first_seen, row.last_seen) for row in detail.by_agent] == [
        ("a", 8, at(10), at(40)), ("b", 4, at(5), at(6)), ("c", 1, at(50), at(50))]
    only = storage.get_ip("192.0.2.2")
    assert only is not None and [(r.agent, r.count) for r in only.by_agent] == [("a", 1)]
    assert [(r.ip, r.count, r.agents) for r in storage.list_ips(IpQuery(agent="a"))] == [
        ("192.0.2.1", 8, 3), ("192.0.2.2", 1, 1)]
    assert [(r.ip, r.count, r.agents) for r in storage.list_ips(IpQuery(agent="b"))] == [("192.0.2.1", 4, 3)]
    assert [(r.ip, r.count, r.agents) for r in storage.list_ips(IpQuery())] == [
        ("192.0.2.1", 13, 3), ("192.0.2.2", 1, 1)]


def test_a_second_agents_first_batch_replayed_moves_nothing_twice(storage: Storage) -> None:
    storage.store_batch(batch("a", "1", delta("198.51.100.7", 3)), at(0))
    second = batch("b", "1", delta("198.51.100.7", 2))
    assert storage.store_batch(second, at(1)) is True
    assert storage.store_batch(second, at(2)) is False
    detail = storage.get_ip("198.51.100.7")
    assert detail is not None
    assert [(r.agent, r.count) for r in detail.by_agent] == [("a", 3), ("b", 2)]
    assert detail.summary.count == 5
