"""The fault-injecting receiver does what the agent's exactly-once tests rely on.

Each test is a statement about the receiver, checked with a plain stdlib HTTP client: it counts each
batch once, and each injected fault fails the way its name says (and stores, or not, as it says).
"""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from tests.helpers.receiver import Receiver
from tests.helpers.receiver_fixtures import ReceiverProcess

T0 = "2024-05-01T10:00:00Z"
T1 = "2024-05-01T10:00:05.250000+00:00"
WAIT = 10.0  # generous: only there so a broken receiver fails the test instead of hanging it

Target = Receiver | ReceiverProcess


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]


def make_batch(batch_id: str, counts: Mapping[str, int], source: str = "/var/log/nginx/access.log") -> bytes:
    """A protocol v1 body with one record per address."""
    records = [{"ip": ip, "count": n, "first_seen": T0, "last_seen": T1, "source": source} for ip, n in counts.items()]
    return json.dumps({"agent": "web-1", "batch_id": batch_id, "sent_at": T1, "records": records}).encode()


def post(
    target: Target,
    body: bytes,
    *,
    token: str | None = None,
    headers: Mapping[str, str] | None = None,
    conn: http.client.HTTPConnection | None = None,
    timeout: float = WAIT,
) -> Answer:
    """POST /v1/batches with the receiver's token (or `token`), on a new connection unless given one."""
    conn = conn or http.client.HTTPConnection("127.0.0.1", target.port, timeout=timeout)
    sent = {
        "Authorization": f"Bearer {target.token if token is None else token}",
        "Content-Type": "application/json",
    }
    sent.update(headers or {})
    conn.request("POST", "/v1/batches", body=body, headers=sent)
    response = conn.getresponse()
    return Answer(response.status, json.loads(response.read()), dict(response.getheaders()))


def send_until_acknowledged(target: Target, body: bytes, attempts: int = 200) -> int:
    """What the agent does: resend the same batch (same id) after any failure until a 2xx.

    Returns how many attempts failed."""
    for failures in range(attempts):
        try:
            if post(target, body).status == 200:
                return failures
        except (OSError, http.client.HTTPException):
            pass
    raise AssertionError(f"no 200 after {attempts} attempts")


@pytest.fixture
def many_addresses() -> dict[str, int]:
    """Enough records for gzip to shrink the body well below its decoded size."""
    return {f"198.51.100.{i}": i for i in range(1, 201)}


# --- counting --------------------------------------------------------------------------------------


def test_health_answers_ok_without_a_token(receiver: Receiver) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=WAIT)
    conn.request("GET", "/v1/health")
    response = conn.getresponse()

    assert (response.status, json.loads(response.read())) == (200, {"status": "ok"})


def test_a_new_batch_is_counted_per_address_and_acknowledged(receiver: Receiver) -> None:
    answer = post(receiver, make_batch("b-1", {"203.0.113.7": 3, "2001:db8::1": 2}))

    assert answer.status == 200
    assert answer.body == {"batch_id": "b-1", "accepted": 2, "duplicate": False}
    assert receiver.counts() == {"203.0.113.7": 3, "2001:db8::1": 2}
    assert receiver.total() == 5
    assert receiver.batch_ids() == {"b-1"}


def test_a_repeated_batch_id_is_acknowledged_as_duplicate_and_counts_nothing(receiver: Receiver) -> None:
    post(receiver, make_batch("b-1", {"203.0.113.7": 3}))

    again = post(receiver, make_batch("b-1", {"203.0.113.7": 3}))

    assert again.status == 200
    assert again.body == {"batch_id": "b-1", "accepted": 0, "duplicate": True}
    assert receiver.counts() == {"203.0.113.7": 3}


def test_the_same_address_in_two_batches_adds_up(receiver: Receiver) -> None:
    post(receiver, make_batch("b-1", {"203.0.113.7": 3}))
    post(receiver, make_batch("b-2", {"203.0.113.7": 4}))

    assert receiver.counts() == {"203.0.113.7": 7}


def test_a_gzip_body_counts_the_same_as_a_plain_one(receiver: Receiver, many_addresses: dict[str, int]) -> None:
    body = gzip.compress(make_batch("b-gz", many_addresses))

    answer = post(receiver, body, headers={"Content-Encoding": "gzip"})

    assert answer.status == 200
    assert receiver.counts() == many_addresses
    assert receiver.requests()[-1].body_bytes == len(body)


