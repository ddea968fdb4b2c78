"""The agent's configuration: every key declared once, below, and `load()`, which returns frozen
dataclasses or raises ConfigError naming the key.

The machinery (precedence, environment names, the TOML reader, the checking) is settings.py's.
Precedence, lowest first: built-in defaults < profile < TOML file < environment < command-line
flags. Every key can be set from the environment as ``REMOTE_UPLOADER_<SECTION>_<KEY>`` (upper
case), and from the command line as ``--set section.key=value``. Aliases keep the old script's
names: ``REMOTE_UPLOADER_TOKEN``, ``REMOTE_UPLOADER_URL``, ``REMOTE_UPLOADER_STATE_DIR``,
``..._MAX_MEMORY_IPS``, ``..._FORCE_UPLOAD_THRESHOLD``, ``..._MIN_UPLOAD_BATCH``, ``..._PROFILE``.

All checking happens here, before anything runs, so a typo never surfaces an hour into a run.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from remote_uploader.errors import ConfigError, ConfigFileError
from remote_uploader.filters import ENGINES, compile_regex, parse_excludes
from remote_uploader.i18n import Message
from remote_uploader.settings import (
    COMMAND_LINE,
    ENV_PREFIX,
    Effective,
    Table,
    as_bool,
    as_float,
    as_int,
    as_str,
    default_state_dir,
    one_of,
    parse_size,
    positive,
    read_toml,
    reason,
    setting,
)
from remote_uploader.timepatterns import PatternError, compile_pattern

SEARCH_PATH = (
    Path("remote-uploader.toml"),
    Path("~/.config/remote-uploader/config.toml"),
    Path("/etc/remote-uploader/config.toml"),
)

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
SOURCE_KEYS = {"paths", "regex", "exclude", "name", "timestamp_pattern"}
#: Top-level entries of a shared file that are not the agent's key tables: read below, or the collector's.
NOT_KEY_TABLES = {"sources", "collector", "rules"}


class Secret(str):
    """A string that never prints itself: tokens travel in these so no log or repr can leak them."""

    def __repr__(self) -> str:
        return "Secret('***')" if self else "Secret('')"


# --- the agent's own parsers (the common ones are settings.py's) -----------------------------------------


def _url(value: Any) -> str:
    text = as_str(value).rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError(Message("expected an http:// or https:// URL, got {value!r}", value=value))
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError(Message("bad port in {value!r}", value=value)) from exc
    return text


def _listen(value: Any) -> str:
    text = as_str(value)
    if text and not re.fullmatch(r"[0-9A-Za-z.\-\[\]:]+:[0-9]{1,5}", text):
        raise ValueError(Message("expected HOST:PORT such as 127.0.0.1:9464, got {value!r}", value=value))
    return text


def _agent_id(value: Any) -> str:
    text = as_str(value)
    if not re.fullmatch(r"[A-Za-z0-9._\-]{1,128}", text):
        raise ValueError(Message("must be 1-128 characters of letters, digits, '.', '_' or '-'"))
    return text


# --- the keys: one dataclass per TOML table ---------------------------------------------------------------


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
    id: str = setting(None, _agent_id, "the agent's name at the collector (letters, digits, `.`, `_`, `-`; must "
                      "match its token's name)", shown="the host name", flag="--agent-id")
    state_dir: Path = setting(None, as_str, "queue database, lock, log file. Not /tmp: it is wiped on reboot",
                              shown="see [The state directory](#the-state-directory)", aliases=("STATE_DIR",),
                              flag="--state-dir")
    workers: int = setting(0, positive(as_int, allow_zero=True), "processes that scan a large backlog, the agent's "
                           "own included (`2` = the agent and one worker process); `1` = everything in one process "
                           "(smallest memory)", shown="`0` = number of cores", flag="--workers")
    engine: str = setting("auto", one_of(*ENGINES), "extraction engine: `native` (the C core `pip install .` "
                          "builds where a compiler exists; no extra memory), `hyperscan` (needs `pip install "
                          "'remote-uploader[fast]'`; ~6 MiB more memory per process), `stdlib` (the pure-Python "
                          "path; set it to force that path), or `auto` (the first of native, hyperscan, stdlib "
                          "that is installed). Counts are identical")
    stats_interval: float = setting(60.0, positive(as_float, allow_zero=True),
                                    "seconds between stats lines in long runs (`0` = off)")
    log_level: str = setting("info", one_of("debug", "info", "warning", "error"), "level of the log file (`debug`, "
                             "`info`, `warning`, `error`); `-v`/`-q` change the terminal only")
    log_format: str = setting("text", one_of("text", "json"), "`text` (key=value) or `json`")
    metrics_listen: str = setting("", _listen, "`HOST:PORT` for a Prometheus endpoint, e.g. `127.0.0.1:9464`",
                                  shown='`""` (off)')
    lang: str = setting("", one_of("", "en", "zh"), "`en` or `zh` for messages at the terminal; log files stay "
                        "English", shown='`""` (from the locale)')
    profile: str = setting("default", one_of(*PROFILES), "see [Profiles](#profiles---profile-name-or-agentprofile)",
                           aliases=("PROFILE",), flag="--profile")


@dataclass(frozen=True)
class ServerConfig:
    url: str = setting("http://127.0.0.1:8080", _url, "the collector", aliases=("URL",), flag="--url")
    token: Secret = setting("", as_str, "bearer token; prefer `token_file` or `REMOTE_UPLOADER_TOKEN`",
                            aliases=("TOKEN",), secret=True)
    token_file: str = setting("", as_str, "file holding the token (read at start and on SIGHUP)", flag="--token-file")
    ca_file: str = setting("", as_str, "CA bundle (PEM) to verify the collector's certificate with")
    verify_tls: bool = setting(True, as_bool, "turn off only for testing")
    timeout: float = setting(30.0, positive(as_float), "seconds for one request")
    compress: bool = setting(True, as_bool, "gzip request bodies")
    max_retry_time: float = setting(60.0, positive(as_float), "`once`: exit 3 after the collector has failed for "
                                    "this long (data stays queued), or the state disk has stayed full this long "
                                    "(nothing lost; `forever` waits for space as long as it takes)",
                                    flag="--max-retry-time")
    backoff_base: float = setting(0.5, positive(as_float), "first retry ceiling, seconds (exponential, full jitter)")
    upload_concurrency: int = setting(2, positive(as_int), "uploads in flight at once, each on its own keep-alive "
                                      "connection (the collector parses one batch while it stores another); `1` = "
                                      "strictly one after the other")
    backoff_cap: float = setting(60.0, positive(as_float), "largest retry ceiling, seconds")
    retry_after_cap: float = setting(300.0, positive(as_float),
                                     "the most a `Retry-After` answer may make the agent wait")
    status_every: float = setting(60.0, positive(as_float, allow_zero=True),
                                  "`forever`: seconds without a batch after which the agent sends its status alone "
                                  "(a heartbeat: queue, version; docs/protocol.md, \"Agent status\"); `0` = never")


@dataclass(frozen=True)
class BatchingConfig:
    max_memory_ips: int = setting(10_000, positive(as_int), "`MAX_MEMORY_IPS`: upper bound; records in the "
                                  "in-memory batch never exceed this (a chunk that would pass it seals the batch "
                                  "first), nor 100,000, the most the collector takes in one batch, whatever the "
                                  "setting", aliases=("MAX_MEMORY_IPS",))
    force_upload_threshold: int = setting(5_000, positive(as_int), "`FORCE_UPLOAD_THRESHOLD`: a batch this large is "
                                          "sealed and uploaded at once, unless the queue already holds a batch for "
                                          "every upload in flight: then it grows up to `max_memory_ips` (see "
                                          "[Batching](#batching))", aliases=("FORCE_UPLOAD_THRESHOLD",))
    min_upload_batch: int = setting(100, positive(as_int), "`MIN_UPLOAD_BATCH`: while reading a backlog, a batch is "
                                    "sealed once it has this many records and is `max_batch_age` old",
                                    aliases=("MIN_UPLOAD_BATCH",))
    max_batch_age: float = setting(1.0, positive(as_float), "seconds; upper bound of a caught-up batch's wait: "
                                   "sealed at once while the uploader is idle, else at half this age at the latest "
                                   "(see [Batching](#batching))")


@dataclass(frozen=True)
class QueueConfig:
    max_bytes: int = setting(512 * 1024 * 1024, positive(parse_size), "the queue's size limit; when full, reading "
                             "pauses (the log file is the buffer) and nothing is dropped", shown="`512MiB`")


@dataclass(frozen=True)
class ReadConfig:
    block_size: int = setting(4 * 1024 * 1024, positive(parse_size), "bytes read and scanned at a time; memory "
                              "per reader and per worker (a backlog is scanned this much per call: larger blocks "
                              "merge fewer repeated addresses, docs/benchmarks.md); 4KiB to 256MiB",
                              shown="`4MiB`")
    poll_interval: float = setting(1.0, positive(as_float), "`forever`: seconds between passes over the files and "
                                   "globs (new files, rotations): the safety net under file events (then every 5 s at "
                                   "least while no file waits on a timer: every change is an event), and the only "
                                   "look with `read.watch = poll`, where growth of the files already open is also "
                                   "looked at every 0.1 s (backing off to 0.4 s while nothing grows)")
    watch: str = setting("auto", one_of("auto", "inotify", "poll"), "`forever`: how writes are noticed. `auto`: "
                         "inotify events where available (Linux), else polling; `inotify`: events, refuse to start "
                         "without them; `poll`: polling only (NFS, CIFS, FUSE: file systems that deliver no events). "
                         "See [forever.md](forever.md#how-following-works-events-and-polling)")
    partial_line_idle: float = setting(5.0, positive(as_float, allow_zero=True), "a live file's unterminated final "
                                       "line is counted up to its last separator once the file has not changed for "
                                       "this long; what follows that separator (an address may still be growing: "
                                       "`client=10.0.0.1` then `23`) waits for the byte after it, however long, or "
                                       "until the file is rotated away or deleted (then all of it is taken after "
                                       "`rotate_grace`). A `regex` source takes nothing of an unterminated line of a "
                                       "live file")
    rotate_grace: float = setting(5.0, positive(as_float, allow_zero=True), "`forever`: seconds a rotated-away file "
                                  "stays open for late writes after it was read to its end")
    skip_compressed: bool = setting(True, as_bool, "skip `.gz`, `.bz2`, `.xz`, `.zst`, `.zip`, `.lz4` files "
                                    "matched by a glob")


@dataclass(frozen=True)
class ShutdownConfig:
    drain_timeout: float = setting(5.0, positive(as_float, allow_zero=True), "`forever`: seconds spent uploading "
                                   "after SIGINT/SIGTERM before exiting")


@dataclass(frozen=True)
class LegacyConfig:
    """Where the old script kept its pending queue and offsets (`import-legacy` and its hint)."""

    pending_file: str = setting("/tmp/pending_upload_queue.json", as_str, "the old script's pending queue: "
                                "`import-legacy` reads it; `once`, `forever` and `test` print a hint while it exists "
                                "and was never imported ([migration.md](migration.md))")
    offsets_file: str = setting("/tmp/file_offsets.json", as_str, "the old script's read offsets (likewise)")

    def files(self, pending: str | None = None, offsets: str | None = None) -> list[Path]:
        """The old pending queue and offsets file as paths (`pending`, `offsets`: the command
        line's instead). Here, not in agent/legacy.py: the start-up hint looks for them without
        loading the importer (3 ms of every start)."""
        return [Path(pending or self.pending_file).expanduser(), Path(offsets or self.offsets_file).expanduser()]


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


TABLE = Table({"agent": AgentConfig, "server": ServerConfig, "batching": BatchingConfig, "queue": QueueConfig,
               "read": ReadConfig, "shutdown": ShutdownConfig, "legacy": LegacyConfig})
DEFAULTS: dict[str, Any] = {name: key.default for name, key in TABLE.keys.items()}
PARSERS = {name: key.parse for name, key in TABLE.keys.items()}
KNOWN_KEYS = set(TABLE.keys)
SECRET_KEYS = {name for name, key in TABLE.keys.items() if key.secret}
assert all(set(values) <= KNOWN_KEYS for values in PROFILES.values())


# --- loading -------------------------------------------------------------------------------------------


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
) -> Effective[Config]:
    """`load()`, keeping where each value came from (`config show`)."""
    env = os.environ if env is None else env
    file_path = find_config_file(path, env)
    origin = str(file_path) if file_path else ""
    document = read_toml(file_path) if file_path else {}
    layers = (TABLE.from_document(document, origin, skip=NOT_KEY_TABLES), TABLE.from_env(env),
              TABLE.from_values({**(overrides or {}), **({"agent.profile": profile} if profile else {})}))
    chosen = TABLE.resolve(*layers)[0]["agent.profile"]  # a profile is a layer of defaults: the others win
    values, origins = TABLE.resolve(TABLE.from_values(PROFILES[chosen], f"profile {chosen}"), *layers)
    raw_sources = document.get("sources", [])
    source_list = (SourceConfig(paths=tuple(sources)),) if sources else _parse_sources(raw_sources, origin)
    config = _assemble(values, source_list, origin)
    tables = [{"paths": list(s.paths), "regex": s.regex, "exclude": list(s.exclude), "name": s.name,
               "timestamp_pattern": s.timestamp_pattern} for s in source_list]
    sources_origin = COMMAND_LINE if sources else origin if raw_sources else "default"
    return Effective(config, TABLE, TABLE.used(vars(config)), origins, origin, {"sources": (tables, sources_origin)})


def _parse_sources(raw_sources: Any, origin: str) -> tuple[SourceConfig, ...]:
    if not isinstance(raw_sources, list):
        raise ConfigError("sources", Message("must be an array of tables ([[sources]])"), origin)
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
        _compile_filters(regex, exclude, where, origin)
        _compile_pattern(pattern, where, origin)
        parsed.append(SourceConfig(paths=tuple(paths), regex=regex, exclude=tuple(exclude), name=name,
                                   timestamp_pattern=pattern))
    return tuple(parsed)


def _compile_pattern(pattern: str | None, where: str, origin: str) -> None:
    """Compile a source's timestamp pattern now (timepatterns.py): a typo is a config error."""
    if pattern is None:
        return
    try:
        compile_pattern(pattern)
    except PatternError as exc:
        raise ConfigError(f"{where}.timestamp_pattern", reason(exc), origin) from exc


def _compile_filters(regex: str | None, exclude: list[str], where: str, origin: str) -> None:
    """Compile a source's regex and CIDRs now so that a typo is a config error, not a runtime one."""
    key = "regex"
    try:
        if regex is not None:
            compile_regex(regex)
        key = "exclude"
        parse_excludes(exclude)
    except ValueError as exc:
        raise ConfigError(f"{where}.{key}", reason(exc), origin) from exc


def _read_token(values: dict[str, Any], origin: str) -> Secret:
    token: str = values["server.token"] or ""
    token_file: str = values["server.token_file"] or ""
    if not token and token_file:
        try:
            token = Path(token_file).expanduser().read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            error = getattr(exc, "strerror", None) or str(exc)
            problem = Message("cannot read {path}: {error}", path=token_file, error=error)
            raise ConfigError("server.token_file", problem, origin) from exc
        if not token:
            raise ConfigError("server.token_file", Message("{path} is empty", path=token_file), origin)
    if any(ch.isspace() for ch in token):
        raise ConfigError("server.token", Message("must not contain white space"), origin)
    return Secret(token)


def _assemble(values: dict[str, Any], sources: tuple[SourceConfig, ...], origin: str) -> Config:
    """The checks that span keys, the defaults worked out at load, and the frozen Config."""
    memory, force, minimum = (values[f"batching.{key}"] for key in ("max_memory_ips", "force_upload_threshold",
                                                                     "min_upload_batch"))
    if force > memory:
        problem = Message("({value}) must not exceed batching.max_memory_ips ({limit})", value=force, limit=memory)
        raise ConfigError("batching.force_upload_threshold", problem, origin)
    if minimum > force:
        problem = Message("({value}) must not exceed batching.force_upload_threshold ({limit})", value=minimum,
                          limit=force)
        raise ConfigError("batching.min_upload_batch", problem, origin)
    block_size = values["read.block_size"]
    if block_size < 4096 or block_size > 256 * 1024 * 1024:
        problem = Message("must be between 4KiB and 256MiB, got {size}", size=block_size)
        raise ConfigError("read.block_size", problem, origin)
    ca_file = values["server.ca_file"]
    if ca_file and not Path(ca_file).expanduser().is_file():
        raise ConfigError("server.ca_file", Message("{path} does not exist", path=ca_file), origin)
    values = {**values, "agent.id": values["agent.id"] or _agent_id(_host_name()),
              "agent.state_dir": Path(values["agent.state_dir"] or default_state_dir()).expanduser(),
              "agent.workers": values["agent.workers"] or (os.cpu_count() or 1),
              "server.token": _read_token(values, origin)}
    sections = {name: cls(**TABLE.section(name, values)) for name, cls in TABLE.sections.items()}
    return Config(sources=sources, origin=origin, **sections)


def _host_name() -> str:
    name = socket.gethostname().split(".")[0] or "agent"
    return re.sub(r"[^A-Za-z0-9._\-]", "-", name)[:128]
