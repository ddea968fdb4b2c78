"""What every reliability scenario shares: result rows, the agent as a killable process, exact tallies,
a small tmpfs for a full disk, dropped file-permission privileges, and a TLS front for any server.

Nothing here asserts: the scenarios do, after recording their row, so that a failing scenario still
shows its lost and double-counted figures in docs/reliability.md instead of hiding them.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.agent import agent_command, agent_env, run_agent

RESULTS_ENV = "RELIABILITY_RESULTS"
LONG_ENV = "RELIABILITY_LONG"
LONG = os.environ.get(LONG_ENV) == "1"

# A long scenario is marked `slow` and skipped (with this reason, visible in -ra) unless asked for.
long_only = [
    pytest.mark.slow,
    pytest.mark.skipif(not LONG, reason=f"long scenario: run scripts/reliability --long (sets {LONG_ENV}=1)"),
]


def scales(fast: Any, long: Any) -> list[Any]:
    """Parameters for a scenario that runs small in the normal suite and large in the long run."""
    return [pytest.param(fast, id="fast"), pytest.param(long, id="long", marks=long_only)]


# --- result rows ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One line of the table in docs/reliability.md. `lost`/`doubled` None: not a counting scenario."""

    key: str  # "group/name": the group orders the table, the name makes the row unique
    scenario: str
    done: str
    times: int
    lost: int | None
    doubled: int | None
    recovery_s: float | None
    note: str = ""
    long: bool = False


def record(row: Row) -> None:
    """Append the row to $RELIABILITY_RESULTS (JSON lines; one O_APPEND write, safe across xdist)."""
    target = os.environ.get(RESULTS_ENV)
    if not target:
        return
    line = (json.dumps(asdict(row), sort_keys=True) + "\n").encode()
    fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def tally(expected: Mapping[str, int], got: Mapping[str, int]) -> tuple[int, int]:
    """(lost, double-counted) occurrences: what the collector misses, and what it has too much of."""
    want, have = Counter(expected), Counter(got)
    return sum((want - have).values()), sum((have - want).values())


# --- the agent as a process -------------------------------------------------------------------------


class AgentProcess:
    """`remote-uploader <command>` as a child whose output goes to files, never to pipes.

    A pipe nobody reads fills up (64 KiB) and then blocks the agent's logging, which would be a
    fault of the test, not of the agent; files never block.
    """

    def __init__(self, workdir: Path, *args: str, env: dict[str, str] | None = None,
                 preexec: Callable[[], None] | None = None) -> None:
        self.workdir = workdir
        self.preexec = preexec
        self.args = args
        self.env = env
        self.out_path = workdir / "agent.stdout"
        self.err_path = workdir / "agent.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, env: dict[str, str] | None = None) -> AgentProcess:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("agent already running")
        with self.out_path.open("ab") as out, self.err_path.open("ab") as err:
            self.proc = subprocess.Popen(agent_command(*self.args), stdout=out, stderr=err,
                                         env=agent_env({**(self.env or {}), **(env or {})}), cwd=self.workdir,
                                         start_new_session=True, preexec_fn=self.preexec)
        self.starts += 1
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed."""
        if self.proc is not None:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM and wait: the agent seals, drains for shutdown.drain_timeout, exits."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def wait(self, timeout: float = 120) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace") if self.out_path.exists() else ""

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace") if self.err_path.exists() else ""


def run(config: Path, *args: str, env: dict[str, str] | None = None,
        timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """`remote-uploader ARGS -c CONFIG`, run in the config's directory.

    Never in the repository root: there `python -m remote_uploader` would find the root-level
    compatibility script `remote_uploader.py` before the package.
    """
    return run_agent(*args, "-c", str(config), env=env, timeout=timeout, cwd=config.parent)


def status(config: Path) -> dict[str, Any]:
    """`status --json` (read-only, lock-free: it runs beside a live agent)."""
    result = run(config, "status", "--json", timeout=60)
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def offsets(config: Path) -> dict[str, int]:
    return {item["path"]: item["offset"] for item in status(config).get("files", [])}


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll a condition held by another process (its log, its status) until true or `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def rotate(path: Path, keep: int = 3) -> None:
    """logrotate's default (rename, then a new file): path -> path.1 -> path.2 ..., new empty path."""
    for n in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{n}")
        if older.exists():
            older.rename(path.with_name(f"{path.name}.{n + 1}"))
    path.rename(path.with_name(f"{path.name}.1"))
    path.touch()


# --- a full disk: a small tmpfs ----------------------------------------------------------------------


def tmpfs_unavailable_reason() -> str | None:
    """None when a small tmpfs can be mounted here; else why not (shown as the skip reason)."""
    if os.geteuid() != 0:
        return "mounting a small tmpfs for the state directory needs root"
    if shutil.which("mount") is None:
        return "no mount(8) on this machine"
    probe = Path(f"/tmp/ru-tmpfs-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    try:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                                capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            return f"cannot mount a tmpfs here: {result.stderr.strip() or result.returncode}"
        subprocess.run(["umount", str(probe)], capture_output=True, timeout=30)
        return None
    finally:
        with contextlib.suppress(OSError):
            probe.rmdir()


@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of `size` on `path` for the duration (lazily unmounted, even if busy)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                   check=True, capture_output=True, timeout=30)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem is full; returns it (delete it to give the space back)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 65536, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


# --- file permissions as an ordinary user ------------------------------------------------------------

_CAP_DAC_OVERRIDE = 1
_CAP_DAC_READ_SEARCH = 2
_PR_CAPBSET_DROP = 24


def drop_file_privileges() -> None:
    """preexec_fn: remove root's power to ignore file permissions from this child and what it execs.

    Root keeps uid 0 (so its interpreter, home and state stay reachable) but loses
    CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from its bounding set, so a 0000 file is unreadable
    to it exactly as it would be to the unprivileged user an agent should run as.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def permissions_unenforceable_reason(tmp: Path) -> str | None:
    """None when a child can be made to respect file permissions here (see drop_file_privileges)."""
    secret = tmp / "permission-probe"
    secret.write_text("x")
    secret.chmod(0)
    try:
        preexec = drop_file_privileges if os.geteuid() == 0 else None
        result = subprocess.run(["cat", str(secret)], capture_output=True, preexec_fn=preexec, timeout=30)
    except OSError as exc:
        return f"cannot drop CAP_DAC_OVERRIDE here ({exc}); root would read a 0000 file"
    finally:
        secret.unlink()
    if result.returncode == 0:
        return "file permissions are not enforced for this user (root without a way to drop CAP_DAC_OVERRIDE)"
    return None


# --- TLS in front of any HTTP server --------------------------------------------------------------------


class TlsFront:
    """A TLS-terminating TCP relay on 127.0.0.1 in front of a plain HTTP server (receiver or collector).

    The certificate comes from a `trustme` CA made per test, so verification can succeed (with
    server.ca_file) or fail (without it) against the same server.
    """

    def __init__(self, backend_port: int, context: ssl.SSLContext) -> None:
        self.backend_port = backend_port
        self.context = context
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.handshake_failures = 0
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="tls-front", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self._thread.join(5)

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(30)
        try:
            tls = self.context.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            self.handshake_failures += 1
            raw.close()
            return
        try:
            backend = socket.create_connection(("127.0.0.1", self.backend_port), timeout=30)
        except OSError:
            tls.close()
            return
        pump = threading.Thread(target=_pump, args=(backend, tls), daemon=True)
        pump.start()
        _pump(tls, backend)
        pump.join(30)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
