"""The CrowdSec decision stream: a big startup pull, and many bouncers polling.

    nice -n 10 python bench/bench_lapi.py                       # 300,000 decisions, 100 bouncers, 60 s
    nice -n 10 python bench/bench_lapi.py --decisions 50000 --bouncers 20 --seconds 20

Workload (deterministic): `--decisions` active decisions (bans of distinct addresses, 10 %
IPv6, one in fifty a /24 range) stored through the storage library in a fresh SQLite database,
served by a `collector serve` process on 127.0.0.1. Measurements:

- startup pull: one `GET /v1/decisions/stream?startup=true`, plain then gzipped (as Go's HTTP
  client, hence the firewall bouncer, asks), read as it streams, from the
  request to the last byte, and the collector's CPU-seconds meanwhile; the collector's RSS is
  sampled every 10 ms (its whole process tree) and reported as its peak and as growth over its
  RSS just before the pull; the answer is then parsed and its decisions counted (client side,
  not measured);
- delta pull: the same key again (nothing changed): what every later poll costs;
- polling: `--bouncers` keys, each already past its startup pull, polling every `--interval`
  seconds (evenly spread) for `--seconds`, while one decision a second is added and one
  deleted; the collector's CPU-seconds over the window (its process tree, not the clients),
  as a share of one core, and the pulls answered.
"""

from __future__ import annotations

import argparse
import gzip
import ipaddress
import json
import os
import random
import sqlite3
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

import httpx  # noqa: E402

from bench.common import TreeRss, _rss_kib, _tree  # noqa: E402
from remote_uploader.collector.auth import create_bouncer_key  # noqa: E402
from remote_uploader.collector.storage import open_storage  # noqa: E402
from remote_uploader.collector.storage.base import to_micros  # noqa: E402
from remote_uploader.collector.storage.model import NewDecision  # noqa: E402
from remote_uploader.collector.storage.sql_decisions import value_range  # noqa: E402


def tree_cpu(pid: int) -> float:
    total = 0.0
    for member in _tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def make_decisions(count: int, seed: int = 1) -> list[NewDecision]:
    rng = random.Random(seed)
    until = datetime.now(UTC) + timedelta(hours=4)
    seen: set[str] = set()
    made = []
    while len(made) < count:
        draw = rng.random()
        if draw < 0.02:
            value = str(ipaddress.ip_network((rng.getrandbits(24) << 8, 24)))
        elif draw < 0.12:
            value = str(ipaddress.IPv6Address((0x2A00 << 112) | rng.getrandbits(64)))
        else:
            value = str(ipaddress.IPv4Address(rng.randrange(1 << 24, 223 << 24)))
        if value in seen:
            continue
        seen.add(value)
        scope = "Range" if "/" in value else "Ip"
        made.append(NewDecision(value=value, scope=scope, until=until, scenario="bench-rule"))
    return made


def fill(db_url: str, count: int) -> float:
    """Store the decisions: the rows `add_decisions` writes, inserted in one transaction with
    `executemany` (add_decisions checks each value for an active decision first, about 1 ms a
    row on the loaded development machine: minutes for 300,000)."""
    started = time.perf_counter()
    storage = open_storage(db_url, pool_size=1)
    try:
        storage.migrate()
    finally:
        storage.close()
    now = to_micros(datetime.now(UTC))
    rows = []
    for seq, made in enumerate(make_decisions(count), start=1):
        family, lo, hi = value_range(made.value)
        rows.append(
            (
                made.value,
                made.scope,
                family,
                lo,
                hi,
                made.type,
                made.origin,
                made.scenario,
                "",
                "{}",
                now,
                to_micros(made.until),
                seq,
            )
        )
    path = db_url.removeprefix("sqlite://")
    with sqlite3.connect(path, isolation_level=None) as conn:
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO decisions (value, scope, family, lo, hi, type, origin, scenario, reason, details, "
            "created_at, until, state, created_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'active', ?)",
            rows,
        )
        conn.execute("UPDATE sequences SET value = ? WHERE name = 'decisions'", (count,))
        conn.execute("COMMIT")
    conn.close()
    return time.perf_counter() - started


def startup_pull(url: str, key: str, pid: int, encoding: str = "identity") -> dict[str, float]:
    baseline = sum(_rss_kib(p) for p in _tree(pid)) / 1024
    chunks = []
    cpu_before = tree_cpu(pid)
    with TreeRss(pid) as rss:
        started = time.perf_counter()
        address = url + "/v1/decisions/stream?startup=true"
        headers = {"X-Api-Key": key, "Accept-Encoding": encoding}
        with httpx.stream("GET", address, headers=headers, timeout=600) as answer:
            answer.raise_for_status()
            for chunk in answer.iter_raw():
                chunks.append(chunk)
        elapsed = time.perf_counter() - started
    cpu = tree_cpu(pid) - cpu_before
    body = b"".join(chunks)
    answer = json.loads(gzip.decompress(body) if encoding == "gzip" else body)
    return {
        "seconds": elapsed,
        "cpu": cpu,
        "bytes": len(body),
        "decisions": len(answer["new"]),
        "rss_before": baseline,
        "rss_peak": rss.peak_mib,
        "growth": rss.peak_mib - baseline,
    }


