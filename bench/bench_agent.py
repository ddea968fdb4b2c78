"""The agent's cost per megabyte, side by side: pure-Python vs native engine vs another checkout.

    python -m bench.bench_agent --size 200M --runs 3 --main /tmp/main-checkout
    python -m bench.bench_agent --size 50M --runs 3 --sinks null --workers 1

Each round runs every variant once, rounds repeated `--runs` times (so the variants share the
machine's noise), `once` as a real process (`python -m remote_uploader`, cwd "/") into
- a null HTTP sink (bench/null_sink.py: answers like a collector, stores nothing), and/or
- our own collector (SQLite, its own process on 127.0.0.1, as bench_once starts it).
Reported: MB/s wall, MB per agent CPU-second (the agent and its worker processes, user + system,
start-up included), peak summed RSS, and whether the receiver's counts equal the workload's.

Variants: `native` and `stdlib` (agent.engine) of this checkout; with `--main DIR`, the `auto`
engine of the checkout in DIR (its src/ on PYTHONPATH, this interpreter), e.g. a `git worktree`
of main: "today's main", measured in the same run.
"""

from __future__ import annotations

import argparse
import compileall
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.common import ROOT, local_collector, machine, median, timed_agent, workload
from bench.null_sink import NullSink


@contextmanager
def receiver(kind: str) -> Iterator[object]:
    if kind == "null":
        with NullSink() as sink:
            yield sink
    else:
        with local_collector() as collector:
            yield collector


def one_run(log: Path, expected: dict[str, int], src: Path, engine: str, sink_kind: str,
            workers: int) -> dict[str, float]:
    with receiver(sink_kind) as sink, tempfile.TemporaryDirectory(prefix="ru-agent-") as tmp:
        token_file = Path(tmp) / "token"
        token_file.write_text(sink.token)  # type: ignore[attr-defined]
        wall, cpu, peak, code = timed_agent([
            "once", str(log), "--url", sink.url, "--token-file", str(token_file),  # type: ignore[attr-defined]
            "--state-dir", str(Path(tmp) / "state"), "--agent-id", "test-agent",
            "--workers", str(workers), "--set", "agent.stats_interval=0", "--set", f"agent.engine={engine}",
        ], src)
        if code != 0:
            raise SystemExit(f"once exited {code} ({src}, {engine})")
        got = sink.counts()  # type: ignore[attr-defined]
    return {"wall": wall, "cpu": cpu, "peak": peak, "exact": float(got == expected)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="nginx")
    parser.add_argument("--size", default="200M")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--sinks", default="null,collector")
    parser.add_argument("--engines", default="native,stdlib")
    parser.add_argument("--main", type=Path, help="another checkout, run with its `auto` engine")
    parser.add_argument("--markdown", type=Path, help="write the table here as well")
    args = parser.parse_args(argv)
    log, expected = workload(args.workload, args.size)
    mb = log.stat().st_size / 1e6
    variants = [(name, ROOT / "src", name) for name in args.engines.split(",")]
    if args.main is not None:
        variants.append(("main (auto)", args.main / "src", "auto"))
    settings = [(v, s, int(w)) for s in args.sinks.split(",") for w in args.workers.split(",") for v in variants]
    results: dict[tuple[str, str, int], list[dict[str, float]]] = {(v[0], s, w): [] for v, s, w in settings}
    for _, src, _ in variants:
        # Byte-compiled as `pip install` leaves an installed agent: with PYTHONDONTWRITEBYTECODE in
        # the environment (as on these machines), every run would otherwise compile every module
        # first (0.07 CPU-s of each start-up), a cost no installed agent pays.
        compileall.compile_dir(str(src), quiet=1)
    print(f"machine: {machine()}", flush=True)
    for round_ in range(args.runs):
        print(f"round {round_ + 1}: load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
        for (name, src, engine), sink_kind, workers in settings:
            run = one_run(log, expected, src, engine, sink_kind, workers)
            results[(name, sink_kind, workers)].append(run)
            print(f"  {name} -> {sink_kind}, {workers} worker(s): {mb / run['wall']:.1f} MB/s, "
                  f"{mb / run['cpu']:.1f} MB/CPU-s, {run['peak']:.1f} MiB, exact={bool(run['exact'])}", flush=True)
    rows = [f"| agent ({args.workload} {args.size}) | receiver | workers | MB/s wall | MB per agent CPU-s | "
            "peak RSS (MiB) | counts exact |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for (name, sink_kind, workers), got in results.items():
        wall, cpu = median([r["wall"] for r in got]), median([r["cpu"] for r in got])
        rows.append(f"| {name} | {sink_kind} | {workers} | {mb / wall:.1f} | {mb / cpu:.1f} | "
                    f"{max(r['peak'] for r in got):.1f} | {'yes' if all(r['exact'] for r in got) else 'NO'} |")
    print("\n".join(rows), flush=True)
    if args.markdown:
        args.markdown.write_text("\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
