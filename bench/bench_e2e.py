"""End to end on one machine (issue 15): `rg -o`, `once` into a null sink, into our own collector on
SQLite and on PostgreSQL, two agents into one collector; alternating, medians, every run checked.

    python -m bench.bench_e2e --size 200M --runs 3
    python -m bench.bench_e2e --variants sqlite,sqlite-large --runs 3      # the records-per-MB lever
    python -m bench.bench_e2e --variants sqlite --profile bench/out/profile  # py-spy on both processes
    python -m bench.profile_shares bench/out/profile/sqlite-*.txt           # their shares by stage

Every round runs each variant once, in the order given, so that the variants share the machine's
noise; the table gives medians over the rounds. A variant is

- `rg`: `rg -o` with an IPv4|IPv6 pattern (bench_extract's) on the file, output read and dropped:
  the floor, what reading the file and finding address-like strings costs;
- `null`: `once` into a null HTTP sink (bench/null_sink.py, in this process: it takes format 2 and
  stores nothing), the agent alone;
- `sqlite`, `pg`: `once` into `collector serve` on 127.0.0.1, on a fresh SQLite file or a fresh
  database of a throwaway PostgreSQL (tests/helpers/postgres.py: initdb as `nobody` when root,
  fsync off, so PostgreSQL's figures are without the cost of durable commits);
- `sqlite-2`, `pg-2`: two agents at once (two state directories, two agent names and tokens) into
  one collector, each reading one half of the workload (cut at a line end);
- `NAME@base`: the same with the agents of the checkout given by `--base` (e.g. main);
- `sqlite-large`, `sqlite-f1`, `sqlite-t20k`...: `sqlite` with the `large-memory` profile
  (10,000 / 20,000), with a collector that lists only body format 1 in `Accept-Post` (the agent
  then rewrites each queued format 2 body: bench/v1only/), or with
  `batching.force_upload_threshold` = 20,000 and `max_memory_ips` twice that; `null-w1`,
  `sqlite-w1`...: with one worker (`--workers 1`; the default is one per core).

Measured per run: wall time from the agents' start to their exit (`once` exits when the queue is
empty: every batch acknowledged, so stored), CPU-seconds of the agents (with their worker
processes: `wait4`'s rusage), of the receiver (`collector serve` and its children, from
/proc/PID/stat before and after; the null sink runs in this process and is not counted) and of
PostgreSQL's server processes; the records the agents sent (their "Sent:" line); the peak summed
RSS of each side (sampled every 10 ms); and completeness: the receiver's total per address, read
back, equal to the workload's expected counts (every address, exactly).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.bench_extract import RG_PATTERN
from bench.common import ROOT, TreeRss, agent_env, machine, median, workload
from bench.null_sink import NullSink

CLK_TCK = os.sysconf("SC_CLK_TCK")
SENT = re.compile(r"Sent: ([\d,]+) batches, ([\d,]+) records")
#: Agent settings per variant suffix; `--set` values given to `once`.
SETTINGS: dict[str, list[str]] = {
    "": [],
    "large": ["--profile", "large-memory"],
    "f1": [],
    "t20k": ["--set", "batching.max_memory_ips=40000", "--set", "batching.force_upload_threshold=20000"],
    "t50k": ["--set", "batching.max_memory_ips=100000", "--set", "batching.force_upload_threshold=50000"],
    "w1": ["--workers", "1"],
}


@dataclass
class Run:
    wall: float
    agent_cpu: float
    receiver_cpu: float | None
    db_cpu: float | None
    records: int
    batches: int
    agent_rss: float
    receiver_rss: float | None
    exact: bool


@dataclass
class Variant:
    name: str
    receiver: str  # rg, null, sqlite, pg
    agents: int = 1
    suffix: str = ""
    base: bool = False  # the agents of the `--base` checkout
    runs: list[Run] = field(default_factory=list)

    @classmethod
    def parse(cls, name: str) -> Variant:
        spec, at, tree = name.partition("@")
        if at and tree != "base":
            raise SystemExit(f"unknown variant {name!r} (only @base names another checkout)")
        base, _, suffix = spec.partition("-")
        agents = 1
        if suffix.isdigit():
            agents, suffix = int(suffix), ""
        if base not in ("rg", "null", "sqlite", "pg") or suffix not in SETTINGS:
            raise SystemExit(f"unknown variant {name!r}")
        return cls(name, base, agents, suffix, bool(at))


# -- CPU of processes we did not start directly -------------------------------------------------


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry))
    return children


def tree_cpu(root: int) -> float:
    """CPU-seconds of a live process and its live descendants, with what their reaped children used
    (utime + stime + cutime + cstime of each)."""
    children, total, stack = _children(), 0, [root]
    while stack:
        pid = stack.pop()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(value) for value in fields[11:15])
        except (OSError, IndexError):
            pass
        stack.extend(children.get(pid, []))
    return total / CLK_TCK


# -- receivers ----------------------------------------------------------------------------------


class Postgres:
    """One throwaway PostgreSQL for the whole benchmark; a fresh database per run."""

    def __init__(self) -> None:
        sys.path.insert(0, str(ROOT))
        from tests.helpers.postgres import PostgresServer, find_bindir

        bindir = find_bindir()
        assert bindir is not None
        self.server = PostgresServer(bindir)
        self.server.start()

    def pid(self) -> int:
        return int((self.server.data / "postmaster.pid").read_text().split()[0])

    def close(self) -> None:
        self.server.stop()


@dataclass
class Target:
    """Where the agents send: its URL, one (token, agent name) per agent, its process (None for the
    null sink, which runs in this process) and how to read back what it counted."""

    url: str
    agents: list[tuple[str, str]]
    pid: int | None
    counts: Callable[[], dict[str, int]]


@contextmanager
def collector(kind: str, postgres: Postgres | None, agents: int, v1_only: bool) -> Iterator[Target]:
    """`collector serve` (SQLite or PostgreSQL) as a child process, with one token per agent."""
    sys.path.insert(0, str(ROOT))
    from tests.helpers import collector_fixtures
    from tests.helpers.collector_fixtures import CollectorProcess

    collector_fixtures.START_TIMEOUT = max(collector_fixtures.START_TIMEOUT, 120.0)
    with tempfile.TemporaryDirectory(prefix="ru-e2e-") as tmp:
        workdir = Path(tmp)
        if kind == "pg":
            assert postgres is not None
            db = postgres.server.create_database()
        else:
            db = f"sqlite:///{workdir / 'collector.db'}"
        process = CollectorProcess(workdir, db)
        names = ["test-agent"] + [f"bench-agent-{i}" for i in range(1, agents)]
        tokens = [process.token] + [process.add_token(name) for name in names[1:]]
        saved = os.environ.get("PYTHONPATH")
        if v1_only:  # the same server, listing only format 1 (bench/v1only/sitecustomize.py)
            os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "bench" / "v1only"), saved]))
        try:
            process.start()
        finally:
            if saved is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = saved
        try:
            assert process.proc is not None
            yield Target(process.url, list(zip(tokens, names, strict=True)), process.proc.pid, process.counts)
        finally:
            process.stop()
            if kind == "pg":
                assert postgres is not None
                postgres.server.drop_database(db)


@contextmanager
def receiver(variant: Variant, postgres: Postgres | None) -> Iterator[Target]:
    if variant.receiver == "null":
        with NullSink() as sink:
            yield Target(sink.url, [(sink.token, f"bench-agent-{i}") for i in range(variant.agents)], None, sink.counts)
    else:
        with collector(variant.receiver, postgres, variant.agents, variant.suffix == "f1") as process:
            yield process


# -- runs ---------------------------------------------------------------------------------------


def halves(log: Path, parts: int) -> list[Path]:
    """The workload cut into `parts` files at line ends (made once, beside it)."""
    if parts == 1:
        return [log]
    paths = [log.with_name(f"{log.stem}.part{i}of{parts}.log") for i in range(parts)]
    if all(p.exists() for p in paths):
        return paths
    data = log.read_bytes()
    start = 0
    for i, path in enumerate(paths):
        end = len(data) if i == parts - 1 else data.index(b"\n", len(data) * (i + 1) // parts) + 1
        path.write_bytes(data[start:end])
        start = end
    return paths


def run_rg(log: Path, rg: str) -> Run:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with subprocess.Popen([rg, "-o", "-a", "--no-filename", "--no-line-number", "-e", RG_PATTERN, str(log)],
                          stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        with TreeRss(proc.pid) as rss:
            while proc.stdout.read(1 << 20):
                pass
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return Run(wall, cpu, None, None, 0, 0, rss.peak_mib, None, True)


def agent_command(log: Path, url: str, token_file: Path, state: Path, name: str, suffix: str) -> list[str]:
    return [sys.executable, "-m", "remote_uploader", "once", str(log), "--url", url, "--token-file", str(token_file),
            "--state-dir", str(state), "--agent-id", name, "--set", "agent.stats_interval=0", *SETTINGS[suffix]]


def run_agents(variant: Variant, log: Path, expected: dict[str, int], postgres: Postgres | None,
               profile: Path | None = None, src: str | None = None) -> Run:
    files = halves(log, variant.agents)
    with receiver(variant, postgres) as sink, tempfile.TemporaryDirectory(prefix="ru-e2e-agent-") as tmp, \
            ExitStack() as stack:
        commands = []
        for i, (path, (token, name)) in enumerate(zip(files, sink.agents, strict=True)):
            token_file = Path(tmp) / f"token{i}"
            token_file.write_text(token)
            commands.append(agent_command(path.resolve(), sink.url, token_file, Path(tmp) / f"state{i}", name,
                                          variant.suffix))
        receiver_pid = sink.pid
        db_pid = postgres.pid() if variant.receiver == "pg" and postgres is not None else None
        receiver_before = tree_cpu(receiver_pid) if receiver_pid else 0.0
        db_before = tree_cpu(db_pid) if db_pid else 0.0
        receiver_rss = stack.enter_context(TreeRss(receiver_pid)) if receiver_pid else None
        spies: list[subprocess.Popen[bytes]] = []
        if profile is not None:
            profile.mkdir(parents=True, exist_ok=True)  # the null variant has no receiver process to spy on
        if profile is not None and receiver_pid:
            spies.append(subprocess.Popen(["py-spy", "record", "--pid", str(receiver_pid), "--rate", "100",
                                           "--format", "raw", "--threads", "--nonblocking",
                                           "-o", str(profile / f"{variant.name}-collector.txt")],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(1.0)  # py-spy attached before the agent starts (a bench, not a test)
        started = time.perf_counter()
        procs, rsses = [], []
        for i, command in enumerate(commands):
            if profile is not None:
                command = ["py-spy", "record", "--subprocesses", "--rate", "100", "--format", "raw", "--threads",
                           "--nonblocking", "-o", str(profile / f"{variant.name}-agent{i}.txt"), "--", *command]
            out = (Path(tmp) / f"agent{i}.out").open("wb")
            procs.append((subprocess.Popen(command, env=agent_env(src), cwd="/", stdout=out,
                                           stderr=subprocess.STDOUT), out))
            rsses.append(stack.enter_context(TreeRss(procs[-1][0].pid)))
        agent_cpu, codes = 0.0, []
        for proc, out in procs:
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            out.close()
            agent_cpu += usage.ru_utime + usage.ru_stime
            codes.append(proc.returncode)
        wall = time.perf_counter() - started
        receiver_cpu = tree_cpu(receiver_pid) - receiver_before if receiver_pid else None
        db_cpu = tree_cpu(db_pid) - db_before if db_pid else None
        for spy in spies:
            spy.send_signal(2)  # SIGINT: py-spy writes what it sampled
            spy.wait()
        stack.close()
        outputs = [(Path(tmp) / f"agent{i}.out").read_text(errors="replace") for i in range(len(procs))]
        if any(codes):
            raise SystemExit(f"{variant.name}: an agent exited {codes}:\n" + "\n".join(o[-3000:] for o in outputs))
        batches = records = 0
        for output in outputs:
            match = SENT.search(output)
            if match is None:
                raise SystemExit(f"{variant.name}: no 'Sent:' line in the agent's output:\n{output[-3000:]}")
            batches += int(match.group(1).replace(",", ""))
            records += int(match.group(2).replace(",", ""))
        got = sink.counts()
    agent_rss = sum(r.peak_mib for r in rsses)
    return Run(wall, agent_cpu, receiver_cpu, db_cpu, records, batches, agent_rss,
               receiver_rss.peak_mib if receiver_rss else None, got == expected)


# -- the table ----------------------------------------------------------------------------------


def _median(values: Sequence[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return median(known) if known else None


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def table(variants: Sequence[Variant], mb: float, rg_wall: float | None) -> list[str]:
    rows = ["| variant | MB/s wall | × rg's time | agent CPU-s | MB per agent CPU-s | collector CPU-s | "
            "PostgreSQL CPU-s | records sent | records per MB | records/s stored | peak RSS agents / collector "
            "(MiB) | complete |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for v in variants:
        if not v.runs:
            continue
        wall = median([r.wall for r in v.runs])
        cpu = median([r.agent_cpu for r in v.runs])
        rcpu = _median([r.receiver_cpu for r in v.runs])
        dcpu = _median([r.db_cpu for r in v.runs])
        records = median([r.records for r in v.runs])
        rrss = max((r.receiver_rss for r in v.runs if r.receiver_rss is not None), default=None)
        stored = f"{records / wall:,.0f}" if v.receiver in ("sqlite", "pg") else "—"
        ratio = f"{wall / rg_wall:.1f}" if rg_wall else "—"
        rows.append(f"| {v.name} | {mb / wall:.1f} | {ratio} | {cpu:.2f} | {mb / cpu:.1f} | {_fmt(rcpu, '.2f')} | "
                    f"{_fmt(dcpu, '.2f')} | {records:,.0f} | {records / mb:,.0f} | {stored} | "
                    f"{max(r.agent_rss for r in v.runs):.1f} / {_fmt(rrss, '.1f')} | "
                    f"{'yes' if all(r.exact for r in v.runs) else 'NO'} ({len(v.runs)} runs) |")
    return rows


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="nginx")
    parser.add_argument("--size", default="200M")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--variants", default="rg,null,sqlite,pg,sqlite-2,pg-2")
    parser.add_argument("--base", help="the checkout whose agents run in the variants named `...@base`, e.g. a "
                        "`git worktree add --detach` of main: old and new code side by side, round by round (its "
                        "native core must be built there too, or it runs another engine: the bench refuses then)")
    parser.add_argument("--profile", type=Path, help="one run per variant under py-spy; raw stacks written here")
    parser.add_argument("--markdown", type=Path, help="write the table here as well")
    args = parser.parse_args(argv)
    if args.profile is not None:
        args.profile = args.profile.resolve()  # py-spy writes it from the agent's cwd, "/"
    # SIGTERM (and SIGINT, which a shell's background job ignores) end the bench through its
    # `finally`s: collectors stopped, PostgreSQL stopped, temporary directories removed.
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    variants = [Variant.parse(name) for name in args.variants.split(",")]
    log, expected = workload(args.workload, args.size)
    mb = log.stat().st_size / 1e6
    rg = shutil.which("rg")
    print(f"machine: {machine()}; {args.workload} {args.size} ({mb:.1f} MB, {sum(expected.values()):,} occurrences, "
          f"{len(expected):,} addresses); load {load()}", flush=True)
    postgres = None
    if any(v.receiver == "pg" for v in variants):
        sys.path.insert(0, str(ROOT))
        from tests.helpers.postgres import find_bindir

        if find_bindir() is None:
            print("PostgreSQL binaries not found (initdb, pg_ctl): the pg variants are left out", flush=True)
            variants = [v for v in variants if v.receiver != "pg"]
        else:
            postgres = Postgres()
    loads = [load()]
    try:
        for round_ in range(1 if args.profile else args.runs):
            for v in variants:
                if v.receiver == "rg":
                    if rg is None or args.profile:
                        continue
                    run = run_rg(log, rg)
                else:
                    if v.base and not args.base:
                        raise SystemExit(f"{v.name} needs --base")
                    if v.base and not list((Path(args.base) / "src/remote_uploader/agent").glob("_native*.so")):
                        raise SystemExit(f"{args.base} has no built native core: `python setup.py build_ext "
                                         "--inplace` there (else its agents run another engine)")
                    run = run_agents(v, log, expected, postgres, args.profile, args.base if v.base else None)
                v.runs.append(run)
                print(f"  round {round_ + 1} {v.name}: {mb / run.wall:.1f} MB/s, agents {run.agent_cpu:.2f} CPU-s, "
                      f"collector {_fmt(run.receiver_cpu, '.2f')} CPU-s, PostgreSQL {_fmt(run.db_cpu, '.2f')} CPU-s, "
                      f"{run.records:,} records in {run.batches:,} batches, RSS {run.agent_rss:.1f} / "
                      f"{_fmt(run.receiver_rss, '.1f')} MiB, complete={run.exact}; load {load()}", flush=True)
            loads.append(load())
    finally:
        if postgres is not None:
            postgres.close()
    rg_runs = [v for v in variants if v.receiver == "rg" and v.runs]
    rows = table(variants, mb, median([r.wall for r in rg_runs[0].runs]) if rg_runs else None)
    rows.append("")
    rows.append(f"Load average (1, 5, 15 min) at the start and after each round: {'; '.join(loads)}.")
    print("\n".join(rows), flush=True)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text("\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
