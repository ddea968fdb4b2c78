"""Collector fixtures: a real collector on 127.0.0.1 (in a thread, or a process), and a real PostgreSQL.

    collector        the collector app served in a thread on SQLite (parametrize indirectly with "postgres")
    collector_pg     the same on a fresh PostgreSQL database
    collector_any    parametrized: runs the test once on SQLite and once on PostgreSQL
    collector_process, collector_process_any
                     `collector serve` as a child process: for signals, exit codes, its log, SIGKILL
    pg_server        session-wide PostgreSQL 15 (initdb/pg_ctl); skipped only without binaries
    pg_url           a fresh, empty database on pg_server for one test

Both kinds have `.url`, `.token` (agent "test-agent"), `.db_url`, `.add_token(name)`, `.counts()`
(total count per address, read through the API), `.stop()` / `.start()` (a restart on the same
database and port) and helpers to post batches; a `CollectorProcess` also `.kill()`s (SIGKILL) and
has `.log()` and `.proc`.
"""

from __future__ import annotations

import gzip
import json
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.postgres import PostgresServer, find_bindir

__all__ = [
    "CollectorClient",
    "CollectorProcess",
    "CollectorThread",
    "collector",
    "collector_any",
    "collector_pg",
    "collector_process",
    "collector_process_any",
    "pg_server",
    "pg_url",
]

_LISTENING = re.compile(rb'msg="collector listening" url=(https?://\S+)')
START_TIMEOUT = 60.0


class CollectorClient:
    """What a test does with a running collector, wherever it runs: tokens, reads, batches."""

    url: str
    db_url: str
    token: str
    verify: ssl.SSLContext | bool = True

    # -- tokens and reads ---------------------------------------------------------------------

    def add_token(self, name: str, read_only: bool = False) -> str:
        """A new token for `name`, stored through the library (as `token add` does)."""
        from remote_uploader.collector.auth import create_token
        from remote_uploader.collector.storage import open_storage

        storage = open_storage(self.db_url, pool_size=1)
        try:
            storage.migrate()
            return create_token(storage, name, "read" if read_only else "agent", replace=True)
        finally:
            storage.close()

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    def get(self, path: str, token: str | None = None, **params: Any) -> httpx.Response:
        return httpx.get(self.url + path, params=params, headers=self.headers(token), timeout=60, verify=self.verify)

    def counts(self) -> dict[str, int]:
        """Total count per address, paging through GET /v1/ips."""
        totals: dict[str, int] = {}
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 10000}
            if cursor:
                params["cursor"] = cursor
            response = self.get("/v1/ips", **params)
            response.raise_for_status()
            page = response.json()
            for item in page["items"]:
                totals[item["ip"]] = item["count"]
            cursor = page["next_cursor"]
            if not cursor:
                return totals

    # -- sending ------------------------------------------------------------------------------

    def post_batch(
        self,
        batch: Mapping[str, Any] | bytes,
        *,
        token: str | None = None,
        compress: bool = True,
        headers: Mapping[str, str] | None = None,
        client: httpx.Client | None = None,
    ) -> httpx.Response:
        body = batch if isinstance(batch, bytes) else json.dumps(batch).encode()
        sent_headers = {"Content-Type": "application/json", **self.headers(token)}
        if compress:
            body = gzip.compress(body, compresslevel=1)
            sent_headers["Content-Encoding"] = "gzip"
        sent_headers.update(headers or {})
        if client is not None:
            return client.post(self.url + "/v1/batches", content=body, headers=sent_headers, timeout=120)
        return httpx.post(self.url + "/v1/batches", content=body, headers=sent_headers, timeout=120, verify=self.verify)


