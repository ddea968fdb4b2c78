"""`config show` of both halves: the effective configuration, every key with its value and where it
came from, from the one settings table (settings.py).

A value is what will be used (the host name for an unset `agent.id`, the core count for
`agent.workers = 0`, the resolved state directory or database), so what is shown is what runs. A
secret is never shown: `server.token` reads ``***`` when one is set.
"""

from __future__ import annotations

import json
from typing import Any

from remote_uploader.settings import ENV_PREFIX, Effective

HIDDEN = "***"


def _origin(where: str) -> str:
    """`default`, `profile NAME`, the file's path, `environment VAR` or `command line`."""
    return f"environment {where}" if where.startswith(ENV_PREFIX) else where


def _plain(value: Any) -> Any:
    """JSON's and TOML's types: a path, a network or a Secret becomes its text, a tuple a list."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return str(value)


def describe(effective: Effective[Any]) -> dict[str, Any]:
    """{"config_file": path or null, "keys": {dotted key: {"value", "origin"}}, and each array of tables
    (the agent's "sources"), its tables with an "origin"}."""
    keys = {}
    for name in sorted(effective.table.keys):
        value = effective.values[name]
        shown = (HIDDEN if value else "") if effective.table.keys[name].secret else _plain(value)
        keys[name] = {"value": shown, "origin": _origin(effective.origins.get(name, "default"))}
    arrays = {name: [{**{key: _plain(value) for key, value in item.items()}, "origin": _origin(origin)}
                     for item in items]
              for name, (items, origin) in effective.arrays.items()}
    return {"config_file": effective.config_file or None, "keys": keys, **arrays}


def to_json(effective: Effective[Any]) -> str:
    return json.dumps(describe(effective), indent=2, sort_keys=True)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(key)} = {_toml(item)}" for key, item in value.items()) + "}"
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a valid TOML basic string


def _accepted(effective: Effective[Any], key: str, value: Any) -> bool:
    """Whether the key takes the value back from a file; one it would refuse (the collector's unset
    `tls_cert`, an empty string) is written as a comment, so the document stays one -c accepts."""
    try:
        effective.table.keys[key].parse(value)
    except ValueError:
        return False
    return True


def to_toml(effective: Effective[Any]) -> str:
    """A TOML document `-c` would accept, each line commented with where its value came from."""
    shown = describe(effective)
    where = shown["config_file"] or "none (built-in defaults)"
    lines = [f"# effective configuration; config file: {where}"]
    section = ""
    for key, item in shown["keys"].items():
        head, name = key.split(".", 1)
        if head != section:
            lines += ["", f"[{head}]"]
            section = head
        line = f"{name} = {_toml(item['value'])}  # {item['origin']}"
        lines.append(line if _accepted(effective, key, item["value"]) else "# " + line)
    for array in effective.arrays:
        for table in shown[array]:
            lines += ["", f"[[{array}]]  # {table['origin']}"]
            lines += [f"{key} = {_toml(value)}" for key, value in table.items()
                      if key != "origin" and value is not None]  # TOML has no null: an unset regex is left out
    return "\n".join(lines) + "\n"
