"""Batch validation: every problem named by field path; the fast path agrees with protocol.py."""

from __future__ import annotations

import ipaddress
import json
import pickle
import socket
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from remote_uploader.collector import batch as batch_module
from remote_uploader.collector.batch import MAX_ERRORS, parse_batch, parse_full
from remote_uploader.collector.storage.base import from_micros, to_micros
from remote_uploader.errors import AgentMismatch, BatchInvalid, FieldError
from remote_uploader.protocol import (
    FUTURE_SKEW,
    MAX_AGENT_LEN,
    MAX_COUNT,
    MAX_RECORDS_PER_BATCH,
    check_ip,
    encode_batch,
    format_time,
    is_canonical_ip,
    parse_time,
)
from tests.helpers.batches import record, wire_batch

#: The arrival time the tests parse at: both paths must clamp against the same clock.
NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)


def parse(document: object, now: datetime = NOW) -> object:
    return parse_batch(json.dumps(document).encode(), now=now)


def errors_of(document: object) -> list[tuple[str, str]]:
    with pytest.raises(BatchInvalid) as caught:
        parse(document)
    return [(e.field, e.error) for e in caught.value.errors]


def fields_of(document: object) -> list[str]:
    return [field for field, _ in errors_of(document)]


def test_a_valid_batch_is_aggregated_per_address() -> None:
    records = [
        record("203.0.113.9", 2, first=10, last=20, source="a.log"),
        record("2001:db8::1", 1),
        record("203.0.113.9", 3, first=5, last=15, source="b.log"),
    ]
    parsed = parse_batch(json.dumps(wire_batch("web-1", "b-1", records)).encode())
    assert (parsed.agent, parsed.batch_id, parsed.records) == ("web-1", "b-1", 3)
    assert sorted((d.ip, d.total) for d in parsed.deltas) == [("2001:db8::1", 1), ("203.0.113.9", 5)]
    merged = next(delta for delta in parsed.deltas if delta.ip == "203.0.113.9")
    assert (from_micros(merged.first_us).second, from_micros(merged.last_us).second) == (5, 20)
    assert merged.key == bytes([203, 0, 113, 9])


def test_each_bad_record_field_is_named_with_its_index() -> None:
    records = [
        record("203.0.113.1"),
        {**record("203.0.113.2"), "ip": "203.0.113.02"},
        {**record("203.0.113.3"), "count": 0},
        {**record("203.0.113.4"), "first_seen": "yesterday"},
        {**record("203.0.113.5"), "last_seen": "2024-05-01T12:00:00"},
        {**record("203.0.113.6"), "source": 7},
        {**record("203.0.113.7", first=10, last=5)},  # times are clamped, never a reason to refuse
        "not an object",
    ]
    assert errors_of(wire_batch("a", "b", records)) == [
        ("records[1].ip", "not a canonical IP address"),
        ("records[2].count", f"must be an integer in 1..{MAX_COUNT}"),
        ("records[3].first_seen", "not an RFC 3339 time with a UTC offset"),
        ("records[4].last_seen", "not an RFC 3339 time with a UTC offset"),
        ("records[5].source", "must be a string"),
        ("records[7]", "must be a JSON object"),
    ]


@pytest.mark.parametrize(
    ("ip", "reason"),
    [
        ("2001:DB8::1", "not a canonical IP address"),
        ("2001:db8:0:0:0:0:0:1", "not a canonical IP address"),
        ("::ffff:192.0.2.1", "not a canonical IP address"),
        ("0.0.0.0", "not a countable address (unspecified)"),
        ("::", "not a countable address (unspecified)"),
        ("fe80::1%eth0", "not a canonical IP address"),
        ("1.2.3", "not a canonical IP address"),
        (" 1.2.3.4", "not a canonical IP address"),
        ("1.2.3.4\x00", "not a canonical IP address"),
        ("١.٢.٣.٤", "not a canonical IP address"),
        (17, "must be a string"),
    ],
)
def test_non_canonical_and_invalid_addresses_are_refused(ip: object, reason: str) -> None:
    assert errors_of(wire_batch("a", "b", [{**record("192.0.2.1"), "ip": ip}])) == [("records[0].ip", reason)]


@pytest.mark.parametrize("count", [0, -1, 1.5, 1.0, True, "3", None, MAX_COUNT + 1])
def test_counts_must_be_positive_integers(count: object) -> None:
    assert fields_of(wire_batch("a", "b", [{**record("192.0.2.1"), "count": count}])) == ["records[0].count"]


