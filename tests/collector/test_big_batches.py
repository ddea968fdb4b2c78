"""Batches big enough for the parsing workers, through a real collector on both backends: exact
counts, replays counted once, every error named as for a small batch, nothing of a bad batch
stored; and the same with the workers switched off."""

from __future__ import annotations

import json
import random
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from remote_uploader.collector.parsing import WORKER_MIN_BYTES
from tests.helpers.batches import random_ip, random_records, wire_batch
from tests.helpers.collector_fixtures import CollectorProcess, CollectorThread
from tests.helpers.senders import expected_counts

RECORDS = 12_000  # about 1.8 MB of JSON: over WORKER_MIN_BYTES
POOL = sorted({random_ip(random.Random(f"big-{n}")) for n in range(20_000)})


def big_batch(agent: str, number: int) -> dict[str, Any]:
    return wire_batch(agent, f"{agent}-big-{number}", random_records(random.Random(number), RECORDS, POOL))


def spawned_workers(collector: CollectorProcess) -> int:
    """Parsing workers the collector process spawned (so these tests run it as a process of its own)."""
    assert collector.proc is not None
    count = 0
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == (
                collector.proc.pid
            ):
                count += b"spawn_main" in (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
    return count


def test_big_batches_count_exactly_and_replays_count_once(collector_process_any: CollectorProcess) -> None:
    collector_any = collector_process_any
    batches = [big_batch("test-agent", n) for n in range(4)]
    assert len(json.dumps(batches[0])) > WORKER_MIN_BYTES
    assert collector_any.post_batch(batches[0]).json()["duplicate"] is False
    results: list[bool] = []

    def send(share: list[dict[str, Any]]) -> None:
        with httpx.Client(timeout=120) as client:
            for batch in share:
                response = collector_any.post_batch(batch, client=client)
                assert response.status_code == 200, response.text
                results.append(response.json()["duplicate"])

    threads = [threading.Thread(target=send, args=(batches[n::2] + batches[:2],)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 3 + [True] * 5  # batch 0 was sent first, above
    assert collector_any.counts() == dict(sum((expected_counts([b]) for b in batches), Counter()))
    (agent,) = collector_any.get("/v1/agents").json()["items"]
    assert (agent["batches"], agent["duplicates"], agent["records"]) == (4, 5, 4 * RECORDS)
    assert spawned_workers(collector_any) >= 1


def test_every_bad_field_of_a_big_batch_is_named_and_nothing_is_stored(collector: CollectorThread) -> None:
    batch = big_batch("test-agent", 1)
    batch["records"][9000]["ip"] = "2001:DB8::1"
    batch["records"][11_999]["last_seen"] = "yesterday"
    response = collector.post_batch(batch)
    assert response.status_code == 400
    assert response.json()["detail"] == [
        {"field": "records[9000].ip", "error": "not a canonical IP address"},
        {"field": "records[11999].last_seen", "error": "not an RFC 3339 time with a UTC offset"},
    ]
    assert collector.counts() == {}
    other = collector.post_batch(big_batch("someone-else", 2))
    assert other.status_code == 403
    assert other.json()["detail"][0]["field"] == "agent"
    assert collector.counts() == {}


def test_without_workers_big_batches_are_parsed_in_the_server_process(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    collector = CollectorProcess(tmp_path, f"sqlite://{tmp_path}/collector.db", ["--parse-workers", "0"])
    request.addfinalizer(collector.stop)
    collector.start()
    batch = big_batch("test-agent", 3)
    assert collector.post_batch(batch).status_code == 200
    assert collector.counts() == dict(expected_counts([batch]))
    assert spawned_workers(collector) == 0
