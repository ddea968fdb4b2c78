"""Latency of `forever`: from a line appended to a watched file to its address stored at the collector.

    python -m bench.bench_latency                       # default settings (poll 1 s, max_batch_age 1 s)
    python -m bench.bench_latency --lines 300 --runs 3 --markdown   # medians of 3 runs, as a table row
    python -m bench.bench_latency --lines 300 --set read.poll_interval=0.2 --set batching.max_batch_age=0.2
    python -m bench.bench_latency --idle 30             # CPU of an idle `forever` (no writes) over 30 s
    python -m bench.bench_latency --idle 30 --files 100 # the same, following 100 quiet files

A real collector (SQLite) and the agent as a real process. A writer appends one line with a new
address at random intervals (a trickle: never enough for `min_upload_batch`); a watcher asks the
collector (GET /v1/ips) every 20 ms which addresses it has stored and notes when each first
appears. Reports p50/p95/p99/max of (stored - appended); the watcher's period bounds the error.
With --runs, each run has its own seed and the figures are the medians over the runs.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.common import agent_env, local_collector, machine

WATCH_PERIOD = 0.02


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def watch(collector: object, seen: dict[str, float], stop: threading.Event) -> None:
    url = collector.url + "/v1/ips"  # type: ignore[attr-defined]
    headers = collector.headers()  # type: ignore[attr-defined]
    with httpx.Client(timeout=10) as client:
        while not stop.wait(WATCH_PERIOD):
            response = client.get(url, params={"sort": "last_seen", "limit": 10000}, headers=headers)
            now = time.monotonic()
            for item in response.json()["items"]:
                seen.setdefault(item["ip"], now)


def _write_config(work: Path, collector: object, files: int = 1) -> Path:
    """The agent's configuration: `access.log` (and `files - 1` quiet others, `quiet-N.log`)."""
    log = work / "access.log"
    log.write_text("")
    quiet = [work / f"quiet-{n}.log" for n in range(files - 1)]
    for path in quiet:
        path.write_text("10.255.255.1 - - [28/Nov/2026:10:00:00 +0000] \"GET / HTTP/1.1\" 200 1\n")
    paths = ", ".join(f'"{path}"' for path in [log, *quiet])
    token = work / "token"
    token.write_text(collector.token)  # type: ignore[attr-defined]
    config = work / "agent.toml"
    # the collector fixture issues its token to the agent named "test-agent"
    config.write_text(f'[agent]\nid = "test-agent"\nstate_dir = "{work / "state"}"\nstats_interval = 0\n'
                      f'[server]\nurl = "{collector.url}"\ntoken_file = "{token}"\n'  # type: ignore[attr-defined]
                      f'[[sources]]\npaths = [{paths}]\n')
    return config


def _start_agent(config: Path, settings: list[str]) -> subprocess.Popen[str]:
    overrides = [arg for setting in settings for arg in ("--set", setting)]
    return subprocess.Popen([sys.executable, "-m", "remote_uploader", "forever", "-c", str(config), *overrides],
                            env=agent_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def run(lines: int, settings: list[str], seed: int) -> list[float]:
    rng = random.Random(seed)
    with local_collector() as collector, tempfile.TemporaryDirectory(prefix="ru-latency-") as tmp:
        work = Path(tmp)
        config = _write_config(work, collector)
        log = work / "access.log"
        agent = _start_agent(config, settings)
        seen: dict[str, float] = {}
        stop = threading.Event()
        watcher = threading.Thread(target=watch, args=(collector, seen, stop), daemon=True)
        watcher.start()
        appended: dict[str, float] = {}
        try:
            time.sleep(2.0)  # the agent is up and has looked at the (empty) file
            fd = os.open(log, os.O_WRONLY | os.O_APPEND)
            for n in range(lines):
                ip = f"10.{n // 62500 % 250}.{n // 250 % 250}.{n % 250 + 1}"
                line = f'{ip} - - [28/Nov/2026:10:00:00 +0000] "GET /latency/{n} HTTP/1.1" 200 1\n'
                appended[ip] = time.monotonic()
                os.write(fd, line.encode())
                time.sleep(rng.uniform(0.05, 0.5))
            os.close(fd)
            deadline = time.monotonic() + 30
            while len(set(appended) & set(seen)) < len(appended) and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            stop.set()
            watcher.join(timeout=10)
            agent.send_signal(signal.SIGTERM)
            _, stderr = agent.communicate(timeout=60)
        missing = set(appended) - set(seen)
        if missing:
            raise SystemExit(f"{len(missing)} lines never reached the collector; agent said:\n{stderr}")
        return [seen[ip] - at for ip, at in appended.items()]


def cpu_seconds(pid: int) -> float:
    """CPU time of a process so far, all its threads (from /proc/PID/task/*/schedstat: nanoseconds)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that just ended
    return total / 1e9


def idle_cpu(seconds: float, settings: list[str], files: int = 1) -> float:
    """CPU seconds `forever` uses over `seconds` following `files` files nobody writes to."""
    with local_collector() as collector, tempfile.TemporaryDirectory(prefix="ru-idle-") as tmp:
        config = _write_config(Path(tmp), collector, files)
        agent = _start_agent(config, settings)
        try:
            time.sleep(3.0)  # start-up (imports, first pass) is not idle
            before = cpu_seconds(agent.pid)
            time.sleep(seconds)
            return cpu_seconds(agent.pid) - before
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.communicate(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=200)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="agent setting, as the agent's --set")
    parser.add_argument("--seed", type=int, default=1, help="seed of the first run (run k uses seed + k)")
    parser.add_argument("--markdown", action="store_true", help="end with a markdown table row of the medians")
    parser.add_argument("--idle", type=float, metavar="SECONDS", help="measure idle CPU instead of latency")
    parser.add_argument("--files", type=int, default=1, help="--idle: how many quiet files the agent follows")
    args = parser.parse_args()
    label = ", ".join(args.settings) or "defaults (read.poll_interval=1.0, batching.max_batch_age=1.0)"
    print(f"machine: {machine()}")
    print(f"settings: {label}")
    if args.idle is not None:
        used = [idle_cpu(args.idle, args.settings, args.files) for _ in range(args.runs)]
        print(f"idle CPU over {args.idle:.0f} s, {args.files} files, no writes: "
              + ", ".join(f"{u * 1000:.1f} ms" for u in used)
              + f" (median {statistics.median(used) / args.idle * 100:.2f}% of one core)")
        return 0
    print(f"lines: {args.lines} per run, appended every 0.05-0.5 s, watcher period {WATCH_PERIOD * 1000:.0f} ms")
    figures = []
    for k in range(args.runs):
        latencies = run(args.lines, args.settings, args.seed + k)
        row = (percentile(latencies, 50), percentile(latencies, 95), percentile(latencies, 99), max(latencies),
               statistics.mean(latencies))
        figures.append(row)
        print("latency append -> stored at the collector (s): "
              f"p50 {row[0]:.3f}  p95 {row[1]:.3f}  p99 {row[2]:.3f}  max {row[3]:.3f}  mean {row[4]:.3f}")
    medians = [statistics.median(column) for column in zip(*figures, strict=True)]
    if args.runs > 1:
        print(f"medians of {args.runs} runs: p50 {medians[0]:.3f}  p95 {medians[1]:.3f}  p99 {medians[2]:.3f}  "
              f"max {medians[3]:.3f}  mean {medians[4]:.3f}")
    if args.markdown:
        print("| settings | p50 | p95 | p99 | max | mean |")
        print("|---|---|---|---|---|---|")
        print(f"| {label} | " + " | ".join(f"{value:.3f} s" for value in medians) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
