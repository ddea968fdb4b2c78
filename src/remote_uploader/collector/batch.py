"""A protocol v1 batch body -> a validated, aggregated `Batch`, or every reason it is not one.

Validation is all-or-nothing: one bad field rejects the batch (400) and nothing of it is stored,
because the agent sends a rejected batch to its dead-letter table as a whole.

Times are not a reason to reject a batch the agent wrote: an agent's clock can be stepped (NTP,
an operator, a dead RTC battery) and a batch refused for its times would be refused for ever,
however often it is requeued. So a time later than the arrival time plus `FUTURE_SKEW` is set to
the arrival time, one before 1970 to 1970, and a record whose `last_seen` is before its
`first_seen` (an old agent wrote that when its clock went back inside a batch) has the two
swapped. `Batch.clamped` counts the time fields changed (a metric and a log line at ingest); only
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
import operator
import re
import socket
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec

from remote_uploader.collector.storage.base import Batch, IpDelta, from_micros, to_micros
from remote_uploader.collector.storage.model import MAX_LABEL, BucketDelta
from remote_uploader.errors import AgentMismatch, BatchInvalid, FieldError
from remote_uploader.protocol import (
    FUTURE_SKEW,
    MAX_AGENT_LEN,
    MAX_BATCH_ID_LEN,
    MAX_COUNT,
    MAX_PART_LEN,
    MAX_RECORDS_PER_BATCH,
    MAX_SEQ,
    MAX_SOURCE_LEN,
    PRODUCER_LEN,
    check_ip,
    check_text,
    ip_key,
    is_canonical_ip,
    parse_any_time,
)

MAX_ERRORS = 100  # a body with a million bad fields gets a bounded answer

_PRODUCER = re.compile(rf"[0-9a-f]{{{PRODUCER_LEN[0]},{PRODUCER_LEN[1]}}}")
_PART = re.compile(rf"[01]{{0,{MAX_PART_LEN}}}")


class _TooManyErrors(Exception):
    pass


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


def validate_batch(document: Any, bucket: int = DEFAULT_BUCKET, now: datetime | None = None) -> Batch:
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
                now: datetime | None = None) -> Batch:
    """Decode and validate a batch body; raise `BatchInvalid` listing what is wrong.

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
    if payload.isascii():
        try:
            return _parse_fast(payload, agent, bucket, Clamp(now))
        except (_Slow, msgspec.DecodeError, RecursionError):
            pass  # not in the agent's exact shape: the full path decides, and names every problem
    return parse_full(payload, agent, bucket, now)


def parse_full(payload: bytes | bytearray, agent: str | None = None, bucket: int = DEFAULT_BUCKET,
               now: datetime | None = None) -> Batch:
    """The full path alone: decode, check the agent's name, validate, naming every problem.

    What `parse_batch` falls back to; the fast path must agree with it on every body it takes.
    """
    document = decode_body(payload)
    if agent is not None and isinstance(document, dict) and document.get("producer") is None:
        named = document.get("agent")
        if isinstance(named, str) and named != agent:
            raise AgentMismatch(named, agent)
    return validate_batch(document, bucket, now)


