"""Collector exceptions, below the project tree in `remote_uploader.errors`.

    RemoteUploaderError
    └── CollectorError                  anything the collector reports to its operator
        ├── StorageError                the database failed in a way a retry will not fix
        │   ├── SchemaError             the database schema is newer than this program
        │   └── StorageUnavailable      the database is down, locked or overloaded: HTTP 503 + Retry-After
        ├── TokenError                  `token add` / `token revoke` could not do what was asked
        ├── BouncerError                `bouncer add` could not do what was asked
        ├── BadInputError               a command's argument is invalid (names it: --duration, VALUE)
        └── BadUrlError                 a `--db` URL names no backend we have

Configuration errors are `remote_uploader.errors.ConfigError` (they name the TOML key).
"""

from __future__ import annotations

from remote_uploader.errors import RemoteUploaderError


class CollectorError(RemoteUploaderError):
    pass


class StorageError(CollectorError):
    exit_code = 4


class SchemaError(StorageError):
    pass


class StorageUnavailable(StorageError):
    """The database did not answer in time (locked, down, pool exhausted).

    Callers answer 503 with Retry-After: the request may succeed later unchanged.
    """


class TokenError(CollectorError):
    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"token {name!r}: {reason}")


class BouncerError(CollectorError):
    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"bouncer {name!r}: {reason}")


class BadUrlError(CollectorError):
    exit_code = 2

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"database URL {url!r}: {reason}")


class BadInputError(CollectorError):
    exit_code = 2

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")