def test_two_requests_on_one_keep_alive_connection_are_both_answered(receiver: Receiver) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=WAIT)

    first = post(receiver, make_batch("b-1", {"192.0.2.1": 1}), conn=conn)
    second = post(receiver, make_batch("b-2", {"192.0.2.1": 1}), conn=conn)

    assert (first.status, second.status) == (200, 200)
    assert receiver.total() == 2


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token", "Basic {token}", "{token}", "Bearer {token}x", "Bearer  {token}"],
    ids=["missing", "wrong", "basic-scheme", "no-scheme", "token-plus-suffix", "two-spaces"],
)
def test_a_missing_or_bad_token_is_refused_with_401_and_counts_nothing(
    receiver: Receiver, authorization: str | None
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=WAIT)
    headers = {} if authorization is None else {"Authorization": authorization.format(token=receiver.token)}
    conn.request("POST", "/v1/batches", body=make_batch("b-1", {"192.0.2.1": 1}), headers=headers)

    assert conn.getresponse().status == 401
    assert receiver.total() == 0
    assert receiver.batch_ids() == set()


def _record(**changes: Any) -> dict[str, Any]:
    return {"ip": "192.0.2.1", "count": 1, "first_seen": T0, "last_seen": T1, "source": "s", **changes}


def _body(**changes: Any) -> bytes:
    doc = {"agent": "web-1", "batch_id": "b-bad", "sent_at": T1, "records": [_record()], **changes}
    return json.dumps({k: v for k, v in doc.items() if v is not None}).encode()


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"[]", id="not-an-object"),
        pytest.param(b"\xff\xfe{}", id="not-utf8"),
        pytest.param(b"[" * 100_000, id="nested-too-deep"),
        pytest.param(_body(batch_id=None), id="no-batch-id"),
        pytest.param(_body(batch_id=7), id="batch-id-not-text"),
        pytest.param(_body(agent=""), id="empty-agent"),
        pytest.param(_body(sent_at="2024-05-01T10:00:00"), id="time-without-offset"),
        pytest.param(_body(records={"ip": "192.0.2.1"}), id="records-not-a-list"),
        pytest.param(_body(records=["192.0.2.1"]), id="record-not-an-object"),
        pytest.param(_body(records=[_record(ip="192.0.2.01")]), id="ipv4-leading-zero"),
        pytest.param(_body(records=[_record(ip="2001:DB8::1")]), id="ipv6-uppercase"),
        pytest.param(_body(records=[_record(ip="2001:db8:0:0:0:0:0:1")]), id="ipv6-uncompressed"),
        pytest.param(_body(records=[_record(ip="::ffff:c000:201")]), id="ipv4-mapped"),
        pytest.param(_body(records=[_record(ip="fe80::1%eth0")]), id="zone-id"),
        pytest.param(_body(records=[_record(ip="0.0.0.0")]), id="unspecified"),
        pytest.param(_body(records=[_record(ip="192.0.2.1:80")]), id="with-port"),
        pytest.param(_body(records=[_record(count=0)]), id="count-zero"),
        pytest.param(_body(records=[_record(count="3")]), id="count-as-text"),
        pytest.param(_body(records=[_record(count=True)]), id="count-boolean"),
        pytest.param(_body(records=[_record(source=None)]), id="no-source"),
        pytest.param(_body(records=[_record(last_seen="yesterday")]), id="bad-time"),
    ],
)
def test_a_malformed_body_is_refused_with_400_and_counts_nothing(receiver: Receiver, body: bytes) -> None:
    answer = post(receiver, body)

    assert answer.status == 400
    assert answer.body["error"]
    assert receiver.total() == 0


@pytest.mark.parametrize(
    "body", [b"plain, not gzip", gzip.compress(_body())[:-6], gzip.compress(_body()) + b"junk"],
    ids=["not-gzip", "truncated", "trailing-bytes"],
)  # fmt: skip
def test_a_broken_gzip_body_is_refused_with_400(receiver: Receiver, body: bytes) -> None:
    assert post(receiver, body, headers={"Content-Encoding": "gzip"}).status == 400
    assert receiver.total() == 0


def test_a_chunked_body_counts_like_any_other(receiver: Receiver) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=WAIT)
    body = make_batch("b-1", {"192.0.2.1": 2})
    headers = {"Authorization": f"Bearer {receiver.token}", "Transfer-Encoding": "chunked"}
    conn.request("POST", "/v1/batches", body=iter([body[:10], body[10:]]), headers=headers, encode_chunked=True)

    assert conn.getresponse().status == 200
    assert receiver.counts() == {"192.0.2.1": 2}