def _validate(document: Any, errors: _Errors, bucket: int, clamp: Clamp) -> Batch | None:
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
    if errors.items or not isinstance(records, list):
        return None
    assert isinstance(agent, str) and isinstance(batch_id, str) and isinstance(sent_at, datetime)
    sent_at, changed = clamp.moment(sent_at)
    deltas, buckets = _aggregate(records, errors, bucket, clamp)
    return Batch(agent, batch_id, sent_at, len(records), deltas, buckets, clamped=clamp.changed + changed,
                 producer=producer, seq=seq, part=part)


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
    """Validate every record and merge records of one address (several sources) into one delta.

    The fast path takes a record whose fields are all well-formed in the form the agent sends
    (`format_time` times ending in Z); anything unusual, valid or not, falls to `_check_record`,
    which decides and names every problem. The fast path only accepts what the slow one would.
    """
    merged: dict[str, IpDelta] = {}
    # The agent stamps records with read times, and a batch holds few distinct ones: parse each
    # text once. Only texts that passed the fast checks below are cached.
    times: dict[str, int] = {}
    cells: dict[tuple[bytes, int, str], int] = {}
    per_bucket = bucket * 1_000_000
    moved: set[str] = set()  # time texts whose value was clamped
    packed, new = _packed_canonical, _new_tuple
    for index, record in enumerate(records):
        try:
            ip = record["ip"]
            count = record["count"]
            first_text = record["first_seen"]
            last_text = record["last_seen"]
            source = record["source"]
            key = packed(ip)
            if (
                type(count) is not int
                or not 0 < count <= MAX_COUNT
                or type(source) is not str
                or len(source) > MAX_SOURCE_LEN
            ):
                raise _Slow
            first = times.get(first_text)
            if first is None:
                first = _fast_time(first_text, times, clamp, moved)
            last = times.get(last_text)
            if last is None:
                last = _fast_time(last_text, times, clamp, moved)
            if moved:
                clamp.changed += (first_text in moved) + (last_text in moved)
            if last < first:
                first, last = last, first
                clamp.changed += 1
        except (_Slow, KeyError, TypeError, ValueError, OSError):
            checked = _check_record(index, record, errors, clamp)
            if checked is None:
                continue
            ip, key, count, first, last = checked
            source = record["source"]
        if errors.items:
            continue  # the batch is rejected; keep validating only to list the errors
        entry = merged.get(ip)
        if entry is None:
            merged[ip] = new(IpDelta, (ip, key, count, first, last))
        else:
            merged[ip] = _merged(entry, count, first, last)
        if per_bucket:
            cell = (key, last // per_bucket * bucket, source[:MAX_LABEL])
            cells[cell] = cells.get(cell, 0) + count
    return _in_order(merged), _bucket_deltas(cells)


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


def _in_order(merged: dict[str, IpDelta]) -> list[IpDelta]:
    """The deltas sorted by address. The values are walked in the order they were made (and lie
    in memory), the sort moves pointers only: looking each address up in sorted order instead
    would cost a cache miss or two per address, more than the sort itself."""
    return sorted(merged.values(), key=_IP)


_IP = operator.itemgetter(0)


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


class _WireBatch(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    agent: str
    batch_id: str
    sent_at: str
    records: list[_WireRecord]
    producer: str | None = None
    seq: int | None = None
    part: str = ""


# Unknown fields are refused here (the full path ignores them): the fast path must never accept
# what the standard library would not decode, and an unknown field could hold anything (a
# number too long for int(), nesting deeper than the recursion limit, bytes that are not UTF-8).
# The ASCII check in parse_batch settles the encoding questions (BOM, UTF-16, lone surrogates
# encoded as bytes); msgspec refuses lone surrogate escapes, NaN and raw control characters.
_decode_wire = msgspec.json.Decoder(_WireBatch).decode


def _parse_fast(payload: bytes | bytearray, agent: str | None, bucket: int, clamp: Clamp) -> Batch:
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
    sent_at = parse_any_time(document.sent_at)
    records = document.records
    if isinstance(sent_at, str) or len(records) > MAX_RECORDS_PER_BATCH:
        raise _Slow
    sent_at, changed = clamp.moment(sent_at)
    deltas, buckets = _merge_fast(records, bucket, clamp)
    return Batch(document.agent, document.batch_id, sent_at, len(records), deltas, buckets,
                 clamped=clamp.changed + changed, producer=producer, seq=document.seq or 0, part=document.part)


def _merge_fast(
    records: list[_WireRecord], bucket: int, clamp: Clamp
) -> tuple[list[IpDelta], list[BucketDelta]]:
    """`_aggregate` for typed records that must all be valid: the first doubt raises `_Slow`.

    Besides the per-address deltas, the per (address, bucket, source) cells of the time
    buckets: the bucket of a record is the one holding its (clamped) `last_seen`."""
    merged: dict[str, IpDelta] = {}
    times: dict[str, int] = {}
    cells: dict[tuple[bytes, int, str], int] = {}
    per_bucket = bucket * 1_000_000
    moved: set[str] = set()  # time texts whose value was clamped: rare, counted after the loop
    packed, new = _packed_canonical, _new_tuple
    try:
        for record in records:
            ip = record.ip
            key = packed(ip)
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
            count = record.count
            entry = merged.get(ip)
            if entry is None:
                merged[ip] = new(IpDelta, (ip, key, count, first, last))
            else:
                merged[ip] = _merged(entry, count, first, last)
            if per_bucket:
                cell = (key, last // per_bucket * bucket, record.source[:MAX_LABEL])
                cells[cell] = cells.get(cell, 0) + count
    except (OSError, ValueError):  # inet_pton refused the text; fromisoformat refused a time
        raise _Slow from None
    if moved:
        clamp.changed += sum((r.first_seen in moved) + (r.last_seen in moved) for r in records)
    return _in_order(merged), _bucket_deltas(cells)


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
    if "source" in record and (problem := check_text(record["source"], MAX_SOURCE_LEN, empty=True)):
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
