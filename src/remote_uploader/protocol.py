"""The wire schema shared by the agent and the collector (protocol v1, see docs/protocol.md).

Two body formats go to one endpoint, told apart by their media type: format 1 (`MEDIA_V1`, a
record per object, RFC 3339 times) and format 2 (`MEDIA_V2`, columnar: a source table and, per
group of records sharing a source and a time span, an array of addresses and one of counts,
times in integer microseconds). A collector lists the formats it takes in every answer's
`Accept-Post` header; an agent sends format 2 only to a collector that listed it.

Both sides import this module so that "canonical IP", "a valid record" and "an RFC 3339 time"
mean exactly the same thing at both ends of the wire. The agent only ever sends canonical
addresses; the collector rejects anything else, so one address can never be stored under two keys.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

BATCHES_PATH = "/v1/batches"
HEALTH_PATH = "/v1/health"
WHOAMI_PATH = "/v1/whoami"
# The delivered byte ranges of one producer's streams (docs/protocol.md, "Streams"): what `reset-state` asks
# after the queue database was destroyed, to skip what the collector stored but never acknowledged.
STREAMS_PATH = "/v1/producers/{producer}/streams"
# The agent's report of its queue (docs/protocol.md, "Agent status"): a request header on every
# batch, and the body of a heartbeat when the agent has nothing to send.
STATUS_HEADER = "Agent-Status"
STATUS_PATH = "/v1/agent-status"
MAX_STATUS_LEN = 4096  # bytes of the report's JSON: a header, far under every server's head limit
MAX_STATUS_SOURCES = 32  # per-source read lags in one report: the most behind first
MAX_VERSION_LEN = 64
MAX_REPORT_NUMBER = 2**53 - 1

MEDIA_V1 = "application/json"
MEDIA_V2 = "application/vnd.remote-uploader.v2+json"
#: The answer header that lists the body formats a collector takes (its media types).
ACCEPT_POST = "Accept-Post"
ACCEPTED_MEDIA = f"{MEDIA_V1}, {MEDIA_V2}"

MAX_AGENT_LEN = 128
MAX_BATCH_ID_LEN = 128
MAX_SOURCE_LEN = 4096
MAX_RECORDS_PER_BATCH = 100_000
# Delivery identity (docs/protocol.md, "Idempotency"): a producer is one agent state directory,
# named by random hex; its sealed batches are numbered 1, 2, 3... (`seq`); the parts of a batch
# split after a 413 keep its number and add a path of halves (`part`: "0", "1", "01"...).
PRODUCER_LEN = (16, 64)  # hex digits
MAX_SEQ = 2**53 - 1  # exact in every JSON implementation and in a 64-bit column
MAX_PART_LEN = 64  # halvings: far more than 100,000 records can take
# `streams`: per file record (stream: a random id, new for each incarnation of the file's content) the
# byte range [start, end) the batch covers; optional, only with a producer.
STREAM_ID_LEN = (16, 64)  # hex digits
MAX_STREAMS_PER_BATCH = 10_000
MAX_OFFSET = 2**63 - 1
# A record's count is at most 2**40: far above any real batch, and low enough that the sum of a
# whole batch for one address (at most 2**40 * 100,000 < 2**57) fits a 64-bit integer.
MAX_COUNT = 2**40
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 12, 31, tzinfo=UTC)
# How far ahead of the collector's clock a batch's times may be before they are clamped.
FUTURE_SKEW = timedelta(minutes=5)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# An address range as both sides parse it (`ipaddress.ip_network`): allowlists, CIDR filters.
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def canonical_ip(text: str) -> str | None:
    """Return the canonical spelling of an address, or None if `text` is not one we count.

    Canonical means: IPv4 dotted quad without leading zeros; IPv6 compressed lowercase (RFC 5952);
    IPv4-mapped IPv6 (``::ffff:a.b.c.d``) reported as the IPv4 address, because a block applied to
    the mapped spelling would never match the IPv4 traffic. Unspecified addresses (``0.0.0.0``,
    ``::``) are not counted. Zone ids, ports and brackets must have been removed by the caller.
    """
    try:
        # What ipaddress.ip_address does, without first failing as IPv4 on every IPv6 address
        # (IPv4Address refuses any text with a colon; IPv6Address any text without one).
        addr: ipaddress.IPv4Address | ipaddress.IPv6Address = (
            ipaddress.IPv6Address(text) if ":" in text else ipaddress.IPv4Address(text))
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id is not None:
            return None
        mapped = addr.ipv4_mapped
        if mapped is not None:
            return None if mapped.is_unspecified else str(mapped)
        if addr.is_unspecified:
            return None
        return _v6_str(addr)
    if addr.is_unspecified:
        return None
    return str(addr)


def _v6_str_ipaddress(addr: ipaddress.IPv6Address) -> str:
    return str(addr)


def _v6_str_ntop(addr: ipaddress.IPv6Address) -> str:
    """str(addr), written by the C library's inet_ntop: a third of the time of ipaddress's Python
    formatting (the IPv6 judge of the agent's extraction formats each distinct candidate once: on
    the nginx workload that was 5-8% of `once`'s CPU). Both write RFC 5952's form (the first
    longest run of two or more zero groups as `::`, lowercase, no leading zeros) except where the
    first 80 bits are zero and the next 16 are 0 or ffff, which inet_ntop writes with a dotted quad
    (`::1.2.3.4`, `::ffff:1.2.3.4`): those go to ipaddress. Used only where `_NTOP_AGREES`
    (checked once at import on the cases where C libraries are known to differ), so the text is
    always ipaddress's (tests/common/test_protocol_ip.py)."""
    packed = addr.packed
    if packed[:10] == _ZERO_80 and packed[10:12] in _DOTTED_WORD_5:
        return str(addr)
    return socket.inet_ntop(socket.AF_INET6, packed)


_ZERO_80 = bytes(10)
_DOTTED_WORD_5 = (b"\0\0", b"\xff\xff")
# Zero runs of one, two and more, first and last, ties (the first longest wins), hex case.
_NTOP_CASES = ("1::", "::1:0:0:0:0:0", "1:0:2:0:0:3:0:0", "1:0:0:2:0:0:3:4", "1:0:1:0:1:0:1:0",
               "2001:db8:0:0:1:0:0:1", "2001:DB8::ABCD:0:0:1", "fe80::1:0:0:0", "0:1::", "1:2:3:4:5:6:7:0",
               "1:ffff::1.2.3.4", "0:0:0:1::", "0:0:1::2", "0:0:0:0:0:1:0:0", "0:0:0:0:1:0:0:0",
               "0:0:0:0:1:ffff:1:2", "0:0:0:0:0:fffe:1:2")
try:
    _NTOP_AGREES = all(_v6_str_ntop(ipaddress.IPv6Address(case)) == str(ipaddress.IPv6Address(case))
                       for case in _NTOP_CASES)
except (OSError, ValueError, AttributeError):  # no inet_ntop here, or one that refuses
    _NTOP_AGREES = False
_v6_str = _v6_str_ntop if _NTOP_AGREES else _v6_str_ipaddress


def ip_key(ip: str) -> bytes:
    """The packed form of a canonical address: 4 bytes for IPv4, 16 for IPv6."""
    if ":" in ip:
        return socket.inet_pton(socket.AF_INET6, ip)
    return socket.inet_aton(ip)


def is_canonical_ip(text: str) -> bool:
    """True when `text` is a countable address already in its canonical spelling."""
    return canonical_ip(text) == text


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with a `Z` suffix and microseconds: sortable as text, exact as a value."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def format_timestamp(seconds: float) -> str:
    return format_time(datetime.fromtimestamp(seconds, UTC))


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_micros(moment: datetime) -> int:
    """Exact integer microseconds since the epoch (format 2's times; no float rounding)."""
    return (moment - EPOCH) // _MICROSECOND


def format_micros(micros: int) -> str:
    """Format 2's integer time as format 1's text: the same instant, the same spelling."""
    return format_time(EPOCH + timedelta(microseconds=micros))


def timestamp_micros(seconds: float) -> int:
    """A POSIX timestamp as format 2 writes it: rounded to the microsecond as `format_timestamp`
    rounds it, so a batch converted from one format to the other keeps its times exactly."""
    return to_micros(datetime.fromtimestamp(seconds, UTC))


def parse_time(text: str) -> datetime:
    """Parse an RFC 3339 time; a time without an offset is rejected (it would be ambiguous)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"time {text!r} has no UTC offset")
    return moment.astimezone(UTC)


# -- the checks both sides make (the collector answers 400 naming the field) -----------------


def check_ip(ip: object) -> str | None:
    """None if `ip` is a countable address in canonical form, else the reason it is not."""
    if not isinstance(ip, str):
        return "must be a string"
    if ip in ("0.0.0.0", "::"):
        return "not a countable address (unspecified)"
    if len(ip) > 64 or not is_canonical_ip(ip):
        return "not a canonical IP address"
    return None


def check_text(value: object, limit: int, *, empty: bool = False) -> str | None:
    """None if `value` is a storable string of at most `limit` characters, else the reason."""
    if not isinstance(value, str):
        return "must be a string"
    if not value and not empty:
        return "must not be empty"
    if len(value) > limit:
        return f"longer than {limit} characters"
    if _CONTROL.search(value):
        return "contains control characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "not valid Unicode text (lone surrogate)"
    return None


def check_time(value: object) -> datetime | str:
    """The parsed time, or the reason `value` is not an RFC 3339 time with an offset."""
    moment = parse_any_time(value)
    if isinstance(moment, datetime) and not EARLIEST <= moment <= LATEST:
        return "outside 1970-01-01 .. 9999-12-31"
    return moment


def parse_any_time(value: object) -> datetime | str:
    """The parsed time, whatever its year, or the reason `value` is not an RFC 3339 time."""
    if not isinstance(value, str):
        return "must be an RFC 3339 string"
    try:
        return parse_time(value)
    except (ValueError, OverflowError):
        return "not an RFC 3339 time with a UTC offset"


@dataclass(frozen=True, slots=True)
class Record:
    """One address seen `count` times in one source between `first_seen` and `last_seen` (RFC 3339)."""

    ip: str
    count: int
    first_seen: str
    last_seen: str
    source: str

    def to_json(self) -> dict[str, Any]:
        return {
            "ip": self.ip,
            "count": self.count,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "source": self.source,
        }


def encode_records(records: list[Record]) -> bytes:
    """The records part of a batch, as stored in the agent's queue (compact JSON array)."""
    return json.dumps([r.to_json() for r in records], separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class AgentReport:
    """What an agent says of itself (docs/protocol.md, "Agent status"): its version, what its
    queue holds, and since when its uploads fail. Ages are seconds *as the agent measures them*
    at the moment it sends, so a clock that is off moves nothing: the collector subtracts them
    from its own arrival time."""

    version: str = ""
    queued_batches: int = 0
    queued_records: int = 0
    queued_bytes: int = 0
    oldest_age: float | None = None  # seconds since the oldest queued batch was sealed; None: empty
    failing_for: float = 0.0  # seconds since uploads started failing; 0: the last one passed
    dead_batches: int = 0
    sources: tuple[tuple[str, int], ...] = ()  # (log file, bytes not read yet), most behind first

    def encode(self) -> str:
        """Compact ASCII JSON (it travels as a header), cut to MAX_STATUS_LEN by dropping the
        least-behind sources first: the queue figures always fit."""
        fields: dict[str, object] = {
            "version": self.version[:MAX_VERSION_LEN], "queued_batches": self.queued_batches,
            "queued_records": self.queued_records, "queued_bytes": self.queued_bytes,
            "oldest_age": None if self.oldest_age is None else round(self.oldest_age, 3),
            # A failure under a millisecond old is still a failure: never rounded to "passing".
            "failing_for": max(round(self.failing_for, 3), 0.001) if self.failing_for > 0 else 0,
            "dead_batches": self.dead_batches,
        }
        sources = [[name[:MAX_SOURCE_LEN], lag] for name, lag in self.sources[:MAX_STATUS_SOURCES]]
        while True:
            text = json.dumps({**fields, "sources": sources}, separators=(",", ":"))
            if len(text) <= MAX_STATUS_LEN or not sources:
                return text
            sources.pop()


def parse_report(text: str | bytes) -> AgentReport | str:
    """The report in `text`, or the reason it is not one. Unknown fields are ignored (a newer
    agent may say more); a missing one takes its default."""
    if len(text) > MAX_STATUS_LEN:
        return f"longer than {MAX_STATUS_LEN} bytes"
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        return "not valid JSON"
    if not isinstance(document, dict):
        return "must be a JSON object"
    version = document.get("version", "")
    if problem := check_text(version, MAX_VERSION_LEN, empty=True):
        return f"version: {problem}"
    counts: dict[str, int] = {}
    for name in ("queued_batches", "queued_records", "queued_bytes", "dead_batches"):
        value = document.get(name, 0)
        if not _is_int(value) or not 0 <= value <= MAX_REPORT_NUMBER:
            return f"{name}: must be an integer in 0..{MAX_REPORT_NUMBER}"
        counts[name] = value
    ages: dict[str, float | None] = {}
    for name in ("oldest_age", "failing_for"):
        value = document.get(name)
        if value is None:
            ages[name] = None
        elif _is_int(value) or isinstance(value, float):
            if not 0 <= value <= MAX_REPORT_NUMBER:  # also refuses NaN
                return f"{name}: must be a number of seconds in 0..{MAX_REPORT_NUMBER}"
            ages[name] = float(value)
        else:
            return f"{name}: must be a number of seconds"
    raw = document.get("sources", [])
    if not isinstance(raw, list) or len(raw) > MAX_STATUS_SOURCES:
        return f"sources: must be a list of at most {MAX_STATUS_SOURCES} [file, bytes behind] pairs"
    sources = []
    for index, item in enumerate(raw):
        if (not isinstance(item, list) or len(item) != 2 or check_text(item[0], MAX_SOURCE_LEN, empty=True)
                or not _is_int(item[1]) or not 0 <= item[1] <= MAX_REPORT_NUMBER):
            return f"sources[{index}]: must be [file, bytes behind]"
        sources.append((str(item[0]), int(item[1])))
    return AgentReport(str(version), oldest_age=ages["oldest_age"], failing_for=ages["failing_for"] or 0.0,
                       sources=tuple(sources), **counts)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def encode_batch(agent: str, batch_id: str, sent_at: str, records_json: bytes, producer: str | None = None,
                 seq: int | None = None, part: str = "",
                 streams: Sequence[tuple[str, int, int]] = ()) -> bytes:
    """The POST body of protocol v1, built around an already-encoded records array.

    The queue stores the records array encoded once at seal time; sending only wraps it,
    so a retry sends byte-identical records under the same batch id. `producer`, `seq` and
    `part` are the batch's delivery identity (absent in batches of agents before it); `streams`
    (with a producer) the byte ranges of the files it covers, (stream id, start, end).
    """
    fields: dict[str, object] = {"agent": agent, "batch_id": batch_id, "sent_at": sent_at}
    if producer is not None and seq is not None:
        fields.update(producer=producer, seq=seq)
        if part:
            fields["part"] = part
        if streams:
            fields["streams"] = [{"id": sid, "start": start, "end": end} for sid, start, end in streams]
    head = json.dumps(fields, separators=(",", ":"))
    return head[:-1].encode() + b',"records":' + records_json + b"}"
