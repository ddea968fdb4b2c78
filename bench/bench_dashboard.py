"""Dashboard pages on a big store: median answer time of each page (not a test).

    nice -n 10 python bench/bench_dashboard.py [--addresses 1000000] [--rows 10000000] [--runs 5]
                                              [--starts 3] [--db PATH] [--reuse]
                                              [--backend sqlite|postgres] [--pgdata DIR]

Builds a SQLite collector database with bulk SQL (INSERT ... SELECT over a generated sequence;
the packed address comes from a registered SQL function): `--rows` rows in the minute buckets
(`counts`) of `--addresses` addresses (20 agents, one per address), spread over the last 48
hours and 5 sources; `ips` and `ip_agents` made from them as ingest makes them (totals the sum
of the rows, last seen in the last bucket); the totals ingest keeps beside them; and 10,000
decisions (half of them ended). Then starts
`collector serve` on it, signs in with a read token and times each page over HTTP on
127.0.0.1: the first request after a start (which computes what the dashboard then reuses for
30 s to 10 min: the overview's chart, the top-addresses table), over `--starts` starts, then
`--runs` more after the last start, and prints the medians and the spread of both, and the
median CPU time the collector's process spent during each first request (its other threads
included: the roll-up and decision rules a start runs; at 10 ms resolution).
`--reuse` keeps a database built before (`--db`).

`--backend postgres`: the same dataset in a throwaway PostgreSQL (`pg_config --bindir`; initdb
as `nobody` when root, as tests/helpers/postgres.py does) in `--pgdata` (kept for `--reuse`),
built with bulk SQL over generate_series as PostgreSQL's ingest writes it (`ips.agent` NULL and
one `ip_agents` row per address; bucket rows in arrival order, by minute), then VACUUM ANALYZE
(what autovacuum would have done). The server is built with fsync off, then restarted with the
settings a user has after initdb (shared_buffers 128MB, work_mem 4MB, ...: `postgres_options`),
only listening on 127.0.0.1 on a free port.
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from remote_uploader.collector.auth import create_token  # noqa: E402
from remote_uploader.collector.storage.base import Storage  # noqa: E402
from remote_uploader.collector.storage.postgres import PostgresStorage  # noqa: E402
from remote_uploader.collector.storage.sqlite import SqliteStorage  # noqa: E402

AGENTS = 20
SOURCES = ("/var/log/nginx/access.log", "/var/log/auth.log", "/var/log/mail.log", "/var/log/app.log",
           "/var/log/vpn.log")
DECISIONS = 10_000
# An older experiment (docs/benchmarks.md): `--index` adds it to the big store. The schema has
# `counts_recent` (bucket, total) since migration 10.
INDEX = "CREATE INDEX IF NOT EXISTS dashboard_counts_bucket ON counts"
PAGES = (
    ("overview, 1h", "/"),
    ("overview, 24h", "/?window=24h"),
    ("overview, 7d", "/?window=7d"),
    # Windows from the store's newest minute (RFC 3339 times), so that a store built a while ago
    # (`--reuse`) still has in each window what it had when it was built.
    ("top addresses, 1h", "/ips?since={1h}"),
    ("top addresses, 24h", "/ips?since={24h}"),
    ("top addresses, 1h, source", "/ips?since={1h}&source=%2Fvar%2Flog%2Fauth.log"),
    ("top addresses, 24h, /20", "/ips?since={24h}&cidr=10.0.0.0%2F20"),
    ("top addresses, 24h, /12", "/ips?since={24h}&cidr=10.0.0.0%2F12"),
    ("top addresses, 1h, by last seen", "/ips?since={1h}&sort=last_seen"),
    ("top addresses, 24h, by last seen", "/ips?since={24h}&sort=last_seen"),
    ("top addresses, 24h, agent", "/ips?since={24h}&agent=agent-03"),
    ("top addresses, 15m", "/ips?since={15m}"),
    ("address", "/ips/10.0.1.1"),
    ("agents", "/agents"),
    ("decisions", "/decisions"),
    ("decision", "/decisions/42"),
)


def agents_and_labels(now_us: int) -> list[tuple[str, tuple[object, ...]]]:
    """The agents' rows and the labels' (statements with `?` placeholders), the same for both
    backends so that their stores match: label ids 1..AGENTS are the agents, then the sources,
    as the bucket rows' formulas assume. Agent 3 last sent an hour ago (a silent one)."""
    statements: list[tuple[str, tuple[object, ...]]] = []
    for i in range(AGENTS):
        statements.append(("INSERT INTO agents VALUES (?, ?, ?, 100, 0, 100000, 'b', ?)",
                           (f"agent-{i:02d}", now_us - 7 * 86400 * 10**6, now_us - (i == 3) * 3600 * 10**6, now_us)))
        statements.append(("INSERT INTO labels (kind, name) VALUES ('agent', ?)", (f"agent-{i:02d}",)))
    statements += [("INSERT INTO labels (kind, name) VALUES ('source', ?)", (source,)) for source in SOURCES]
    return statements


