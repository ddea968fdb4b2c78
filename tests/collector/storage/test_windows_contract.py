"""The Storage contract for time buckets and decisions: every test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import ipaddress
import json
import random
import threading
from datetime import timedelta
from typing import Any, cast

import pytest

from remote_uploader.collector.batch import parse_batch
from remote_uploader.collector.storage.base import IpQuery, Storage, ValidBatch
from remote_uploader.collector.storage.model import DecisionQuery, Evidence, NewDecision, WindowCount, WindowQuery
from remote_uploader.collector.storage.sql import SqlStorage
from tests.helpers.batches import T0, as_worker_hands_it, at, record, wire_batch

MINUTE = 60


def hits(agent: str, batch_id: str, *records: dict[str, object]) -> ValidBatch:
    """A batch as the collector parses it (with its bucket deltas)."""
    return parse_batch(json.dumps(wire_batch(agent, batch_id, list(records))).encode(), agent)


def window(storage: Storage, since: float, until: float | None = None, **filters: object) -> dict[str, int]:
    query = WindowQuery(since=at(since), until=None if until is None else at(until), **filters)  # type: ignore[arg-type]
    return {row.ip: row.count for row in storage.window_counts(query)}


# -- buckets ----------------------------------------------------------------------------------


def test_counts_land_in_the_bucket_of_their_last_seen(storage: Storage) -> None:
    storage.store_batch(hits("a", "1", record("198.51.100.1", 3, 10, 50), record("198.51.100.1", 2, 70, 70)), at(0))
    storage.store_batch(hits("a", "2", record("198.51.100.1", 4, 130, 130)), at(0))
    assert window(storage, 0) == {"198.51.100.1": 9}
    # [60, 200] overlaps the buckets starting at 60 and 120 only.
    assert window(storage, 60) == {"198.51.100.1": 6}
    assert window(storage, 121) == {"198.51.100.1": 4}
    assert window(storage, 0, 59) == {"198.51.100.1": 3}
    series = storage.window_series(at(0))
    assert [(p.start, p.seconds, p.count) for p in series] == [(at(0), 60, 3), (at(60), 60, 2), (at(120), 60, 4)]


def test_a_window_is_rounded_outward_to_whole_buckets(storage: Storage) -> None:
    storage.store_batch(hits("a", "1", record("198.51.100.1", 1, 5)), at(0))
    # since 59 s: the bucket [0, 60) overlaps it; since 60 s: it does not.
    assert window(storage, 59) == {"198.51.100.1": 1}
    assert window(storage, 60) == {}


def test_window_counts_filter_by_agent_source_network_address_and_count(storage: Storage) -> None:
    storage.store_batch(
        hits(
            "web-1",
            "1",
            record("198.51.100.1", 5, source="/var/log/nginx/access.log"),
            record("198.51.100.1", 2, source="/var/log/auth.log"),
            record("198.51.100.2", 1, source="/var/log/auth.log"),
            record("2001:db8::1", 7, source="/var/log/auth.log"),
        ),
        at(0),
    )
    storage.store_batch(hits("web-2", "1", record("198.51.100.1", 10, source="/var/log/auth.log")), at(0))
    assert window(storage, 0) == {"198.51.100.1": 17, "198.51.100.2": 1, "2001:db8::1": 7}
    assert window(storage, 0, agents=("web-1",)) == {"198.51.100.1": 7, "198.51.100.2": 1, "2001:db8::1": 7}
    assert window(storage, 0, agents=("nobody",)) == {}
    assert window(storage, 0, sources=("*/auth.log",)) == {"198.51.100.1": 12, "198.51.100.2": 1, "2001:db8::1": 7}
    assert window(storage, 0, sources=("/var/log/nginx/*",), agents=("web-2",)) == {}
    assert window(storage, 0, network=ipaddress.ip_network("198.51.100.0/31")) == {"198.51.100.1": 17}
    assert window(storage, 0, network=ipaddress.ip_network("2001:db8::/64")) == {"2001:db8::1": 7}
    assert window(storage, 0, ips=("198.51.100.2", "2001:db8::1", "192.0.2.9")) == {"198.51.100.2": 1, "2001:db8::1": 7}
    assert window(storage, 0, min_count=7) == {"198.51.100.1": 17, "2001:db8::1": 7}
    top = storage.window_counts(WindowQuery(since=at(0), limit=2))
    assert [(r.ip, r.count) for r in top] == [("198.51.100.1", 17), ("2001:db8::1", 7)]
    assert storage.list_labels("agent") == ["web-1", "web-2"]
    assert storage.list_labels("source") == ["/var/log/auth.log", "/var/log/nginx/access.log"]


def test_an_ipv4_network_never_matches_ipv6_keys_with_the_same_leading_bytes(storage: Storage) -> None:
    # 2001:db8:: starts with the bytes of 32.1.13.184.
    storage.store_batch(hits("a", "1", record("2001:db8::1", 3), record("32.1.13.184", 1)), at(0))
    assert window(storage, 0, network=ipaddress.ip_network("32.1.13.0/24")) == {"32.1.13.184": 1}


def test_a_replayed_batch_adds_nothing_to_the_buckets(storage: Storage) -> None:
    batch = hits("a", "1", record("198.51.100.1", 3))
    assert storage.store_batch(batch, at(0)) is True
    assert storage.store_batch(batch, at(1)) is False
    assert window(storage, 0) == {"198.51.100.1": 3}


def test_buckets_encoded_beforehand_store_like_plain_ones(storage: Storage) -> None:
    assert storage.bulk_form is not None
    plain = hits("a", "1", record("198.51.100.1", 3, source="/a\\b"), record("2001:db8::1", 2, 70))
    encoded = as_worker_hands_it(plain, storage.bulk_form)
    storage.store_batch(encoded, at(0))
    assert window(storage, 0) == {"198.51.100.1": 3, "2001:db8::1": 2}
    assert window(storage, 0, sources=("/a\\b",)) == {"198.51.100.1": 3}


def test_rollup_moves_old_buckets_to_hours_and_days_without_changing_totals(storage: Storage) -> None:
    for number, seconds in enumerate([0, 30, 90, 3600 + 5, 86400 + 10]):
        storage.store_batch(hits("a", str(number), record("198.51.100.1", 1, seconds)), at(0))
    storage.store_batch(hits("a", "x", record("198.51.100.2", 1, 3 * 86400)), at(0))
    before = window(storage, -86400)
    now = at(3 * 86400 + 100)
    result = storage.rollup(now, timedelta(hours=2), timedelta(days=1), timedelta(days=30))
    assert result.to_hour == 4  # bucket rows of 12:00 (two hits), 12:01, 13:00 and the next day
    assert result.to_day == 3  # hour rows of the first day (12:00, 13:00) and of the second
    assert window(storage, -86400) == before == {"198.51.100.1": 5, "198.51.100.2": 1}
    # T0 is 12:00: the first three hits are one hour row now, so a window from 12:01 sees them all.
    assert window(storage, 61) == {"198.51.100.1": 5, "198.51.100.2": 1}
    assert [(p.seconds, p.count) for p in storage.window_series(at(0), at(86400 * 2))][:2] == [(86400, 4), (86400, 1)]
    result = storage.rollup(at(400 * 86400), timedelta(hours=2), timedelta(days=1), timedelta(days=30))
    assert result.dropped >= 1
    assert window(storage, -86400) == {}


def test_rollup_adds_late_rows_to_an_hour_already_folded(storage: Storage) -> None:
    storage.store_batch(hits("a", "1", record("198.51.100.1", 2, 10)), at(0))
    storage.rollup(at(10 * 3600), timedelta(hours=2), timedelta(days=1), timedelta(days=30))
    storage.store_batch(hits("a", "2", record("198.51.100.1", 3, 20)), at(0))  # late: same hour
    storage.rollup(at(10 * 3600), timedelta(hours=2), timedelta(days=1), timedelta(days=30))
    assert window(storage, 0) == {"198.51.100.1": 5}


def series(storage: Storage, since: float) -> list[tuple[int, int, int, int]]:
    """(seconds after T0, bucket length, occurrences, distinct addresses) of the overview's chart."""
    return [(int((p.start - at(0)).total_seconds()), p.seconds, p.occurrences, p.addresses)
            for p in storage.minute_series(at(since))]


