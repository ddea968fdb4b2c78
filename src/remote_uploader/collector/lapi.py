"""What CrowdSec bouncers need from CrowdSec's Local API (LAPI), spoken by the collector.

Bouncers (crowdsec-firewall-bouncer, -custom-bouncer, the nginx/lua bouncer, anything built on
go-cs-bouncer) work against the collector unchanged. What they send, read from their code:

- `GET /v1/decisions/stream?startup=true` once at start, then every `update_frequency`
  `GET /v1/decisions/stream` (go-cs-bouncer leaves `startup` out when false; the lua bouncer
  sends `startup=false`), with `X-Api-Key`, a `User-Agent` naming the bouncer, and optional
  comma-separated `scopes`, `origins`, `scenarios_containing`, `scenarios_not_containing`.
  The answer is `{"new": [...], "deleted": [...]}`: with `startup=true` every active decision,
  otherwise what changed since this key's previous complete pull. Bouncers apply `deleted`
  first, then `new`.
- `GET /v1/decisions?ip=ADDR` (live mode, the lua bouncer): a list of the decisions that
  contain the address, or exactly `null` when there is none (it compares the body to "null").
- `HEAD` on both, as a health probe: 200 and no body, nothing read, nothing recorded.
- `POST /v1/usage-metrics` from newer bouncers: accepted (201) and dropped.

Durations are Go's syntax with hours, minutes and seconds always written ("3h59m58.9s",
timeparse.go_duration):
go-cs-bouncer parses them with time.ParseDuration, which takes any form, but the lua bouncer's
pattern `^((\\d+)h)?((\\d+)m)?(\\d+)` reads a bare "4h" as 4 seconds and "30m" as 30 seconds.

Errors are 4xx with our usual `detail` list plus CrowdSec's `message`, which go-cs-bouncer puts
in its log line ("API error: ..."). Unknown query parameters are ignored, as CrowdSec does (a
bouncer newer than this collector may send more); known ones with a bad value are refused with
400 naming the parameter. After a failed first pull the firewall bouncer exits and the custom
bouncer stops pulling, so the collector must be up before they start; later failures are
logged by the bouncer and retried at its next tick.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from remote_uploader.errors import ApiError
from remote_uploader.protocol import Network

API_KEY_HEADER = "X-Api-Key"
MAX_USER_AGENT = 256  # stored with the key's last pull; a longer one is cut
MAX_LIST_PARAM = 4096  # a comma-separated filter longer than this is refused (400)

# CrowdSec's scope names, matched without regard to case as CrowdSec does. Only Ip and Range
# decisions exist here; the other two are accepted (a bouncer may be configured with them) and
# match nothing.
SCOPES = {"ip": "Ip", "range": "Range", "country": "Country", "as": "AS"}
DEFAULT_SCOPES = ("Ip", "Range")  # CrowdSec's default when `scopes` is absent


def decision_scope(value: str) -> str:
    """ "Range" for a network (a value with a prefix length), "Ip" for a single address."""
    return "Range" if "/" in value else "Ip"


# -- query parameters -------------------------------------------------------------------------


def _items(name: str, value: str | None) -> list[str] | None:
    """A comma-separated parameter as a list (empty items dropped); None when absent or empty."""
    if value is None:
        return None
    if len(value) > MAX_LIST_PARAM:
        raise ApiError(400, f"query.{name}", f"longer than {MAX_LIST_PARAM} characters")
    items = [item.strip() for item in value.split(",") if item.strip()]
    return items or None


def parse_bool(name: str, value: str | None, default: bool = False) -> bool:
    if value is None or value == "":
        return default
    lowered = value.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise ApiError(400, f"query.{name}", f"{value!r} is not true or false")


def parse_scopes(name: str, value: str | None) -> tuple[str, ...] | None:
    items = _items(name, value)
    if items is None:
        return None
    scopes = []
    for item in items:
        scope = SCOPES.get(item.lower())
        if scope is None:
            raise ApiError(400, f"query.{name}", f"unknown scope {item!r}: use ip, range, country or as")
        scopes.append(scope)
    return tuple(scopes)


@dataclass(frozen=True, slots=True)
class StreamFilter:
    """The stream's filters, applied to every decision sent (new and deleted alike)."""

    scopes: tuple[str, ...] = DEFAULT_SCOPES
    origins: tuple[str, ...] | None = None  # exact names
    containing: tuple[str, ...] | None = None  # scenario contains any of these (no case)
    not_containing: tuple[str, ...] | None = None  # scenario contains none of these (no case)

    @classmethod
    def from_query(cls, query: Any) -> StreamFilter:
        """From a request's query parameters (a Starlette QueryParams or a plain mapping)."""
        scopes = parse_scopes("scopes", query.get("scopes"))
        origins = _items("origins", query.get("origins"))
        containing = _items("scenarios_containing", query.get("scenarios_containing"))
        not_containing = _items("scenarios_not_containing", query.get("scenarios_not_containing"))
        return cls(
            scopes=scopes or DEFAULT_SCOPES,
            origins=tuple(origins) if origins else None,
            containing=tuple(item.lower() for item in containing) if containing else None,
            not_containing=tuple(item.lower() for item in not_containing) if not_containing else None,
        )

    def accepts(self, scope: str, origin: str, scenario: str) -> bool:
        if scope not in self.scopes:
            return False
        if self.origins is not None and origin not in self.origins:
            return False
        if self.containing is not None or self.not_containing is not None:
            lowered = scenario.lower()
            if self.containing is not None and not any(part in lowered for part in self.containing):
                return False
            if self.not_containing is not None and any(part in lowered for part in self.not_containing):
                return False
        return True


def parse_network(name: str, value: str) -> Network:
    """An address (as its /32 or /128) or a CIDR network, for the live lookup."""
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        kind = "an IP address" if name == "ip" else "a CIDR network such as 203.0.113.0/24"
        raise ApiError(400, f"query.{name}", f"{value!r} is not {kind}") from None
