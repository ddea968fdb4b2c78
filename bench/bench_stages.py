"""CPU per stage of `once`'s reading thread, in one process, for each engine: where the time goes.

    python -m bench.bench_stages --size 200M --engines native,stdlib

The stages are the agent's own functions, called as `once` calls them on a backlog: `scan` per
block of `read.block_size` (1 MiB) cut at the last newline, `count_lines` (the Part's line
count), `Batch.add`, and `seal` (body encoding and gzip) each time the batch reaches the default
`force_upload_threshold` (5,000 records). (The native engine counts the lines in its scanning
pass, `scan_counting`: its line count is inside `scan`, as in `once`.) CPU time
(`time.process_time`) per stage, summed over the file; reading the file, the queue write and the
upload are not in it (bench_agent measures the whole process). A complement to a sampling
profiler: exact per stage, no sampling bias.
"""

from __future__ import annotations

import argparse
import sys
import time

from bench.common import machine, workload
from remote_uploader.agent.batch import Batch, seal
from remote_uploader.agent.extract import count_lines
from remote_uploader.agent.extractors import build_extractor

BLOCK = 1024 * 1024
THRESHOLD = 5_000


def stages(data: bytes, engine: str) -> dict[str, float]:
    buf = b"\n" * 16 + data
    extractor = build_extractor(engine=engine)
    counting = getattr(extractor, "scan_counting", None)  # as parallel.scan_parts calls it
    spent = {"scan": 0.0, "count_lines": 0.0, "Batch.add": 0.0, "seal": 0.0}
    batch, records, clock, lo = Batch(0.0), 0, time.process_time, 16
    while lo < len(buf):
        hi = buf.rfind(b"\n", lo, lo + BLOCK) + 1 if lo + BLOCK < len(buf) else len(buf)
        t0 = clock()
        if counting is not None:  # the native engine counts the lines in its scanning pass
            counts, _ = counting(buf, lo, hi)
            t1 = t2 = clock()
        else:
            counts = extractor.scan(buf, lo, hi)
            t1 = clock()
            count_lines(buf, lo, hi)
            t2 = clock()
        batch.add("/var/log/nginx/access.log", counts, 1.0)
        t3 = clock()
        spent["scan"] += t1 - t0
        spent["count_lines"] += t2 - t1
        spent["Batch.add"] += t3 - t2
        if len(batch) >= THRESHOLD:
            t4 = clock()
            seal(batch, "bench", True)
            spent["seal"] += clock() - t4
            records += len(batch)
            batch = Batch(0.0)
        lo = hi
    spent["records"] = records + len(batch)
    return spent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="nginx")
    parser.add_argument("--size", default="200M")
    parser.add_argument("--engines", default="native,stdlib")
    args = parser.parse_args(argv)
    log, _ = workload(args.workload, args.size)
    data = log.read_bytes()
    mb = len(data) / 1e6
    print(f"machine: {machine()}")
    print(f"| engine ({args.workload} {args.size}) | scan (s) | count_lines (s) | Batch.add (s) "
          "| seal: encode + gzip (s) | sum (s) | MB per CPU-s of these stages | records |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for engine in args.engines.split(","):
        spent = stages(data, engine)
        total = spent["scan"] + spent["count_lines"] + spent["Batch.add"] + spent["seal"]
        print(f"| {engine} | {spent['scan']:.2f} | {spent['count_lines']:.2f} | {spent['Batch.add']:.2f} | "
              f"{spent['seal']:.2f} | {total:.2f} | {mb / total:.0f} | {spent['records']:,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