class CollectorProcess(CollectorClient):
    """`remote_uploader.collector.cli serve` as a child process, with an agent token."""

    def __init__(
        self,
        workdir: Path,
        db_url: str,
        extra_args: Sequence[str] = (),
        token: str | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        """`token`: an existing "test-agent" token of this database (another process shares it);
        `verify`: how to check the server's certificate when it serves HTTPS."""
        self.verify = verify
        self.workdir = workdir
        self.db_url = db_url
        self.extra_args = list(extra_args)
        self.port = 0
        self.url = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"collector-{id(self):x}.log"
        self.token = token or self.add_token("test-agent")

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("collector already running")
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        command = [
            sys.executable,
            "-m",
            "remote_uploader.collector.cli",
            "serve",
            "--db",
            self.db_url,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *self.extra_args,
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        deadline = time.monotonic() + START_TIMEOUT
        while not self.url or self.port == 0:
            self._check_alive()
            match = _LISTENING.search(self.log_path.read_bytes()[offset:])
            if match:
                self.url = match.group(1).decode()
                self.port = int(self.url.rsplit(":", 1)[1])
            elif time.monotonic() > deadline:
                raise RuntimeError(f"collector did not start:\n{self.log()}")
            else:
                time.sleep(0.05)
        while True:
            self._check_alive()
            try:
                if httpx.get(self.url + "/v1/health", timeout=5, verify=self.verify).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"collector not healthy:\n{self.log()}")
            time.sleep(0.05)

    def _check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"collector exited with {self.proc.returncode}:\n{self.log()}")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (graceful: in-flight requests finish) and wait; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class CollectorThread(CollectorClient):
    """The collector's app served by uvicorn in a thread of the test process, on 127.0.0.1.

    The same app, storage, settings and HTTP stack as `collector serve` (`create_app` on a migrated
    storage, uvicorn on a socket bound to port 0), without starting an interpreter per test: most
    API tests use this. What only a process has (signals and exit codes, its own log, SIGKILL, its
    memory, the command line's flags) is tested with `CollectorProcess`. `stop()` then `start()`
    restarts it on the same database and port, as a restart of the service would.
    """

    def __init__(self, workdir: Path, db_url: str, config: Path | None = None, token: str | None = None,
                 **overrides: object) -> None:
        """`config`: a collector TOML file; `overrides`: settings by key (as the flags give them)."""
        self.workdir = workdir
        self.db_url = db_url
        self.config = config
        self.overrides = overrides
        self.port = 0
        self.url = ""
        self.server: Any = None
        self.thread: threading.Thread | None = None
        self.token = token or self.add_token("test-agent")

    def start(self) -> None:
        from remote_uploader.collector.app import create_app
        from remote_uploader.collector.server import bind, uvicorn_server
        from remote_uploader.collector.settings import load
        from remote_uploader.collector.storage import open_storage

        if self.thread is not None and self.thread.is_alive():
            raise RuntimeError("collector already running")
        settings = load(self.config, overrides={"db": self.db_url, "host": "127.0.0.1", "port": self.port,
                                                **self.overrides}, environ={})
        storage = open_storage(settings.db, timeout=settings.db_timeout, pool_size=settings.pool_size)
        try:
            storage.migrate()
            sock = bind(settings.host, settings.port)
        except BaseException:
            storage.close()
            raise
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # The server `serve` runs (server.uvicorn_server), minus what belongs to a process: signal
        # handlers (uvicorn installs none outside the main thread) and the garbage collector's tuning.
        self.server = uvicorn_server(create_app(settings, storage, close_storage=True), settings)
        self.thread = threading.Thread(target=self._serve, args=(sock,), name=f"collector-{self.port}", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self.server.started:  # uvicorn sets it once the lifespan started and the socket listens
            if not self.thread.is_alive():
                raise RuntimeError("the collector thread ended while starting (its error is in the log above)")
            if time.monotonic() > deadline:
                raise RuntimeError("the collector thread did not start")
            time.sleep(0.01)

    def _serve(self, sock: socket.socket) -> None:
        try:
            self.server.run(sockets=[sock])
        finally:
            sock.close()

    def stop(self, timeout: float = 30) -> int:
        """Stop as SIGTERM would (in-flight requests finish, the lifespan closes the storage)."""
        if self.thread is None or not self.thread.is_alive():
            return 0
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise RuntimeError(f"the collector thread did not stop within {timeout} s")
        return 0


# -- PostgreSQL -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session (one per xdist worker)."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL binaries not found (no initdb/pg_ctl via pg_config --bindir): install postgresql-15")
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        pytest.skip("psycopg/psycopg-pool not installed: pip install -e '.[postgres]'")
    server = PostgresServer(bindir)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> Iterator[str]:
    url = pg_server.create_database()
    yield url
    pg_server.drop_database(url)


# -- collectors -------------------------------------------------------------------------------


def _db_url(request: pytest.FixtureRequest, workdir: Path, backend: str) -> str:
    if backend == "postgres":
        return str(request.getfixturevalue("pg_url"))
    if backend == "sqlite":
        return "sqlite://" + str(workdir / "collector.db")
    raise ValueError(f"unknown collector backend {backend!r}")


def _start_collector(request: pytest.FixtureRequest, workdir: Path, backend: str) -> CollectorThread:
    collector = CollectorThread(workdir, _db_url(request, workdir, backend))
    request.addfinalizer(collector.stop)
    collector.start()
    return collector


def _start_process(request: pytest.FixtureRequest, workdir: Path, backend: str) -> CollectorProcess:
    process = CollectorProcess(workdir, _db_url(request, workdir, backend))
    request.addfinalizer(process.stop)
    process.start()
    return process


@pytest.fixture
def collector(request: pytest.FixtureRequest, tmp_path: Path) -> CollectorThread:
    """A collector in a thread on SQLite; `@pytest.mark.parametrize("collector", ["postgres"], indirect=True)`
    switches."""
    return _start_collector(request, tmp_path, getattr(request, "param", "sqlite"))


@pytest.fixture
def collector_pg(request: pytest.FixtureRequest, tmp_path: Path) -> CollectorThread:
    return _start_collector(request, tmp_path, "postgres")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def collector_any(request: pytest.FixtureRequest, tmp_path: Path) -> CollectorThread:
    return _start_collector(request, tmp_path, request.param)


@pytest.fixture
def collector_process(request: pytest.FixtureRequest, tmp_path: Path) -> CollectorProcess:
    """`collector serve` as a child process on SQLite (indirect "postgres" switches): for what only a
    process has (signals, exit codes, its log, SIGKILL)."""
    return _start_process(request, tmp_path, getattr(request, "param", "sqlite"))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def collector_process_any(request: pytest.FixtureRequest, tmp_path: Path) -> CollectorProcess:
    return _start_process(request, tmp_path, request.param)
