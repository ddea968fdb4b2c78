"""Fixtures for the fault-injecting receiver (tests/helpers/receiver.py).

`receiver` runs it in a thread of the test process: fastest, and the test reads its state directly.
`receiver_process` runs it as a separate process on a SQLite file, so a test can SIGKILL it mid-ingest
and start it again on the same port; the same query and fault methods then go over its control channel.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import selectors
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlencode

import pytest

from tests.helpers.receiver import FaultControls, Receiver, RequestLog

__all__ = ["Receiver", "ReceiverProcess", "receiver", "receiver_process"]

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 60.0  # a guard against a hung start, generous for a loaded machine
CONTROL_TIMEOUT = 10.0


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A receiver in a thread on 127.0.0.1, on a free port, with a random token; stopped after."""
    rx = Receiver(token=secrets.token_urlsafe(24))
    rx.start()
    try:
        yield rx
    finally:
        rx.close()


@pytest.fixture
def receiver_process(tmp_path: Path) -> Iterator[ReceiverProcess]:
    """A receiver in its own process, counting into a SQLite file under tmp_path; killed after."""
    proc = ReceiverProcess(tmp_path / "receiver.sqlite3", token=secrets.token_urlsafe(24))
    proc.start()
    try:
        yield proc
    finally:
        proc.kill()


class ReceiverProcess(FaultControls):
    """``python -m tests.helpers.receiver`` driven from a test: start, SIGKILL, start again.

    Counts and seen batch ids are in the SQLite file, so they survive kill(); the request log is in
    the process's memory and starts empty after each start(). Fault methods (inherited) go to the
    running process and are lost with it; pass `fault_plan` to start() to have them from the first
    request on.
    """

    def __init__(self, state: Path, token: str, port: int = 0) -> None:
        self.state = state
        self.token = token
        self.port = port  # 0 until the first start; then fixed, so restarts keep the address
        self.stderr_path = state.with_suffix(".stderr")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, fault_plan: list[dict[str, Any]] | None = None) -> None:
        """Start the process (same port as before) and return once it prints LISTENING <port>."""
        if self._proc is not None and self._proc.poll() is None:
            raise RuntimeError(f"receiver process {self._proc.pid} is already running")
        command = [sys.executable, "-m", "tests.helpers.receiver", "--port", str(self.port)]
        # `--token=` joined: a token_urlsafe that starts with "-" is otherwise read as an option
        # (one start in 64 failed with "argument --token: expected one argument").
        command += [f"--token={self.token}", "--state", str(self.state)]
        if fault_plan:
            command += ["--fault-plan", json.dumps(fault_plan)]
        with open(self.stderr_path, "ab") as stderr:
            self._proc = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=stderr)
        assert self._proc.stdout is not None
        line = _read_line(self._proc.stdout, STARTUP_TIMEOUT)
        if not line.startswith(b"LISTENING "):
            code = self._proc.poll()
            self.kill()
            stderr = self.stderr_path.read_text(errors="replace")[-2000:]
            state = f"exited with {code}" if code is not None else f"silent for {STARTUP_TIMEOUT:.0f} s"
            raise RuntimeError(f"receiver did not start ({state}, got {line!r}); its stderr:\n{stderr}")
        self.port = int(line.split()[1])

    def kill(self) -> None:
        """SIGKILL: no cleanup runs, as in a crash. Returns once the process is gone."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM: the process stops listening and closes its database cleanly."""
        self._end(signal.SIGTERM)

    def _end(self, signum: int) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            os.kill(self._proc.pid, signum)
        self._proc.wait(STARTUP_TIMEOUT)
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._proc = None

    # -- the same queries as Receiver, over the control channel ---------------------------------

    def counts(self) -> dict[str, int]:
        return dict(self._get("/_counts")["counts"])

    def total(self) -> int:
        return int(self._get("/_counts")["total"])

    def batch_ids(self) -> set[str]:
        return set(self._get("/_counts")["batch_ids"])

    def requests(self) -> list[RequestLog]:
        return [RequestLog(**item) for item in self._get("/_log")["requests"]]

    def wait_for_total(self, total: int, timeout: float) -> bool:
        """Long-polls the process, which waits on its store's condition: no polling loop here."""
        query = urlencode({"total": total, "timeout": timeout})
        return bool(self._get(f"/_wait?{query}", timeout=timeout + CONTROL_TIMEOUT)["reached"])

    def wait_for_requests(self, n: int, timeout: float) -> bool:
        query = urlencode({"requests": n, "timeout": timeout})
        return bool(self._get(f"/_wait?{query}", timeout=timeout + CONTROL_TIMEOUT)["reached"])

    def _control(self, op: str, args: dict[str, Any]) -> None:
        self._call("POST", "/_control", json.dumps({"op": op, **args}).encode())

    def _get(self, path: str, timeout: float = CONTROL_TIMEOUT) -> Any:
        return self._call("GET", path, None, timeout)

    def _call(self, method: str, path: str, body: bytes | None, timeout: float = CONTROL_TIMEOUT) -> Any:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            payload = json.loads(response.read())
        finally:
            conn.close()
        if response.status != 200:
            raise RuntimeError(f"receiver control {method} {path} answered {response.status}: {payload}")
        return payload


def _read_line(stream: IO[bytes], timeout: float) -> bytes:
    """One line from a child's stdout, or b"" if none comes within `timeout` (a hung start)."""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(timeout):
            return b""
    return stream.readline()
