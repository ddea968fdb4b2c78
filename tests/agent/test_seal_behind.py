"""A batch grows past `force_upload_threshold` (up to `max_memory_ips`) while the uploader is behind.

In process and deterministic: the agent's uploader is never started (NoSink), so every sealed
batch stays queued, and whether the queue "already holds a batch for every upload in flight" is
decided by `server.upload_concurrency` alone. The same log read with a concurrency the queue never
reaches is the control: there every batch is sealed at the threshold, as before.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from remote_uploader.agent.batch import decode_queued, records_of, streams_of
from remote_uploader.agent.runner import Agent
from remote_uploader.agent.tail import Tailer
from remote_uploader.config import load
from tests.helpers.agent import NoSink, queued_counts, write_access_log

THRESHOLD, CAP = 100, 400


def read_all(tmp_path: Path, log: Path, concurrency: int) -> tuple[list[int], list[list[tuple[str, int, int]]],
                                                                     Counter[str]]:
    """Read `log` to its end with the uploader never sending; (records, streams) per queued batch."""
    state = tmp_path / f"state-{concurrency}"
    (tmp_path / "token").write_text("t\n")
    config = load(None, env={}, sources=[str(log)], overrides={
        "agent.state_dir": str(state), "agent.workers": 1, "server.url": "http://127.0.0.1:9",
        "server.token_file": str(tmp_path / "token"), "server.upload_concurrency": concurrency,
        "read.block_size": 16 * 1024, "batching.max_memory_ips": CAP, "batching.force_upload_threshold": THRESHOLD,
        "batching.min_upload_batch": 20, "batching.max_batch_age": 3600.0})
    agent = Agent(config, sink=NoSink())
    try:
        tailer = Tailer(agent.collaborators())
        agent.consume(tailer.events())
        agent.seal_now()
        tailer.close()
        sizes, streams, seq = [], [], 0
        while (queued := agent.spool.next_batch(seq)) is not None:
            document = decode_queued(queued.body, queued.encoding)
            sizes.append(len(records_of(document)))
            streams.append(streams_of(document))
            seq = queued.seq
        return sizes, streams, queued_counts(agent)
    finally:
        agent.close()


def assert_contiguous(streams: list[list[tuple[str, int, int]]], size: int) -> None:
    """One file: each batch covers the bytes right after the previous one's, from 0 to the end."""
    position = 0
    for ranges in streams:
        assert len(ranges) == 1
        _, start, end = ranges[0]
        assert (start, end > start) == (position, True)
        position = end
    assert position == size


def test_batches_grow_to_the_cap_while_the_queue_holds_one_per_upload_in_flight(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    expected = write_access_log(log, 6000, seed=7, distinct=3000)

    grown, grown_streams, grown_counts = read_all(tmp_path, log, concurrency=2)
    control, control_streams, control_counts = read_all(tmp_path, log, concurrency=1000)

    # Control: the queue never holds 1000 batches, so every batch but the last is cut at the threshold
    # (by at most one 16 KiB block's new addresses past it).
    assert all(THRESHOLD <= n < CAP for n in control[:-1])
    # The first two batches are sealed at the threshold (the queue held fewer than two); every later
    # one but the last grew past it, and none past the cap.
    assert all(THRESHOLD <= n < CAP for n in grown[:2])
    assert all(THRESHOLD < n <= CAP for n in grown[2:-1]) and len(grown) > 3
    assert len(grown) < len(control) and sum(grown) < sum(control)  # fewer records for the same bytes
    # The same occurrences, each once, and each file's bytes covered once, in order, in both.
    assert grown_counts == control_counts == expected
    assert_contiguous(grown_streams, log.stat().st_size)
    assert_contiguous(control_streams, log.stat().st_size)
