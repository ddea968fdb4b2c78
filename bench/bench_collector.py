"""Collector ingest rate: records per second, per layer and end to end, on SQLite and PostgreSQL.

    python bench/bench_collector.py                      # SQLite, plus PostgreSQL if installed
    python bench/bench_collector.py --runs 5 --parse-workers 0 2
    python bench/bench_collector.py --batches 20 --pg postgresql://user@host/db

Workload (deterministic): `--batches` batches of `--records` records (default 10 x 100,000, the
protocol's largest batch) drawn from a pool of `--pool` addresses (10% IPv6), so that later
batches mostly update rows that exist, as in a long-running collector. Measurements:

- parse:   body bytes -> validated, aggregated ValidBatch (batch.parse_batch), no database;
- encode:  the deltas in the backend's bulk form (storage/bulk.py), as a parsing worker does;
- storage: Storage.store_batch of parsed batches (one transaction each), from plain deltas
           (encoding included) and from deltas encoded beforehand (what the server process does
           when a worker parsed the batch);
- http:    gzip bodies POSTed to a `collector serve` process on 127.0.0.1, by one client (one
           after another, like one agent) and by `--clients` at once (like several agents),
           wall-clock from the first request to the last answer (decompression, parsing,
           validation, storage, commit with fsync), once per `--parse-workers` value. Before
           the clock starts, the parsing workers are started (by batches answered 403).

Each line is the median of `--runs` runs (a fresh database each time; the machine may be
shared, so the spread is shown too), as records per second of wall-clock time, records per
CPU-second, and CPU-seconds. CPU is this process's for parse/encode/storage (on PostgreSQL not
the server's), and the collector's process tree for http (its parsing workers included; not the
client's, not PostgreSQL's). Without --pg, a throwaway PostgreSQL is started with the test
helper (initdb/pg_ctl), if the binaries are there. Rates are per record as sent.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import ipaddress
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# BENCH_SRC: another tree's src (with PYTHONPATH set to it too, for the collector processes), to
# measure e.g. today's main side by side with format 1 bodies. It comes first: ROOT holds the old
# script remote_uploader.py, which would otherwise be found as `remote_uploader` and load ROOT's src.
sys.path[:0] = [os.environ.get("BENCH_SRC", str(ROOT / "src")), str(ROOT)]

from remote_uploader.collector.batch import parse_batch  # noqa: E402
from remote_uploader.collector.server import tune_gc  # noqa: E402
from remote_uploader.collector.storage import bulk, open_storage  # noqa: E402
from remote_uploader.collector.storage.base import ValidBatch  # noqa: E402
from remote_uploader.protocol import format_time  # noqa: E402


def make_agent_bodies(batches: int, records: int, pool_size: int, body_format: int, seed: int = 1) -> list[bytes]:
    """Batches as the agent seals them: one source, one time span, `records` distinct addresses,
    in body format `body_format` (the same records in either format for one seed)."""
    from remote_uploader.protocol import Record, encode_batch, encode_records

    def format_micros(micros: int) -> str:
        return format_time(datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros))

    def to_micros(moment: datetime) -> int:
        return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)

    rng = random.Random(seed)
    pool = [str(ipaddress.IPv6Address((0x2A00 << 112) | rng.getrandbits(100))) if rng.random() < 0.1
            else str(ipaddress.IPv4Address(rng.randrange(0x01000000, 0xDF000000))) for _ in range(pool_size)]
    start = to_micros(datetime(2024, 5, 1, tzinfo=UTC))
    bodies = []
    for number in range(batches):
        first, last = start + number * 60_000_000, start + number * 60_000_000 + 999_999
        ips = rng.sample(pool, records)
        counts = [rng.randrange(1, 20) for _ in ips]
        identity = ("0123456789abcdef", number + 1, "")
        if body_format == 2:
            from remote_uploader.agent.batch import encode_format_2

            groups = [("/var/log/nginx/access.log", first, last, ips, counts)]
            bodies.append(encode_format_2("test-agent", f"bench-{number}", first, groups, identity))
        else:
            rows = [Record(ip, n, format_micros(first), format_micros(last), "/var/log/nginx/access.log")
                    for ip, n in zip(ips, counts, strict=True)]
            bodies.append(encode_batch("test-agent", f"bench-{number}", format_micros(first), encode_records(rows),
                                       *identity))
    return bodies


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


@dataclasses.dataclass
class Sample:
    records: int
    wall: float  # seconds
    cpu: float  # CPU-seconds


def report(label: str, samples: list[Sample]) -> None:
    """Median rates over the runs: per wall-clock second (and its spread), per CPU-second."""
    walls = sorted(s.records / s.wall for s in samples)
    per_cpu = statistics.median(s.records / s.cpu for s in samples)
    cpu = statistics.median(s.cpu for s in samples)
    spread = f" ({walls[0]:,.0f}..{walls[-1]:,.0f})" if len(walls) > 1 else ""
    print(
        f"  {label:<26} {statistics.median(walls):>9,.0f} records/s wall{spread}, "
        f"{per_cpu:>9,.0f} per CPU-second, {cpu:.2f} CPU-s",
        flush=True,
    )


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> dict[int, float]:
    """CPU seconds so far of a process and of each of its live descendants, by pid."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, todo = [pid], [pid]
    while todo:
        parent = todo.pop()
        children = [child for child, of in parents.items() if of == parent]
        found += children
        todo += children
    usage = {}
    for member in found:
        try:
            usage[member] = process_cpu(member)
        except OSError:
            continue
    return usage


