"""The Sink contract: what the uploader relies on from any sink, checked on every implementation.

Each test runs twice: against the HTTP sink (agent/sink.py) talking to the fault-injecting receiver
in a thread on 127.0.0.1, and against the in-memory sink (tests/helpers/memory_sink.py). Both are
scripted with the same faults; the assertions are the same. The first group is `send` itself (an
answer becomes Delivered or the error that says what to do with the batch); the second runs the real
uploader over a real queue database and checks what the collector ends up holding.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from remote_uploader.agent.batch import encode_sealed
from remote_uploader.agent.sink import Backoff, Delivered, HttpSink, Sink, Uploader
from remote_uploader.agent.spool import SealedBatch, Spool, prepare_state_dir
from remote_uploader.agent.stats import Stats
from remote_uploader.config import load
from remote_uploader.errors import (
    AuthRefusedError,
    ConfigRefusedError,
    DeliveryError,
    PayloadTooLargeError,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from remote_uploader.protocol import Record
from tests.helpers.memory_sink import MemorySink
from tests.helpers.receiver import Receiver

AGENT = "contract-agent"
WHEN = "2026-12-02T10:00:00.000000Z"


@dataclass
class Subject:
    """One sink under test, with the faults to script it and the counts its collector holds."""

    name: str
    sink: Sink
    faults: Any  # fail_next, reset_next, max_body, max_records: the receiver's words, on both
    counts: Callable[[], dict[str, int]]
    with_token: Callable[[str], Sink]  # the same collector, reached with another token


def http_sink(url: str, token: str, state: Path) -> HttpSink:
    env = {"REMOTE_UPLOADER_TOKEN": token, "REMOTE_UPLOADER_STATE_DIR": str(state)}
    return HttpSink(load(None, env=env, overrides={"server.url": url, "server.timeout": 10}).server)


@pytest.fixture(params=["http", "memory"])
def subject(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Subject]:
    token = secrets.token_urlsafe(16)
    if request.param == "memory":
        memory = MemorySink(token)
        yield Subject("memory", memory, memory, memory.counts,
                      lambda other: MemorySink(token, sends=other, store=memory.store))
        return
    receiver = Receiver(token=token)
    receiver.start()
    opened: list[HttpSink] = []

    def made(with_token: str) -> HttpSink:
        opened.append(http_sink(receiver.url, with_token, tmp_path / "state"))
        return opened[-1]

    try:
        yield Subject("http", made(token), receiver, receiver.counts, made)
    finally:
        for sink in opened:
            sink.close()
        receiver.close()


def records(n: int, first: int = 1) -> list[Record]:
    return [Record(f"192.0.2.{i % 250 + 1}" if i < 250 else f"198.51.100.{i % 250 + 1}", i + 1, WHEN, WHEN,
                   "access.log") for i in range(first, first + n)]


def counts_of(batch: list[Record]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for record in batch:
        total[record.ip] += record.count
    return dict(total)


def sealed(batch_id: str, batch: list[Record], compress: bool = False) -> SealedBatch:
    return encode_sealed(AGENT, batch_id, batch, time.time(), compress)


def send(sink: Sink, batch: SealedBatch) -> Delivered:
    return sink.send(batch.batch_id, batch.body, batch.encoding)


# --- send: one answer, one meaning ---------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True], ids=["identity", "gzip"])
def test_a_batch_is_delivered_and_its_replay_is_a_duplicate_counted_once(subject: Subject, compress: bool) -> None:
    batch = records(5)
    first = send(subject.sink, sealed("b-1", batch, compress))
    again = send(subject.sink, sealed("b-1", batch, compress))
    assert first == Delivered(5, duplicate=False)
    assert again == Delivered(0, duplicate=True)
    assert subject.counts() == counts_of(batch)


def test_a_body_over_the_size_limit_is_payload_too_large_and_stores_nothing(subject: Subject) -> None:
    batch = sealed("b-1", records(20))
    subject.faults.max_body(len(batch.body) - 1)
    with pytest.raises(PayloadTooLargeError) as refused:
        send(subject.sink, batch)
    assert refused.value.status == 413
    assert subject.counts() == {}


def test_more_records_than_the_limit_is_payload_too_large_and_stores_nothing(subject: Subject) -> None:
    subject.faults.max_records(3)
    with pytest.raises(PayloadTooLargeError):
        send(subject.sink, sealed("b-1", records(4)))
    assert send(subject.sink, sealed("b-2", records(3))) == Delivered(3, duplicate=False)
    assert subject.counts() == counts_of(records(3))


@pytest.mark.parametrize(("status", "kind"), [
    (408, RetryableDeliveryError),
    (429, RetryableDeliveryError),
    (500, RetryableDeliveryError),
    (502, RetryableDeliveryError),
    (503, RetryableDeliveryError),
    (401, AuthRefusedError),
    (403, AuthRefusedError),
    (404, ConfigRefusedError),
    (405, ConfigRefusedError),
    (421, ConfigRefusedError),
    (413, PayloadTooLargeError),
    (400, PermanentDeliveryError),
    (409, PermanentDeliveryError),
    (422, PermanentDeliveryError),
])
def test_each_refusal_status_means_the_same_for_every_sink(subject: Subject, status: int,
                                                           kind: type[DeliveryError]) -> None:
    """What the uploader does with the batch follows from the error's class: retried and kept
    (Retryable, which Auth- and ConfigRefused are), split (PayloadTooLarge), dead-lettered (Permanent)."""
    subject.faults.fail_next(1, status)
    with pytest.raises(DeliveryError) as refused:
        send(subject.sink, sealed("b-1", records(2)))
    assert isinstance(refused.value, kind)
    assert refused.value.status == status
    if kind in (AuthRefusedError, ConfigRefusedError):
        assert isinstance(refused.value, RetryableDeliveryError)  # never dead-lettered for configuration
    assert subject.counts() == {}


def test_an_unavailable_collector_is_retryable_with_its_retry_after_and_the_retry_delivers(subject: Subject) -> None:
    subject.faults.fail_next(1, 503, retry_after=2)
    with pytest.raises(RetryableDeliveryError) as refused:
        send(subject.sink, sealed("b-1", records(3)))
    assert refused.value.retry_after == 2
    assert subject.counts() == {}
    assert send(subject.sink, sealed("b-1", records(3))) == Delivered(3, duplicate=False)


def test_a_connection_reset_before_the_store_is_retryable_and_stored_nothing(subject: Subject) -> None:
    subject.faults.reset_next(1, after_store=False)
    with pytest.raises(RetryableDeliveryError):
        send(subject.sink, sealed("b-1", records(3)))
    assert subject.counts() == {}
    assert send(subject.sink, sealed("b-1", records(3))) == Delivered(3, duplicate=False)


def test_an_answer_lost_after_the_store_is_retryable_and_the_retry_is_a_duplicate(subject: Subject) -> None:
    subject.faults.reset_next(1, after_store=True)
    with pytest.raises(RetryableDeliveryError):
        send(subject.sink, sealed("b-1", records(3)))
    assert subject.counts() == counts_of(records(3))  # stored, though the agent cannot know it
    assert send(subject.sink, sealed("b-1", records(3))) == Delivered(0, duplicate=True)
    assert subject.counts() == counts_of(records(3))


def test_a_wrong_token_is_refused_as_configuration_and_stores_nothing(subject: Subject) -> None:
    with pytest.raises(AuthRefusedError) as refused:
        send(subject.with_token("not-the-token"), sealed("b-1", records(3)))
    assert refused.value.status == 401
    assert isinstance(refused.value, RetryableDeliveryError)
    assert subject.counts() == {}


def test_a_body_that_breaks_the_protocol_is_refused_for_good(subject: Subject) -> None:
    bad = encode_sealed(AGENT, "b-1", [Record("192.0.2.01", 1, WHEN, WHEN, "access.log")], time.time(), False)
    with pytest.raises(PermanentDeliveryError) as refused:
        send(subject.sink, bad)
    assert refused.value.status == 400
    assert subject.counts() == {}


def test_health_answers_a_mapping(subject: Subject) -> None:
    assert isinstance(subject.sink.health(), dict)


# --- the uploader over a real queue, through each sink --------------------------------------------


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    state = tmp_path / "queue"
    prepare_state_dir(state)
    opened = Spool(state)
    yield opened
    opened.close()


def drain(spool: Spool, sink: Sink) -> Uploader:
    """Run the real uploader until the queue is empty (delivered or dead-lettered), then stop it."""
    wake, stop = threading.Event(), threading.Event()
    uploader = Uploader(spool, sink, Backoff(0.01, 0.05, 0.05), Stats(), AGENT, wake, stop, concurrency=2)
    uploader.start()
    try:
        assert uploader.idle.wait(60), "the uploader never emptied the queue"
    finally:
        stop.set()
        wake.set()
        uploader.join(30)
    assert uploader.fatal is None
    return uploader


def test_the_uploader_splits_a_batch_refused_as_too_large_until_every_part_fits(subject: Subject,
                                                                                spool: Spool) -> None:
    batch = records(40)
    spool.commit(sealed("b-1", batch, compress=True), {})
    subject.faults.max_records(7)
    uploader = drain(spool, subject.sink)
    assert subject.counts() == counts_of(batch)
    assert spool.next_batch() is None and spool.dead_letters() == []
    assert uploader.stats.batches_split >= 3


def test_the_uploader_retries_through_failures_and_counts_each_address_once(subject: Subject, spool: Spool) -> None:
    batches = [records(10, first=10 * n) for n in range(4)]
    for n, batch in enumerate(batches):
        spool.commit(sealed(f"b-{n}", batch), {})
    subject.faults.fail_next(2, 503, retry_after=0.01)
    subject.faults.reset_next(2, after_store=True)
    subject.faults.fail_next(1, 429)
    drain(spool, subject.sink)
    expected: Counter[str] = Counter()
    for batch in batches:
        expected.update(counts_of(batch))
    assert subject.counts() == dict(expected)
    assert spool.next_batch() is None and spool.dead_letters() == []


def test_the_uploader_dead_letters_what_the_collector_refuses_for_good_and_delivers_the_rest(
        subject: Subject, spool: Spool) -> None:
    spool.commit(encode_sealed(AGENT, "bad", [Record("192.0.2.01", 1, WHEN, WHEN, "access.log")], time.time(),
                               False), {})
    spool.commit(sealed("good", records(3)), {})
    drain(spool, subject.sink)
    assert subject.counts() == counts_of(records(3))
    assert [letter[0] for letter in spool.dead_letters()] == ["bad"]
