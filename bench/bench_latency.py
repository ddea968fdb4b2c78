"""Latency of `forever`: from a line appended to a watched file to its address stored at the collector.

    python -m bench.bench_latency                       # default settings
    python -m bench.bench_latency --lines 300 --runs 3 --markdown   # medians of 3 runs, as a table row
    python -m bench.bench_latency --lines 300 --set read.poll_interval=0.2 --set batching.max_batch_age=0.2
    python -m bench.bench_latency --idle 30             # CPU of an idle `forever` (no writes) over 30 s
    python -m bench.bench_latency --idle 30 --files 100 # the same, following 100 quiet files
    python -m bench.bench_latency --rate 5000 --lines 50000  # a steady load instead of the trickle
    python -m bench.bench_latency --copytruncate 20     # lines lost/doubled by copytruncate (0.1 s window)
    python -m bench.bench_latency --src /tmp/main ...   # the same with another checkout's agent, side by side

A real collector (SQLite) and the agent as a real process. A writer appends one line with a new
address at random intervals (a trickle: never enough for `min_upload_batch`); a watcher reads the
collector's database every 5 ms for the addresses appended and notes when each first appears
(reading the database file, not asking the collector: an oracle must not load what it times).
Reports p50/p95/p99/max of (stored - appended); the watcher's period bounds the error.
With --runs, each run has its own seed and the figures are the medians over the runs.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import agent_env, local_collector, machine

WATCH_PERIOD = 0.005


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def watch(collector: object, seen: dict[str, float], stop: threading.Event,
          pending: dict[str, float] | None = None) -> None:
    """Note when each address first appears in the collector's database.

    Reads the collector's SQLite file directly (read-only; a WAL reader never blocks the writer)
    for the addresses appended and not seen yet, by primary key: asking the collector over HTTP
    for its whole list every few milliseconds loaded it enough to slow the very ingest being
    timed (a GET /v1/ips of every address, 50 times a second, took a core of its own)."""
    database = collector.db_url.removeprefix("sqlite:///")  # type: ignore[attr-defined]
    connection = None
    waiting = pending if pending is not None else {}
    while not stop.wait(WATCH_PERIOD):
        if connection is None:
            if not os.path.exists(database):
                continue
            connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
        want = [ip for ip in list(waiting) if ip not in seen]
        for start in range(0, len(want), 500):
            part = want[start: start + 500]
            rows = connection.execute(f"SELECT ip FROM ips WHERE ip IN ({','.join('?' * len(part))})", part)
            now = time.monotonic()
            for (ip,) in rows:
                seen.setdefault(ip, now)
    if connection is not None:
        connection.close()


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


def _start_agent(config: Path, settings: list[str], src: str | None = None) -> subprocess.Popen[str]:
    overrides = [arg for setting in settings for arg in ("--set", setting)]
    return subprocess.Popen([sys.executable, "-m", "remote_uploader", "forever", "-c", str(config), *overrides],
                            env=_env(src), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _env(src: str | None) -> dict[str, str]:
    """The agent's environment: this tree's code, or `src`'s (the code before a change, side by side)."""
    return agent_env(src)


def _ip(n: int) -> str:
    return f"10.{n // 62500 % 250}.{n // 250 % 250}.{n % 250 + 1}"


def _line(n: int) -> bytes:
    return f'{_ip(n)} - - [28/Nov/2026:10:00:00 +0000] "GET /latency/{n} HTTP/1.1" 200 1\n'.encode()


