"""Group commit: batches that arrive while a write transaction runs are stored together in the next.

Why: on SQLite the cost of a commit is per page written to the WAL (and one fsync), not per
row, and an agent's batch of a few thousand addresses dirties most leaf pages of `ips`,
`ip_agents` and `counts`. Two batches committed together write those pages once and sync once,
where one after the other they write them twice and sync twice. There is one writer anyway.

How: each caller queues its item and then waits for the writer's lock. Whoever gets the lock
(the leader) takes every item queued so far, its own among them, and runs them in one
transaction, taking in before its COMMIT the items queued while it ran (up to `limit` in all);
the callers whose items it took find them done when they get the lock in turn, and return their
outcomes. Nothing is acknowledged before its commit: `submit` returns (or
raises) only once the transaction that held its item has committed (or failed). Each item keeps
its own idempotency decision (the storage claims its batch id inside the transaction, so a
replay queued beside its original is found a duplicate by the same rule as one that comes later).

A caller that waits longer than `timeout` for the lock while its item is still queued takes it
back and gets `StorageUnavailable` (503: the agent retries; nothing of it was stored). If a
leader has already taken the item, the caller waits for that transaction's outcome instead:
answering 503 for a batch that then commits would be safe (the retry is a duplicate), but the
outcome is a moment away.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from remote_uploader.errors import StorageUnavailable

T = TypeVar("T")
R = TypeVar("R")


@dataclass(eq=False)
class _Entry(Generic[T, R]):
    item: T
    taken: bool = False
    result: R | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def outcome(self) -> R:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


@dataclass
class GroupStats:
    groups: int = 0  # transactions run
    items: int = 0  # items stored in them
    largest: int = 0  # most items in one transaction


class GroupCommit(Generic[T, R]):
    """Runs queued items in groups under `lock`.

    `run(items, more)` gets every item queued when a caller took the lock; before it commits it
    calls `more()`, which hands it the items queued since (none once the group holds `limit`),
    until `more()` returns nothing; it returns one outcome per item it was given, in order (a
    value, or the exception that item raises). Taking late arrivals before the commit is what
    makes groups with two agents: each waits for its answer before it sends again, so a batch is
    never queued behind a running transaction with a second one, but it often arrives while the
    other agent's batch is being stored.

    `alone(item)`: items that must have a transaction of their own (they are run by their own
    caller, never taken into another's group)."""

    def __init__(
        self,
        lock: threading.Lock,
        timeout: float,
        run: Callable[[list[T], Callable[[], list[T]]], Sequence[R | BaseException]],
        *,
        alone: Callable[[T], bool] = lambda item: False,
        limit: int = 16,
        what: str = "storage",
    ) -> None:
        self._lock = lock
        self._timeout = timeout
        self._run = run
        self._alone = alone
        self._limit = limit
        self._what = what
        self._queued: list[_Entry[T, R]] = []
        self._changed = threading.Condition()
        self.stats = GroupStats()

    def submit(self, item: T) -> R:
        entry: _Entry[T, R] = _Entry(item)
        with self._changed:
            self._queued.append(entry)
            self._changed.notify_all()
        if not self._lock.acquire(timeout=self._timeout):
            with self._changed:
                if not entry.taken:
                    self._queued.remove(entry)
                    raise StorageUnavailable(f"{self._what}: busy (a write waited {self._timeout:g} s)")
            entry.done.wait()  # a leader runs it now: its outcome is moments away
            return entry.outcome()
        try:
            if not entry.taken:  # else a leader before us stored it (entry.done is set)
                self._lead(entry)
        finally:
            self._lock.release()
        return entry.outcome()

    def _take(self, own: _Entry[T, R] | None, room: int) -> list[_Entry[T, R]]:
        """`own` (if given) and up to `room` queued items that may share a transaction."""
        with self._changed:
            if own is not None and self._alone(own.item):
                taken = [own]
            else:
                taken = [e for e in self._queued if e is own or not self._alone(e.item)][:room]
                if own is not None and own not in taken:
                    taken = [own, *taken[: room - 1]]
            ids = set(map(id, taken))
            self._queued = [e for e in self._queued if id(e) not in ids]
            for entry in taken:
                entry.taken = True
            return taken

    def _lead(self, own: _Entry[T, R]) -> None:
        group = self._take(own, self._limit)

        def more() -> list[T]:
            if self._alone(own.item) or len(group) >= self._limit:
                return []
            late = self._take(None, self._limit - len(group))
            group.extend(late)
            return [entry.item for entry in late]

        try:
            outcomes = list(self._run([entry.item for entry in group], more))
            if len(outcomes) != len(group):
                raise RuntimeError(f"group commit: {len(outcomes)} outcomes for {len(group)} items")
        except BaseException as exc:  # the transaction failed: nothing of the group is stored
            outcomes = [exc] * len(group)
        stats = self.stats
        stats.groups += 1
        stats.items += len(group)
        stats.largest = max(stats.largest, len(group))
        for entry, outcome in zip(group, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                entry.error = outcome
            else:
                entry.result = outcome
            entry.done.set()

    def queued(self) -> int:
        """Items waiting for a leader now."""
        with self._changed:
            return len(self._queued)

    def wait_queued(self, count: int, timeout: float) -> bool:
        """Wait until at least `count` items wait for a leader (for tests that build a group)."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self._queued) >= count, timeout)
