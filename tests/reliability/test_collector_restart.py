"""The real collector SIGKILLed and restarted during ingest, on SQLite and on PostgreSQL, while `forever`
keeps sending: every batch either committed with its batch id or not at all, so the agent's retries
end in exact counts."""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers.agent import write_access_log, write_config
from tests.helpers.collector_fixtures import CollectorProcess
from tests.reliability.harness import AgentProcess, Row, record, scales, tally, wait_until


@pytest.mark.parametrize("kills", scales(6, 60))
def test_collector_killed_and_restarted_during_ingest(tmp_path: Path, collector_process_any: CollectorProcess,
                                                      kills: int) -> None:
    collector = collector_process_any
    backend = "PostgreSQL" if collector.db_url.startswith("postgres") else "SQLite"
    log = tmp_path / "access.log"
    expected = write_access_log(log, 6000, seed=4, distinct=4000)
    config = write_config(tmp_path / "agent.toml", url=collector.url, token=collector.token,
                          state_dir=tmp_path / "state", sources=[str(log)],
                          batching={"min_upload_batch": 50, "force_upload_threshold": 300, "max_memory_ips": 600},
                          read={"poll_interval": 0.05, "block_size": "32KiB"},
                          server={"backoff_base": 0.05, "backoff_cap": 0.5})
    agent = AgentProcess(tmp_path, "forever", "-c", str(config)).start()
    rng = random.Random(13)
    for n in range(kills):
        time.sleep(rng.uniform(0.1, 0.8))
        collector.kill()
        expected += write_access_log(log, rng.randint(200, 1500), seed=50 + n, distinct=4000, append=True)
        time.sleep(rng.uniform(0.0, 0.5))
        collector.start()

    back = time.monotonic()
    total = sum(expected.values())
    arrived = wait_until(lambda: sum(collector.counts().values()) >= total, timeout=120, interval=0.5)
    recovery = time.monotonic() - back
    assert agent.stop() == 0, agent.stderr()[-3000:]
    got = collector.counts()
    lost, doubled = tally(expected, got)
    record(Row(f"collector/kill-{backend.lower()}", f"collector SIGKILLed during ingest ({backend})",
               f"the real collector on {backend} killed at a random moment (0.1-0.8 s) and restarted on the same "
               "database and port while `forever` sends and the log grows; recovery = last restart to exact counts",
               kills, lost, doubled, recovery if arrived else None, long=kills > 20))
    assert arrived, f"{sum(got.values())} of {total} arrived"
    assert Counter(got) == expected
