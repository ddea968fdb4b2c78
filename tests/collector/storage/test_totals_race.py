"""The race the PostgreSQL lock on `bucket_totals` guards against, made to happen on a real server.

`ADD_TOTALS` counts as new to a minute the addresses `counts` does not hold yet. Under READ
COMMITTED that look-up sees what was committed when its statement began: two transactions that
both add one address to one minute, and both look before either commits, would both count it
(addresses one too many), while `total` stays right (an UPDATE re-reads the row it waited for).
`LOCK_TOTALS` takes the minute's row lock first, in a statement of its own, so the look-up of
the second transaction begins after the first one committed.

The window is held open without a sleep: a third connection holds the totals row (`FOR UPDATE`),
both transactions are started and each is seen waiting on a lock (`pg_blocking_pids`), then the
row is let go. Two tests:
- the statements of `store_batch` that write the totals, driven on two connections: it fails with
  the guard removed (`LOCK_TOTALS` as `ON CONFLICT DO NOTHING`, which creates the row without
  locking it): addresses 3 instead of 2;
- `store_batch` itself, twice at once: exact too, and it would stay so without the guard today,
  because both transactions upsert the address's `ips` row first and the second waits there for
  the first to commit; the guard keeps the totals exact should that order ever change.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from remote_uploader.collector.storage.base import ValidBatch
from remote_uploader.protocol import ip_key
from tests.collector.storage.test_windows_contract import hits
from tests.helpers.batches import T0, at, record

pytestmark = pytest.mark.postgres
psycopg = pytest.importorskip("psycopg")

MINUTE = int(T0.timestamp()) // 60 * 60
WAIT = 60.0  # seconds for a backend to be seen waiting: a deadline the load cannot miss, never a pause


@pytest.fixture
def storage(pg_url: str) -> Iterator[Any]:
    from remote_uploader.collector.storage.postgres import PostgresStorage

    opened = PostgresStorage(pg_url, timeout=30, pool_size=4)
    opened.migrate()
    # The minute's totals row exists, with one address, and the labels of both agents and the
    # source exist: the two transactions below contend on the totals row only.
    opened.store_batch(hits("a", "seed-a", record("198.51.100.1", 1, 10)), at(0))
    opened.store_batch(hits("b", "seed-b", record("198.51.100.1", 1, 10)), at(0))
    yield opened
    opened.close()


def totals(pg_url: str) -> tuple[int, int]:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        row = conn.execute("SELECT total, addresses FROM bucket_totals WHERE length = 60 AND bucket = %s",
                           (MINUTE,)).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def distinct_in_minute(pg_url: str) -> int:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        return int(conn.execute("SELECT count(DISTINCT ipkey) FROM counts WHERE bucket = %s", (MINUTE,)).fetchone()[0])


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.01)


def waiting_backends(pg_url: str) -> int:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        return int(conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                "AND cardinality(pg_blocking_pids(pid)) > 0").fetchone()[0])


def with_row_held(pg_url: str, run_both: list[Callable[[], None]]) -> list[BaseException]:
    """Hold the minute's totals row, start each of `run_both` in a thread and see it wait on a lock,
    then let the row go; the exceptions the threads raised."""
    errors: list[BaseException] = []

    def guarded(step: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                step()
            except BaseException as exc:  # reported by the test
                errors.append(exc)
        return run

    holder = psycopg.connect(pg_url)
    try:
        holder.execute("SELECT 1 FROM bucket_totals WHERE length = 60 AND bucket = %s FOR UPDATE", (MINUTE,))
        threads = []
        for n, step in enumerate(run_both, 1):
            thread = threading.Thread(target=guarded(step))
            thread.start()
            threads.append(thread)
            wait_until(lambda n=n: waiting_backends(pg_url) >= n or bool(errors), f"{n} transactions waiting")
    finally:
        holder.rollback()
        holder.close()
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive()
    return errors


def test_the_totals_statements_count_an_address_once_when_two_transactions_add_it_at_once(
        storage: Any, pg_url: str) -> None:
    from remote_uploader.collector.storage import postgres

    address = ip_key("198.51.100.2")

    def ingest(agent: str) -> Callable[[], None]:
        """The totals part of `_store_batch_once`, as it runs it, for one address in the minute."""
        def run() -> None:
            with psycopg.connect(pg_url) as conn:
                conn.execute(postgres.CREATE_BUCKETS)
                conn.execute("INSERT INTO bdeltas (ipkey, bucket, source, total) VALUES (%s, %s, %s, 5)",
                             (address, MINUTE, "/var/log/x.log"))
                conn.execute(postgres.INSERT_AGENT_LABEL, (agent,))  # both labels exist (the seeds)
                conn.execute(postgres.INSERT_SOURCE_LABELS)
                conn.execute(postgres.LOCK_TOTALS, (60,))
                conn.execute(postgres.ADD_TOTALS, (60,))
                conn.execute(postgres.UPSERT_COUNTS, (agent,))
        return run

    errors = with_row_held(pg_url, [ingest("a"), ingest("b")])
    assert errors == []
    assert distinct_in_minute(pg_url) == 2
    assert totals(pg_url) == (2 + 5 + 5, 2)


def test_two_store_batch_calls_adding_one_address_to_one_minute_at_once_keep_the_totals_exact(
        storage: Any, pg_url: str) -> None:
    batches: list[ValidBatch] = [hits(agent, "x", record("198.51.100.2", 5, 20), record(f"198.51.100.{n}", 1, 30))
                                 for n, agent in ((3, "a"), (4, "b"))]
    errors = with_row_held(pg_url, [lambda b=batch: storage.store_batch(b, at(0)) for batch in batches])
    assert errors == []
    assert distinct_in_minute(pg_url) == 4
    assert totals(pg_url) == (2 + 6 + 6, 4)
