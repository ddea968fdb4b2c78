"""A collector killed (SIGKILL) while two agents' batches are in flight loses no batch it
acknowledged and, once the agents send again what it did not acknowledge, counts every batch once.

With the SQLite group commit (storage/group.py) a transaction may hold several agents' batches:
none of them is answered before that transaction has committed, so the kill can only catch
batches that nobody was told are stored.
"""

from __future__ import annotations

import collections
import random
import threading
from pathlib import Path
from typing import Any

import httpx

from tests.helpers.batches import random_ip, random_records, wire_batch
from tests.helpers.collector_fixtures import CollectorProcess

PRODUCERS = ("0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210")
BATCHES = 30  # per agent
KILL_AFTER = 12  # acknowledgements, of both agents together


def make_batches(rng: random.Random) -> dict[tuple[str, int], dict[str, Any]]:
    pool = [random_ip(rng) for _ in range(2000)]
    made = {}
    for producer in PRODUCERS:
        for seq in range(1, BATCHES + 1):
            document = wire_batch("test-agent", f"{producer[:4]}-{seq}", random_records(rng, 400, pool))
            document.update(producer=producer, seq=seq)
            made[producer, seq] = document
    return made


def test_a_collector_killed_with_two_agents_in_flight_loses_no_acknowledged_batch(tmp_path: Path) -> None:
    batches = make_batches(random.Random(15))
    expected: collections.Counter[str] = collections.Counter()
    for document in batches.values():
        for record in document["records"]:
            expected[record["ip"]] += record["count"]
    collector = CollectorProcess(tmp_path, f"sqlite://{tmp_path}/killed.db", ["--no-access-log"])
    collector.start()
    acknowledged: set[tuple[str, int]] = set()
    changed = threading.Condition()

    def agent(producer: str) -> None:
        """Send this producer's batches in order until the collector is gone (as an agent would,
        minus the retries that the test makes after the restart)."""
        with httpx.Client() as client:
            for seq in range(1, BATCHES + 1):
                try:
                    response = collector.post_batch(batches[producer, seq], client=client)
                except httpx.TransportError:
                    return
                if response.status_code != 200:
                    return
                with changed:
                    acknowledged.add((producer, seq))
                    changed.notify_all()

    try:
        agents = [threading.Thread(target=agent, args=(producer,)) for producer in PRODUCERS]
        for thread in agents:
            thread.start()
        with changed:
            assert changed.wait_for(lambda: len(acknowledged) >= KILL_AFTER, timeout=600), collector.log()
        collector.kill()  # the other agent's batch, and maybe both, are in flight now
        for thread in agents:
            thread.join()
        assert len(acknowledged) < 2 * BATCHES  # the kill came before the end

        collector.start()  # the same database and port
        with httpx.Client() as client:
            for key, document in batches.items():
                response = collector.post_batch(document, client=client)
                assert response.status_code == 200, response.text
                if key in acknowledged:  # stored before the kill: a duplicate now
                    assert response.json()["duplicate"] is True, key
        assert collector.counts() == dict(expected)
    finally:
        collector.stop()
