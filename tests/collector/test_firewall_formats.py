"""The nft and ipset blocklists load into the real tools (where installed and permitted).

They create uniquely named sets (and an nftables table without chains: no traffic is touched)
and remove them afterwards. Skipped, saying why, where `nft`/`ipset` are missing or not allowed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from remote_uploader.collector.blocklist import Blocklist, render
from tests.collector.test_blocklist import row
from tests.helpers.batches import T0

ADDRESSES = ["1.2.3.4", "8.8.8.8", "198.51.100.23", "2a00:1450:4001::5", "2a00::1"]


def tool(name: str) -> str:
    path = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.path.exists(p)), None)
    if path is None:
        pytest.skip(f"{name} is not installed (apt-get install {'nftables' if name == 'nft' else name})")
    probe = subprocess.run(
        [path, "list", *([] if name == "ipset" else ["tables"])],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        pytest.skip(f"{name} cannot be used here (needs root and netfilter): {probe.stderr.strip()[:200]}")
    return path


def run(*command: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=60)


@pytest.fixture
def name() -> Iterator[str]:
    yield f"rut{os.getpid()}"


def test_the_nft_script_loads_twice_and_holds_the_list(tmp_path: Path, name: str) -> None:
    nft = tool("nft")
    script = tmp_path / "blocklist.nft"
    script.write_text(render(Blocklist(T0, {}, [row(ip) for ip in ADDRESSES]), "nft", name))
    try:
        for _ in range(2):  # a reload replaces the contents
            result = run(nft, "-f", str(script))
            assert result.returncode == 0, result.stderr
        listed = run(nft, "list", "table", "inet", name).stdout
        for address in ADDRESSES:
            assert address in listed
        assert "flags interval" in listed
    finally:
        run(nft, "delete", "table", "inet", name)


def test_the_ipset_script_restores_twice_with_a_growing_list(tmp_path: Path, name: str) -> None:
    ipset = tool("ipset")
    small = render(Blocklist(T0, {}, [row(ip) for ip in ADDRESSES]), "ipset", name)
    many = [f"9.{n // 256}.{n % 256}.1" for n in range(3000)]
    large = render(Blocklist(T0, {}, [row(ip) for ip in many]), "ipset", name)
    try:
        for script in (small, large, small):  # hashsize changes between loads; maxelem does not
            result = run(ipset, "restore", stdin=script)
            assert result.returncode == 0, result.stderr
        members = run(ipset, "list", f"{name}_v4").stdout
        assert "Number of entries: 3" in members and "198.51.100.23" in members
        assert "2a00::1" in run(ipset, "list", f"{name}_v6").stdout
        assert run(ipset, "list", f"{name}_v4.new").returncode != 0  # the swapped-out set is gone
    finally:
        for suffix in ("_v4", "_v6", "_v4.new", "_v6.new"):
            run(ipset, "destroy", name + suffix)
