"""A protocol v1 batch body -> a validated, aggregated `ValidBatch`, or every reason it is not one.

Validation is all-or-nothing: one bad field rejects the batch (400) and nothing of it is stored,
because the agent sends a rejected batch to its dead-letter table as a whole.

Times are not a reason to reject a batch the agent wrote: an agent's clock can be stepped (NTP,
an operator, a dead RTC battery) and a batch refused for its times would be refused for ever,
however often it is requeued. So a time later than the arrival time plus `FUTURE_SKEW` is set to
the arrival time, one before 1970 to 1970, and a record whose `last_seen` is before its
`first_seen` (an old agent wrote that when its clock went back inside a batch) has the two
swapped. `ValidBatch.clamped` counts the time fields changed (a metric and a log line at ingest); only
a text that is no RFC 3339 time at all is an error. Each error names
the field as a path (`records[3].ip`) so that an operator can find it in the dead letter.

This is the per-record hot path of ingest (up to 100,000 records per request), so it has two
layers. The *full path* (`decode_body` + `validate_batch`: the standard library's JSON, every
rule checked and every problem named) is the definition. The *fast path* (`parse_batch` tries it
first) takes only a body in exactly the shape the agent sends: ASCII JSON with the protocol's
fields and no others, decoded by msgspec straight into typed structs (no dict per record), every
record passing the quick checks below. Anything else, valid or not, is handed whole to the full
path, so the fast path can only accept what the full path accepts, with the same result, and
every error is named by the full path. A canonical address is recognised with two C calls
(`inet_pton`, then `inet_ntop` must give back the same text), falling back to
`protocol.is_canonical_ip`, the definition both sides share, only for unusual spellings.
"""

from __future__ import annotations

import functools
import json
import re
import socket
import time
from datetime import UTC, datetime
from itertools import repeat
from typing import Annotated, Any, Literal

import msgspec

from remote_uploader.collector.storage.base import IpDelta, ValidBatch, from_micros, to_micros
from remote_uploader.collector.storage.model import MAX_LABEL, BucketDelta
from remote_uploader.errors import AgentMismatch, BatchInvalid, FieldError
from remote_uploader.protocol import (
    FUTURE_SKEW,
    MAX_AGENT_LEN,
    MAX_BATCH_ID_LEN,
    MAX_COUNT,
    MAX_OFFSET,
    MAX_PART_LEN,
    MAX_RECORDS_PER_BATCH,
    MAX_SEQ,
    MAX_SOURCE_LEN,
    MAX_STREAMS_PER_BATCH,
    PRODUCER_LEN,
    STREAM_ID_LEN,
    check_ip,
    check_text,
    ip_key,
    is_canonical_ip,
    parse_any_time,
)

MAX_ERRORS = 100  # a body with a million bad fields gets a bounded answer

PRODUCER_PATTERN = _PRODUCER = re.compile(rf"[0-9a-f]{{{PRODUCER_LEN[0]},{PRODUCER_LEN[1]}}}")
_PART = re.compile(rf"[01]{{0,{MAX_PART_LEN}}}")
_STREAM_ID = re.compile(rf"[0-9a-f]{{{STREAM_ID_LEN[0]},{STREAM_ID_LEN[1]}}}")


class _TooManyErrors(Exception):
    pass


def check_source(value: object) -> str | None:
    """None if `value` is a storable source label, else the reason. A source is the log file's
    name as the agent knows it, and a file name may hold any character (a line break, a tab):
    refusing one would dead-letter that file's counts for ever. So only the length and valid
    Unicode are checked; the storage escapes what its bulk formats need (storage/bulk.py)."""
    if not isinstance(value, str):
        return "must be a string"
    if len(value) > MAX_SOURCE_LEN:
        return f"longer than {MAX_SOURCE_LEN} characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "not valid Unicode text (lone surrogate)"
    return None


