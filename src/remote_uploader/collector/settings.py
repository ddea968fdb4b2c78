"""Collector settings: one table of defaults, one `load()` that returns a frozen object.

Precedence, lowest first: the defaults below, the `[collector]` table of a TOML file, environment
variables `REMOTE_UPLOADER_COLLECTOR_<KEY>`, command-line flags. Every error names the key
(`collector.port`) and where the bad value came from.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from remote_uploader.collector.timeparse import DurationError, parse_duration
from remote_uploader.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

MIB = 1024 * 1024
ENV_PREFIX = "REMOTE_UPLOADER_COLLECTOR_"


def default_state_dir() -> Path:
    """`REMOTE_UPLOADER_STATE_DIR`, else /var/lib/remote-uploader as root, else ~/.local/state/..."""
    env = os.environ.get("REMOTE_UPLOADER_STATE_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/remote-uploader")
    return Path.home() / ".local" / "state" / "remote-uploader"


def default_db_url() -> str:
    return "sqlite://" + str(default_state_dir() / "collector.db")


@dataclass(frozen=True, slots=True)
class CollectorSettings:
    db: str = ""  # empty means default_db_url(), resolved by load()
    host: str = "127.0.0.1"
    port: int = 8080
    max_body: int = 16 * MIB
    retention_days: float = 30.0
    prune_interval: float = 3600.0
    allowlist: tuple[Network, ...] = ()
    log_format: str = "text"
    access_log: bool = True
    db_timeout: float = 5.0
    retry_after: int = 2
    max_concurrent_batches: int = 4
    parse_workers: int = field(default_factory=lambda: min(2, os.cpu_count() or 1))
    pool_size: int = 10
    graceful_timeout: float = 10.0
    tls_cert: str = ""  # PEM certificate chain; with tls_key, serve HTTPS
    tls_key: str = ""
    dashboard: bool = True  # the web pages at / (read-only; sign in with a read token)
    dashboard_anonymous: bool = False  # pages without signing in: only on a trusted network
    session_hours: float = 12.0  # a dashboard session lasts this long (and ends when its token is revoked)
    agent_silent_after: float = 900.0  # seconds without a batch before an agent is shown silent
    agent_lag_warn: float = 60.0  # seconds between sealing and arrival of the last batch that show "lagging"
    # Time buckets and decisions (docs/decisions.md). Durations in seconds.
    bucket: int = 60  # seconds per time bucket
    bucket_retention: float = 2 * 86400.0  # then folded into hours
    hour_retention: float = 30 * 86400.0  # then folded into days
    day_retention: float = 400 * 86400.0  # then deleted
    rollup_interval: float = 300.0
    decision_interval: float = 1.0  # expiry timer; batches are evaluated as they come
    # `[[rules]]` tables of the same file (decisions/rules.py), not settable from the environment.
    rules: tuple[Any, ...] = ()


# --- value parsers: (value, key, origin) -> typed value, or ConfigError ---------------------------


def _fail(key: str, origin: str, reason: str) -> ConfigError:
    return ConfigError(f"collector.{key}", reason, origin)


def _int(low: int, high: int) -> Callable[[object, str, str], int]:
    def parse(value: object, key: str, origin: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(key, origin, f"{value!r} is not an integer")
        if not low <= value <= high:
            raise _fail(key, origin, f"{value} is outside {low}..{high}")
        return value

    return parse


def _seconds(value: object, key: str, origin: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(key, origin, f"{value!r} is not a number")
    if not 0 < value < 10**9:
        raise _fail(key, origin, f"{value} must be a positive number")
    return float(value)


def _text(value: object, key: str, origin: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(key, origin, f"{value!r} must be a non-empty string")
    return value.strip()


def _choice(*choices: str) -> Callable[[object, str, str], str]:
    def parse(value: object, key: str, origin: str) -> str:
        if value not in choices:
            raise _fail(key, origin, f"{value!r} is not one of {', '.join(choices)}")
        return str(value)

    return parse


def _bool(value: object, key: str, origin: str) -> bool:
    if isinstance(value, bool):
        return value
    raise _fail(key, origin, f"{value!r} is not true or false")


def _networks(value: object, key: str, origin: str) -> tuple[Network, ...]:
    if not isinstance(value, list):
        raise _fail(key, origin, "must be a list of CIDR strings")
    networks: list[Network] = []
    for item in value:
        if not isinstance(item, str):
            raise _fail(key, origin, f"{item!r} is not a CIDR string")
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise _fail(key, origin, f"{item!r} is not a CIDR network") from None
    return tuple(networks)


def _duration(value: object, key: str, origin: str) -> float:
    """A duration: `30s`, `15m`, `4h`, `7d`, combinations; a plain number is seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _seconds(value, key, origin)
    try:
        return parse_duration(value).total_seconds()
    except DurationError as exc:
        raise _fail(key, origin, str(exc)) from None


