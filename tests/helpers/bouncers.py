"""Real CrowdSec bouncers from Debian's packages, run against a collector, and the network
namespace the firewall bouncer programs.

    netns(name)              a fresh network namespace (loopback up), deleted afterwards
    entered(name)            run the calling thread inside a namespace: sockets opened and
                             processes started meanwhile (a collector, a bouncer) live there
    FirewallBouncer          crowdsec-firewall-bouncer in nftables mode; .ruleset() is `nft list ruleset`
    CustomBouncer            crowdsec-custom-bouncer calling a script that records each call;
                             .events() is [(action, value, seconds, decision JSON), ...]
    require(program)         the program's path, or skip saying how to install it

Both bouncers pull every second (`update_frequency: 1s`) and log to a file in their workdir.
They must be started after the collector answers: on a failed first pull the firewall bouncer
exits and the custom bouncer stops pulling.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def require(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        pytest.skip(f"{program} is not installed (apt-get install --no-install-recommends {program})")
    return path


# -- network namespaces -----------------------------------------------------------------------


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"setns: {os.strerror(error)}")


@contextmanager
def netns(name: str) -> Iterator[str]:
    """Create namespace `name` (skip, saying why, where that is impossible) and delete it after."""
    ip = shutil.which("ip")
    if ip is None:
        pytest.skip("`ip` is not installed (apt-get install iproute2): cannot create a network namespace")
    created = subprocess.run([ip, "netns", "add", name], capture_output=True, text=True)
    if created.returncode != 0:
        pytest.skip(f"cannot create a network namespace (needs root / CAP_SYS_ADMIN): {created.stderr.strip()}")
    try:
        subprocess.run([ip, "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True)
        yield name
    finally:
        subprocess.run([ip, "netns", "delete", name], capture_output=True)


@contextmanager
def entered(name: str) -> Iterator[None]:
    """Move the calling thread into namespace `name`, and back afterwards.

    A network namespace belongs to a thread, not to a process; a child started by this thread
    meanwhile is born in the namespace and stays there.
    """
    with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{name}") as target:
        _setns(target.fileno())
        try:
            yield
        finally:
            _setns(home.fileno())


# -- the bouncers -----------------------------------------------------------------------------


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 30.0, log: Callable[[], str] = str) -> T:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{log()}")
        time.sleep(0.1)


class Bouncer:
    program = ""

    def __init__(self, workdir: Path, api_url: str, api_key: str) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.api_url = api_url.rstrip("/") + "/"
        self.api_key = api_key
        self.config = workdir / "bouncer.yaml"
        self.log_path = workdir / "bouncer.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def settings(self) -> dict[str, Any]:
        raise NotImplementedError

    def start(self) -> None:
        path = require(self.program)
        # JSON is YAML: no YAML writer needed.
        self.config.write_text(json.dumps(self.settings(), indent=2))
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([path, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class FirewallBouncer(Bouncer):
    """crowdsec-firewall-bouncer in nftables mode (tables `crowdsec` and `crowdsec6`)."""

    program = "crowdsec-firewall-bouncer"

    def settings(self) -> dict[str, Any]:
        return {
            "mode": "nftables",
            "pid_dir": str(self.workdir),
            "update_frequency": "1s",
            "daemonize": False,
            "log_mode": "stdout",
            "log_level": "debug",
            "api_url": self.api_url,
            "api_key": self.api_key,
            "disable_ipv6": False,
            "deny_action": "DROP",
            "deny_log": False,
            "supported_decisions_types": ["ban"],
            "blacklists_ipv4": "crowdsec-blacklists",
            "blacklists_ipv6": "crowdsec6-blacklists",
            "nftables": {
                "ipv4": {"enabled": True, "set-only": False, "table": "crowdsec", "chain": "crowdsec-chain"},
                "ipv6": {"enabled": True, "set-only": False, "table": "crowdsec6", "chain": "crowdsec6-chain"},
            },
            "prometheus": {"enabled": False, "listen_addr": "127.0.0.1", "listen_port": 60601},
        }

    def ruleset(self) -> str:
        """`nft list ruleset` of the calling thread's namespace (call it inside `entered`)."""
        nft = require("nft")
        return subprocess.run([nft, "list", "ruleset"], capture_output=True, text=True, check=True).stdout

    def elements(self) -> set[str]:
        """The addresses (and intervals) in the bouncer's sets, without their timeouts."""
        found: set[str] = set()
        for body in re.findall(r"elements = \{([^}]*)\}", self.ruleset()):
            found.update(item.split()[0] for item in body.split(",") if item.strip())
        return found


class CustomBouncer(Bouncer):
    """crowdsec-custom-bouncer calling a script that appends `ACTION VALUE SECONDS SCENARIO JSON`."""

    program = "crowdsec-custom-bouncer"

    def __init__(self, workdir: Path, api_url: str, api_key: str) -> None:
        super().__init__(workdir, api_url, api_key)
        self.record = workdir / "calls.log"
        self.script = workdir / "record.sh"

    def settings(self) -> dict[str, Any]:
        self.script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {self.record}\n')
        self.script.chmod(0o755)
        return {
            "bin_path": str(self.script),
            "feed_via_stdin": False,
            "total_retries": 0,
            "scenarios_containing": [],
            "scenarios_not_containing": [],
            "origins": [],
            "piddir": str(self.workdir),
            "update_frequency": "1s",
            "cache_retention_duration": "10s",
            "daemonize": False,
            "log_mode": "stdout",
            "log_level": "debug",
            "api_url": self.api_url,
            "api_key": self.api_key,
            "prometheus": {"enabled": False, "listen_addr": "127.0.0.1", "listen_port": 60602},
        }

    def events(self) -> list[tuple[str, str, int, dict[str, Any]]]:
        """Every call so far: (add|del, value, seconds, the decision as the bouncer passed it)."""
        if not self.record.exists():
            return []
        calls = []
        for line in self.record.read_text().splitlines():
            action, value, seconds, rest = line.split(" ", 3)
            decision = json.loads(rest[rest.index("{") :])
            calls.append((action, value, int(seconds), decision))
        return calls
