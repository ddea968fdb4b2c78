"""Body format 2 (columnar, docs/protocol.md "Body formats"): the same batch as format 1, every
malformed body a 400 naming its field, and agents and collectors of either version agreeing."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from remote_uploader.agent.batch import (
    as_format_1,
    body_format,
    encode_format_2,
    groups_of,
    records_of,
)
from remote_uploader.collector.batch import AgentMismatch, BatchInvalid, parse_batch
from remote_uploader.protocol import (
    ACCEPTED_MEDIA,
    MAX_RECORDS_PER_BATCH,
    MEDIA_V1,
    MEDIA_V2,
    Record,
    encode_batch,
    encode_records,
    format_micros,
    to_micros,
)
from tests.helpers.collector_fixtures import CollectorProcess

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
T0 = to_micros(datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC))
PRODUCER = "0123456789abcdef0123"

RECORDS = [
    Record("203.0.113.9", 2, format_micros(T0), format_micros(T0 + 5_000_000), "/var/log/a.log"),
    Record("2001:db8::1", 1, format_micros(T0), format_micros(T0 + 5_000_000), "/var/log/a.log"),
    Record("203.0.113.9", 3, format_micros(T0 - 1), format_micros(T0 + 90_000_000), "/var/log/b.log"),
    Record("198.51.100.7", 4, format_micros(T0 - 1), format_micros(T0 + 90_000_000), "/var/log/b.log"),
]


def v2(records: list[Record] = RECORDS, **head: Any) -> dict[str, Any]:
    body = encode_format_2("web-1", "b-1", T0, groups_of(records), (PRODUCER, 7, ""))
    return {**json.loads(body), **head}


def parse_v2(document: object, agent: str | None = None) -> Any:
    return parse_batch(json.dumps(document).encode(), agent, now=NOW, body_format=2)


def errors_of(document: object) -> list[tuple[str, str]]:
    with pytest.raises(BatchInvalid) as caught:
        parse_v2(document)
    return [(e.field, e.error) for e in caught.value.errors]


def test_a_format_2_body_is_the_same_batch_as_its_records_in_format_1() -> None:
    v1 = encode_batch("web-1", "b-1", format_micros(T0), encode_records(RECORDS), PRODUCER, 7, "")
    one = parse_batch(v1, now=NOW)
    two = parse_v2(v2())
    assert sorted(one.deltas) == sorted(two.deltas)
    assert sorted(one.buckets) == sorted(two.buckets)
    assert (two.records, two.sent_at, two.producer, two.seq, two.clamped) == (4, one.sent_at, PRODUCER, 7, 0)


def test_an_address_twice_in_a_group_is_merged_as_in_format_1() -> None:
    document = v2()
    group = document["groups"][0]
    group["ip"].append(group["ip"][0])
    group["count"].append(10)
    totals = {delta.ip: delta.total for delta in parse_v2(document).deltas}
    assert totals == {"203.0.113.9": 15, "2001:db8::1": 1, "198.51.100.7": 4}


def test_the_agent_rewrites_a_format_2_body_as_the_same_format_1_batch() -> None:
    body = gzip.compress(encode_format_2("web-1", "b-1", T0, groups_of(RECORDS), (PRODUCER, 7, "01")))
    assert (body_format(body, "gzip"), body_format(gzip.decompress(body), "identity")) == (2, 2)
    one = as_format_1(body, "gzip")
    assert body_format(one, "gzip") == 1
    document = json.loads(gzip.decompress(one))
    assert (document["producer"], document["seq"], document["part"], document["batch_id"]) == (PRODUCER, 7, "01", "b-1")
    assert records_of(document) == records_of(json.loads(gzip.decompress(body))) == RECORDS
    assert parse_batch(gzip.decompress(one), now=NOW).deltas == parse_v2(v2(part="01")).deltas


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d["groups"][0]["count"].pop(), [("groups[0].count", "has 1 entries, ip has 2")]),
        (lambda d: d["groups"][1].update(source=2), [("groups[1].source", "not an index of sources (0..1)")]),
        (lambda d: d["groups"][1].update(source=-1), [("groups[1].source", "not an index of sources (0..1)")]),
        (lambda d: d["groups"][0]["count"].__setitem__(1, "1"), [("groups[0].count[1]", "expected `int`, got `str`")]),
        (lambda d: d["groups"][0]["count"].__setitem__(0, 0), [("groups[0].count[0]", "expected `int` >= 1")]),
        (lambda d: d["groups"][1]["ip"].__setitem__(1, "198.51.100.07"),
         [("groups[1].ip[1]", "not a canonical IP address")]),
        (lambda d: d["groups"][1]["ip"].__setitem__(0, 17), [("groups[1].ip[0]", "expected `str`, got `int`")]),
        (lambda d: d.update(sent_at="2024-05-01T00:00:00Z"), [("sent_at", "expected `int`, got `str`")]),
        (lambda d: d.update(sources=["ok", "x" * 4097]), [("sources[1]", "longer than 4096 characters")]),
        (lambda d: d.update(format=3), [("format", "invalid enum value 3")]),
        (lambda d: d.pop("groups"), [("body", "object missing required field `groups`")]),
        (lambda d: d.update(seq=0), [("seq", "must be an integer in 1..9007199254740991 (with producer)")]),
        (lambda d: d.update(agent=""), [("agent", "must not be empty")]),
    ],
)
def test_each_malformed_format_2_body_is_refused_naming_its_field(change: Any, expected: list[tuple[str, str]]) -> None:
    document = v2()
    change(document)
    assert errors_of(document) == expected


def test_more_addresses_than_a_batch_may_hold_are_refused_before_any_is_checked() -> None:
    document = v2()
    document["groups"] = [{"source": 0, "first_seen": T0, "last_seen": T0, "ip": ["x"] * (MAX_RECORDS_PER_BATCH + 1),
                           "count": [1] * (MAX_RECORDS_PER_BATCH + 1)}]
    assert errors_of(document) == [("groups", f"more than {MAX_RECORDS_PER_BATCH} records")]


def test_a_body_that_is_no_json_is_refused_as_the_body() -> None:
    with pytest.raises(BatchInvalid) as caught:
        parse_batch(b'{"format":2,', now=NOW, body_format=2)
    assert [e.field for e in caught.value.errors] == ["body"]
    assert caught.value.errors[0].error.startswith("not valid JSON")


def test_an_invalid_body_naming_another_agent_is_a_mismatch_not_bad_data() -> None:
    document = v2()
    del document["producer"], document["seq"]
    document["groups"] = "not groups"
    with pytest.raises(AgentMismatch):
        parse_v2(document, agent="web-2")


def test_times_in_the_future_are_clamped_and_counted_per_record() -> None:
    document = v2()
    document["groups"][0]["last_seen"] = to_micros(NOW) + 3600 * 10**6
    parsed = parse_v2(document)
    assert parsed.clamped == 2  # two records, one time field each
    assert max(delta.last_us for delta in parsed.deltas) == to_micros(NOW)


# -- over HTTP, with agents and collectors of either version -------------------------------------


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CollectorProcess]:
    workdir: Path = tmp_path_factory.mktemp("format2")
    process = CollectorProcess(workdir, f"sqlite://{workdir}/collector.db")
    process.start()
    yield process
    process.stop()


def post(collector: CollectorProcess, body: bytes, media: str) -> httpx.Response:
    headers = {**collector.headers(), "Content-Type": media, "Content-Encoding": "gzip"}
    return httpx.post(collector.url + "/v1/batches", content=gzip.compress(body), headers=headers, timeout=30)


def test_the_collector_lists_both_formats_and_counts_a_format_2_batch_once(collector: CollectorProcess) -> None:
    body = encode_format_2("test-agent", "f2-1", T0, groups_of(RECORDS), ("abcdef0123456789abcd", 1, ""))
    first = post(collector, body, MEDIA_V2)
    assert first.status_code == 200, first.text
    assert first.headers["accept-post"] == ACCEPTED_MEDIA
    assert (first.json()["accepted"], first.json()["duplicate"]) == (4, False)
    # The same batch rewritten in format 1 (an agent that met an older collector in between) is
    # recognised by its identity: counted once.
    again = post(collector, as_format_1(body, "identity"), MEDIA_V1)
    assert again.json()["duplicate"] is True
    counts = collector.counts()
    assert counts["203.0.113.9"] == 5 and counts["198.51.100.7"] == 4


def test_a_format_2_body_sent_as_format_1_is_refused_naming_the_body(collector: CollectorProcess) -> None:
    body = encode_format_2("test-agent", "f2-2", T0, groups_of(RECORDS))
    answer = post(collector, body, MEDIA_V1)
    assert answer.status_code == 400
    assert {item["field"] for item in answer.json()["detail"]} >= {"records"}


def test_an_unknown_media_type_is_a_415_that_lists_the_formats_taken(collector: CollectorProcess) -> None:
    answer = post(collector, b"{}", "application/vnd.remote-uploader.v9+json")
    assert answer.status_code == 415
    assert answer.headers["accept-post"] == ACCEPTED_MEDIA


STREAM = "0123456789abcdef0123456789abcdef"


def test_the_streams_a_format_2_body_covers_are_read_as_format_1_reads_them() -> None:
    streams = [(STREAM, 0, 4096), ("fedcba9876543210fedcba9876543210", 10, 20)]
    body = encode_format_2("web-1", "b-1", T0, groups_of(RECORDS), (PRODUCER, 7, ""), streams)
    two = parse_batch(body, now=NOW, body_format=2)
    one = parse_batch(as_format_1(body, "identity"), now=NOW)
    assert two.streams == one.streams == tuple(streams)


def test_streams_in_a_format_2_body_are_checked_and_named() -> None:
    bad = v2(streams=[{"id": STREAM, "start": 5, "end": 5}, {"id": "XYZ", "start": 0, "end": 1}])
    assert [field for field, _ in errors_of(bad)] == ["streams[0]", "streams[1]"]
    anonymous = {k: v for k, v in v2(streams=[{"id": STREAM, "start": 0, "end": 1}]).items()
                 if k not in ("producer", "seq")}
    assert ("streams", "only with producer") in errors_of(anonymous)