def source_totals_match_the_buckets(storage: Storage) -> None:
    """`source_totals` holds, level by level, exactly the per-(bucket, agent, source) sums of the rows."""
    sql = cast(SqlStorage, storage)
    with sql._read() as cur:
        for length, table in ((60, "counts"), (3600, "counts_hour"), (86400, "counts_day")):
            cur.execute(f"SELECT bucket, agent, source, sum(total) FROM {table} GROUP BY 1, 2, 3 ORDER BY 1, 2, 3")
            rows = [tuple(map(int, row)) for row in cur.fetchall()]
            cur.execute(sql._sql("SELECT bucket, agent, source, total FROM source_totals WHERE length = ? "
                                 "ORDER BY 1, 2, 3"), (length,))
            assert [tuple(map(int, row)) for row in cur.fetchall()] == rows, table


def test_bucket_totals_stay_exact_through_ingest_replays_rollups_and_expiry(storage: Storage) -> None:
    storage.store_batch(hits("a", "1", record("198.51.100.1", 2, 10), record("198.51.100.2", 1, 70)), at(0))
    storage.store_batch(hits("b", "1", record("198.51.100.1", 3, 20), record("2001:db8::1", 4, 30)), at(0))
    storage.store_batch(hits("b", "1", record("198.51.100.1", 3, 20)), at(0))  # a replay: nothing added
    storage.store_batch(hits("a", "2", record("198.51.100.1", 1, 40, source="/other")), at(0))  # same minute
    assert series(storage, -60) == [(0, 60, 10, 2), (60, 60, 1, 1)]
    assert storage.agent_sources(at(-60)) == [
        ("a", "/var/log/x.log", 3), ("a", "/other", 1), ("b", "/var/log/x.log", 7)]
    source_totals_match_the_buckets(storage)
    storage.rollup(at(10 * 3600), timedelta(hours=2), timedelta(days=1), timedelta(days=30))
    assert series(storage, -60) == [(0, 3600, 11, 3)]
    source_totals_match_the_buckets(storage)
    storage.store_batch(hits("c", "1", record("198.51.100.2", 5, 50), record("198.51.100.9", 1, 50)), at(0))
    storage.store_batch(hits("a", "3", record("198.51.100.2", 2, 50, source="/other")), at(0))
    assert series(storage, -60) == [(0, 3600, 11, 3), (0, 60, 8, 2)]  # late rows, not folded yet
    source_totals_match_the_buckets(storage)
    storage.rollup(at(10 * 3600), timedelta(hours=2), timedelta(days=1), timedelta(days=30))
    assert series(storage, -60) == [(0, 3600, 19, 4)]  # 198.51.100.2 was in the hour already
    assert storage.agent_sources(at(-60)) == [("a", "/other", 3), ("a", "/var/log/x.log", 3),
                                              ("b", "/var/log/x.log", 7), ("c", "/var/log/x.log", 6)]
    source_totals_match_the_buckets(storage)
    storage.rollup(at(3 * 86400), timedelta(hours=2), timedelta(days=1), timedelta(days=30))
    assert series(storage, -86400) == [(-12 * 3600, 86400, 19, 4)]  # T0 is 12:00: the day began at 00:00
    assert sum(total for _, _, total in storage.agent_sources(at(-86400))) == 19
    source_totals_match_the_buckets(storage)
    storage.rollup(at(400 * 86400), timedelta(hours=2), timedelta(days=1), timedelta(days=30))
    assert series(storage, -86400) == []
    assert storage.agent_sources(at(-86400)) == []
    source_totals_match_the_buckets(storage)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_batches_of_look_alike_agents_and_sources_keep_every_total_exact(storage: Storage, seed: int) -> None:
    """Generative: batches drawn at random from a few agents whose names look alike ("a", "A",
    "a "), a few sources, a small pool of addresses and three minutes, some replayed, some in the
    parsing worker's encoded form, so that the ingest's shortcuts (storage/sqlite.py: the
    `ip_agents` statement skipped while one agent alone has written; a one-source batch's new
    addresses per bucket counted without DISTINCT) meet every neighbour of their conditions.
    After each batch, every total equals a model's: per address, per (address, agent), and per
    minute the occurrences and the distinct addresses."""
    rng = random.Random(seed)
    pool = ["198.51.100.1", "198.51.100.2", "198.51.100.3", "2001:db8::1", "2001:db8::2"]
    agents, sources = ["a", "A", "a "], ["/x.log", "/y.log", "/z.log"]
    per_ip: dict[str, int] = {}
    per_agent: dict[tuple[str, str], int] = {}
    per_minute: dict[int, tuple[int, set[str]]] = {}
    sent: list[ValidBatch] = []
    # The first batches from agent "a" only, so that the sole-agent shortcut runs before others come.
    for number in range(40):
        if sent and rng.random() < 0.15:  # a replay of an earlier batch: nothing may change
            assert storage.store_batch(rng.choice(sent), at(0)) is False
        else:
            agent = "a" if number < 8 else rng.choice(agents)
            chosen = rng.sample(sources, rng.choice([1, 1, 2, 3]))
            drawn = [(ip, rng.randint(1, 5), minute, source)
                     for ip in rng.sample(pool, rng.randint(1, len(pool)))
                     for minute in rng.sample(range(3), rng.randint(1, 2))
                     for source in rng.sample(chosen, rng.randint(1, len(chosen)))]
            batch = hits(agent, f"{seed}-{number}", *(record(ip, count, minute * MINUTE + 5, source=source)
                                                      for ip, count, minute, source in drawn))
            if storage.bulk_form is not None and rng.random() < 0.5:
                batch = as_worker_hands_it(batch, storage.bulk_form)
            assert storage.store_batch(batch, at(0)) is True
            sent.append(batch)
            for ip, count, minute, _ in drawn:
                per_ip[ip] = per_ip.get(ip, 0) + count
                per_agent[ip, agent] = per_agent.get((ip, agent), 0) + count
                occurrences, addresses = per_minute.get(minute, (0, set()))
                per_minute[minute] = (occurrences + count, addresses | {ip})
        assert window(storage, -MINUTE) == per_ip, number
        for agent in agents:
            expected = {ip: n for (ip, who), n in per_agent.items() if who == agent}
            assert window(storage, -MINUTE, agents=(agent,)) == expected, (number, agent)
            assert {row.ip: row.count for row in storage.list_ips(IpQuery(agent=agent, limit=100))} == expected
        assert series(storage, -MINUTE) == [(m * MINUTE, MINUTE, n, len(ips))
                                            for m, (n, ips) in sorted(per_minute.items())], number
    source_totals_match_the_buckets(storage)


