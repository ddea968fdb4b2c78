"""A fault-injecting receiver for the ingest side of protocol v1, used by the agent's tests.

The agent promises that every IP occurrence is counted exactly once whatever fails. To prove it, the
tests need a peer that counts exactly (idempotent by batch id, like the collector) and that fails on
demand in every way a network and a server can: error statuses, connection resets before and after a
batch is stored, slow answers, a closed port, a restart. This is that peer: standard library only,
so it cannot share a bug with the collector or the agent.

    RequestLog      one request as the receiver saw it (the tests read these)
    Store           per-IP totals and seen batch ids: MemoryStore, SqliteStore (survives SIGKILL)
    FaultPlan       what goes wrong next: scripted (`*_next`) and seeded random (`*_fraction`) faults
    FaultControls   the fault vocabulary, written once; shared with the subprocess client
    Receiver        the HTTP server in a thread, stoppable and restartable on the same port
    main()          ``python -m tests.helpers.receiver --port 0 --token T --state FILE [--fault-plan JSON]``

Faults apply to ``POST /v1/batches`` only. ``GET /v1/health`` and the control channel (``/_control``,
``/_counts``, ``/_log``, ``/_wait``, bearer token required, used by the tests only) are never faulted,
and the control channel is not in the request log.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import ipaddress
import json
import logging
import random
import signal
import socket
import socketserver
import sqlite3
import struct
import sys
import threading
import time
import zlib
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)

BATCHES_PATH = "/v1/batches"
HEALTH_PATH = "/v1/health"
HARD_BODY_CAP = 64 * 1024 * 1024  # refused even with no limit set: keeps the test run alive
JOIN_TIMEOUT = 5.0  # a handler thread still running this long after stop is reported, not waited for
BIND_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class RequestLog:
    """One request to ``/v1/...``. Logged when it ends (answered, reset or dropped), just before the
    answer is sent, so a client holding an answer always finds its entry; `time` is its arrival."""

    method: str
    path: str
    time: float  # time.monotonic() at arrival: comparable across processes on one Linux host
    body_bytes: int = 0  # as received, before decompression
    batch_id: str | None = None  # None when the body was not read as a batch
    records: int = 0
    status: int | None = None  # None: reset or dropped instead of answered
    duplicate: bool | None = None  # None unless the batch reached the store
    stored: bool = False  # True only when this request added counts
    fault: str | None = None  # the injected fault, e.g. "status_503", "reset_after_store"


# --- storage -------------------------------------------------------------------------------------


class Store:
    """Per-IP totals and the batch ids seen; one lock-protected condition so waiters wake on change."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.RLock())

    def apply(self, batch_id: str, records: Sequence[tuple[str, int]],
              streams: Sequence[tuple[str, str, int, int]] = ()) -> bool:
        """Count a batch unless its id was seen; True when it was new. Atomic per batch, with its
        `streams` ranges (producer, stream, start, end), kept only for a whole batch (the protocol:
        a split batch's ranges count once the parts make the whole; this peer, simpler and on the
        safe side, never records them for parts)."""
        with self._cond:
            new = self._apply(batch_id, records, streams)
            if new:
                self._cond.notify_all()
            return new

    def streams(self, producer: str) -> dict[str, list[list[int]]]:
        """Per stream of `producer`, its stored ranges [start, end), sorted and merged."""
        with self._cond:
            merged: dict[str, list[list[int]]] = {}
            for stream, start, end in sorted(self._streams(producer)):
                ranges = merged.setdefault(stream, [])
                if ranges and start <= ranges[-1][1]:
                    ranges[-1][1] = max(ranges[-1][1], end)
                else:
                    ranges.append([start, end])
            return merged

    def counts(self) -> dict[str, int]:
        with self._cond:
            return self._counts()

    def total(self) -> int:
        with self._cond:
            return self._total()

    def batch_ids(self) -> set[str]:
        with self._cond:
            return self._batch_ids()

    def wait_for_total(self, total: int, timeout: float, cancel: threading.Event | None = None) -> bool:
        """Block until the total reaches `total` (True) or `timeout` passes; woken by each new batch."""
        with self._cond:
            self._cond.wait_for(lambda: self._total() >= total or bool(cancel and cancel.is_set()), timeout)
            return self._total() >= total

    def wake(self) -> None:
        """Let waiters re-check their cancel event (the server is stopping)."""
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        """Release resources; the base keeps nothing open."""

    def _apply(self, batch_id: str, records: Sequence[tuple[str, int]],
               streams: Sequence[tuple[str, str, int, int]]) -> bool:
        raise NotImplementedError

    def _streams(self, producer: str) -> list[tuple[str, int, int]]:
        raise NotImplementedError

    def _counts(self) -> dict[str, int]:
        raise NotImplementedError

    def _total(self) -> int:
        raise NotImplementedError

    def _batch_ids(self) -> set[str]:
        raise NotImplementedError


