"""A small cache for the dashboard's expensive reads: fresh for a while, then served stale
while one background thread computes the new value.

The overview's chart and the top-addresses table aggregate every bucket row of a window: on a
store of ten million bucket rows that is seconds of database work (docs/benchmarks.md), and a
dashboard is reloaded often, by several people, with the same few views. So:

- a value is reused while younger than its `ttl` (the page says as of when);
- an older one is still answered at once, and one background thread computes its successor
  (stale-while-revalidate): only the very first request of a view waits for the database;
- the `ttl` stretches to ten times what the last computation took, so refreshing a view never
  keeps the database busy more than a tenth of the time, however big the store;
- one computation per key at a time, and at most `max_entries` values.

Counts a minute old are what a dashboard shows anyway; the API and the query commands are never
cached.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

STRETCH = 10.0  # a value lives at least this many times as long as it took to compute


@dataclass
class _Entry:
    made: float
    cost: float  # seconds the computation took
    value: Any


class TtlCache:
    def __init__(self, max_entries: int = 256, clock: Callable[[], float] = time.monotonic,
                 background: bool = True) -> None:
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._locks: dict[Hashable, threading.Lock] = {}
        self._guard = threading.Lock()
        self._max = max_entries
        self._clock = clock
        self._background = background

    def get(self, key: Hashable, ttl: float, compute: Callable[[], Any]) -> tuple[Any, float]:
        """(value, its age in seconds)."""
        with self._guard:
            entry = self._entries.get(key)
            lock = self._locks.setdefault(key, threading.Lock())
        if entry is not None:
            age = self._clock() - entry.made
            if age >= max(ttl, STRETCH * entry.cost) and lock.acquire(blocking=False):
                if self._background:
                    threading.Thread(target=self._refresh, args=(key, compute, lock), daemon=True,
                                     name="dashboard-cache").start()
                else:
                    self._refresh(key, compute, lock)
                    return self.get(key, ttl, compute)
            return entry.value, age
        with lock:  # the first computation of a key: the others wait for it, then find it
            with self._guard:
                entry = self._entries.get(key)
            if entry is not None:
                return entry.value, self._clock() - entry.made
            return self._compute(key, compute), 0.0

    def _refresh(self, key: Hashable, compute: Callable[[], Any], lock: threading.Lock) -> None:
        try:
            self._compute(key, compute)
        except Exception:  # the stale value stays; the next request tries again
            logger.warning("dashboard refresh failed key=%s", key, exc_info=True)
        finally:
            lock.release()

    def _compute(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        started = self._clock()
        value = compute()
        made = self._clock()
        with self._guard:
            self._entries[key] = _Entry(made, made - started, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                old, _ = self._entries.popitem(last=False)
                if old != key:
                    self._locks.pop(old, None)
        return value
