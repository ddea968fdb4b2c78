"""What time buckets cost: ingest rate with and without them (same run), and bytes on disk.

    nice -n 10 python bench/bench_buckets.py [--batches 4] [--records 100000] [--runs 2]

Ingest: the workload of bench_collector.py (batches of 100,000 records from a pool of 500,000
addresses, two sources, a few dozen read times per batch), parsed (batch.parse_batch) and
stored (SqliteStorage.store_batch, deltas encoded as a parsing worker does) into a fresh
SQLite database, once with buckets (`bucket` = 60 s) and once without (0: no bucket deltas),
alternating, `--runs` times each. Medians of records per second (wall clock, this process).

Storage: 1,000,000 distinct addresses in one day (10 batches of 100,000, each in its own
minute, one agent, one source), then folded into hours and days; bytes per row and per million
addresses of each table, from SQLite's dbstat (the file's pages, indexes included).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from bench.bench_collector import make_bodies  # noqa: E402
from remote_uploader.collector.batch import parse_batch  # noqa: E402
from remote_uploader.collector.storage import bulk  # noqa: E402
from remote_uploader.collector.storage.sqlite import SqliteStorage  # noqa: E402
from remote_uploader.protocol import format_time  # noqa: E402


def ingest(bodies: list[bytes], bucket: int, directory: Path) -> tuple[float, float]:
    """(parse seconds, storage seconds) for all bodies into a fresh database."""
    path = directory / f"ingest-{bucket}-{time.monotonic_ns()}.db"
    storage = SqliteStorage(path)
    storage.migrate()
    parse = store = 0.0
    try:
        for body in bodies:
            started = time.perf_counter()
            batch = parse_batch(body, "test-agent", bucket)
            parsed = time.perf_counter()
            encoded = bulk.encode("sqlite-image", batch.deltas, batch.buckets)
            batch = type(batch)(batch.agent, batch.batch_id, batch.sent_at, batch.records, encoded)
            storage.store_batch(batch, datetime.now(UTC))
            parse += parsed - started
            store += time.perf_counter() - parsed
    finally:
        storage.close()
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
    return parse, store


def evaluation(bodies: list[bytes], directory: Path) -> None:
    """How fast the engine evaluates a big batch's addresses against one rule (SQLite)."""
    from remote_uploader.collector.decisions.engine import DecisionEngine
    from remote_uploader.collector.decisions.rules import Rule

    path = directory / "evaluate.db"
    storage = SqliteStorage(path)
    storage.migrate()
    try:
        batches = [parse_batch(body, "test-agent") for body in bodies]
        for batch in batches:
            storage.store_batch(batch, datetime.now(UTC))
        addresses = list(batches[-1].counted_addresses())
        now = max(b.bucket for b in batches[-1].buckets)
        rule = Rule("bench", min_count=60, window=timedelta(minutes=10), duration=timedelta(hours=1))
        engine = DecisionEngine(storage, [rule])
        started = time.perf_counter()
        made = engine.evaluate(addresses, datetime.fromtimestamp(now + 30, UTC))
        took = time.perf_counter() - started
        print(
            f"evaluation: {len(addresses):,} addresses of one batch against one rule (10m window) in "
            f"{took:.2f} s ({len(addresses) / took:,.0f} addresses/s), {len(made):,} decisions made"
        )
    finally:
        storage.close()


def table_bytes(path: Path) -> dict[str, tuple[int, int]]:
    """{table: (bytes of its pages and its indexes' pages, rows)}."""
    conn = sqlite3.connect(path)
    try:
        sizes: dict[str, int] = {}
        for name, size in conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"):
            sizes[name] = size
        out = {}
        for table in ("ips", "ip_agents", "counts", "counts_hour", "counts_day"):
            indexes = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE tbl_name = ?", (table,))]
            rows = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            out[table] = (sum(sizes.get(name, 0) for name in indexes), rows)
        return out
    finally:
        conn.close()


def storage_cost(directory: Path, addresses: int = 1_000_000, per_batch: int = 100_000) -> None:
    rng = random.Random(5)
    path = directory / "cost.db"
    storage = SqliteStorage(path)
    storage.migrate()
    day = datetime(2024, 5, 1, tzinfo=UTC)
    seen: set[int] = set()
    for number in range(addresses // per_batch):
        stamp = format_time(day + timedelta(minutes=number * 144))
        records = []
        while len(records) < per_batch:
            value = rng.randrange(0x01000000, 0xDF000000)
            if value in seen:
                continue
            seen.add(value)
            ip = str(ipaddress.IPv4Address(value))
            records.append(
                {"ip": ip, "count": 3, "first_seen": stamp, "last_seen": stamp, "source": "/var/log/auth.log"}
            )
        body = json.dumps({"agent": "web-1", "batch_id": str(number), "sent_at": stamp, "records": records}).encode()
        storage.store_batch(parse_batch(body, "web-1"), day)
    storage.close()
    show("one day, buckets of 1 minute", table_bytes(path), addresses)
    storage = SqliteStorage(path)
    storage.rollup(day + timedelta(days=1, hours=1), timedelta(minutes=1), timedelta(days=1), timedelta(days=400))
    storage.close()
    with sqlite3.connect(path) as conn:
        conn.execute("VACUUM")
    show("after folding into hours", table_bytes(path), addresses)
    storage = SqliteStorage(path)
    storage.rollup(day + timedelta(days=3), timedelta(minutes=1), timedelta(hours=1), timedelta(days=400))
    storage.close()
    with sqlite3.connect(path) as conn:
        conn.execute("VACUUM")
    show("after folding into days", table_bytes(path), addresses)


def show(label: str, sizes: dict[str, tuple[int, int]], addresses: int) -> None:
    print(f"  {label}:")
    for table, (size, rows) in sizes.items():
        if rows:
            per_million = size / addresses * 1_000_000 / 2**20
            print(
                f"    {table:<12} {rows:>9,} rows  {size / rows:6.1f} bytes/row  "
                f"{per_million:7.1f} MiB per million addresses"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--pool", type=int, default=500_000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--skip-cost", action="store_true")
    args = parser.parse_args()
    bodies = make_bodies(args.batches, args.records, args.pool)
    total = args.batches * args.records
    results: dict[int, list[tuple[float, float]]] = {0: [], 60: []}
    with tempfile.TemporaryDirectory(prefix="ru-bench-buckets-") as tmp:
        for _ in range(args.runs):
            for bucket in (0, 60):  # alternating, so that a busy moment of a shared machine hits both
                results[bucket].append(ingest(bodies, bucket, Path(tmp)))
        print(f"ingest, SQLite, {args.batches} x {args.records:,} records, medians of {args.runs} runs:")
        for bucket, label in ((0, "without buckets"), (60, "with 1-minute buckets")):
            parse = statistics.median(total / p for p, _ in results[bucket])
            store = statistics.median(total / s for _, s in results[bucket])
            both = statistics.median(total / (p + s) for p, s in results[bucket])
            print(f"  {label:<22} parse {parse:>9,.0f}/s  store {store:>9,.0f}/s  both {both:>9,.0f} records/s")
        evaluation(bodies, Path(tmp))
        if not args.skip_cost:
            print("storage cost (SQLite, 16 KiB pages):")
            storage_cost(Path(tmp))


if __name__ == "__main__":
    main()
