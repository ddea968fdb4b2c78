"""Extraction throughput per workload: stdlib, native and hyperscan engines, `rg -o`, a naive per-line loop.

    python -m bench.bench_extract                      # 100 MB workloads in bench/data, 3 runs each
    python -m bench.bench_extract --size 500M --runs 5 --workloads nginx sshd

Each engine reads the file the way the agent's reader does: `readinto` a reused buffer of 4 MiB
(plus the extractor's left context), cut at the last newline (or, in a longer line, at the last
separator), one `scan()` per block. Its counts are checked against the workload's expected counts.
`rg -o` runs on the same file in the same run, with an IPv4|IPv6 pattern like the one an operator
would type (its output read through a pipe and thrown away); the naive loop is the old script's
way: a regex `findall` on each line, counted in a dict.

Throughput is the file size over the median of the runs, by CPU time of the process doing the
work (for rg: the child's user + system time) so that other load on the machine moves it less;
the wall-clock medians are printed too. The page cache is warmed before timing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import machine as common_machine
from bench.workloads import WORKLOADS, ensure, parse_size
from remote_uploader.agent.extract import Extractor, last_cut
from remote_uploader.agent.extractors import build_extractor

BLOCK = 4 * 1024 * 1024
RG_PATTERN = r"(?:[0-9]{1,3}\.){3}[0-9]{1,3}|(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}"
NAIVE_PATTERN = re.compile(rb"(?:[0-9]{1,3}\.){3}[0-9]{1,3}|(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}")


@dataclass
class Timing:
    cpu: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    ok: bool | None = None  # counts equal the expected ones (None: not checked)
    note: str = ""

    def mbps(self, size: int, clock: str = "cpu") -> float | None:
        times = self.cpu if clock == "cpu" else self.wall
        return size / 1e6 / statistics.median(times) if times else None


def scan_file(extractor: Extractor, path: Path) -> dict[str, int]:
    """The reader's loop: blocks into one reused buffer, cut at a newline or separator, scanned."""
    ctx = extractor.context
    buf = bytearray(ctx + BLOCK)
    view = memoryview(buf)
    buf[:ctx] = b"\n" * ctx
    total: dict[str, int] = {}
    get = total.get
    carry = 0
    with path.open("rb", buffering=0) as fh:
        while True:
            got = fh.readinto(view[ctx + carry :])
            filled = ctx + carry + got
            if got == 0 and carry == 0:
                break
            cut = buf.rfind(b"\n", ctx, filled) + 1
            if cut <= ctx:
                cut = last_cut(buf, ctx, filled) if got else filled
                if cut <= ctx:
                    cut = filled  # a block without a separator: cut anyway
            for ip, n in extractor.scan(buf, ctx, cut).items():
                total[ip] = get(ip, 0) + n
            carry = filled - cut
            buf[: ctx + carry] = buf[cut - ctx : filled]
            if got == 0 and carry == 0:
                break
    return total


