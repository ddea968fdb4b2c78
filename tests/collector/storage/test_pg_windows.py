"""PostgreSQL's own paths to the first addresses of a window (storage/pg_windows.py): each one,
forced, must give exactly what adding up the whole window and sorting gives, as the threshold
search must (test_windows_contract.py), and the look-alikes where a path of its own could differ."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest

from remote_uploader.collector.storage.model import WindowCount, WindowQuery
from remote_uploader.collector.storage.postgres import PostgresStorage
from tests.collector.storage import test_windows_contract as contract
from tests.collector.storage.test_windows_contract import hits
from tests.helpers.batches import at, record

pytestmark = pytest.mark.postgres

ALWAYS, NEVER = 10**12, 0  # `time_first_rows`: every window is summed time first, or none is


@pytest.fixture
def pg(pg_url: str) -> Iterator[PostgresStorage]:
    storage = PostgresStorage(pg_url, timeout=2, pool_size=4)
    storage.migrate()
    yield storage
    storage.close()


def ranked(storage: PostgresStorage, query: WindowQuery) -> list[tuple[str, int, int]]:
    return [(row.ip, row.count, int(row.last_bucket.timestamp())) for row in storage.window_counts(query)]


def whole(storage: PostgresStorage, query: WindowQuery) -> list[tuple[str, int, int]]:
    """The reference: the window added up whole (no limit), sorted as the dashboard sorts."""
    rows = storage.window_counts(WindowQuery(query.since, query.until, query.agents, query.sources,
                                             network=query.network, min_count=query.min_count))

    def key(row: WindowCount) -> tuple[Any, ...]:
        by_count = (-row.count, len(row.key), row.key)
        return (-row.last_bucket.timestamp(), *by_count) if query.order == "last_seen" else by_count

    assert query.limit is not None
    return [(row.ip, row.count, int(row.last_bucket.timestamp())) for row in sorted(rows, key=key)[: query.limit]]


@pytest.mark.parametrize(("time_first_rows", "search_first_rows"), [(ALWAYS, ALWAYS), (ALWAYS, NEVER), (NEVER, NEVER)],
                         ids=["time-first", "search-then-time-first", "threshold"])
@pytest.mark.parametrize("case", [
    contract.test_the_first_addresses_of_a_window_are_those_of_the_whole_sum,
    contract.test_the_first_addresses_keep_a_tie_across_blocks_and_the_rows_at_the_windows_edges,
], ids=["whole-sum", "ties-and-edges"])
def test_each_path_keeps_exactly_the_first_addresses_of_the_whole_sum(pg: PostgresStorage, time_first_rows: int,
                                                                      search_first_rows: int,
                                                                      case: Callable[[Any], None]) -> None:
    """The contract's comparisons (ties, filters, every level, late rows), with the count order
    summed time first for every window; the threshold search first, with a budget of a sixteenth
    of the window's rows, then time first where it gives up; the threshold search alone. The
    last-seen order always goes newest first. ("search" is the contract's name for the
    storage's own `_top`.)"""
    pg.time_first_rows, pg.search_first_rows = time_first_rows, search_first_rows
    case(pg, "search")


def test_time_first_ranks_an_ipv4_address_before_a_tied_ipv6_key_that_sorts_lower(pg: PostgresStorage) -> None:
    """The key of ::1 (00...01) sorts before every IPv4 key as bytes; the dashboard ranks the
    shorter key first, and a limit that cuts between them must keep the IPv4 address."""
    pg.time_first_rows = ALWAYS
    pg.store_batch(hits("a", "1", record("::1", 5, 10), record("198.51.100.7", 5, 10), record("::2", 5, 10)), at(0))
    query = WindowQuery(at(0), limit=1)
    assert ranked(pg, query) == whole(pg, query) == [("198.51.100.7", 5, int(at(0).timestamp()))]
    query = WindowQuery(at(0), limit=2)
    assert [ip for ip, _, _ in ranked(pg, query)] == ["198.51.100.7", "::1"]


def test_newest_first_reads_further_back_when_the_newest_addresses_miss_the_minimum(pg: PostgresStorage) -> None:
    """The newest minute holds more addresses than the limit, all below `min_count`: the search
    must go down to older minutes for the ones that pass, and not stop at the first guess."""
    newest = [record(f"198.51.100.{i}", 1, 600) for i in range(20)]
    older = [record(f"203.0.113.{i}", 3, 60 * i) for i in range(1, 8)]
    pg.store_batch(hits("a", "1", *newest, *older), at(0))
    for limit in (1, 3, 7, 20):
        query = WindowQuery(at(0), min_count=2, limit=limit, order="last_seen")
        assert ranked(pg, query) == whole(pg, query)
    assert [ip for ip, _, _ in ranked(pg, WindowQuery(at(0), min_count=2, limit=2, order="last_seen"))] == [
        "203.0.113.7", "203.0.113.6"]


def test_newest_first_takes_an_address_whose_newest_row_is_in_another_agents_or_sources_row(
        pg: PostgresStorage) -> None:
    """An address read as a candidate in a newer minute (by one agent) is added up over the whole
    window (its other agents' and sources' rows, older minutes too); filters apply to both reads."""
    pg.store_batch(hits("a", "1", record("198.51.100.1", 1, 590), record("198.51.100.2", 9, 500)), at(0))
    pg.store_batch(hits("b", "1", record("198.51.100.1", 8, 10, source="/other"),
                        record("198.51.100.3", 4, 580)), at(0))
    for more in ({}, {"agents": ("a",)}, {"agents": ("b",)}, {"sources": ("/other",)}, {"min_count": 5}):
        for limit in (1, 2, 3):
            query = WindowQuery(at(0), limit=limit, order="last_seen", **more)  # type: ignore[arg-type]
            assert ranked(pg, query) == whole(pg, query), (more, limit)
    first = ranked(pg, WindowQuery(at(0), limit=1, order="last_seen"))
    assert first == [("198.51.100.1", 9, int(at(540).timestamp()))]


def test_newest_first_compares_bucket_starts_across_levels(pg: PostgresStorage) -> None:
    """After a fold, an hour row starts before the minutes of that hour: an address only in the
    hour level ranks by the hour's start, behind a late minute row of the same hour."""
    pg.store_batch(hits("a", "1", record("198.51.100.1", 2, 1800), record("198.51.100.2", 1, 100)), at(0))
    pg.rollup(at(10 * 3600), timedelta(hours=2), timedelta(days=1), timedelta(days=30))
    pg.store_batch(hits("a", "2", record("198.51.100.3", 1, 120)), at(0))  # late, into the minutes
    for since in (0, 60, 1800):
        for limit in (1, 2, 3):
            query = WindowQuery(at(since), limit=limit, order="last_seen")
            assert ranked(pg, query) == whole(pg, query), (since, limit)
    assert [ip for ip, _, _ in ranked(pg, WindowQuery(at(0), limit=1, order="last_seen"))] == ["198.51.100.3"]


def test_the_trends_of_a_page_are_each_address_series(pg: PostgresStorage) -> None:
    """`window_series_by_ip` (one statement) gives each address exactly its `window_series`: every
    level, the filters, an address with no row, and two keys that share a prefix."""
    pg.store_batch(hits("a", "1", record("198.51.100.1", 3, 10), record("198.51.100.10", 2, 70),
                        record("2001:db8::1", 4, 130, source="/other")), at(0))
    pg.store_batch(hits("b", "1", record("198.51.100.1", 5, 3 * 3600), record("198.51.100.10", 1, 10)), at(0))
    pg.rollup(at(10 * 3600), timedelta(hours=2), timedelta(days=1), timedelta(days=30))  # to hours
    pg.store_batch(hits("a", "2", record("198.51.100.1", 7, 200)), at(0))  # late, into the minutes
    ips = ["198.51.100.1", "198.51.100.10", "2001:db8::1", "203.0.113.9"]
    for since in (0, 100, 3 * 3600):
        for more in ({}, {"agents": ("a",)}, {"sources": ("/other",)}, {"agents": ("nobody",)}):
            assert pg.window_series_by_ip(at(since), ips, **more) == {  # type: ignore[arg-type]
                ip: pg.window_series(at(since), ip=ip, **more) for ip in ips}, (since, more)  # type: ignore[arg-type]
    assert pg.window_series_by_ip(at(0), []) == {}
    assert [p.seconds for p in pg.window_series_by_ip(at(0), ips)["198.51.100.1"]] == [3600, 60, 3600]
