"""Streams: the byte ranges a batch covers, and resuming past what the collector stored (issue 9, hole 10).

After the queue database is destroyed, `reset-state` resumes each file from delivered.json, then past
the range the collector says it stored *of that very stream*. Every rule that says "these are the
same bytes" is tested here where two different things look alike: the same path with other content,
the same file before a truncation, a range above a gap.
"""

from __future__ import annotations

import json
from pathlib import Path

from remote_uploader.agent.recovery import resume_past_stored
from remote_uploader.agent.source import FileIdentity
from remote_uploader.agent.spool import SealedBatch, Spool

IDENTITY = FileIdentity(1, 2, 10, b"\x01" * 16)


def _sealed(n: int) -> SealedBatch:
    return SealedBatch(f"batch-{n}", 0.0, 1, 1, "identity", b"{}")


def _stream(spool: Spool, fid: int) -> str:
    return str(spool._query("SELECT stream_id FROM files WHERE fid = ?", (fid,))[0][0])


def test_a_batch_range_starts_where_its_streams_last_batch_ended_so_bytes_without_addresses_are_covered(
        tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    fid = spool.register_file("/logs/a.log", "/logs/a.log", IDENTITY)
    stream = _stream(spool, fid)
    assert spool.stream_ranges({fid: 100}) == [(stream, 0, 100)]
    spool.commit(_sealed(1), {fid: 100}, seq=1)
    spool.commit(None, {fid: 150})  # lines without an address: the offset moves, no batch carries them
    assert spool.stream_ranges({fid: 200}) == [(stream, 100, 200)]
    spool.commit(_sealed(2), {fid: 200}, seq=2)
    assert spool.stream_ranges({fid: 260}) == [(stream, 200, 260)]


def test_an_offset_moved_back_starts_a_new_stream_and_a_rename_does_not(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    fid = spool.register_file("/logs/a.log", "/logs/a.log", IDENTITY)
    spool.commit(_sealed(1), {fid: 5000}, seq=1)
    first = _stream(spool, fid)
    spool.update_file(fid, path="/logs/a.log.1")  # a rename: the same bytes at the same offsets
    assert _stream(spool, fid) == first
    spool.update_file(fid, offset=0)  # truncated and rewritten: other bytes at the same offsets
    second = _stream(spool, fid)
    assert second != first
    assert spool.stream_ranges({fid: 300}) == [(second, 0, 300)]


def test_a_range_stored_for_a_previous_incarnation_of_the_file_moves_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    fid = spool.register_file("/logs/a.log", "/logs/a.log", IDENTITY)
    old = _stream(spool, fid)
    spool.commit(_sealed(1), {fid: 5000}, seq=1)  # stored at the collector, say, up to 5000
    spool.update_file(fid, offset=0)  # then the same path, the same inode, new content
    row = {"fid": fid, "stream_id": _stream(spool, fid), "offset": 300, "sent_end": 300}
    assert resume_past_stored([row], {old: [(0, 5000)]}) == 0
    assert row["offset"] == 300, "5000 bytes of the old content were stored: not of these"


def test_a_range_stored_for_another_stream_of_the_same_path_moves_nothing() -> None:
    ours, theirs = "11" * 16, "22" * 16
    rows = [{"fid": 1, "path": "/logs/a.log", "stream_id": ours, "offset": 100},
            {"fid": 2, "path": "/logs/a.log", "stream_id": theirs, "offset": 100}]
    assert resume_past_stored(rows, {theirs: [(0, 900)]}) == 1
    assert [row["offset"] for row in rows] == [100, 900]


def test_a_stored_range_holding_the_offset_moves_it_to_its_end_and_one_above_a_gap_does_not() -> None:
    stream = "33" * 16
    held = {"stream_id": stream, "offset": 100}
    above_gap = {"stream_id": stream, "offset": 100}
    assert resume_past_stored([held], {stream: [(0, 50), (80, 400), (500, 600)]}) == 1
    assert held["offset"] == 400, "stored from 80 to 400: reading resumes at 400, not at the next range"
    # 100..200 were never stored (a batch lost with the queue): read again, with what follows (a double
    # count of 200..300, the documented residual), never skipped (a loss).
    assert resume_past_stored([above_gap], {stream: [(200, 300)]}) == 0
    assert above_gap["offset"] == 100


def test_delivered_json_names_the_producer_that_recovery_asks_about(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    fid = spool.register_file("/logs/a.log", "/logs/a.log", IDENTITY)
    spool.commit(_sealed(1), {fid: 100}, seq=1)
    spool.ack(1)
    document = json.loads((tmp_path / "delivered.json").read_text())
    assert document["producer"] == spool.producer()
    assert spool.delivered.recorded_producer() == spool.producer()
