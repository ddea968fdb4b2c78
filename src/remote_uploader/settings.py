"""The one settings machinery of both halves: every key declared once, every value read one way.

A half declares its settings as frozen dataclasses, one per TOML table, each key a field made with
`setting()`: its default, its parser, its line of documentation and any alias. A `Table` built from
those classes is all the rest needs: the defaults, the environment variable names, the checking
(an error names the key and where the bad value came from), the key tables of
docs/configuration.md and docs/collector.md (`markdown_table`, written by scripts/configdocs.py and
checked by the docs tests) and `config show` of both halves (config_show.py). The agent's keys are
in config.py, the collector's in collector/settings.py; this module knows neither.

Precedence, lowest first: default < profile (the agent's) < TOML file < environment < command line.
Key `TABLE.KEY` is read from the environment as ``REMOTE_UPLOADER_<TABLE>_<KEY>`` (upper case) and
from the aliases its declaration names. A parser takes what the file, the environment or a flag
gave and returns the typed value, or raises ValueError saying why not; a key whose parser wants
typed values (the collector's: `port = "80"` in a file is refused) converts environment text first
with its `from_text`.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Generic, TypeVar

from remote_uploader.errors import ConfigError, ConfigFileError
from remote_uploader.i18n import Message

ENV_PREFIX = "REMOTE_UPLOADER_"
STATE_DIR_ENV = ENV_PREFIX + "STATE_DIR"
COMMAND_LINE = "command line"

Parser = Callable[[Any], Any]
#: Dotted key -> (value as parsed, where it came from): what one source of settings contributes.
Layer = dict[str, tuple[Any, str]]
T = TypeVar("T")
_SPEC = "remote_uploader.setting"


def default_state_dir() -> Path:
    """Where both halves keep their state unless told otherwise; the first that applies wins.

    ``$REMOTE_UPLOADER_STATE_DIR``; ``/var/lib/remote-uploader`` as root; else
    ``$XDG_STATE_HOME/remote-uploader`` (``~/.local/state/remote-uploader``). Not /tmp: it is wiped
    on reboot, and the agent's queue must survive one. The agent's `agent.state_dir` (file,
    environment, ``--state-dir``) comes before all of these.
    """
    named = os.environ.get(STATE_DIR_ENV)
    if named:
        return Path(named).expanduser()
    if os.geteuid() == 0:
        return Path("/var/lib/remote-uploader")
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "remote-uploader"


# --- declaring keys ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """One setting: all that loading, the docs and `config show` need to know of it."""

    name: str  # dotted: `batching.min_upload_batch`, `collector.port`
    default: Any  # None: worked out when the configuration is loaded (`shown` says how)
    parse: Parser
    doc: str
    shown: str  # the default as the docs show it
    aliases: tuple[str, ...]  # more environment variables, full names
    from_text: Parser | None  # environment text -> what `parse` takes; None: `parse` takes text
    secret: bool  # never on a command line, never shown
    flag: str  # the command-line option that sets it, for the docs
    factory: Callable[[], Any] | None

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.replace(".", "_").upper()

    def default_value(self) -> Any:
        return self.factory() if self.factory is not None else self.default


def setting(
    default: Any,
    parse: Parser,
    doc: str,
    *,
    shown: str | None = None,
    aliases: tuple[str, ...] = (),
    from_text: Parser | None = None,
    secret: bool = False,
    flag: str = "",
    factory: Callable[[], Any] | None = None,
) -> Any:
    """A dataclass field that is a settings key: ``port: int = setting(8080, port_number, "doc")``.

    `aliases` are environment variable names without the ``REMOTE_UPLOADER_`` prefix. A secret
    field is left out of the dataclass's repr too. The key's name is given by `Table`.
    """
    key = Key("", default, parse, doc, _shown(default) if shown is None else shown,
              tuple(ENV_PREFIX + alias for alias in aliases), from_text, secret, flag, factory)
    if factory is not None:
        return field(default_factory=factory, metadata={_SPEC: key}, repr=not secret)
    return field(default=default, metadata={_SPEC: key}, repr=not secret)


def _shown(default: Any) -> str:
    if isinstance(default, bool):
        return "`true`" if default else "`false`"
    if isinstance(default, float):
        return f"`{default:g}`"
    if isinstance(default, tuple):
        return "`[]`" if not default else "`" + ", ".join(map(str, default)) + "`"
    if default == "":
        return '`""`'
    return f"`{default}`"


# --- the table of one half ---------------------------------------------------------------------------


class Table:
    """The keys of one half, from its section classes (TOML table name -> dataclass)."""

    def __init__(self, sections: Mapping[str, type]) -> None:
        self.sections = dict(sections)
        self.keys: dict[str, Key] = {}
        for section, cls in self.sections.items():
            for item in fields(cls):
                if _SPEC in item.metadata:
                    name = f"{section}.{item.name}"
                    self.keys[name] = replace(item.metadata[_SPEC], name=name)
        self.by_env = {env: key.name for key in self.keys.values() for env in (key.env, *key.aliases)}

    def check(self, name: str, value: Any, origin: str, *, text: bool = False) -> Any:
        """The parsed value, or ConfigError naming the key, where the value came from and why."""
        key = self.keys[name]
        try:
            if text and key.from_text is not None:
                value = key.from_text(value)
            return key.parse(value)
        except ValueError as exc:
            raise ConfigError(name, reason(exc), origin) from exc

    def from_document(self, document: Mapping[str, Any], origin: str, *,
                      skip: Collection[str] = (), only_own_tables: bool = False) -> Layer:
        """The keys a TOML document sets. An unknown key is an error: a typo must not fall back to a
        default. So is an unknown table, unless its name is in `skip` (tables read elsewhere) or
        `only_own_tables` (a file shared with the other half)."""
        layer: Layer = {}
        for section, body in document.items():
            if section in skip or (only_own_tables and section not in self.sections):
                continue
            if not isinstance(body, dict):
                problem = (Message("must be a table") if section in self.sections
                           else Message("unknown top-level key (expected a [section])"))
                raise ConfigError(section, problem, origin)
            for name, value in body.items():
                dotted = f"{section}.{name}"
                if dotted not in self.keys:
                    raise ConfigError(dotted, Message("unknown key"), origin)
                layer[dotted] = (self.check(dotted, value, origin), origin)
        return layer

    def from_env(self, env: Mapping[str, str]) -> Layer:
        """The keys the environment sets, each with the variable's name as its origin."""
        layer: Layer = {}
        for variable, text in env.items():
            name = self.by_env.get(variable)
            if name is not None:
                layer[name] = (self.check(name, text, variable, text=True), variable)
        return layer

    def from_values(self, values: Mapping[str, Any], origin: str = COMMAND_LINE) -> Layer:
        """The keys set by flags (or a profile): values that are None are not set."""
        layer: Layer = {}
        for name, value in values.items():
            if value is None:
                continue
            if name not in self.keys:
                raise ConfigError(name, Message("unknown key"), origin)
            layer[name] = (self.check(name, value, origin), origin)
        return layer

    def resolve(self, *layers: Layer) -> tuple[dict[str, Any], dict[str, str]]:
        """Every key's value and origin: the default, then each layer in turn (later ones win)."""
        values = {name: key.default_value() for name, key in self.keys.items()}
        origins = dict.fromkeys(self.keys, "default")
        for layer in layers:
            for name, (value, origin) in layer.items():
                values[name] = value
                origins[name] = origin
        return values, origins

    def section(self, section: str, values: Mapping[str, Any]) -> dict[str, Any]:
        """The keyword arguments of one section's dataclass."""
        start = section + "."
        return {name[len(start):]: value for name, value in values.items() if name.startswith(start)}

    def used(self, built: Mapping[str, object]) -> dict[str, Any]:
        """Every key's value as the built sections hold it (the host name for an unset `agent.id`...)."""
        return {name: getattr(built[name.split(".", 1)[0]], name.split(".", 1)[1]) for name in self.keys}