class Clamp:
    """Bounds for the times of one batch, and how many time fields were changed to fit them.

    `now` is the arrival time; a time after `now + FUTURE_SKEW` becomes `now` (the agent cannot
    have read a line after the collector received it), a time before 1970 becomes 1970.
    """

    def __init__(self, now: datetime | None = None) -> None:
        arrival = now if now is not None else datetime.fromtimestamp(time.time(), UTC)
        self.now = to_micros(arrival)
        self.latest = to_micros(arrival + FUTURE_SKEW)
        self.changed = 0

    def micros(self, value: int) -> int:
        """`value` (microseconds) within bounds; the caller counts a change in `changed`."""
        if value > self.latest:
            return self.now
        return value if value >= 0 else 0

    def fits(self, value: int) -> bool:
        return 0 <= value <= self.latest

    def moment(self, moment: datetime) -> tuple[datetime, int]:
        """A parsed time within bounds, and 1 if it was changed."""
        micros = to_micros(moment)
        if self.fits(micros):
            return moment, 0
        return from_micros(self.micros(micros)), 1


class _Errors:
    def __init__(self) -> None:
        self.items: list[FieldError] = []

    def add(self, field: str, error: str) -> None:
        self.items.append(FieldError(field, error))
        if len(self.items) >= MAX_ERRORS:
            raise _TooManyErrors


def decode_body(payload: bytes | bytearray) -> Any:
    """The JSON document of a body; `BatchInvalid` (field `body`) if it is not JSON."""
    try:
        return json.loads(payload)
    except RecursionError:
        raise BatchInvalid([FieldError("body", "not valid JSON: nested too deeply")]) from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise BatchInvalid([FieldError("body", f"not valid JSON: {exc}")]) from None


DEFAULT_BUCKET = 60  # seconds per time bucket (collector setting `bucket`)


def validate_batch(document: Any, bucket: int = DEFAULT_BUCKET, now: datetime | None = None) -> ValidBatch:
    """Validate a decoded batch; raise `BatchInvalid` listing what is wrong. `bucket`: seconds
    per time bucket for the batch's bucket deltas (0: none). Times are clamped (module
    docstring) against `now`, the arrival time (default: the clock now)."""
    errors = _Errors()
    try:
        batch = _validate(document, errors, bucket, Clamp(now))
    except _TooManyErrors:
        errors.items.append(FieldError("body", f"more than {MAX_ERRORS} errors; the rest are not listed"))
        batch = None
    if batch is None or errors.items:
        raise BatchInvalid(errors.items)
    return batch


def parse_batch(payload: bytes | bytearray, agent: str | None = None, bucket: int = DEFAULT_BUCKET,
                now: datetime | None = None, body_format: int = 1) -> ValidBatch:
    """Decode and validate a batch body of `body_format` (1 or 2, from its media type); raise
    `BatchInvalid` listing what is wrong.

    With `agent` (the token's name), a body that names another agent raises `AgentMismatch`
    before anything else is checked, even if it is invalid too: a token/agent mismatch is
    configuration, which the agent keeps queued (403), not data to dead-letter (400). It also
    lets an agent's self-test POST {"agent": "its id"}: 403 mismatch, 400 accepted.

    A batch with a delivery identity (`producer`) is never refused for its `agent`: it is counted
    under the token's name (the caller replaces it), so batches queued before the agent id, the
    token or its name changed are neither stranded nor doubled (issue 9, hole 9).
    """
    if now is None:
        now = datetime.fromtimestamp(time.time(), UTC)
    if body_format == 2:
        return parse_format_2(payload, agent, bucket, now)
    if payload.isascii():
        try:
            return _parse_fast(payload, agent, bucket, Clamp(now))
        except (_Slow, msgspec.DecodeError, RecursionError):
            pass  # not in the agent's exact shape: the full path decides, and names every problem
    return parse_full(payload, agent, bucket, now)


def parse_full(payload: bytes | bytearray, agent: str | None = None, bucket: int = DEFAULT_BUCKET,
               now: datetime | None = None) -> ValidBatch:
    """The full path alone: decode, check the agent's name, validate, naming every problem.

    What `parse_batch` falls back to; the fast path must agree with it on every body it takes.
    """
    document = decode_body(payload)
    if agent is not None and isinstance(document, dict) and document.get("producer") is None:
        named = document.get("agent")
        if isinstance(named, str) and named != agent:
            raise AgentMismatch(named, agent)
    return validate_batch(document, bucket, now)


