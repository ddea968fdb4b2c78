"""The fault relay does what the generative checker relies on: it forwards, and each fault fails the way
its name says, storing at the peer only when it says so.

The peer here is the fault-free receiver in a thread (it counts each batch once), reached only
through the relay; the client is the stdlib, so neither shares code with the relay.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator

import pytest

from tests.helpers.faultproxy import FaultProxy
from tests.helpers.receiver import Receiver
from tests.helpers.test_receiver import make_batch


@pytest.fixture
def peer() -> Iterator[Receiver]:
    rx = Receiver(token="t0ken")
    rx.start()
    yield rx
    rx.close()


@pytest.fixture
def proxy(peer: Receiver) -> Iterator[FaultProxy]:
    relay = FaultProxy(peer.port)
    yield relay
    relay.close()


def send(proxy: FaultProxy, body: bytes) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        conn.request("POST", "/v1/batches", body=body,
                     headers={"Authorization": "Bearer t0ken", "Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read()
    finally:
        conn.close()


def test_a_batch_without_a_fault_is_forwarded_and_answered_by_the_peer(proxy: FaultProxy, peer: Receiver) -> None:
    status, _, body = send(proxy, make_batch("b1", {"10.0.0.1": 2}))
    assert status == 200
    assert peer.counts() == {"10.0.0.1": 2}
    assert proxy.forwarded == 1 and not proxy.applied
    assert isinstance(json.loads(body), dict)  # the peer's own answer, relayed


def test_scripted_faults_come_in_order_and_store_only_after_a_reset_after_store(
        proxy: FaultProxy, peer: Receiver) -> None:
    proxy.add("status_503", 1)
    proxy.add("reset_before", 1)
    proxy.add("reset_after", 1)
    proxy.add("html_200", 1)
    batch = make_batch("b2", {"10.0.0.2": 1})

    assert send(proxy, batch)[0] == 503
    with pytest.raises(ConnectionError):
        send(proxy, batch)
    assert peer.counts() == {}
    with pytest.raises(ConnectionError):
        send(proxy, batch)
    assert peer.counts() == {"10.0.0.2": 1}  # stored, though the client saw only a reset
    status, content_type, body = send(proxy, make_batch("b3", {"10.0.0.3": 1}))
    assert (status, content_type) == (200, "text/html") and body.startswith(b"<html>")
    assert peer.counts() == {"10.0.0.2": 1}  # a 200 that stored nothing
    assert proxy.applied == {"status_503": 1, "reset_before": 1, "reset_after": 1, "html_200": 1}


def test_a_body_over_the_limit_gets_413_until_the_limit_changes(proxy: FaultProxy, peer: Receiver) -> None:
    batch = make_batch("b4", {f"10.0.1.{i}": 1 for i in range(1, 30)})
    proxy.limit(len(batch) - 1)
    assert send(proxy, batch)[0] == 413
    proxy.limit(len(batch))
    assert send(proxy, batch)[0] == 200
    assert sum(peer.counts().values()) == 29


def test_a_peer_that_is_down_looks_like_a_reset(peer: Receiver) -> None:
    relay = FaultProxy(peer.port)
    peer.stop()
    try:
        with pytest.raises(ConnectionError):
            send(relay, make_batch("b5", {"10.0.0.5": 1}))
    finally:
        relay.close()


def test_a_held_answer_comes_after_release_and_only_hold_after_stores(proxy: FaultProxy, peer: Receiver) -> None:
    proxy.add("hold_after", 1)
    proxy.add("hold_before", 1)
    answers: list[int] = []
    client = threading.Thread(target=lambda: answers.append(send(proxy, make_batch("b5", {"10.0.0.5": 1}))[0]))
    client.start()
    assert proxy.held.wait(10)
    assert peer.counts() == {"10.0.0.5": 1} and answers == []  # stored, the answer not sent yet
    proxy.release()
    client.join(10)
    assert answers == [200]

    proxy.held.clear()
    failed: list[BaseException] = []

    def refused() -> None:
        try:
            send(proxy, make_batch("b6", {"10.0.0.6": 1}))
        except ConnectionError as exc:
            failed.append(exc)

    client = threading.Thread(target=refused)
    client.start()
    assert proxy.held.wait(10)  # released already: held only for the moment of the call
    client.join(10)
    assert len(failed) == 1
    assert peer.counts() == {"10.0.0.5": 1}  # nothing of the held-before batch stored
    assert proxy.applied == {"hold_after": 1, "hold_before": 1}