def build(path: Path, addresses: int, rows: int) -> None:
    storage = SqliteStorage(path)
    storage.migrate()
    storage.close()
    now = int(time.time()) // 60 * 60
    now_us = now * 1_000_000
    conn = sqlite3.connect(path, isolation_level=None)
    conn.create_function("ipkey", 1, lambda n: (0x0A000000 + n).to_bytes(4, "big"), deterministic=True)
    conn.create_function(
        "iptext", 1, lambda n: ".".join(str(b) for b in (0x0A000000 + n).to_bytes(4, "big")), deterministic=True
    )
    conn.create_function("keytext", 1, lambda key: ".".join(str(b) for b in key), deterministic=True)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-262144")
    per_address = max(1, rows // addresses)
    started = time.monotonic()
    conn.execute("BEGIN")
    for sql, values in agents_and_labels(now_us):
        conn.execute(sql, values)
    conn.execute("CREATE TEMP TABLE seq AS WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s "
                 f"WHERE n < {addresses}) SELECT n FROM s")
    # Buckets: `per_address` rows each, minutes spread over the last 48 hours, counts heavy-tailed
    # by address number, each address seen by one agent (ids 1..AGENTS: agents are labelled
    # first, sources after) in any of the sources.
    conn.execute(f"CREATE TEMP TABLE k AS WITH RECURSIVE s(k) AS (SELECT 0 UNION ALL SELECT k + 1 FROM s "
                 f"WHERE k < {per_address - 1}) SELECT k FROM s")
    conn.execute(
        "INSERT OR IGNORE INTO counts (ipkey, bucket, agent, source, total) "
        f"SELECT ipkey(n), {now} - ((n * 7919 + k * 104729) % 2880) * 60, 1 + n % {AGENTS}, "
        f"{AGENTS + 1} + (n * 31 + k) % {len(SOURCES)}, 1 + (1000000 / n) / {per_address} "
        "FROM seq, k ORDER BY 1, 2"
    )
    print(f"  buckets: {time.monotonic() - started:.0f} s", flush=True)
    # Addresses, from their buckets as ingest writes them (same records, same transaction): the
    # total is the sum of the rows, last seen within the last bucket, first seen in the first.
    conn.execute(
        "INSERT INTO ips (ip, ipkey, family, total, first_seen, last_seen) "
        "SELECT keytext(ipkey), ipkey, 4, sum(total), min(bucket) * 1000000, max(bucket) * 1000000 + 30000000 "
        "FROM counts GROUP BY ipkey ORDER BY 1"
    )
    conn.execute(
        "INSERT INTO ip_agents (ip, agent, total, first_seen, last_seen) "
        "SELECT keytext(ipkey), 'agent-' || printf('%02d', agent - 1), sum(total), min(bucket) * 1000000, "
        "max(bucket) * 1000000 + 30000000 FROM counts GROUP BY ipkey, agent ORDER BY 1, 2"
    )
    print(f"  addresses: {time.monotonic() - started:.0f} s", flush=True)
    # What ingest keeps beside the buckets (migrations 6 and 7): the totals of each minute, and
    # of each minute's (agent, source) pairs.
    conn.execute(
        "INSERT INTO bucket_totals (length, bucket, total, addresses) "
        "SELECT 60, bucket, sum(total), count(DISTINCT ipkey) FROM counts GROUP BY bucket"
    )
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'source_totals'").fetchone():
        conn.execute(
            "INSERT INTO source_totals (length, bucket, agent, source, total) "
            "SELECT 60, bucket, agent, source, sum(total) FROM counts GROUP BY bucket, agent, source"
        )
    conn.execute("UPDATE sequences SET value = ? WHERE name = 'decisions'", (DECISIONS,))
    conn.execute(
        "INSERT INTO decisions (id, value, scope, family, lo, hi, type, origin, scenario, reason, details, "
        "created_at, until, state, ended_at, created_seq, ended_seq) "
        f"SELECT n, iptext(n), 'Ip', 4, ipkey(n), ipkey(n), 'ban', 'remote-uploader', "
        "CASE n % 3 WHEN 0 THEN 'sshd-bruteforce' WHEN 1 THEN 'web-scanner' ELSE 'subnet-24' END, "
        "'crossed the threshold', '{\"window\": \"10m\", \"min_count\": 20}', "
        f"{now_us} - n * 1000000, {now_us} + (CASE WHEN n % 2 = 0 THEN 4 ELSE -4 END) * 3600000000, "
        "CASE WHEN n % 2 = 0 THEN 'active' ELSE 'expired' END, "
        f"CASE WHEN n % 2 = 0 THEN NULL ELSE {now_us} END, n, CASE WHEN n % 2 = 0 THEN NULL ELSE {DECISIONS} + n END "
        f"FROM seq WHERE n <= {DECISIONS}"
    )
    conn.execute(
        "INSERT INTO decision_evidence (decision_id, ip, total, first_bucket, last_bucket) "
        f"SELECT n, iptext(n), 25, {now} - 600, {now} FROM seq WHERE n <= {DECISIONS}"
    )
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    print(f"  built in {time.monotonic() - started:.0f} s", flush=True)
    conn.close()


class KeptPostgres:
    """A PostgreSQL server in a directory that outlives the benchmark (for `--reuse`), started with
    the test helper's conventions (tests/helpers/postgres.py): as `nobody` when root, trust
    authentication on 127.0.0.1 and a unix socket in its directory, the C locale."""

    def __init__(self, base: Path) -> None:
        sys.path.insert(0, str(ROOT))
        from tests.helpers.postgres import PostgresServer, find_bindir

        bindir = find_bindir()
        if bindir is None:
            raise SystemExit("PostgreSQL binaries not found (initdb, pg_ctl)")
        self.server = PostgresServer.__new__(PostgresServer)  # its methods, on a directory of ours
        self.server.bindir, self.server.base, self.server.data = bindir, base, base / "data"
        self.server.port, self.server._as = 0, {}
        base.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(base, nobody.pw_uid, nobody.pw_gid)
            self.server._as = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}

    def exists(self) -> bool:
        return (self.server.data / "PG_VERSION").exists()

    def start(self, build: bool) -> str:
        """Start it (initdb first if needed); while building, without fsync (what is built is thrown
        away if the machine stops); for the timings, with the settings of a fresh initdb."""
        from tests.helpers.postgres import ADMIN_USER, free_port

        server = self.server
        if not self.exists():
            server._run(str(server.bindir / "initdb"), "-D", str(server.data), "-U", ADMIN_USER, "--auth=trust",
                        "--no-sync", "-E", "UTF8", "--locale=C")
        server.port = free_port()
        options = f"-p {server.port} -k {server.base} -c listen_addresses=127.0.0.1"
        if build:
            options += " -c fsync=off -c full_page_writes=off -c synchronous_commit=off"
        server._run(str(server.bindir / "pg_ctl"), "-D", str(server.data), "-l", str(server.base / "server.log"),
                    "-o", options, "-w", "-t", "300", "start", timeout=400)
        return server.url("collector")

    def stop(self) -> None:
        if (self.server.data / "postmaster.pid").exists():
            self.server._run(str(self.server.bindir / "pg_ctl"), "-D", str(self.server.data), "-m", "fast", "-w",
                             "-t", "300", "stop", timeout=400)