@dataclass(frozen=True)
class Effective(Generic[T]):
    """What a `load()` built, and for `config show` every key's value as used and its origin.

    `origins[key]` is ``default``, ``profile NAME``, the config file's path, the environment
    variable's name, or ``command line``. `arrays` are the arrays of tables (``[[sources]]``) as
    plain tables, each with where it came from.
    """

    config: T
    table: Table
    values: dict[str, Any]
    origins: dict[str, str]
    config_file: str
    arrays: dict[str, tuple[list[dict[str, Any]], str]]


# --- the file ----------------------------------------------------------------------------------------


def read_toml(path: Path, *, key: str = "config") -> dict[str, Any]:
    """The document, or ConfigFileError naming the file (reported under `key`)."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(path, Message("not valid TOML: {error}", error=exc), key=key) from exc
    except OSError as exc:
        raise ConfigFileError(path, Message("cannot read it: {error}", error=exc.strerror), key=key) from exc


# --- parsers that take a file's values and environment text alike (the agent's keys) -----------------


def _invalid(template: str, **values: object) -> ValueError:
    """A parser's complaint about a value: English in logs, translated at the terminal (i18n.Message)."""
    return ValueError(Message(template, **values))


def reason(exc: Exception) -> str | Message:
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


def as_int(value: Any) -> int:
    if isinstance(value, bool):
        raise _invalid("expected an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*-?[0-9_]+\s*", value):
        return int(value.replace("_", ""))
    raise _invalid("expected an integer, got {value!r}", value=value)


def as_float(value: Any) -> float:
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


def as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"1", "true", "yes", "on", "0", "false", "no", "off"}:
        return value.strip().lower() in {"1", "true", "yes", "on"}
    raise _invalid("expected true or false, got {value!r}", value=value)


def as_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise _invalid("expected a string, got {value!r}", value=value)


def positive(parse: Parser, *, allow_zero: bool = False) -> Parser:
    def check(value: Any) -> Any:
        number = parse(value)
        if number < 0 or (number == 0 and not allow_zero):
            if allow_zero:
                raise _invalid("must be zero or more, got {number}", number=number)
            raise _invalid("must be greater than zero, got {number}", number=number)
        return number

    return check


def one_of(*choices: str) -> Parser:
    def check(value: Any) -> str:
        text = as_str(value).lower()
        if text not in choices:
            raise _invalid("must be one of {choices}, got {value!r}", choices=", ".join(choices), value=value)
        return text

    return check


# --- the docs ----------------------------------------------------------------------------------------

BEGIN = "<!-- BEGIN key table: generated by scripts/configdocs.py from the declarations; do not edit -->"
END = "<!-- END key table -->"


def markdown_table(table: Table, *, short_names: bool = False, flags: bool = False) -> str:
    """The docs' table of `table`'s keys, in declaration order (`short_names`: without the table)."""
    head = ["key", "default", *(["flag"] if flags else []), "meaning"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for key in table.keys.values():
        name = key.name.split(".", 1)[1] if short_names else key.name
        cells = [f"`{name}`", key.shown, *([f"`{key.flag}`" if key.flag else ""] if flags else []), key.doc]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def with_generated(text: str, generated: str) -> str:
    """`text` with what stands between its BEGIN and END markers replaced by `generated`."""
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:start] + "\n" + generated + "\n" + text[end:]
