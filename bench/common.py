"""Shared by the benchmark scripts: the machine, workloads on disk, a local collector, RSS sampling.

Benchmarks run real processes (the agent as `python -m remote_uploader`, the collector as its
own server on 127.0.0.1) and report medians of several runs; nothing here asserts a duration.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench" / "data"


def machine() -> str:
    """One line that says what the figures were measured on."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB RAM, Linux {platform.release()}, "
            f"Python {platform.python_version()}")


def workload(kind: str, size: str) -> tuple[Path, dict[str, int]]:
    """The workload file and its exact expected counts, generated once (deterministic)."""
    DATA.mkdir(parents=True, exist_ok=True)
    log = DATA / f"{kind}-{size}.log"
    expected = DATA / f"{kind}-{size}.json"
    if not (log.exists() and expected.exists()):
        subprocess.run([sys.executable, "-m", "bench.workloads", kind, "--size", size, "--out", str(DATA)],
                       check=True, cwd=ROOT)
    counts = json.loads(expected.read_text())
    return log, counts.get("counts", counts)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


class TreeRss:
    """Peak of the summed RSS of a process and all its descendants, sampled every 10 ms."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak_kib = max(self.peak_kib, sum(_rss_kib(pid) for pid in _tree(self.pid)))

    @property
    def peak_mib(self) -> float:
        return self.peak_kib / 1024


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@contextmanager
def local_collector() -> Iterator[object]:
    """A real collector on SQLite in a temporary directory (the test suite's CollectorProcess)."""
    sys.path.insert(0, str(ROOT))
    from tests.helpers import collector_fixtures
    from tests.helpers.collector_fixtures import CollectorProcess

    # A benchmark runs niced on a shared machine: a collector slow to start is not a failure.
    collector_fixtures.START_TIMEOUT = max(collector_fixtures.START_TIMEOUT, 120.0)

    with tempfile.TemporaryDirectory(prefix="ru-bench-") as tmp:
        workdir = Path(tmp)
        collector = CollectorProcess(workdir, f"sqlite:///{workdir / 'collector.db'}")
        collector.start()
        try:
            yield collector
        finally:
            collector.stop()


def agent_env(src: str | Path | None = None) -> dict[str, str]:
    """The agent's environment: this checkout's code, or `src`'s (another checkout's root or its
    src/ folder, side by side)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMOTE_UPLOADER_")}
    env["PYTHONPATH"] = str(_src_dir(src))
    return env


def _src_dir(src: str | Path | None) -> Path:
    if src is None:
        return ROOT / "src"
    path = Path(src)
    return path / "src" if (path / "src" / "remote_uploader").is_dir() else path


def timed_agent(args: Sequence[str], src: str | Path | None = None) -> tuple[float, float, float, int]:
    """Run the agent (this checkout's, or `src`'s); returns (wall seconds, CPU seconds of it and its
    workers, peak RSS MiB, exit code).

    cwd is "/": from the repository root, `-m remote_uploader` would run the compat script
    remote_uploader.py (which first checks the installed requirements) instead of the package.
    """
    before = os.times()
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "remote_uploader", *args], env=agent_env(src),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd="/")
    with TreeRss(process.pid) as rss:
        _, stderr = process.communicate()
    wall = time.perf_counter() - started
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    if process.returncode != 0:
        sys.stderr.write(stderr.decode(errors="replace"))
    return wall, cpu, rss.peak_mib, process.returncode
