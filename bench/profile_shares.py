"""Shares of py-spy samples by stage, for the raw profiles `bench_e2e --profile DIR` writes.

    python -m bench.profile_shares DIR/sqlite-agent0.txt DIR/sqlite-collector.txt --rate 100

py-spy (`record --format raw --threads`, idle threads left out) writes one line per distinct
stack: `process ...;thread (TID): NAME;frame;frame;... COUNT`. A sample is given to the first
stage, in the order below, whose pattern occurs anywhere in its stack (so a stage is inclusive of
what it calls, and the order settles overlaps: e.g. gzip inside sealing counts as sealing's gzip).
At `--rate` samples a second, samples / rate estimates CPU-seconds (each active thread is sampled).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

#: (stage, regex on the whole stack line), first match wins.
AGENT_STAGES = [
    ("worker process (scans ranges of the file)", r'process \d+:"[^"]*agent\.worker'),
    ("start-up: imports", r"_find_and_load"),
    ("sender threads: HTTP exchange", r"\): sender_"),
    ("uploader thread: queue reads, acks", r"\): uploader"),
    ("seal: gzip", r"_sealed .*(compress \(gzip|zlib)"),
    ("seal: format 2 JSON", r"encode_format_2"),
    ("seal: queue commit (SQLite)", r"Spool\.commit"),
    ("seal: other", r"seal_now"),
    ("extract: native scan", r"extract_native|_native"),
    ("extract: other (IPv6 judged in Python, windows)", r"agent/extract(_fast)?\.py"),
    ("count lines", r"count_lines"),
    ("Batch.add", r"Batch\.add"),
    ("worker results received (pipes, unpickling)", r"agent/parallel\.py"),
    ("reading the file, follower", r"agent/(tail|source)\.py"),
]
COLLECTOR_STAGES = [
    ("start-up: imports", r"_find_and_load"),
    ("store: commit", r"store_batch .*(commit|COMMIT)"),
    ("store: SQL (upserts of ips, ip_agents, counts, buckets)", r"store_batch"),
    ("decode + validate body (gzip, JSON, addresses)", r"parse_format_2|parse_format_1|decode_body|parsing\.py|"
                                                       r"collector/batch\.py|body\.py"),
    ("rules, decisions", r"decisions|rules"),
    ("HTTP, ASGI, FastAPI (uvicorn, h11, starlette)", r"uvicorn|h11|starlette|fastapi|anyio|asyncio"),
]


def stages_for(path: Path) -> list[tuple[str, str]]:
    return COLLECTOR_STAGES if "collector" in path.name else AGENT_STAGES


def shares(path: Path) -> tuple[int, Counter[str], Counter[str]]:
    """(samples, samples per stage, samples per thread name) of one raw profile."""
    compiled = [(name, re.compile(pattern)) for name, pattern in stages_for(path)]
    stages: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        stage = next((name for name, pattern in compiled if pattern.search(stack)), "other")
        stages[stage] += n
        thread = re.search(r"thread \(\d+\)(?:: ([^;]+))?", stack)
        worker = "agent.worker" in stack
        name = (thread.group(1) if thread else None) or "MainThread"  # unnamed: the main thread while importing
        threads[("worker process: " if worker else "") + name] += n
    return total, stages, threads


def below(path: Path, function: str) -> tuple[int, Counter[str]]:
    """Samples inside `function` (a frame's name, e.g. `SqliteStorage.store_batch`), by the frame
    it was in (its own line) or called next: where inside a function the time goes."""
    parts: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        index = next((i for i, frame in enumerate(frames) if frame.startswith(function + " (")), None)
        if index is None or not count.isdigit():
            continue
        total += int(count)
        parts[frames[index] + (" -> " + frames[index + 1] if index + 1 < len(frames) else "")] += int(count)
    return total, parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profiles", nargs="+", type=Path)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--below", action="append", default=[], metavar="FUNCTION",
                        help="also break the samples inside FUNCTION down by line and callee")
    args = parser.parse_args(argv)
    totals = {path: shares(path) for path in args.profiles}
    everything = sum(total for total, _, _ in totals.values())
    for path, (total, stages, threads) in totals.items():
        print(f"\n{path.name}: {total} samples, about {total / args.rate:.1f} CPU-s, "
              f"{100 * total / max(everything, 1):.0f} % of all the profiles' samples")
        print("| stage | share of this process's samples |\n| --- | ---: |")
        for name, n in stages.most_common():
            print(f"| {name} | {100 * n / total:.1f} % |")
        print("threads: " + ", ".join(f"{name} {100 * n / total:.0f} %" for name, n in threads.most_common(6)))
        for function in args.below:
            inside, parts = below(path, function)
            if inside:
                print(f"inside {function}: {inside} samples ({100 * inside / total:.1f} %)")
                for part, n in parts.most_common(10):
                    print(f"  {100 * n / inside:5.1f} %  {part}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
