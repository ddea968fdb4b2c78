"""Soak: `forever` for a long time against a faulty collector while logs grow and rotate.

    python -m bench.soak [--minutes 10] [--rate 1500] [--json report.json]

A writer appends nginx-style lines at `--rate` lines/s to one log (exact per-IP counts kept as it
writes) and rotates it every `--rotate` seconds (rename + new file, as logrotate does); the
collector stand-in (tests/helpers/receiver.py) fails 5% of batches with 503, resets 2% of
connections after storing, delays 2%, and goes away for 5-10 s about once a minute. Every
`--sample` seconds the agent's process tree is measured: RSS, open file descriptors, CPU time, and
the queue on disk. At the end the writer stops, faults clear, and the run waits for every
occurrence to arrive before stopping the agent with SIGTERM.

Reported: lost and double-counted occurrences, RSS and descriptors over time (flat means the last
quarter is no higher than the second quarter by more than 10% + 5 MiB, resp. 4 descriptors),
the largest queue, and CPU seconds per MB of log. Exit 1 if anything was lost, doubled, or grew.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers.agent import agent_command, agent_env, random_ipv4, random_ipv6, write_config  # noqa: E402
from tests.helpers.receiver import Receiver  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


class Writer(threading.Thread):
    """Appends lines at a steady rate and rotates; `expected` holds the exact counts written."""

    def __init__(self, live: Path, rate: int, rotate_every: float, seed: int) -> None:
        super().__init__(name="writer", daemon=True)
        self.live = live
        self.rate = rate
        self.rotate_every = rotate_every
        self.rng = random.Random(seed)
        self.pool = [random_ipv6(self.rng) if self.rng.random() < 0.1 else random_ipv4(self.rng)
                     for _ in range(20_000)]
        self.expected: Counter[str] = Counter()
        self.bytes = 0
        self.rotations = 0
        self.stop = threading.Event()
        live.touch()

    def run(self) -> None:
        tick = 0.1
        per_tick = max(1, int(self.rate * tick))
        next_rotation = time.monotonic() + self.rotate_every
        number = 0
        while not self.stop.wait(tick):
            lines = []
            for _ in range(per_tick):
                client = self.pool[min(int(self.rng.paretovariate(1.1)) - 1, len(self.pool) - 1)]
                hop = self.pool[self.rng.randrange(len(self.pool))]
                self.expected[client] += 1
                self.expected[hop] += 1
                number += 1
                lines.append(f'{client} - - [28/Nov/2026:10:00:00 +0000] "GET /item/{number} HTTP/1.1" 200 '
                             f'{number % 9000} "-" "Mozilla/5.0" "{hop}"\n')
            data = "".join(lines).encode()
            with self.live.open("ab") as handle:
                handle.write(data)
            self.bytes += len(data)
            if time.monotonic() >= next_rotation:
                self.rotations += 1
                self.live.rename(self.live.with_name(f"{self.live.name}.{self.rotations}"))
                self.live.touch()
                next_rotation += self.rotate_every


def tree(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo += [int(child) for child in (task / "children").read_text().split()]
    return found


def measure(pid: int, cpu_seen: dict[int, float]) -> tuple[int, int]:
    """(RSS bytes, open descriptors) summed over the process tree; updates per-pid CPU seconds."""
    rss = fds = 0
    for member in tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            rss += int(Path(f"/proc/{member}/statm").read_text().split()[1]) * PAGE
            fds += len(os.listdir(f"/proc/{member}/fd"))
            cpu_seen[member] = (int(fields[11]) + int(fields[12])) / TICKS
        except (OSError, IndexError, ValueError):
            continue
    return rss, fds


def queue_bytes(db: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return int(conn.execute("SELECT total(length(body)) FROM batches").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return -1


def flat(series: list[float], slack_abs: float, slack_rel: float) -> bool:
    if len(series) < 8:
        return True
    quarter = len(series) // 4
    early = statistics.median(series[quarter: 2 * quarter])
    late = max(series[-quarter:])
    return late <= early * (1 + slack_rel) + slack_abs


def soak(minutes: float, rate: int, rotate_every: float, sample_every: float, seed: int,
         workdir: Path, settings: Sequence[str] = ()) -> dict[str, Any]:
    receiver = Receiver(token="soak-" + os.urandom(8).hex())
    receiver.start()
    logs = workdir / "logs"
    logs.mkdir()
    live = logs / "access.log"
    config = write_config(workdir / "agent.toml", url=receiver.url, token=receiver.token,
                          state_dir=workdir / "state", sources=[str(live)],
                          server={"backoff_base": 0.1, "backoff_cap": 2.0},
                          read={"poll_interval": 0.5, "rotate_grace": 2.0})
    writer = Writer(live, rate, rotate_every, seed)
    writer.start()
    with (workdir / "agent.stderr").open("ab") as err, (workdir / "agent.stdout").open("ab") as out:
        overrides = [arg for setting in settings for arg in ("--set", setting)]
        agent = subprocess.Popen(agent_command("forever", "-c", str(config), *overrides), stdout=out, stderr=err,
                                 env=agent_env(), cwd=workdir, start_new_session=True)
    rng = random.Random(seed + 1)
    receiver.fail_fraction(0.05, statuses=(503,), seed=seed)
    receiver.reset_fraction(0.02, after_store=True, seed=seed + 2)
    receiver.delay_fraction(0.02, seconds=0.5, seed=seed + 3)
    samples: list[dict[str, float]] = []
    cpu_seen: dict[int, float] = {}
    started = time.monotonic()
    end = started + minutes * 60
    next_outage = started + rng.uniform(30, 90)
    outages = 0
    while time.monotonic() < end and agent.poll() is None:
        now = time.monotonic()
        if now >= next_outage:
            receiver.refuse_for(rng.uniform(5, 10))
            outages += 1
            next_outage = now + rng.uniform(40, 80)
        rss, fds = measure(agent.pid, cpu_seen)
        samples.append({"t": round(now - started, 1), "rss_mib": round(rss / 2**20, 1), "fds": fds,
                        "queue_kib": round(queue_bytes(workdir / "state" / "queue.db") / 1024, 1),
                        "cpu_s": round(sum(cpu_seen.values()), 2), "written_mb": round(writer.bytes / 1e6, 1)})
        print(json.dumps(samples[-1]), flush=True)
        time.sleep(sample_every)
    writer.stop.set()
    writer.join()
    receiver.clear_faults()
    receiver.wait_until_listening(30)
    back = time.monotonic()
    total = sum(writer.expected.values())
    arrived = receiver.wait_for_total(total, timeout=600)
    drain_s = time.monotonic() - back
    measure(agent.pid, cpu_seen)
    crashed = agent.poll()
    agent.send_signal(signal.SIGTERM)
    code = agent.wait(120)
    got = Counter(receiver.counts())
    receiver.close()
    lost = sum((writer.expected - got).values())
    doubled = sum((got - writer.expected).values())
    rss_series = [s["rss_mib"] for s in samples]
    fd_series = [float(s["fds"]) for s in samples]
    mb = writer.bytes / 1e6
    summary = {
        "minutes": minutes, "lines_per_s": rate, "written_mb": round(mb, 1), "occurrences": total,
        "rotations": writer.rotations, "outages": outages, "lost": lost, "doubled": doubled,
        "arrived": arrived, "drain_s": round(drain_s, 1), "agent_exit": code, "agent_died_early": crashed is not None,
        "rss_mib_steady": statistics.median(rss_series[len(rss_series) // 4:]) if rss_series else None,
        "rss_mib_max": max(rss_series, default=None),
        "rss_flat": flat(rss_series, 5.0, 0.10), "fds_max": max(fd_series, default=None),
        "fds_flat": flat(fd_series, 4.0, 0.0), "queue_kib_max": max((s["queue_kib"] for s in samples), default=0),
        "cpu_s": round(sum(cpu_seen.values()), 1),
        "cpu_s_per_mb": round(sum(cpu_seen.values()) / mb, 3) if mb else None,
    }
    done = (f"`forever` for {minutes:g} min: {rate} lines/s ({mb:.0f} MB) into a log rotated every "
            f"{rotate_every:g} s ({writer.rotations} rotations), collector failing 5%, resetting 2%, delaying 2%, "
            f"{outages} outages of 5-10 s")
    rss_word = "flat" if summary["rss_flat"] else "GREW"
    note = (f"RSS {summary['rss_mib_steady']} MiB median, {summary['rss_mib_max']} MiB max ({rss_word}), "
            f"fds ≤ {summary['fds_max']:.0f} ({'flat' if summary['fds_flat'] else 'GREW'}), queue ≤ "
            f"{summary['queue_kib_max']:.0f} KiB, {summary['cpu_s_per_mb']} CPU s/MB")
    row = {"key": "soak/forever", "scenario": "soak", "done": done, "times": 1, "lost": lost, "doubled": doubled,
           "recovery_s": round(drain_s, 1) if arrived else None, "note": note, "long": True}
    return {"summary": summary, "samples": samples, "row": row}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=1500, help="lines per second")
    parser.add_argument("--rotate", type=float, default=30.0, help="seconds between rotations")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between measurements")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--json", type=Path, help="write the report here as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the working directory (logs, state)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an agent setting, as `remote-uploader --set` (e.g. server.upload_concurrency=1)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="ru-soak-"))
    try:
        report = soak(args.minutes, args.rate, args.rotate, args.sample, args.seed, workdir, args.set)
    finally:
        if not args.keep:
            subprocess.run(["rm", "-rf", str(workdir)], check=False)
    summary = report["summary"]
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    ok = (summary["lost"], summary["doubled"]) == (0, 0) and summary["rss_flat"] and summary["fds_flat"]
    return 0 if ok and summary["arrived"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
