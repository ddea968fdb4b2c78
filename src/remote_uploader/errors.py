"""The exception tree of both halves. Every error carries the data an operator needs (file, key,
batch, status), and what it maps to: `exit_code` at the command line, `status` as the
collector's HTTP answer.

    RemoteUploaderError                 base; `exit_code` is what the CLI exits with (1)
    ├── ConfigError                     a key in the config file, the environment or a flag is invalid (2)
    │   └── ConfigFileError             the config file itself is missing or unreadable
    ├── StateError                      the state directory or queue database cannot be used (4)
    │   ├── StateLockedError            another agent holds the state directory lock
    │   ├── CorruptStateError           the queue database is damaged or from a future schema
    │   └── DiskFullError               the queue could not be written (no space, I/O error); nothing lost
    ├── SourceError                     a log file cannot be read (reported, the other sources go on) (5)
    ├── LegacyImportError               the old script's files are in a shape the import does not understand (2)
    ├── DeliveryError                   the collector did not take a batch (3); `status` is its answer
    │   ├── PayloadTooLargeError        413: the batch must be split before it is sent again
    │   ├── RetryableDeliveryError      network error, timeout, 408, 429, 5xx: try again later
    │   │   ├── ConfigRefusedError      3xx, 404, 405, 421: a configuration problem; the data stays queued
    │   │   │   └── AuthRefusedError    401/403: the token (or the agent name it may send) is wrong
    │   │   └── NotACollectorError      a 2xx that is not a collector's answer: nothing is known stored
    │   └── PermanentDeliveryError      another 4xx: the batch goes to the dead-letter table
    ├── QueryError                      `ips`/`ip`/`blocklist`: the collector could not be asked, or refused (3)
    ├── RequestError                    the collector refuses a request: HTTP `status` (4xx), the
    │   │                               protocol's body `{"detail": [{"field", "error"}, ...]}`
    │   ├── ApiError                    any refusal naming one field (400, 401, 403, 404, 429...)
    │   │   └── BodyError               the body: 400 bad gzip, 413 too large, 415 type or encoding
    │   ├── BatchInvalid                400, listing every bad field of a batch
    │   ├── AgentMismatch               403: the batch names another agent than its token's
    │   └── ClientGone                  400 for the access log: the client left before its body ended
    └── CollectorError                  anything the collector reports to its operator
        ├── StorageError                the database failed in a way a retry will not fix (4; HTTP 500)
        │   ├── SchemaError             the database schema is newer than this program
        │   └── StorageUnavailable      the database is down, locked or overloaded (HTTP 503 + Retry-After)
        ├── TokenError                  `token add` / `token revoke` could not do what was asked
        ├── BouncerError                `bouncer add` could not do what was asked
        ├── BadInputError               a command's argument is invalid (names it: --duration, VALUE) (2)
        └── BadUrlError                 a `--db` URL names no backend we have (2)

Exit codes (both halves): 0 done; 1 other errors; 2 configuration or a bad argument; 3 not
delivered (data safely queued) or the collector could not be asked; 4 the state directory or the
collector's database; 5 a source could not be read (everything readable was delivered; `once`
and `extract`); 130 interrupted.

The collector's API has one exception handler (collector/app.py), which answers a
`RequestError` or a `StorageError` with its `status`, its `problems()` as the body and its
`headers`. This module imports neither the collector nor FastAPI: the agent loads it too.

The CLI boundary (`boundary()`, used by the commands of both halves) turns each error into one
sentence on stderr and its exit code; nothing below it prints. A message built from an
`i18n.Message` is shown translated there (`translated()`) and stays English in `str()`, which
is what the logs get.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from remote_uploader.i18n import Message, _

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_UNDELIVERED = 3
EXIT_STATE = 4
EXIT_SOURCE = 5
EXIT_INTERRUPTED = 130


class RemoteUploaderError(Exception):
    exit_code = EXIT_ERROR

    def translated(self) -> str:
        """The message for a person at the terminal, in the chosen language (English if it has none)."""
        first = self.args[0] if self.args else None
        return first.translated() if isinstance(first, Message) else str(self)


# -- configuration and state (both halves) ---------------------------------------------------


class ConfigError(RemoteUploaderError):
    """A configuration value is invalid. `key` is the dotted TOML key (e.g. ``batching.min_upload_batch``)."""

    exit_code = EXIT_CONFIG

    def __init__(self, key: str, reason: str | Message, origin: str = "") -> None:
        self.key = key
        self.reason = str(reason)
        self.origin = origin
        if origin:
            super().__init__(Message("config key {key} (from {origin}): {reason}",
                                     key=key, origin=origin, reason=reason))
        else:
            super().__init__(Message("config key {key}: {reason}", key=key, reason=reason))


class ConfigFileError(ConfigError):
    """A config file (-c, $REMOTE_UPLOADER_CONFIG) is missing or unreadable: named as a file, not as a key.

    `key` is what it is reported under: ``config`` for the agent's file, ``collector`` for the collector's.
    """

    def __init__(self, path: object, reason: str | Message, *, key: str = "config") -> None:
        RemoteUploaderError.__init__(self, Message("config file {path}: {reason}", path=path, reason=reason))
        self.key = key
        self.reason = str(reason)
        self.origin = str(path)


class StateError(RemoteUploaderError):
    exit_code = EXIT_STATE


class StateLockedError(StateError):
    pass


class CorruptStateError(StateError):
    pass


class DiskFullError(StateError):
    """The queue could not be written (no space left, a file-size limit, an I/O error): nothing was
    written, nothing was lost; the caller retries with the offsets unmoved."""


# -- the agent -------------------------------------------------------------------------------


class SourceError(RemoteUploaderError):
    exit_code = EXIT_SOURCE

    def __init__(self, path: str, reason: str | Message) -> None:
        self.path = path
        self.reason = str(reason)
        super().__init__(Message("cannot read {path}: {reason}", path=path, reason=reason))


class LegacyImportError(RemoteUploaderError):
    """The old script's pending queue or offsets file could not be taken over; nothing was changed."""

    exit_code = EXIT_CONFIG