def test_missing_fields_are_each_reported() -> None:
    assert fields_of({"records": [{}]}) == [
        "agent",
        "batch_id",
        "sent_at",
    ]
    assert fields_of(wire_batch("a", "b", [{}])) == [
        f"records[0].{name}" for name in ("ip", "count", "first_seen", "last_seen", "source")
    ]


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ([], "body"),
        ("text", "body"),
        ({**wire_batch("a", "b", []), "agent": ""}, "agent"),
        ({**wire_batch("a", "b", []), "agent": "x" * (MAX_AGENT_LEN + 1)}, "agent"),
        ({**wire_batch("a", "b", []), "agent": "tab\there"}, "agent"),
        ({**wire_batch("a", "b", []), "batch_id": 12}, "batch_id"),
        ({**wire_batch("a", "b", []), "batch_id": "nul\x00"}, "batch_id"),
        ({**wire_batch("a", "b", []), "sent_at": "0001-01-01T00:00:00+01:00"}, "sent_at"),
        ({**wire_batch("a", "b", []), "sent_at": "1969-12-31T23:59:59"}, "sent_at"),  # no offset
        ({**wire_batch("a", "b", []), "records": {}}, "records"),
    ],
)
def test_bad_top_level_fields_are_named(document: object, field: str) -> None:
    assert fields_of(document) == [field]


def test_lone_surrogates_are_refused_not_stored() -> None:
    body = b'{"agent":"a","batch_id":"\\ud800","sent_at":"2024-01-01T00:00:00Z","records":[]}'
    with pytest.raises(BatchInvalid) as caught:
        parse_batch(body)
    assert caught.value.errors[0].field == "batch_id"


def test_too_many_records_are_refused_as_a_whole() -> None:
    document = wire_batch("a", "b", [])
    document["records"] = [0] * (MAX_RECORDS_PER_BATCH + 1)
    assert fields_of(document) == ["records"]


def test_the_error_list_is_bounded() -> None:
    errors = errors_of(wire_batch("a", "b", ["x"] * 1000))
    assert len(errors) == MAX_ERRORS + 1
    assert errors[-1][0] == "body"


@pytest.mark.parametrize("body", [b"", b"{", b"\xff\xfe", b"[" * 100_000, b'{"a": NaN'])
def test_malformed_json_is_one_body_error(body: bytes) -> None:
    with pytest.raises(BatchInvalid) as caught:
        parse_batch(body)
    assert [e.field for e in caught.value.errors] == ["body"]


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.ip_addresses().map(str), st.text(alphabet="0123456789abcdefABCDEF.:%x ", max_size=45)))
def test_the_fast_path_accepts_exactly_the_canonical_addresses(text: str) -> None:
    accepted = True
    try:
        parse_batch(json.dumps(wire_batch("a", "b", [{**record("192.0.2.1"), "ip": text}])).encode())
    except BatchInvalid:
        accepted = False
    assert accepted == is_canonical_ip(text)
    assert (check_ip(text) is None) == is_canonical_ip(text)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.datetimes(min_value=datetime(1970, 1, 2), timezones=st.just(UTC)).map(
            lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        ),
        st.text(alphabet="0123456789-:TZz.+ ", max_size=32),
    )
)
def test_the_fast_time_path_agrees_with_protocol_parse_time(text: str) -> None:
    try:
        expected = parse_time(text)
    except ValueError:
        expected = None
    document = wire_batch("a", "b", [{**record("192.0.2.1"), "first_seen": text, "last_seen": text}])
    try:
        parsed = parse_batch(json.dumps(document).encode(), now=NOW)
    except BatchInvalid:
        assert expected is None
        return
    assert expected is not None
    clamped = NOW if expected > NOW + FUTURE_SKEW else max(expected, datetime(1970, 1, 1, tzinfo=UTC))
    assert parsed.deltas[0].first_us == to_micros(clamped)


# -- the fast path and the full path ----------------------------------------------------------


def full_path(body: bytes, agent: str | None = None) -> object:
    """What the full path alone makes of a body: a ValidBatch, or the exception it raises."""
    try:
        return parse_full(body, agent, now=NOW)
    except (BatchInvalid, AgentMismatch) as exc:
        return exc


def outcome(result: object) -> object:
    if isinstance(result, BatchInvalid):
        return ("invalid", [(e.field, e.error) for e in result.errors])
    if isinstance(result, AgentMismatch):
        return ("mismatch", result.agent, result.expected)
    return result


def both_paths(body: bytes, agent: str | None = None) -> tuple[object, object]:
    try:
        fast: object = parse_batch(body, agent, now=NOW)
    except (BatchInvalid, AgentMismatch) as exc:
        fast = exc
    return outcome(fast), outcome(full_path(body, agent))


ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=MAX_COUNT + 3),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
    st.sampled_from(
        [
            "192.0.2.1",
            "192.0.2.01",
            "2001:db8::1",
            "2001:DB8::1",
            "::ffff:192.0.2.1",
            "0.0.0.0",
            "::",
            "2024-05-01T12:00:00.000000Z",
            "2024-05-01T12:00:00+02:00",
            "2024-05-01T12:00:00",
            "1969-12-31T23:59:59Z",
            "é",
            "\ud800",
            "a\nb",
            "x" * (MAX_AGENT_LEN + 1),
        ]
    ),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
