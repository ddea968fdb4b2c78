"""`serve(settings)`: the collector as a process: the database opened and migrated, the socket
bound, the garbage collector tuned, uvicorn run until SIGINT or SIGTERM.

The command line (`collector serve`) loads the settings, configures logging and calls this; the
app itself (routes, errors) is `create_app` in app.py.
"""

from __future__ import annotations

import gc
import logging
import signal
import socket
import ssl
from typing import Any

from remote_uploader.collector.settings import CollectorSettings
from remote_uploader.collector.storage import open_storage
from remote_uploader.collector.storage.base import Storage
from remote_uploader.errors import EXIT_OK, CollectorError, ConfigError
from remote_uploader.logs import fields

logger = logging.getLogger(__name__)


def _advise_page_size(storage: Storage) -> None:
    """A SQLite store made before new stores got 4 KiB pages keeps its 16 KiB ones, which cost a
    big store about 1.6x the ingest CPU per record (docs/benchmarks.md): say once, at start, how to
    convert it, since nothing else would tell the operator."""
    from remote_uploader.collector.storage.sqlite import PAGE_SIZE, SqliteStorage

    if isinstance(storage, SqliteStorage) and (size := storage.page_size()) != PAGE_SIZE:
        logger.info("store page size", extra=fields(
            page_size=size, ingest_best=PAGE_SIZE,
            convert="stop the collector, then run: remote-uploader collector compact"))


def serve(settings: CollectorSettings, *, create_dir: bool = False) -> int:
    """Serve until asked to stop; 0 after a clean stop. `create_dir`: make the directory of a
    SQLite database that does not exist yet."""
    try:
        import uvicorn  # noqa: F401  (here only to say which extra is missing; uvicorn_server uses it)

        from remote_uploader.collector.app import create_app
    except ImportError as exc:  # an agent-only install (`pip install .`): say which extra serves
        raise CollectorError(
            f"the collector service needs the [collector] extra, which is not installed ({exc.name} is "
            "missing): pip install 'remote-uploader[collector]' (from a checkout: pip install '.[collector]')"
        ) from None
    if settings.tls_cert:
        check_tls(settings.tls_cert, settings.tls_key)
    storage = open_storage(settings.db, timeout=settings.db_timeout, pool_size=settings.pool_size,
                           create_dir=create_dir)
    try:
        version = storage.migrate()
        sock = bind(settings.host, settings.port)
    except BaseException:
        storage.close()
        raise
    app = create_app(settings, storage, close_storage=True)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    scheme = "https" if settings.tls_cert else "http"
    tune_gc()
    logger.info("collector listening", extra=fields(url=f"{scheme}://{shown}:{port}", db=storage.url, schema=version))
    _advise_page_size(storage)
    if settings.dashboard:
        logger.info("dashboard",
                    extra=fields(url=f"{scheme}://{shown}:{port}/", anonymous=settings.dashboard_anonymous))
    server = uvicorn_server(app, settings)
    # uvicorn handles SIGINT/SIGTERM itself (stop accepting, finish in-flight requests, run the
    # lifespan shutdown), then re-raises the signal to the handler that was installed before it.
    # A no-op handler there makes a requested stop what it is: a clean exit 0.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    logger.info("collector stopped")
    return EXIT_OK


def uvicorn_server(app: Any, settings: CollectorSettings) -> Any:
    """The uvicorn server of `app` as `serve` runs it (tests serve the app in a thread with this
    too, so that they run what production runs): `server.run(sockets=[...])` serves until
    `server.should_exit`."""
    import uvicorn

    return uvicorn.Server(
        uvicorn.Config(
            app,
            log_config=None,  # our handlers (logs.configure) format uvicorn's messages too
            access_log=False,  # logs.AccessLog writes the access log, without tokens
            lifespan="on",
            timeout_graceful_shutdown=int(settings.graceful_timeout),
            server_header=False,
            ssl_certfile=settings.tls_cert or None,
            ssl_keyfile=settings.tls_key or None,
        )
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket on host:port (port 0: the kernel picks a free one)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise ConfigError("collector.port", f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def tune_gc() -> None:
    """Ingest makes hundreds of thousands of short-lived objects per big batch, none in cycles;
    with the default thresholds the cyclic collector would run hundreds of times per batch
    over every live object. Objects alive now (modules, the app) are frozen out of its scans,
    and it runs less often: about a third less CPU per batch."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def check_tls(cert: str, key: str) -> None:
    """Load the certificate and key now, so that a bad path is one clear error, not a traceback."""
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("collector.tls_cert", f"cannot load {cert} / {key}: {exc}") from None
