"""Small builders for collector tests: batches as the agent sends them, and as storage takes them."""

from __future__ import annotations

import dataclasses
import ipaddress
import random
from datetime import UTC, datetime, timedelta
from typing import Any

from remote_uploader.collector.storage import bulk
from remote_uploader.collector.storage.base import BulkForm, EncodedDeltas, IpDelta, ValidBatch, to_micros
from remote_uploader.protocol import format_time, ip_key

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def delta(ip: str, total: int, first: float = 0, last: float | None = None) -> IpDelta:
    return IpDelta(ip, ip_key(ip), total, to_micros(at(first)), to_micros(at(first if last is None else last)))


def batch(agent: str, batch_id: str, *deltas: IpDelta, records: int | None = None) -> ValidBatch:
    ordered = sorted(deltas, key=lambda d: d.ip)
    return ValidBatch(agent, batch_id, T0, len(ordered) if records is None else records, ordered)


def as_worker_hands_it(parsed: ValidBatch, form: BulkForm) -> ValidBatch:
    """`parsed` as a parsing worker hands it to the server process: its deltas and bucket deltas
    encoded together in the backend's bulk form (storage/bulk.py)."""
    assert not isinstance(parsed.deltas, EncodedDeltas)
    return dataclasses.replace(parsed, deltas=bulk.encode(form, parsed.deltas, parsed.buckets), buckets=())


def record(
    ip: str, count: int = 1, first: float = 0, last: float | None = None, source: str = "/var/log/x.log"
) -> dict[str, Any]:
    return {
        "ip": ip,
        "count": count,
        "first_seen": format_time(at(first)),
        "last_seen": format_time(at(first if last is None else last)),
        "source": source,
    }


def wire_batch(agent: str, batch_id: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    return {"agent": agent, "batch_id": batch_id, "sent_at": format_time(T0), "records": records}


def random_ip(rng: random.Random) -> str:
    """A random global-looking address, canonical; one in ten is IPv6."""
    if rng.random() < 0.1:
        groups = [rng.randrange(1, 0xFFFF) for _ in range(8)]
        groups[0] = 0x2A00 + rng.randrange(0x100)
        return str(ipaddress.IPv6Address(":".join(f"{g:x}" for g in groups)))
    return f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def random_records(rng: random.Random, n: int, pool: list[str] | None = None) -> list[dict[str, Any]]:
    """`n` records; with `pool`, addresses are drawn from it (so batches overlap)."""
    out = []
    for _ in range(n):
        ip = rng.choice(pool) if pool else random_ip(rng)
        start = rng.randrange(0, 86400)
        out.append(record(ip, rng.randrange(1, 50), start, start + rng.randrange(0, 600)))
    return out