def build_postgres(url: str, addresses: int, rows: int) -> None:
    """The SQLite dataset of `build`, as PostgreSQL's ingest (storage/postgres.py) writes it: every
    address has its `ip_agents` row and `ips.agent` NULL (migration 9 is used on SQLite only), and
    the bucket rows are in the heap in the order batches bring them (by minute), not by address."""
    import psycopg

    from remote_uploader.collector.storage.postgres import PostgresStorage

    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as admin:
        admin.execute("CREATE DATABASE collector")
    storage = PostgresStorage(url, timeout=60)
    storage.migrate()
    storage.close()
    now = int(time.time()) // 60 * 60
    now_us = now * 1_000_000
    per_address = max(1, rows // addresses)
    started = time.monotonic()
    ip_of_key = ("get_byte(ipkey, 0) || '.' || get_byte(ipkey, 1) || '.' || get_byte(ipkey, 2) || '.' || "
                 "get_byte(ipkey, 3)")
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SET maintenance_work_mem = '512MB'")  # this session only: a faster index build
        for sql, values in agents_and_labels(now_us):
            cur.execute(sql.replace("?", "%s"), values)
        # As `build`: the same rows (the same formulas), the primary key built after them.
        cur.execute("ALTER TABLE counts DROP CONSTRAINT counts_pkey")
        cur.execute(
            "INSERT INTO counts (ipkey, bucket, agent, source, total) "
            f"SELECT int4send((167772160 + n)::int), {now} - ((n * 7919 + k * 104729) % 2880) * 60, "
            f"1 + n % {AGENTS}, {AGENTS + 1} + (n * 31 + k) % {len(SOURCES)}, 1 + (1000000 / n) / {per_address} "
            f"FROM generate_series(1::bigint, {addresses}) n, generate_series(0::bigint, {per_address - 1}) k "
            "ORDER BY 2, 1"
        )
        cur.execute("ALTER TABLE counts ADD PRIMARY KEY (ipkey, bucket, agent, source)")
        print(f"  buckets: {time.monotonic() - started:.0f} s", flush=True)
        cur.execute(
            "INSERT INTO ips (ip, ipkey, family, total, first_seen, last_seen) "
            f"SELECT {ip_of_key}, ipkey, 4, sum(total), min(bucket) * 1000000, max(bucket) * 1000000 + 30000000 "
            "FROM counts GROUP BY ipkey ORDER BY 5, 1"
        )
        cur.execute(
            "INSERT INTO ip_agents (ip, agent, total, first_seen, last_seen) "
            f"SELECT {ip_of_key}, 'agent-' || lpad((agent - 1)::text, 2, '0'), sum(total), min(bucket) * 1000000, "
            "max(bucket) * 1000000 + 30000000 FROM counts GROUP BY ipkey, agent ORDER BY 4, 1, 2"
        )
        print(f"  addresses: {time.monotonic() - started:.0f} s", flush=True)
        cur.execute(
            "INSERT INTO bucket_totals (length, bucket, total, addresses) "
            "SELECT 60, bucket, sum(total), count(DISTINCT ipkey) FROM counts GROUP BY bucket"
        )
        cur.execute(
            "INSERT INTO source_totals (length, bucket, agent, source, total) "
            "SELECT 60, bucket, agent, source, sum(total) FROM counts GROUP BY bucket, agent, source"
        )
        cur.execute("UPDATE sequences SET value = %s WHERE name = 'decisions'", (DECISIONS,))
        ip_of_n = "host('0.0.0.0'::inet + (167772160 + n))"
        cur.execute(
            "INSERT INTO decisions (id, value, scope, family, lo, hi, type, origin, scenario, reason, details, "
            "created_at, until, state, ended_at, created_seq, ended_seq) "
            f"SELECT n, {ip_of_n}, 'Ip', 4, int4send((167772160 + n)::int), int4send((167772160 + n)::int), "
            "'ban', 'remote-uploader', "
            "CASE n % 3 WHEN 0 THEN 'sshd-bruteforce' WHEN 1 THEN 'web-scanner' ELSE 'subnet-24' END, "
            "'crossed the threshold', '{\"window\": \"10m\", \"min_count\": 20}', "
            f"{now_us} - n * 1000000, {now_us} + (CASE WHEN n % 2 = 0 THEN 4 ELSE -4 END) * 3600000000, "
            "CASE WHEN n % 2 = 0 THEN 'active' ELSE 'expired' END, "
            f"CASE WHEN n % 2 = 0 THEN NULL ELSE {now_us} END, n, "
            f"CASE WHEN n % 2 = 0 THEN NULL ELSE {DECISIONS} + n END "
            f"FROM generate_series(1::bigint, {DECISIONS}) n"
        )
        cur.execute("SELECT setval(pg_get_serial_sequence('decisions', 'id'), %s)", (DECISIONS,))
        cur.execute(
            "INSERT INTO decision_evidence (decision_id, ip, total, first_bucket, last_bucket) "
            f"SELECT n, {ip_of_n}, 25, {now} - 600, {now} FROM generate_series(1::bigint, {DECISIONS}) n"
        )
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")  # what autovacuum does after so many inserts
    print(f"  built in {time.monotonic() - started:.0f} s", flush=True)


def index_cost(batches: int, records: int, runs: int, backend: str) -> None:
    """Ingest without and with migration 12's `ips_tier` (and its triggers on SQLite, its
    generated column on PostgreSQL), alternating, same workload: dropped after migrate() for
    "without" (migration 11's schema); PostgreSQL in a fresh database of a throwaway server (the
    test helper's: fsync off). (The indexes of the buckets by time that earlier rounds compared
    here are in docs/benchmarks.md, with their figures.)"""
    sys.path.insert(0, str(ROOT))
    from bench.bench_collector import make_bodies, tree_cpu
    from remote_uploader.collector.batch import parse_batch
    from remote_uploader.collector.storage import bulk

    bodies = make_bodies(batches, records, 500_000)
    server_pid = 0
    if backend == "postgres":
        from tests.helpers.postgres import PostgresServer, find_bindir

        bindir = find_bindir()
        if bindir is None:
            raise SystemExit("PostgreSQL binaries not found (initdb, pg_ctl)")
        server = PostgresServer(bindir)
        server.start()
        server_pid = int((server.data / "postmaster.pid").read_text().split()[0])
        variants: dict[str, tuple[str, ...]] = {
            "without ips_tier (schema 11)": ("DROP INDEX ips_tier", "ALTER TABLE ips DROP COLUMN tier"),
            "with ips_tier (migration 12)": (),
        }
        form: bulk.BulkForm = "postgres-copy"
    else:
        variants = {
            "without ips_tier (schema 11)": ("DROP TRIGGER ips_tier_on_insert", "DROP TRIGGER ips_tier_on_update",
                                             "DROP INDEX ips_tier"),
            "with ips_tier (migration 12)": (),
        }
        form = "sqlite-image"
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    # PostgreSQL's work is in its server: its processes' CPU seconds (a shared machine's load
    # moves wall time more than CPU time).
    server_cpu: dict[str, list[float]] = {name: [] for name in variants}
    try:
        with tempfile.TemporaryDirectory(prefix="ru-bench-index-") as tmp:
            for run in range(runs):
                for name, ddl in variants.items():
                    storage: Storage
                    if backend == "postgres":
                        storage = PostgresStorage(server.create_database(), timeout=60, pool_size=2)
                    else:
                        storage = SqliteStorage(Path(tmp) / f"{run}-{list(variants).index(name)}.db")
                    storage.migrate()
                    with storage._write() as cur:
                        for statement in ddl:
                            cur.execute(statement)
                    spent = 0.0
                    cpu = sum(tree_cpu(server_pid).values()) if server_pid else 0.0
                    for body in bodies:
                        batch = parse_batch(body, "test-agent", 60)
                        encoded = bulk.encode(form, batch.deltas, batch.buckets)
                        batch = type(batch)(batch.agent, batch.batch_id, batch.sent_at, batch.records, encoded)
                        started = time.perf_counter()
                        storage.store_batch(batch, datetime.now(UTC))
                        spent += time.perf_counter() - started
                    # Before close: a backend's CPU is counted while it lives (the migration's
                    # and the DDL's connections are in the pool too, before and after).
                    server_cpu[name].append(sum(tree_cpu(server_pid).values()) - cpu if server_pid else 0.0)
                    storage.close()
                    seconds[name].append(spent)
                    print(f"  run {run + 1}: {name}: {batches * records / spent:,.0f} records/s, "
                          f"server CPU {server_cpu[name][-1]:.2f} s", flush=True)
    finally:
        if backend == "postgres":
            server.stop()
    total = batches * records
    print(f"ingest (store only), {backend}, {batches} x {records:,} records, medians of {runs} runs (alternating):")
    for name, spent in seconds.items():
        print(f"  {name:<30} {total / statistics.median(spent):>9,.0f} records/s"
              + (f", server CPU {statistics.median(server_cpu[name]):.2f} s" if server_pid else ""))


# `--collector-src`: the collector runs that tree's code (another worktree, for a side-by-side
# run), ahead of the editable install's own finder.
RUN_FROM = (
    "import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); "
    "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in getattr(f, '__module__', '')]; "
    "runpy.run_module('remote_uploader.collector.cli', run_name='__main__', alter_sys=True)"
)


def serve(db: str, log: Path, src: Path | None = None) -> tuple[subprocess.Popen[bytes], str]:
    start = [sys.executable, "-m", "remote_uploader.collector.cli"] if src is None else [
        sys.executable, "-c", RUN_FROM, str(src)]
    process = subprocess.Popen(
        [*start, "serve", "--db", db, "--port", "0", "--parse-workers", "0", "--no-access-log"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 900  # the first start migrates (builds indexes)
    while time.monotonic() < deadline:
        found = re.search(rb'msg="collector listening" url=(\S+)', log.read_bytes())
        if found:
            return process, found.group(1).decode()
        if process.poll() is not None:
            raise SystemExit(log.read_text())
        time.sleep(0.2)
    raise SystemExit("the collector did not start")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (/proc; in clock ticks, 10 ms here): what a page cost
    the collector, which the machine's load does not inflate as it does the wall time."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addresses", type=int, default=1_000_000)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--starts", type=int, default=3,
                        help="collector starts, each timing every page's first request")
    parser.add_argument("--db", type=Path)
    parser.add_argument("--collector-src", type=Path, help="run the collector from this src directory")
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--pgdata", type=Path, help="with --backend postgres: the server's directory (kept)")
    parser.add_argument("--index", action="store_true", help="add an index of the buckets by time to the store")
    parser.add_argument("--index-cost", action="store_true", help="only: ingest with and without ips_tier")
    parser.add_argument("--batches", type=int, default=4, help="with --index-cost: batches of 100,000 records")
    args = parser.parse_args()
    if args.index_cost:
        index_cost(args.batches, 100_000, args.runs, args.backend)
        return 0
    work = Path(tempfile.mkdtemp(prefix="ru-bench-dash-"))
    postgres = None
    if args.backend == "postgres":
        postgres = KeptPostgres(args.pgdata or work / "pg")
        if not (args.reuse and postgres.exists()):
            if postgres.exists():
                raise SystemExit(f"{args.pgdata} holds a database: --reuse it or remove it")
            print(f"building {postgres.server.data}: {args.addresses:,} addresses, {args.rows:,} bucket rows",
                  flush=True)
            try:
                build_postgres(postgres.start(build=True), args.addresses, args.rows)
            finally:
                postgres.stop()
        try:
            url = postgres.start(build=False)
            run(args, work, url, PostgresStorage(url, timeout=60), None)
        finally:
            postgres.stop()
        return 0
    db = args.db or work / "collector.db"
    if not (args.reuse and db.exists()):
        print(f"building {db}: {args.addresses:,} addresses, {args.rows:,} bucket rows", flush=True)
        build(db, args.addresses, args.rows)
    if args.index:
        conn = sqlite3.connect(db)
        conn.execute(f"{INDEX} (bucket, ipkey, total)")
        conn.close()
    run(args, work, f"sqlite://{db}", SqliteStorage(db), db)
    return 0


def run(args: argparse.Namespace, work: Path, url: str, storage: Storage, db: Path | None) -> None:
    """Start the collector on `url` `--starts` times and time every page (see the module's docstring)."""
    token = create_token(storage, f"bench-{datetime.now(UTC):%H%M%S}", "read")
    with storage._read() as cur:  # a benchmark reads the sizes directly
        cur.execute("SELECT (SELECT count(*) FROM ips), (SELECT count(*) FROM counts), "
                    "(SELECT max(bucket) FROM bucket_totals WHERE length = 60)")
        sizes = cur.fetchone()
    newest = datetime.fromtimestamp(sizes[2] + 60, UTC)
    since = {name: quote((newest - span).strftime("%Y-%m-%dT%H:%M:%SZ"))
             for name, span in (("15m", timedelta(minutes=15)), ("1h", timedelta(hours=1)), ("24h", timedelta(days=1)))}
    pages = [(name, path.format_map(since)) for name, path in PAGES]
    storage.close()
    size = f", {db.stat().st_size / 2**30:.2f} GiB" if db is not None else ""
    print(f"store: {sizes[0]:,} addresses, {sizes[1]:,} bucket rows{size}")
    # First requests: each page's first after a start of the collector (nothing cached), over
    # `--starts` starts; repeat requests: `--runs` more after the last start's first one.
    firsts: dict[str, list[float]] = {name: [] for name, _ in pages}
    cpus: dict[str, list[float]] = {name: [] for name, _ in pages}  # the collector's, first requests
    repeats: dict[str, list[float]] = {}
    for start in range(args.starts):
        process, base = serve(url, work / f"collector-{start}.log", args.collector_src)
        try:
            signed = httpx.post(base + "/signin", data={"token": token}, timeout=300)
            client = httpx.Client(base_url=base, cookies=signed.cookies, timeout=900)
            for name, path in pages:
                started, cpu = time.perf_counter(), cpu_seconds(process.pid)
                assert client.get(path).status_code == 200, path  # the first request (and a check)
                firsts[name].append((time.perf_counter() - started) * 1000)
                cpus[name].append((cpu_seconds(process.pid) - cpu) * 1000)
                if start == args.starts - 1:
                    times = repeats[name] = []
                    for _ in range(args.runs):
                        started = time.perf_counter()
                        response = client.get(path)
                        times.append((time.perf_counter() - started) * 1000)
                        assert response.status_code == 200
        finally:
            process.terminate()
            process.wait(timeout=60)
    print(f"first requests: medians of {args.starts} starts; repeats: medians of {args.runs} after the last")
    print(f"{'page':34} {'first ms':>9} {'min':>6} {'max':>6} {'repeat ms':>10} {'min':>6} {'max':>6} "
          f"{'first CPU ms':>13}")
    print(f"windows end at the store's newest minute, {newest:%H:%M} UTC")
    for name, _ in pages:
        first, again = firsts[name], repeats[name]
        print(f"{name:34} {statistics.median(first):>9.0f} {min(first):>6.0f} {max(first):>6.0f} "
              f"{statistics.median(again):>10.0f} {min(again):>6.0f} {max(again):>6.0f} "
              f"{statistics.median(cpus[name]):>13.0f}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
