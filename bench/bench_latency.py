"""Latency of `forever`: from a line appended to a watched file to its address stored at the collector.

    python -m bench.bench_latency                       # default settings (poll 1 s, max_batch_age 1 s)
    python -m bench.bench_latency --lines 300 --set read.poll_interval=0.2 --set batching.max_batch_age=0.2

A real collector (SQLite) and the agent as a real process. A writer appends one line with a new
address at random intervals (a trickle: never enough for `min_upload_batch`); a watcher asks the
collector (GET /v1/ips) every 20 ms which addresses it has stored and notes when each first
appears. Reports p50/p95/p99/max of (stored - appended); the watcher's period bounds the error.
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


def run(lines: int, settings: list[str], seed: int) -> list[float]:
    rng = random.Random(seed)
    with local_collector() as collector, tempfile.TemporaryDirectory(prefix="ru-latency-") as tmp:
        work = Path(tmp)
        log = work / "access.log"
        log.write_text("")
        token = work / "token"
        token.write_text(collector.token)  # type: ignore[attr-defined]
        config = work / "agent.toml"
        # the collector fixture issues its token to the agent named "test-agent"
        config.write_text(f'[agent]\nid = "test-agent"\nstate_dir = "{work / "state"}"\nstats_interval = 0\n'
                          f'[server]\nurl = "{collector.url}"\ntoken_file = "{token}"\n'  # type: ignore[attr-defined]
                          f'[[sources]]\npaths = ["{log}"]\n')
        overrides = [arg for setting in settings for arg in ("--set", setting)]
        agent = subprocess.Popen([sys.executable, "-m", "remote_uploader", "forever", "-c", str(config), *overrides],
                                 env=agent_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=200)
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="agent setting, as the agent's --set")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    latencies = run(args.lines, args.settings, args.seed)
    print(f"machine: {machine()}")
    print(f"settings: {', '.join(args.settings) or 'defaults (read.poll_interval=1.0, batching.max_batch_age=1.0)'}")
    print(f"lines: {len(latencies)}, appended every 0.05-0.5 s, watcher period {WATCH_PERIOD * 1000:.0f} ms")
    print("latency append -> stored at the collector (s): "
          f"p50 {percentile(latencies, 50):.3f}  p95 {percentile(latencies, 95):.3f}  "
          f"p99 {percentile(latencies, 99):.3f}  max {max(latencies):.3f}  mean {statistics.mean(latencies):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
