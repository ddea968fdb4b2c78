"""Test-only crash points: kill this process with SIGKILL at a named step of the pipeline.

The reliability suite must kill the agent at the worst moments, not only at random ones:
right after a batch is sealed, right after a POST left, before an acknowledgement is recorded.
`REMOTE_UPLOADER_CRASH_AT="after_post:3"` kills the agent the third time it passes that point
(`name` alone means the first time; several points are separated by commas). Unset, each check
is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

POINTS = ("after_seal", "after_post", "before_ack", "after_ack", "during_import", "after_import")


def _parse(spec: str) -> dict[str, int]:
    plan: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, nth = item.partition(":")
        if name not in POINTS:
            raise ValueError(f"REMOTE_UPLOADER_CRASH_AT: unknown crash point {name!r} (known: {', '.join(POINTS)})")
        plan[name] = int(nth or 1)
    return plan


_plan = _parse(os.environ.get("REMOTE_UPLOADER_CRASH_AT", ""))
_seen: dict[str, int] = {}


def crash_point(name: str) -> None:
    """SIGKILL ourselves if the plan says so: no handler, no flush, like a power cut."""
    if not _plan:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _plan.get(name) == _seen[name]:
        os.kill(os.getpid(), signal.SIGKILL)