FIELDS = ("ip", "count", "first_seen", "last_seen", "source")
TOP = ("agent", "batch_id", "sent_at", "records")


@st.composite
def near_agent_bodies(draw: st.DrawFn) -> bytes:
    """A batch as the agent sends it, with a few fields changed, dropped or added."""
    rng_ips = ["192.0.2.1", "198.51.100.7", "2001:db8::1", "203.0.113.9", "2001:db8:0:1::7"]
    records: list[object] = [
        record(draw(st.sampled_from(rng_ips)), draw(st.integers(1, 9)), first=draw(st.integers(0, 5)))
        for _ in range(draw(st.integers(0, 6)))
    ]
    document: dict[str, object] = wire_batch("web-1", "b-1", records)  # type: ignore[arg-type]
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from(["top", "record", "records"]))
        action = draw(st.sampled_from(["set", "drop", "add"]))
        if where == "top" or not records:
            target: dict[str, object] = document
            name = draw(st.sampled_from(TOP))
        elif where == "records":
            records[draw(st.integers(0, len(records) - 1))] = draw(ODD_VALUES)
            continue
        else:
            item = records[draw(st.integers(0, len(records) - 1))]
            if not isinstance(item, dict):
                continue
            target, name = item, draw(st.sampled_from(FIELDS))
        if action == "set":
            target[name] = draw(ODD_VALUES)
        elif action == "drop":
            target.pop(name, None)
        else:
            target[draw(st.text(min_size=1, max_size=4))] = draw(ODD_VALUES)
    ascii_only = draw(st.booleans())
    compact = draw(st.booleans())
    return json.dumps(document, ensure_ascii=ascii_only, separators=(",", ":") if compact else None).encode(
        "utf-8", "surrogatepass"
    )


@settings(max_examples=1500, deadline=None)
@given(near_agent_bodies(), st.sampled_from([None, "web-1", "web-2"]))
def test_the_fast_path_gives_what_the_full_path_gives(body: bytes, agent: str | None) -> None:
    fast, full = both_paths(body, agent)
    assert fast == full


HEAD = b'{"agent":"a","batch_id":"b","sent_at":"2024-01-01T00:00:00Z","records":[]'


@pytest.mark.parametrize(
    "body",
    [
        # Unknown fields: ignored by the full path, refused by the fast one, which hands over.
        HEAD + b',"x":' + b"9" * 5000 + b"}",  # longer than int() reads
        HEAD + b',"x":NaN}',
        HEAD + b',"x":"\xff"}',  # not UTF-8
        HEAD + b',"x":' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'\xef\xbb\xbf{"agent":"a","batch_id":"b","sent_at":"2024-01-01T00:00:00Z","records":[]}',
        b'{"agent":"a","batch_id":"\\ud800","sent_at":"2024-01-01T00:00:00Z","records":[]}',
        b'{"agent":"a","agent":"b","batch_id":"c","sent_at":"2024-01-01T00:00:00Z","records":[]}',
        b'{"agent":"a","batch_id":"b","sent_at":"2024-01-01T00:00:00Z","records":[{"ip":"192.0.2.1","count":1,'
        b'"first_seen":"2024-01-01T00:00:00Z","last_seen":"2024-01-01T00:00:00Z","source":"\\u0000"}]}',
    ],
)
def test_bodies_the_standard_library_reads_differently_go_to_the_full_path(body: bytes) -> None:
    fast, full = both_paths(body, "a")
    assert fast == full


def _times(batch: object) -> list[tuple[str, datetime, datetime]]:
    return [(d.ip, from_micros(d.first_us), from_micros(d.last_us)) for d in batch.deltas]  # type: ignore[attr-defined]


def at(seconds: float) -> str:
    return format_time(NOW + timedelta(seconds=seconds))


@pytest.mark.parametrize("path", ["fast", "full"])
def test_a_last_seen_before_first_seen_is_swapped_and_counted_not_refused(path: str) -> None:
    """An old agent whose clock went back inside a batch wrote this: it must be deliverable."""
    records = [{**record("192.0.2.1"), "first_seen": at(-10), "last_seen": at(-10.5)},
               {**record("192.0.2.2"), "first_seen": at(-20), "last_seen": at(-15)}]
    body = json.dumps(wire_batch("a", "b", records)).encode()
    parsed = parse_batch(body, "a", now=NOW) if path == "fast" else parse_full(body, "a", now=NOW)
    assert _times(parsed) == [("192.0.2.1", NOW - timedelta(seconds=10.5), NOW - timedelta(seconds=10)),
                              ("192.0.2.2", NOW - timedelta(seconds=20), NOW - timedelta(seconds=15))]
    assert parsed.clamped == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("path", ["fast", "full"])
