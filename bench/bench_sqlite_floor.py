"""SQLite's own floor for one stored record, beside the collector's cost (issue 15).

    python bench/bench_sqlite_floor.py                      # 60 batches of 5,000, 3 rounds
    python bench/bench_sqlite_floor.py --batches 60 --rounds 5

Issue 15 asks the collector for at most 1 µs of CPU per stored record on SQLite. This measures
what SQLite alone costs for the least a record must do there, with none of the collector around
it: the agent-like batches of bench_collector.py (one source, one minute each, 5,000 distinct
addresses from a pool of 50,000) are staged in an in-memory table as the collector stages them
(multi-row INSERTs, bulk.insert_many), then upserted with one INSERT ... SELECT ... ON CONFLICT
per table, then committed, in a file configured as the collector's (4 KiB pages, WAL,
synchronous=FULL, a 64 MiB cache). The ladder, one fresh file per rung, rungs alternated within
each round:

- staged:       the staging inserts and an empty COMMIT: what reaching SQLite at all costs;
- +ips:         one row per address keyed by address (what an IP list needs);
- +counts:      also one row per (address, minute) keyed by address first (per-minute counts,
                as the collector keys `counts` today);
- +counts/time: the same rows keyed by minute first (appended at the end of the tree);
- +counts, 1 tx: `+counts` with every batch in one transaction: no batch durable before the
                last, which no collector may do (the agent deletes what is acknowledged), but
                the least two upserts per record cost when page writes are shared by all batches;
- collector:    SqliteStorage.store_batch of the same parsed batches (everything it keeps).

CPU is this process's (user + system; `os.times`), per record, median over rounds; the garbage
collector is tuned as `collector serve` tunes it.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_collector import make_agent_bodies
from remote_uploader.collector.batch import parse_batch
from remote_uploader.collector.server import tune_gc
from remote_uploader.collector.storage import bulk, open_storage
from remote_uploader.collector.storage.base import ValidBatch
from remote_uploader.collector.storage.sqlite import PAGE_SIZE

RUNGS = ("staged", "+ips", "+counts", "+counts/time", "+counts, 1 tx", "collector")
COUNTS_BY_ADDRESS = "PRIMARY KEY (ipkey, bucket, agent, source)"
COUNTS_BY_TIME = "PRIMARY KEY (bucket, ipkey, agent, source)"


def bare_store(path: Path, batches: Sequence[ValidBatch], rung: str) -> None:
    """The rung's tables in a fresh file, every batch upserted and committed on its own."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA cache_size=-65536")
    conn.execute("CREATE TABLE ips (ip TEXT PRIMARY KEY, ipkey BLOB NOT NULL, total INTEGER NOT NULL, "
                 "first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL) WITHOUT ROWID")
    key = COUNTS_BY_TIME if rung == "+counts/time" else COUNTS_BY_ADDRESS
    one_transaction = rung == "+counts, 1 tx"
    conn.execute("CREATE TABLE counts (ipkey BLOB NOT NULL, bucket INTEGER NOT NULL, agent INTEGER NOT NULL, "
                 f"source INTEGER NOT NULL, total INTEGER NOT NULL, {key}) WITHOUT ROWID")
    conn.execute("ATTACH DATABASE ':memory:' AS staging")
    conn.execute(bulk.SQLITE_DELTAS.replace("TABLE deltas", "TABLE staging.deltas"))
    conn.execute(bulk.SQLITE_BUCKETS.replace("TABLE bdeltas", "TABLE staging.bdeltas"))
    if one_transaction:
        conn.execute("BEGIN IMMEDIATE")
    for batch in batches:
        if not one_transaction:
            conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM staging.deltas")
        conn.execute("DELETE FROM staging.bdeltas")
        bulk.insert_many(conn, "staging.deltas", 5, batch.deltas, blobs=(1,))  # type: ignore[arg-type]
        _, rows = bulk.source_indexes(batch.buckets)
        bulk.insert_many(conn, "staging.bdeltas", 4, rows, blobs=(0,))
        if rung != "staged":
            conn.execute("INSERT INTO ips SELECT ip, ipkey, total, first_seen, last_seen FROM staging.deltas "
                         "WHERE true ON CONFLICT (ip) DO UPDATE SET total = total + excluded.total, "
                         "first_seen = min(first_seen, excluded.first_seen), "
                         "last_seen = max(last_seen, excluded.last_seen)")
        if rung.startswith("+counts"):
            conn.execute("INSERT INTO counts SELECT ipkey, bucket, 1, src, total FROM staging.bdeltas WHERE true "
                         "ON CONFLICT (ipkey, bucket, agent, source) DO UPDATE SET total = total + excluded.total")
        if not one_transaction:
            conn.execute("COMMIT")
    if one_transaction:
        conn.execute("COMMIT")
    conn.close()


def collector_store(path: Path, batches: Sequence[ValidBatch]) -> None:
    storage = open_storage(f"sqlite://{path}", timeout=60, pool_size=2)
    try:
        storage.migrate()
        for batch in batches:
            storage.store_batch(batch, datetime.now(UTC))
    finally:
        storage.close()


def cpu_per_record(run: Callable[[], None], records: int) -> float:
    before = os.times()
    run()
    after = os.times()
    return (after.user - before.user + after.system - before.system) / records * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--pool", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tune_gc()  # as `collector serve` runs: the parsed batches stay out of the collector's passes
    bodies = make_agent_bodies(args.batches, args.records, args.pool, 2)
    batches = [parse_batch(body, body_format=2) for body in bodies]
    records = args.batches * args.records
    samples: dict[str, list[float]] = {rung: [] for rung in RUNGS}
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
        for number in range(args.rounds):
            for rung in RUNGS:
                path = Path(tmp) / f"{number}-{RUNGS.index(rung)}.db"
                if rung == "collector":
                    samples[rung].append(cpu_per_record(lambda: collector_store(path, batches), records))  # noqa: B023
                else:
                    samples[rung].append(
                        cpu_per_record(lambda: bare_store(path, batches, rung), records))  # noqa: B023
            print(f"round {number + 1}: " + ", ".join(f"{rung} {samples[rung][-1]:.1f}" for rung in RUNGS),
                  flush=True)
    print(f"{args.batches} batches of {args.records:,} records, {args.rounds} rounds, medians, CPU µs per record:")
    for rung in RUNGS:
        values = samples[rung]
        print(f"  {rung:14s} {statistics.median(values):6.1f}  ({min(values):.1f}..{max(values):.1f})")


if __name__ == "__main__":
    main()
