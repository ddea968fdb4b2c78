"""The Storage protocol: what the HTTP layer needs from a database, and nothing else.

Two implementations, `sqlite.SqliteStorage` and `postgres.PostgresStorage`, pass one contract
suite (tests/collector/storage/test_contract.py). Everything they receive is already validated
and aggregated (`ValidBatch`), so the SQL only adds numbers; everything they return is a plain
frozen dataclass with timezone-aware UTC datetimes.

The exactly-once rule lives in `store_batch`: the (agent, batch id) row and the counts it carries
are written in one transaction, and the batch row is inserted with ON CONFLICT DO NOTHING. The
unique key, not any check made before, decides which of two racing requests counts the batch.
A batch with a delivery identity (producer, seq, part) is decided instead by its producer's row,
read and written under a row lock in the same transaction as the counts (storage/producers.py).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, NamedTuple

from remote_uploader.collector.storage.model import (
    BucketDelta,
    Decision,
    DecisionDetail,
    DecisionQuery,
    MinutePoint,
    NewDecision,
    RollupResult,
    SeriesPoint,
    WindowCount,
    WindowQuery,
)
from remote_uploader.protocol import AgentReport, Network

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MICROSECOND = timedelta(microseconds=1)

SortKey = Literal["count", "last_seen"]
Role = Literal["agent", "read"]


def to_micros(moment: datetime) -> int:
    """Exact integer microseconds since the epoch (no float rounding)."""
    return (moment - EPOCH) // ONE_MICROSECOND


def from_micros(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


class IpDelta(NamedTuple):
    """What one batch adds to one address: the records for that address, summed over sources.

    A NamedTuple rather than a dataclass: a big batch makes 100,000 of them, and tuples are
    several times cheaper to build.
    """

    ip: str
    key: bytes  # the packed address (4 or 16 bytes): numeric order and CIDR ranges
    total: int  # occurrences ("count" would shadow tuple.count)
    first_us: int  # first seen, microseconds since the epoch: exact, and what both schemas store
    last_us: int


BulkForm = Literal["sqlite-image", "postgres-copy"]


@dataclass(frozen=True, slots=True)
class EncodedDeltas:
    """A batch's deltas in the bulk form one backend loads fastest (see storage/bulk.py), made
    before the write transaction, possibly in another process (so: bytes, picklable)."""

    form: BulkForm
    count: int  # how many deltas
    data: bytes
    # postgres-copy only: the bucket deltas as COPY text (the sqlite image holds them as a table)
    bucket_data: bytes = b""
    buckets: int = 0  # how many bucket deltas


@dataclass(frozen=True, slots=True)
class ValidBatch:
    """A validated batch, as the collector stores it (the agent's `agent.batch.Batch` is the one it
    is still filling: two things, two names). `deltas` has one entry per distinct address, in no particular order;
    or the same, already encoded for the storage backend (`Storage.bulk_form`).

    The lock order (two transactions that touch the same rows touch them in the same order, so
    PostgreSQL never has to break a deadlock between two ingests) is the upserts' ORDER BY.
    """

    agent: str
    batch_id: str
    sent_at: datetime
    records: int  # records as sent (before merging the same address from several sources)
    deltas: Sequence[IpDelta] | EncodedDeltas
    # Per (address, bucket, source): what the time buckets take. Empty when `deltas` is encoded
    # (the encoded form carries them) or when a caller stores totals only.
    buckets: Sequence[BucketDelta] = ()
    # The batch's addresses when `deltas` is encoded and the collector has rules to apply
    # (decisions/engine.py); with plain deltas they are the deltas' `ip`s.
    addresses: tuple[str, ...] = ()
    # The delivery identity (protocol.py): with a producer, the batch is recognised by
    # (producer, seq, part) at any age (storage/producers.py); without one (an agent from before
    # it), by (agent, batch_id), remembered for retention_days.
    producer: str | None = None
    seq: int = 0
    part: str = ""
    # With a producer: (stream id, start, end), the bytes of the agent's file records the batch covers
    # (docs/protocol.md, "Streams"); kept once the batch is stored whole (`Storage.producer_streams`).
    streams: tuple[tuple[str, int, int], ...] = ()

    def counted_addresses(self) -> Sequence[str]:
        if isinstance(self.deltas, EncodedDeltas):
            return self.addresses
        return [delta.ip for delta in self.deltas]
    clamped: int = 0  # time fields the collector changed to fit its bounds (see collector/batch.py)


@dataclass(frozen=True, slots=True)
class IpSummary:
    ip: str
    count: int
    first_seen: datetime
    last_seen: datetime
    agents: int


@dataclass(frozen=True, slots=True)
class AgentCount:
    agent: str
    count: int
    first_seen: datetime
    last_seen: datetime


@dataclass(frozen=True, slots=True)
class IpDetail:
    summary: IpSummary
    by_agent: list[AgentCount]


@dataclass(frozen=True, slots=True)
class AgentStats:
    name: str
    first_seen: datetime  # when its first batch arrived
    last_seen: datetime  # when its last batch (new or duplicate) arrived
    batches: int  # batches counted
    duplicates: int  # replays answered duplicate=true
    records: int  # records in the counted batches
    last_batch_id: str
    last_batch_sent_at: datetime


@dataclass(frozen=True, slots=True)
class StoredReport:
    """An agent's latest status report (docs/protocol.md, "Agent status") and when it arrived."""

    agent: str
    received_at: datetime
    report: AgentReport


