"""Decisions in SQL, shared by SQLite and PostgreSQL (mixed into `SqlStorage`).

Every write takes the `sequences` row of 'decisions' first (an UPDATE, so PostgreSQL holds its
row lock to the commit; SQLite has one writer anyway). Writers therefore run one after the
other and commit their sequence numbers in order: no reader can see change S + 1 before S.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from remote_uploader.collector.storage.base import from_micros, to_micros
from remote_uploader.collector.storage.model import (
    Decision,
    DecisionDetail,
    DecisionQuery,
    Evidence,
    NewDecision,
)

COLUMNS = "id, value, scope, type, origin, scenario, reason, created_at, until, state, ended_at, created_seq, ended_seq"
MAX_EVIDENCE = 1000  # addresses kept to explain one decision (a /64 could have millions)


def value_range(value: str) -> tuple[int, bytes, bytes]:
    """(family, first packed address, last packed address) of an address or CIDR value."""
    network = ipaddress.ip_network(value, strict=False)
    return network.version, network.network_address.packed, network.broadcast_address.packed


def _seconds_moment(seconds: int) -> datetime:
    from remote_uploader.collector.storage.sql_windows import _moment

    return _moment(seconds)


def _decision(row: Sequence[Any]) -> Decision:
    (id_, value, scope, type_, origin, scenario, reason, created, until, state, ended, cseq, eseq) = row
    return Decision(
        id=int(id_),
        value=value,
        scope=scope,
        type=type_,
        origin=origin,
        scenario=scenario,
        reason=reason,
        created_at=from_micros(int(created)),
        until=from_micros(int(until)),
        state=state,
        ended_at=None if ended is None else from_micros(int(ended)),
        created_seq=int(cseq),
        ended_seq=None if eseq is None else int(eseq),
    )


class DecisionsSql:
    """Needs `_read`, `_write` and `_sql` from the class it is mixed into."""

    if TYPE_CHECKING:

        def _read(self) -> Any: ...

        def _write(self) -> Any: ...

        def _sql(self, sql: str) -> str: ...

    def _take_sequence(self, cur: Any) -> int:
        cur.execute(self._sql("UPDATE sequences SET value = value WHERE name = 'decisions'"))
        cur.execute(self._sql("SELECT value FROM sequences WHERE name = 'decisions'"))
        return int(cur.fetchone()[0])

    def _save_sequence(self, cur: Any, value: int) -> None:
        cur.execute(self._sql("UPDATE sequences SET value = ? WHERE name = 'decisions'"), (value,))

    def _end(self, cur: Any, decision_id: int, state: str, now: int, seq: int) -> None:
        cur.execute(
            self._sql("UPDATE decisions SET state = ?, ended_at = ?, ended_seq = ? WHERE id = ?"),
            (state, now, seq, decision_id),
        )

    def _select(self, cur: Any, where: str, params: Sequence[Any], tail: str = "") -> list[Decision]:
        cur.execute(self._sql(f"SELECT {COLUMNS} FROM decisions WHERE {where} {tail}"), params)
        return [_decision(row) for row in cur.fetchall()]

    # -- writes -------------------------------------------------------------------------------

    def _covering(self, cur: Any, value: str, now_us: int) -> Decision | None:
        """An active decision on a wider range that holds all of `value` (the oldest)."""
        family, lo, hi = value_range(value)
        found = self._select(
            cur,
            "family = ? AND lo <= ? AND hi >= ? AND state = 'active' AND until > ? AND value <> ?",
            (family, lo, hi, now_us, value),
            "ORDER BY id LIMIT 1",
        )
        return found[0] if found else None

    def add_decisions(
        self,
        decisions: Sequence[NewDecision],
        now: datetime,
        *,
        replace: bool = False,
        skip_covered: bool = False,
    ) -> list[tuple[Decision, bool]]:
        results: list[tuple[Decision, bool]] = []
        now_us = to_micros(now)
        with self._write() as cur:
            seq = self._take_sequence(cur)
            for new in decisions:
                if skip_covered and (covering := self._covering(cur, new.value, now_us)) is not None:
                    results.append((covering, False))
                    continue
                current = self._select(cur, "value = ? AND state = 'active'", (new.value,), "ORDER BY id")
                kept = None
                for old in current:
                    if old.until > now and not replace:
                        kept = old
                        continue
                    seq += 1
                    self._end(cur, old.id, "deleted" if old.until > now else "expired", now_us, seq)
                if kept is not None:
                    results.append((kept, False))
                    continue
                seq += 1
                family, lo, hi = value_range(new.value)
                cur.execute(
                    self._sql(
                        "INSERT INTO decisions (value, scope, family, lo, hi, type, origin, scenario, reason, "
                        "details, created_at, until, state, created_seq) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'active', ?) RETURNING id"
                    ),
                    (
                        new.value,
                        new.scope,
                        family,
                        lo,
                        hi,
                        new.type,
                        new.origin,
                        new.scenario,
                        new.reason,
                        json.dumps(new.details, sort_keys=True, default=str),
                        now_us,
                        to_micros(new.until),
                        seq,
                    ),
                )
                decision_id = int(cur.fetchone()[0])
                if new.evidence:
                    cur.executemany(
                        self._sql(
                            "INSERT INTO decision_evidence (decision_id, ip, total, first_bucket, last_bucket) "
                            "VALUES (?, ?, ?, ?, ?)"
                        ),
                        [
                            (
                                decision_id,
                                e.ip,
                                e.count,
                                int(e.first_bucket.timestamp()),
                                int(e.last_bucket.timestamp()),
                            )
                            for e in new.evidence[:MAX_EVIDENCE]
                        ],
                    )
                made = Decision(
                    decision_id,
                    new.value,
                    new.scope,
                    new.type,
                    new.origin,
                    new.scenario,
                    new.reason,
                    from_micros(now_us),
                    from_micros(to_micros(new.until)),
                    "active",
                    None,
                    seq,
                    None,
                )
                results.append((made, True))
            self._save_sequence(cur, seq)
        return results

    def delete_decisions(
        self, now: datetime, *, value: str | None = None, decision_id: int | None = None
    ) -> list[Decision]:
        if (value is None) == (decision_id is None):
            raise ValueError("give exactly one of value and decision_id")
        now_us = to_micros(now)
        with self._write() as cur:
            seq = self._take_sequence(cur)
            if value is not None:
                found = self._select(cur, "value = ? AND state = 'active'", (value,), "ORDER BY id")
            else:
                found = self._select(cur, "id = ? AND state = 'active'", (decision_id,))
            ended = []
            for decision in found:
                seq += 1
                self._end(cur, decision.id, "deleted", now_us, seq)
                ended.append(self._select(cur, "id = ?", (decision.id,))[0])
            self._save_sequence(cur, seq)
        return ended

    def expire_decisions(self, now: datetime, limit: int = 10000) -> list[Decision]:
        now_us = to_micros(now)
        with self._read() as cur:
            cur.execute(
                self._sql("SELECT id FROM decisions WHERE state = 'active' AND until <= ? ORDER BY until, id LIMIT ?"),
                (now_us, limit),
            )
            due = [int(i) for (i,) in cur.fetchall()]
        if not due:
            return []
        with self._write() as cur:
            seq = self._take_sequence(cur)
            ended = []
            for decision_id in due:
                # Checked again under the lock: another process may have ended it meanwhile.
                found = self._select(cur, "id = ? AND state = 'active' AND until <= ?", (decision_id, now_us))
                if not found:
                    continue
                seq += 1
                self._end(cur, decision_id, "expired", now_us, seq)
                ended.append(self._select(cur, "id = ?", (decision_id,))[0])
            self._save_sequence(cur, seq)
        return ended

    # -- reads --------------------------------------------------------------------------------

    def list_decisions(self, query: DecisionQuery) -> list[Decision]:
        # A stream's delta asks for a few changes among many decisions: "+id" keeps SQLite from
        # walking the whole table in id order (its choice for "ORDER BY id LIMIT ?"), so that it
        # uses the created_seq / ended_seq index and sorts the few rows (4 ms -> 0.03 ms of CPU
        # per empty delta at 20,000 decisions, growing with the table otherwise).
        ended_after = query.ended_after_seq if query.ended_after_seq is not None else query.ended_since_seq
        delta = query.as_of_seq is not None and (query.new_after_seq is not None or ended_after is not None)
        where = ["+id > ?" if delta else "id > ?"]
        params: list[Any] = [query.after_id]
        seq = query.as_of_seq
        if seq is not None:
            where.append("created_seq <= ?")
            params.append(seq)
            if ended_after is not None:
                where.append("ended_seq > ? AND ended_seq <= ?")
                params += [ended_after, seq]
                if query.ended_after_seq is not None:
                    where.append("created_seq <= ?")
                    params.append(query.ended_after_seq)
            else:
                if query.new_after_seq is not None:
                    where.append("created_seq > ?")
                    params.append(query.new_after_seq)
                if query.active is True:
                    where.append("(ended_seq IS NULL OR ended_seq > ?)")
                    params.append(seq)
                elif query.active is False:
                    where.append("ended_seq <= ?")
                    params.append(seq)
        elif query.active is True:
            where.append("state = 'active'")
        elif query.active is False:
            where.append("state <> 'active'")
        if query.active is True and query.now is not None:
            where.append("until > ?")
            params.append(to_micros(query.now))
        if query.value is not None:
            where.append("value = ?")
            params.append(query.value)
        for column, values in (("scope", query.scopes), ("origin", query.origins), ("scenario", query.scenarios)):
            if values is not None:
                if not values:
                    return []
                where.append(f"{column} IN ({','.join('?' * len(values))})")
                params += list(values)
        if query.contains is not None:
            family, key, _ = value_range(query.contains)
            where.append("family = ? AND lo <= ? AND hi >= ?")
            params += [family, key, key]
        params.append(query.limit)
        with self._read() as cur:
            return self._select(cur, " AND ".join(where), params, "ORDER BY id LIMIT ?")

    def get_decision(self, decision_id: int) -> DecisionDetail | None:
        with self._read() as cur:
            found = self._select(cur, "id = ?", (decision_id,))
            if not found:
                return None
            cur.execute(self._sql("SELECT details FROM decisions WHERE id = ?"), (decision_id,))
            details = json.loads(cur.fetchone()[0])
            cur.execute(
                self._sql(
                    "SELECT ip, total, first_bucket, last_bucket FROM decision_evidence WHERE decision_id = ? "
                    "ORDER BY total DESC, ip"
                ),
                (decision_id,),
            )
            evidence = [
                Evidence(ip, int(total), _seconds_moment(int(first)), _seconds_moment(int(last)))
                for ip, total, first, last in cur.fetchall()
            ]
        return DecisionDetail(found[0], details, evidence)

    def decision_seq(self) -> int:
        with self._read() as cur:
            cur.execute(self._sql("SELECT value FROM sequences WHERE name = 'decisions'"))
            return int(cur.fetchone()[0])

    def recent_decisions(self, values: Sequence[str], since: datetime) -> list[Decision]:
        found: list[Decision] = []
        unique = sorted(set(values))
        with self._read() as cur:
            for start in range(0, len(unique), 500):
                chunk = unique[start : start + 500]
                found += self._select(
                    cur,
                    f"value IN ({','.join('?' * len(chunk))}) AND created_at >= ?",
                    [*chunk, to_micros(since)],
                )
        found.sort(key=lambda d: (d.created_at, d.id))
        return found
