"""The decision engine: rules applied to the addresses of each stored batch, and the timers.

Ingest hands the engine the addresses of every batch it counted (`submit`); a thread of its own
evaluates them (so a batch's answer never waits for the rules), at most `decision_interval`
after they came. For each rule, only those addresses can have crossed its threshold since the
last evaluation, so only they are counted over the rule's window (one indexed range of the
bucket table per address). The same thread marks decisions past their `until` expired every
`decision_interval` and rolls time buckets up every `rollup_interval`.

Nothing is kept only in memory: counts are in the database before an address is submitted, and
decisions are made by the database's `add_decisions` (one active decision per value, whoever
races for it, on SQLite or on several PostgreSQL collectors). Addresses submitted but not yet
evaluated when the process dies are evaluated again with their next hit.

A rule counts an address's hits in [now - window, now], but never from before the end of the
rule's previous decision on that value: an operator's `decision delete`, or an expiry, is not
undone at once by the same old hits.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from remote_uploader.collector.blocklist import NetworkSet
from remote_uploader.collector.decisions.rules import Rule
from remote_uploader.collector.decisions.values import ValueRejected, decision_value, subtract
from remote_uploader.collector.storage.base import Storage
from remote_uploader.collector.storage.model import (
    Decision,
    DecisionQuery,
    Evidence,
    NewDecision,
    RollupResult,
    WindowCount,
    WindowQuery,
)
from remote_uploader.collector.timeparse import format_duration
from remote_uploader.errors import CollectorError
from remote_uploader.logs import fields
from remote_uploader.protocol import Network

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]
MANUAL_ORIGIN = "cscli"  # CrowdSec's origin for decisions made by hand: bouncer filters agree
RULE_ORIGIN = "remote-uploader"


class DecisionRefused(ValueError):
    """A hand-made decision that cannot be made (bad value, all of it allowlisted)."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


@dataclass(frozen=True, slots=True)
class _Target:
    value: str
    scope: str
    count: int  # the address's count, or the range's addresses that crossed
    evidence: tuple[Evidence, ...]


def _evidence(row: WindowCount) -> Evidence:
    return Evidence(row.ip, row.count, row.first_bucket, row.last_bucket)