def test_a_post_with_no_length_is_refused_with_411(receiver: Receiver) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=WAIT)
    conn.putrequest("POST", "/v1/batches")
    conn.putheader("Authorization", f"Bearer {receiver.token}")
    conn.endheaders()

    assert conn.getresponse().status == 411
    assert receiver.total() == 0


def test_every_request_is_logged_in_order_with_what_it_did(receiver: Receiver) -> None:
    body = make_batch("b-1", {"192.0.2.1": 2, "192.0.2.2": 1})
    post(receiver, body)
    post(receiver, body)
    post(receiver, make_batch("b-2", {"192.0.2.1": 1}), token="wrong")

    log = receiver.requests()

    assert [(r.batch_id, r.status, r.records, r.duplicate, r.stored) for r in log] == [
        ("b-1", 200, 2, False, True),
        ("b-1", 200, 2, True, False),
        ("b-2", 401, 1, None, False),
    ]
    assert [r.body_bytes for r in log] == [len(body), len(body), len(make_batch("b-2", {"192.0.2.1": 1}))]
    assert log[0].time <= log[1].time <= log[2].time


def test_wait_for_total_wakes_when_the_total_is_reached_and_times_out_otherwise(receiver: Receiver) -> None:
    sender = threading.Thread(target=post, args=(receiver, make_batch("b-1", {"192.0.2.1": 5})))
    sender.start()

    assert receiver.wait_for_total(5, timeout=WAIT) is True
    sender.join(WAIT)
    assert receiver.wait_for_total(6, timeout=0.05) is False


def test_concurrent_clients_retrying_through_faults_are_counted_exactly(receiver: Receiver) -> None:
    receiver.fail_fraction(0.2, statuses=(500, 503, 429), seed=1)
    receiver.reset_fraction(0.2, after_store=True, seed=2)
    expected: Counter[str] = Counter()
    bodies = []
    for i in range(40):
        counts = {f"192.0.2.{i % 7 + 1}": i + 1, f"2001:db8::{i % 5 + 1:x}": 1}
        expected.update(counts)
        bodies.append(make_batch(f"b-{i}", counts))

    def send_all(part: list[bytes]) -> None:
        for body in part:
            send_until_acknowledged(receiver, body)

    threads = [threading.Thread(target=send_all, args=(bodies[k::4],)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 3)

    assert receiver.counts() == dict(expected)
    assert any(r.duplicate for r in receiver.requests()), "the resets after store should have caused resends"


# --- error statuses --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retry_after", "header"),
    [(500, None, None), (503, None, None), (503, 2, "2"), (429, 1, "1"), (429, 0.25, "0.25"),
     (408, None, None), (400, None, None), (401, None, None), (413, None, None)],
)  # fmt: skip
def test_fail_next_answers_the_status_n_times_then_stores_normally(
    receiver: Receiver, status: int, retry_after: float | None, header: str | None
) -> None:
    body = make_batch("b-1", {"192.0.2.1": 1})
    receiver.fail_next(2, status, retry_after=retry_after)

    failed = [post(receiver, body), post(receiver, body)]
    third = post(receiver, body)

    assert [(a.status, a.headers.get("Retry-After")) for a in failed] == [(status, header)] * 2
    assert third.body == {"batch_id": "b-1", "accepted": 1, "duplicate": False}
    assert receiver.counts() == {"192.0.2.1": 1}
    assert [r.fault for r in receiver.requests()] == [f"status_{status}"] * 2 + [None]


def test_scripted_faults_apply_in_the_order_they_were_set(receiver: Receiver) -> None:
    receiver.fail_next(1, 503)
    receiver.reset_next(1, after_store=False)
    receiver.fail_next(1, 429, retry_after=1)
    body = make_batch("b-1", {"192.0.2.1": 1})

    failures = send_until_acknowledged(receiver, body)

    assert failures == 3
    assert [r.fault for r in receiver.requests()] == ["status_503", "reset_before_store", "status_429", None]


def test_fail_fraction_is_reproducible_for_a_seed(receiver: Receiver) -> None:
    def statuses() -> list[int]:
        receiver.fail_fraction(0.5, statuses=(500, 503), seed=7)
        answers = [post(receiver, make_batch(f"b-{len(receiver.requests())}", {"192.0.2.1": 1})) for _ in range(30)]
        return [answer.status for answer in answers]

    first, second = statuses(), statuses()

    assert first == second
    assert {200, 500, 503} == set(first)
    assert receiver.total() == 2 * first.count(200)


