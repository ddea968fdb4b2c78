"""`[[rules]]` in the collector's config file: what a rule matches, its threshold, its decision.

```toml
[[rules]]
name = "sshd-brute-force"        # letters, digits and - _ . : (the decisions' scenario)
min_count = 5                    # count >= min_count ...
window = "10m"                   # ... within this window
duration = "4h"                  # ban this long
sources = ["*/auth.log"]         # optional: only these sources' counts (glob patterns)
agents = ["web-1", "web-2"]      # optional: only these agents' counts
prefix_v4 = 24                   # optional: decide on the /24 ...
prefix_v6 = 64                   # ... or the /64 ...
min_addresses = 3                # ... when this many of its addresses crossed min_count
reason = "ssh brute force"       # optional text for the decisions
[rules.escalation]               # optional: repeat offenders get longer decisions
factor = 2                       # duration * factor ** (earlier decisions of this rule)
max_duration = "30d"
remember = "30d"                 # how far back earlier decisions count
```

Every error names the key (`rules[2].window`) and the file.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from remote_uploader.durations import DurationError, format_duration, parse_duration
from remote_uploader.errors import ConfigError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
MAX_MIN_COUNT = 2**62


@dataclass(frozen=True, slots=True)
class Escalation:
    factor: float = 2.0
    max_duration: timedelta = timedelta(days=30)
    remember: timedelta = timedelta(days=30)


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    min_count: int
    window: timedelta
    duration: timedelta
    sources: tuple[str, ...] | None = None
    agents: tuple[str, ...] | None = None
    prefix_v4: int | None = None
    prefix_v6: int | None = None
    min_addresses: int = 1
    reason: str = ""
    escalation: Escalation | None = None

    @property
    def ranges(self) -> bool:
        """Whether the rule decides on ranges (a prefix is set) rather than addresses."""
        return self.prefix_v4 is not None or self.prefix_v6 is not None

    def duration_after(self, earlier: int) -> timedelta:
        """The decision's length for an offender with `earlier` decisions of this rule."""
        if self.escalation is None or earlier <= 0:
            return self.duration
        step = self.escalation
        seconds = self.duration.total_seconds() * step.factor ** min(earlier, 64)
        return timedelta(seconds=min(seconds, step.max_duration.total_seconds()))

    def describe(self) -> dict[str, object]:
        """The rule as it was when it decided, for the decision's explanation."""
        out: dict[str, object] = {
            "rule": self.name,
            "min_count": self.min_count,
            "window": format_duration(self.window),
            "duration": format_duration(self.duration),
        }
        for key in ("sources", "agents", "prefix_v4", "prefix_v6"):
            value = getattr(self, key)
            if value is not None:
                out[key] = list(value) if isinstance(value, tuple) else value
        if self.ranges:
            out["min_addresses"] = self.min_addresses
        return out


class _Fields:
    """Reads one table, naming `rules[i].key` in every error."""

    def __init__(self, table: dict[str, Any], where: str, origin: str) -> None:
        self.table = table
        self.where = where
        self.origin = origin

    def fail(self, key: str, reason: str) -> ConfigError:
        return ConfigError(f"{self.where}.{key}", reason, self.origin)

    def get(self, key: str, parse: Callable[[object], Any], required: bool = False) -> Any:
        if key not in self.table:
            if required:
                raise self.fail(key, "is required")
            return None
        try:
            return parse(self.table[key])
        except (ValueError, TypeError) as exc:
            raise self.fail(key, str(exc)) from None


def _duration(value: object) -> timedelta:
    try:
        return parse_duration(value)
    except DurationError as exc:
        raise ValueError(str(exc)) from None


def _int(low: int, high: int) -> Callable[[object], int]:
    def parse(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{value!r} is not an integer")
        if not low <= value <= high:
            raise ValueError(f"{value} is outside {low}..{high}")
        return value

    return parse


def _names(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError("must be a non-empty list of non-empty strings")
    return tuple(v.strip() for v in value)


def _text(value: object) -> str:
    if not isinstance(value, str) or len(value) > 1024:
        raise ValueError("must be a string of at most 1024 characters")
    return value


def _factor(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 1 <= value <= 100:
        raise ValueError(f"{value!r} must be a number in 1..100")
    return float(value)


RULE_KEYS = {
    "name",
    "min_count",
    "window",
    "duration",
    "sources",
    "agents",
    "prefix_v4",
    "prefix_v6",
    "min_addresses",
    "reason",
    "escalation",
}
ESCALATION_KEYS = {"factor", "max_duration", "remember"}


def parse_rule(table: object, where: str, origin: str) -> Rule:
    if not isinstance(table, dict):
        raise ConfigError(where, "must be a table ([[rules]])", origin)
    fields = _Fields(table, where, origin)
    for key in table:
        if key not in RULE_KEYS:
            raise fields.fail(key, f"unknown key (known: {', '.join(sorted(RULE_KEYS))})")
    name = fields.get("name", _text, required=True)
    if not NAME.match(name):
        raise fields.fail(
            "name", f"{name!r} must be 1-64 letters, digits and . _ : - (starting with a letter or digit)"
        )
    prefix_v4 = fields.get("prefix_v4", _int(1, 32))
    prefix_v6 = fields.get("prefix_v6", _int(1, 128))
    min_addresses = fields.get("min_addresses", _int(1, 2**32))
    if min_addresses is not None and prefix_v4 is None and prefix_v6 is None:
        raise fields.fail("min_addresses", "needs prefix_v4 or prefix_v6 (the range whose addresses it counts)")
    escalation = None
    if "escalation" in table:
        raw = table["escalation"]
        if not isinstance(raw, dict):
            raise fields.fail("escalation", "must be a table (factor, max_duration, remember)")
        inner = _Fields(raw, f"{where}.escalation", origin)
        for key in raw:
            if key not in ESCALATION_KEYS:
                raise inner.fail(key, f"unknown key (known: {', '.join(sorted(ESCALATION_KEYS))})")
        defaults = Escalation()
        escalation = Escalation(
            factor=inner.get("factor", _factor) or defaults.factor,
            max_duration=inner.get("max_duration", _duration) or defaults.max_duration,
            remember=inner.get("remember", _duration) or defaults.remember,
        )
    duration = fields.get("duration", _duration, required=True)
    if escalation is not None and escalation.max_duration < duration:
        raise ConfigError(f"{where}.escalation.max_duration", "is shorter than the rule's duration", origin)
    return Rule(
        name=name,
        min_count=fields.get("min_count", _int(1, MAX_MIN_COUNT), required=True),
        window=fields.get("window", _duration, required=True),
        duration=duration,
        sources=fields.get("sources", _names),
        agents=fields.get("agents", _names),
        prefix_v4=prefix_v4,
        prefix_v6=prefix_v6,
        min_addresses=min_addresses or 1,
        reason=fields.get("reason", _text) or "",
        escalation=escalation,
    )


def parse_rules(value: object, origin: str) -> tuple[Rule, ...]:
    """The `rules` array of a config document (absent: no rules)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError("rules", "must be an array of tables ([[rules]])", origin)
    rules = tuple(parse_rule(table, f"rules[{index}]", origin) for index, table in enumerate(value))
    seen: set[str] = set()
    for index, rule in enumerate(rules):
        if rule.name in seen:
            raise ConfigError(f"rules[{index}].name", f"{rule.name!r} is the name of an earlier rule", origin)
        seen.add(rule.name)
    return rules
