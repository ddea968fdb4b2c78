"""The collector's settings: its keys, declared once in `CollectorSettings`, and `load()`.

The machinery is settings.py's, the agent's too. Precedence, lowest first: the defaults below, the
`[collector]` table of a TOML file (other tables of a file shared with an agent are ignored),
environment variables `REMOTE_UPLOADER_COLLECTOR_<KEY>` (lists comma-separated), command-line
flags. Every error names the key (`collector.port`) and where the bad value came from. Unlike the
agent's, these parsers take typed values only (`port = "80"` in a file is refused): environment
text is converted first, by the type of the key's default.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from remote_uploader.durations import DurationError, parse_duration
from remote_uploader.errors import ConfigError
from remote_uploader.protocol import Network
from remote_uploader.settings import Effective, Parser, Table, default_state_dir, read_toml, setting

MIB = 1024 * 1024


def default_db_url() -> str:
    """SQLite in the state directory (settings.default_state_dir, the agent's rule)."""
    return "sqlite://" + str(default_state_dir() / "collector.db")


# --- value parsers: a value from the file, a flag or (converted) the environment -> typed value --------


def _int(low: int, high: int) -> Parser:
    def parse(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{value!r} is not an integer")
        if not low <= value <= high:
            raise ValueError(f"{value} is outside {low}..{high}")
        return value

    return parse


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{value!r} is not a number")
    if not 0 < value < 10**9:
        raise ValueError(f"{value} must be a positive number")
    return float(value)


def _text(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{value!r} must be a non-empty string")
    return value.strip()


def _choice(*choices: str) -> Parser:
    def parse(value: object) -> str:
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return str(value)

    return parse


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"{value!r} is not true or false")


def _networks(value: object) -> tuple[Network, ...]:
    if not isinstance(value, list):
        raise ValueError("must be a list of CIDR strings")
    networks: list[Network] = []
    for item in value:
        if not isinstance(item, str):
            raise ValueError(f"{item!r} is not a CIDR string")
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not a CIDR network") from None
    return tuple(networks)


def _duration(value: object) -> float:
    """A duration: `30s`, `15m`, `4h`, `7d`, combinations; a plain number is seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _seconds(value)
    try:
        return parse_duration(value).total_seconds()
    except DurationError as exc:
        raise ValueError(str(exc)) from None


def _bucket(value: object) -> int:
    seconds = _duration(value)
    if seconds != int(seconds) or not 1 <= seconds <= 86400 or 86400 % seconds:
        raise ValueError(f"{value!r} must be whole seconds that divide a day (10s, 1m, 5m, 1h...)")
    return int(seconds)


# --- environment text -> the type the key takes -----------------------------------------------------------


def _from_text(example: object) -> Callable[[str], object]:
    """How an environment variable's text becomes a value of the type of `example` (the default)."""

    def convert(text: str) -> object:
        text = text.strip()
        if isinstance(example, bool):
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{text!r} is not true or false")
        try:
            if isinstance(example, int):
                return int(text)
            if isinstance(example, float):
                return float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
        if isinstance(example, tuple):
            return [part.strip() for part in text.split(",") if part.strip()]
        return text

    return convert


def _number_or_text(text: str) -> object:
    """A duration from the environment: seconds, or text such as `2d`."""
    try:
        return float(text)
    except ValueError:
        return text.strip()


def _key(default: Any, parse: Parser, doc: str, *, factory: Callable[[], Any] | None = None, **more: Any) -> Any:
    """A collector key, its environment text converted by the type of its default."""
    more.setdefault("from_text", _from_text(factory() if factory else default))
    return setting(default, parse, doc, factory=factory, **more)


def _duration_key(default: float, shown: str, doc: str) -> Any:
    return setting(default, _duration, doc, shown=shown, from_text=_number_or_text)


def _parse_workers() -> int:
    return min(2, os.cpu_count() or 1)


@dataclass(frozen=True, slots=True)
class CollectorSettings:
    db: str = _key("", _text, "`sqlite:///PATH` or `postgresql://...`", shown="SQLite in the state directory",
                   flag="--db")
    host: str = _key("127.0.0.1", _text, "address to listen on (`0.0.0.0`, `::`)", flag="--host")
    port: int = _key(8080, _int(0, 65535), "port; `0` picks a free one (the log says which)", flag="--port")
    max_body: int = _key(16 * MIB, _int(1024, 2**40), "largest body in bytes, on the wire and after gzip (413 above)",
                         shown="`16777216` (16 MiB)", flag="--max-body")
    retention_days: float = _key(30.0, _seconds, "how long batch ids of agents without a delivery identity are "
                                 "remembered for duplicate detection (current agents' batches are recognised at any "
                                 "age by their producer's row, never pruned)", flag="--retention-days")
    prune_interval: float = _key(3600.0, _seconds, "seconds between prunings of old batch ids")
    allowlist: tuple[Network, ...] = _key((), _networks, "CIDR networks that never appear in a blocklist")
    log_format: str = _key("text", _choice("text", "json"), "`text` (key=value) or `json` (one object a line)",
                           flag="--log-format")
    access_log: bool = _key(True, _bool, "log every request", flag="--no-access-log")
    db_timeout: float = _key(5.0, _seconds, "seconds a request may wait for the database before 503")
    retry_after: int = _key(2, _int(1, 3600), "seconds in the `Retry-After` of 429 and 503 answers")
    max_concurrent_batches: int = _key(4, _int(1, 1024), "batches read and processed at once; more wait up to "
                                       "`db_timeout`, then 429")
    parse_workers: int = _key(None, _int(0, 64), "processes that parse bodies of 1 MiB and more (see "
                              "\"Performance\"); `0`: all in the server process", factory=_parse_workers,
                              shown="`2` (`1` on one core)", flag="--parse-workers")
    pool_size: int = _key(10, _int(1, 1000), "PostgreSQL connections per process")
    graceful_timeout: float = _key(10.0, _seconds, "seconds in-flight requests get to finish on SIGTERM")
    tls_cert: str = _key("", _text, "serve HTTPS with this PEM certificate chain (with `tls_key`)", shown="unset",
                         flag="--tls-cert")
    tls_key: str = _key("", _text, "the private key of `tls_cert`", shown="unset", flag="--tls-key")
    dashboard: bool = _key(True, _bool, "serve the web pages at `/` (read-only; sign in with a read token; "
                           "[dashboard.md](dashboard.md))", flag="--no-dashboard")
    dashboard_anonymous: bool = _key(False, _bool, "serve the pages without signing in: only on a trusted network")
    session_hours: float = _key(12.0, _seconds, "how long a dashboard session lasts at most (and it ends when its "
                                "token is revoked)")
    agent_silent_after: float = _key(900.0, _seconds, "seconds without a batch before an agent is shown silent")
    agent_lag_warn: float = _key(60.0, _seconds, "seconds between sealing and arrival of its last batch before an "
                                 "agent is shown lagging")
    # Time buckets and decisions (docs/decisions.md). Durations: `30s`, `15m`, `4h`, `7d`, or seconds.
    bucket: int = setting(60, _bucket, "seconds per time bucket; must divide a day (`10s`, `1m`, `5m`, `1h`)",
                          shown="`1m`", from_text=_number_or_text)
    bucket_retention: float = _duration_key(2 * 86400.0, "`2d`", "then buckets are folded into hours")
    hour_retention: float = _duration_key(30 * 86400.0, "`30d`", "then hour buckets are folded into days")
    day_retention: float = _duration_key(400 * 86400.0, "`400d`", "then day buckets are deleted")
    rollup_interval: float = _duration_key(300.0, "`5m`", "time between foldings of old buckets")
    decision_interval: float = _duration_key(1.0, "`1s`", "the expiry timer of decisions; batches are evaluated "
                                             "as they come")
    # `[[rules]]` tables of the same file (decisions/rules.py): not a key, not settable from the environment.
    rules: tuple[Any, ...] = ()


TABLE = Table({"collector": CollectorSettings})


def load(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
) -> CollectorSettings:
    """Defaults < TOML file `[collector]` < REMOTE_UPLOADER_COLLECTOR_* < `overrides` (flags).

    `overrides` entries that are None are ignored, so argparse values can be passed as they are.
    """
    return resolve(path, overrides, environ).config


def resolve(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Effective[CollectorSettings]:
    """`load()`, keeping where each value came from (`collector config show`)."""
    document: dict[str, Any] = {}
    origin = ""
    if path is not None:
        origin = str(path)
        document = read_toml(Path(path), key="collector")
        if "collector" not in document:
            raise ConfigError("collector", "the file has no [collector] table", origin)
    flags = {f"collector.{key}": value for key, value in (overrides or {}).items()}
    values, origins = TABLE.resolve(TABLE.from_document(document, origin, only_own_tables=True),
                                    TABLE.from_env(os.environ if environ is None else environ),
                                    TABLE.from_values(flags))
    settings = CollectorSettings(**TABLE.section("collector", values))
    if not settings.db:
        settings = replace(settings, db=default_db_url())
    if not settings.bucket_retention < settings.hour_retention < settings.day_retention:
        raise ConfigError(
            "collector.hour_retention", "retentions must grow: bucket_retention < hour_retention < day_retention"
        )
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ConfigError("collector.tls_key", "tls_cert and tls_key go together: set both or neither")
    if path is not None:
        settings = replace(settings, rules=_rules(document, origin))
    rules = document.get("rules")
    return Effective(settings, TABLE, TABLE.used({"collector": settings}), origins, origin,
                     {"rules": (rules if isinstance(rules, list) else [], origin)})


def _rules(document: Mapping[str, Any], origin: str) -> tuple[Any, ...]:
    from remote_uploader.collector.decisions.rules import parse_rules

    return parse_rules(document.get("rules"), origin)
