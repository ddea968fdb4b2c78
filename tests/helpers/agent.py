"""Running the real agent in tests: config files, logs with known counts, subprocesses.

The agent always runs as its own process here (`python -m remote_uploader ...`), so a test can
SIGKILL it exactly as an operator's `kill -9` or a power cut would.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import tomli_w

from remote_uploader.agent.batch import decode_queued, records_of
from remote_uploader.agent.sink import Delivered

if TYPE_CHECKING:
    from remote_uploader.agent.runner import Agent

ROOT = Path(__file__).resolve().parents[2]


def write_config(path: Path, *, url: str, token: str, state_dir: Path, sources: Sequence[str | dict[str, object]],
                 **sections: dict[str, object]) -> Path:
    """A TOML config; `sections` adds or overrides tables, e.g. batching={"min_upload_batch": 10}."""
    token_file = path.parent / "token"
    token_file.write_text(token + "\n")
    document: dict[str, object] = {
        "agent": {"id": "test-agent", "state_dir": str(state_dir), "stats_interval": 0},
        "server": {"url": url, "token_file": str(token_file), "backoff_base": 0.05, "backoff_cap": 0.5,
                   "max_retry_time": 20.0, "timeout": 5.0},
        "sources": [s if isinstance(s, dict) else {"paths": [s]} for s in sources],
    }
    for name, values in sections.items():
        table = document.setdefault(name, {})
        assert isinstance(table, dict)
        table.update(values)
    path.write_bytes(tomli_w.dumps(document).encode())
    return path


def agent_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "remote_uploader", *args]


def agent_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMOTE_UPLOADER_")}
    env["PYTHONPATH"] = str(ROOT / "src")
    env["LANG"] = "C.UTF-8"
    env.pop("LANGUAGE", None)
    env.update(extra or {})
    return env


def run_agent(*args: str, timeout: float = 120, cwd: Path | None = None,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(agent_command(*args), capture_output=True, text=True, timeout=timeout,
                          env=agent_env(env), cwd=cwd)


def start_agent(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(agent_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=agent_env(env), start_new_session=True)


def kill(process: subprocess.Popen[str]) -> None:
    """SIGKILL: no handler runs, nothing is flushed; exactly what the guarantees must survive."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=30)


def random_ipv4(rng: random.Random) -> str:
    return f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def random_ipv6(rng: random.Random) -> str:
    return f"2001:db8:{rng.randint(1, 0xffff):x}::{rng.randint(1, 0xffff):x}"


def write_access_log(path: Path, lines: int, *, seed: int = 0, distinct: int = 500, ipv6_share: float = 0.1,
                     append: bool = False) -> Counter[str]:
    """An nginx-style log whose exact per-IP counts are returned (client address + one XFF hop)."""
    rng = random.Random(seed)
    pool = [random_ipv6(rng) if rng.random() < ipv6_share else random_ipv4(rng) for _ in range(distinct)]
    counts: Counter[str] = Counter()
    out = []
    for number in range(lines):
        client = pool[min(int(rng.paretovariate(1.1)) - 1, distinct - 1)]
        hop = pool[rng.randrange(distinct)]
        counts[client] += 1
        counts[hop] += 1
        out.append(f'{client} - - [28/Nov/2026:10:{number % 60:02d}:00 +0000] "GET /item/{number} HTTP/1.1" 200 '
                   f'{number % 9000} "-" "Mozilla/5.0 Chrome/120.0.6099.129" "{hop}"\n')
    with path.open("a" if append else "w", encoding="ascii") as handle:
        handle.writelines(out)
    return counts


def wait_for(predicate: object, timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate()` until true or `timeout`; for conditions in other processes only."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return bool(predicate())  # type: ignore[operator]


class NoSink:
    """A sink for in-process agents whose tests read what was queued: nothing may be uploaded."""

    def send(self, batch_id: str, body: bytes, encoding: str) -> Delivered:
        raise AssertionError("not started")

    def health(self) -> dict[str, object]:
        return {}

    def close(self) -> None:
        pass


def queued_counts(agent: Agent) -> Counter[str]:
    """Every address an in-process agent has queued so far, with its count (nothing uploaded)."""
    counts: Counter[str] = Counter()
    seq = 0
    while (batch := agent.spool.next_batch(seq)) is not None:
        for record in records_of(decode_queued(batch.body, batch.encoding)):
            counts[record.ip] += record.count
        seq = batch.seq
    return counts
