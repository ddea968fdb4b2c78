"""SQLite's group commit (storage/group.py): batches queued while a transaction runs are stored
together in the next one, each decided and counted as if it were alone."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from remote_uploader.collector.storage.base import IpDelta, IpQuery, ValidBatch
from remote_uploader.collector.storage.group import GroupCommit
from remote_uploader.collector.storage.sqlite import SqliteStorage
from remote_uploader.errors import StorageError, StorageUnavailable
from tests.helpers.batches import at, batch, delta

PRODUCER = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[SqliteStorage]:
    # A long timeout: the queued writers wait for the transaction the test holds open.
    storage = SqliteStorage(tmp_path / "group.db", timeout=120)
    storage.migrate()
    yield storage
    storage.close()


def totals(storage: SqliteStorage) -> dict[str, int]:
    return {row.ip: row.count for row in storage.list_ips(IpQuery(limit=10000))}


def identified(base: ValidBatch, seq: int) -> ValidBatch:
    return ValidBatch(base.agent, base.batch_id, base.sent_at, base.records, base.deltas, producer=PRODUCER, seq=seq)


def stored_together(storage: SqliteStorage, batches: list[ValidBatch]) -> list[bool | BaseException]:
    """Store `batches` from one thread each while the test holds a write transaction open, so that
    all of them are queued when it commits: the next leader takes them into one group."""
    outcomes: list[bool | BaseException] = [False] * len(batches)

    def store(n: int) -> None:
        try:
            outcomes[n] = storage.store_batch(batches[n], at(n))
        except Exception as exc:  # the outcome under test
            outcomes[n] = exc

    threads = [threading.Thread(target=store, args=(n,)) for n in range(len(batches))]
    before = storage._group.stats.groups
    with storage._write() as cur:  # another writer's transaction (a rollup, a token...) runs
        cur.execute("SELECT 1")
        for thread in threads:
            thread.start()
        assert storage._group.wait_queued(len(batches), timeout=60)
    for thread in threads:
        thread.join()
    assert storage._group.stats.groups == before + 1, "the queued batches were not stored in one transaction"
    assert storage._group.stats.largest >= len(batches)
    return outcomes


def test_queued_batches_are_stored_in_one_transaction_and_a_replay_among_them_is_a_duplicate(
    sqlite: SqliteStorage,
) -> None:
    earlier = identified(batch("web-1", "b0", delta("192.0.2.9", 4)), seq=1)
    assert sqlite.store_batch(earlier, at(0)) is True
    first = identified(batch("web-1", "b1", delta("203.0.113.7", 3), delta("2001:db8::1", 2)), seq=2)
    second = identified(batch("web-1", "b2", delta("203.0.113.7", 5)), seq=3)
    other_agent = batch("web-2", "b1", delta("203.0.113.7", 1))  # no producer: decided by (agent, batch id)
    outcomes = stored_together(sqlite, [first, first, second, earlier, other_agent, other_agent])
    assert sorted(outcomes[:2]) == [False, True]  # the batch and its replay in one group: counted once
    assert outcomes[2:4] == [True, False]  # a replay of a batch stored by an earlier transaction
    assert sorted(outcomes[4:]) == [False, True]  # without a producer: (agent, batch id) decides alike
    assert totals(sqlite) == {"192.0.2.9": 4, "203.0.113.7": 9, "2001:db8::1": 2}
    agents = {a.name: (a.batches, a.duplicates) for a in sqlite.list_agents()}
    assert agents == {"web-1": (3, 2), "web-2": (1, 1)}
    assert sqlite.producer_state(PRODUCER) == (3, 0)


def test_a_batch_that_fails_in_a_group_leaves_the_others_stored_and_itself_unclaimed(sqlite: SqliteStorage) -> None:
    broken = batch("web-1", "bad", delta("198.51.100.1", 1))
    # An address the database refuses (NOT NULL): the batch fails inside the group's transaction.
    broken = ValidBatch(broken.agent, broken.batch_id, broken.sent_at, 1,
                        [IpDelta(None, b"\xc6\x33\x64\x01", 1, 0, 0)])  # type: ignore[arg-type]
    good = batch("web-1", "good", delta("198.51.100.2", 2))
    outcomes = stored_together(sqlite, [good, broken, batch("web-2", "also", delta("198.51.100.2", 3))])
    assert outcomes[0] is True and outcomes[2] is True
    assert isinstance(outcomes[1], StorageError)
    assert totals(sqlite) == {"198.51.100.2": 5}
    # Its claim was rolled back with its rows: sent again (fixed), the batch is new, not a duplicate.
    assert sqlite.store_batch(batch("web-1", "bad", delta("198.51.100.1", 1)), at(9)) is True
    assert totals(sqlite) == {"198.51.100.1": 1, "198.51.100.2": 5}


def test_a_writer_that_waits_too_long_takes_its_batch_back_unstored(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "short.db", timeout=0.2)
    storage.migrate()
    try:
        with storage._write():
            with pytest.raises(StorageUnavailable, match="busy"):
                storage.store_batch(batch("web-1", "late", delta("192.0.2.1", 1)), at(0))
            assert storage._group.queued() == 0
        assert totals(storage) == {}
        assert storage.store_batch(batch("web-1", "late", delta("192.0.2.1", 1)), at(1)) is True
    finally:
        storage.close()


def test_a_group_whose_transaction_fails_answers_every_member_with_the_error() -> None:
    lock = threading.Lock()
    runs: list[list[int]] = []

    def run(items: list[int], more: Callable[[], list[int]]) -> list[int | BaseException]:
        runs.append(items)
        raise StorageUnavailable("disk full")

    group: GroupCommit[int, int] = GroupCommit(lock, 60, run)
    errors: list[BaseException] = []

    def submit(n: int) -> Callable[[], None]:
        def go() -> None:
            try:
                group.submit(n)
            except StorageUnavailable as exc:
                errors.append(exc)
        return go

    lock.acquire()
    threads = [threading.Thread(target=submit(n)) for n in range(3)]
    for thread in threads:
        thread.start()
    assert group.wait_queued(3, timeout=60)
    lock.release()
    for thread in threads:
        thread.join()
    assert [sorted(items) for items in runs] == [[0, 1, 2]]
    assert len(errors) == 3


def test_a_batch_queued_while_the_leader_stores_joins_its_transaction_before_the_commit() -> None:
    """What makes groups with two agents: the second arrives while the first is being stored."""
    lock = threading.Lock()
    transactions: list[list[str]] = []
    running = threading.Event()

    def run(items: list[str], more: Callable[[], list[str]]) -> list[str]:
        stored = list(items)
        running.set()
        assert group.wait_queued(1, timeout=60)  # the second agent's batch arrives meanwhile
        while late := more():
            stored += late
        transactions.append(stored)
        return [f"stored {item}" for item in stored]

    group: GroupCommit[str, str] = GroupCommit(lock, 60, run)
    answers: dict[str, str] = {}
    first = threading.Thread(target=lambda: answers.update(a=group.submit("a")))
    first.start()
    assert running.wait(60)
    answers["b"] = group.submit("b")
    first.join()
    assert transactions == [["a", "b"]]
    assert answers == {"a": "stored a", "b": "stored b"}


def test_one_agents_addresses_write_no_ip_agents_row_until_a_second_agent_counts_them(sqlite: SqliteStorage) -> None:
    """Migration 9 on SQLite: one B-tree row per address and batch while one agent counts it."""
    sqlite.store_batch(batch("a", "1", delta("192.0.2.1", 5), delta("192.0.2.2", 1)), at(0))
    sqlite.store_batch(batch("a", "2", delta("192.0.2.1", 2)), at(1))

    def rows() -> tuple[list[tuple[str, str | None]], list[tuple[str, str, int]]]:
        with sqlite._read() as cur:
            cur.execute("SELECT ip, agent FROM ips ORDER BY ip")
            ips = cur.fetchall()
            cur.execute("SELECT ip, agent, total FROM ip_agents ORDER BY ip, agent")
            return ips, cur.fetchall()

    assert rows() == ([("192.0.2.1", "a"), ("192.0.2.2", "a")], [])
    # The second agent in the same group as a batch of the first: both moves happen in order.
    outcomes = stored_together(sqlite, [batch("b", "1", delta("192.0.2.1", 4)), batch("a", "3", delta("192.0.2.2", 1))])
    assert outcomes == [True, True]
    assert rows() == ([("192.0.2.1", None), ("192.0.2.2", "a")], [("192.0.2.1", "a", 7), ("192.0.2.1", "b", 4)])
    assert totals(sqlite) == {"192.0.2.1": 11, "192.0.2.2": 2}


def test_addresses_stored_before_migration_9_keep_their_ip_agents_rows(sqlite: SqliteStorage) -> None:
    """A database from before: `ips.agent` NULL and one `ip_agents` row per agent (what the old
    writes left). New batches of the same agent go on adding to `ip_agents`; a new address of it
    takes the new form; the reads give the same numbers for both."""
    sqlite.store_batch(batch("a", "1", delta("192.0.2.1", 5, first=10, last=20)), at(0))
    with sqlite._write() as cur:  # as the writes before migration 9 left it
        cur.execute("UPDATE ips SET agent = NULL")
        cur.execute("INSERT INTO ip_agents (ip, agent, total, first_seen, last_seen) "
                    "SELECT ip, 'a', total, first_seen, last_seen FROM ips")
    sqlite.store_batch(batch("a", "2", delta("192.0.2.1", 2, first=30, last=30), delta("192.0.2.2", 1)), at(1))
    with sqlite._read() as cur:
        cur.execute("SELECT ip, agent, total FROM ip_agents ORDER BY ip")
        assert cur.fetchall() == [("192.0.2.1", "a", 7)]
    detail = sqlite.get_ip("192.0.2.1")
    assert detail is not None and [(r.agent, r.count, r.first_seen, r.last_seen) for r in detail.by_agent] == [
        ("a", 7, at(10), at(30))]
    assert [(r.ip, r.count, r.agents) for r in sqlite.list_ips(IpQuery(agent="a"))] == [
        ("192.0.2.1", 7, 1), ("192.0.2.2", 1, 1)]


@pytest.mark.parametrize("second", ["A", "a ", "ab", "`"])
def test_an_agent_whose_name_looks_like_the_sole_agents_is_a_second_agent(sqlite: SqliteStorage, second: str) -> None:
    """While one agent alone has written (no `ip_agents` row, no other name in `agents`), a batch
    of it skips the `ip_agents` statement (storage/sqlite.py, OTHER_AGENTS). A name that differs
    by case, a trailing space, a suffix, or that sorts just before, is another agent: its batch
    must move the shared address to `ip_agents`, and the first agent's next batch must add there."""
    sqlite.store_batch(batch("a", "1", delta("192.0.2.1", 5), delta("192.0.2.2", 1)), at(0))
    sqlite.store_batch(batch(second, "1", delta("192.0.2.1", 4)), at(1))
    sqlite.store_batch(batch("a", "2", delta("192.0.2.1", 2), delta("192.0.2.2", 3)), at(2))
    with sqlite._read() as cur:
        cur.execute("SELECT ip, agent, total FROM ip_agents ORDER BY ip, agent")
        assert cur.fetchall() == sorted([("192.0.2.1", "a", 7), ("192.0.2.1", second, 4)])
    assert totals(sqlite) == {"192.0.2.1": 11, "192.0.2.2": 4}
    assert [(r.ip, r.count) for r in sqlite.list_ips(IpQuery(agent="a"))] == [("192.0.2.1", 7), ("192.0.2.2", 4)]
    assert [(r.ip, r.count) for r in sqlite.list_ips(IpQuery(agent=second))] == [("192.0.2.1", 4)]
