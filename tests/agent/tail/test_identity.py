"""File identity, against an adversary: two files that look alike must not be taken for one.

In process and deterministic (a `Tailer` driven pass by pass, nothing uploaded: the test reads
what was queued). Each test is a case where a rule deciding "this is the same stream" or "this is a
copy" could be fooled: a file that begins with another file's whole content, identical files, a
common header, a file rewritten under the same header, a copy caught while it is being written.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

from remote_uploader.agent.runner import Agent, read_pass
from remote_uploader.agent.tail import Tailer, is_rotation_of
from remote_uploader.config import Config, load
from tests.helpers.agent import NoSink, queued_counts, write_access_log

HEADER = "#Version: 1.0\n#Fields: date time s-ip cs-method cs-uri-stem c-ip sc-status\n"
LONG_HEADER = "".join(f"# {f'header field {n:03d} ':-<70}\n" for n in range(20))  # 1.4 KiB, over a fingerprint



def config_for(tmp_path: Path, *globs: Path | str, **overrides: object) -> Config:
    (tmp_path / "token").write_text("t\n")
    return load(None, env={}, sources=[str(g) for g in globs], overrides={
        "agent.state_dir": str(tmp_path / "state"), "agent.workers": 1, "server.url": "http://127.0.0.1:9",
        "server.token_file": str(tmp_path / "token"), **overrides})


def once(config: Config) -> Counter[str]:
    """One `once` read pass (no upload) in a fresh agent; returns everything queued so far."""
    agent = Agent(config, sink=NoSink())
    try:
        read_pass(agent)
        agent.seal_now()
        return queued_counts(agent)
    finally:
        agent.close()


def lines(ip: str, n: int, start: int = 0) -> str:
    return "".join(f"2026-12-02 10:00:{i % 60:02d} {ip} GET /item/{start + i} 200\n" for i in range(n))


# --- hole 1: a file that begins with another file's whole fingerprint ------------------------------------


def test_a_copy_can_only_be_at_a_name_a_rotation_of_its_file_produces() -> None:
    for rotated in ("/v/x.log.1", "/v/x.log-20261202", "/v/x.log-2026-12-02.1", "/v/x.log.1.gz", "/v/x.log.2.1"):
        assert is_rotation_of(rotated, "/v/x.log"), rotated
    for other in ("/v/x.log", "/v/y.log.1", "/w/x.log.1", "/v/x.log.old", "/v/x.logs.1", "/v/b.log"):
        assert not is_rotation_of(other, "/v/x.log"), other


def test_a_file_that_begins_with_another_files_whole_content_is_read(tmp_path: Path) -> None:
    (tmp_path / "a.log").write_text("10.0.0.1 GET /\n")
    (tmp_path / "b.log").write_text("10.0.0.1 GET /\n10.0.0.2 GET /x\n")
    assert once(config_for(tmp_path, tmp_path / "*.log")) == {"10.0.0.1": 2, "10.0.0.2": 1}


def test_two_identical_files_are_both_read(tmp_path: Path) -> None:
    expected = write_access_log(tmp_path / "a.log", 50, seed=1)
    shutil.copyfile(tmp_path / "a.log", tmp_path / "b.log")
    assert once(config_for(tmp_path, tmp_path / "*.log")) == expected + expected


def test_per_vhost_logs_sharing_a_header_are_each_read_as_they_grow(tmp_path: Path) -> None:
    quiet, busy = tmp_path / "api.log", tmp_path / "www.log"  # the quiet one is looked at first
    quiet.write_text(HEADER)
    busy.write_text(HEADER)
    agent = Agent(config_for(tmp_path, tmp_path / "*.log"), sink=NoSink())
    try:
        tailer = Tailer(agent.collaborators())
        agent.consume(tailer.events())
        with busy.open("a") as handle:
            handle.write(lines("192.0.2.7", 40))
        agent.consume(tailer.events())
        agent.consume(tailer.events())
        agent.seal_now()
        tailer.close()
        assert queued_counts(agent) == {"192.0.2.7": 40}
    finally:
        agent.close()


def test_a_recreated_file_holding_only_its_header_is_read_once_it_grows(tmp_path: Path) -> None:
    """logrotate `create` writes the header first; another file (the previous generation, rotated
    while it held only the header) holds exactly that header too."""
    live = tmp_path / "app.log"
    live.write_text(HEADER)
    agent = Agent(config_for(tmp_path, live), sink=NoSink())
    try:
        tailer = Tailer(agent.collaborators())
        agent.consume(tailer.events())
        live.rename(tmp_path / "app.log.1")  # rotated while quiet: it holds only the header
        live.write_text(HEADER)  # created again, header first
        agent.consume(tailer.events())
        with live.open("a") as handle:
            handle.write(lines("198.51.100.9", 40))
        agent.consume(tailer.events())
        agent.consume(tailer.events())
        agent.seal_now()
        tailer.close()
        assert queued_counts(agent) == {"198.51.100.9": 40}
    finally:
        agent.close()


def test_a_copy_at_a_rotated_name_is_still_not_read_while_its_original_holds_it(tmp_path: Path) -> None:
    """The copy rule still holds where it belongs: `cp app.log app.log.1` under a glob matching both."""
    live = tmp_path / "app.log"
    expected = write_access_log(live, 300, seed=2)
    agent = Agent(config_for(tmp_path, str(live) + "*"), sink=NoSink())
    try:
        tailer = Tailer(agent.collaborators())
        agent.consume(tailer.events())
        shutil.copyfile(live, tmp_path / "app.log.1")
        agent.consume(tailer.events())
        expected += write_access_log(live, 100, seed=3, append=True)
        agent.consume(tailer.events())
        agent.seal_now()
        tailer.close()
        assert queued_counts(agent) == expected
    finally:
        agent.close()


# --- hole 2: content rewritten under a common header of 1 KiB or more --------------------------------------


def test_a_file_rewritten_under_a_common_header_is_new_content_and_its_copy_is_read_on(tmp_path: Path) -> None:
    live = tmp_path / "app.log"
    config = config_for(tmp_path, live)
    live.write_text(LONG_HEADER + lines("1.1.1.1", 100))
    assert once(config) == {"1.1.1.1": 100}
    with live.open("a") as handle:
        handle.write(lines("1.1.1.1", 50, start=100))
    shutil.copyfile(live, tmp_path / "app.log.1")  # cp app.log app.log.1; : > app.log
    with live.open("r+") as handle:
        handle.truncate(0)
        handle.write(LONG_HEADER + lines("2.2.2.2", 300))  # same inode, same first KiB
    assert once(config) == {"1.1.1.1": 150, "2.2.2.2": 300}


def test_content_replaced_under_a_common_header_while_followed_is_not_read_at_the_old_offset(tmp_path: Path) -> None:
    """The same in `forever`: truncated and rewritten (longer than the offset) between two passes."""
    live = tmp_path / "app.log"
    live.write_text(LONG_HEADER + lines("1.1.1.1", 100))
    agent = Agent(config_for(tmp_path, live), sink=NoSink())
    try:
        tailer = Tailer(agent.collaborators())
        agent.consume(tailer.events())
        with live.open("r+") as handle:
            handle.truncate(0)
            handle.write(LONG_HEADER + lines("2.2.2.2", 300))
        agent.consume(tailer.events())
        agent.consume(tailer.events())
        agent.seal_now()
        tailer.close()
        assert queued_counts(agent) == {"1.1.1.1": 100, "2.2.2.2": 300}
    finally:
        agent.close()


# --- hole 12: a copy caught while it is being written, at a name the glob matches ---------------------------


def test_an_empty_copy_at_a_name_the_glob_matches_is_not_taken_for_a_new_file(tmp_path: Path) -> None:
    live = tmp_path / "app.log"
    original = write_access_log(live, 500, seed=4)
    agent = Agent(config_for(tmp_path, str(live) + "*"), sink=NoSink())
    try:
        tailer = Tailer(agent.collaborators())
        agent.consume(tailer.events())
        copy = tmp_path / "app.log.1"
        copy.touch()  # copytruncate's copier has created its file and not written yet
        agent.consume(tailer.events())
        shutil.copyfile(live, copy)
        with live.open("r+b") as handle:
            handle.truncate(0)
        regrow = write_access_log(live, 200, seed=5, append=True)
        agent.consume(tailer.events())
        agent.consume(tailer.events())
        agent.seal_now()
        tailer.close()
        assert queued_counts(agent) == original + regrow
    finally:
        agent.close()


def test_a_copy_caught_half_written_at_a_name_the_glob_matches_is_not_taken_for_a_new_file(tmp_path: Path) -> None:
    live = tmp_path / "app.log"
    original = write_access_log(live, 500, seed=6)
    agent = Agent(config_for(tmp_path, str(live) + "*"), sink=NoSink())
    try:
        tailer = Tailer(agent.collaborators())
        agent.consume(tailer.events())
        copy = tmp_path / "app.log.1"
        copy.write_bytes(live.read_bytes()[:700])  # less than a fingerprint written so far
        agent.consume(tailer.events())
        agent.consume(tailer.events())  # the copier is slow: its size held still between two looks
        shutil.copyfile(live, copy)
        with live.open("r+b") as handle:
            handle.truncate(0)
        regrow = write_access_log(live, 200, seed=7, append=True)
        agent.consume(tailer.events())
        agent.consume(tailer.events())
        agent.seal_now()
        tailer.close()
        assert queued_counts(agent) == original + regrow
    finally:
        agent.close()


def test_a_copy_at_an_inode_verified_earlier_in_the_pass_for_other_content_is_still_found(tmp_path: Path) -> None:
    """Between two passes the copy lands in an inode that a record of older content was verified at
    in the last pass (here `cp` over the existing app.log.1 keeps its inode; logrotate deleting the
    oldest rotation and the file system giving its inode to the new copy does the same)."""
    live = tmp_path / "app.log"
    first = write_access_log(live, 300, seed=8)
    agent = Agent(config_for(tmp_path, live, **{"read.rotate_grace": 0.0}), sink=NoSink())  # let go at once
    try:
        tailer = Tailer(agent.collaborators())
        agent.consume(tailer.events())
        shutil.copyfile(live, tmp_path / "app.log.1")  # copytruncate
        with live.open("r+b") as handle:
            handle.truncate(0)
        second = write_access_log(live, 300, seed=9, append=True)
        agent.consume(tailer.events())  # the first content moves to app.log.1, the second is a new record
        agent.consume(tailer.events())  # app.log.1 verified for the first content in this pass, and closed (read, idle)
        shutil.copyfile(live, tmp_path / "app.log.1")  # copytruncate again, into the same inode
        with live.open("r+b") as handle:
            handle.truncate(0)
        third = write_access_log(live, 100, seed=10, append=True)
        agent.consume(tailer.growth())  # between passes: the truncate is seen, the copy looked for
        agent.consume(tailer.events())
        agent.consume(tailer.events())
        agent.seal_now()
        tailer.close()
        assert queued_counts(agent) == first + second + third
    finally:
        agent.close()


def test_a_final_line_taken_unfinished_and_then_written_into_does_not_make_the_file_new(tmp_path: Path) -> None:
    """A writer that extends its file with zeros and fills them later (preallocation): the bytes
    after the last line end may change under a record, so they are no evidence against it."""
    live = tmp_path / "app.log"
    live.write_bytes(lines("192.0.2.1", 30).encode() + b"\0" * 64)
    agent = Agent(config_for(tmp_path, live, **{"read.partial_line_idle": 0.0}), sink=NoSink())
    try:
        tailer = Tailer(agent.collaborators())
        agent.consume(tailer.events())  # the zeros are taken as an unfinished last line
        with live.open("r+b") as handle:
            handle.seek(-64, 2)
            handle.write(b"\0" * 63 + b"\n")  # written into, in place
            handle.write(lines("192.0.2.2", 5).encode())
        agent.consume(tailer.events())
        agent.consume(tailer.events())
        agent.seal_now()
        tailer.close()
        assert queued_counts(agent) == {"192.0.2.1": 30, "192.0.2.2": 5}
    finally:
        agent.close()