def test_times_beyond_the_allowed_skew_are_clamped_to_the_arrival_time_and_counted(path: str) -> None:
    skew = FUTURE_SKEW.total_seconds()
    records = [{**record("192.0.2.1"), "first_seen": at(-5), "last_seen": at(skew - 1)},  # within: kept
               {**record("192.0.2.2"), "first_seen": at(-5), "last_seen": at(skew + 1)},
               {**record("192.0.2.3"), "first_seen": "9999-12-31T23:59:59Z", "last_seen": "9999-12-31T23:59:59Z"},
               {**record("192.0.2.4"), "first_seen": "1969-12-31T23:00:00Z", "last_seen": at(0)}]
    document = {**wire_batch("a", "b", records), "sent_at": at(86400)}
    body = json.dumps(document).encode()
    parsed = parse_batch(body, "a", now=NOW) if path == "fast" else parse_full(body, "a", now=NOW)
    five = timedelta(seconds=5)
    assert _times(parsed) == [("192.0.2.1", NOW - five, NOW + timedelta(seconds=skew - 1)),
                              ("192.0.2.2", NOW - five, NOW),
                              ("192.0.2.3", NOW, NOW),
                              ("192.0.2.4", datetime(1970, 1, 1, tzinfo=UTC), NOW)]
    assert parsed.sent_at == NOW  # type: ignore[attr-defined]
    assert parsed.clamped == 1 + 2 + 1 + 1  # type: ignore[attr-defined]


def test_the_agents_batches_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(payload: bytes) -> object:
        raise AssertionError("the full path was taken")

    monkeypatch.setattr(batch_module, "decode_body", refuse)
    records = [record("203.0.113.9", 2), record("2001:db8::1"), record("203.0.113.9", 3, source="b.log")]
    body = encode_batch("web-1", "b-1", format_time(datetime(2024, 5, 1, tzinfo=UTC)), json.dumps(records).encode())
    parsed = parse_batch(body, "web-1")
    assert sorted((d.ip, d.total) for d in parsed.deltas) == [("2001:db8::1", 1), ("203.0.113.9", 5)]
    with pytest.raises(AgentMismatch):
        parse_batch(body, "web-2")


def ipv6_spellings(address: ipaddress.IPv6Address) -> list[str]:
    return [
        str(address),
        address.exploded,
        str(address).upper(),
        socket.inet_ntop(socket.AF_INET6, address.packed),  # glibc's: a dotted tail for some
        "::ffff:" + str(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)),
    ]


IPV6 = st.one_of(
    st.ip_addresses(v=6),
    st.integers(0, 2**32 - 1).map(lambda n: ipaddress.IPv6Address((0xFFFF << 32) | n)),  # mapped
    st.integers(0, 2**32 - 1).map(ipaddress.IPv6Address),  # compatible, and ::, ::1
    st.integers(0, 2**16 - 1).map(lambda n: ipaddress.IPv6Address(n << 48)),  # long zero runs
)


@settings(max_examples=1000, deadline=None)
@given(IPV6)
def test_the_ipv6_round_trip_accepts_exactly_the_canonical_spellings(address: ipaddress.IPv6Address) -> None:
    for text in ipv6_spellings(address):
        body = json.dumps(wire_batch("a", "b", [{**record("192.0.2.1"), "ip": text}])).encode()
        fast, full = both_paths(body)
        assert fast == full
        assert (not isinstance(fast, tuple)) == is_canonical_ip(text), text


@pytest.mark.parametrize(
    "error",
    [
        BatchInvalid([FieldError("records[3].ip", "not a canonical IP address"), FieldError("body", "x")]),
        AgentMismatch("web-2", "web-1"),
    ],
)
def test_errors_cross_process_boundaries_intact(error: Exception) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and vars(copy) == vars(error) and str(copy) == str(error)


def test_stream_ranges_are_read_alike_by_both_paths_and_keep_the_fast_path() -> None:
    """`streams` (docs/protocol.md, "Streams") in the agent's exact shape: the fast path takes it (a new
    agent's every batch carries it) and reads what the full path reads."""
    from remote_uploader.collector.batch import DEFAULT_BUCKET, Clamp, _parse_fast

    streams = [{"id": "ab" * 16, "start": 0, "end": 120}, {"id": "cd" * 16, "start": 7, "end": 9}]
    document = {**wire_batch("a", "b", [record("192.0.2.1")]), "producer": "ef" * 16, "seq": 3, "streams": streams}
    body = json.dumps(document, separators=(",", ":")).encode()
    fast = _parse_fast(body, "a", DEFAULT_BUCKET, Clamp(NOW))
    assert fast.streams == parse_full(body, "a", now=NOW).streams == (("ab" * 16, 0, 120), ("cd" * 16, 7, 9))
