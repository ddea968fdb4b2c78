"""Blocklists: which stored addresses may be blocked, and the formats firewalls load.

Never in a blocklist, whatever the counts say:
- addresses of the configured allowlist (your own networks, monitoring, partners);
- unless asked for (`include_private`), addresses that are not globally routable: the IANA
  special-purpose ranges below. They are written out here, not taken from `ipaddress.is_global`,
  whose answers have changed between Python releases; a blocklist should not change with them.

Formats: `txt` (one address a line under a `#` header), `json`, `nft` (an `nft -f` script that
replaces the contents of two interval sets in one transaction) and `ipset` (an `ipset restore`
script that fills a fresh set sized for the list and swaps it in).
"""

from __future__ import annotations

import bisect
import ipaddress
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from remote_uploader.collector.storage.base import BlocklistRow
from remote_uploader.protocol import Network, format_time

Format = Literal["txt", "json", "nft", "ipset"]

# IANA IPv4/IPv6 special-purpose address registries (RFC 6890 and successors), plus multicast:
# nothing here is a host on the public Internet that could have attacked us.
NON_GLOBAL = (
    "0.0.0.0/8",  # "this network"
    "10.0.0.0/8",  # private (RFC 1918)
    "100.64.0.0/10",  # shared address space, carrier-grade NAT (RFC 6598)
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local
    "172.16.0.0/12",  # private
    "192.0.0.0/24",  # IETF protocol assignments
    "192.0.2.0/24",  # documentation TEST-NET-1
    "192.88.99.0/24",  # deprecated 6to4 relay anycast
    "192.168.0.0/16",  # private
    "198.18.0.0/15",  # benchmarking
    "198.51.100.0/24",  # documentation TEST-NET-2
    "203.0.113.0/24",  # documentation TEST-NET-3
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, and 255.255.255.255 broadcast
    "::/127",  # unspecified and loopback
    "::ffff:0:0/96",  # IPv4-mapped (never stored: mapped addresses are stored as IPv4)
    "64:ff9b:1::/48",  # local-use IPv4/IPv6 translation
    "100::/64",  # discard-only
    "2001::/23",  # IETF protocol assignments (Teredo, benchmarking, ORCHID...)
    "2001:db8::/32",  # documentation
    "2002::/16",  # 6to4
    "3fff::/20",  # documentation (RFC 9637)
    "5f00::/16",  # segment routing SIDs
    "fc00::/7",  # unique local
    "fe80::/10",  # link-local
    "ff00::/8",  # multicast
)


class NetworkSet:
    """Fast membership of an address in a union of networks (sorted integer ranges, bisect)."""

    def __init__(self, networks: Iterable[Network]) -> None:
        ranges: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        for net in networks:
            ranges[net.version].append((int(net.network_address), int(net.broadcast_address)))
        self._starts: dict[int, list[int]] = {}
        self._ends: dict[int, list[int]] = {}
        for version, spans in ranges.items():
            merged: list[tuple[int, int]] = []
            for start, end in sorted(spans):
                if merged and start <= merged[-1][1] + 1:
                    merged[-1] = (merged[-1][0], max(merged[-1][1], end))
                else:
                    merged.append((start, end))
            self._starts[version] = [start for start, _ in merged]
            self._ends[version] = [end for _, end in merged]

    def contains_key(self, key: bytes) -> bool:
        """Whether the packed address `key` (4 or 16 bytes) is in one of the networks."""
        version = 4 if len(key) == 4 else 6
        value = int.from_bytes(key, "big")
        index = bisect.bisect_right(self._starts[version], value) - 1
        return index >= 0 and value <= self._ends[version][index]


NON_GLOBAL_SET = NetworkSet(ipaddress.ip_network(net) for net in NON_GLOBAL)


@dataclass(frozen=True, slots=True)
class Blocklist:
    generated_at: datetime
    filters: dict[str, str]
    rows: Sequence[BlocklistRow]


def select(rows: Iterable[BlocklistRow], allowlist: Sequence[Network], include_private: bool) -> list[BlocklistRow]:
    allowed = NetworkSet(allowlist)
    return [
        row
        for row in rows
        if not allowed.contains_key(row.key) and (include_private or not NON_GLOBAL_SET.contains_key(row.key))
    ]


Rank = Literal["count", "last_seen"]


def cap(rows: Sequence[BlocklistRow], max_entries: int, rank: Rank) -> list[BlocklistRow]:
    """The `max_entries` rows ranked first (most counted, or most recently seen; then by
    address), back in numeric order: for appliances that take lists of limited size."""
    if len(rows) <= max_entries:
        return list(rows)
    if rank == "count":
        ranked = sorted(rows, key=lambda row: (-row.count, len(row.key), row.key))
    else:
        ranked = sorted(rows, key=lambda row: (-row.last_seen.timestamp(), len(row.key), row.key))
    return sorted(ranked[:max_entries], key=lambda row: (len(row.key), row.key))


