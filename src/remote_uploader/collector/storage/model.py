"""What the Storage protocol's time buckets and decisions take and return (see base.py).

Times in the database are integers: bucket starts in seconds since the epoch, everything else in
microseconds; what crosses the Storage boundary is timezone-aware UTC datetimes.

Buckets. Every counted occurrence lands in one row of `counts` keyed by (address, bucket start,
agent, source label); the bucket is the one holding the record's `last_seen`, of `bucket`
seconds (default 60). Older rows are folded into hour rows (`counts_hour`), older hour rows
into day rows (`counts_day`), and day rows are deleted after their retention: each occurrence is
in exactly one level at any time, so a window sums the three levels and counts it once.

Decisions. A decision (ban an address or a range until a time) has a monotonic *change
sequence*: `created_seq` when it was made, `ended_seq` when it was deleted or marked expired.
The sequence is taken under a row lock held to the commit, so sequence numbers become visible in
order: a reader that sees sequence S sees every change up to S. The state of all decisions as of
S follows from the two numbers alone (active at S: created_seq <= S and ended_seq is null or
> S), which is what lets a consumer page through a big answer over several reads and still get
one consistent picture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, NamedTuple

from remote_uploader.protocol import Network

Scope = Literal["Ip", "Range"]
DecisionState = Literal["active", "deleted", "expired"]
Level = Literal["bucket", "hour", "day"]

LEVEL_SECONDS = {"hour": 3600, "day": 86400}
MAX_LABEL = 512  # source labels are cut to this many characters for buckets (index key size)


class BucketDelta(NamedTuple):
    """What one batch adds to one (address, bucket, source) cell."""

    key: bytes  # packed address, 4 or 16 bytes
    bucket: int  # bucket start, seconds since the epoch
    source: str  # the record's source (the log file), cut to MAX_LABEL
    total: int


@dataclass(frozen=True, slots=True)
class WindowQuery:
    """Counts per address over the buckets that overlap [since, until].

    The window is rounded outward to whole buckets of each level: it counts every bucket whose
    span overlaps it, so at most one bucket (of the coarsest level it reaches) more than asked.
    """

    since: datetime
    until: datetime | None = None  # None: up to now and beyond (late rows included)
    agents: tuple[str, ...] | None = None  # only these agents' counts (exact names)
    sources: tuple[str, ...] | None = None  # only these sources' counts (fnmatch patterns)
    ips: tuple[str, ...] | None = None  # only these addresses (canonical)
    network: Network | None = None  # only addresses in this network
    min_count: int = 1
    limit: int | None = None  # most counted first when limited
    # With `limit`: "last_seen" keeps the addresses whose latest bucket in the window is newest
    # (then most counted), returned in that order.
    order: Literal["count", "last_seen"] = "count"


@dataclass(frozen=True, slots=True)
class WindowCount:
    ip: str
    key: bytes
    count: int
    first_bucket: datetime  # start of the earliest bucket with a count in the window
    last_bucket: datetime  # start of the latest one


@dataclass(frozen=True, slots=True)
class SeriesPoint:
    start: datetime  # bucket start
    seconds: int  # bucket length (the level's)
    count: int


@dataclass(frozen=True, slots=True)
class RollupResult:
    to_hour: int  # bucket rows folded into hour rows
    to_day: int  # hour rows folded into day rows
    dropped: int  # day rows deleted


@dataclass(frozen=True, slots=True)
class Evidence:
    """Why a decision was made: one address, its count in the window and the buckets it spans."""

    ip: str
    count: int
    first_bucket: datetime
    last_bucket: datetime


@dataclass(frozen=True, slots=True)
class NewDecision:
    value: str  # canonical address, or a network in canonical CIDR form (203.0.113.0/24)
    scope: Scope
    until: datetime
    type: str = "ban"
    origin: str = "remote-uploader"  # "cscli" for decisions made by hand
    scenario: str = "manual"  # the rule's name, or "manual"
    reason: str = ""
    # The rule's view when it decided (rule, window, min_count, escalation step...): free JSON.
    details: dict[str, object] = field(default_factory=dict)
    evidence: tuple[Evidence, ...] = ()


@dataclass(frozen=True, slots=True)
class Decision:
    id: int
    value: str
    scope: Scope
    type: str
    origin: str
    scenario: str
    reason: str
    created_at: datetime
    until: datetime
    state: DecisionState
    ended_at: datetime | None  # when it was deleted or marked expired
    created_seq: int
    ended_seq: int | None

    def active_at(self, seq: int) -> bool:
        """Active as of change sequence `seq` (whatever its `until` says)."""
        return self.created_seq <= seq and (self.ended_seq is None or self.ended_seq > seq)


@dataclass(frozen=True, slots=True)
class DecisionDetail:
    decision: Decision
    details: dict[str, object]
    evidence: list[Evidence]


@dataclass(frozen=True, slots=True)
class DecisionQuery:
    """Filters for `list_decisions`; rows come in id order, `after_id` pages on.

    `as_of_seq` with `new_after_seq`: decisions created in (new_after_seq, as_of_seq] and still
    active at as_of_seq (a stream's "new"). With `ended_after_seq`: decisions ended in
    (ended_after_seq, as_of_seq] that were created at or before ended_after_seq (its "deleted");
    with `ended_since_seq`: every decision ended in (ended_since_seq, as_of_seq], whenever made
    (what the decision engine re-examines).
    Without `as_of_seq`, `active` means active now (state active and until > `now`).
    """

    active: bool | None = True  # True: active only; False: ended only; None: all
    now: datetime | None = None  # with active=True: also until > now
    as_of_seq: int | None = None
    new_after_seq: int | None = None
    ended_after_seq: int | None = None
    ended_since_seq: int | None = None
    value: str | None = None  # exactly this value
    contains: str | None = None  # decisions whose address or range holds this address
    scopes: tuple[str, ...] | None = None
    origins: tuple[str, ...] | None = None
    scenarios: tuple[str, ...] | None = None
    after_id: int = 0
    limit: int = 1000


@dataclass(frozen=True, slots=True)
class MinutePoint:
    """One bucket of the overview chart: occurrences and distinct addresses counted in it."""

    start: datetime
    seconds: int  # the bucket's length: a minute bucket, or an hour or day it was rolled up into
    occurrences: int
    addresses: int
