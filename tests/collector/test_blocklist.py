"""Blocklist selection (non-global and allowlisted addresses never appear) and formats."""

from __future__ import annotations

import ipaddress
import json

import pytest

from remote_uploader.collector.blocklist import (
    NON_GLOBAL,
    Blocklist,
    NetworkSet,
    render,
    select,
)
from remote_uploader.collector.storage.base import BlocklistRow
from remote_uploader.protocol import ip_key
from tests.helpers.batches import T0


def row(ip: str, count: int = 1) -> BlocklistRow:
    return BlocklistRow(ip, ip_key(ip), count, T0)


NON_GLOBAL_SAMPLES = [
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "127.0.0.1",
    "169.254.1.1",
    "100.64.0.1",
    "192.0.2.1",
    "198.51.100.1",
    "203.0.113.1",
    "224.0.0.1",
    "255.255.255.255",
    "::1",
    "fe80::1",
    "fc00::1",
    "2001:db8::1",
    "ff02::1",
]


@pytest.mark.parametrize("ip", NON_GLOBAL_SAMPLES)
def test_non_global_addresses_are_left_out_by_default(ip: str) -> None:
    assert select([row(ip)], [], include_private=False) == []
    assert select([row(ip)], [], include_private=True) == [row(ip)]


@pytest.mark.parametrize("ip", ["8.8.8.8", "1.1.1.1", "2a00:1450::1", "100.128.0.1", "172.32.0.1"])
def test_global_addresses_are_kept(ip: str) -> None:
    assert select([row(ip)], [], include_private=False) == [row(ip)]


def test_the_allowlist_wins_even_over_include_private() -> None:
    allow = [ipaddress.ip_network("8.8.0.0/16"), ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2a00::/16")]
    rows = [row("8.8.8.8"), row("8.9.0.1"), row("10.0.0.1"), row("2a00:1450::1"), row("2a01::1")]
    assert [r.ip for r in select(rows, allow, include_private=True)] == ["8.9.0.1", "2a01::1"]


def test_network_set_matches_python_ipaddress() -> None:
    networks = [ipaddress.ip_network(n) for n in NON_GLOBAL]
    table = NetworkSet(networks)
    samples = [*NON_GLOBAL_SAMPLES, "8.8.8.8", "9.255.255.255", "11.0.0.0", "2002::1", "2003::1", "::2"]
    for ip in samples:
        address = ipaddress.ip_address(ip)
        assert table.contains_key(ip_key(ip)) == any(address in n for n in networks), ip


def document(*ips: str) -> Blocklist:
    return Blocklist(T0, {"min_count": "1"}, [row(ip, 3) for ip in ips])


def test_txt_has_a_header_with_time_and_count() -> None:
    text = render(document("8.8.8.8", "2a00::1"), "txt", "x")
    lines = text.splitlines()
    assert lines[:4] == [
        "# remote-uploader blocklist",
        "# generated_at: 2024-05-01T12:00:00.000000Z",
        "# count: 2",
        "# filters: min_count=1",
    ]
    assert lines[4:] == ["8.8.8.8", "2a00::1"]


def test_json_lists_items_with_counts() -> None:
    parsed = json.loads(render(document("8.8.8.8"), "json", "x"))
    assert parsed["count"] == 1
    assert parsed["items"] == [{"ip": "8.8.8.8", "count": 3, "last_seen": "2024-05-01T12:00:00.000000Z"}]


def test_nft_script_replaces_two_interval_sets() -> None:
    lines = render(document("8.8.8.8", "1.1.1.1", "2a00::1"), "nft", "ru").splitlines()
    body = [line for line in lines if not line.startswith("#")]
    assert body == [
        "add table inet ru",
        "add set inet ru ru_v4 { type ipv4_addr; flags interval; }",
        "flush set inet ru ru_v4",
        "add element inet ru ru_v4 { 8.8.8.8, 1.1.1.1 }",
        "add set inet ru ru_v6 { type ipv6_addr; flags interval; }",
        "flush set inet ru ru_v6",
        "add element inet ru ru_v6 { 2a00::1 }",
    ]


def test_nft_with_no_addresses_declares_and_flushes_only() -> None:
    body = [line for line in render(document(), "nft", "ru").splitlines() if not line.startswith("#")]
    assert not any(line.startswith("add element") for line in body)


def test_ipset_script_fills_a_new_set_sized_for_the_list_and_swaps_it_in() -> None:
    many = [f"8.{i // 256}.{i % 256}.1" for i in range(3000)]
    lines = [line for line in render(document(*many), "ipset", "ru").splitlines() if not line.startswith("#")]
    assert lines[0] == "create ru_v4 hash:ip family inet hashsize 4096 maxelem 16777216 -exist"
    assert lines[1] == "create ru_v4.new hash:ip family inet hashsize 4096 maxelem 16777216 -exist"
    assert lines[2] == "flush ru_v4.new"
    assert lines[3] == "add ru_v4.new 8.0.0.1"
    assert lines[3 + 3000 : 3 + 3002] == ["swap ru_v4.new ru_v4", "destroy ru_v4.new"]
    assert "create ru_v6 hash:ip family inet6 hashsize 1024 maxelem 16777216 -exist" in lines
