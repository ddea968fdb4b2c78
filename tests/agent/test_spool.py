"""The queue database: atomic seal+offset, acknowledgement, dead letters, splits, bad state."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from remote_uploader.agent.source import FileIdentity
from remote_uploader.agent.spool import DB_NAME, SealedBatch, Spool, StateLock, prepare_state_dir
from remote_uploader.errors import CorruptStateError, StateLockedError

IDENTITY = FileIdentity(1, 2, 3, b"x" * 16)


def sealed(batch_id: str, records: int = 2) -> SealedBatch:
    return SealedBatch(batch_id, 1.0, records, records * 3, "identity", b"{}")


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    prepare_state_dir(tmp_path / "state")
    return Spool(tmp_path / "state")


def test_a_batch_and_its_offsets_are_committed_together(spool: Spool) -> None:
    fid = spool.register_file("/var/log/a", "/var/log/a", IDENTITY)
    spool.commit(sealed("b1"), {fid: 1000})
    assert spool.files()[0].offset == 1000
    queued = spool.next_batch()
    assert queued is not None and queued.batch_id == "b1"


def test_a_failed_commit_moves_no_offset(spool: Spool) -> None:
    fid = spool.register_file("/var/log/a", "/var/log/a", IDENTITY)
    spool.commit(sealed("b1"), {fid: 10})
    with pytest.raises(sqlite3.IntegrityError):
        spool.commit(sealed("b1"), {fid: 20})  # duplicate batch id: the transaction fails whole
    assert spool.files()[0].offset == 10
    assert spool.stats().batches == 1


def test_offsets_never_move_backwards_in_a_commit(spool: Spool) -> None:
    fid = spool.register_file("/var/log/a", "/var/log/a", IDENTITY)
    spool.commit(None, {fid: 500})
    spool.commit(None, {fid: 100})
    assert spool.files()[0].offset == 500


def test_only_an_ack_removes_a_batch_and_dead_letters_can_be_requeued(spool: Spool) -> None:
    spool.commit(sealed("b1"), {})
    spool.commit(sealed("b2"), {})
    first = spool.next_batch()
    assert first is not None
    spool.ack(first.seq)
    second = spool.next_batch()
    assert second is not None and second.batch_id == "b2"
    spool.dead_letter(second.seq, 400, "bad")
    assert spool.next_batch() is None
    assert spool.stats().dead_batches == 1
    assert spool.requeue_dead_letters() == 1
    again = spool.next_batch()
    assert again is not None and again.batch_id == "b2"


def test_a_split_replaces_the_batch_by_its_parts(spool: Spool) -> None:
    spool.commit(sealed("b1", records=4), {})
    queued = spool.next_batch()
    assert queued is not None
    spool.split(queued.seq, [sealed("b1.0"), sealed("b1.1")])
    ids = []
    while (item := spool.next_batch(ids[-1][0] if ids else 0)) is not None:
        ids.append((item.seq, item.batch_id))
    assert [batch_id for _, batch_id in ids] == ["b1.0", "b1.1"]


def test_state_is_private(tmp_path: Path) -> None:
    import os

    os.umask(0o022)
    prepare_state_dir(tmp_path / "state")
    Spool(tmp_path / "state").close()
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "state" / DB_NAME).stat().st_mode) == 0o600


def test_a_second_lock_holder_is_refused(tmp_path: Path) -> None:
    prepare_state_dir(tmp_path)
    first = StateLock(tmp_path)
    first.acquire()
    import multiprocessing

    # flock is per open file description: a second process must be refused.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        message = pool.apply(_try_lock, (str(tmp_path),))
    assert "another agent" in message
    first.release()


def _try_lock(path: str) -> str:
    try:
        StateLock(Path(path)).acquire()
    except StateLockedError as exc:
        return str(exc)
    return "acquired"


@pytest.mark.parametrize("damage", ["garbage", "zeros", "truncated", "future"])
def test_damaged_or_future_queue_is_refused_with_the_recovery_command(tmp_path: Path, damage: str) -> None:
    state = tmp_path / "state"
    prepare_state_dir(state)
    spool = Spool(state)
    spool.commit(sealed("b1"), {})
    spool.close()
    db = state / DB_NAME
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    if damage == "garbage":
        db.write_bytes(b"this is not a database at all" * 100)
    elif damage == "zeros":
        db.write_bytes(b"\0" * 8192)
    elif damage == "truncated":
        db.write_bytes(db.read_bytes()[:1500])
    else:
        conn = sqlite3.connect(db)
        conn.execute("PRAGMA user_version=99")
        conn.close()
    with pytest.raises(CorruptStateError) as caught:
        Spool(state)
    assert "reset-state" in str(caught.value)


def test_a_sealed_batch_body_is_format_2_json_with_escaped_sources() -> None:
    import gzip
    import json

    from remote_uploader.agent.batch import Batch, records_of, seal

    batch = Batch(created=0.0)
    batch.add('/var/log/we"ird\\name.log', {"203.0.113.7": 2, "2001:db8::1": 1}, 1_700_000_000.5)
    batch.add('/var/log/we"ird\\name.log', {"203.0.113.7": 1}, 1_700_000_001.25)
    sealed = seal(batch, "web-1", compress=True)
    assert sealed is not None
    document = json.loads(gzip.decompress(sealed.body))
    assert document["agent"] == "web-1" and document["batch_id"] == sealed.batch_id
    assert document["format"] == 2 and document["sources"] == ['/var/log/we"ird\\name.log']
    assert document["groups"] == [{"source": 0, "first_seen": 1_700_000_000_500_000,
                                   "last_seen": 1_700_000_001_250_000, "ip": ["203.0.113.7", "2001:db8::1"],
                                   "count": [3, 1]}]
    assert [record.to_json() for record in records_of(document)] == [
        {"ip": "203.0.113.7", "count": 3, "first_seen": "2023-11-14T22:13:20.500000Z",
         "last_seen": "2023-11-14T22:13:21.250000Z", "source": '/var/log/we"ird\\name.log'},
        {"ip": "2001:db8::1", "count": 1, "first_seen": "2023-11-14T22:13:20.500000Z",
         "last_seen": "2023-11-14T22:13:21.250000Z", "source": '/var/log/we"ird\\name.log'},
    ]
    assert (sealed.records, sealed.occurrences) == (2, 4)


def test_a_write_refused_by_a_file_size_limit_is_retryable_not_fatal(tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes SQLite report an I/O error (EFBIG), not SQLITE_FULL: same handling."""
    import subprocess
    import sys

    script = f"""
import resource, signal, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[2] / "src")!r})
from pathlib import Path
from remote_uploader.agent.spool import SealedBatch, Spool, prepare_state_dir
from remote_uploader.errors import DiskFullError
state = Path({str(tmp_path / "state")!r})
prepare_state_dir(state)
spool = Spool(state)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
try:
    for n in range(100):
        spool.commit(SealedBatch(f"b{{n}}", 1.0, 1, 1, "identity", b"x" * 50_000), {{}})
except DiskFullError as exc:
    print("retryable:", exc)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert "retryable:" in result.stdout, result.stderr