def _validate(document: Any, errors: _Errors, bucket: int, clamp: Clamp) -> ValidBatch | None:
    if not isinstance(document, dict):
        errors.add("body", "must be a JSON object")
        return None
    for name in ("agent", "batch_id", "sent_at", "records"):
        if name not in document:
            errors.add(name, "is required")
    agent = document.get("agent")
    if "agent" in document and (problem := check_text(agent, MAX_AGENT_LEN)):
        errors.add("agent", problem)
    batch_id = document.get("batch_id")
    if "batch_id" in document and (problem := check_text(batch_id, MAX_BATCH_ID_LEN)):
        errors.add("batch_id", problem)
    sent_at: datetime | str = "missing"
    if "sent_at" in document:
        sent_at = parse_any_time(document["sent_at"])
        if isinstance(sent_at, str):
            errors.add("sent_at", sent_at)
    records = document.get("records")
    if "records" in document:
        if not isinstance(records, list):
            errors.add("records", "must be an array")
        elif len(records) > MAX_RECORDS_PER_BATCH:
            errors.add("records", f"more than {MAX_RECORDS_PER_BATCH} records")
    producer, seq, part = _identity(document, errors)
    streams = _streams(document, errors)
    if errors.items or not isinstance(records, list):
        return None
    assert isinstance(agent, str) and isinstance(batch_id, str) and isinstance(sent_at, datetime)
    sent_at, changed = clamp.moment(sent_at)
    deltas, buckets = _aggregate(records, errors, bucket, clamp)
    return ValidBatch(agent, batch_id, sent_at, len(records), deltas, buckets, clamped=clamp.changed + changed,
                 producer=producer, seq=seq, part=part, streams=streams if producer is not None else ())


def _streams(document: dict[str, Any], errors: _Errors) -> tuple[tuple[str, int, int], ...]:
    """The optional `streams`: the byte ranges [start, end) of the agent's file records that the batch
    covers (docs/protocol.md, "Streams"), only with a producer."""
    if "streams" not in document:
        return ()
    streams = document["streams"]
    if "producer" not in document:
        errors.add("streams", "only with producer")
        return ()
    if not isinstance(streams, list) or len(streams) > MAX_STREAMS_PER_BATCH:
        errors.add("streams", f"must be an array of at most {MAX_STREAMS_PER_BATCH} streams")
        return ()
    found = []
    for index, item in enumerate(streams):
        if problem := _stream_problem(item):
            errors.add(f"streams[{index}]", problem)
        else:
            found.append((item["id"], item["start"], item["end"]))
    return tuple(found)


def _stream_problem(item: object) -> str | None:
    if not isinstance(item, dict):
        return "must be an object with id, start and end"
    sid, start, end = item.get("id"), item.get("start"), item.get("end")
    if not isinstance(sid, str) or not _STREAM_ID.fullmatch(sid):
        return f"id must be {STREAM_ID_LEN[0]} to {STREAM_ID_LEN[1]} lower-case hex digits"
    if type(start) is not int or type(end) is not int or not 0 <= start < end <= MAX_OFFSET:
        return f"start and end must be integers with 0 <= start < end <= {MAX_OFFSET}"
    return None


def _identity(document: dict[str, Any], errors: _Errors) -> tuple[str | None, int, str]:
    """The optional delivery identity: `producer` with `seq` (and `part` for a split batch's part)."""
    producer, seq, part = document.get("producer"), document.get("seq"), document.get("part", "")
    if producer is None:
        for name in ("seq", "part"):
            if name in document:
                errors.add(name, "only with producer")
        return None, 0, ""
    if problem := _identity_problem(producer, seq, part):
        errors.add(*problem)
        return None, 0, ""
    assert isinstance(producer, str) and isinstance(seq, int) and isinstance(part, str)
    return producer, seq, part