# The plans of `window_counts` with a limit (storage/sql_windows.py, `_top`), the same on both
# backends: the threshold search alone ("search"); the plans by time, by count the window added up
# whole and by last seen newest first ("by time"); and by count the threshold search first, with a
# budget of a sixteenth of the window's rows (a few candidates here: it gives up half-way in many
# cases and hands over to the whole sum), then by time ("search, then by time").
PLANS = ("search", "by time", "search, then by time")


def use_plan(storage: Storage, plan: str) -> None:
    sql = cast(Any, storage)
    if plan == "search":
        sql.by_time = False
        return
    sql.time_first_rows = sql.time_first_kept = 10**12
    sql.search_first_rows = 10**12 if plan == "by time" else 0


def firsts(storage: Storage, since: float, limit: int, **more: Any) -> list[tuple[str, int]]:
    return [(row.ip, row.count) for row in storage.window_counts(WindowQuery(at(since), limit=limit, **more))]


@pytest.mark.parametrize("plan", PLANS)
def test_the_first_addresses_keep_a_tie_across_blocks_and_the_rows_at_the_windows_edges(
        storage: Storage, plan: str) -> None:
    """The look-alikes of `_top`: candidates are read by their text, rows are ranked by their key
    (.9 before .10); a row last seen in a window's first bucket, or folded into an hour that
    starts before the window, still counts."""
    use_plan(storage, plan)
    cast(Any, storage).top_factor, cast(Any, storage).top_block = 2, 1  # blocks of 2 for a limit of 1
    assert storage.window_counts(WindowQuery(at(0), limit=1)) == []  # no candidate at all
    tied = [f"198.51.100.{i}" for i in range(10, 18)] + ["198.51.100.9"]  # text order: .10 ... .17, .9
    storage.store_batch(hits("a", "1", *(record(ip, 5, 600) for ip in tied)), at(0))
    [first] = storage.window_counts(WindowQuery(at(0), limit=1))
    assert (first.ip, first.count) == ("198.51.100.9", 5)  # the ninth candidate, in the second block
    storage.store_batch(hits("a", "2", record("203.0.113.1", 9, 0)), at(0))
    edge = storage.window_counts(WindowQuery(at(59), limit=1))  # the bucket [0, 60) overlaps [59, ...)
    assert [(row.ip, row.count) for row in edge] == [("203.0.113.1", 9)]
    storage.rollup(at(10 * 3600), timedelta(hours=2), timedelta(days=1), timedelta(days=30))
    folded = storage.window_counts(WindowQuery(at(1800), limit=2))  # the hour [0, 3600) overlaps it
    assert [(row.ip, row.count) for row in folded] == [("203.0.113.1", 9), ("198.51.100.9", 5)]


