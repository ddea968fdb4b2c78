"""Which batches of one producer are stored: a watermark and the few stored batches above it.

The rule that decides "this batch was counted already" (docs/protocol.md, "Idempotency"), kept
free of SQL so that both backends run the very same code inside their write transaction.

A producer (one agent state directory) numbers its sealed batches 1, 2, 3... (`seq`); a batch
split after a 413 is sent as parts that keep its number and add a path of halves (`part`: "0" and
"1", then "00", "01"...). Per producer the collector keeps:

- `watermark`: every seq up to it is settled (stored whole, or all of its parts);
- `ranges`: runs of settled seqs above the watermark (out of order arrivals: two uploads are in
  flight at once; a dead letter that is not sent until it is requeued);
- `parts`: for a seq above the watermark that is stored only in part, the part paths stored.

So a batch replayed at any age is recognised (a seq at or under the watermark is never forgotten,
unlike batch ids, which are pruned), and a part is recognised when its batch, an ancestor part or
a descendant part was stored: counting it would count some of the same records twice.

The bound: one row per producer, holding one range per gap above the watermark and one entry per
stored part of a batch not yet stored whole. A gap is a seq the agent still holds (in flight,
queued behind a failure, dead-lettered) or lost with a destroyed queue (the next queue is a new
producer, so such gaps stop growing). An agent sends oldest first, two at a time, so in practice a
producer's state is the watermark plus a handful of entries, whatever its age.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field

PART_DEPTH = 64  # protocol.MAX_PART_LEN: the finest half a part path can name


@dataclass
class ProducerState:
    watermark: int = 0
    ranges: list[list[int]] = field(default_factory=list)  # [lo, hi], sorted, disjoint, lo > watermark + 1
    parts: dict[int, list[str]] = field(default_factory=dict)

    @classmethod
    def load(cls, watermark: int, pending: str) -> ProducerState:
        if not pending:
            return cls(int(watermark))
        data = json.loads(pending)
        return cls(int(watermark), [list(r) for r in data.get("r", [])],
                   {int(seq): list(paths) for seq, paths in data.get("p", {}).items()})

    def dump(self) -> str:
        """The entries above the watermark as compact JSON ('' when there are none)."""
        if not self.ranges and not self.parts:
            return ""
        return json.dumps({"r": self.ranges, "p": {str(k): v for k, v in sorted(self.parts.items())}},
                          separators=(",", ":"))

    @property
    def size(self) -> int:
        """Entries kept above the watermark (what the bound in the module docstring is about)."""
        return len(self.ranges) + sum(len(paths) for paths in self.parts.values())

    def settled(self, seq: int) -> bool:
        if seq <= self.watermark:
            return True
        index = bisect.bisect_right(self.ranges, [seq, float("inf")]) - 1
        return index >= 0 and self.ranges[index][0] <= seq <= self.ranges[index][1]

    def admit(self, seq: int, part: str = "") -> bool:
        """Record (seq, part) as stored and return True, or return False if counting it could count
        something twice: the batch is settled, or a stored part overlaps this one.

        A whole batch arriving after some of its parts is refused too: the agent replaces a batch by
        its parts in one transaction, so that is a replay from before the split, and its records are
        partly counted already.
        """
        if self.settled(seq):
            return False
        stored = self.parts.get(seq, [])
        if not part:
            if stored:
                return False
            self._settle(seq)
            return True
        if any(p.startswith(part) or part.startswith(p) for p in stored):
            return False
        stored = sorted([*stored, part])
        if _covers(stored):
            self.parts.pop(seq, None)
            self._settle(seq)
        else:
            self.parts[seq] = stored
        return True

    def _settle(self, seq: int) -> None:
        ranges = self.ranges
        index = bisect.bisect_left(ranges, [seq, seq])
        ranges.insert(index, [seq, seq])
        # Merge with the neighbours it touches.
        if index + 1 < len(ranges) and ranges[index + 1][0] == seq + 1:
            ranges[index][1] = ranges.pop(index + 1)[1]
        if index > 0 and ranges[index - 1][1] == seq - 1:
            ranges[index - 1][1] = ranges.pop(index)[1]
        while ranges and ranges[0][0] == self.watermark + 1:
            self.watermark = ranges.pop(0)[1]


def _covers(paths: list[str]) -> bool:
    """True when prefix-free part paths together make the whole batch (their halves add up to 1)."""
    return sum(1 << (PART_DEPTH - len(path)) for path in paths) == 1 << PART_DEPTH


def merge_range(ranges: list[list[int]], start: int, end: int) -> list[list[int]]:
    """Byte ranges [start, end) of one stream, sorted and merged where they touch or overlap.

    What the collector keeps per (producer, stream) for `reset-state` (docs/protocol.md, "Streams"):
    an agent's batches cover each file's bytes in order, so a stream's ranges merge into one, plus one
    per batch still missing below a stored one (in flight, queued behind a failure, dead-lettered).
    """
    merged: list[list[int]] = []
    for lo, hi in sorted([*ranges, [start, end]]):
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return merged
