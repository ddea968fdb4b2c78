"""The SQLite store's page size: new stores get 4 KiB pages (what ingest costs least with on a
big store: docs/benchmarks.md, "SQLite page size on a big store"), an existing store keeps its own, and
`collector compact` converts one without losing or changing a row, or refuses and changes nothing."""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from remote_uploader.collector import cli
from remote_uploader.collector.batch import parse_batch
from remote_uploader.collector.storage.base import IpQuery
from remote_uploader.collector.storage.sqlite import PAGE_SIZE, SqliteStorage
from tests.helpers.batches import random_records, wire_batch
from tests.helpers.collector_fixtures import CollectorProcess
from tests.reliability.harness import fill, small_filesystem, tmpfs_unavailable_reason


def pragma(path: Path, name: str) -> object:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        conn.close()


def contents(path: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table, sorted: what a rewrite of the file must keep exactly."""
    conn = sqlite3.connect(path)
    try:
        tables = [name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY 1")]
        return {t: sorted(conn.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr) for t in tables}
    finally:
        conn.close()


def store_batches(storage: SqliteStorage, first: int, count: int, rng: random.Random) -> int:
    """Store batches b-first.. of 200 random records; the occurrences they hold."""
    occurrences = 0
    for n in range(first, first + count):
        records = random_records(rng, 200)
        occurrences += sum(r["count"] for r in records)
        assert storage.store_batch(parse_batch(json.dumps(wire_batch("web-1", f"b-{n}", records)).encode()),
                                   datetime.now(UTC))
    return occurrences


def total(storage: SqliteStorage) -> int:
    return sum(ip.count for ip in storage.list_ips(IpQuery(limit=100_000)))


def made_with_pages(path: Path, page_size: int) -> None:
    """A store as an earlier collector made it: its page size chosen before its first table."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA page_size={page_size}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    path.chmod(0o600)


@pytest.fixture
def old_store(tmp_path: Path) -> Iterator[Path]:
    """A 16 KiB store holding 5 batches, closed."""
    path = tmp_path / "old.db"
    made_with_pages(path, 16384)
    storage = SqliteStorage(path)
    storage.migrate()
    store_batches(storage, 0, 5, random.Random(1))
    storage.close()
    yield path


def test_a_new_store_has_pages_of_4_kib(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "new.db")
    storage.migrate()
    store_batches(storage, 0, 1, random.Random(2))
    storage.close()
    assert PAGE_SIZE == 4096
    assert pragma(tmp_path / "new.db", "page_size") == 4096


def test_a_store_made_with_16_kib_pages_keeps_them_and_takes_new_batches(old_store: Path) -> None:
    storage = SqliteStorage(old_store)
    storage.migrate()
    stored = total(storage)
    added = store_batches(storage, 5, 2, random.Random(3))
    assert total(storage) == stored + added
    storage.close()
    assert pragma(old_store, "page_size") == 16384


def test_compact_converts_a_16_kib_store_to_4_kib_and_keeps_every_row(
        old_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = contents(old_store)
    assert cli.main(["compact", "--db", f"sqlite://{old_store}"]) == 0
    out = capsys.readouterr().out
    assert "16,384 -> 4,096" in out and str(old_store) in out
    assert pragma(old_store, "page_size") == 4096
    assert pragma(old_store, "journal_mode") == "wal"
    assert contents(old_store) == before
    assert stat.S_IMODE(old_store.stat().st_mode) == 0o600
    # and the converted store takes batches as before, each counted once
    storage = SqliteStorage(old_store)
    storage.migrate()
    stored = total(storage)
    added = store_batches(storage, 5, 1, random.Random(4))
    replay = wire_batch("web-1", "b-0", random_records(random.Random(99), 3))
    assert not storage.store_batch(parse_batch(json.dumps(replay).encode()), datetime.now(UTC)), (
        "b-0 was stored before the rewrite: a duplicate after it too")
    assert total(storage) == stored + added
    storage.close()


def test_compact_refuses_a_store_in_use_and_changes_nothing(
        old_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = contents(old_store)
    serving = SqliteStorage(old_store)  # a collector that has the store open
    serving.migrate()
    config = tmp_path / "collector.toml"
    config.write_text(f'[collector]\ndb = "sqlite://{old_store}"\ndb_timeout = 0.2\n')
    try:
        assert cli.main(["compact", "-c", str(config)]) == 4
    finally:
        serving.close()
    err = capsys.readouterr().err
    assert str(old_store) in err and "in use by another process" in err.replace(str(old_store), "STORE")
    assert pragma(old_store, "page_size") == 16384
    assert pragma(old_store, "journal_mode") == "wal"
    assert contents(old_store) == before


def test_compact_names_what_it_cannot_rewrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "none.db"
    assert cli.main(["compact", "--db", f"sqlite://{missing}"]) == 4
    assert f"{missing}: no store there" in capsys.readouterr().err
    assert not missing.exists()
    assert cli.main(["compact", "--db", "postgresql://someone@127.0.0.1/db"]) == 2
    assert "config key db" in capsys.readouterr().err


@pytest.mark.skipif(tmpfs_unavailable_reason() is not None, reason=str(tmpfs_unavailable_reason()))
def test_compact_on_a_full_disk_fails_naming_the_store_and_loses_nothing(
        old_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with small_filesystem(tmp_path / "small", "4m") as small:
        store = small / "old.db"
        shutil.copyfile(old_store, store)
        store.chmod(0o600)
        before = contents(store)
        filler = fill(small)
        assert cli.main(["compact", "--db", f"sqlite://{store}"]) == 4
        err = capsys.readouterr().err
        assert str(store) in err and "not enough free space" in err.replace(str(store), "STORE"), err
        filler.unlink()  # space comes back (reading a WAL store needs some: its -shm file)
        assert contents(store) == before
        assert pragma(store, "page_size") == 16384
        assert cli.main(["compact", "--db", f"sqlite://{store}"]) == 0  # and the same command converts it
        assert pragma(store, "page_size") == 4096 and contents(store) == before



def test_a_collector_on_a_16_kib_store_says_at_start_how_to_convert_it(old_store: Path, tmp_path: Path) -> None:
    fresh = tmp_path / "fresh.db"
    for db, advised in ((old_store, True), (fresh, False)):
        collector = CollectorProcess(tmp_path, f"sqlite://{db}")
        collector.start()
        assert collector.stop() == 0
        lines = [line for line in collector.log().splitlines() if 'msg="store page size"' in line]
        if advised:
            assert len(lines) == 1 and "page_size=16384" in lines[0] and "collector compact" in lines[0], lines
        else:
            assert lines == [], "a store with 4 KiB pages needs no advice"
