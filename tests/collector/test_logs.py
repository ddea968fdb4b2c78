"""Log formats: key=value text that greps well, JSON lines that parse."""

from __future__ import annotations

import json
import logging

from remote_uploader.logs import JsonFormatter, KeyValueFormatter, fields


def make_record(message: str, **values: object) -> logging.LogRecord:
    record = logging.LogRecord("remote_uploader.collector.access", logging.INFO, __file__, 1, message, (), None)
    for key, value in fields(**values).items():
        setattr(record, key, value)
    return record


def test_key_value_lines_quote_only_what_needs_it() -> None:
    line = KeyValueFormatter().format(make_record("request", path="/v1/ips?a=1", status=200, who="a b", empty=""))
    assert line.split(" ", 1)[1] == (
        'level=info logger=remote_uploader.collector.access msg=request path="/v1/ips?a=1" status=200 '
        'who="a b" empty=""'
    )


def test_control_characters_cannot_forge_log_lines() -> None:
    line = KeyValueFormatter().format(make_record("request", path="/x\nlevel=error forged=1"))
    assert "\n" not in line and 'path="/x\\nlevel=error forged=1"' in line


def test_json_lines_carry_the_fields() -> None:
    document = json.loads(JsonFormatter().format(make_record("batch stored", records=3, agent="web-1", ok=True)))
    assert document["msg"] == "batch stored" and document["level"] == "info"
    assert (document["records"], document["agent"], document["ok"]) == (3, "web-1", True)
    assert document["ts"].endswith("Z")
