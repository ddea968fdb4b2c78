"""`once` end to end into a local collector: MB/s, lines/s, CPU s/GB, peak memory, exact counts.

    python -m bench.bench_once --workload nginx --size 500M --runs 3
    python -m bench.bench_once --concurrency 1,2   # uploads in flight, compared side by side
    python -m bench.bench_once --memory            # peak RSS of once on 100M and 1G, workers 1 and default

Each run starts a fresh collector (SQLite) and a fresh state directory, runs the agent as a real
process, samples the summed RSS of the agent and its worker processes every 10 ms, and checks
that the collector's counts equal the workload's expected counts exactly.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.common import local_collector, machine, median, timed_agent, workload


def count_lines(path: Path) -> int:
    lines = 0
    with path.open("rb") as handle:
        while block := handle.read(8 << 20):
            lines += block.count(b"\n")
    return lines


def one_run(log: Path, expected: dict[str, int], workers: int, concurrency: int = 2,
            src: str | None = None) -> dict[str, float]:
    with local_collector() as collector, tempfile.TemporaryDirectory(prefix="ru-agent-") as tmp:
        token_file = Path(tmp) / "token"
        token_file.write_text(collector.token)  # type: ignore[attr-defined]
        wall, cpu, peak, code = timed_agent([
            "once", str(log), "--url", collector.url, "--token-file", str(token_file),  # type: ignore[attr-defined]
            "--state-dir", str(Path(tmp) / "state"), "--agent-id", "test-agent",
            "--workers", str(workers), "--set", "agent.stats_interval=0",
            "--set", f"server.upload_concurrency={concurrency}",
        ], src)
        if code != 0:
            raise SystemExit(f"once exited {code}")
        got = collector.counts()  # type: ignore[attr-defined]
    return {"wall": wall, "cpu": cpu, "peak": peak, "exact": float(got == expected)}


def throughput(kind: str, size: str, runs: int, workers_list: list[int], concurrency_list: list[int],
               srcs: Sequence[str | None] = (None,)) -> list[str]:
    """Each setting once per round, rounds repeated `runs` times: settings compared side by side
    (and, with `srcs`, the agents of other checkouts: "" or None is this one)."""
    log, expected = workload(kind, size)
    mb, lines = log.stat().st_size / 1e6, count_lines(log)
    settings = [(w, c, s or "") for s in srcs for w in workers_list for c in concurrency_list]
    results: dict[tuple[int, int, str], list[dict[str, float]]] = {setting: [] for setting in settings}
    for _ in range(runs):
        for workers, concurrency, src in settings:
            results[(workers, concurrency, src)].append(one_run(log, expected, workers, concurrency, src or None))
    rows = ["| agent | workload | workers | uploads in flight | MB/s | lines/s | CPU s/GB | peak RSS (MiB) "
            "| counts exact |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (workers, concurrency, src), got in results.items():
        wall = median([r["wall"] for r in got])
        cpu = median([r["cpu"] for r in got])
        peak = max(r["peak"] for r in got)
        exact = all(r["exact"] for r in got)
        rows.append(f"| {src or 'this tree'} | {kind} {size} | {workers} | {concurrency} | {mb / wall:.1f} | "
                    f"{lines / wall:,.0f} | "
                    f"{cpu / (mb / 1000):.1f} | {peak:.1f} | {'yes' if exact else 'NO'} |")
        print(rows[-1], flush=True)
    return rows


def memory(runs: int) -> list[str]:
    rows = ["| workers | peak RSS, 100 MB (MiB) | peak RSS, 1 GB (MiB) | growth (MiB) | counts exact |",
            "| --- | --- | --- | --- | --- |"]
    small, small_expected = workload("nginx", "100M")
    large, large_expected = workload("nginx", "1G")
    for workers in (1, os.cpu_count() or 2):
        a = [one_run(small, small_expected, workers) for _ in range(runs)]
        b = [one_run(large, large_expected, workers) for _ in range(runs)]
        peak_a = median([r["peak"] for r in a])
        peak_b = median([r["peak"] for r in b])
        exact = all(r["exact"] for r in a + b)
        rows.append(f"| {workers} | {peak_a:.1f} | {peak_b:.1f} | {peak_b - peak_a:+.1f} | "
                    f"{'yes' if exact else 'NO'} |")
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="nginx")
    parser.add_argument("--size", default="500M")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", default=f"1,{os.cpu_count() or 2}")
    parser.add_argument("--concurrency", default="2", help="server.upload_concurrency values, e.g. 1,2")
    parser.add_argument("--memory", action="store_true", help="peak RSS on 100M and 1G instead")
    parser.add_argument("--markdown", type=Path, help="write the table here as well")
    parser.add_argument("--src", action="append", default=[], metavar="TREE",
                        help="also run the agent of another checkout (its src/), round by round")
    args = parser.parse_args(argv)
    print(f"machine: {machine()}", flush=True)
    if args.memory:
        rows = memory(args.runs)
    else:
        rows = throughput(args.workload, args.size, args.runs, [int(w) for w in args.workers.split(",")],
                          [int(c) for c in args.concurrency.split(",")], [None, *args.src])
    if args.markdown:
        args.markdown.write_text("\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
