"""Configuration: one `load()` that returns frozen dataclasses, or raises ConfigError naming the key.

Precedence, lowest first: built-in defaults < profile < TOML file < environment < command-line flags.
Every key has a default in `DEFAULTS`; every key can be set from the environment as
``REMOTE_UPLOADER_<SECTION>_<KEY>`` (upper case), and from the command line as ``--set section.key=value``.
A few aliases keep the old script's names: ``REMOTE_UPLOADER_TOKEN``, ``REMOTE_UPLOADER_URL``,
``REMOTE_UPLOADER_STATE_DIR``, ``REMOTE_UPLOADER_MAX_MEMORY_IPS``, ``..._FORCE_UPLOAD_THRESHOLD``,
``..._MIN_UPLOAD_BATCH``.

All checking happens here, before anything runs, so a typo never surfaces an hour into a run.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from remote_uploader.errors import ConfigError, ConfigFileError
from remote_uploader.i18n import Message

ENV_PREFIX = "REMOTE_UPLOADER_"
SEARCH_PATH = (
    Path("remote-uploader.toml"),
    Path("~/.config/remote-uploader/config.toml"),
    Path("/etc/remote-uploader/config.toml"),
)


def default_state_dir() -> Path:
    """Not /tmp: it is wiped on reboot, and the queue must survive one."""
    if os.geteuid() == 0:
        return Path("/var/lib/remote-uploader")
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "remote-uploader"


# One table of every scalar key: dotted name -> default. `sources` is a list of tables (below).
DEFAULTS: dict[str, Any] = {
    "agent.id": None,  # the host name
    "agent.state_dir": None,  # default_state_dir()
    "agent.workers": 0,  # 0 = number of cores
    "agent.engine": "auto",
    "agent.stats_interval": 60.0,
    "agent.log_level": "info",
    "agent.log_format": "text",
    "agent.metrics_listen": "",
    "agent.lang": "",
    "server.url": "http://127.0.0.1:8080",
    "server.token": "",
    "server.token_file": "",
    "server.ca_file": "",
    "server.verify_tls": True,
    "server.timeout": 30.0,
    "server.upload_concurrency": 2,
    "server.compress": True,
    "server.max_retry_time": 60.0,
    "server.backoff_base": 0.5,
    "server.backoff_cap": 60.0,
    "server.retry_after_cap": 300.0,
    "batching.max_memory_ips": 10_000,
    "batching.force_upload_threshold": 5_000,
    "batching.min_upload_batch": 100,
    "batching.max_batch_age": 1.0,
    "queue.max_bytes": 512 * 1024 * 1024,
    "read.block_size": 1024 * 1024,
    "read.poll_interval": 1.0,
    "read.watch": "auto",
    "read.partial_line_idle": 5.0,
    "read.rotate_grace": 5.0,
    "read.skip_compressed": True,
    "shutdown.drain_timeout": 5.0,
    "legacy.pending_file": "/tmp/pending_upload_queue.json",
    "legacy.offsets_file": "/tmp/file_offsets.json",
}

PROFILES: dict[str, dict[str, Any]] = {
    "default": {},
    "large-memory": {"batching.max_memory_ips": 20_000, "batching.force_upload_threshold": 10_000},
    "small-memory": {
        "batching.max_memory_ips": 5_000,
        "batching.force_upload_threshold": 2_000,
        "read.block_size": 256 * 1024,
        "agent.workers": 1,
        "agent.engine": "stdlib",
    },
    "unstable-network": {
        "batching.min_upload_batch": 50,
        "server.backoff_cap": 30.0,
        "server.max_retry_time": 600.0,
    },
}

ENV_ALIASES = {
    "TOKEN": "server.token",
    "URL": "server.url",
    "STATE_DIR": "agent.state_dir",
    "AGENT_ID": "agent.id",
    "MAX_MEMORY_IPS": "batching.max_memory_ips",
    "FORCE_UPLOAD_THRESHOLD": "batching.force_upload_threshold",
    "MIN_UPLOAD_BATCH": "batching.min_upload_batch",
    "PROFILE": "agent.profile",
}

SOURCE_KEYS = {"paths", "regex", "exclude", "name", "timestamp_pattern"}
SECRET_KEYS = {"server.token"}


class Secret(str):
    """A string that never prints itself: tokens travel in these so no log or repr can leak them."""

    def __repr__(self) -> str:
        return "Secret('***')" if self else "Secret('')"


@dataclass(frozen=True)
class SourceConfig:
    paths: tuple[str, ...]
    regex: str | None = None
    exclude: tuple[str, ...] = ()
    name: str = ""
    # The log's own time of each line (remote_uploader/timepatterns.py): a preset or a strptime-like format.
    timestamp_pattern: str | None = None


@dataclass(frozen=True)
class AgentConfig:
    id: str
    state_dir: Path
    workers: int
    engine: str
    stats_interval: float
    log_level: str
    log_format: str
    metrics_listen: str
    lang: str
    profile: str


@dataclass(frozen=True)
class ServerConfig:
    url: str
    token: Secret = field(repr=False)
    ca_file: str
    verify_tls: bool
    timeout: float
    upload_concurrency: int
    compress: bool
    max_retry_time: float
    backoff_base: float
    backoff_cap: float
    retry_after_cap: float


@dataclass(frozen=True)
class BatchingConfig:
    max_memory_ips: int
    force_upload_threshold: int
    min_upload_batch: int
    max_batch_age: float


@dataclass(frozen=True)
class QueueConfig:
    max_bytes: int


@dataclass(frozen=True)
class ReadConfig:
    block_size: int
    poll_interval: float
    partial_line_idle: float
    rotate_grace: float
    skip_compressed: bool
    watch: str = "auto"  # auto | inotify | poll: how `forever` learns of writes (agent/watch.py)


@dataclass(frozen=True)
class ShutdownConfig:
    drain_timeout: float


@dataclass(frozen=True)
class LegacyConfig:
    """Where the old script kept its pending queue and offsets (`import-legacy` and its hint)."""

    pending_file: str = DEFAULTS["legacy.pending_file"]
    offsets_file: str = DEFAULTS["legacy.offsets_file"]


@dataclass(frozen=True)
class Config:
    agent: AgentConfig
    server: ServerConfig
    batching: BatchingConfig
    queue: QueueConfig
    read: ReadConfig
    shutdown: ShutdownConfig
    sources: tuple[SourceConfig, ...]
    origin: str = ""  # the file it came from, for messages
    legacy: LegacyConfig = field(default_factory=LegacyConfig)


@dataclass(frozen=True)
class Effective:
    """The configuration and, for every key, where its value came from (`config show`).

    `origins[key]` is ``default``, ``profile NAME``, the config file's path, the environment
    variable's name, or ``command line``; `sources_origin` likewise for `[[sources]]`.
    """

    config: Config
    values: dict[str, Any]
    origins: dict[str, str]
    sources_origin: str


# --- value parsing -----------------------------------------------------------------------------

def _invalid(template: str, **values: object) -> ValueError:
    """A parser's complaint about a value: English in logs, translated at the terminal (i18n.Message)."""
    return ValueError(Message(template, **values))