@pytest.mark.parametrize("plan", PLANS)
def test_the_first_addresses_of_a_window_are_those_of_the_whole_sum(storage: Storage, plan: str) -> None:
    """`window_counts` with a limit reads candidates by their bound (storage/sql_windows.py,
    `_threshold`), a few at a time here, or the window's rows by time: it must keep exactly the
    rows, in the order, that adding up the whole window and sorting gives, through ties, filters,
    every level and late rows."""
    use_plan(storage, plan)
    first_addresses_match_the_whole_sum(storage, counts=[1, 1, 2, 3, 8])


@pytest.mark.parametrize("tier_rows", [10**6, 3], ids=["tiers-read-whole", "big-tiers-in-blocks"])
@pytest.mark.parametrize("share", [0, 2], ids=["agents-by-tier", "agents-by-own-totals"])
def test_the_first_addresses_searched_by_tier_are_those_of_the_whole_sum(storage: Storage, share: float,
                                                                         tier_rows: int) -> None:
    """The same comparisons with totals of one to five digits, so that the search meets every
    tier of `ips_tier` (migration 12) and the rest below it, and addresses change tier between
    batches; an agent's first addresses by tier (any share), then by the agent's own totals; every
    tier read whole, then those of more than 3 addresses (and all below them) read in blocks."""
    use_plan(storage, "search")
    cast(Any, storage).tier_share, cast(Any, storage).tier_rows = share, tier_rows
    first_addresses_match_the_whole_sum(storage, counts=[1, 2, 5, 9, 10, 11, 99, 100, 101, 999, 1000, 12345])


def test_an_address_whose_total_gains_a_digit_is_searched_in_its_new_tier(storage: Storage) -> None:
    """The look-alikes of `ips_tier` (addresses counted at least 100 times): .1's total goes from
    95 to 105 by an update, .5 is new with 100; had either kept the tier of two digits, the search
    would read it neither among the indexed tiers nor among the totals under 100 below them, and
    rank .3 (or .2) first. Every address's tier is its total's number of digits, 999 to 1,000 too."""
    use_plan(storage, "search")
    storage.store_batch(hits("a", "1", record("198.51.100.1", 95, -7200), record("198.51.100.2", 200, -7200),
                             record("198.51.100.4", 999, -7200)), at(0))
    storage.store_batch(hits("a", "2", record("198.51.100.1", 10, 10), record("198.51.100.2", 1, 10),
                             record("198.51.100.3", 3, 10)), at(0))
    assert firsts(storage, 0, 1) == [("198.51.100.1", 10)]
    storage.store_batch(hits("b", "1", record("198.51.100.4", 1, 20), record("198.51.100.5", 100, 30)), at(0))
    assert firsts(storage, 0, 2) == [("198.51.100.5", 100), ("198.51.100.1", 10)]
    assert firsts(storage, 0, 1, agents=("b",)) == [("198.51.100.5", 100)]
    sql = cast(SqlStorage, storage)
    with sql._read() as cur:
        cur.execute("SELECT ip, total, tier FROM ips ORDER BY ip")
        tiers = {str(ip): (int(total), int(tier)) for ip, total, tier in cur.fetchall()}
    assert tiers == {"198.51.100.1": (105, 3), "198.51.100.2": (201, 3), "198.51.100.3": (3, 1),
                     "198.51.100.4": (1000, 4), "198.51.100.5": (100, 3)}