def run(lines: int, settings: list[str], seed: int, src: str | None = None, rate: float = 0.0) -> list[float]:
    """Latencies of `lines` lines: a trickle (one every 0.05-0.5 s), or `rate` lines a second
    (written every 10 ms in a burst of `rate / 100` lines; every line is timed)."""
    rng = random.Random(seed)
    with local_collector() as collector, tempfile.TemporaryDirectory(prefix="ru-latency-") as tmp:
        work = Path(tmp)
        config = _write_config(work, collector)
        log = work / "access.log"
        agent = _start_agent(config, settings, src)
        seen: dict[str, float] = {}
        stop = threading.Event()
        appended: dict[str, float] = {}
        watcher = threading.Thread(target=watch, args=(collector, seen, stop, appended), daemon=True)
        watcher.start()
        try:
            time.sleep(2.0)  # the agent is up and has looked at the (empty) file
            fd = os.open(log, os.O_WRONLY | os.O_APPEND)
            if rate:
                burst = max(1, round(rate / 100))
                started = time.monotonic()
                for first in range(0, lines, burst):
                    numbers = range(first, min(lines, first + burst))
                    due = started + first / rate
                    time.sleep(max(0.0, due - time.monotonic()))
                    now = time.monotonic()
                    appended.update((_ip(n), now) for n in numbers)
                    os.write(fd, b"".join(_line(n) for n in numbers))
            else:
                for n in range(lines):
                    appended[_ip(n)] = time.monotonic()
                    os.write(fd, _line(n))
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


def _settled(collector: object, quiet: float = 3.0, limit: float = 120.0) -> None:
    """Wait until the collector's database has not changed for `quiet` seconds (or `limit`): a
    loaded machine may deliver the last lines seconds late, and they are not lost."""
    database = collector.db_url.removeprefix("sqlite:///")  # type: ignore[attr-defined]
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        last, since, deadline = -1, time.monotonic(), time.monotonic() + limit
        while time.monotonic() < deadline:
            total = connection.execute("SELECT coalesce(sum(total), 0) FROM ips").fetchone()[0]
            if total != last:
                last, since = total, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return
            time.sleep(0.2)
    finally:
        connection.close()


def copytruncate(settings: list[str], src: str | None, seconds: float, window: float,
                 rate: float = 200.0, every: float = 2.0) -> tuple[int, int, int, int, int]:
    """logrotate's copytruncate under a writer of `rate` lines a second, every `every` seconds:
    copy the file (a read-write loop, as logrotate does), wait `window` seconds (the writer goes
    on), truncate. Lines written between the start of the copy and the truncate are in the
    window: the only ones a reader can lose (they are in neither the copy nor the new content
    unless it read them in time). Returns (window lines, lost of them, lines outside, lost of
    those, doubled), from the collector's counts (each line its own address, count 1)."""
    with local_collector() as collector, tempfile.TemporaryDirectory(prefix="ru-copytruncate-") as tmp:
        work = Path(tmp)
        config = _write_config(work, collector)
        log = work / "access.log"
        agent = _start_agent(config, settings, src)
        inside: set[str] = set()
        outside: set[str] = set()
        lock = threading.Lock()
        in_window = False
        stop = threading.Event()

        def write() -> None:
            n = 0
            with open(log, "ab", buffering=0) as out:
                started = time.monotonic()
                while not stop.is_set():
                    time.sleep(max(0.0, started + n / rate - time.monotonic()))
                    with lock:
                        out.write(_line(n))
                        (inside if in_window else outside).add(_ip(n))
                    n += 1

        try:
            # Not a fixed pause: on a loaded machine the agent's start-up took longer than 2 s, and a
            # copy made before its first whole pass is history it never looked at (docs/forever.md,
            # Restarts): 396 lines "lost outside the window" were lines 0-395, rotated away before
            # the agent had looked at the file once.
            _wait_until_following(work / "state" / "agent.log")
            writer = threading.Thread(target=write, daemon=True)
            writer.start()
            rotations = 0
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                time.sleep(every)
                rotations += 1
                with lock:
                    in_window = True
                shutil.copyfile(log, work / f"access.log.{rotations}")
                time.sleep(window)
                with lock:
                    os.truncate(log, 0)
                    in_window = False
            time.sleep(1.0)
            stop.set()
            writer.join()
            _settled(collector)  # everything the agent read is delivered before it is stopped
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.communicate(timeout=60)
        # What `forever` had read but not delivered when it was stopped (a loaded machine) is
        # queued, not lost: one `once` on the same state delivers it (and reads nothing new: the
        # files hold nothing past the offsets but what was lost for good).
        final = subprocess.run([sys.executable, "-m", "remote_uploader", "once", "-c", str(config)],
                               env=_env(src), capture_output=True, text=True, timeout=300, check=False)
        if final.returncode != 0:  # then what it left queued counts as lost below: say so
            print(f"warning: the final once exited {final.returncode}: {final.stderr[-500:]}", flush=True)
        print(f"final once: exit {final.returncode}", flush=True)
        counts = collector.counts()  # type: ignore[attr-defined]
        lost = sorted(int(ip.split(".")[1]) * 62500 + int(ip.split(".")[2]) * 250 + int(ip.split(".")[3]) - 1
                      for ip in outside if ip not in counts)
        doubled_lines = sorted(ip for ip, n in counts.items() if n > 1)
        if lost or doubled_lines:  # keep the evidence: the agent's state and log, the copies, and which lines
            keep = Path(tempfile.mkdtemp(prefix="ru-copytruncate-kept-"))
            shutil.copytree(work, keep / "work", dirs_exist_ok=True)
            (keep / "lost-outside.txt").write_text("".join(f"{n}\n" for n in lost))
            (keep / "doubled.txt").write_text("".join(f"{ip}\n" for ip in doubled_lines))
            (keep / "final-once.txt").write_text(final.stdout + final.stderr)
            print(f"lost outside the window: {len(lost)}, doubled {len(doubled_lines)}; kept in {keep}", flush=True)
    lost_inside = sum(1 for ip in inside if ip not in counts)
    lost_outside = sum(1 for ip in outside if ip not in counts)
    doubled = sum(1 for n in counts.values() if n > 1)
    return len(inside), lost_inside, len(outside), lost_outside, doubled


