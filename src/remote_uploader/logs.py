"""Structured logs for both halves: `key=value` text or one JSON object a line.

Call sites log a short message plus fields: `logger.info("batch stored", extra=fields(agent=...))`.
Only the command lines configure handlers (`configure` for the collector; the agent's cli.py
puts `JsonFormatter` on its log file when `agent.log_format = "json"`).

One JSON line per record, the same names in both halves (docs/configuration.md, docs/collector.md):

    {"ts": "2026-12-02T15:04:05.123456Z", "level": "info", "logger": "remote_uploader...",
     "msg": "batch stored", "agent": "web-1", ..., "exc": "Traceback..."}

`ts` is UTC RFC 3339, `level` lower case, the `fields()` of the call follow (numbers, booleans
and null as they are, anything else as text), `exc` only with a traceback.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime


def fields(**values: object) -> dict[str, dict[str, object]]:
    """`extra=` for a log call: the key=value pairs to show after the message."""
    return {"kv": values}


def _quote(value: object) -> str:
    text = str(value)
    if text and not any(c in text for c in ' "=\\\n\t') and text.isprintable():
        return text
    return json.dumps(text, ensure_ascii=False)


class KeyValueFormatter(logging.Formatter):
    """`2024-05-01T12:00:00.123Z level=info logger=... msg="batch stored" agent=web-1 ...`"""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        parts = [moment, f"level={record.levelname.lower()}", f"logger={record.name}"]
        parts.append(f"msg={_quote(record.getMessage())}")
        for key, value in getattr(record, "kv", {}).items():
            parts.append(f"{key}={_quote(value)}")
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in getattr(record, "kv", {}).items():
            document[key] = value if isinstance(value, int | float | bool | None) else str(value)
        if record.exc_info:
            document["exc"] = self.formatException(record.exc_info)
        return json.dumps(document, ensure_ascii=False)


def configure(level: int = logging.INFO, fmt: str = "text") -> None:
    """Send logs to stderr in the chosen format. Only the command line calls this."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