def first_addresses_match_the_whole_sum(storage: Storage, counts: list[int]) -> None:
    """Batches of three agents over three days (a rollup after the first round), each record's
    count drawn from `counts`; then every window, filter, limit and order against the whole sum."""
    cast(Any, storage).top_factor, cast(Any, storage).top_block = 2, 1  # blocks of twice the limit: many rounds
    rng = random.Random(14)
    agents, sources = ("a", "b", "c"), ("/s1", "/s2")
    addresses = [f"198.51.100.{i}" for i in range(60)] + [f"2001:db8::{i:x}" for i in range(1, 20)]
    number = 0
    for step in range(3):
        for agent in agents:
            records = []
            for ip in rng.sample(addresses, 25):
                # Small counts (ties), over three days before the rollup point and the hour after.
                seconds = rng.choice([rng.randrange(-3 * 86400, 0), rng.randrange(0, 3600)])
                records.append(record(ip, rng.choice(counts), seconds, source=rng.choice(sources)))
            number += 1
            storage.store_batch(hits(agent, str(number), *records), at(0))
        if step == 0:
            storage.rollup(at(-2 * 3600), timedelta(hours=2), timedelta(days=1), timedelta(days=30))
    def by_count(row: WindowCount) -> tuple[Any, ...]:
        return -row.count, len(row.key), row.key

    def by_last(row: WindowCount) -> tuple[Any, ...]:
        return -row.last_bucket.timestamp(), -row.count, len(row.key), row.key

    filters: list[dict[str, Any]] = [
        {}, {"agents": ("a",)}, {"agents": ("a", "c")}, {"sources": ("/s2",)}, {"min_count": 6},
        {"network": ipaddress.ip_network("198.51.100.0/27")}, {"network": ipaddress.ip_network("2001:db8::/120")},
        {"network": ipaddress.ip_network("198.51.96.0/19")}, {"network": ipaddress.ip_network("2001:db8::/64")},
        {"agents": ("b",), "sources": ("/s1",), "min_count": 2},
    ]
    checked = 0
    for since, until in ((-3 * 86400, None), (-86400 - 1800, None), (-3600, None), (-600, 1800), (1200, None)):
        for more in filters:
            whole = storage.window_counts(WindowQuery(at(since), None if until is None else at(until), **more))
            for limit in (1, 3, 7, 100):
                for order, key in (("count", by_count), ("last_seen", by_last)):
                    query = WindowQuery(at(since), None if until is None else at(until), limit=limit,
                                        order=order, **more)  # type: ignore[arg-type]
                    assert storage.window_counts(query) == sorted(whole, key=key)[:limit], (since, more, limit, order)
                    checked += 1
    assert checked == 5 * 10 * 4 * 2


@pytest.mark.parametrize("plan", PLANS)
def test_on_a_tie_an_ipv4_address_ranks_before_an_ipv6_one_whose_key_is_smaller(storage: Storage, plan: str) -> None:
    """Ranked by (count, key length, key), as the whole sum sorts: 2001:db8::1's key (0x20...)
    is smaller than 198.51.100.1's (0xc6...), so a cut made by the key alone keeps the wrong one."""
    use_plan(storage, plan)
    storage.store_batch(hits("a", "1", record("2001:db8::1", 4, 10), record("198.51.100.1", 4, 20),
                             record("::1", 4, 10)), at(0))  # ::1's key (00...01) is the smallest of all
    assert firsts(storage, 0, 1) == [("198.51.100.1", 4)]
    assert firsts(storage, 0, 2) == [("198.51.100.1", 4), ("::1", 4)]
    assert firsts(storage, 0, 1, order="last_seen") == [("198.51.100.1", 4)]  # one minute: by count, then key


@pytest.mark.parametrize("plan", PLANS)
def test_by_last_seen_the_minute_of_the_last_address_kept_is_read_whole(storage: Storage, plan: str) -> None:
    """Read newest first, .1 (one row of 5 in the last minute) is met before .2 (a row of 1 in
    that minute, 10 earlier), but .2 ranks first: same last minute, more counted. And an
    address met first that counts less than `min_count` gives its place to an older one."""
    use_plan(storage, plan)
    storage.store_batch(hits("a", "1", record("198.51.100.1", 5, 600), record("198.51.100.2", 1, 610),
                             record("198.51.100.3", 2, 300)), at(0))
    storage.store_batch(hits("b", "1", record("198.51.100.2", 10, 5)), at(0))
    assert firsts(storage, 0, 1, order="last_seen") == [("198.51.100.2", 11)]
    assert firsts(storage, 0, 3, order="last_seen") == [("198.51.100.2", 11), ("198.51.100.1", 5),
                                                         ("198.51.100.3", 2)]
    assert firsts(storage, 0, 1, order="last_seen", min_count=6) == [("198.51.100.2", 11)]
    assert firsts(storage, 0, 2, order="last_seen", agents=("a",), min_count=2) == [
        ("198.51.100.1", 5), ("198.51.100.3", 2)]  # .2 counts 1 for agent a


