"""The exception tree. Every error carries the data an operator needs (file, key, batch, status).

    RemoteUploaderError                 base; `exit_code` is what the CLI exits with
    ├── ConfigError                     a key in the config file, the environment or a flag is invalid
    │   └── ConfigFileError             the config file itself is missing or unreadable
    ├── StateError                      the state directory or queue database cannot be used
    │   ├── StateLockedError            another agent holds the state directory lock
    │   └── CorruptStateError           the queue database is damaged or from a future schema
    ├── QueueFullError                  the queue reached its byte limit (reading pauses; never raised to users)
    ├── SourceError                     a log file cannot be read (reported, the other sources go on; exit 5)
    ├── LegacyImportError               the old script's files are in a shape the import does not understand
    └── DeliveryError                   the collector did not take a batch
        ├── RetryableDeliveryError      network error, timeout, 408, 429, 5xx: try again later
        └── PermanentDeliveryError      another 4xx: the batch goes to the dead-letter table

Exit codes: 0 done; 1 other errors; 2 configuration; 3 not delivered (data safely queued); 4 the
state directory; 5 a source could not be read (everything readable was delivered; `once` and
`extract`).

The CLI boundary turns each into one sentence and an exit code; nothing below it prints. A
message built from an `i18n.Message` is shown translated there (`translated()`) and stays
English in `str()`, which is what the logs get.
"""

from __future__ import annotations

from remote_uploader.i18n import Message


class RemoteUploaderError(Exception):
    exit_code = 1

    def translated(self) -> str:
        """The message for a person at the terminal, in the chosen language (English if it has none)."""
        first = self.args[0] if self.args else None
        return first.translated() if isinstance(first, Message) else str(self)


class ConfigError(RemoteUploaderError):
    """A configuration value is invalid. `key` is the dotted TOML key (e.g. ``batching.min_upload_batch``)."""

    exit_code = 2

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
    exit_code = 4


class StateLockedError(StateError):
    pass


class CorruptStateError(StateError):
    pass


class QueueFullError(RemoteUploaderError):
    pass


class SourceError(RemoteUploaderError):
    exit_code = 5

    def __init__(self, path: str, reason: str | Message) -> None:
        self.path = path
        self.reason = str(reason)
        super().__init__(Message("cannot read {path}: {reason}", path=path, reason=reason))


class LegacyImportError(RemoteUploaderError):
    """The old script's pending queue or offsets file could not be taken over; nothing was changed."""

    exit_code = 2


class DeliveryError(RemoteUploaderError):
    exit_code = 3

    def __init__(self, message: str | Message, status: int | None = None, retry_after: float | None = None) -> None:
        self.status = status
        self.retry_after = retry_after
        super().__init__(message)


class RetryableDeliveryError(DeliveryError):
    pass


class PermanentDeliveryError(DeliveryError):
    pass
