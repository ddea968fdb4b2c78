"""What a configured source may ask of extraction, checked without extracting anything.

The engine names, the per-source regex (it must have a group `ip`) and the excluded networks are
read by config.py, which checks them when the configuration is loaded so that a typo is a config
error and not a runtime one, and used by agent/extract.py. They live here, below both, so that
the configuration never imports the agent.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import Final

from remote_uploader.protocol import Network

#: `agent.engine`, `extract --engine`: `auto` is the first of native, hyperscan, stdlib that is
#: installed (docs/extraction.md, "Engines").
ENGINES: Final = ("auto", "native", "stdlib", "hyperscan")


def compile_regex(regex: str) -> re.Pattern[str]:
    """A user's per-source regex, checked: it must compile and have a group named `ip`."""
    try:
        pattern = re.compile(regex)
    except re.error as exc:
        raise ValueError(f"invalid regex '{regex}': {exc}") from exc
    if "ip" not in pattern.groupindex:
        raise ValueError(f"regex '{regex}' has no group named 'ip'; write the address part as (?P<ip>...)")
    return pattern


def parse_excludes(exclude: Sequence[str]) -> tuple[Network, ...]:
    if isinstance(exclude, str):
        raise ValueError(f"exclude must be a list of CIDR strings, not the string {exclude!r}")
    networks = []
    for value in exclude:
        try:
            networks.append(ipaddress.ip_network(str(value).strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"invalid CIDR {value!r} in exclude: {exc}") from exc
    return tuple(networks)