def test_clear_faults_removes_scripted_random_and_size_faults(receiver: Receiver) -> None:
    receiver.fail_next(5, 500)
    receiver.fail_fraction(1.0)
    receiver.reset_fraction(1.0, after_store=False)
    receiver.max_body(1)
    receiver.max_records(0)

    receiver.clear_faults()

    assert post(receiver, make_batch("b-1", {"192.0.2.1": 1})).status == 200


def test_an_unknown_fault_op_is_rejected(receiver: Receiver) -> None:
    with pytest.raises(ValueError, match="unknown fault op"):
        receiver.apply_plan([{"op": "drop_database"}])


# --- 413 thresholds --------------------------------------------------------------------------------


def test_max_body_answers_413_above_the_raw_size_and_accepts_at_it(receiver: Receiver) -> None:
    body = make_batch("b-1", {"192.0.2.1": 1})
    receiver.max_body(len(body) - 1)
    refused = post(receiver, body)
    receiver.max_body(len(body))
    accepted = post(receiver, body)

    assert (refused.status, accepted.status) == (413, 200)
    assert receiver.total() == 1


def test_max_body_can_measure_the_decoded_size_of_a_gzip_body(
    receiver: Receiver, many_addresses: dict[str, int]
) -> None:
    plain = make_batch("b-1", many_addresses)
    body = gzip.compress(plain)
    gz = {"Content-Encoding": "gzip"}

    receiver.max_body(len(plain) - 1, decoded=True)
    decoded_too_big = post(receiver, body, headers=gz)
    receiver.max_body(len(plain) - 1, decoded=False)
    raw_small_enough = post(receiver, body, headers=gz)

    assert (decoded_too_big.status, raw_small_enough.status) == (413, 200)
    assert receiver.total() == sum(many_addresses.values())


def test_max_records_answers_413_above_k_records_and_accepts_k(receiver: Receiver) -> None:
    receiver.max_records(2)

    too_many = post(receiver, make_batch("b-3", {"192.0.2.1": 1, "192.0.2.2": 1, "192.0.2.3": 1}))
    enough = post(receiver, make_batch("b-2", {"192.0.2.1": 1, "192.0.2.2": 1}))

    assert (too_many.status, enough.status) == (413, 200)
    assert receiver.batch_ids() == {"b-2"}


# --- resets and delays -----------------------------------------------------------------------------


def test_reset_before_store_cuts_the_connection_and_stores_nothing(receiver: Receiver) -> None:
    receiver.reset_next(1, after_store=False)

    with pytest.raises(ConnectionResetError):
        post(receiver, make_batch("b-1", {"192.0.2.1": 1}))

    assert receiver.total() == 0
    assert receiver.requests()[-1].status is None


def test_reset_after_store_cuts_the_connection_but_the_batch_is_stored(receiver: Receiver) -> None:
    receiver.reset_next(1, after_store=True)
    body = make_batch("b-1", {"192.0.2.1": 3})

    with pytest.raises(ConnectionResetError):
        post(receiver, body)
    stored = receiver.counts()
    resend = post(receiver, body)

    assert stored == {"192.0.2.1": 3}
    assert resend.body["duplicate"] is True
    assert receiver.counts() == {"192.0.2.1": 3}


def test_reset_fraction_resets_some_requests_reproducibly(receiver: Receiver) -> None:
    receiver.reset_fraction(0.5, after_store=False, seed=3)

    failures = [send_until_acknowledged(receiver, make_batch(f"b-{i}", {"192.0.2.1": 1})) for i in range(20)]

    assert sum(failures) == sum(r.fault == "reset_before_store" for r in receiver.requests()) > 0
    assert receiver.total() == 20


def test_delay_before_store_holds_the_request_then_stores_it(receiver: Receiver) -> None:
    receiver.delay_next(1, seconds=2.0, after_store=False)

    with pytest.raises(TimeoutError):
        post(receiver, make_batch("b-1", {"192.0.2.1": 1}), timeout=0.2)
    stored_while_held = receiver.total()

    assert stored_while_held == 0
    assert receiver.wait_for_total(1, timeout=WAIT)


