"""Collector ingest rate: records per second, per layer and end to end, on SQLite and PostgreSQL.

    python bench/bench_collector.py                      # SQLite, plus PostgreSQL if installed
    python bench/bench_collector.py --batches 20 --pg postgresql://user@host/db

Workload (deterministic): `--batches` batches of `--records` records (default 10 x 100,000, the
protocol's largest batch) drawn from a pool of `--pool` addresses (10% IPv6), so that later
batches mostly update rows that exist, as in a long-running collector. Three measurements:

- parse:   body bytes -> validated, aggregated Batch (batch.parse_batch), no database;
- storage: Storage.store_batch of parsed batches (one transaction each);
- http:    gzip bodies POSTed to a `collector serve` process on 127.0.0.1, by one client (one
           after another, like one agent) and by `--clients` at once (like several agents),
           wall-clock from the first request to the last answer (decompression, parsing,
           validation, storage, commit with fsync).

Without --pg, a throwaway PostgreSQL is started with the test helper (initdb/pg_ctl), if the
binaries are there. Rates are per record as sent (not per distinct address).
"""

from __future__ import annotations

import argparse
import gzip
import ipaddress
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from remote_uploader.collector.batch import parse_batch  # noqa: E402
from remote_uploader.collector.cli import tune_gc  # noqa: E402
from remote_uploader.collector.storage import open_storage  # noqa: E402
from remote_uploader.protocol import format_time  # noqa: E402


def make_bodies(batches: int, records: int, pool_size: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    pool = []
    for _ in range(pool_size):
        if rng.random() < 0.1:
            pool.append(str(ipaddress.IPv6Address((0x2A00 << 112) | rng.getrandbits(100))))
        else:
            pool.append(str(ipaddress.IPv4Address(rng.randrange(0x01000000, 0xDF000000))))
    start = datetime(2024, 5, 1, tzinfo=UTC)
    sources = ["/var/log/nginx/access.log", "/var/log/auth.log"]
    bodies = []
    for number in range(batches):
        # Like the agent: records are stamped with the times their lines were read, and one batch
        # spans a few dozen distinct read times.
        reads = sorted(format_time(start + timedelta(seconds=number * 60 + rng.random() * 60)) for _ in range(40))
        items = []
        for _ in range(records):
            first, last = sorted(rng.sample(range(len(reads)), 2))
            items.append(
                {
                    "ip": rng.choice(pool),
                    "count": rng.randrange(1, 20),
                    "first_seen": reads[first],
                    "last_seen": reads[last],
                    "source": rng.choice(sources),
                }
            )
        document = {
            "agent": "test-agent",
            "batch_id": f"bench-{number}",
            "sent_at": format_time(start),
            "records": items,
        }
        bodies.append(json.dumps(document, separators=(",", ":")).encode())
    return bodies


def rate(records: int, seconds: float, cpu: float) -> str:
    """Wall-clock rate, and the rate per CPU-second (which other load on the machine does not skew)."""
    return f"{records / seconds:>10,.0f} records/s wall ({seconds:.2f} s), {records / cpu:>10,.0f} per CPU-second"


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_parse(bodies: list[bytes], records: int) -> None:
    started, cpu = time.perf_counter(), time.process_time()
    for body in bodies:
        parse_batch(body)
    elapsed = time.perf_counter() - started
    print(f"  parse+validate   {rate(records * len(bodies), elapsed, time.process_time() - cpu)}")


def bench_storage(url: str, bodies: list[bytes], records: int) -> None:
    parsed = [parse_batch(body) for body in bodies]
    storage = open_storage(url, timeout=60, pool_size=2)
    storage.migrate()
    try:
        started, cpu = time.perf_counter(), time.process_time()
        for batch in parsed:
            storage.store_batch(batch, datetime.now(UTC))
        elapsed = time.perf_counter() - started
        # On PostgreSQL the CPU figure counts this process only, not the server's.
        print(f"  storage          {rate(records * len(bodies), elapsed, time.process_time() - cpu)}")
    finally:
        storage.close()


def bench_http(url: str, bodies: list[bytes], records: int, workdir: Path, clients: int = 1) -> None:
    import httpx
    from tests.helpers.collector_fixtures import CollectorProcess

    process = CollectorProcess(workdir, url, ["--no-access-log"])
    process.start()
    try:
        compressed = [gzip.compress(body, compresslevel=6) for body in bodies]
        headers = {**process.headers(), "Content-Type": "application/json", "Content-Encoding": "gzip"}
        assert process.proc is not None

        def send(share: list[bytes]) -> None:
            with httpx.Client(timeout=300) as client:
                for body in share:
                    response = client.post(process.url + "/v1/batches", content=body, headers=headers)
                    response.raise_for_status()

        shares = [compressed[n::clients] for n in range(clients)]
        threads = [threading.Thread(target=send, args=(share,)) for share in shares]
        started, cpu = time.perf_counter(), process_cpu(process.proc.pid)
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        used = process_cpu(process.proc.pid) - cpu
        # CPU: the collector process's (not the client's, not PostgreSQL's).
        label = f"http, {clients} client{'s' if clients > 1 else ''}"
        print(f"  {label:<16} {rate(records * len(bodies), elapsed, used)}")
    finally:
        process.stop()


@contextmanager
def postgres(url: str | None) -> Iterator[Callable[[], str] | None]:
    """A function giving fresh database URLs, or None if no PostgreSQL is available."""
    if url is not None:
        yield lambda: url
        return
    from tests.helpers.postgres import PostgresServer, find_bindir

    bindir = find_bindir()
    if bindir is None:
        yield None
        return
    server = PostgresServer(bindir)
    server.start()
    try:
        yield server.create_database
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--pool", type=int, default=500_000, help="distinct addresses to draw from")
    parser.add_argument("--pg", help="a PostgreSQL URL to use (its tables are created if missing)")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--clients", type=int, default=2, help="also post from this many clients at once")
    args = parser.parse_args()

    bodies = make_bodies(args.batches, args.records, args.pool)
    tune_gc()  # as `collector serve` does
    size = sum(map(len, bodies)) / len(bodies) / 2**20
    print(f"{args.batches} batches of {args.records:,} records ({size:.1f} MiB of JSON each)")
    bench_parse(bodies, args.records)
    with tempfile.TemporaryDirectory(prefix="bench-collector-") as tmp:
        work = Path(tmp)
        print("SQLite")
        bench_storage(f"sqlite://{work}/storage.db", bodies, args.records)
        if not args.skip_http:
            for clients in sorted({1, args.clients}):
                (work / f"http-{clients}").mkdir()
                bench_http(
                    f"sqlite://{work}/http-{clients}.db", bodies, args.records, work / f"http-{clients}", clients
                )
        with postgres(args.pg) as fresh:
            if fresh is None:
                print("PostgreSQL: not installed (no initdb/pg_ctl), skipped")
                return
            print("PostgreSQL")
            bench_storage(fresh(), bodies, args.records)
            if not args.skip_http:
                for clients in sorted({1, args.clients}):
                    (work / f"http-pg-{clients}").mkdir()
                    bench_http(fresh(), bodies, args.records, work / f"http-pg-{clients}", clients)


if __name__ == "__main__":
    main()