class DecisionEngine:
    def __init__(
        self,
        storage: Storage,
        rules: Sequence[Rule],
        allowlist: Sequence[Network] = (),
        *,
        decision_interval: float = 1.0,
        rollup_interval: float = 300.0,
        retentions: tuple[timedelta, timedelta, timedelta] = (
            timedelta(days=2),
            timedelta(days=30),
            timedelta(days=400),
        ),
        clock: Clock = lambda: datetime.now(UTC),
    ) -> None:
        self.storage = storage
        self.rules = tuple(rules)
        self.allowlist = tuple(allowlist)
        self._allowed = NetworkSet(self.allowlist)
        self.decision_interval = decision_interval
        self.rollup_interval = rollup_interval
        self.retentions = retentions
        self.clock = clock
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_rollup: datetime | None = None
        self._ended_mark: int | None = None  # change sequence up to which ended ranges were seen
        self.made = 0  # decisions made by rules (for metrics and tests)

    # -- the thread ---------------------------------------------------------------------------

    def submit(self, addresses: Iterable[str]) -> None:
        """Addresses of a batch just counted; evaluated by the engine's thread soon."""
        if not self.rules:
            return
        with self._lock:
            self._pending.update(addresses)
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="collector-decisions", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.decision_interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.run_once()
            except CollectorError as exc:  # database busy or down: the next round tries again
                logger.warning("decision round failed", extra=fields(error=exc))

    def run_once(self) -> list[Decision]:
        """One round: evaluate what was submitted, expire, roll up when due. Returns new decisions."""
        if self._ended_mark is None and self.rules:
            self._ended_mark = self.storage.decision_seq()  # before expiring: this round's ends count
        now = self.clock()
        expired = self.storage.expire_decisions(now)
        for decision in expired:
            logger.info("decision expired", extra=fields(id=decision.id, value=decision.value))
        uncovered = self._uncovered(now)
        with self._lock:
            pending, self._pending = self._pending | uncovered, set()
        try:
            made = self.evaluate(sorted(pending), now) if pending else []
        except BaseException:
            with self._lock:
                self._pending |= pending  # not lost: the next round tries them again
            raise
        if self._last_rollup is None or now - self._last_rollup >= timedelta(seconds=self.rollup_interval):
            self._last_rollup = now
            self.rollup(now)
        return made

    def _uncovered(self, now: datetime) -> set[str]:
        """Addresses inside ranges whose decisions ended since the last round (expired, or
        deleted by anyone: this process, the CLI, another collector on the same database).

        While a range was decided, the rules made no decision of their own inside it
        (`skip_covered`); once it ends, an address that still crosses a rule must get one
        without waiting for its next hit. The addresses with counts in the longest window of
        the rules are evaluated again (the rules' own thresholds then decide)."""
        if self._ended_mark is None:
            return set()
        seq = self.storage.decision_seq()
        if seq == self._ended_mark:
            return set()
        ended: list[Decision] = []
        after = 0
        while True:
            query = DecisionQuery(as_of_seq=seq, ended_since_seq=self._ended_mark, scopes=("Range",), after_id=after)
            page = self.storage.list_decisions(query)
            ended += page
            if len(page) < query.limit:
                break
            after = page[-1].id
        self._ended_mark = seq
        if not ended:
            return set()
        since = now - max(rule.window for rule in self.rules)
        least = min(rule.min_count for rule in self.rules)
        addresses: set[str] = set()
        for decision in ended:
            inside = WindowQuery(since, network=ipaddress.ip_network(decision.value), min_count=least)
            addresses.update(row.ip for row in self.storage.window_counts(inside))
        return addresses

    def rollup(self, now: datetime) -> RollupResult:
        result = self.storage.rollup(now, *self.retentions)
        if result.to_hour or result.to_day or result.dropped:
            logger.info(
                "time buckets rolled up",
                extra=fields(to_hour=result.to_hour, to_day=result.to_day, dropped=result.dropped),
            )
        return result

    # -- rules --------------------------------------------------------------------------------

    def evaluate(self, addresses: Sequence[str], now: datetime) -> list[Decision]:
        """Apply every rule to these addresses (just counted); store and return new decisions.

        Range rules go first: when an address and its range cross in the same round, the range
        is decided and the address, which it covers, is not (see `_uncovered` for its end)."""
        made: list[Decision] = []
        for rule in sorted(self.rules, key=lambda r: not r.ranges):
            made += self._evaluate_rule(rule, addresses, now)
        return made

    def _window(self, rule: Rule, since: datetime, **narrow: object) -> list[WindowCount]:
        query = WindowQuery(since=since, sources=rule.sources, agents=rule.agents, min_count=rule.min_count, **narrow)  # type: ignore[arg-type]
        return [row for row in self.storage.window_counts(query) if not self._allowed.contains_key(row.key)]

    def _evaluate_rule(self, rule: Rule, addresses: Sequence[str], now: datetime) -> list[Decision]:
        crossed = self._window(rule, now - rule.window, ips=tuple(addresses))
        if not crossed:
            return []
        targets = self._range_targets(rule, crossed, now - rule.window) if rule.ranges else self._ip_targets(crossed)
        return self._decide(rule, targets, now)

    def _ip_targets(self, rows: Sequence[WindowCount]) -> list[_Target]:
        return [_Target(row.ip, "Ip", row.count, (_evidence(row),)) for row in rows]

    def _prefix(self, rule: Rule, ip: str) -> Network | None:
        address = ipaddress.ip_address(ip)
        length = rule.prefix_v4 if address.version == 4 else rule.prefix_v6
        if length is None:
            return None
        return ipaddress.ip_network(f"{ip}/{length}", strict=False)

    def _range_targets(self, rule: Rule, crossed: Sequence[WindowCount], since: datetime) -> list[_Target]:
        prefixes = {prefix for row in crossed if (prefix := self._prefix(rule, row.ip)) is not None}
        targets = []
        for prefix in sorted(prefixes, key=lambda n: (n.version, n)):
            inside = self._window(rule, since, network=prefix)
            if len(inside) < rule.min_addresses:
                continue
            evidence = tuple(_evidence(row) for row in inside)
            for value, scope in subtract(str(prefix), self.allowlist):
                kept = tuple(e for e in evidence if ipaddress.ip_address(e.ip) in ipaddress.ip_network(value))
                targets.append(_Target(value, scope, len(inside), kept))
        return targets

    def _recount(self, rule: Rule, target: _Target, since: datetime) -> _Target | None:
        """The target counted again from `since` (the end of the rule's previous decision)."""
        if target.scope == "Ip" and not rule.ranges:
            rows = self._window(rule, since, ips=(target.value,))
            return self._ip_targets(rows)[0] if rows else None
        inside = self._window(rule, since, network=ipaddress.ip_network(target.value))
        if len(inside) < rule.min_addresses:
            return None
        return _Target(target.value, target.scope, len(inside), tuple(_evidence(row) for row in inside))

    def _decide(self, rule: Rule, targets: Sequence[_Target], now: datetime) -> list[Decision]:
        if not targets:
            return []
        remember = rule.escalation.remember if rule.escalation else timedelta(0)
        history = self.storage.recent_decisions([t.value for t in targets], now - max(rule.window, remember))
        by_value: dict[str, list[Decision]] = {}
        for decision in history:
            by_value.setdefault(decision.value, []).append(decision)
        new: list[NewDecision] = []
        for target in targets:
            past = by_value.get(target.value, [])
            if any(d.state == "active" and d.until > now for d in past):
                continue
            mine = [d for d in past if d.scenario == rule.name]
            ends = [min(d.until, d.ended_at or d.until) for d in mine]
            window_start = now - rule.window
            if ends and max(ends) > window_start:
                window_start = max(ends)
                recounted = self._recount(rule, target, window_start)
                if recounted is None:
                    continue
                target = recounted
            earlier = sum(1 for d in mine if d.created_at >= now - remember) if rule.escalation else 0
            duration = rule.duration_after(earlier)
            details = {
                **rule.describe(),
                "window_start": window_start.isoformat(),
                "window_end": now.isoformat(),
                "earlier_decisions": earlier,
                "decided_duration": format_duration(duration),
                "count" if target.scope == "Ip" and not rule.ranges else "addresses": target.count,
            }
            new.append(
                NewDecision(
                    value=target.value,
                    scope=target.scope,  # type: ignore[arg-type]
                    until=now + duration,
                    origin=RULE_ORIGIN,
                    scenario=rule.name,
                    reason=rule.reason or f"{rule.name}: {target.count} in {format_duration(rule.window)}",
                    details=details,
                    evidence=target.evidence,
                )
            )
        made = [decision for decision, created in self.storage.add_decisions(new, now, skip_covered=True) if created]
        for decision in made:
            self.made += 1
            logger.info(
                "decision made",
                extra=fields(id=decision.id, value=decision.value, rule=rule.name, until=decision.until.isoformat()),
            )
        return made

    # -- by hand ------------------------------------------------------------------------------

    def add_manual(
        self, value: str, duration: timedelta, reason: str = "", now: datetime | None = None
    ) -> list[Decision]:
        """A decision made by hand (replacing an active one of the same value); the allowlist is
        subtracted: `DecisionRefused` if nothing is left of the value."""
        now = now or self.clock()
        return add_manual(self.storage, self.allowlist, value, duration, reason, now)


def add_manual(
    storage: Storage, allowlist: Sequence[Network], value: str, duration: timedelta, reason: str, now: datetime
) -> list[Decision]:
    """What `decision add` and `POST /v1/rules/decisions` do (also without a running engine)."""
    try:
        canonical, _ = decision_value(value)
    except ValueRejected as exc:
        raise DecisionRefused("value", str(exc)) from None
    pieces = subtract(canonical, allowlist)
    if not pieces:
        raise DecisionRefused("value", f"{canonical} is in the allowlist")
    new = [
        NewDecision(
            value=piece,
            scope=scope,
            until=now + duration,
            origin=MANUAL_ORIGIN,
            scenario="manual",
            reason=reason,
            details={"manual": True, "duration": format_duration(duration), "requested": canonical},
        )
        for piece, scope in pieces
    ]
    return [decision for decision, _ in storage.add_decisions(new, now, replace=True)]


def delete_value(storage: Storage, value: str, now: datetime) -> list[Decision]:
    """End the active decisions of an address or CIDR (any spelling)."""
    try:
        canonical, _ = decision_value(value)
    except ValueRejected as exc:
        raise DecisionRefused("value", str(exc)) from None
    return storage.delete_decisions(now, value=canonical)
