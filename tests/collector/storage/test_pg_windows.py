"""PostgreSQL's own window read (storage/pg_windows.py): the trends of a page's addresses in one
statement. (The plans of `window_counts` with a limit are the same on both backends: their tests
are in test_windows_contract.py, which runs on both.)"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest

from remote_uploader.collector.storage.postgres import PostgresStorage
from tests.collector.storage.test_windows_contract import hits
from tests.helpers.batches import at, record

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg(pg_url: str) -> Iterator[PostgresStorage]:
    storage = PostgresStorage(pg_url, timeout=2, pool_size=4)
    storage.migrate()
    yield storage
    storage.close()


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