def split(rows: Sequence[BlocklistRow], part_size: int, part: int) -> tuple[list[BlocklistRow], int]:
    """Part `part` (1-based) of the rows cut into parts of `part_size`, and how many parts."""
    parts = max(1, -(-len(rows) // part_size))
    start = (part - 1) * part_size
    return list(rows[start : start + part_size]), parts


def render(blocklist: Blocklist, fmt: Format, name: str) -> str:
    if fmt == "json":
        return render_json(blocklist)
    if fmt == "nft":
        return render_nft(blocklist, name)
    if fmt == "ipset":
        return render_ipset(blocklist, name)
    return render_txt(blocklist)


def _header(blocklist: Blocklist) -> list[str]:
    filters = " ".join(f"{key}={value}" for key, value in blocklist.filters.items())
    return [
        "# remote-uploader blocklist",
        f"# generated_at: {format_time(blocklist.generated_at)}",
        f"# count: {len(blocklist.rows)}",
        f"# filters: {filters}",
    ]


def render_txt(blocklist: Blocklist) -> str:
    return "\n".join([*_header(blocklist), *(row.ip for row in blocklist.rows)]) + "\n"


def render_json(blocklist: Blocklist) -> str:
    document = {
        "generated_at": format_time(blocklist.generated_at),
        "count": len(blocklist.rows),
        "filters": blocklist.filters,
        "items": [
            {"ip": row.ip, "count": row.count, "last_seen": format_time(row.last_seen)} for row in blocklist.rows
        ],
    }
    return json.dumps(document, separators=(",", ":"))


def _split(rows: Sequence[BlocklistRow]) -> tuple[list[str], list[str]]:
    v4 = [row.ip for row in rows if len(row.key) == 4]
    v6 = [row.ip for row in rows if len(row.key) == 16]
    return v4, v6


ELEMENTS_PER_LINE = 1000


def render_nft(blocklist: Blocklist, name: str) -> str:
    """An `nft -f` script: declare table and sets (idempotent), flush, add. One transaction:
    nft applies the whole file or nothing, so the sets are never seen half-filled."""
    v4, v6 = _split(blocklist.rows)
    table = f"inet {name}"
    lines = _header(blocklist)
    lines.append(f"add table {table}")
    for set_name, kind, addresses in ((f"{name}_v4", "ipv4_addr", v4), (f"{name}_v6", "ipv6_addr", v6)):
        lines.append(f"add set {table} {set_name} {{ type {kind}; flags interval; }}")
        lines.append(f"flush set {table} {set_name}")
        for start in range(0, len(addresses), ELEMENTS_PER_LINE):
            chunk = ", ".join(addresses[start : start + ELEMENTS_PER_LINE])
            lines.append(f"add element {table} {set_name} {{ {chunk} }}")
    return "\n".join(lines) + "\n"


# The kernel treats `create NAME ... -exist` as "already there, fine" only when the existing set
# has the same maxelem (hashsize may differ: ipset resizes hashes itself). So maxelem is a
# constant, far above any realistic list, and only hashsize follows the size of the list.
IPSET_MAXELEM = 2**24


def _ipset_sizes(count: int) -> tuple[int, int]:
    """(hashsize, maxelem): a power-of-two hash with a bucket per address, at least ipset's 1024."""
    hashsize = 1024
    while hashsize < count:
        hashsize *= 2
    maxelem = IPSET_MAXELEM
    while maxelem < count:  # a list of more than 16 million addresses: see docs/collector.md
        maxelem *= 2
    return hashsize, maxelem


def render_ipset(blocklist: Blocklist, name: str) -> str:
    """An `ipset restore` script: fill `NAME_v4.new` (created for this size), swap it with the
    live set, drop the old one. Rules referring to `NAME_v4` see the old list, then the new one."""
    v4, v6 = _split(blocklist.rows)
    lines = _header(blocklist)
    for set_name, family, addresses in ((f"{name}_v4", "inet", v4), (f"{name}_v6", "inet6", v6)):
        hashsize, maxelem = _ipset_sizes(len(addresses))
        new = f"{set_name}.new"
        spec = f"hash:ip family {family} hashsize {hashsize} maxelem {maxelem}"
        lines.append(f"create {set_name} {spec} -exist")
        lines.append(f"create {new} {spec} -exist")
        lines.append(f"flush {new}")
        lines.extend(f"add {new} {address}" for address in addresses)
        lines.append(f"swap {new} {set_name}")
        lines.append(f"destroy {new}")
    return "\n".join(lines) + "\n"