@pytest.mark.parametrize("plan", PLANS)
def test_one_sources_first_addresses_ignore_what_another_source_counted(storage: Storage, plan: str) -> None:
    """.1 dominates /s1 (and every bound on its total); in /s2 it counts 1, .2 counts 3."""
    use_plan(storage, plan)
    storage.store_batch(hits("a", "1", record("198.51.100.1", 50, 10, source="/s1"),
                             record("198.51.100.1", 1, 70, source="/s2"),
                             record("198.51.100.2", 3, 20, source="/s2")), at(0))
    assert firsts(storage, 0, 1, sources=("/s2",)) == [("198.51.100.2", 3)]
    assert firsts(storage, 0, 2, sources=("/s2",)) == [("198.51.100.2", 3), ("198.51.100.1", 1)]
    assert firsts(storage, 0, 1, sources=("/s2",), order="last_seen") == [("198.51.100.1", 1)]
    assert firsts(storage, 0, 1, sources=("/s2",), min_count=2, order="last_seen") == [("198.51.100.2", 3)]
    assert firsts(storage, 0, 5, sources=("/s3",)) == []


def ranked(storage: Storage, query: WindowQuery) -> list[tuple[str, int, int]]:
    return [(row.ip, row.count, int(row.last_bucket.timestamp())) for row in storage.window_counts(query)]


def whole(storage: Storage, query: WindowQuery) -> list[tuple[str, int, int]]:
    """The reference: the window added up whole (no limit), sorted as the dashboard sorts."""
    rows = storage.window_counts(WindowQuery(query.since, query.until, query.agents, query.sources,
                                             network=query.network, min_count=query.min_count))

    def key(row: WindowCount) -> tuple[Any, ...]:
        by_count = (-row.count, len(row.key), row.key)
        return (-row.last_bucket.timestamp(), *by_count) if query.order == "last_seen" else by_count

    assert query.limit is not None
    return [(row.ip, row.count, int(row.last_bucket.timestamp())) for row in sorted(rows, key=key)[: query.limit]]


@pytest.mark.parametrize("plan", PLANS)
def test_newest_first_reads_further_back_when_the_newest_addresses_miss_the_minimum(storage: Storage,
                                                                                   plan: str) -> None:
    """The newest minute holds more addresses than the limit, all below `min_count`: the search
    must go down to older minutes for the ones that pass, and not stop at the first guess."""
    use_plan(storage, plan)
    newest = [record(f"198.51.100.{i}", 1, 600) for i in range(20)]
    older = [record(f"203.0.113.{i}", 3, 60 * i) for i in range(1, 8)]
    storage.store_batch(hits("a", "1", *newest, *older), at(0))
    for limit in (1, 3, 7, 20):
        query = WindowQuery(at(0), min_count=2, limit=limit, order="last_seen")
        assert ranked(storage, query) == whole(storage, query)
    assert [ip for ip, _, _ in ranked(storage, WindowQuery(at(0), min_count=2, limit=2, order="last_seen"))] == [
        "203.0.113.7", "203.0.113.6"]


@pytest.mark.parametrize("plan", PLANS)
def test_newest_first_takes_an_address_whose_newest_row_is_in_another_agents_or_sources_row(
        storage: Storage, plan: str) -> None:
    """An address read as a candidate in a newer minute (by one agent) is added up over the whole
    window (its other agents' and sources' rows, older minutes too); filters apply to both reads."""
    use_plan(storage, plan)
    storage.store_batch(hits("a", "1", record("198.51.100.1", 1, 590), record("198.51.100.2", 9, 500)), at(0))
    storage.store_batch(hits("b", "1", record("198.51.100.1", 8, 10, source="/other"),
                             record("198.51.100.3", 4, 580)), at(0))
    for more in ({}, {"agents": ("a",)}, {"agents": ("b",)}, {"sources": ("/other",)}, {"min_count": 5}):
        for limit in (1, 2, 3):
            query = WindowQuery(at(0), limit=limit, order="last_seen", **more)  # type: ignore[arg-type]
            assert ranked(storage, query) == whole(storage, query), (more, limit)
    first = ranked(storage, WindowQuery(at(0), limit=1, order="last_seen"))
    assert first == [("198.51.100.1", 9, int(at(540).timestamp()))]


@pytest.mark.parametrize("plan", PLANS)
def test_newest_first_compares_bucket_starts_across_levels(storage: Storage, plan: str) -> None:
    """After a fold, an hour row starts before the minutes of that hour: an address only in the
    hour level ranks by the hour's start, behind a late minute row of the same hour."""
    use_plan(storage, plan)
    storage.store_batch(hits("a", "1", record("198.51.100.1", 2, 1800), record("198.51.100.2", 1, 100)), at(0))
    storage.rollup(at(10 * 3600), timedelta(hours=2), timedelta(days=1), timedelta(days=30))
    storage.store_batch(hits("a", "2", record("198.51.100.3", 1, 120)), at(0))  # late, into the minutes
    for since in (0, 60, 1800):
        for limit in (1, 2, 3):
            query = WindowQuery(at(since), limit=limit, order="last_seen")
            assert ranked(storage, query) == whole(storage, query), (since, limit)
    assert [ip for ip, _, _ in ranked(storage, WindowQuery(at(0), limit=1, order="last_seen"))] == ["198.51.100.3"]


