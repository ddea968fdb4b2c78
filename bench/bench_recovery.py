"""Recovery: with 1 million records queued by an earlier run, how soon does the first upload go?

    python -m bench.bench_recovery --records 1000000 --runs 3

The queue is filled through the agent's own Spool (200 batches of 5,000 records, as `once`
seals them), then `once` starts on an empty log; the receiver (tests/helpers/receiver.py, a
real HTTP server on 127.0.0.1) notes when the first batch arrives. Time is measured from the
moment the agent process is started to that arrival (both on this host's monotonic clock).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, agent_env, machine, median

BATCH = 5000


def fill_queue(state: Path, records: int) -> None:
    from remote_uploader.agent.batch import Batch, seal
    from remote_uploader.agent.spool import Spool, prepare_state_dir

    prepare_state_dir(state)
    spool = Spool(state)
    try:
        made = 0
        while made < records:
            batch = Batch(time.time())
            size = min(BATCH, records - made)
            batch.add("/var/log/nginx/access.log",
                      {f"10.{(made + i) >> 16 & 255}.{(made + i) >> 8 & 255}.{(made + i) & 255}": 1
                       for i in range(size)}, time.time())
            sealed = seal(batch, "bench-agent", compress=True)
            spool.commit(sealed, {})
            made += size
    finally:
        spool.close()


def one_run(records: int) -> tuple[float, float]:
    sys.path.insert(0, str(ROOT))
    from tests.helpers.receiver import Receiver

    receiver = Receiver(token="bench-token")
    receiver.start()
    try:
        with tempfile.TemporaryDirectory(prefix="ru-recovery-") as tmp:
            state = Path(tmp) / "state"
            fill_queue(state, records)
            (Path(tmp) / "token").write_text("bench-token")
            empty = Path(tmp) / "empty.log"
            empty.write_text("")
            started = time.monotonic()
            process = subprocess.Popen(
                [sys.executable, "-m", "remote_uploader", "once", str(empty), "--url", receiver.url,
                 "--token-file", str(Path(tmp) / "token"), "--state-dir", str(state), "--agent-id", "bench-agent",
                 "--workers", "1"],
                env=agent_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            receiver.wait_for_total(1, timeout=60)
            first = min(r.time for r in receiver.requests() if r.method == "POST") - started
            process.wait(timeout=600)
            everything = time.monotonic() - started
            if receiver.total() != records:
                raise SystemExit(f"expected {records} records at the receiver, got {receiver.total()}")
    finally:
        receiver.close()
    return first, everything


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    print(f"machine: {machine()}", flush=True)
    results = [one_run(args.records) for _ in range(args.runs)]
    first = median([r[0] for r in results])
    drained = median([r[1] for r in results])
    rows = ["| queued records | start → first upload (s) | start → queue empty (s) | drain rate (records/s) |",
            "| --- | --- | --- | --- |",
            f"| {args.records:,} | {first:.3f} | {drained:.2f} | {args.records / drained:,.0f} |"]
    print("\n".join(rows))
    if args.markdown:
        args.markdown.write_text("\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
