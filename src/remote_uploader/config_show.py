"""`config show`: the effective configuration, every key with its value and where it came from.

A value is what the agent will use (the host name for an unset `agent.id`, the core count for
`agent.workers = 0`, the resolved state directory), so what is shown is what runs. A token is
never shown: `server.token` reads ``***`` when one is set.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from remote_uploader.config import ENV_PREFIX, KNOWN_KEYS, SECRET_KEYS, Effective

HIDDEN = "***"


def _origin(where: str) -> str:
    """`default`, `profile NAME`, the file's path, `environment VAR` or `command line`."""
    return f"environment {where}" if where.startswith(ENV_PREFIX) else where


def _value(effective: Effective, key: str) -> Any:
    section, name = key.split(".", 1)
    value = getattr(getattr(effective.config, section, None), name, effective.values.get(key))
    if key in SECRET_KEYS:
        return HIDDEN if value else ""
    if isinstance(value, Path):
        return str(value)
    return value


def describe(effective: Effective) -> dict[str, Any]:
    """{"keys": {dotted key: {"value", "origin"}}, "sources": [...], "config_file": path or null}."""
    keys = {key: {"value": _value(effective, key), "origin": _origin(effective.origins.get(key, "default"))}
            for key in sorted(KNOWN_KEYS)}
    sources = [{"paths": list(s.paths), "regex": s.regex, "exclude": list(s.exclude), "name": s.name,
                "timestamp_pattern": s.timestamp_pattern, "origin": _origin(effective.sources_origin)}
               for s in effective.config.sources]
    return {"config_file": effective.config.origin or None, "keys": keys, "sources": sources}


def to_json(effective: Effective) -> str:
    return json.dumps(describe(effective), indent=2, sort_keys=True)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a valid TOML basic string


def to_toml(effective: Effective) -> str:
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
        lines.append(f"{name} = {_toml(item['value'])}  # {item['origin']}")
    for source in shown["sources"]:
        lines += ["", f"[[sources]]  # {source['origin']}", f"paths = {_toml(source['paths'])}"]
        if source["regex"] is not None:
            lines.append(f"regex = {_toml(source['regex'])}")
        lines += [f"exclude = {_toml(source['exclude'])}", f"name = {_toml(source['name'])}"]
        if source["timestamp_pattern"] is not None:
            lines.append(f"timestamp_pattern = {_toml(source['timestamp_pattern'])}")
    return "\n".join(lines) + "\n"
