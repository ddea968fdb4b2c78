"""SQLite ingest on a big store, by page size: CPU per record of agent-like batches.

    python bench/bench_store_big.py --store /tmp/big/store.db --page-sizes 16384 8192 4096 --rounds 3

A fresh store costs what its few pages cost; a collector that has run for weeks holds a million
addresses and millions of minute rows, and each address of a batch then dirties pages of its own
in `ips`, `counts` and `ip_agents`, which the commit copies into the WAL and the checkpoint into
the file. This measures that case:

- the store: bench_dashboard's (`--addresses` 1,000,000 and `--rows` 10,000,000 minute rows by
  default, 16 KiB pages as it is built), built at `--store` if missing (`--addresses` must say
  the size of a store built before); one copy per page size, rewritten with `VACUUM`;
- per measurement, a fresh copy of that copy, then `--warm` batches not measured (the writer's
  cache fills and the file's pages stop being packed full, as after weeks of ingest) and
  `--batches` measured: agent-like batches (one source, one span, format 2) of `--records`
  addresses, 10 in 11 of them already in the store, a new minute every 4 batches, parsed and
  stored one after another by `SqliteStorage.store_batch` in this process;
- printed: this process's CPU µs per stored record (user and kernel apart), wall µs, and the
  WAL's size at the end (its largest, since a checkpoint does not shrink it).

Page sizes alternate within each round, so that all share the machine's noise; the medians and
the median of per-round ratios to the first page size close the run. The code measured is
`BENCH_SRC`'s (default: this tree's `src`; a tree with `SqliteStorage.compact`, 3 December 2026 on).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import random
import shutil
import sqlite3
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [os.environ.get("BENCH_SRC", str(ROOT / "src")), str(ROOT)]

from remote_uploader.agent.batch import encode_format_2  # noqa: E402
from remote_uploader.collector.batch import parse_batch  # noqa: E402
from remote_uploader.collector.storage.sqlite import SqliteStorage  # noqa: E402

SOURCE = "/var/log/nginx/access.log"


def with_page_size(store: Path, page_size: int) -> Path:
    """A copy of `store` rewritten with `page_size`-byte pages (made once, then reused)."""
    copy = store.with_name(f"{store.stem}-{page_size}.db")
    if copy.exists():
        return copy
    shutil.copyfile(store, copy)
    storage = SqliteStorage(copy)
    try:
        storage.compact(page_size)  # what `collector compact --page-size` does
    finally:
        storage.close()
    return copy


def bodies(newest_bucket: int, count: int, records: int, addresses: int, seed: int) -> list[bytes]:
    """Agent-like batches: `records` addresses each, 10 in 11 from the store's `addresses` (10.0.0.1
    and up, bench_dashboard's), a new minute after the store's newest every 4 batches."""
    rng = random.Random(seed)
    made = []
    for number in range(count):
        first = (newest_bucket + 60 * (1 + number // 4)) * 1_000_000 + number * 1000
        ips = list(dict.fromkeys(
            str(ipaddress.IPv4Address(0x0A000000 + rng.randrange(1, addresses + 1))) if rng.random() > 1 / 11
            else str(ipaddress.IPv4Address(rng.randrange(0x01000000, 0x09000000))) for _ in range(records)))
        counts = [rng.randrange(1, 20) for _ in ips]
        group = (SOURCE, first, first + 999_999, ips, counts)
        made.append(encode_format_2("bench-agent", f"b-{number}", first, [group], ("0123456789abcdef", number + 1, "")))
    return made


def measure(source: Path, work: Path, args: argparse.Namespace) -> dict[str, float]:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{work}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(source, work)
    conn = sqlite3.connect(work)
    newest = conn.execute("SELECT max(bucket) FROM counts").fetchone()[0]
    conn.close()
    batches = bodies(newest, args.warm + args.batches, args.records, args.addresses, seed=7)
    storage = SqliteStorage(work)
    records = 0
    try:
        for body in batches[: args.warm]:
            storage.store_batch(parse_batch(body, body_format=2), datetime.now(UTC))
        times, wall = os.times(), time.perf_counter()
        for body in batches[args.warm :]:
            batch = parse_batch(body, body_format=2)
            records += batch.records
            storage.store_batch(batch, datetime.now(UTC))
        after, wall = os.times(), time.perf_counter() - wall
        wal = Path(f"{work}-wal").stat().st_size / 2**20  # before close, which checkpoints and removes it
    finally:
        storage.close()
    user, system = after.user - times.user, after.system - times.system
    return {"cpu": (user + system) / records * 1e6, "user": user / records * 1e6, "sys": system / records * 1e6,
            "wall": wall / records * 1e6, "wal": wal}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=Path("/tmp/bench-big/store.db"))
    parser.add_argument("--page-sizes", type=int, nargs="+", default=[16384, 4096])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warm", type=int, default=40)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--addresses", type=int, default=1_000_000, help="of a store built here")
    parser.add_argument("--rows", type=int, default=10_000_000, help="minute rows of a store built here")
    args = parser.parse_args()
    if not args.store.exists():
        from bench.bench_dashboard import build

        args.store.parent.mkdir(parents=True, exist_ok=True)
        print(f"building {args.store} (about 2 minutes at the default size)", flush=True)
        build(args.store, args.addresses, args.rows)
    copies = {size: with_page_size(args.store, size) for size in args.page_sizes}
    work = args.store.with_name("measured.db")
    results: dict[int, list[dict[str, float]]] = {size: [] for size in args.page_sizes}
    for round_number in range(1, args.rounds + 1):
        for size in args.page_sizes:
            r = measure(copies[size], work, args)
            results[size].append(r)
            print(f"round {round_number}, {size:>5}-byte pages: {r['cpu']:6.1f} CPU µs per record "
                  f"(user {r['user']:.1f}, kernel {r['sys']:.1f}), {r['wall']:6.1f} wall µs, "
                  f"WAL {r['wal']:.0f} MiB", flush=True)
    first = args.page_sizes[0]
    print(f"medians over {args.rounds} rounds ({args.batches} batches of {args.records:,} after {args.warm}):")
    for size in args.page_sizes:
        cpu = statistics.median(r["cpu"] for r in results[size])
        ratio = statistics.median(a["cpu"] / b["cpu"] for a, b in zip(results[size], results[first], strict=True))
        print(f"  {size:>5}-byte pages: {cpu:6.1f} CPU µs per record, "
              f"kernel {statistics.median(r['sys'] for r in results[size]):.1f}, "
              f"wall {statistics.median(r['wall'] for r in results[size]):.1f}; / {first}: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
