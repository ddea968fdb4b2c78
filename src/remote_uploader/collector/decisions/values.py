"""What a decision may be about: an address or a network, spelt one way, minus the allowlist.

A value is canonical (the address as the protocol spells it; a network as `ipaddress` writes
it, host bits cleared: `203.0.113.0/24`), so one target never has two decisions under two
spellings. A single address written as a network (`/32`, `/128`) is the address (scope Ip).
The allowlist is subtracted from everything: a value inside it is refused, a range that
overlaps it is cut into the pieces outside it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from remote_uploader.collector.storage.model import Scope
from remote_uploader.protocol import Network, canonical_ip


class ValueRejected(ValueError):
    """Not an address or CIDR we can decide on; the message says why."""


def decision_value(text: str) -> tuple[str, Scope]:
    """(canonical value, scope) of an address or CIDR text; `ValueRejected` otherwise."""
    text = text.strip()
    if "/" not in text:
        canonical = canonical_ip(text)
        if canonical is None:
            raise ValueRejected(f"{text!r} is not an IP address or a CIDR network such as 203.0.113.0/24")
        return canonical, "Ip"
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueRejected(f"{text!r} is not an IP address or a CIDR network such as 203.0.113.0/24") from None
    if network.prefixlen == network.max_prefixlen:
        return decision_value(str(network.network_address))
    if network.prefixlen == 0:
        raise ValueRejected(f"{text!r} would block every address")
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(ipaddress.IPv6Network("::ffff:0:0/96")):
        raise ValueRejected(f"{text!r} is an IPv4-mapped range: write it as IPv4")
    return str(network), "Range"


def as_network(value: str) -> Network:
    return ipaddress.ip_network(value, strict=False)


def subtract(value: str, allowlist: Sequence[Network]) -> list[tuple[str, Scope]]:
    """`value` minus the allowlist, as canonical values (empty: all of it is allowed)."""
    pieces = [as_network(value)]
    for allowed in allowlist:
        kept: list[Network] = []
        for piece in pieces:
            if piece.version != allowed.version or not piece.overlaps(allowed):
                kept.append(piece)
            elif piece.subnet_of(allowed):  # type: ignore[arg-type]
                continue
            else:
                kept.extend(piece.address_exclude(allowed))  # type: ignore[arg-type]
        pieces = kept
    return [decision_value(str(piece)) for piece in sorted(pieces, key=lambda n: (n.version, n))]
