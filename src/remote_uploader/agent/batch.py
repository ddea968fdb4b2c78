"""Aggregation: occurrences become per-(stream, IP) records in one in-memory batch.

The stream label is the live path a file's content was first found at (`tail.Tracked.stream`,
the spool's `FileState.stream`); on the wire it is each record's `source` field. ("Source" in
the agent means a configured `[[sources]]` entry.)

A batch also remembers, per file, the offset just past the last byte it covers. That pairing is
what makes offsets safe: the spool stores the records and moves the offsets in one transaction,
so the bytes a batch covers are either in the queue or will be read again, never both.
"""

from __future__ import annotations

import gzip
import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import add
from typing import TYPE_CHECKING, Any

from remote_uploader.agent.clock import wall
from remote_uploader.config import BatchingConfig
from remote_uploader.protocol import (
    MAX_BATCH_ID_LEN,
    MAX_PART_LEN,
    Record,
    encode_batch,
    encode_records,
    format_timestamp,
)

if TYPE_CHECKING:
    from remote_uploader.agent.spool import QueuedBatch, SealedBatch


@dataclass
class Batch:
    """The in-memory batch: per stream, a count per address, and the offsets it covers.

    `first_seen` and `last_seen` are read times (`clock.wall()`): when the agent read the first and
    the last bytes this batch covers (a batch lives about `max_batch_age` while busy). Every record
    of a batch carries that span; the collector keeps the earliest and the latest over all batches.
    Keeping one span per batch, not one per record, makes merging a chunk's counts a C-level dict
    update and sealing a string join: the main process does almost no work per address.

    `last_seen` never goes back: a wall clock stepped backwards (NTP, an operator) inside an open
    batch would otherwise seal `last_seen < first_seen`, a batch the collector refused for ever.
    `created` is `time.monotonic()` (the batch's age for the seal policy), which no step moves.
    """

    created: float
    counts: dict[str, Counter[str]] = field(default_factory=dict)  # stream -> ip -> occurrences
    offsets: dict[int, int] = field(default_factory=dict)  # file id -> offset just past the covered bytes
    occurrences: int = 0
    lines: int = 0
    nbytes: int = 0
    first_seen: float = 0.0
    last_seen: float = 0.0
    size: int = 0  # records: distinct (stream, ip) pairs

    def __len__(self) -> int:
        return self.size

    def add(self, stream: str, counts: Mapping[str, int], now: float) -> None:
        """Fold one chunk's counts in. Work is per distinct address, never per line."""
        if not counts:
            return
        known = self.counts.get(stream)
        if known is None:
            known = self.counts[stream] = Counter()
        before = len(known)
        # known[ip] += n for every ip of the chunk, with no bytecode per address: `map` over C
        # callables and `dict.update` from pairs (Counter.update runs a Python loop: 1.5x the time).
        keys = counts.keys()
        dict.update(known, zip(keys, map(add, counts.values(), map(known.get, keys, repeat(0))), strict=True))
        self.size += len(known) - before
        if not self.occurrences:
            self.first_seen = self.last_seen = now
        elif now > self.last_seen:
            self.last_seen = now
        self.occurrences += sum(counts.values())

    def new_keys(self, stream: str, counts: Mapping[str, int]) -> int:
        """How many records `counts` would add (to keep the batch under max_memory_ips)."""
        known: Mapping[str, int] = self.counts.get(stream, {})
        return sum(1 for ip in counts if ip not in known)

    def cover(self, file_id: int, end_offset: int, lines: int, nbytes: int) -> None:
        self.offsets[file_id] = end_offset
        self.lines += lines
        self.nbytes += nbytes

    @property
    def empty(self) -> bool:
        return not self.size and not self.offsets

    def _span(self) -> tuple[str, str]:
        first = wire_time(self.first_seen)
        return format_timestamp(first), format_timestamp(max(first, wire_time(self.last_seen)))

    def records_json(self) -> bytes:
        """The records array as protocol JSON, built directly: sealing is on the hot path.

        Addresses are canonical (no character needs escaping); the times and the stream are the
        same for every record of a stream, so that tail is encoded once per stream.
        """
        first, last = self._span()
        parts = []
        for stream, known in self.counts.items():
            tail = f',"first_seen":"{first}","last_seen":"{last}","source":{json.dumps(stream)}}}'
            parts.append(",".join([f'{{"ip":"{ip}","count":{n}{tail}' for ip, n in known.items()]))
        return ("[" + ",".join(part for part in parts if part) + "]").encode()


