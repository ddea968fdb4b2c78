"""Several agent processes at once, with replays: exact counts on both backends, and two
collector processes on one PostgreSQL racing on the same batch ids."""

from __future__ import annotations

import multiprocessing
from collections import Counter
from collections.abc import Callable

import pytest

from tests.helpers.collector_fixtures import CollectorThread
from tests.helpers.senders import expected_counts, make_batches, run_agent, sending_order

AGENTS = 4
BATCHES = 16
RECORDS = 150


def _run_agents(urls: list[str], tokens: dict[str, str]) -> list[int]:
    context = multiprocessing.get_context("spawn")
    with context.Pool(len(tokens)) as pool:
        jobs = [pool.apply_async(run_agent, (urls, token, agent, BATCHES, RECORDS)) for agent, token in tokens.items()]
        return [job.get(timeout=240) for job in jobs]


def _check(reader: CollectorThread, tokens: dict[str, str], new_per_agent: list[int], urls: int) -> None:
    expected: Counter[str] = Counter()
    for agent in tokens:
        expected += expected_counts(make_batches(agent, BATCHES, RECORDS))
    assert reader.counts() == dict(expected)
    assert new_per_agent == [BATCHES] * len(tokens)  # every batch counted by exactly one request
    stats = {item["agent"]: item for item in reader.get("/v1/agents").json()["items"]}
    sends = len(sending_order("x", BATCHES)) * urls
    for agent in tokens:
        assert stats[agent]["batches"] == BATCHES
        assert stats[agent]["duplicates"] == sends - BATCHES
        assert stats[agent]["records"] == BATCHES * RECORDS


def test_agents_in_parallel_with_replays_count_exactly_once(collector_any: CollectorThread) -> None:
    tokens = {f"agent-{n}": collector_any.add_token(f"agent-{n}") for n in range(AGENTS)}
    new = _run_agents([collector_any.url], tokens)
    _check(collector_any, tokens, new, urls=1)


@pytest.mark.postgres
def test_two_collectors_on_one_postgres_race_on_the_same_batch_ids(
    make_collector: Callable[..., CollectorThread],
) -> None:
    first = make_collector("postgres")
    second = make_collector("postgres", db_url=first.db_url)
    tokens = {f"agent-{n}": first.add_token(f"agent-{n}") for n in range(AGENTS)}
    new = _run_agents([first.url, second.url], tokens)
    _check(first, tokens, new, urls=2)
    assert second.counts() == first.counts()
