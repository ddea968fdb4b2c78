"""A damaged queue database: truncated, zero-filled, overwritten with garbage, or from a future schema.

The agent refuses to start with one clear message naming the recovery command, every time (no
crash loop that rewrites or re-sends anything), never touches the damaged file, and sends nothing.
The documented recovery (`reset-state`) then delivers exactly: from the offsets where they survived,
else from delivered.json (what the collector acknowledged), kept beside the database.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers.agent import write_access_log, write_config
from tests.helpers.receiver import Receiver
from tests.reliability.harness import AgentProcess, Row, record, run, tally

EXIT_STATE = 4
REFUSALS = 3


def _damage(db: Path, kind: str) -> None:
    size = db.stat().st_size
    if kind == "truncated":
        os.truncate(db, size // 3)
    elif kind == "zero-filled":
        db.write_bytes(b"\0" * size)
    elif kind == "garbage":
        db.write_bytes(os.urandom(size))
    elif kind == "future-schema":
        conn = sqlite3.connect(db)
        conn.execute("PRAGMA user_version = 99")
        conn.commit()
        conn.close()
    else:
        raise ValueError(kind)


def _batch_requests(receiver: Receiver) -> int:
    """Batches posted (the `test` command's token probe, an empty object, is not one)."""
    return sum(1 for request in receiver.requests() if request.batch_id)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("kind", ["truncated", "zero-filled", "garbage", "future-schema"])
def test_damaged_queue_is_refused_clearly_and_recovered_by_the_documented_command(
        tmp_path: Path, receiver: Receiver, kind: str) -> None:
    log = tmp_path / "access.log"
    delivered = write_access_log(log, 3000, seed=1, distinct=1500)
    config = write_config(tmp_path / "agent.toml", url=receiver.url, token=receiver.token,
                          state_dir=tmp_path / "state", sources=[str(log)],
                          read={"poll_interval": 0.1}, shutdown={"drain_timeout": 1.0})
    assert run(config, "once").returncode == 0
    fresh = write_access_log(log, 1000, seed=2, distinct=1500, append=True)
    db = tmp_path / "state" / "queue.db"
    _damage(db, kind)
    damaged = _digest(db)
    batches_before = _batch_requests(receiver)

    refusals = [run(config, "once") for _ in range(REFUSALS - 1)]
    forever = AgentProcess(tmp_path, "forever", "-c", str(config)).start()
    forever_code = forever.wait(60)
    checked = run(config, "test")

    for refused in refusals:
        assert refused.returncode == EXIT_STATE
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1, refused.stderr  # one sentence, no traceback
        assert "remote-uploader reset-state" in lines[0]
        assert str(db) in lines[0]
    assert forever_code == EXIT_STATE, forever.stderr()
    assert "reset-state" in forever.stderr() and "Traceback" not in forever.stderr()
    assert "reset-state" in checked.stdout and checked.returncode != 0
    assert _batch_requests(receiver) == batches_before, "a damaged queue must not send anything"
    assert _digest(db) == damaged, "the damaged file is evidence: never rewritten by the agent"

    # The documented recovery: plain `reset-state` keeps the offsets where they can be read.
    started = time.monotonic()
    kept = run(config, "reset-state")
    assert kept.returncode == 0, kept.stdout + kept.stderr
    if kind == "future-schema":  # the offsets are readable: exact
        assert "recovered 1 rows of files" in kept.stdout
    else:  # the offsets went with the file: delivered.json, beside it, says what was acknowledged
        assert "recovered the offsets of 1 files from delivered.json" in kept.stdout, kept.stdout
    final = run(config, "once")
    recovery = time.monotonic() - started
    assert final.returncode == 0, final.stderr
    assert list((tmp_path / "state").glob("queue.db.damaged-*")), "the damaged file is kept aside"

    lost, doubled = tally(delivered + fresh, receiver.counts())
    record(Row(f"state/{kind}", f"queue database {kind.replace('-', ' ')}",
               f"queue.db {kind.replace('-', ' ')} between runs; `once` run {REFUSALS - 1} times, `forever` and "
               "`test` once: each refused with the recovery command, nothing sent, file untouched; then "
               "`reset-state` as documented (offsets from the database, or else from "
               "delivered.json); recovery = reset-state + `once`", REFUSALS, lost, doubled, recovery))
    assert (lost, doubled) == (0, 0)
    assert Counter(receiver.counts()) == delivered + fresh
