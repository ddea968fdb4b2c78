"""The `storage` fixture (every contract test runs on SQLite and on a real PostgreSQL) and
`make_collector` (collectors in threads sharing a database)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from remote_uploader.collector.storage.base import Storage
from tests.helpers.collector_fixtures import CollectorThread


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    opened: Storage
    if request.param == "sqlite":
        from remote_uploader.collector.storage.sqlite import SqliteStorage

        opened = SqliteStorage(tmp_path / "collector.db", timeout=2)
    else:
        from remote_uploader.collector.storage.postgres import PostgresStorage

        opened = PostgresStorage(request.getfixturevalue("pg_url"), timeout=2, pool_size=8)
    opened.migrate()
    yield opened
    opened.close()


@pytest.fixture
def make_collector(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., CollectorThread]:
    """Start collectors (in threads) with a config; several calls with one backend share one database."""
    made: list[CollectorThread] = []

    def make(backend: str = "sqlite", config: str = "", db_url: str | None = None) -> CollectorThread:
        workdir = tmp_path / f"collector-{len(made)}"
        workdir.mkdir()
        if db_url is None:
            db_url = request.getfixturevalue("pg_url") if backend == "postgres" else f"sqlite://{tmp_path}/shared.db"
        path: Path | None = None
        if config:
            path = workdir / "collector.toml"
            path.write_text("[collector]\n" + config)
        shared = next((c.token for c in made if c.db_url == db_url), None)
        collector = CollectorThread(workdir, db_url, path, token=shared)
        request.addfinalizer(collector.stop)
        collector.start()
        made.append(collector)
        return collector

    return make