def test_bucket_totals_count_an_address_once_when_agents_store_it_at_once(storage: Storage) -> None:
    batches = [hits(f"agent-{n}", "1", *(record(f"198.51.100.{i}", 1, 10) for i in range(n, n + 40)))
               for n in range(6)]
    threads = [threading.Thread(target=storage.store_batch, args=(batch, at(0))) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert series(storage, -60) == [(0, 60, 6 * 40, 45)]  # 198.51.100.0 to .44


# -- decisions --------------------------------------------------------------------------------


def ban(value: str, seconds: float = 3600, **fields: object) -> NewDecision:
    scope = "Range" if "/" in value else "Ip"
    return NewDecision(value=value, scope=scope, until=at(seconds), **fields)  # type: ignore[arg-type]


def test_decisions_are_stored_with_increasing_sequence_numbers(storage: Storage) -> None:
    assert storage.decision_seq() == 0
    [(first, made1)], [(second, made2)] = (
        storage.add_decisions([ban("198.51.100.1", reason="brute force")], at(0)),
        storage.add_decisions([ban("198.51.100.0/24", scenario="sshd")], at(1)),
    )
    assert made1 and made2
    assert (first.value, first.scope, first.type, first.state, first.reason) == (
        "198.51.100.1",
        "Ip",
        "ban",
        "active",
        "brute force",
    )
    assert (second.scope, second.scenario, second.origin) == ("Range", "sshd", "remote-uploader")
    assert first.created_seq < second.created_seq == storage.decision_seq()
    assert first.until == at(3600) and first.created_at == at(0)
    listed = storage.list_decisions(DecisionQuery())
    assert [d.value for d in listed] == ["198.51.100.1", "198.51.100.0/24"]
    assert listed[0] == first


def test_a_value_with_an_active_decision_keeps_it_unless_replaced(storage: Storage) -> None:
    [(first, _)] = storage.add_decisions([ban("198.51.100.1")], at(0))
    [(again, made)] = storage.add_decisions([ban("198.51.100.1", 7200)], at(10))
    assert (made, again.id) == (False, first.id)
    [(replaced, made)] = storage.add_decisions([ban("198.51.100.1", 7200)], at(20), replace=True)
    assert made and replaced.id != first.id
    active = storage.list_decisions(DecisionQuery(value="198.51.100.1"))
    assert [d.id for d in active] == [replaced.id]
    ended = storage.list_decisions(DecisionQuery(active=False))
    assert [(d.id, d.state, d.ended_at) for d in ended] == [(first.id, "deleted", at(20))]


def test_deleting_and_expiring_end_decisions_with_a_new_sequence(storage: Storage) -> None:
    storage.add_decisions([ban("198.51.100.1", 100), ban("198.51.100.2", 5000), ban("2001:db8::/64", 5000)], at(0))
    seq = storage.decision_seq()
    deleted = storage.delete_decisions(at(10), value="198.51.100.2")
    assert [(d.value, d.state, d.ended_seq) for d in deleted] == [("198.51.100.2", "deleted", seq + 1)]
    assert storage.delete_decisions(at(10), value="198.51.100.2") == []
    assert storage.expire_decisions(at(99)) == []
    expired = storage.expire_decisions(at(100))
    assert [(d.value, d.state, d.ended_seq) for d in expired] == [("198.51.100.1", "expired", seq + 2)]
    (range_decision,) = storage.list_decisions(DecisionQuery())
    assert [d.value for d in storage.delete_decisions(at(11), decision_id=range_decision.id)] == ["2001:db8::/64"]
    assert storage.list_decisions(DecisionQuery()) == []


def test_active_now_leaves_out_decisions_past_their_until(storage: Storage) -> None:
    storage.add_decisions([ban("198.51.100.1", 100), ban("198.51.100.2", 500)], at(0))
    assert [d.value for d in storage.list_decisions(DecisionQuery(now=at(200)))] == ["198.51.100.2"]
    # Past its until, a value gets a new decision; the old one is marked expired on the way.
    [(_, made)] = storage.add_decisions([ban("198.51.100.1", 900)], at(200))
    assert made
    assert [d.state for d in storage.list_decisions(DecisionQuery(active=None, value="198.51.100.1"))] == [
        "expired",
        "active",
    ]


def test_changes_since_a_sequence_are_new_and_deleted_decisions(storage: Storage) -> None:
    storage.add_decisions([ban("198.51.100.1"), ban("198.51.100.2")], at(0))
    seen = storage.decision_seq()
    storage.add_decisions([ban("198.51.100.3")], at(1))
    storage.delete_decisions(at(2), value="198.51.100.1")
    storage.add_decisions([ban("198.51.100.4")], at(3))
    storage.delete_decisions(at(4), value="198.51.100.4")  # made and ended after `seen`: in neither
    now = storage.decision_seq()
    new = storage.list_decisions(DecisionQuery(as_of_seq=now, new_after_seq=seen))
    gone = storage.list_decisions(DecisionQuery(as_of_seq=now, ended_after_seq=seen))
    assert [d.value for d in new] == ["198.51.100.3"]
    assert [d.value for d in gone] == ["198.51.100.1"]
    # The state as of `seen` is still readable: what a consumer paging through it would get.
    assert [d.value for d in storage.list_decisions(DecisionQuery(as_of_seq=seen))] == ["198.51.100.1", "198.51.100.2"]
    everything = storage.list_decisions(DecisionQuery(as_of_seq=now, new_after_seq=0))
    assert [d.value for d in everything] == ["198.51.100.2", "198.51.100.3"]


def test_ended_since_a_sequence_includes_decisions_made_and_ended_after_it(storage: Storage) -> None:
    seen = storage.decision_seq()
    storage.add_decisions([ban("198.51.100.4"), ban("203.0.113.0/24")], at(0))
    storage.delete_decisions(at(1), value="203.0.113.0/24")
    now = storage.decision_seq()
    assert storage.list_decisions(DecisionQuery(as_of_seq=now, ended_after_seq=seen)) == []  # a stream's view
    ended = storage.list_decisions(DecisionQuery(as_of_seq=now, ended_since_seq=seen))
    assert [(d.value, d.state) for d in ended] == [("203.0.113.0/24", "deleted")]


def test_a_value_inside_an_active_wider_range_is_not_stored_when_covered_ones_are_skipped(storage: Storage) -> None:
    [(wide, _)] = storage.add_decisions([ban("203.0.113.0/24", 100)], at(0))
    made = storage.add_decisions(
        [ban(v) for v in ("203.0.113.7", "203.0.113.128/25", "203.0.113.0/24", "198.51.100.7", "203.0.112.0/23")],
        at(10),
        skip_covered=True,
    )
    assert [(d.value, created) for d, created in made] == [
        ("203.0.113.0/24", False),  # the /24 holds the address ...
        ("203.0.113.0/24", False),  # ... and the /25
        ("203.0.113.0/24", False),  # the same value: the one active decision stands
        ("198.51.100.7", True),
        ("203.0.112.0/23", True),  # wider than the /24: not held by it
    ]
    assert made[0][0].id == wide.id
    # Without skip_covered (decisions by hand) the value is stored whatever holds it.
    [(_, by_hand)] = storage.add_decisions([ban("203.0.113.9")], at(10))
    assert by_hand
    # A range past its until covers nothing, even before it is marked expired.
    storage.delete_decisions(at(11), value="203.0.112.0/23")
    [(_, created)] = storage.add_decisions([ban("203.0.113.8")], at(100), skip_covered=True)
    assert created
    # Nor does an ended one; the IPv6 family is kept apart from the IPv4 one.
    storage.add_decisions([ban("2001:db8:1::/48")], at(100))
    storage.delete_decisions(at(101), value="2001:db8:1::/48")
    pairs = storage.add_decisions([ban("2001:db8:1::7"), ban("::cb00:7107")], at(102), skip_covered=True)
    assert [created for _, created in pairs] == [True, True]


def test_decisions_page_by_id_and_filter(storage: Storage) -> None:
    storage.add_decisions([ban(f"198.51.100.{n}", scenario="a" if n % 2 else "b") for n in range(1, 8)], at(0))
    storage.add_decisions([ban("203.0.113.0/24", origin="cscli")], at(0))
    first = storage.list_decisions(DecisionQuery(limit=3))
    rest = storage.list_decisions(DecisionQuery(after_id=first[-1].id))
    assert len(first) == 3 and len(rest) == 5
    assert len(storage.list_decisions(DecisionQuery(scenarios=("a",)))) == 4
    assert [d.value for d in storage.list_decisions(DecisionQuery(origins=("cscli",)))] == ["203.0.113.0/24"]
    assert [d.value for d in storage.list_decisions(DecisionQuery(scopes=("Range",)))] == ["203.0.113.0/24"]
    assert [d.value for d in storage.list_decisions(DecisionQuery(contains="203.0.113.77"))] == ["203.0.113.0/24"]
    assert [d.value for d in storage.list_decisions(DecisionQuery(contains="198.51.100.3"))] == ["198.51.100.3"]
    assert storage.list_decisions(DecisionQuery(contains="2001:db8::1")) == []


def test_a_decision_explains_itself(storage: Storage) -> None:
    evidence = (Evidence("198.51.100.7", 12, at(0), at(540)), Evidence("198.51.100.9", 30, at(60), at(60)))
    [(made, _)] = storage.add_decisions(
        [ban("198.51.100.0/24", scenario="scan-24", details={"rule": "scan-24", "window": "10m"}, evidence=evidence)],
        at(600),
    )
    detail = storage.get_decision(made.id)
    assert detail is not None
    assert detail.decision == made
    assert detail.details == {"rule": "scan-24", "window": "10m"}
    assert detail.evidence == [evidence[1], evidence[0]]
    assert storage.get_decision(made.id + 100) is None


def test_recent_decisions_are_what_escalation_counts(storage: Storage) -> None:
    storage.add_decisions([ban("198.51.100.1", 10)], at(0))
    storage.add_decisions([ban("198.51.100.1", 100)], at(50))
    storage.add_decisions([ban("198.51.100.2", 100)], at(50))
    found = storage.recent_decisions(["198.51.100.1"], at(0))
    assert [(d.created_at, d.state) for d in found] == [(at(0), "expired"), (at(50), "active")]
    assert [d.created_at for d in storage.recent_decisions(["198.51.100.1", "x"], at(1))] == [at(50)]


def test_racing_decision_writers_get_distinct_consecutive_sequences(storage: Storage) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def write(worker: int) -> None:
        start.wait()
        try:
            for n in range(5):
                storage.add_decisions([ban(f"10.{worker}.0.{n}")], at(0))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    seqs = sorted(d.created_seq for d in storage.list_decisions(DecisionQuery()))
    assert seqs == list(range(1, 21)) and storage.decision_seq() == 20


def test_t0_is_the_start_of_a_bucket() -> None:
    """The tests above place hits by seconds after T0; they assume T0 starts an hour."""
    assert T0.minute == T0.second == T0.microsecond == 0
