"""Extraction with and without a timestamp pattern, side by side in one process (CPU time).

    nice -n 10 python bench/bench_timestamps.py [--lines 200000]

Workload (deterministic): an nginx combined log, 20 lines a second, a client address and one
X-Forwarded-For hop per line, 5,000 distinct addresses. Each configuration scans the whole text
in 1 MiB blocks through `scan_parts` (what the reader does), best of three; the figure is MB of
log per CPU-second. `pattern=common` is a source with `timestamp_pattern = "common"`.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from remote_uploader.agent.extract import build_extractor  # noqa: E402
from remote_uploader.agent.parallel import scan_parts  # noqa: E402


def workload(count: int) -> bytes:
    rng = random.Random(1)
    pool = [f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            for _ in range(5000)]
    start = datetime(2026, 12, 1, tzinfo=UTC)
    lines = []
    for n in range(count):
        stamp = (start + timedelta(seconds=n // 20)).strftime("%d/%b/%Y:%H:%M:%S +0000")
        lines.append(f'{rng.choice(pool)} - - [{stamp}] "GET /item/{n} HTTP/1.1" 200 {n % 9000} "-" '
                     f'"Mozilla/5.0 Chrome/120" "{rng.choice(pool)}"\n')
    return "".join(lines).encode()


def cpu_seconds(data: bytes, engine: str, pattern: str | None) -> float:
    extractor = build_extractor(engine=engine, timestamp_pattern=pattern)
    buf = bytearray(b"\n" * extractor.context + data)
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        pos = extractor.context
        while pos < len(buf):
            end = min(len(buf), pos + (1 << 20))
            cut = buf.rfind(b"\n", pos, end) + 1 if end < len(buf) else end
            cut = cut if cut > pos else end
            scan_parts(extractor, buf, pos, cut, cut, 10**7)
            pos = cut
        best = min(best, time.process_time() - started)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=200_000)
    args = parser.parse_args()
    data = workload(args.lines)
    print(f"{len(data) / 1e6:.1f} MB, {args.lines} lines")
    for engine in ("stdlib", "auto"):
        for pattern in (None, "common"):
            seconds = cpu_seconds(data, engine, pattern)
            print(f"engine={engine:6} pattern={pattern!s:7} {len(data) / 1e6 / seconds:6.1f} MB/s of CPU", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