def _identity_problem(producer: object, seq: object, part: object) -> tuple[str, str] | None:
    if not isinstance(producer, str) or not _PRODUCER.fullmatch(producer):
        return "producer", f"must be {PRODUCER_LEN[0]} to {PRODUCER_LEN[1]} lower-case hex digits"
    if type(seq) is not int or not 1 <= seq <= MAX_SEQ:
        return "seq", f"must be an integer in 1..{MAX_SEQ} (with producer)"
    if not isinstance(part, str) or not _PART.fullmatch(part):
        return "part", f"must be at most {MAX_PART_LEN} characters 0 and 1"
    return None


def _bucket_deltas(cells: dict[tuple[bytes, int, str], int]) -> list[BucketDelta]:
    return [_new_tuple(BucketDelta, (key, start, source, total)) for (key, start, source), total in cells.items()]


def _aggregate(
    records: list[Any], errors: _Errors, bucket: int, clamp: Clamp
) -> tuple[list[IpDelta], list[BucketDelta]]:
    """The full path's records: each checked by `_check_record`, which names every problem, and
    records of one address (several sources) merged into one delta. Speed is the fast paths'
    business: a body that reaches this loop came from a foreign client or holds an error."""
    totals = _Totals(bucket)
    for index, record in enumerate(records):
        checked = _check_record(index, record, errors, clamp)
        if checked is None or errors.items:
            continue  # the batch is rejected; keep validating only to list the errors
        ip, key, count, first, last = checked
        totals.add(ip, key, count, first, last, record["source"])
    return totals.result()