@dataclass(frozen=True)
class SealPolicy:
    """When the in-memory batch becomes a queued batch.

    - at `force_upload_threshold` records (memory pressure; upload now);
    - adaptive: any non-empty batch at once when the reader has caught up and the uploader is
      idle (nothing queued, nothing in flight): a line reaches the collector in milliseconds.
      While requests are in flight, records accumulate and the next batch is larger; it is
      sealed when the uploader falls idle (it nudges the reader) or by the rules below, which
      stay the upper bounds;
    - at `min_upload_batch` records once `max_batch_age` has passed (real streaming: uploads start
      while reading goes on);
    - any non-empty batch once half of `max_batch_age` has passed and the reader has caught up, so
      a trickle of lines is never held back waiting for `min_upload_batch`, and reaches the
      collector within about `max_batch_age`: half waiting here, the rest for noticing the line
      (`forever` looks at the open files every 0.1 s) and uploading it (at most two seals a second
      with the default 1 s);
    - at the end of input (`once`) or at shutdown.
    """

    force_upload_threshold: int
    min_upload_batch: int
    max_batch_age: float

    @property
    def caught_up_age(self) -> float:
        return self.max_batch_age / 2

    @classmethod
    def from_config(cls, batching: BatchingConfig) -> SealPolicy:
        return cls(batching.force_upload_threshold, batching.min_upload_batch, batching.max_batch_age)

    def should_seal(self, batch: Batch, now: float, *, caught_up: bool, uploader_free: bool = False) -> bool:
        if batch.empty:
            return False
        size = len(batch)
        if size >= self.force_upload_threshold:
            return True
        age = now - batch.created
        if caught_up:
            return uploader_free or age >= self.caught_up_age
        return age >= self.max_batch_age and size >= self.min_upload_batch


#: The latest time a batch may carry: 9999-12-31T00:00:00Z, the end of the protocol's range.
LATEST_WIRE_TIME = 253402214400.0


def wire_time(seconds: float) -> float:
    """`seconds` within the protocol's range (1970 .. 9999-12-31): a clock set far off must not
    make a batch that cannot be encoded (year 10000) or that the collector would refuse."""
    return min(max(seconds, 0.0), LATEST_WIRE_TIME)


def new_batch_id() -> str:
    """128 random bits, fixed at seal time: stored with the batch, so every retry carries the same id.

    (os.urandom, not uuid: importing uuid costs the agent 1.5 MiB of memory for the same bits.)
    """
    return os.urandom(16).hex()


def encode_sealed(agent: str, batch_id: str, records: Sequence[Record], created: float,
                  compress: bool, identity: Identity | None = None) -> SealedBatch:
    """The complete request body, built once; `sent_at` is the seal time so retries are byte-identical."""
    return _sealed(agent, batch_id, encode_records(list(records)), len(records),
                   sum(r.count for r in records), created, compress, identity)


# (producer, seq, part): the batch's delivery identity, docs/protocol.md "Idempotency".
Identity = tuple[str, int, str]


def _sealed(agent: str, batch_id: str, records_json: bytes, records: int, occurrences: int, created: float,
            compress: bool, identity: Identity | None = None) -> SealedBatch:
    from remote_uploader.agent.spool import SealedBatch

    producer, seq, part = identity if identity is not None else (None, None, "")
    body = encode_batch(agent, batch_id, format_timestamp(created), records_json, producer, seq, part)
    encoding = "identity"
    if compress:
        body = gzip.compress(body, compresslevel=1, mtime=0)
        encoding = "gzip"
    return SealedBatch(batch_id, created, records, occurrences, encoding, body)


def seal(batch: Batch, agent: str, compress: bool, producer: str | None = None, seq: int = 0) -> SealedBatch | None:
    """The batch as a queue entry, or None when it covers bytes but holds no address.

    `producer` and `seq` (the spool's, `Spool.producer` and `Spool.next_seq`) give the batch the
    identity by which the collector recognises it at any age, whole or split.
    """
    if not batch.size:
        return None
    identity = (producer, seq, "") if producer is not None else None
    return _sealed(agent, new_batch_id(), batch.records_json(), len(batch), batch.occurrences, wire_time(wall()),
                   compress, identity)


def decode_body(body: bytes, encoding: str) -> dict[str, Any]:
    raw = gzip.decompress(body) if encoding == "gzip" else body
    document: dict[str, Any] = json.loads(raw)
    return document


def identity_of(document: Mapping[str, Any]) -> Identity | None:
    """The (producer, seq, part) a queued body carries, or None for a batch sealed before them."""
    producer, seq = document.get("producer"), document.get("seq")
    if isinstance(producer, str) and isinstance(seq, int):
        return producer, seq, str(document.get("part", ""))
    return None


def split_queued(queued: QueuedBatch, agent: str) -> list[SealedBatch]:
    """Halves of a batch the collector found too large, with ids derived from the parent's.

    Derived ids (`<parent>.0`, `<parent>.1`) are stable: if the agent dies after storing the
    halves, the same halves are sent again under the same ids, and the collector drops replays.
    The halves keep the parent's producer and seq and add one step to its part path, so a
    collector that stored the parent (the answer was lost, then the limit shrank) recognises
    them as parts of it and counts nothing twice (issue 9, hole 6).
    """
    document = decode_body(queued.body, queued.encoding)
    records = [Record(**item) for item in document["records"]]
    identity = identity_of(document)
    if len(records) < 2 or len(queued.batch_id) + 2 > MAX_BATCH_ID_LEN or (
            identity is not None and len(identity[2]) >= MAX_PART_LEN):
        return []
    middle = len(records) // 2
    compress = queued.encoding == "gzip"
    return [
        encode_sealed(agent, f"{queued.batch_id}.{index}", part, queued.created,
                      compress, None if identity is None else (identity[0], identity[1], identity[2] + str(index)))
        for index, part in enumerate((records[:middle], records[middle:]))
    ]
