"""A small time-to-live cache for the dashboard's expensive reads.

The overview's chart and the top-addresses table aggregate every bucket row of a window: on a
big store that is seconds of database work, and a dashboard is reloaded often, by several
people, with the same few views. So those results are kept for a few seconds to minutes (the
page says how old they are), computed once when several requests ask at the same time (one
computes, the others wait for it), and bounded in number. Counts a minute old are what a
dashboard shows anyway; the API and the query commands are never cached.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class TtlCache:
    def __init__(self, max_entries: int = 256, clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._locks: dict[Hashable, threading.Lock] = {}
        self._guard = threading.Lock()
        self._max = max_entries
        self._clock = clock

    def get(self, key: Hashable, ttl: float, compute: Callable[[], Any]) -> tuple[Any, float]:
        """(value, its age in seconds): a cached value younger than `ttl`, else `compute()`."""
        found = self._fresh(key, ttl)
        if found is not None:
            return found
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # one computation per key at a time; the others then find its result
            found = self._fresh(key, ttl)
            if found is not None:
                return found
            value = compute()
            with self._guard:
                self._entries[key] = (self._clock(), value)
                self._entries.move_to_end(key)
                while len(self._entries) > self._max:
                    old, _ = self._entries.popitem(last=False)
                    self._locks.pop(old, None)
            return value, 0.0

    def _fresh(self, key: Hashable, ttl: float) -> tuple[Any, float] | None:
        with self._guard:
            entry = self._entries.get(key)
        if entry is None:
            return None
        age = self._clock() - entry[0]
        return (entry[1], age) if age < ttl else None