class DeliveryError(RemoteUploaderError):
    """`status` is the collector's answer (None: no answer, e.g. a network error)."""

    exit_code = EXIT_UNDELIVERED

    def __init__(self, message: str | Message, status: int | None = None, retry_after: float | None = None) -> None:
        self.status = status
        self.retry_after = retry_after
        super().__init__(message)


class PayloadTooLargeError(DeliveryError):
    """413: the batch must be split before it can be sent."""


class RetryableDeliveryError(DeliveryError):
    pass


class ConfigRefusedError(RetryableDeliveryError):
    """401/403, 3xx, 404, 405, 421: a configuration problem, not a data problem, so the data stays
    queued (retried with the backoff) and the message says what to fix."""


class AuthRefusedError(ConfigRefusedError):
    """401/403: the token (or the agent name it may send) is wrong."""


class NotACollectorError(RetryableDeliveryError):
    """A 2xx answer that is not a collector's answer to this batch: nothing is known to be stored."""


class PermanentDeliveryError(DeliveryError):
    pass


class QueryError(RemoteUploaderError):
    """The collector could not be asked, or refused the question (its reason is in the message)."""

    exit_code = EXIT_UNDELIVERED


# -- the protocol, as the collector enforces it ----------------------------------------------


class RequestError(RemoteUploaderError):
    """The collector refuses a request: `status` is the HTTP answer, `problems()` its body's
    `detail` list, `headers` any headers the answer needs (WWW-Authenticate, Retry-After)."""

    status = 400
    headers: Mapping[str, str] = MappingProxyType({})

    def problems(self) -> list[dict[str, str]]:
        return [{"field": "request", "error": str(self)}]


class ApiError(RequestError):
    """A refusal naming one field: `{"detail": [{"field": field, "error": error}]}`."""

    def __init__(self, status: int, field: str, error: str, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.field = field
        self.error = error
        self.headers = headers or {}
        super().__init__(f"{status} {field}: {error}")

    def problems(self) -> list[dict[str, str]]:
        return [{"field": self.field, "error": self.error}]


class BodyError(ApiError):
    """The body cannot be used; `status` is the HTTP answer (400, 413, 415)."""

    def __init__(self, status: int, field: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status, field, message, headers)
        self.message = message
        self.args = (message,)


@dataclass(frozen=True, slots=True)
class FieldError:
    """One bad field of a batch, as the answer lists it."""

    field: str
    error: str

    def to_json(self) -> dict[str, str]:
        return {"field": self.field, "error": self.error}


class BatchInvalid(RequestError):
    """A batch that breaks the protocol: 400 with every bad field (up to a bound) listed."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e.field}: {e.error}" for e in errors[:5]))

    def __reduce__(self) -> tuple[type[BatchInvalid], tuple[list[FieldError]]]:
        return BatchInvalid, (self.errors,)  # raised in a parsing worker process, re-raised here

    def problems(self) -> list[dict[str, str]]:
        return [error.to_json() for error in self.errors]


class AgentMismatch(RequestError):
    """The batch names another agent than the token's: configuration, not data (HTTP 403)."""

    status = 403

    def __init__(self, agent: str, expected: str) -> None:
        self.agent = agent
        self.expected = expected
        super().__init__(f"the batch's agent {agent!r} is not the token's name {expected!r}")

    def __reduce__(self) -> tuple[type[AgentMismatch], tuple[str, str]]:
        return AgentMismatch, (self.agent, self.expected)

    def problems(self) -> list[dict[str, str]]:
        return [{"field": "agent", "error": str(self)}]


class ClientGone(RequestError):
    """The client disconnected before sending its whole body: answered 400 with no body (nobody
    reads it; the status is for the access log)."""

    def problems(self) -> list[dict[str, str]]:
        return []


# -- the collector ---------------------------------------------------------------------------


class CollectorError(RemoteUploaderError):
    pass


class StorageError(CollectorError):
    """The answer's body never holds the database's own message (it may name hosts or tables):
    the operator finds it in the log."""

    exit_code = EXIT_STATE
    status = 500
    public = "database error"
    headers: Mapping[str, str] = MappingProxyType({})

    def problems(self) -> list[dict[str, str]]:
        return [{"field": "storage", "error": self.public}]


class SchemaError(StorageError):
    pass


class StorageUnavailable(StorageError):
    """The database did not answer in time (locked, down, pool exhausted).

    Callers answer 503 with Retry-After: the request may succeed later unchanged.
    """

    status = 503
    public = "database unavailable; retry later"


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
    exit_code = EXIT_CONFIG

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"database URL {url!r}: {reason}")


class BadInputError(CollectorError):
    exit_code = EXIT_CONFIG

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


# -- the command-line boundary ---------------------------------------------------------------


def boundary(prog: str, command: Callable[[], int]) -> int:
    """Run one command: an error becomes one translated sentence on stderr and its exit code.

    The one boundary of both halves (`remote-uploader ...` and `remote-uploader collector ...`):
    the same words, the same translation, the same exit codes. A reader of stdout that went
    away (`... | head -1`) ends the output, not the command.
    """
    try:
        return command()
    except RemoteUploaderError as exc:
        print(f"{prog}: {_('error')}: {exc.translated()}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        stdout_gone()
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def stdout_gone() -> None:
    """Point stdout at /dev/null: the rest of the output (and the flush at exit) goes nowhere,
    and the command goes on (or ends) as if it had been read."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