def cpu_seconds(pid: int) -> float:
    """CPU time of a process so far, all its threads (from /proc/PID/task/*/schedstat: nanoseconds)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that just ended
    return total / 1e9


def _wait_until_following(log: Path, limit: float = 300.0) -> None:
    """Until the agent's log says its first whole pass is done (`event=following`)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if log.exists() and "event=following" in log.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise SystemExit(f"the agent did not start following within {limit:.0f} s")


def idle_cpu(seconds: float, settings: list[str], files: int = 1, src: str | None = None) -> float:
    """CPU seconds `forever` uses over `seconds` following `files` files nobody writes to."""
    with local_collector() as collector, tempfile.TemporaryDirectory(prefix="ru-idle-") as tmp:
        config = _write_config(Path(tmp), collector, files)
        agent = _start_agent(config, settings, src)
        try:
            # Start-up (imports, a record per file, the first pass) is not idle: on a loaded
            # machine registering 100 files (a transaction each) took longer than any fixed pause.
            _wait_until_following(Path(tmp) / "state" / "agent.log")
            time.sleep(2.0)
            before = cpu_seconds(agent.pid)
            time.sleep(seconds)
            return cpu_seconds(agent.pid) - before
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.communicate(timeout=60)


def _trees(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """(label, source tree) of each agent measured: this tree, then every --src, run by run."""
    mine: list[tuple[str, str | None]] = [] if args.only_src else [("this tree", None)]
    return mine + [(f"--src {src}", src) for src in args.src]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=200)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="agent setting, as the agent's --set")
    parser.add_argument("--seed", type=int, default=1, help="seed of the first run (run k uses seed + k)")
    parser.add_argument("--markdown", action="store_true", help="end with a markdown table row of the medians")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="lines per second (a steady load) instead of the trickle; --lines in all")
    parser.add_argument("--idle", type=float, metavar="SECONDS", help="measure idle CPU instead of latency")
    parser.add_argument("--files", type=int, default=1, help="--idle: how many quiet files the agent follows")
    parser.add_argument("--copytruncate", type=float, metavar="SECONDS",
                        help="lines lost and doubled by copytruncate under ~200 lines/s over SECONDS")
    parser.add_argument("--window", type=float, default=0.1, help="--copytruncate: seconds from copy to truncate")
    parser.add_argument("--src", action="append", default=[], metavar="TREE",
                        help="also measure the agent of another checkout (its src/), alternating run by run")
    parser.add_argument("--only-src", action="store_true", help="measure only the --src checkouts")
    args = parser.parse_args()
    label = ", ".join(args.settings) or "defaults"
    print(f"machine: {machine()}")
    print(f"settings: {label}")
    trees = _trees(args)
    if args.idle is not None:
        used: dict[str, list[float]] = {name: [] for name, _ in trees}
        for _ in range(args.runs):
            for name, src in trees:
                used[name].append(idle_cpu(args.idle, args.settings, args.files, src))
        for name, values in used.items():
            print(f"{name}: idle CPU over {args.idle:.0f} s, {args.files} files, no writes: "
                  + ", ".join(f"{u * 1000:.1f} ms" for u in values)
                  + f" (median {statistics.median(values) / args.idle * 100:.2f}% of one core)")
        return 0
    if args.copytruncate is not None:
        outcomes: dict[str, list[tuple[int, int, int, int, int]]] = {name: [] for name, _ in trees}
        for _ in range(args.runs):
            for name, src in trees:
                outcomes[name].append(copytruncate(args.settings, src, args.copytruncate, args.window))
                print(f"{name}: run: window {outcomes[name][-1][0]}, lost in window {outcomes[name][-1][1]}, "
                      f"outside {outcomes[name][-1][2]}, lost outside {outcomes[name][-1][3]}, "
                      f"doubled {outcomes[name][-1][4]}", flush=True)
        print(f"copytruncate every 2 s for {args.copytruncate:.0f} s, ~200 lines/s, copy -> truncate "
              f"{args.window * 1000:.0f} ms")
        print("| agent | window lines | lost in window | lines outside | lost outside | doubled |")
        print("|---|---|---|---|---|---|")
        for name, rows in outcomes.items():
            sums = [sum(column) for column in zip(*rows, strict=True)]
            share = f" ({sums[1] / sums[0] * 100:.0f}%)" if sums[0] else ""
            print(f"| {name} | {sums[0]} | {sums[1]}{share} | {sums[2]} | {sums[3]} | {sums[4]} |")
        return 0
    load = f"{args.rate:.0f} lines/s" if args.rate else "a trickle (one line every 0.05-0.5 s)"
    print(f"lines: {args.lines} per run, {load}, watcher period {WATCH_PERIOD * 1000:.0f} ms")
    figures: dict[str, list[tuple[float, ...]]] = {name: [] for name, _ in trees}
    for k in range(args.runs):
        for name, src in trees:
            latencies = run(args.lines, args.settings, args.seed + k, src, args.rate)
            row = (percentile(latencies, 50), percentile(latencies, 95), percentile(latencies, 99),
                   max(latencies), statistics.mean(latencies))
            figures[name].append(row)
            print(f"{name}: latency append -> stored at the collector (s): "
                  f"p50 {row[0]:.3f}  p95 {row[1]:.3f}  p99 {row[2]:.3f}  max {row[3]:.3f}  mean {row[4]:.3f}")
    table = ["| agent | load | settings | p50 | p95 | p99 | max | mean |", "|---|---|---|---|---|---|---|---|"]
    for name, timed in figures.items():
        medians = [statistics.median(column) for column in zip(*timed, strict=True)]
        if args.runs > 1:
            print(f"{name}: medians of {args.runs} runs: p50 {medians[0]:.3f}  p95 {medians[1]:.3f}  "
                  f"p99 {medians[2]:.3f}  max {medians[3]:.3f}  mean {medians[4]:.3f}")
        table.append(f"| {name} | {load} | {label} | " + " | ".join(f"{value:.3f} s" for value in medians) + " |")
    if args.markdown:
        print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