class MemoryStore(Store):
    """The in-thread default: lives in the Receiver object, so it outlives restarts and refusals."""

    def __init__(self) -> None:
        super().__init__()
        self._by_ip: dict[str, int] = {}
        self._ids: set[str] = set()
        self._sum = 0
        self._ranges: list[tuple[str, str, int, int]] = []

    def _apply(self, batch_id: str, records: Sequence[tuple[str, int]],
               streams: Sequence[tuple[str, str, int, int]]) -> bool:
        if batch_id in self._ids:
            return False
        self._ids.add(batch_id)
        self._ranges.extend(streams)
        for ip, count in records:
            self._by_ip[ip] = self._by_ip.get(ip, 0) + count
            self._sum += count
        return True

    def _counts(self) -> dict[str, int]:
        return dict(self._by_ip)

    def _streams(self, producer: str) -> list[tuple[str, int, int]]:
        return [(stream, start, end) for p, stream, start, end in self._ranges if p == producer]

    def _total(self) -> int:
        return self._sum

    def _batch_ids(self) -> set[str]:
        return set(self._ids)


class SqliteStore(Store):
    """A file that survives SIGKILL of the receiver process, so a test can kill it mid-ingest."""

    DDL = (
        "CREATE TABLE IF NOT EXISTS batches (batch_id TEXT PRIMARY KEY) WITHOUT ROWID",
        "CREATE TABLE IF NOT EXISTS counts (ip TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID",
        "CREATE TABLE IF NOT EXISTS streams (producer TEXT, stream TEXT, start INTEGER, end_ INTEGER)",
    )

    def __init__(self, path: Path) -> None:
        super().__init__()
        # One connection shared by the handler threads, serialised by the store's lock.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        for statement in self.DDL:
            self._db.execute(statement)

    def _apply(self, batch_id: str, records: Sequence[tuple[str, int]],
               streams: Sequence[tuple[str, str, int, int]]) -> bool:
        """Store the batch id, its counts and its stream ranges in one transaction.

        Killed before COMMIT: neither is stored, the agent's retry stores both. Killed after COMMIT:
        both are stored, the retry is answered duplicate. No kill leaves a batch half-counted.
        """
        self._db.execute("BEGIN IMMEDIATE")
        try:
            cursor = self._db.execute("INSERT INTO batches VALUES (?) ON CONFLICT DO NOTHING", (batch_id,))
            if cursor.rowcount == 0:
                self._db.execute("ROLLBACK")
                return False
            self._db.executemany(
                "INSERT INTO counts VALUES (?, ?) ON CONFLICT(ip) DO UPDATE SET n = n + excluded.n", records
            )
            self._db.executemany("INSERT INTO streams VALUES (?, ?, ?, ?)", streams)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return True

    def _counts(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT ip, n FROM counts").fetchall())

    def _streams(self, producer: str) -> list[tuple[str, int, int]]:
        return self._db.execute("SELECT stream, start, end_ FROM streams WHERE producer = ?", (producer,)).fetchall()

    def _total(self) -> int:
        return int(self._db.execute("SELECT COALESCE(SUM(n), 0) FROM counts").fetchone()[0])

    def _batch_ids(self) -> set[str]:
        return {row[0] for row in self._db.execute("SELECT batch_id FROM batches")}

    def close(self) -> None:
        with self._cond:
            self._db.close()


# --- faults --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fault:
    """One thing done to a request instead of, or around, its normal answer."""

    kind: str  # "status" | "reset" | "delay"
    status: int = 0
    retry_after: float | None = None
    after_store: bool = False
    seconds: float = 0.0

    @property
    def label(self) -> str:
        if self.kind == "status":
            return f"status_{self.status}"
        return f"{self.kind}_{'after' if self.after_store else 'before'}_store"


@dataclass(slots=True)
class _Scripted:
    remaining: int
    fault: Fault


@dataclass(slots=True)
class _Random:
    p: float
    rng: random.Random
    choices: list[Fault]


class FaultPlan:
    """What goes wrong with the next batch requests; every method is thread-safe.

    Scripted faults queue up in call order and are used one per request before any random fault,
    so ``fail_next(2, 503); reset_next(1, after_store=True)`` means two 503s, then one reset.
    Each random rule (one per kind; setting it again replaces and re-seeds it) has its own RNG and
    draws once per request even when another fault wins, so its sequence depends only on the seed
    and the number of requests: reproducible with one client thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scripted: deque[_Scripted] = deque()
        self._random: dict[str, _Random] = {}
        self._body_limit: int | None = None
        self._body_limit_decoded = False
        self._record_limit: int | None = None

    def fail_next(self, n: int, status: int, retry_after: float | None = None) -> None:
        self._script(n, Fault("status", status=_check_status(status), retry_after=retry_after))

    def fail_fraction(
        self, p: float, statuses: Sequence[int] = (500, 503), seed: int = 0, retry_after: float | None = None
    ) -> None:
        faults = [Fault("status", status=_check_status(s), retry_after=retry_after) for s in statuses]
        self._randomly("status", p, seed, faults)

    def reset_next(self, n: int, after_store: bool) -> None:
        self._script(n, Fault("reset", after_store=after_store))

    def reset_fraction(self, p: float, after_store: bool, seed: int = 0) -> None:
        self._randomly("reset", p, seed, [Fault("reset", after_store=after_store)])

    def delay_next(self, n: int, seconds: float, after_store: bool = False) -> None:
        self._script(n, Fault("delay", seconds=seconds, after_store=after_store))

    def delay_fraction(self, p: float, seconds: float, after_store: bool = False, seed: int = 0) -> None:
        self._randomly("delay", p, seed, [Fault("delay", seconds=seconds, after_store=after_store)])

    def max_body(self, nbytes: int | None, decoded: bool = False) -> None:
        """413 above `nbytes`, measured on the wire, or after gzip decoding when `decoded`."""
        with self._lock:
            self._body_limit, self._body_limit_decoded = nbytes, decoded

    def max_records(self, k: int | None) -> None:
        with self._lock:
            self._record_limit = k

    def clear_faults(self) -> None:
        with self._lock:
            self._scripted.clear()
            self._random.clear()
            self._body_limit, self._body_limit_decoded, self._record_limit = None, False, None

    def limits(self) -> tuple[int | None, bool, int | None]:
        """(body limit, measured after decoding?, record limit)."""
        with self._lock:
            return self._body_limit, self._body_limit_decoded, self._record_limit

    def draw(self) -> Fault | None:
        """The fault for the request arriving now, if any."""
        with self._lock:
            hits = [rule.rng.choice(rule.choices) for rule in self._random.values() if rule.rng.random() < rule.p]
            if self._scripted:
                head = self._scripted[0]
                head.remaining -= 1
                if head.remaining == 0:
                    self._scripted.popleft()
                return head.fault
            return hits[0] if hits else None

    def _script(self, n: int, fault: Fault) -> None:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if n:
            with self._lock:
                self._scripted.append(_Scripted(n, fault))

    def _randomly(self, kind: str, p: float, seed: int, faults: list[Fault]) -> None:
        if not 0.0 <= p <= 1.0 or not faults:
            raise ValueError(f"need 0 <= p <= 1 and at least one fault, got p={p}")
        with self._lock:
            self._random.pop(kind, None)
            if p > 0:
                self._random[kind] = _Random(p, random.Random(seed), faults)


def _check_status(status: int) -> int:
    if not 400 <= status <= 599:
        raise ValueError(f"a fault status must be 4xx or 5xx, got {status}")
    return status


PLAN_OPS = frozenset(
    {
        "fail_next",
        "fail_fraction",
        "reset_next",
        "reset_fraction",
        "delay_next",
        "delay_fraction",
        "max_body",
        "max_records",
        "clear_faults",
    }
)
SERVER_OPS = frozenset({"refuse_for", "restart"})


class FaultControls:
    """The fault vocabulary, written once. Each method is one op of ``/_control`` and ``--fault-plan``
    (``{"op": "fail_next", "n": 2, "status": 503}``); `_control` routes it in-process or over HTTP."""

    def _control(self, op: str, args: dict[str, Any]) -> None:
        raise NotImplementedError

    def fail_next(self, n: int, status: int, retry_after: float | None = None) -> None:
        self._control("fail_next", {"n": n, "status": status, "retry_after": retry_after})

    def fail_fraction(
        self, p: float, statuses: Sequence[int] = (500, 503), seed: int = 0, retry_after: float | None = None
    ) -> None:
        args = {"p": p, "statuses": list(statuses), "seed": seed, "retry_after": retry_after}
        self._control("fail_fraction", args)

    def reset_next(self, n: int, after_store: bool) -> None:
        self._control("reset_next", {"n": n, "after_store": after_store})

    def reset_fraction(self, p: float, after_store: bool, seed: int = 0) -> None:
        self._control("reset_fraction", {"p": p, "after_store": after_store, "seed": seed})

    def delay_next(self, n: int, seconds: float, after_store: bool = False) -> None:
        self._control("delay_next", {"n": n, "seconds": seconds, "after_store": after_store})

    def delay_fraction(self, p: float, seconds: float, after_store: bool = False, seed: int = 0) -> None:
        args = {"p": p, "seconds": seconds, "after_store": after_store, "seed": seed}
        self._control("delay_fraction", args)

    def max_body(self, nbytes: int | None, decoded: bool = False) -> None:
        self._control("max_body", {"nbytes": nbytes, "decoded": decoded})

    def max_records(self, k: int | None) -> None:
        self._control("max_records", {"k": k})

    def clear_faults(self) -> None:
        self._control("clear_faults", {})

    def refuse_for(self, seconds: float) -> None:
        self._control("refuse_for", {"seconds": seconds})

    def restart(self) -> None:
        self._control("restart", {})

    def apply_plan(self, plan: dict[str, Any] | list[dict[str, Any]]) -> None:
        """Apply one op or a list of ops, in order (the JSON form of a fault plan)."""
        for step in [plan] if isinstance(plan, dict) else plan:
            args = dict(step)
            op = args.pop("op", None)
            if op not in PLAN_OPS | SERVER_OPS:
                raise ValueError(f"unknown fault op {op!r}")
            self._control(op, args)


# --- the wire ------------------------------------------------------------------------------------


class BodyTooLarge(ValueError):
    """The body is over the configured (or hard) size limit: answered 413, not 400."""


@dataclass(frozen=True, slots=True)
class Batch:
    batch_id: str
    records: list[tuple[str, int]]  # (ip, count)
    streams: tuple[tuple[str, str, int, int], ...] = ()  # (producer, stream, start, end) of a whole batch


def decode_body(body: bytes, encoding: str | None, cap: int) -> bytes:
    """Undo Content-Encoding, stopping past `cap` bytes so a small gzip bomb cannot fill memory."""
    name = (encoding or "identity").strip().lower()
    if name == "identity":
        if len(body) > cap:
            raise BodyTooLarge(f"body of {len(body)} bytes is over {cap}")
        return body
    if name != "gzip":
        raise ValueError(f"unsupported Content-Encoding {encoding!r}")
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(body, cap + 1)
    except zlib.error as exc:
        raise ValueError(f"bad gzip data: {exc}") from None
    if len(out) > cap:
        raise BodyTooLarge(f"decoded body is over {cap} bytes")
    if not inflater.eof or inflater.unused_data:
        raise ValueError("truncated gzip data, or bytes after its end")
    return out


def peek_batch(body: bytes, encoding: str | None) -> tuple[str | None, int]:
    """Best-effort (batch id, record count) for the log, even for requests that are then faulted
    or refused, so a test can follow one batch through its retries."""
    try:
        doc = json.loads(decode_body(body, encoding, HARD_BODY_CAP))
    except (ValueError, RecursionError):
        return None, 0
    if not isinstance(doc, dict):
        return None, 0
    batch_id, records = doc.get("batch_id"), doc.get("records")
    if doc.get("format") == 2:
        with contextlib.suppress(TypeError, KeyError, AttributeError):
            records = [ip for group in doc.get("groups") for ip in group["ip"]]
    return (batch_id if isinstance(batch_id, str) else None), (len(records) if isinstance(records, list) else 0)


def parse_batch(raw: bytes) -> Batch:
    """Check a body against protocol v1, strictly: a lenient receiver would pass agent tests that the
    real collector fails (an address spelled two ways is counted under two keys)."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ValueError(f"body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError("body is not a JSON object")
    for key in ("agent", "batch_id"):
        _require_str(doc, key, "body")
    _require_time(doc, "sent_at", "body")
    records = doc.get("records")
    if not isinstance(records, list):
        raise ValueError("body.records is not a list")
    return Batch(doc["batch_id"], [_parse_record(i, r) for i, r in enumerate(records)], _parse_streams(doc))


def _parse_streams(doc: dict[str, Any]) -> tuple[tuple[str, str, int, int], ...]:
    """`streams` of a whole batch with a producer (docs/protocol.md, "Streams"); () for a part."""
    producer, streams = doc.get("producer"), doc.get("streams", [])
    if not isinstance(producer, str) or doc.get("part") or not isinstance(streams, list):
        return ()
    found = []
    for index, item in enumerate(streams):
        sid, start, end = (item.get(k) for k in ("id", "start", "end")) if isinstance(item, dict) else (None,) * 3
        if not isinstance(sid, str) or type(start) is not int or type(end) is not int or not 0 <= start < end:
            raise ValueError(f"streams[{index}] is not an object with an id and 0 <= start < end")
        found.append((producer, sid, start, end))
    return tuple(found)


MEDIA_V2 = "application/vnd.remote-uploader.v2+json"  # restated, not imported: the oracle is independent


def parse_batch_v2(raw: bytes) -> Batch:
    """Check a body against format 2 (columnar), as strictly as `parse_batch` checks format 1."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"body is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != 2:
        raise ValueError("body is not a format 2 object")
    for key in ("agent", "batch_id"):
        _require_str(doc, key, "body")
    sources, groups = doc.get("sources"), doc.get("groups")
    if type(doc.get("sent_at")) is not int or not isinstance(sources, list) or not isinstance(groups, list):
        raise ValueError("body.sent_at, sources or groups is missing or of the wrong type")
    records: list[tuple[str, int]] = []
    for index, group in enumerate(groups):
        where = f"groups[{index}]"
        if not isinstance(group, dict) or type(group.get("source")) is not int \
                or not 0 <= group["source"] < len(sources) or not isinstance(sources[group["source"]], str):
            raise ValueError(f"{where}.source is not an index of sources")
        if type(group.get("first_seen")) is not int or type(group.get("last_seen")) is not int:
            raise ValueError(f"{where} times are not integers")
        ips, counts = group.get("ip"), group.get("count")
        if not isinstance(ips, list) or not isinstance(counts, list) or len(ips) != len(counts):
            raise ValueError(f"{where}.ip and .count are not arrays of one length")
        for n, (ip, count) in enumerate(zip(ips, counts, strict=True)):
            records.append(_parse_record(n, {"ip": ip, "count": count}, where, times=False))
    return Batch(doc["batch_id"], records, _parse_streams(doc))


def _parse_record(index: int, record: Any, prefix: str = "records", times: bool = True) -> tuple[str, int]:
    where = f"{prefix}[{index}]"
    if not isinstance(record, dict):
        raise ValueError(f"{where} is not an object")
    ip, count = record.get("ip"), record.get("count")
    if not isinstance(ip, str) or not is_canonical_ip(ip):
        raise ValueError(f"{where}.ip {ip!r} is not a countable address in canonical form")
    if type(count) is not int or count < 1:
        raise ValueError(f"{where}.count {count!r} is not a positive integer")
    if times:
        _require_time(record, "first_seen", where)
        _require_time(record, "last_seen", where)
        _require_str(record, "source", where)
    return ip, count


def _require_str(doc: dict[str, Any], key: str, where: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}.{key} is missing or not a non-empty string")
    return value


def _require_time(doc: dict[str, Any], key: str, where: str) -> None:
    text = _require_str(doc, key, where)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{where}.{key} {text!r} is not an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise ValueError(f"{where}.{key} {text!r} has no UTC offset")


def is_canonical_ip(text: str) -> bool:
    """Protocol v1's spelling rule, restated with the stdlib so the receiver judges the agent on its
    own: IPv4 without leading zeros, IPv6 compressed lowercase, no zone, IPv4-mapped sent as IPv4,
    unspecified addresses never sent."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return False
    if addr.is_unspecified:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and (addr.scope_id or addr.ipv4_mapped):
        return False
    return str(addr) == text


def format_retry_after(seconds: float) -> str:
    """Whole seconds as HTTP writes them; a fraction is kept ("0.25") since tests compress time."""
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def abort_connection(sock: socket.socket) -> None:
    """Close with SO_LINGER 0 so the kernel sends RST, not FIN: the client gets ECONNRESET, never
    a clean end of stream it could mistake for an empty answer. The descriptor really closes when
    the handler's file objects are closed, which socketserver does before its own shutdown(SHUT_WR)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


# --- the server ----------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    """One listening generation. A restart binds a new one on the same port; the Receiver holds
    everything that must outlive it (store, plan, log)."""

    daemon_threads = True
    block_on_close = False  # halt() joins handler threads itself, skipping the caller's own

    def __init__(self, address: tuple[str, int], receiver: Receiver) -> None:
        self.receiver = receiver
        self.stopping = threading.Event()
        self._conns: dict[threading.Thread, socket.socket] = {}
        self._conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS lookup of the host name (slow in some sandboxes)."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def track(self, conn: socket.socket) -> bool:
        """Register a connection; False when the server is stopping (then it must not be served)."""
        with self._conns_lock:
            if self.stopping.is_set():
                return False
            self._conns[threading.current_thread()] = conn
            return True

    def untrack(self) -> None:
        with self._conns_lock:
            self._conns.pop(threading.current_thread(), None)

    def halt(self) -> None:
        """Stop as a crashed server looks from outside: the port closes (connects are refused), open
        connections are cut, requests in flight get no answer. The calling thread's own connection is
        spared, so a control request can halt its own server and still answer."""
        with self._conns_lock:
            self.stopping.set()
            conns = dict(self._conns)
        self.receiver.wake_waiters()
        self.shutdown()
        self.server_close()
        me = threading.current_thread()
        for thread, conn in conns.items():
            if thread is not me:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        for thread in conns:
            if thread is not me:
                thread.join(JOIN_TIMEOUT)
                if thread.is_alive():
                    log.warning("receiver handler %s still running after stop", thread.name)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Cut connections are the point of this server: log them quietly instead of printing."""
        log.debug("receiver connection error from %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the agent's client will likely use
    timeout = 30  # idle keep-alive connections end eventually
    server: _Server

    @property
    def rx(self) -> Receiver:
        return self.server.receiver

    def handle(self) -> None:
        if self.server.track(self.connection):
            super().handle()

    def finish(self) -> None:
        self.server.untrack()
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("receiver %s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == HEALTH_PATH:
            self.rx.record(RequestLog("GET", url.path, time.monotonic(), status=200))
            self._send(200, {"status": "ok"})
        elif url.path in ("/_counts", "/_log", "/_wait"):
            self._control_get(url.path, parse_qs(url.query))
        elif url.path.startswith("/v1/producers/") and url.path.endswith("/streams"):
            producer = url.path[len("/v1/producers/"):-len("/streams")]
            if not self._authorized():
                self._send(401, {"error": "missing or bad token"})
            else:
                self._send(200, {"producer": producer, "streams": self.rx.store.streams(producer)})
        else:
            self._send(404, {"error": f"no route {url.path}"})

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        if path == BATCHES_PATH:
            self._ingest()
        elif path == "/_control":
            self._control_post()
        else:
            self._read_body()
            self._send(404, {"error": f"no route {path}"})

    # -- ingest ---------------------------------------------------------------------------------

    def _ingest(self) -> None:
        """Read, fault, admit, store, answer: in that order, so each fault lands at a known point."""
        entry = RequestLog("POST", BATCHES_PATH, time.monotonic())
        body = self._read_body()
        if body is None:
            return
        self.rx.arrived()
        fault = self.rx.plan.draw()
        batch_id, records = peek_batch(body, self.headers.get("Content-Encoding"))
        entry = replace(
            entry,
            body_bytes=len(body),
            batch_id=batch_id,
            records=records,
            fault=fault.label if fault else None,
        )
        if fault and fault.kind == "status":
            self._answer(entry, fault.status, {"error": "injected fault"}, fault.retry_after)
            return
        if fault and not fault.after_store and not self._disrupt(entry, fault):
            return
        status, payload, batch = self._admit(body)
        if batch is None:
            self._answer(entry, status, payload)
            return
        if self.server.stopping.is_set():
            self._drop(entry)
            return
        new = self.rx.store.apply(batch.batch_id, batch.records, batch.streams)
        entry = replace(entry, stored=new, duplicate=not new)
        if fault and fault.after_store and not self._disrupt(entry, fault):
            return
        answer = {
            "batch_id": batch.batch_id,
            "accepted": len(batch.records) if new else 0,
            "duplicate": not new,
        }
        self._answer(entry, 200, answer)

    def _disrupt(self, entry: RequestLog, fault: Fault) -> bool:
        """Apply a reset or a delay; True when the request should go on to its normal answer."""
        if fault.kind == "reset":
            self.rx.record(entry)
            self.close_connection = True
            abort_connection(self.connection)
            return False
        if self.server.stopping.wait(fault.seconds):
            self._drop(entry)  # the server stopped during the delay: like a crash, no answer
            return False
        return True

    def _admit(self, body: bytes) -> tuple[int, dict[str, Any], Batch | None]:
        """Auth, then size, then shape, then record count: the order a real collector checks in.
        The batch comes back only when admitted (status 200): a refused one must never be stored."""
        if not self._authorized():
            return 401, {"error": "missing or bad token"}, None
        limit, decoded, max_records = self.rx.plan.limits()
        if limit is not None and not decoded and len(body) > limit:
            return 413, {"error": f"body of {len(body)} bytes is over {limit}"}, None
        cap = limit if limit is not None and decoded else HARD_BODY_CAP
        media = (self.headers.get("Content-Type") or "application/json").split(";", 1)[0].strip().lower()
        if media not in ("application/json", MEDIA_V2) or (media == MEDIA_V2 and not self.rx.format_2):
            return 415, {"error": f"unsupported media type {media!r}"}, None
        parse = parse_batch_v2 if media == MEDIA_V2 else parse_batch
        try:
            batch = parse(decode_body(body, self.headers.get("Content-Encoding"), cap))
        except BodyTooLarge as exc:
            return 413, {"error": str(exc)}, None
        except ValueError as exc:
            return 400, {"error": str(exc)}, None
        if max_records is not None and len(batch.records) > max_records:
            return 413, {"error": f"{len(batch.records)} records is over {max_records}"}, None
        return 200, {}, batch

    def _answer(
        self, entry: RequestLog, status: int, payload: dict[str, Any], retry_after: float | None = None
    ) -> None:
        """Log, then send: a client holding an answer always finds its request in the log."""
        self.rx.record(replace(entry, status=status))
        headers = {"Retry-After": format_retry_after(retry_after)} if retry_after is not None else {}
        if self.rx.format_2:
            headers["Accept-Post"] = f"application/json, {MEDIA_V2}"
        self._send(status, payload, headers)

    def _drop(self, entry: RequestLog) -> None:
        self.rx.record(entry)
        self.close_connection = True

    # -- control (tests only) -------------------------------------------------------------------

    def _control_get(self, path: str, query: dict[str, list[str]]) -> None:
        if not self._authorized():
            self._send(401, {"error": "missing or bad token"})
        elif path == "/_counts":
            counts = self.rx.counts()
            self._send(
                200,
                {"counts": counts, "total": sum(counts.values()), "batch_ids": sorted(self.rx.batch_ids())},
            )
        elif path == "/_log":
            self._send(200, {"requests": [asdict(r) for r in self.rx.requests()]})
        else:
            self._control_wait(query)

    def _control_wait(self, query: dict[str, list[str]]) -> None:
        """Long poll: ``/_wait?total=N`` or ``/_wait?requests=N``, with ``timeout=SECONDS``."""
        try:
            timeout = min(float(query.get("timeout", ["10"])[0]), 600.0)
            what, n = next((key, int(query[key][0])) for key in ("total", "requests") if key in query)
        except (StopIteration, ValueError):
            self._send(400, {"error": "/_wait needs total=N or requests=N, and optionally timeout=SECONDS"})
            return
        cancel = self.server.stopping
        if what == "total":
            reached = self.rx.store.wait_for_total(n, timeout, cancel=cancel)
        else:
            reached = self.rx.wait_for_requests(n, timeout, cancel=cancel)
        self._send(200, {"reached": reached})

    def _control_post(self) -> None:
        body = self._read_body()
        if body is None:
            return
        if not self._authorized():
            self._send(401, {"error": "missing or bad token"})
            return
        try:
            self.rx.apply_plan(json.loads(body))
        except (ValueError, TypeError, AttributeError) as exc:
            self._send(400, {"error": f"{type(exc).__name__}: {exc}"})
            return
        self._send(200, {"ok": True})

    # -- plumbing -------------------------------------------------------------------------------

    def _authorized(self) -> bool:
        """Constant-time compare, so the token cannot be guessed byte by byte from answer times.
        The scheme name is case-insensitive (RFC 9110), as in any real server."""
        scheme, _, given = self.headers.get("Authorization", "").partition(" ")
        expected = self.rx.token.encode()
        return scheme.lower() == "bearer" and hmac.compare_digest(given.encode("utf-8", "replace"), expected)

    def _read_body(self) -> bytes | None:
        """The whole body, by Content-Length or chunked; None (answered or dropped) if unreadable.

        Always read to its end before answering, even to refuse it: closing a socket with unread
        bytes sends RST, and the client might then lose the answer it should have seen."""
        try:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                body = self._read_chunked()
            elif self.headers.get("Content-Length", "").isdigit():
                body = self._read_exactly(int(self.headers["Content-Length"]))
            else:
                self.close_connection = True
                self._send(411, {"error": "Content-Length or chunked Transfer-Encoding required"})
                return None
        except BodyTooLarge as exc:
            self.close_connection = True
            self._send(413, {"error": str(exc)})
            return None
        except (ValueError, EOFError):
            self.close_connection = True  # the client went away mid-body, or sent nonsense framing
            return None
        return body

    def _read_exactly(self, length: int) -> bytes:
        if length > HARD_BODY_CAP:
            raise BodyTooLarge(f"body over {HARD_BODY_CAP} bytes")
        body = self.rfile.read(length)
        if len(body) < length:
            raise EOFError
        return body

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        size = 0
        while True:
            size_line = self.rfile.readline(1024).split(b";")[0].strip()
            if not size_line:
                raise EOFError
            chunk_size = int(size_line, 16)  # ValueError on nonsense: dropped by the caller
            if chunk_size == 0:
                break
            size += chunk_size
            if size > HARD_BODY_CAP:
                raise BodyTooLarge(f"body over {HARD_BODY_CAP} bytes")
            parts.append(self._read_exactly(chunk_size))
            self.rfile.readline(1024)  # the CRLF after the chunk
        while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
            pass  # trailer fields, ignored
        return b"".join(parts)

    def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True


class Receiver(FaultControls):
    """The fault-injecting receiver: one HTTP server at a time on a fixed port (chosen at the first
    start), with the state that must outlive restarts (counts, batch ids, log, fault plan) held here.

    Counts live in memory unless `state` names a SQLite file; the request log is always in memory.
    """

    def __init__(self, token: str, *, host: str = "127.0.0.1", port: int = 0, state: Path | None = None,
                 format_2: bool = True) -> None:
        """`format_2=False`: a collector from before body format 2 (it never lists it, and answers
        415 to it), to test that agents still deliver everything to one."""
        self.token = token
        self.format_2 = format_2
        self.host = host
        self.port = port
        self.store: Store = SqliteStore(state) if state is not None else MemoryStore()
        self.plan = FaultPlan()
        self._log: list[RequestLog] = []
        self._arrivals = 0  # POST /v1/batches bodies read, including those still being held
        self._log_cond = threading.Condition()
        self._lifecycle = threading.RLock()
        self._server: _Server | None = None
        self._serving: threading.Thread | None = None
        self._listening = threading.Event()
        self._reopen_cancel: threading.Event | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Listen (on the same port as before, after a stop) and serve in a daemon thread."""
        with self._lifecycle:
            if self._server is not None:
                return
            server = _bind((self.host, self.port), self)
            self.port = server.server_address[1]
            serving = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"receiver:{self.port}",
                daemon=True,
            )
            serving.start()
            self._server, self._serving = server, serving
            self._listening.set()

    def stop(self) -> None:
        """Stop listening and cut every connection; cancels a pending reopen from refuse_for()."""
        with self._lifecycle:
            self._cancel_reopen()
            self._halt()

    def close(self) -> None:
        self.stop()
        self.store.close()

    def restart(self) -> None:
        """Stop and start again on the same port; requests in flight are cut, counts are kept."""
        with self._lifecycle:
            self.stop()
            self.start()

    def refuse_for(self, seconds: float) -> None:
        """Close the port now (connects get ECONNREFUSED) and listen on it again after `seconds`.

        Returns once the port is closed; wait_until_listening() tells when it is open again."""
        with self._lifecycle:
            self.stop()
            cancel = self._reopen_cancel = threading.Event()
            threading.Thread(target=self._reopen_after, args=(seconds, cancel), daemon=True).start()

    def wait_until_listening(self, timeout: float) -> bool:
        return self._listening.wait(timeout)

    def _reopen_after(self, seconds: float, cancel: threading.Event) -> None:
        if cancel.wait(seconds):
            return
        with self._lifecycle:
            if not cancel.is_set():
                self.start()

    def _cancel_reopen(self) -> None:
        # No join: the reopen thread re-checks `cancel` under the lifecycle lock we hold.
        if self._reopen_cancel is not None:
            self._reopen_cancel.set()
            self._reopen_cancel = None

    def _halt(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._listening.clear()
        server.halt()
        if self._serving is not None:
            self._serving.join(JOIN_TIMEOUT)

    def __enter__(self) -> Receiver:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what the tests read --------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        return self.store.counts()

    def total(self) -> int:
        return self.store.total()

    def batch_ids(self) -> set[str]:
        return self.store.batch_ids()

    def requests(self) -> list[RequestLog]:
        """Every finished request to /v1/..., in order (a held or delayed one appears when it ends)."""
        with self._log_cond:
            return list(self._log)

    def wait_for_total(self, total: int, timeout: float) -> bool:
        """True once the stored total reaches `total`; woken by each stored batch, no polling."""
        return self.store.wait_for_total(total, timeout)

    def wait_for_requests(self, n: int, timeout: float, cancel: threading.Event | None = None) -> bool:
        """True once `n` batch requests have arrived (counted when the body is read, before any fault
        or delay), so a test can act while a request is being held."""
        with self._log_cond:
            self._log_cond.wait_for(lambda: self._arrivals >= n or bool(cancel and cancel.is_set()), timeout)
            return self._arrivals >= n

    def arrived(self) -> None:
        with self._log_cond:
            self._arrivals += 1
            self._log_cond.notify_all()

    def record(self, entry: RequestLog) -> None:
        with self._log_cond:
            self._log.append(entry)
            self._log_cond.notify_all()

    def wake_waiters(self) -> None:
        self.store.wake()
        with self._log_cond:
            self._log_cond.notify_all()

    def _control(self, op: str, args: dict[str, Any]) -> None:
        if op == "refuse_for":
            self.refuse_for(**args)
        elif op == "restart":
            self.restart()
        else:
            getattr(self.plan, op)(**args)


def _bind(address: tuple[str, int], receiver: Receiver) -> _Server:
    """Bind, retrying a busy port for a while: after a stop the kernel may hold it briefly, and a
    restart must come back on the same port or the agent under test would be talking to nobody."""
    deadline = time.monotonic() + BIND_TIMEOUT
    pause = threading.Event()
    while True:
        try:
            return _Server(address, receiver)
        except OSError as exc:
            if address[1] == 0 or time.monotonic() > deadline:
                raise
            log.debug("receiver port %s busy (%s), retrying", address[1], exc)
            pause.wait(0.05)


# --- subprocess mode -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the receiver as its own process, so a test can SIGKILL it and start it again on FILE."""
    parser = argparse.ArgumentParser(prog="python -m tests.helpers.receiver", description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port; printed as LISTENING <port>")
    parser.add_argument("--token", required=True, help="the bearer token to accept")
    parser.add_argument("--state", type=Path, help="SQLite file for counts and batch ids (default: memory)")
    parser.add_argument("--fault-plan", help='JSON op or list of ops, e.g. [{"op":"fail_next","n":2,"status":503}]')
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr)

    receiver = Receiver(args.token, host=args.host, port=args.port, state=args.state)
    if args.fault_plan:
        receiver.apply_plan(json.loads(args.fault_plan))
    # Blocked before the server threads start, so they inherit the mask and the main thread alone
    # takes the signal, in sigwait: no handler runs in the middle of code holding a lock.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    receiver.start()
    print(f"LISTENING {receiver.port}", flush=True)
    signal.sigwait(stop_signals)
    receiver.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
