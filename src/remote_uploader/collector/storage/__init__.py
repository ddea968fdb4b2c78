"""Collector storage: the `Storage` protocol (base.py) and its SQLite and PostgreSQL backends.

`open_storage(url)` picks the backend from the URL:

    sqlite:///var/lib/remote-uploader/collector.db    (also a bare path)
    postgresql://user@host:5432/dbname                 (also postgres://)
"""

from __future__ import annotations

from remote_uploader.collector.storage.base import Storage
from remote_uploader.errors import BadUrlError


def sqlite_path(url: str) -> str | None:
    """The file path of a SQLite URL (or bare path); None if `url` is not one."""
    if url.startswith("sqlite://"):
        path = url[len("sqlite://") :]
        if path.startswith("//"):
            path = "/" + path.lstrip("/")
        return path or None
    if "://" not in url and not url.startswith(("postgres:", "postgresql:")):
        return url
    return None


def open_storage(url: str, *, timeout: float = 5.0, pool_size: int = 10, create_dir: bool = True) -> Storage:
    """Open (but do not migrate) the database named by `url`; `create_dir`: a SQLite file's missing
    directory is created (else refused)."""
    path = sqlite_path(url)
    if path is not None:
        from remote_uploader.collector.storage.sqlite import SqliteStorage

        return SqliteStorage(path, timeout=timeout, create_dir=create_dir)
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from remote_uploader.collector.storage.postgres import PostgresStorage
        except ImportError as exc:
            raise BadUrlError(
                url, f"PostgreSQL support is not installed ({exc}); install remote-uploader[postgres]"
            ) from None
        return PostgresStorage(url, timeout=timeout, pool_size=pool_size)
    raise BadUrlError(url, "use sqlite:///PATH or postgresql://USER@HOST/DB")
