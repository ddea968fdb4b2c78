"""Batches that grew past `force_upload_threshold` while the uploader was behind, delivered by `once`.

The first run has no collector to talk to, so its uploader is behind from the first seal: every
batch after the first `server.upload_concurrency` grows up to `max_memory_ips` (docs/configuration.md,
"Batching"). The second run delivers them to the fault-injecting receiver, which answers the first
ones with errors and resets (a batch stored whose answer was lost is sent again): every occurrence
is counted once, and the receiver holds the file's bytes as one range from 0 to its end.
"""

from __future__ import annotations

from pathlib import Path

from remote_uploader.agent.spool import Spool
from tests.helpers.agent import run_agent, write_access_log, write_config

THRESHOLD, CAP = 100, 400


def test_grown_batches_are_delivered_exactly_once_with_their_byte_ranges(tmp_path: Path, receiver) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "access.log"
    expected = write_access_log(log, 3000, seed=11, distinct=3000)
    batching = {"force_upload_threshold": THRESHOLD, "max_memory_ips": CAP, "min_upload_batch": 10}
    read = {"block_size": 16384}  # about 70 new addresses a block: a batch at the threshold stays under 200
    config = write_config(tmp_path / "agent.toml", url="http://127.0.0.1:9", token=receiver.token,
                          state_dir=tmp_path / "state", sources=[str(log)], batching=batching, read=read)
    assert run_agent("once", "-c", str(config), "--max-retry-time", "3").returncode == 3  # nothing listens there

    config = write_config(tmp_path / "agent.toml", url=receiver.url, token=receiver.token,
                          state_dir=tmp_path / "state", sources=[str(log)], batching=batching, read=read)
    receiver.reset_next(1, after_store=True)
    receiver.fail_next(1, 503)
    result = run_agent("once", "-c", str(config))
    assert result.returncode == 0, result.stderr

    assert receiver.counts() == dict(expected)
    sizes = [r.records for r in receiver.requests() if r.stored]
    assert 2 * THRESHOLD < max(sizes) <= CAP  # batches grew while nothing was delivered
    spool = Spool(tmp_path / "state", readonly=True)
    try:
        producer = spool.producer()
    finally:
        spool.close()
    assert list(receiver.store.streams(producer).values()) == [[[0, log.stat().st_size]]]