def poll(url: str, keys: list[str], interval: float, seconds: float, db_url: str, pid: int) -> dict[str, float]:
    stop = threading.Event()
    pulls = [0]
    failures = [0]
    lock = threading.Lock()

    def bouncer(key: str, offset: float) -> None:
        with httpx.Client(headers={"X-Api-Key": key, "User-Agent": "bench-bouncer/1"}, timeout=60) as client:
            if stop.wait(offset):
                return
            while True:
                try:
                    ok = client.get(url + "/v1/decisions/stream").status_code == 200
                except httpx.HTTPError:
                    ok = False
                with lock:
                    pulls[0] += ok
                    failures[0] += not ok
                if stop.wait(interval):
                    return

    def churn() -> None:
        storage = open_storage(db_url, pool_size=1)
        n = 0
        try:
            while not stop.wait(1.0):
                n += 1
                until = datetime.now(UTC) + timedelta(hours=1)
                value = f"100.64.{n // 250}.{n % 250 + 1}"
                storage.add_decisions([NewDecision(value=value, scope="Ip", until=until)], datetime.now(UTC))
                if n > 1:
                    prev = f"100.64.{(n - 1) // 250}.{(n - 1) % 250 + 1}"
                    storage.delete_decisions(datetime.now(UTC), value=prev)
        finally:
            storage.close()

    threads = [
        threading.Thread(target=bouncer, args=(key, interval * i / len(keys)), daemon=True)
        for i, key in enumerate(keys)
    ]
    threads.append(threading.Thread(target=churn, daemon=True))
    cpu_before = tree_cpu(pid)
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    cpu = tree_cpu(pid) - cpu_before
    return {"seconds": elapsed, "pulls": pulls[0], "failures": failures[0], "cpu": cpu, "share": cpu / elapsed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decisions", type=int, default=300_000)
    parser.add_argument("--bouncers", type=int, default=100)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)

    from tests.helpers.collector_fixtures import CollectorProcess

    with tempfile.TemporaryDirectory(prefix="ru-bench-lapi-") as tmp:
        workdir = Path(tmp)
        db_url = f"sqlite://{workdir}/collector.db"
        filled = fill(db_url, args.decisions)
        print(f"stored {args.decisions:,} decisions in {filled:.1f} s", flush=True)
        storage = open_storage(db_url, pool_size=1)
        try:
            key = create_bouncer_key(storage, "big")
            keys = [create_bouncer_key(storage, f"poll-{i}") for i in range(args.bouncers)]
            seq = storage.decision_seq()
            for i in range(args.bouncers):  # past their startup pulls
                storage.record_pull(f"poll-{i}", seq, datetime.now(UTC), "bench-bouncer/1")
        finally:
            storage.close()
        collector = CollectorProcess(workdir, db_url, ["--no-access-log"])
        collector.start()
        try:
            pid = collector.proc.pid  # type: ignore[union-attr]
            httpx.head(collector.url + "/v1/decisions/stream", headers={"X-Api-Key": key})
            for encoding in ("identity", "gzip"):  # gzip: what Go's HTTP client asks for by itself
                big = startup_pull(collector.url, key, pid, encoding)
                print(
                    f"startup pull ({encoding}): {big['decisions']:,.0f} decisions, {big['bytes'] / 2**20:.1f} MiB "
                    f"in {big['seconds']:.2f} s ({big['cpu']:.2f} CPU-s of the collector); collector RSS "
                    f"{big['rss_before']:.1f} MiB before, peak {big['rss_peak']:.1f} MiB (+{big['growth']:.1f} MiB)",
                    flush=True,
                )
            started = time.perf_counter()
            delta = httpx.get(collector.url + "/v1/decisions/stream", headers={"X-Api-Key": key}).json()
            print(f"delta pull (nothing changed): {(time.perf_counter() - started) * 1000:.1f} ms, {delta}")
            polled = poll(collector.url, keys, args.interval, args.seconds, db_url, pid)
            print(
                f"{args.bouncers} bouncers every {args.interval:g} s for {polled['seconds']:.0f} s: "
                f"{polled['pulls']:.0f} pulls ({polled['failures']:.0f} failed), collector "
                f"{polled['cpu']:.2f} CPU-s = {polled['share'] * 100:.1f} % of one core",
                flush=True,
            )
        finally:
            collector.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
