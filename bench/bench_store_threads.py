"""SQLite ingest in process with several storing threads: what the group commit saves.

    BENCH_SRC=/path/to/other/src python bench/bench_store_threads.py --threads 2

Agent-like batches (bench_collector.make_agent_bodies: one source, one span, `--records` distinct
addresses from `--pool`) are parsed and stored by `--threads` threads at once, each with its share,
on a fresh SQLite database, as request threads of `collector serve` do. Prints the process's CPU
µs per record, records per second of wall-clock time and, on a tree with the group commit, how
many transactions stored the batches. Run it alternately on two trees (BENCH_SRC) to compare.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [os.environ.get("BENCH_SRC", str(ROOT / "src")), str(ROOT)]

from bench.bench_collector import make_agent_bodies  # noqa: E402
from remote_uploader.collector.batch import parse_batch  # noqa: E402
from remote_uploader.collector.server import tune_gc  # noqa: E402
from remote_uploader.collector.storage import open_storage  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--pool", type=int, default=50_000)
    args = parser.parse_args()
    bodies = make_agent_bodies(args.batches, args.records, args.pool, 2)
    tune_gc()
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        storage = open_storage(f"sqlite://{tmp}/db.db", timeout=60, pool_size=2)
        storage.migrate()

        def work(share: list[bytes]) -> None:
            for body in share:
                storage.store_batch(parse_batch(body, body_format=2), datetime.now(UTC))

        threads = [threading.Thread(target=work, args=(bodies[n :: args.threads],)) for n in range(args.threads)]
        cpu, wall = time.process_time(), time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        records = args.batches * args.records
        group = getattr(storage, "_group", None)
        groups = f", {group.stats.groups} transactions (largest {group.stats.largest})" if group else ""
        print(f"{args.threads} thread(s): {cpu / records * 1e6:.2f} CPU µs per record, "
              f"{records / wall:,.0f} records/s wall{groups}")
        storage.close()


if __name__ == "__main__":
    main()
