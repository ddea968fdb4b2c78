"""The `storage` fixture: every contract test runs on SQLite and on a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from remote_uploader.collector.storage.base import Storage
from tests.helpers.collector_fixtures import CollectorProcess


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
def make_collector(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., CollectorProcess]:
    """Start collectors with a config; several calls with one backend share one database."""
    made: list[CollectorProcess] = []

    def make(backend: str = "sqlite", config: str = "", db_url: str | None = None) -> CollectorProcess:
        workdir = tmp_path / f"collector-{len(made)}"
        workdir.mkdir()
        if db_url is None:
            db_url = request.getfixturevalue("pg_url") if backend == "postgres" else f"sqlite://{tmp_path}/shared.db"
        extra: list[str] = []
        if config:
            path = workdir / "collector.toml"
            path.write_text("[collector]\n" + config)
            extra = ["-c", str(path)]
        shared = next((p.token for p in made if p.db_url == db_url), None)
        process = CollectorProcess(workdir, db_url, extra, token=shared)
        request.addfinalizer(process.stop)
        process.start()
        made.append(process)
        return process

    return make
