"""Body formats between agent and collector versions (docs/protocol.md, "Body formats"): the
agent queues format 2 and sends it only to a collector that listed it; an older collector gets
format 1, and a collector that stops taking format 2 costs a 415 and nothing else."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from remote_uploader.agent.batch import Batch, seal
from remote_uploader.agent.sink import HttpSink
from remote_uploader.config import load
from tests.helpers.receiver import Receiver


def receiver_of(format_2: bool) -> Iterator[Receiver]:
    rx = Receiver(token=secrets.token_urlsafe(24), format_2=format_2)
    rx.start()
    try:
        yield rx
    finally:
        rx.close()


@pytest.fixture
def new_collector() -> Iterator[Receiver]:
    yield from receiver_of(True)


@pytest.fixture
def old_collector() -> Iterator[Receiver]:
    yield from receiver_of(False)


def sink_for(rx: Receiver) -> HttpSink:
    return HttpSink(load(None, env={}, overrides={"server.url": rx.url, "server.token": rx.token}).server)


def sealed(n: int, seq: int) -> tuple[str, bytes]:
    batch = Batch(created=0.0)
    batch.add("/var/log/a.log", {f"192.0.2.{i}": i for i in range(1, n + 1)}, 1_700_000_000.0)
    batch.add("/var/log/b.log", {"2001:db8::1": 5}, 1_700_000_001.0)
    body = seal(batch, "web-1", compress=True, producer="0123456789abcdef", seq=seq)
    assert body is not None
    return body.batch_id, body.body


def expected(batches: int, n: int) -> dict[str, int]:
    counts = {f"192.0.2.{i}": i * batches for i in range(1, n + 1)}
    counts["2001:db8::1"] = 5 * batches
    return counts


def test_an_older_collector_gets_every_batch_in_format_1_and_never_a_415(old_collector: Receiver) -> None:
    sink = sink_for(old_collector)
    try:
        for seq in (1, 2, 3):
            batch_id, body = sealed(4, seq)
            assert sink.send(batch_id, body, "gzip").accepted == 5
    finally:
        sink.close()
    assert sink.format_2 is False
    assert old_collector.counts() == expected(3, 4)
    assert [r.status for r in old_collector.requests() if r.path == "/v1/batches"] == [200, 200, 200]


def test_a_collector_that_lists_format_2_gets_it_after_its_first_answer(new_collector: Receiver) -> None:
    sink = sink_for(new_collector)
    try:
        batch_id, body = sealed(3, 1)
        sink.send(batch_id, body, "gzip")  # sent as format 1: nothing was listed yet
        assert sink.format_2 is True
        for seq in (2, 3):
            batch_id, body = sealed(3, seq)
            assert sink.send(batch_id, body, "gzip").duplicate is False
    finally:
        sink.close()
    assert new_collector.counts() == expected(3, 3)


def test_a_collector_downgraded_between_two_batches_costs_one_415_and_no_batch(new_collector: Receiver) -> None:
    sink = sink_for(new_collector)
    try:
        batch_id, body = sealed(2, 1)
        sink.send(batch_id, body, "gzip")
        assert sink.format_2 is True
        new_collector.format_2 = False  # the collector is replaced by an older version
        batch_id, body = sealed(2, 2)
        assert sink.send(batch_id, body, "gzip").accepted == 3
        assert sink.format_2 is False
    finally:
        sink.close()
    assert new_collector.counts() == expected(2, 2)
    assert [r.status for r in new_collector.requests() if r.path == "/v1/batches"] == [200, 415, 200]