@dataclass(frozen=True, slots=True)
class TokenInfo:
    name: str
    role: Role
    created_at: datetime


@dataclass(frozen=True, slots=True)
class BouncerInfo:
    """A bouncer key's name and where its next decision delta starts (never the key itself)."""

    name: str
    created_at: datetime
    last_seq: int | None  # the decision change sequence its last complete pull ended at; None: never pulled
    last_pull_at: datetime | None
    user_agent: str | None


@dataclass(frozen=True, slots=True)
class IpQuery:
    """Filters for `list_ips`. With `agent`, the numbers are that agent's own, not the totals."""

    since: datetime | None = None  # last_seen >= since
    min_count: int = 1
    agent: str | None = None
    network: Network | None = None
    sort: SortKey = "count"
    limit: int = 1000
    # Keyset cursor: the sort value (count, or last_seen in microseconds) and ip of the last row
    # of the previous page. Rows are ordered by (value DESC, ip ASC).
    after: tuple[int, str] | None = None


@dataclass(frozen=True, slots=True)
class BlocklistRow:
    ip: str
    key: bytes
    count: int
    last_seen: datetime


def network_range(network: Network) -> tuple[int, bytes, bytes]:
    """(family, lowest key, highest key) of a network, for `key BETWEEN lo AND hi`."""
    family = network.version
    return family, network.network_address.packed, network.broadcast_address.packed