def timed(records: int, run: Callable[[], object]) -> Sample:
    started, cpu = time.perf_counter(), time.process_time()
    run()
    return Sample(records, time.perf_counter() - started, time.process_time() - cpu)


def bench_parse(bodies: list[bytes], records: int, runs: int, body_format: int = 1) -> list[ValidBatch]:
    total = records * len(bodies)
    def parse() -> list[ValidBatch]:
        if body_format == 1:  # as today's main takes it too
            return [parse_batch(body) for body in bodies]
        return [parse_batch(body, body_format=body_format) for body in bodies]
    report(f"parse+validate (format {body_format})", [timed(total, parse) for _ in range(runs)])
    return parse()


def bench_encode(parsed: list[ValidBatch], records: int, runs: int, form: bulk.BulkForm) -> list[ValidBatch]:
    def encode() -> list[ValidBatch]:
        # The time buckets travel in the encoded form too (as a parsing worker sends them).
        return [dataclasses.replace(b, deltas=bulk.encoded(b.deltas, form, b.buckets), buckets=()) for b in parsed]

    report(f"encode ({form})", [timed(records * len(parsed), encode) for _ in range(runs)])
    return encode()


def bench_storage(urls: Callable[[], str], batches: list[ValidBatch], records: int, runs: int, label: str) -> None:
    samples = []
    for _ in range(runs):
        storage = open_storage(urls(), timeout=60, pool_size=2)
        storage.migrate()
        try:
            samples.append(
                timed(
                    records * len(batches),
                    lambda: [storage.store_batch(batch, datetime.now(UTC)) for batch in batches],  # noqa: B023
                )
            )
        finally:
            storage.close()
    report(label, samples)