def _reason(exc: Exception) -> str | Message:
    """What a parser or compiler said: its Message if it gave one, else its text (e.g. from `re`)."""
    first = exc.args[0] if exc.args else None
    return first if isinstance(first, Message) else str(exc)


_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmMgGtT]?)(i?[bB])?\s*$")
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(value: Any) -> int:
    """Bytes from an int or a string such as ``512MiB``, ``4M``, ``1g``."""
    if isinstance(value, bool):
        raise _invalid("expected a size in bytes")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
    raise _invalid("expected a size such as 512MiB, got {value!r}", value=value)


def _as_int(value: Any) -> int:
    if isinstance(value, bool):
        raise _invalid("expected an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*-?[0-9_]+\s*", value):
        return int(value.replace("_", ""))
    raise _invalid("expected an integer, got {value!r}", value=value)


def _as_float(value: Any) -> float:
    if isinstance(value, bool):
        raise _invalid("expected a number, got a boolean")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise _invalid("expected a number, got {value!r}", value=value)


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"1", "true", "yes", "on", "0", "false", "no", "off"}:
        return value.strip().lower() in {"1", "true", "yes", "on"}
    raise _invalid("expected true or false, got {value!r}", value=value)


def _as_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise _invalid("expected a string, got {value!r}", value=value)