class Storage(abc.ABC):
    """A collector database. Methods are blocking and thread-safe.

    Any method may raise `StorageUnavailable` when the database does not answer within the
    configured timeout; the HTTP layer turns that into 503 with Retry-After.
    """

    url: str
    # The form `store_batch` loads deltas in; a parser may encode them so beforehand (in a worker
    # process) with `bulk.encode`. None: plain deltas only.
    bulk_form: BulkForm | None = None

    @abc.abstractmethod
    def migrate(self) -> int:
        """Bring the schema to the newest version; return it. Safe to call from racing processes."""

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise `StorageUnavailable` unless a trivial query succeeds now."""

    # -- tokens -------------------------------------------------------------------------------

    @abc.abstractmethod
    def add_token(self, name: str, token_hash: str, role: Role, *, replace: bool = False) -> None:
        """Store a token hash under `name`; `TokenError` if the name exists and not `replace`."""

    @abc.abstractmethod
    def find_token(self, token_hash: str) -> tuple[str, Role, str] | None:
        """(name, role, stored hash) of the token with this hash, or None."""

    @abc.abstractmethod
    def token_by_name(self, name: str) -> tuple[Role, str] | None:
        """(role, stored hash) of the token named `name`, or None (dashboard sessions are keyed on it)."""

    @abc.abstractmethod
    def list_tokens(self) -> list[TokenInfo]: ...

    @abc.abstractmethod
    def revoke_token(self, name: str) -> bool:
        """Delete the token of `name`; False if there was none."""

    # -- bouncer keys (the CrowdSec-compatible decision stream) --------------------------------

    @abc.abstractmethod
    def add_bouncer(self, name: str, key_hash: str, *, replace: bool = False) -> None:
        """Store a bouncer key's hash under `name`; `BouncerError` if the name exists and not `replace`
        (replacing starts the new key from scratch: its first pull is a full one)."""

    @abc.abstractmethod
    def find_bouncer(self, key_hash: str) -> tuple[BouncerInfo, str] | None:
        """The bouncer whose key has this hash, with the stored hash; or None."""

    @abc.abstractmethod
    def list_bouncers(self) -> list[BouncerInfo]: ...

    @abc.abstractmethod
    def revoke_bouncer(self, name: str) -> bool:
        """Delete the key of `name`; False if there was none."""

    @abc.abstractmethod
    def record_pull(self, name: str, seq: int, at: datetime, user_agent: str | None) -> None:
        """Remember that `name` has every decision change up to `seq`, as of `at`."""

    # -- ingest -------------------------------------------------------------------------------

    @abc.abstractmethod
    def store_batch(self, batch: ValidBatch, received_at: datetime) -> bool:
        """Count `batch` unless its (agent, batch_id) was counted before. True if counted now.

        One transaction: insert the batch row ON CONFLICT DO NOTHING; if no row was inserted,
        only bump the agent's duplicate counter; otherwise add every delta to the per-address
        and per-address-per-agent totals and update the agent's stats, then commit. If the
        process dies before the commit, nothing of the batch is stored and the agent, which got
        no answer, sends it again; after the commit, a replay finds the batch row and counts
        nothing.
        """

    @abc.abstractmethod
    def prune_batches(self, received_before: datetime) -> int:
        """Forget batch ids received before the given time; return how many were deleted.

        Producers' rows are never pruned: they are what recognises a replay at any age, and each
        is bounded (storage/producers.py)."""

    @abc.abstractmethod
    def producer_state(self, producer: str) -> tuple[int, int] | None:
        """(watermark, entries kept above it) of a producer, or None if it never sent a batch."""

    @abc.abstractmethod
    def producer_streams(self, producer: str) -> dict[str, list[tuple[int, int]]]:
        """Per stream of a producer, the byte ranges [start, end) stored, merged and sorted ({} if none)."""

    @abc.abstractmethod
    def count_batches(self) -> int:
        """How many batch ids are remembered (for tests and metrics)."""

    # -- reads --------------------------------------------------------------------------------

    @abc.abstractmethod
    def list_ips(self, query: IpQuery) -> list[IpSummary]: ...

    @abc.abstractmethod
    def get_ip(self, ip: str) -> IpDetail | None: ...

    @abc.abstractmethod
    def list_agents(self) -> list[AgentStats]: ...

    @abc.abstractmethod
    def store_agent_report(self, agent: str, report: AgentReport, received_at: datetime) -> None:
        """Keep `report` as the agent's latest (one row per agent; a later arrival wins)."""

    @abc.abstractmethod
    def agent_reports(self) -> dict[str, StoredReport]:
        """Every agent's latest status report, by name."""

    # -- dashboard (sql_dashboard.py) ---------------------------------------------------------

    @abc.abstractmethod
    def minute_series(self, since: datetime, until: datetime | None = None) -> list[MinutePoint]:
        """Occurrences and distinct addresses per bucket of every level in [since, until], oldest
        first (rolled-up periods come as one point of their length)."""

    @abc.abstractmethod
    def ip_sources(self, ip: str, since: datetime) -> list[tuple[str, int]]:
        """(source label, occurrences) of one address in the buckets since `since`, most first."""

    @abc.abstractmethod
    def agent_sources(self, since: datetime) -> list[tuple[str, str, int]]:
        """(agent, source label, occurrences) in the buckets since `since`, by agent, most first."""

    @abc.abstractmethod
    def count_active_decisions(self, now: datetime) -> int: ...

    @abc.abstractmethod
    def active_by_rule(self, now: datetime) -> list[tuple[str, int]]:
        """(rule, active decisions) for every rule with one, most first."""

    @abc.abstractmethod
    def recent_ended_decisions(self, limit: int, scenario: str | None = None) -> list[Decision]:
        """The newest expired or deleted decisions (of one rule), newest first."""

    @abc.abstractmethod
    def ingest_minutes(self, since: datetime) -> list[tuple[datetime, int, int]]:
        """(minute, batches, records) received per minute since `since`, oldest first; minutes
        without a batch are left out. From the remembered batch ids, so as far back as
        `retention_days`."""

    @abc.abstractmethod
    def blocklist_rows(self, min_count: int, since: datetime | None, family: int | None) -> list[BlocklistRow]:
        """Addresses with total >= min_count (and last_seen >= since), in numeric order."""

    # -- time buckets (see model.py) ----------------------------------------------------------

    @abc.abstractmethod
    def window_counts(self, query: WindowQuery) -> list[WindowCount]:
        """Per address, the occurrences in the buckets overlapping [since, until] (all levels),
        with the filters of `query`; addresses under `min_count` left out. Numeric order, or most
        counted first when `limit` is set."""

    @abc.abstractmethod
    def window_series(
        self,
        since: datetime,
        until: datetime | None = None,
        *,
        ip: str | None = None,
        network: Network | None = None,
        agents: tuple[str, ...] | None = None,
        sources: tuple[str, ...] | None = None,
    ) -> list[SeriesPoint]:
        """Occurrences per bucket (summed over the addresses that match), oldest first; rows of
        the hour and day levels come as one point of their length."""

    def window_series_by_ip(
        self,
        since: datetime,
        ips: Sequence[str],
        *,
        agents: tuple[str, ...] | None = None,
        sources: tuple[str, ...] | None = None,
    ) -> dict[str, list[SeriesPoint]]:
        """`window_series(since, ip=ip, ...)` of each of `ips` (the top-addresses page's trends).
        A backend where a read costs a round trip (PostgreSQL) answers all of them in one."""
        return {ip: self.window_series(since, ip=ip, agents=agents, sources=sources) for ip in ips}

    @abc.abstractmethod
    def list_labels(self, kind: Literal["agent", "source"]) -> list[str]:
        """The agent names or source labels that have buckets, sorted."""

    @abc.abstractmethod
    def rollup(
        self, now: datetime, bucket_retention: timedelta, hour_retention: timedelta, day_retention: timedelta
    ) -> RollupResult:
        """Fold bucket rows older than `bucket_retention` into hour rows, hour rows older than
        `hour_retention` into day rows, delete day rows older than `day_retention`. Each fold
        adds and deletes in one transaction (in chunks), so no occurrence is lost or counted
        twice if the process dies between chunks."""

    # -- decisions (see model.py) -------------------------------------------------------------

    @abc.abstractmethod
    def add_decisions(
        self,
        decisions: Sequence[NewDecision],
        now: datetime,
        *,
        replace: bool = False,
        skip_covered: bool = False,
    ) -> list[tuple[Decision, bool]]:
        """Store decisions in one transaction, each with the next change sequence. Where the
        value already has an active decision (state active, until > now): without `replace`
        that one is returned with False and nothing is stored; with `replace` it is ended
        (state deleted) and the new one stored. With `skip_covered`, a value that an active
        decision on a wider range holds whole is not stored either (that range is returned
        with False): a firewall that blocks 203.0.113.0/24 gains nothing from 203.0.113.7,
        and the check is made under the write lock, so collectors sharing a database agree.
        Returns (decision, created) in input order."""

    @abc.abstractmethod
    def delete_decisions(
        self, now: datetime, *, value: str | None = None, decision_id: int | None = None
    ) -> list[Decision]:
        """End (state deleted) the active decisions of `value`, or the one with `decision_id`;
        returns them as they are now. Empty if there were none."""

    @abc.abstractmethod
    def expire_decisions(self, now: datetime, limit: int = 10000) -> list[Decision]:
        """Mark active decisions whose `until` is at or before `now` expired (a change, with its
        sequence, so that streams send them as deleted); at most `limit` per call."""

    @abc.abstractmethod
    def list_decisions(self, query: DecisionQuery) -> list[Decision]: ...

    @abc.abstractmethod
    def get_decision(self, decision_id: int) -> DecisionDetail | None:
        """A decision with what explains it: the rule's details and the addresses it counted."""

    @abc.abstractmethod
    def decision_seq(self) -> int:
        """The newest change sequence (0 before the first decision)."""

    @abc.abstractmethod
    def recent_decisions(self, values: Sequence[str], since: datetime) -> list[Decision]:
        """Decisions (any state) for these values created at or after `since`, oldest first:
        what escalation counts and what tells a rule where the previous decision ended."""
