"""Agent-like sender processes for the concurrency tests (importable by spawned children)."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from typing import Any

import httpx

from tests.helpers.batches import random_ip, random_records, wire_batch

POOL_SIZE = 400  # addresses shared by every agent and batch, so that they contend for rows


def address_pool() -> list[str]:
    return sorted({random_ip(random.Random(f"pool-{n}")) for n in range(POOL_SIZE)})


def make_batches(agent: str, count: int, records: int) -> list[dict[str, Any]]:
    pool = address_pool()
    return [
        wire_batch(agent, f"{agent}-batch-{n}", random_records(random.Random(f"{agent}/{n}"), records, pool))
        for n in range(count)
    ]


def expected_counts(batches: list[dict[str, Any]]) -> Counter[str]:
    totals: Counter[str] = Counter()
    for batch in batches:
        for item in batch["records"]:
            totals[item["ip"]] += item["count"]
    return totals


def sending_order(agent: str, count: int) -> list[int]:
    """Every batch once, every other batch once more, all shuffled: replays race with firsts."""
    order = list(range(count)) + list(range(0, count, 2))
    random.Random(agent).shuffle(order)
    return order


def _post(client: httpx.Client, url: str, token: str, batch: dict[str, Any]) -> bool:
    """Deliver like the agent: retry on 429/503 until stored; True if it was new."""
    while True:
        response = client.post(url + "/v1/batches", json=batch, headers={"Authorization": f"Bearer {token}"})
        if response.status_code in (429, 503):
            time.sleep(0.05)
            continue
        response.raise_for_status()
        return not response.json()["duplicate"]


def run_agent(urls: list[str], token: str, agent: str, count: int, records: int) -> int:
    """Send this agent's batches in `sending_order`, each to every URL at once; return how many
    requests were counted as new."""
    batches = make_batches(agent, count, records)
    new = 0
    lock = threading.Lock()
    with httpx.Client(timeout=120) as client:
        for index in sending_order(agent, count):
            results: list[bool] = []

            def send(url: str, index: int = index, results: list[bool] = results) -> None:
                outcome = _post(client, url, token, batches[index])
                with lock:
                    results.append(outcome)

            threads = [threading.Thread(target=send, args=(url,)) for url in urls]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert len(results) == len(urls)
            new += sum(results)
    return new
