"""The follower produces, the runner consumes: what `Tailer.events()` yields for each kind of change.

In process, pass by pass, nothing uploaded. Each test drives the follower's generator by hand
(`agent.consume` for the steps that are not under test) and checks the events, in order, and
what reached the queue.
"""

from __future__ import annotations

import os
from pathlib import Path

from remote_uploader.agent.runner import Agent
from remote_uploader.agent.source import BlockReader
from remote_uploader.agent.tail import Event, Events, Gone, Problem, Read, Rotated, Tailer, Truncated
from tests.agent.tail.test_identity import NoSink, config_for, queued_counts

LINE = '203.0.113.{n} - - [28/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 1\n'


def step(agent: Agent, tailer: Tailer) -> list[Event]:
    """One pass, consumed by the agent as `once` and `forever` do; the events it produced."""
    seen: list[Event] = []

    def recorded() -> Events:
        for event in tailer.events():
            seen.append(event)
            yield event

    agent.consume(recorded())
    return seen


def test_a_pass_yields_reads_that_end_at_the_files_end_and_a_problem_for_a_missing_glob(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("".join(LINE.format(n=n) for n in range(1, 4)))
    agent = Agent(config_for(tmp_path, log, tmp_path / "none-*.log"), sink=NoSink())
    try:
        events = step(agent, Tailer(agent.collaborators()))
        reads = [e for e in events if isinstance(e, Read)]
        assert reads and reads[-1].end == log.stat().st_size
        assert {r.stream for r in reads} == {str(log)}
        assert [e.path for e in events if isinstance(e, Problem)] == [str(tmp_path / "none-*.log")]
        agent.seal_now()
        assert queued_counts(agent) == {f"203.0.113.{n}": 1 for n in range(1, 4)}
        assert agent.source_problems == {str(tmp_path / "none-*.log"): "no file matches this pattern"}
    finally:
        agent.close()


def test_a_rename_yields_rotated_and_the_new_file_is_read_from_its_start(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text(LINE.format(n=1))
    agent = Agent(config_for(tmp_path, log), sink=NoSink())
    try:
        tailer = Tailer(agent.collaborators())
        first = step(agent, tailer)
        fid = next(e.fid for e in first if isinstance(e, Read))
        log.rename(tmp_path / "app.log.1")
        log.write_text(LINE.format(n=2))
        events = step(agent, tailer)
        assert Rotated(fid, str(log), str(tmp_path / "app.log.1")) in events
        assert [e.fid != fid for e in events if isinstance(e, Read)] == [True]  # the new file, a new record
        agent.seal_now()
        assert queued_counts(agent) == {"203.0.113.1": 1, "203.0.113.2": 1}
    finally:
        agent.close()


def test_a_truncation_without_a_copy_yields_truncated_then_gone_and_the_new_content_is_read(
        tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text(LINE.format(n=1))
    agent = Agent(config_for(tmp_path, log), sink=NoSink())
    try:
        tailer = Tailer(agent.collaborators())
        fid = next(e.fid for e in step(agent, tailer) if isinstance(e, Read))
        with log.open("a") as handle:
            handle.write(LINE.format(n=2))  # never looked at: lost with the truncation, no copy holds it
        os.truncate(log, 0)
        log.write_text(LINE.format(n=3) * 2)
        events = step(agent, tailer)
        assert [type(e) for e in events] == [Truncated, Gone, Read]
        assert events[0] == Truncated(fid, str(log), 0) and events[1] == Gone(fid, "content replaced")
        agent.seal_now()
        assert queued_counts(agent) == {"203.0.113.1": 1, "203.0.113.3": 2}
    finally:
        agent.close()


def test_gone_seals_the_records_bytes_in_memory_before_the_record_is_deleted(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text(LINE.format(n=1))
    agent = Agent(config_for(tmp_path, log), sink=NoSink())
    try:
        tailer = Tailer(agent.collaborators())
        fid = next(e.fid for e in step(agent, tailer) if isinstance(e, Read))
        assert fid in agent.batch.offsets  # read, in memory, not sealed
        os.truncate(log, 0)
        log.write_text(LINE.format(n=7) * 2)
        events = tailer.events()
        for event in events:
            if isinstance(event, Gone):
                assert agent.spool.file_offset(fid) is not None  # not deleted yet: the consumer goes first
                agent.consume(iter_one(event))
                assert fid not in agent.batch.offsets and queued_counts(agent) == {"203.0.113.1": 1}
                break
            agent.consume(iter_one(event))
        agent.consume(events)  # the new content: a new record (which may get the same fid back)
        agent.seal_now()
        assert queued_counts(agent) == {"203.0.113.1": 1, "203.0.113.7": 2}
    finally:
        agent.close()


def iter_one(event: Event) -> Events:
    yield event


def test_the_one_read_loop_gives_the_final_unterminated_line_only_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    path.write_bytes(b"one 10.0.0.1\ntwo 10.0.0.2 tail")
    fd = os.open(path, os.O_RDONLY)
    try:
        def pieces(partial: bool | None) -> list[bytes]:
            return [bytes(c.buf[c.start:c.end]) for c in BlockReader(fd, 0, 4096, 8).chunks(partial)]

        assert pieces(None) == [b"one 10.0.0.1\n"]
        assert pieces(False) == [b"one 10.0.0.1\n", b"two 10.0.0.2 "]  # up to its last separator
        assert pieces(True) == [b"one 10.0.0.1\n", b"two 10.0.0.2 tail"]
    finally:
        os.close(fd)


def test_a_stream_belongs_to_the_first_source_whose_path_or_glob_matches_it(tmp_path: Path) -> None:
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.write_text("")
    b.write_text("")
    agent = Agent(config_for(tmp_path, tmp_path / "*.log", a), sink=NoSink())
    try:
        tailer = Tailer(agent.collaborators())
        assert tailer.source_index(str(a)) == 0  # the glob comes first
        assert tailer.source_index(str(b)) == 0
        assert tailer.source_index(str(tmp_path / "c.txt")) is None
    finally:
        agent.close()
