"""The exception tree. Every error carries the data an operator needs (file, key, batch, status).

    RemoteUploaderError                 base; `exit_code` is what the CLI exits with
    ├── ConfigError                     a key in the config file, the environment or a flag is invalid
    ├── StateError                      the state directory or queue database cannot be used
    │   ├── StateLockedError            another agent holds the state directory lock
    │   └── CorruptStateError           the queue database is damaged or from a future schema
    ├── QueueFullError                  the queue reached its byte limit (reading pauses; never raised to users)
    ├── SourceError                     a log file cannot be read (reported, the other sources go on)
    └── DeliveryError                   the collector did not take a batch
        ├── RetryableDeliveryError      network error, timeout, 408, 429, 5xx: try again later
        └── PermanentDeliveryError      another 4xx: the batch goes to the dead-letter table

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


class StateError(RemoteUploaderError):
    exit_code = 4


class StateLockedError(StateError):
    pass


class CorruptStateError(StateError):
    pass


class QueueFullError(RemoteUploaderError):
    pass


class SourceError(RemoteUploaderError):
    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


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