def bench_http(
    urls: Callable[[], str], bodies: list[bytes], records: int, workdir: Path, clients: int, workers: int, runs: int,
    body_format: int = 1,
) -> None:
    import httpx
    from tests.helpers.collector_fixtures import CollectorProcess

    compressed = [gzip.compress(body, compresslevel=6) for body in bodies]
    samples = []
    for run in range(runs):
        where = Path(tempfile.mkdtemp(dir=workdir, prefix=f"http-{clients}-{workers}-{run}-"))
        process = CollectorProcess(where, urls(), ["--no-access-log", "--parse-workers", str(workers)])
        process.start()
        try:
            assert process.proc is not None
            media = "application/vnd.remote-uploader.v2+json" if body_format == 2 else "application/json"
            headers = {**process.headers(), "Content-Type": media, "Content-Encoding": "gzip"}

            def send(share: list[bytes], headers: dict[str, str] = headers, expect: int = 200) -> None:
                with httpx.Client(timeout=300) as client:
                    for body in share:
                        response = client.post(process.url + "/v1/batches", content=body, headers=headers)  # noqa: B023
                        assert response.status_code == expect, response.text

            def in_parallel(shares: list[list[bytes]], headers: dict[str, str], expect: int) -> None:
                threads = [threading.Thread(target=send, args=(share, headers, expect)) for share in shares]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()

            # Start the parsing workers (once per server, as a long-running collector has them):
            # the first batch, sent with another agent's token, is parsed and answered 403.
            other = {**headers, **process.headers(process.add_token("warm-up"))}
            # (A batch with a producer is counted under any agent token's name: the warm-up of
            # agent-like batches is an agent's self-test body instead, which starts no worker.)
            warm = compressed[0] if b'"producer"' not in bodies[0] else gzip.compress(b'{"agent":"test-agent"}')
            in_parallel([[warm]] * max(workers, 1), {**other, "Content-Type": "application/json"}, 403)
            shares = [compressed[n::clients] for n in range(clients)]
            before = tree_cpu(process.proc.pid)
            started = time.perf_counter()
            in_parallel(shares, headers, 200)
            elapsed = time.perf_counter() - started
            after = tree_cpu(process.proc.pid)
            used = sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())
            samples.append(Sample(records * len(bodies), elapsed, used))
        finally:
            process.stop()
    label = (f"http, format {body_format}, {clients} client{'s' if clients > 1 else ''}, "
             f"{workers} worker{'s' if workers != 1 else ''}")
    report(label, samples)


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
    parser.add_argument("--skip-pg", action="store_true")
    parser.add_argument("--clients", type=int, default=2, help="also post from this many clients at once")
    parser.add_argument("--runs", type=int, default=1, help="runs of each measurement (the median is shown)")
    parser.add_argument(
        "--parse-workers", type=int, nargs="+", default=[2], metavar="N", help="`serve --parse-workers` values to run"
    )
    parser.add_argument("--agent-like", action="store_true",
                        help="batches as the agent seals them (one source, one span; try --records 5000)")
    parser.add_argument("--formats", type=int, nargs="+", default=[1], choices=[1, 2],
                        help="body formats to measure (with --agent-like: the same records in each)")
    parser.add_argument("--http-only", action="store_true", help="only the http measurements")
    args = parser.parse_args()
    if args.agent_like or args.formats != [1]:
        agent_like(args)
        return

    bodies = make_bodies(args.batches, args.records, args.pool)
    tune_gc()  # as `collector serve` does
    size = sum(map(len, bodies)) / len(bodies) / 2**20
    print(f"{args.batches} batches of {args.records:,} records ({size:.1f} MiB of JSON each), {args.runs} run(s)")
    parsed = bench_parse(bodies, args.records, args.runs)
    with tempfile.TemporaryDirectory(prefix="bench-collector-") as tmp:
        work = Path(tmp)
        counter = iter(range(10**6))

        def sqlite_urls() -> str:
            return f"sqlite://{work}/db-{next(counter)}.db"

        def run_backend(urls: Callable[[], str], form: bulk.BulkForm | None) -> None:
            bench_storage(urls, parsed, args.records, args.runs, "storage (from deltas)")
            if form is not None:
                encoded = bench_encode(parsed, args.records, args.runs, form)
                bench_storage(urls, encoded, args.records, args.runs, "storage (encoded before)")
            if not args.skip_http:
                for workers in args.parse_workers:
                    for clients in sorted({1, args.clients}):
                        bench_http(urls, bodies, args.records, work, clients, workers, args.runs)

        print("SQLite")
        run_backend(sqlite_urls, "sqlite-image" if bulk.HAS_SQLITE_IMAGE else None)
        if args.skip_pg:
            return
        with postgres(args.pg) as fresh:
            if fresh is None:
                print("PostgreSQL: not installed (no initdb/pg_ctl), skipped")
                return
            print("PostgreSQL")
            run_backend(fresh, "postgres-copy")


def agent_like(args: argparse.Namespace) -> None:
    """Agent-shaped batches in each body format, SQLite then PostgreSQL, format by format."""
    tune_gc()
    bodies = {form: make_agent_bodies(args.batches, args.records, args.pool, form) for form in args.formats}
    print(f"{args.batches} agent-like batches of {args.records:,} records, {args.runs} run(s), "
          f"formats {args.formats}")
    with tempfile.TemporaryDirectory(prefix="bench-collector-") as tmp:
        work = Path(tmp)
        counter = iter(range(10**6))

        def sqlite_urls() -> str:
            return f"sqlite://{work}/db-{next(counter)}.db"

        def run_backend(urls: Callable[[], str]) -> None:
            for form, made in bodies.items():
                if not args.http_only:
                    parsed = bench_parse(made, args.records, args.runs, form)
                    bench_storage(urls, parsed, args.records, args.runs, f"storage (format {form})")
                for workers in args.parse_workers:
                    for clients in sorted({1, args.clients}):
                        bench_http(urls, made, args.records, work, clients, workers, args.runs, form)

        print("SQLite")
        run_backend(sqlite_urls)
        if args.skip_pg:
            return
        with postgres(args.pg) as fresh:
            if fresh is None:
                print("PostgreSQL: not installed (no initdb/pg_ctl), skipped")
                return
            print("PostgreSQL")
            run_backend(fresh)


if __name__ == "__main__":
    main()