def naive_file(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    findall = NAIVE_PATTERN.findall
    with path.open("rb") as fh:
        for line in fh:
            for ip in findall(line):
                counts[ip] = counts.get(ip, 0) + 1
    return counts


def time_engine(engine: str, path: Path, expected: dict[str, int], runs: int) -> Timing:
    """`runs` scans of the file, each by a new extractor (built off the clock, empty caches)."""
    timing = Timing(ok=True)
    for _ in range(runs):
        extractor = build_extractor(engine=engine)
        wall, cpu = time.perf_counter(), time.process_time()
        counts = scan_file(extractor, path)
        timing.cpu.append(time.process_time() - cpu)
        timing.wall.append(time.perf_counter() - wall)
        timing.ok = timing.ok and counts == expected
    return timing


def time_naive(path: Path, runs: int) -> Timing:
    timing = Timing()
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        naive_file(path)
        timing.cpu.append(time.process_time() - cpu)
        timing.wall.append(time.perf_counter() - wall)
    return timing


def time_rg(rg: str, path: Path, runs: int) -> Timing:
    timing = Timing()
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall = time.perf_counter()
        with subprocess.Popen([rg, "-o", "-a", "--no-filename", "--no-line-number", "-e", RG_PATTERN, str(path)],
                              stdout=subprocess.PIPE) as proc:
            assert proc.stdout is not None
            while proc.stdout.read(1 << 20):
                pass
        timing.wall.append(time.perf_counter() - wall)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        timing.cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return timing


def warm(path: Path) -> None:
    with path.open("rb", buffering=0) as fh:
        while fh.read(BLOCK):
            pass


def machine() -> str:
    """The common machine line, plus what this benchmark depends on (engines, rg, load)."""
    parts = [common_machine()]
    try:
        import hyperscan

        parts.append(f"hyperscan {getattr(hyperscan, '__version__', '?')}")
    except ImportError:
        parts.append("hyperscan not installed")
    rg = shutil.which("rg")
    if rg:
        parts.append(subprocess.run([rg, "--version"], capture_output=True, text=True).stdout.split("\n")[0])
    parts.append("load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    return "; ".join(parts)


def fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_extract", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("100M"))
    parser.add_argument("--data", type=Path, default=Path("bench/data"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--naive-runs", type=int, default=None, help="default: --runs")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--json", type=Path, help="also write the raw timings here")
    args = parser.parse_args(argv)
    naive_runs = args.naive_runs or args.runs

    engines = ["stdlib"]
    if importlib.util.find_spec("remote_uploader.agent._native") is not None:
        engines.append("native")
    else:
        print("the native core is not built: its column is empty (pip install . with a C compiler)", file=sys.stderr)
    try:
        import hyperscan  # noqa: F401

        engines.append("hyperscan")
    except ImportError:
        print("hyperscan is not installed: its column is empty (pip install 'remote-uploader[fast]')", file=sys.stderr)
    rg = shutil.which("rg")
    if rg is None:
        print("rg (ripgrep) is missing: its column is empty (apt-get install ripgrep)", file=sys.stderr)

    header = f"Machine: {machine()}"
    measured: list[tuple[str, int, dict[str, Timing]]] = []
    for name in args.workloads:
        wl = ensure(name, args.size, args.data)
        size = wl.log.stat().st_size
        expected = wl.counts()
        warm(wl.log)
        results: dict[str, Timing] = {}
        for engine in engines:
            results[engine] = time_engine(engine, wl.log, expected, args.runs)
        if rg:
            results["rg"] = time_rg(rg, wl.log, args.runs)
        results["naive"] = time_naive(wl.log, naive_runs)
        measured.append((name, size, results))
        print(f"{name}: " + ", ".join(f"{k} {fmt(t.mbps(size))} MB/s" for k, t in results.items()), file=sys.stderr)

    def ratio(a: float | None, b: float | None) -> str:
        return "—" if a is None or b is None else f"{a / b:.2f}"

    print(header)
    print()
    for clock, title in (("cpu", "MB/s per core (CPU time, median)"), ("wall", "MB/s wall clock (median)")):
        print(f"**{title}**, {args.runs} runs, {fmt(args.size / 1e6, 0)} MB files, 4 MiB blocks")
        print()
        print("| workload | stdlib | native | hyperscan | rg -o | naive loop | stdlib / rg | native / rg | "
              "hyperscan / rg | counts exact |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for name, size, results in measured:
            s, c, h, r, n = (results[k].mbps(size, clock) if k in results else None
                             for k in ("stdlib", "native", "hyperscan", "rg", "naive"))
            exact = "yes" if all(results[k].ok for k in engines) else "NO"
            print(f"| {name} | {fmt(s)} | {fmt(c)} | {fmt(h)} | {fmt(r)} | {fmt(n)} | {ratio(s, r)} | {ratio(c, r)} | "
                  f"{ratio(h, r)} | {exact} |")
        print()
    if args.json:
        rows = [{"workload": name, "bytes": size, **{k: vars(t) for k, t in results.items()}}
                for name, size, results in measured]
        args.json.write_text(json.dumps({"machine": header, "size": args.size, "rows": rows}, indent=1))
    return 0 if all(results[k].ok for _, _, results in measured for k in engines) else 1


if __name__ == "__main__":
    raise SystemExit(main())