def _bucket(value: object, key: str, origin: str) -> int:
    seconds = _duration(value, key, origin)
    if seconds != int(seconds) or not 1 <= seconds <= 86400 or 86400 % seconds:
        raise _fail(key, origin, f"{value!r} must be whole seconds that divide a day (10s, 1m, 5m, 1h...)")
    return int(seconds)


PARSERS: dict[str, Callable[[object, str, str], Any]] = {
    "db": _text,
    "host": _text,
    "port": _int(0, 65535),
    "max_body": _int(1024, 2**40),
    "retention_days": _seconds,
    "prune_interval": _seconds,
    "allowlist": _networks,
    "log_format": _choice("text", "json"),
    "access_log": _bool,
    "db_timeout": _seconds,
    "retry_after": _int(1, 3600),
    "max_concurrent_batches": _int(1, 1024),
    "parse_workers": _int(0, 64),
    "pool_size": _int(1, 1000),
    "graceful_timeout": _seconds,
    "tls_cert": _text,
    "tls_key": _text,
    "dashboard": _bool,
    "dashboard_anonymous": _bool,
    "session_hours": _seconds,
    "agent_silent_after": _seconds,
    "agent_lag_warn": _seconds,
    "bucket": _bucket,
    "bucket_retention": _duration,
    "hour_retention": _duration,
    "day_retention": _duration,
    "rollup_interval": _duration,
    "decision_interval": _duration,
}
assert set(PARSERS) | {"rules"} == {f.name for f in fields(CollectorSettings)}


def _from_environment(key: str, text: str, origin: str) -> object:
    """An environment variable's text as the type the key takes (comma-separated for lists)."""
    default = getattr(CollectorSettings(), key)
    text = text.strip()
    if isinstance(default, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise _fail(key, origin, f"{text!r} is not true or false")
    if PARSERS[key] in (_duration, _bucket):
        return _number_or_text(text)
    try:
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        raise _fail(key, origin, f"{text!r} is not a number") from None
    if isinstance(default, tuple):
        return [part.strip() for part in text.split(",") if part.strip()]
    return text


def _number_or_text(text: str) -> object:
    try:
        return float(text)
    except ValueError:
        return text


def load(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
) -> CollectorSettings:
    """Defaults < TOML file `[collector]` < REMOTE_UPLOADER_COLLECTOR_* < `overrides` (flags).

    `overrides` entries that are None are ignored, so argparse values can be passed as they are.
    """
    values: dict[str, Any] = {}
    if path is not None:
        values.update(_read_file(Path(path)))
        values["rules"] = _read_rules(Path(path))
    env = os.environ if environ is None else environ
    for key, parse in PARSERS.items():
        name = ENV_PREFIX + key.upper()
        if name in env:
            values[key] = parse(_from_environment(key, env[name], name), key, name)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in PARSERS:
            raise ConfigError(f"collector.{key}", "is not a collector setting", "command line")
        values[key] = PARSERS[key](value, key, "command line")
    settings = replace(CollectorSettings(), **values)
    if not settings.db:
        settings = replace(settings, db=default_db_url())
    if not settings.bucket_retention < settings.hour_retention < settings.day_retention:
        raise ConfigError(
            "collector.hour_retention", "retentions must grow: bucket_retention < hour_retention < day_retention"
        )
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ConfigError("collector.tls_key", "tls_cert and tls_key go together: set both or neither")
    return settings


def _read_file(path: Path) -> dict[str, Any]:
    origin = str(path)
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError("collector", f"cannot read the file: {exc.strerror or exc}", origin) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("collector", f"not valid TOML: {exc}", origin) from None
    table = document.get("collector")
    if table is None:
        raise ConfigError("collector", "the file has no [collector] table", origin)
    if not isinstance(table, dict):
        raise ConfigError("collector", "must be a table", origin)
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in PARSERS:
            raise ConfigError(f"collector.{key}", "unknown key", origin)
        values[key] = PARSERS[key](value, key, origin)
    return values


def _read_rules(path: Path) -> tuple[Any, ...]:
    from remote_uploader.collector.decisions.rules import parse_rules

    with path.open("rb") as handle:
        document = tomllib.load(handle)
    return parse_rules(document.get("rules"), str(path))
