"""create_app(): the routers it includes and its one exception handler, keyed on the error's status.

Served by uvicorn in a thread on 127.0.0.1 (`server.uvicorn_server`, as `collector serve` runs it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType

import httpx
import pytest
from fastapi import FastAPI

from remote_uploader.collector.app import create_app
from remote_uploader.collector.server import bind, uvicorn_server
from remote_uploader.collector.settings import CollectorSettings
from remote_uploader.errors import ApiError, RequestError, StorageError, StorageUnavailable


class Teapot(RequestError):
    """An error the handler has never heard of: only its status, problems and headers count."""

    status = 418
    headers = MappingProxyType({"X-Brew": "later"})

    def problems(self) -> list[dict[str, str]]:
        return [{"field": "pot", "error": "is a teapot"}, {"field": "tea", "error": "none left"}]


def served(app: FastAPI, settings: CollectorSettings) -> Iterator[str]:
    sock = bind("127.0.0.1", 0)
    server = uvicorn_server(app, settings)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    settings = CollectorSettings(db=f"sqlite:///{tmp_path / 'collector.db'}", parse_workers=0, retry_after=7)
    app = create_app(settings)  # settings alone: the app opens, migrates and closes the database

    @app.get("/v1/test/teapot")
    def teapot() -> None:
        raise Teapot("short and stout")

    @app.get("/v1/test/locked")
    def locked() -> None:
        raise StorageUnavailable("database is locked (db.internal)")

    @app.get("/v1/test/broken")
    def broken() -> None:
        raise StorageError("no such table: secret_table")

    @app.get("/v1/test/busy")
    def busy() -> None:
        raise ApiError(429, "body", "too many batches in flight")

    yield from served(app, settings)


def test_an_error_is_answered_with_its_own_status_problems_and_headers(url: str) -> None:
    answer = httpx.get(url + "/v1/test/teapot")
    assert answer.status_code == 418 and answer.headers["X-Brew"] == "later"
    assert answer.json() == {"detail": [{"field": "pot", "error": "is a teapot"},
                                        {"field": "tea", "error": "none left"}]}


def test_a_database_failure_is_answered_without_its_message_and_counted(url: str) -> None:
    locked = httpx.get(url + "/v1/test/locked")
    assert (locked.status_code, locked.headers["Retry-After"]) == (503, "7")
    assert locked.json() == {"detail": [{"field": "storage", "error": "database unavailable; retry later"}]}
    broken = httpx.get(url + "/v1/test/broken")
    assert broken.status_code == 500 and "Retry-After" not in broken.headers
    assert broken.json() == {"detail": [{"field": "storage", "error": "database error"}]}
    metrics = httpx.get(url + "/metrics").text
    assert 'collector_storage_errors_total{kind="unavailable"} 1.0' in metrics
    assert 'collector_storage_errors_total{kind="error"} 1.0' in metrics


def test_every_429_and_503_says_when_to_come_back(url: str) -> None:
    busy = httpx.get(url + "/v1/test/busy")
    assert (busy.status_code, busy.headers["Retry-After"]) == (429, "7")


def test_the_routers_of_every_part_are_served(url: str) -> None:
    paths = httpx.get(url + "/openapi.json").json()["paths"]
    for path in ("/v1/batches", "/v1/ips", "/v1/blocklist", "/v1/decisions/stream", "/v1/rules/decisions"):
        assert path in paths
    assert httpx.get(url + "/v1/health").json()["status"] == "ok"
    assert httpx.get(url + "/").status_code == 200  # the dashboard's sign-in page
    method = httpx.put(url + "/v1/rules/decisions")
    assert method.status_code == 405 and method.headers["Allow"] == "DELETE, GET, POST"