def _positive(parse: Callable[[Any], Any], *, allow_zero: bool = False) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        number = parse(value)
        if number < 0 or (number == 0 and not allow_zero):
            if allow_zero:
                raise _invalid("must be zero or more, got {number}", number=number)
            raise _invalid("must be greater than zero, got {number}", number=number)
        return number

    return check


def _one_of(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        text = _as_str(value).lower()
        if text not in choices:
            raise _invalid("must be one of {choices}, got {value!r}", choices=", ".join(choices), value=value)
        return text

    return check


def _url(value: Any) -> str:
    text = _as_str(value).rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise _invalid("expected an http:// or https:// URL, got {value!r}", value=value)
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise _invalid("bad port in {value!r}", value=value) from exc
    return text


def _listen(value: Any) -> str:
    text = _as_str(value)
    if text and not re.fullmatch(r"[0-9A-Za-z.\-\[\]:]+:[0-9]{1,5}", text):
        raise _invalid("expected HOST:PORT such as 127.0.0.1:9464, got {value!r}", value=value)
    return text


def _agent_id(value: Any) -> str:
    text = _as_str(value)
    if not re.fullmatch(r"[A-Za-z0-9._\-]{1,128}", text):
        raise _invalid("must be 1-128 characters of letters, digits, '.', '_' or '-'")
    return text


PARSERS: dict[str, Callable[[Any], Any]] = {
    "agent.id": _agent_id,
    "agent.state_dir": _as_str,
    "agent.workers": _positive(_as_int, allow_zero=True),
    "agent.engine": _one_of("auto", "stdlib", "hyperscan"),
    "agent.stats_interval": _positive(_as_float, allow_zero=True),
    "agent.log_level": _one_of("debug", "info", "warning", "error"),
    "agent.log_format": _one_of("text", "json"),
    "agent.metrics_listen": _listen,
    "agent.lang": _one_of("", "en", "zh"),
    "agent.profile": _one_of(*PROFILES),
    "server.url": _url,
    "server.token": _as_str,
    "server.token_file": _as_str,
    "server.ca_file": _as_str,
    "server.verify_tls": _as_bool,
    "server.timeout": _positive(_as_float),
    "server.upload_concurrency": _positive(_as_int),
    "server.compress": _as_bool,
    "server.max_retry_time": _positive(_as_float),
    "server.backoff_base": _positive(_as_float),
    "server.backoff_cap": _positive(_as_float),
    "server.retry_after_cap": _positive(_as_float),
    "batching.max_memory_ips": _positive(_as_int),
    "batching.force_upload_threshold": _positive(_as_int),
    "batching.min_upload_batch": _positive(_as_int),
    "batching.max_batch_age": _positive(_as_float),
    "queue.max_bytes": _positive(parse_size),
    "read.block_size": _positive(parse_size),
    "read.poll_interval": _positive(_as_float),
    "read.watch": _one_of("auto", "inotify", "poll"),
    "read.partial_line_idle": _positive(_as_float, allow_zero=True),
    "read.rotate_grace": _positive(_as_float, allow_zero=True),
    "read.skip_compressed": _as_bool,
    "shutdown.drain_timeout": _positive(_as_float, allow_zero=True),
    "legacy.pending_file": _as_str,
    "legacy.offsets_file": _as_str,
}
KNOWN_KEYS = set(PARSERS)


# --- loading ---------------------------------------------------------------------------------------


def find_config_file(explicit: str | None, env: Mapping[str, str]) -> Path | None:
    """The file named by -c, else $REMOTE_UPLOADER_CONFIG, else the first of SEARCH_PATH that exists."""
    named = explicit or env.get(ENV_PREFIX + "CONFIG")
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise ConfigFileError(path, Message("does not exist or is not a regular file"))
        return path
    for candidate in SEARCH_PATH:
        path = candidate.expanduser()
        if path.is_file():
            return path
    return None


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(path, Message("not valid TOML: {error}", error=exc)) from exc
    except OSError as exc:
        raise ConfigFileError(path, Message("cannot read it: {error}", error=exc.strerror)) from exc


def flatten_file(data: Mapping[str, Any], origin: str) -> tuple[dict[str, Any], list[Any]]:
    """Split the TOML document into dotted scalar keys and the raw `sources` list; reject unknown keys."""
    flat: dict[str, Any] = {}
    sources: list[Any] = []
    for section, body in data.items():
        if section == "sources":
            if not isinstance(body, list):
                raise ConfigError("sources", Message("must be an array of tables ([[sources]])"), origin)
            sources = body
            continue
        if not isinstance(body, dict):
            raise ConfigError(section, Message("unknown top-level key (expected a [section])"), origin)
        for key, value in body.items():
            dotted = f"{section}.{key}"
            if dotted not in KNOWN_KEYS:
                raise ConfigError(dotted, Message("unknown key"), origin)
            flat[dotted] = value
    return flat, sources


def env_overrides(env: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    """Dotted key -> (value, variable name) for every REMOTE_UPLOADER_* variable that names a key."""
    found: dict[str, tuple[Any, str]] = {}
    by_env_name = {ENV_PREFIX + key.replace(".", "_").upper(): key for key in KNOWN_KEYS}
    by_env_name.update({ENV_PREFIX + alias: key for alias, key in ENV_ALIASES.items()})
    for name, value in env.items():
        key = by_env_name.get(name)
        if key is not None:
            found[key] = (value, name)
    return found


def parse_set_option(items: list[str]) -> dict[str, Any]:
    """`--set section.key=value` pairs; values are parsed by the key's parser like environment strings."""
    result: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError(key or item, Message("expected --set section.key=value"))
        if key not in KNOWN_KEYS:
            raise ConfigError(key, Message("unknown key (in --set)"))
        if key in SECRET_KEYS:
            raise ConfigError(key, Message("is never taken on the command line, where every local user can read "
                                           "it (ps, /proc); use server.token_file or REMOTE_UPLOADER_TOKEN"))
        result[key] = value
    return result


def load(
    path: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    profile: str | None = None,
    sources: list[str] | None = None,
) -> Config:
    """Build the effective configuration. `overrides` are command-line values by dotted key."""
    return resolve(path, env=env, overrides=overrides, profile=profile, sources=sources).config


def resolve(
    path: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    profile: str | None = None,
    sources: list[str] | None = None,
) -> Effective:
    """`load()`, keeping where each value came from."""
    env = os.environ if env is None else env
    file_path = find_config_file(path, env)
    origin = str(file_path) if file_path else ""
    file_values, raw_sources = flatten_file(read_toml(file_path), origin) if file_path else ({}, [])
    env_values = env_overrides(env)

    chosen_profile = profile or (env_values.get("agent.profile") or (None, ""))[0]
    chosen_profile = chosen_profile or file_values.get("agent.profile") or "default"
    chosen_profile = _checked("agent.profile", chosen_profile, origin)
    profile_origin = ("command line" if profile else env_values["agent.profile"][1] if "agent.profile" in env_values
                      else origin if "agent.profile" in file_values else "default")

    raw: dict[str, tuple[Any, str]] = {key: (value, "default") for key, value in DEFAULTS.items()}
    raw.update({key: (value, f"profile {chosen_profile}") for key, value in PROFILES[chosen_profile].items()})
    raw.update({key: (value, origin) for key, value in file_values.items()})
    raw.update(env_values)
    raw.update({key: (value, "command line") for key, value in (overrides or {}).items()})

    values = {key: (_checked(key, value, where) if value is not None else None) for key, (value, where) in raw.items()}
    source_list = _cli_sources(sources) if sources else _parse_sources(raw_sources, origin)
    origins = {key: where for key, (_value, where) in raw.items()}
    origins["agent.profile"] = profile_origin
    values["agent.profile"] = chosen_profile
    return Effective(_assemble(values, source_list, chosen_profile, origin), values, origins,
                     "command line" if sources else origin if raw_sources else "default")


def _checked(key: str, value: Any, origin: str) -> Any:
    try:
        return PARSERS[key](value)
    except ValueError as exc:
        raise ConfigError(key, _reason(exc), origin) from exc


def _cli_sources(paths: list[str]) -> tuple[SourceConfig, ...]:
    return (SourceConfig(paths=tuple(paths)),)


def _parse_sources(raw_sources: list[Any], origin: str) -> tuple[SourceConfig, ...]:
    parsed = []
    for index, item in enumerate(raw_sources):
        where = f"sources[{index}]"
        if not isinstance(item, dict):
            raise ConfigError(where, Message("must be a table"), origin)
        unknown = set(item) - SOURCE_KEYS
        if unknown:
            raise ConfigError(f"{where}.{sorted(unknown)[0]}", Message("unknown key"), origin)
        paths = item.get("paths")
        if isinstance(paths, str):
            paths = [paths]
        if not paths or not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
            raise ConfigError(f"{where}.paths", Message("must be a non-empty list of file paths or globs"), origin)
        exclude = item.get("exclude", [])
        if not isinstance(exclude, list) or not all(isinstance(c, str) for c in exclude):
            raise ConfigError(f"{where}.exclude", Message("must be a list of CIDR strings"), origin)
        regex = item.get("regex")
        if regex is not None and not isinstance(regex, str):
            raise ConfigError(f"{where}.regex", Message("must be a string"), origin)
        name = item.get("name", "")
        if not isinstance(name, str):
            raise ConfigError(f"{where}.name", Message("must be a string"), origin)
        pattern = item.get("timestamp_pattern")
        if pattern is not None and not isinstance(pattern, str):
            raise ConfigError(f"{where}.timestamp_pattern", Message("must be a string"), origin)
        source = SourceConfig(paths=tuple(paths), regex=regex, exclude=tuple(exclude), name=name,
                              timestamp_pattern=pattern)
        _check_source_filters(source, where, origin)
        parsed.append(source)
    return tuple(parsed)


def _check_source_filters(source: SourceConfig, where: str, origin: str) -> None:
    """Compile the source's regex and CIDRs now so that a typo is a config error, not a runtime one."""
    from remote_uploader.agent.extract import build_extractor
    from remote_uploader.timepatterns import PatternError, compile_pattern

    if source.timestamp_pattern is not None:
        try:
            compile_pattern(source.timestamp_pattern)
        except PatternError as exc:
            raise ConfigError(f"{where}.timestamp_pattern", _reason(exc), origin) from exc
    try:
        build_extractor(regex=source.regex, exclude=source.exclude, engine="stdlib")
    except ValueError as exc:
        key = "regex" if source.regex and "regex" in str(exc).lower() else "exclude"
        raise ConfigError(f"{where}.{key}", _reason(exc), origin) from exc


def _read_token(values: dict[str, Any], origin: str) -> Secret:
    token: str = values["server.token"] or ""
    token_file: str = values["server.token_file"] or ""
    if not token and token_file:
        try:
            token = Path(token_file).expanduser().read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            problem = Message("cannot read {path}: {error}", path=token_file, error=reason)
            raise ConfigError("server.token_file", problem, origin) from exc
        if not token:
            raise ConfigError("server.token_file", Message("{path} is empty", path=token_file), origin)
    if any(ch.isspace() for ch in token):
        raise ConfigError("server.token", Message("must not contain white space"), origin)
    return Secret(token)


def _assemble(values: dict[str, Any], sources: tuple[SourceConfig, ...], profile: str, origin: str) -> Config:
    batching = BatchingConfig(
        max_memory_ips=values["batching.max_memory_ips"],
        force_upload_threshold=values["batching.force_upload_threshold"],
        min_upload_batch=values["batching.min_upload_batch"],
        max_batch_age=values["batching.max_batch_age"],
    )
    if batching.force_upload_threshold > batching.max_memory_ips:
        raise ConfigError(
            "batching.force_upload_threshold",
            Message("({value}) must not exceed batching.max_memory_ips ({limit})",
                    value=batching.force_upload_threshold, limit=batching.max_memory_ips),
            origin,
        )
    if batching.min_upload_batch > batching.force_upload_threshold:
        raise ConfigError(
            "batching.min_upload_batch",
            Message("({value}) must not exceed batching.force_upload_threshold ({limit})",
                    value=batching.min_upload_batch, limit=batching.force_upload_threshold),
            origin,
        )
    block_size = values["read.block_size"]
    if block_size < 4096 or block_size > 256 * 1024 * 1024:
        problem = Message("must be between 4KiB and 256MiB, got {size}", size=block_size)
        raise ConfigError("read.block_size", problem, origin)
    ca_file = values["server.ca_file"]
    if ca_file and not Path(ca_file).expanduser().is_file():
        raise ConfigError("server.ca_file", Message("{path} does not exist", path=ca_file), origin)
    agent = AgentConfig(
        id=values["agent.id"] or _agent_id(_host_name()),
        state_dir=Path(values["agent.state_dir"] or default_state_dir()).expanduser(),
        workers=values["agent.workers"] or (os.cpu_count() or 1),
        engine=values["agent.engine"],
        stats_interval=values["agent.stats_interval"],
        log_level=values["agent.log_level"],
        log_format=values["agent.log_format"],
        metrics_listen=values["agent.metrics_listen"],
        lang=values["agent.lang"],
        profile=profile,
    )
    server = ServerConfig(
        url=values["server.url"],
        token=_read_token(values, origin),
        ca_file=ca_file,
        verify_tls=values["server.verify_tls"],
        timeout=values["server.timeout"],
        upload_concurrency=values["server.upload_concurrency"],
        compress=values["server.compress"],
        max_retry_time=values["server.max_retry_time"],
        backoff_base=values["server.backoff_base"],
        backoff_cap=values["server.backoff_cap"],
        retry_after_cap=values["server.retry_after_cap"],
    )
    return Config(
        agent=agent,
        server=server,
        batching=batching,
        queue=QueueConfig(max_bytes=values["queue.max_bytes"]),
        read=ReadConfig(
            block_size=block_size,
            poll_interval=values["read.poll_interval"],
            partial_line_idle=values["read.partial_line_idle"],
            rotate_grace=values["read.rotate_grace"],
            skip_compressed=values["read.skip_compressed"],
            watch=values["read.watch"],
        ),
        shutdown=ShutdownConfig(drain_timeout=values["shutdown.drain_timeout"]),
        sources=sources,
        origin=origin,
        legacy=LegacyConfig(pending_file=values["legacy.pending_file"], offsets_file=values["legacy.offsets_file"]),
    )


def _host_name() -> str:
    name = socket.gethostname().split(".")[0] or "agent"
    return re.sub(r"[^A-Za-z0-9._\-]", "-", name)[:128]
