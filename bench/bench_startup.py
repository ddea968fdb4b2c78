"""The agent's start-up CPU, side by side: `once` on an empty file, and a worker process alone.

    python -m bench.bench_startup --runs 10 --main /tmp/main-checkout

Start-up is paid by every `once` (a fifth of a 200 MB run's CPU) and by every worker process,
so it is measured on its own: `once` as a real process (`python -m remote_uploader`, cwd "/")
on an empty log into a null HTTP sink, and `python -m remote_uploader.agent.worker` with its
stdin closed at once (it imports the extractors and exits). Each round runs every checkout once
in turn, so they share the machine's noise; reported are the medians of the CPU (user + system
of the process and its children) and the per-round ratio of this checkout to the other.
"""

from __future__ import annotations

import argparse
import compileall
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import ROOT, agent_env, machine, median
from bench.null_sink import NullSink


def child_cpu(command: list[str], src: Path) -> float:
    """CPU seconds (user + system) of one process and its children.

    From getrusage, not os.times: the latter counts in clock ticks (10 ms), a twentieth of what
    is measured here.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, *command], env=agent_env(src), stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, check=True, cwd="/")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def once_cpu(src: Path, workdir: Path, url: str) -> float:
    """CPU seconds of one `once` on an empty file, with a fresh state directory."""
    state = Path(tempfile.mkdtemp(dir=workdir))
    return child_cpu([
        "-m", "remote_uploader", "once", str(workdir / "empty.log"), "--url", url,
        "--token-file", str(workdir / "token"), "--state-dir", str(state), "--agent-id", "test-agent",
        "--workers", "1", "--set", "agent.stats_interval=0", "--set", "agent.engine=native",
    ], src)


def worker_cpu(src: Path) -> float:
    """CPU seconds of a worker process that starts, finds its stdin closed and exits."""
    return child_cpu(["-m", "remote_uploader.agent.worker"], src)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--main", type=Path, required=True, help="the other checkout (e.g. a worktree of main)")
    args = parser.parse_args(argv)
    checkouts = {"this": ROOT / "src", "main": args.main / "src"}
    for src in checkouts.values():
        compileall.compile_dir(str(src), quiet=1)  # as an installed agent is (bench_agent.py says why)
    print(f"machine: {machine()}", flush=True)
    results: dict[tuple[str, str], list[float]] = {(n, k): [] for n in checkouts for k in ("once", "worker")}
    with NullSink() as sink, tempfile.TemporaryDirectory(prefix="ru-start-") as tmp:
        workdir = Path(tmp)
        (workdir / "empty.log").write_bytes(b"")
        (workdir / "token").write_text(sink.token)
        for round_ in range(args.runs):
            load = " ".join(f"{x:.1f}" for x in os.getloadavg())
            figures = []
            for name, src in checkouts.items():
                results[(name, "once")].append(once_cpu(src, workdir, sink.url))
                results[(name, "worker")].append(worker_cpu(src))
                figures.append(f"{name} once {results[(name, 'once')][-1]:.3f} worker "
                               f"{results[(name, 'worker')][-1]:.3f}")
            print(f"round {round_ + 1} (load {load}): " + ", ".join(figures), flush=True)
    for kind in ("once", "worker"):
        ratios = [a / b for a, b in zip(results[("this", kind)], results[("main", kind)], strict=True)]
        print(f"{kind}: this {median(results[('this', kind)]):.3f} CPU-s, main {median(results[('main', kind)]):.3f}"
              f"; this/main per round: median {median(ratios):.2f} ({', '.join(f'{r:.2f}' for r in ratios)})",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