def test_delay_after_store_stores_at_once_and_answers_late(receiver: Receiver) -> None:
    receiver.delay_next(1, seconds=5.0, after_store=True)

    with pytest.raises(TimeoutError):
        post(receiver, make_batch("b-1", {"192.0.2.1": 1}), timeout=0.2)

    assert receiver.wait_for_total(1, timeout=WAIT)


# --- refusing and restarting -----------------------------------------------------------------------


def test_refuse_for_refuses_connections_then_listens_again_on_the_same_port(receiver: Receiver) -> None:
    post(receiver, make_batch("b-1", {"192.0.2.1": 1}))
    port = receiver.port

    receiver.refuse_for(0.3)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=WAIT).close()

    assert receiver.wait_until_listening(WAIT)
    assert receiver.port == port
    assert post(receiver, make_batch("b-2", {"192.0.2.1": 1})).status == 200
    assert receiver.counts() == {"192.0.2.1": 2}


def test_stop_during_a_refusal_window_keeps_the_port_closed(receiver: Receiver) -> None:
    receiver.refuse_for(0.1)
    receiver.stop()

    assert not receiver.wait_until_listening(0.5)


def test_restart_keeps_counts_and_port_and_cuts_open_connections(receiver: Receiver) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=WAIT)
    post(receiver, make_batch("b-1", {"192.0.2.1": 1}), conn=conn)

    receiver.restart()

    with pytest.raises((OSError, http.client.HTTPException)):
        post(receiver, make_batch("b-2", {"192.0.2.1": 1}), conn=conn)
    assert post(receiver, make_batch("b-1", {"192.0.2.1": 1})).body["duplicate"] is True
    assert receiver.counts() == {"192.0.2.1": 1}


def test_restart_drops_a_delayed_request_unanswered_and_unstored(receiver: Receiver) -> None:
    receiver.delay_next(1, seconds=60.0, after_store=False)
    failure: list[BaseException] = []

    def send() -> None:
        try:
            post(receiver, make_batch("b-1", {"192.0.2.1": 1}))
        except (OSError, http.client.HTTPException) as exc:
            failure.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    assert receiver.wait_for_requests(1, timeout=WAIT)
    receiver.restart()
    sender.join(WAIT)

    assert failure, "the held request should have been cut by the restart"
    assert receiver.total() == 0
    assert receiver.requests()[-1].status is None


# --- subprocess mode -------------------------------------------------------------------------------


def test_the_receiver_process_keeps_counts_and_batch_ids_through_sigkill(
    receiver_process: ReceiverProcess,
) -> None:
    post(receiver_process, make_batch("b-1", {"192.0.2.1": 2, "2001:db8::1": 1}))
    post(receiver_process, make_batch("b-2", {"192.0.2.1": 1}))
    port = receiver_process.port

    receiver_process.kill()
    receiver_process.start()

    assert receiver_process.port == port
    assert receiver_process.counts() == {"192.0.2.1": 3, "2001:db8::1": 1}
    assert receiver_process.batch_ids() == {"b-1", "b-2"}
    assert post(receiver_process, make_batch("b-1", {"192.0.2.1": 2})).body["duplicate"] is True
    assert receiver_process.total() == 4


def test_the_receiver_process_takes_faults_over_its_control_channel(
    receiver_process: ReceiverProcess,
) -> None:
    receiver_process.reset_next(1, after_store=True)
    body = make_batch("b-1", {"192.0.2.1": 1})

    with pytest.raises(ConnectionResetError):
        post(receiver_process, body)
    resend = post(receiver_process, body)

    assert resend.body["duplicate"] is True
    assert receiver_process.wait_for_total(1, timeout=WAIT)
    assert [(r.fault, r.stored) for r in receiver_process.requests()] == [
        ("reset_after_store", True),
        (None, False),
    ]


def test_the_receiver_process_applies_a_fault_plan_from_its_first_request(
    receiver_process: ReceiverProcess,
) -> None:
    receiver_process.kill()
    receiver_process.start(fault_plan=[{"op": "fail_next", "n": 1, "status": 503, "retry_after": 1}])

    first = post(receiver_process, make_batch("b-1", {"192.0.2.1": 1}))

    assert (first.status, first.headers.get("Retry-After")) == (503, "1")


def test_the_control_channel_needs_the_token(receiver_process: ReceiverProcess) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", receiver_process.port, timeout=WAIT)
    conn.request("GET", "/_counts", headers={"Authorization": "Bearer wrong"})

    assert conn.getresponse().status == 401