class _Totals:
    """Validated records -> per-address deltas and per (address, bucket, source) cells.

    The bucket of a record is the one holding its (clamped) `last_seen`; `bucket` is seconds per
    bucket (0: no cells)."""

    def __init__(self, bucket: int) -> None:
        self.bucket = bucket
        self.per_bucket = bucket * 1_000_000
        self.merged: dict[str, IpDelta] = {}
        self.cells: dict[tuple[bytes, int, str], int] = {}
        # A batch's first format 2 group, taken whole: its deltas and bucket deltas as lists.
        self.whole: tuple[list[IpDelta], list[BucketDelta]] | None = None

    def add(self, ip: str, key: bytes, count: int, first: int, last: int, source: str) -> None:
        if self.whole is not None:
            self._unfold()
        entry = self.merged.get(ip)
        if entry is None:
            self.merged[ip] = _new_tuple(IpDelta, (ip, key, count, first, last))
        else:
            self.merged[ip] = _merged(entry, count, first, last)
        if self.per_bucket:
            cell = (key, last // self.per_bucket * self.bucket, source[:MAX_LABEL])
            self.cells[cell] = self.cells.get(cell, 0) + count

    def add_group(self, ips: list[str], keys: list[bytes], counts: list[int], first: int, last: int,
                  source: str) -> None:
        """A format 2 group: one source and one span for all its records. The first group of a
        batch, with no address twice (the agent's every batch of one source), is taken whole:
        its rows are made by `map` and `zip` in C, with no Python code run per record. Anything
        else goes record by record."""
        if self.whole is not None or self.merged or len(set(ips)) != len(ips):
            for ip, key, count in zip(ips, keys, counts, strict=True):
                self.add(ip, key, count, first, last, source)
            return
        # (zip with repeat() cannot be strict; the three lists have one length, checked before)
        deltas = list(map(_new_tuple, repeat(IpDelta), zip(ips, keys, counts, repeat(first), repeat(last),
                                                              strict=False)))
        buckets: list[BucketDelta] = []
        if self.per_bucket:
            start = last // self.per_bucket * self.bucket
            buckets = list(map(_new_tuple, repeat(BucketDelta),
                               zip(keys, repeat(start), repeat(source[:MAX_LABEL]), counts, strict=False)))
        self.whole = deltas, buckets

    def _unfold(self) -> None:
        """The whole first group into the per-record dicts, for a second group to merge into."""
        assert self.whole is not None
        deltas, buckets = self.whole
        self.whole = None
        self.merged = {delta[0]: delta for delta in deltas}
        self.cells = {(key, start, source): total for key, start, source, total in buckets}

    def result(self) -> tuple[list[IpDelta], list[BucketDelta]]:
        if self.whole is not None:
            return self.whole
        return list(self.merged.values()), _bucket_deltas(self.cells)


# tuple.__new__(IpDelta, fields) builds the NamedTuple in C; IpDelta(...) would run its
# Python-level __new__, several times slower.
_new_tuple = tuple.__new__


def _merged(entry: IpDelta, count: int, first: int, last: int) -> IpDelta:
    """`entry` plus another record of the same address (another source)."""
    return _new_tuple(
        IpDelta,
        (
            entry[0],
            entry[1],
            entry[2] + count,
            first if first < entry[3] else entry[3],
            last if last > entry[4] else entry[4],
        ),
    )


class _Slow(Exception):
    pass


def _fast_time(text: Any, cache: dict[str, int], clamp: Clamp, moved: set[str]) -> int:
    """A `format_time`-style text (ending in Z) as clamped microseconds, cached; else _Slow.
    A text whose value was clamped goes into `moved` (the caller counts the fields)."""
    if type(text) is not str or text[-1:] != "Z":
        raise _Slow
    # Python 3.11 reads a trailing Z as UTC, so this equals protocol.parse_time here.
    micros = to_micros(datetime.fromisoformat(text))
    if not clamp.fits(micros):
        micros = clamp.micros(micros)
        moved.add(text)
    cache[text] = micros
    return micros


def _packed_canonical(ip: str, pton: Any = socket.inet_pton, ntop: Any = socket.inet_ntop,
                      inet: int = socket.AF_INET, inet6: int = socket.AF_INET6) -> bytes:
    """The packed form of a canonical, countable address text; `_Slow` when the full path must
    decide (inet_pton raises OSError for a text that is no address at all). The fast path's one
    address check: the socket functions are bound as defaults because it runs once per record.
    """
    if ":" in ip:
        key: bytes = pton(inet6, ip)
        if (ntop(inet6, key) != ip or "." in ip or ip == "::") and not _canonical_ipv6(ip):
            raise _Slow
    else:
        # inet_ntop(inet_pton(x)) == x holds exactly for canonical dotted quads.
        key = pton(inet, ip)
        if ntop(inet, key) != ip or ip == "0.0.0.0":
            raise _Slow
    return key


@functools.lru_cache(maxsize=65536)
def _canonical_ipv6(text: str) -> bool:
    """The IPv6 rule for spellings the round trip through inet_pton/inet_ntop does not settle.

    glibc's inet_ntop writes RFC 5952 like `ipaddress` does (lower case, no leading zeros, the
    first longest run of two or more zero groups as ::), except that it writes the IPv4-mapped
    and IPv4-compatible forms with a dotted quad, which `ipaddress` never does; and the round
    trip does not know that `::` is not counted. So a round trip that gives back the text, has
    no dot and is not `::` means canonical; anything else is decided here (cached: a batch
    rarely has many such spellings).
    """
    return len(text) <= 64 and is_canonical_ip(text)


# -- the fast path ----------------------------------------------------------------------------


class _WireRecord(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A record exactly as the agent sends it; msgspec checks the types and ranges in C."""

    ip: str
    count: Annotated[int, msgspec.Meta(ge=1, le=MAX_COUNT)]
    first_seen: str
    last_seen: str
    source: Annotated[str, msgspec.Meta(max_length=MAX_SOURCE_LEN)]


class _WireStream(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    id: str
    start: int
    end: int


class _WireBatch(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    agent: str
    batch_id: str
    sent_at: str
    records: list[_WireRecord]
    producer: str | None = None
    seq: int | None = None
    part: str = ""
    streams: list[_WireStream] | None = None


# Unknown fields are refused here (the full path ignores them): the fast path must never accept
# what the standard library would not decode, and an unknown field could hold anything (a
# number too long for int(), nesting deeper than the recursion limit, bytes that are not UTF-8).
# The ASCII check in parse_batch settles the encoding questions (BOM, UTF-16, lone surrogates
# encoded as bytes); msgspec refuses lone surrogate escapes, NaN and raw control characters.
_decode_wire = msgspec.json.Decoder(_WireBatch).decode


def _parse_fast(payload: bytes | bytearray, agent: str | None, bucket: int, clamp: Clamp) -> ValidBatch:
    """The agent's exact shape, all valid; `_Slow` (or a msgspec error) for anything else."""
    document = _decode_wire(payload)
    producer = document.producer
    if agent is not None and document.agent != agent and producer is None:
        raise AgentMismatch(document.agent, agent)
    if check_text(document.agent, MAX_AGENT_LEN) or check_text(document.batch_id, MAX_BATCH_ID_LEN):
        raise _Slow
    if (producer is not None or document.seq is not None or document.part) and _identity_problem(
            producer, document.seq, document.part):
        raise _Slow
    streams: tuple[tuple[str, int, int], ...] = ()
    if document.streams is not None:
        if producer is None or len(document.streams) > MAX_STREAMS_PER_BATCH:
            raise _Slow
        streams = tuple((w.id, w.start, w.end) for w in document.streams)
        if any(_stream_problem({"id": i, "start": a, "end": b}) for i, a, b in streams):
            raise _Slow
    sent_at = parse_any_time(document.sent_at)
    records = document.records
    if isinstance(sent_at, str) or len(records) > MAX_RECORDS_PER_BATCH:
        raise _Slow
    if any(check_source(source) for source in {r.source for r in records}):
        raise _Slow  # a batch has a few distinct sources: each is checked once
    sent_at, changed = clamp.moment(sent_at)
    deltas, buckets = _merge_fast(records, bucket, clamp)
    return ValidBatch(document.agent, document.batch_id, sent_at, len(records), deltas, buckets,
                 clamped=clamp.changed + changed, producer=producer, seq=document.seq or 0, part=document.part,
                 streams=streams)


def _merge_fast(records: list[_WireRecord], bucket: int, clamp: Clamp) -> tuple[list[IpDelta], list[BucketDelta]]:
    """`_aggregate` for typed format 1 records that must all be valid: the first doubt raises `_Slow`."""
    totals = _Totals(bucket)
    times: dict[str, int] = {}
    moved: set[str] = set()  # time texts whose value was clamped: rare, counted after the loop
    packed, add = _packed_canonical, totals.add
    try:
        for record in records:
            ip = record.ip
            first_text = record.first_seen
            first = times.get(first_text)
            if first is None:
                first = _fast_time(first_text, times, clamp, moved)
            last_text = record.last_seen
            last = times.get(last_text)
            if last is None:
                last = _fast_time(last_text, times, clamp, moved)
            if last < first:
                first, last = last, first
                clamp.changed += 1
            add(ip, packed(ip), record.count, first, last, record.source)
    except (OSError, ValueError):  # inet_pton refused the text; fromisoformat refused a time
        raise _Slow from None
    if moved:
        clamp.changed += sum((r.first_seen in moved) + (r.last_seen in moved) for r in records)
    return totals.result()


# -- format 2 (columnar) ----------------------------------------------------------------------


class _Group(msgspec.Struct, gc=False):
    """Records of one source sharing one time span: addresses and counts, position by position."""

    source: int
    first_seen: int
    last_seen: int
    ip: list[str]
    count: list[Annotated[int, msgspec.Meta(ge=1, le=MAX_COUNT)]]


class _Format2(msgspec.Struct, gc=False):
    """A format 2 body. Fields a collector does not know are ignored (docs/protocol.md: a field
    that must not be ignored comes with a new format number)."""

    format: Literal[2]
    agent: str
    batch_id: str
    sent_at: int
    sources: list[str]
    groups: list[_Group]
    producer: str | None = None
    seq: int | None = None
    part: str = ""
    streams: list[Any] | None = None  # checked by `_stream_problem`, which names each bad one


class _Named(msgspec.Struct, gc=False):
    """What an invalid format 2 body must still be read for: whose it says it is."""

    agent: Any = None
    producer: Any = None


_decode_format_2 = msgspec.json.Decoder(_Format2).decode
_decode_named = msgspec.json.Decoder(_Named).decode
_MSGSPEC_PATH = re.compile(r"^(?P<error>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)


def _decode_error(exc: msgspec.MsgspecError) -> FieldError:
    """msgspec's message (it names the path: `$.groups[0].count[3]`) as a field and an error."""
    match = _MSGSPEC_PATH.match(str(exc))
    assert match is not None  # the pattern matches any text
    path = (match.group("path") or "").lstrip(".")
    error = match.group("error")
    if isinstance(exc, msgspec.ValidationError):
        return FieldError(path or "body", error[:1].lower() + error[1:])
    return FieldError("body", f"not valid JSON: {error}")


def parse_format_2(payload: bytes | bytearray, agent: str | None = None, bucket: int = DEFAULT_BUCKET,
                   now: datetime | None = None) -> ValidBatch:
    """A format 2 body -> a validated `ValidBatch`, or `BatchInvalid` naming each field that is wrong.

    One path does both jobs: msgspec decodes into typed structs (no dict per record, types and
    count ranges checked in C) and names the field of a type error itself; the checks that
    follow name theirs. The addresses are checked with `_packed_canonical`; only a batch with a
    bad one pays for finding and naming it.
    """
    clamp = Clamp(now if now is not None else datetime.fromtimestamp(time.time(), UTC))
    try:
        document = _decode_format_2(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        if agent is not None:
            _check_named(payload, agent)
        raise BatchInvalid([_decode_error(exc)]) from None
    except RecursionError:
        raise BatchInvalid([FieldError("body", "not valid JSON: nested too deeply")]) from None
    producer = document.producer
    if agent is not None and document.agent != agent and producer is None:
        raise AgentMismatch(document.agent, agent)
    errors = _Errors()
    try:
        _check_head(document, errors)
    except _TooManyErrors:
        errors.items.append(FieldError("body", f"more than {MAX_ERRORS} errors; the rest are not listed"))
    if errors.items:
        raise BatchInvalid(errors.items)
    totals = _Totals(bucket)
    records = 0
    for index, group in enumerate(document.groups):
        first, last = clamp.micros(group.first_seen), clamp.micros(group.last_seen)
        size = len(group.ip)
        clamp.changed += size * ((first != group.first_seen) + (last != group.last_seen))
        if last < first:
            first, last = last, first
            clamp.changed += size
        totals.add_group(group.ip, _keys(group.ip, index), group.count, first, last,
                         document.sources[group.source])
        records += size
    sent_at = clamp.micros(document.sent_at)
    clamp.changed += sent_at != document.sent_at
    deltas, buckets = totals.result()
    streams = tuple((s["id"], s["start"], s["end"]) for s in document.streams or ()) if producer is not None else ()
    return ValidBatch(document.agent, document.batch_id, from_micros(sent_at), records, deltas, buckets,
                 clamped=clamp.changed, producer=producer, seq=document.seq or 0, part=document.part,
                 streams=streams)


def _check_named(payload: bytes | bytearray, agent: str) -> None:
    """An invalid body that names another agent (and no producer) is a 403, as in format 1."""
    try:
        named = _decode_named(payload)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return
    if isinstance(named.agent, str) and named.agent != agent and named.producer is None:
        raise AgentMismatch(named.agent, agent)


def _check_head(document: _Format2, errors: _Errors) -> None:
    """Everything but the addresses: names, identity, sources, group shapes, the record count."""
    if problem := check_text(document.agent, MAX_AGENT_LEN):
        errors.add("agent", problem)
    if problem := check_text(document.batch_id, MAX_BATCH_ID_LEN):
        errors.add("batch_id", problem)
    if document.producer is None:
        if document.seq is not None:
            errors.add("seq", "only with producer")
        if document.part:
            errors.add("part", "only with producer")
    elif problem_at := _identity_problem(document.producer, document.seq, document.part):
        errors.add(*problem_at)
    if document.streams is not None:
        if document.producer is None:
            errors.add("streams", "only with producer")
        elif len(document.streams) > MAX_STREAMS_PER_BATCH:
            errors.add("streams", f"must be an array of at most {MAX_STREAMS_PER_BATCH} streams")
        else:
            for index, item in enumerate(document.streams):
                if problem := _stream_problem(item):
                    errors.add(f"streams[{index}]", problem)
    for index, source in enumerate(document.sources):
        if problem := check_source(source):
            errors.add(f"sources[{index}]", problem)
    records = 0
    for index, group in enumerate(document.groups):
        if not 0 <= group.source < len(document.sources):
            errors.add(f"groups[{index}].source", f"not an index of sources (0..{len(document.sources) - 1})")
        if len(group.count) != len(group.ip):
            errors.add(f"groups[{index}].count", f"has {len(group.count)} entries, ip has {len(group.ip)}")
        records += len(group.ip)
    if records > MAX_RECORDS_PER_BATCH:
        errors.add("groups", f"more than {MAX_RECORDS_PER_BATCH} records")


_PTON, _NTOP = socket.inet_pton, socket.inet_ntop


def _keys(ips: list[str], group: int) -> list[bytes]:
    """The packed addresses of a group, all canonical and countable, or `BatchInvalid` naming the
    ones that are not (`groups[0].ip[7]`)."""
    try:
        # All IPv4 (most groups): packed and spelled back by C calls only; canonical exactly when
        # the spelling comes back unchanged.
        keys = list(map(_PTON, repeat(socket.AF_INET), ips))
        if list(map(_NTOP, repeat(socket.AF_INET), keys)) == ips and "0.0.0.0" not in ips:
            return keys
    except (OSError, TypeError):
        pass
    try:
        return list(map(_packed_canonical, ips))
    except (_Slow, OSError, TypeError):
        pass
    keys, errors = [], _Errors()
    try:
        for index, ip in enumerate(ips):
            if problem := check_ip(ip):
                errors.add(f"groups[{group}].ip[{index}]", problem)
            else:
                keys.append(ip_key(ip))
    except _TooManyErrors:
        errors.items.append(FieldError("body", f"more than {MAX_ERRORS} errors; the rest are not listed"))
    if errors.items:
        raise BatchInvalid(errors.items)
    return keys


def _check_record(index: int, record: Any, errors: _Errors,
                  clamp: Clamp) -> tuple[str, bytes, int, int, int] | None:
    """The slow path: full checks, each failure reported under its field path."""
    where = f"records[{index}]"
    if not isinstance(record, dict):
        errors.add(where, "must be a JSON object")
        return None
    before = len(errors.items)
    missing = [name for name in ("ip", "count", "first_seen", "last_seen", "source") if name not in record]
    for name in missing:
        errors.add(f"{where}.{name}", "is required")
    ip = record.get("ip")
    if "ip" in record and (problem := check_ip(ip)):
        errors.add(f"{where}.ip", problem)
    count = record.get("count")
    if "count" in record and (type(count) is not int or not 1 <= count <= MAX_COUNT):
        errors.add(f"{where}.count", f"must be an integer in 1..{MAX_COUNT}")
    times: list[int] = []
    for name in ("first_seen", "last_seen"):
        if name in record:
            moment = parse_any_time(record[name])
            if isinstance(moment, str):
                errors.add(f"{where}.{name}", moment)
            else:
                times.append(to_micros(moment))
    if "source" in record and (problem := check_source(record["source"])):
        errors.add(f"{where}.source", problem)
    if len(errors.items) > before:
        return None
    assert isinstance(ip, str) and isinstance(count, int)
    first, last = (clamp.micros(t) for t in times)
    clamp.changed += sum(not clamp.fits(t) for t in times)
    if last < first:
        first, last = last, first
        clamp.changed += 1
    return ip, ip_key(ip), count, first, last
