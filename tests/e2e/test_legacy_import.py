"""`import-legacy`: the old script's pending queue and offsets, moved into the state directory
exactly once (issue 10), end to end against the independent receiver.

The old script had sent everything up to its offsets; what it had not sent yet is in its pending
queue. After the import and one `once`, the collector must hold the pending addresses once and the
logs' bytes after the old offsets once, and nothing before them: whatever is run again, and
wherever the import is killed.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.agent import run_agent, write_access_log, write_config

PENDING_SHAPES: dict[str, Any] = {
    "list of addresses": ["198.51.100.7", "198.51.100.7", "2001:DB8::5", "::ffff:203.0.113.9"],
    "list of objects": [{"ip": "198.51.100.7", "count": 2, "time": 1764000000},
                        {"address": "2001:db8::5", "first_seen": "2026-11-20T10:00:00Z",
                         "last_seen": "2026-11-21T10:00:00Z"},
                        {"addr": "203.0.113.9", "hits": 1}],
    "object from address to count": {"198.51.100.7": 2, "2001:db8::5": 1, "203.0.113.9": 1},
}
PENDING_COUNTS = Counter({"198.51.100.7": 2, "2001:db8::5": 1, "203.0.113.9": 1})


@pytest.fixture
def old_setup(tmp_path: Path, receiver):  # type: ignore[no-untyped-def]
    """Two logs the old script read part of, its files, and a config naming them.

    Returns (config, pending file, offsets file, the counts the collector must end up with)."""
    logs = tmp_path / "logs"
    logs.mkdir()
    expected: Counter[str] = Counter()
    offsets = {}
    for index in range(2):
        log = logs / f"access-{index}.log"
        write_access_log(log, 400, seed=10 + index)  # sent by the old script: must not come again
        offsets[str(log)] = log.stat().st_size
        expected += write_access_log(log, 300, seed=20 + index, append=True)  # not read by it yet
    old = tmp_path / "old"
    old.mkdir()
    pending_file, offsets_file = old / "pending_upload_queue.json", old / "file_offsets.json"
    offsets_file.write_text(json.dumps(offsets))
    config = write_config(tmp_path / "agent.toml", url=receiver.url, token=receiver.token,
                          state_dir=tmp_path / "state", sources=[str(logs / "*.log")],
                          legacy={"pending_file": str(pending_file), "offsets_file": str(offsets_file)})
    return config, pending_file, offsets_file, expected


def _snapshot(*paths: Path) -> list[tuple[bytes, int]]:
    return [(path.read_bytes(), path.stat().st_mtime_ns) for path in paths]


@pytest.mark.parametrize("shape", sorted(PENDING_SHAPES))
def test_pending_and_offsets_are_taken_over_once_and_nothing_is_read_again(
        old_setup, receiver, shape: str) -> None:  # type: ignore[no-untyped-def]
    config, pending_file, offsets_file, expected = old_setup
    pending_file.write_text(json.dumps(PENDING_SHAPES[shape]))
    before = _snapshot(pending_file, offsets_file)
    hinted = run_agent("test", "-c", str(config))
    assert "import-legacy" in hinted.stderr  # the files are there and were not imported

    imported = run_agent("import-legacy", "-c", str(config))
    assert imported.returncode == 0, imported.stderr
    assert "imported 3 pending addresses (4 occurrences)" in imported.stdout
    assert "imported 2 read offsets" in imported.stdout
    again = run_agent("import-legacy", "-c", str(config))
    assert again.returncode == 0 and "already imported" in again.stdout

    first = run_agent("once", "-c", str(config))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "import-legacy" not in first.stderr  # imported: no hint any more
    assert receiver.counts() == dict(expected + PENDING_COUNTS)
    assert run_agent("import-legacy", "-c", str(config)).returncode == 0
    assert run_agent("once", "-c", str(config)).returncode == 0
    assert receiver.counts() == dict(expected + PENDING_COUNTS)
    assert _snapshot(pending_file, offsets_file) == before  # the old files are left as they were


@pytest.mark.parametrize("point", ["during_import", "after_import"])
def test_an_import_killed_half_way_and_run_again_changes_nothing(old_setup, receiver, point: str) -> None:  # type: ignore[no-untyped-def]
    config, pending_file, _offsets_file, expected = old_setup
    pending_file.write_text(json.dumps(PENDING_SHAPES["list of objects"]))
    crashed = run_agent("import-legacy", "-c", str(config), env={"REMOTE_UPLOADER_CRASH_AT": point})
    assert crashed.returncode == -9, crashed.stderr  # it really died there
    status = json.loads(run_agent("status", "--json", "-c", str(config)).stdout)
    if point == "during_import":  # killed before COMMIT: nothing of the import is there
        assert status["queue"]["batches"] == 0 and status["files"] == []
    else:
        assert status["queue"]["records"] == 3 and len(status["files"]) == 2
    rerun = run_agent("import-legacy", "-c", str(config))
    assert rerun.returncode == 0, rerun.stderr
    assert ("already imported" in rerun.stdout) == (point == "after_import")
    assert run_agent("once", "-c", str(config)).returncode == 0
    assert receiver.counts() == dict(expected + PENDING_COUNTS)


@pytest.mark.parametrize(("content", "says"), [
    ("not json at all", "not JSON"),
    ('"198.51.100.7"', "expected a list of addresses"),
    ("[1, 2]", "entry 0: expected an address or an object"),
    ('[{"host": "198.51.100.7"}]', "entry 0: unknown key 'host'"),
    ('["198.51.100.7", "999.1.1.1"]', "entry 1: not an IP address the agent counts: '999.1.1.1'"),
    ('{"198.51.100.7": 0}', "a count must be a whole number"),
    ('[{"ip": "198.51.100.7", "count": true}]', "a count must be a whole number"),
    ('[{"ip": "198.51.100.7", "time": "yesterday"}]', "a time must be epoch seconds"),
])
def test_a_pending_queue_in_a_shape_not_understood_is_refused_whole_naming_the_file(
        old_setup, receiver, content: str, says: str) -> None:  # type: ignore[no-untyped-def]
    config, pending_file, _offsets_file, _expected = old_setup
    pending_file.write_text(content)
    refused = run_agent("import-legacy", "-c", str(config))
    assert refused.returncode == 2
    assert str(pending_file) in refused.stderr and says in refused.stderr, refused.stderr
    assert "nothing was imported" in refused.stderr and "Traceback" not in refused.stderr
    assert pending_file.read_text() == content
    assert not (config.parent / "state" / "queue.db").exists()  # refused before anything was stored


@pytest.mark.parametrize(("content", "says"), [
    ('[["/var/log/a.log", 10]]', "expected an object from file path to byte offset"),
    ('{"/var/log/a.log": -1}', "a byte offset must be a whole number of 0 or more"),
    ('{"/var/log/a.log": "10"}', "a byte offset must be a whole number of 0 or more"),
    ('{"/var/log/a.log": {"position": 10}}', "an object with `offset`"),
])
def test_an_offsets_file_in_a_shape_not_understood_is_refused_naming_the_file(
        old_setup, content: str, says: str) -> None:  # type: ignore[no-untyped-def]
    config, pending_file, offsets_file, _expected = old_setup
    pending_file.write_text("[]")
    offsets_file.write_text(content)
    refused = run_agent("import-legacy", "-c", str(config))
    assert refused.returncode == 2
    assert str(offsets_file) in refused.stderr and says in refused.stderr, refused.stderr


def test_an_offset_past_the_end_of_its_file_is_skipped_and_the_file_read_from_its_start(
        tmp_path: Path, receiver) -> None:  # type: ignore[no-untyped-def]
    """The log was rotated since the old script's last run: its offset belongs to other content."""
    log = tmp_path / "access.log"
    expected = write_access_log(log, 50, seed=3)
    offsets_file = tmp_path / "file_offsets.json"
    offsets_file.write_text(json.dumps({str(log): log.stat().st_size + 1000, str(tmp_path / "gone.log"): 5}))
    config = write_config(tmp_path / "agent.toml", url=receiver.url, token=receiver.token,
                          state_dir=tmp_path / "state", sources=[str(log)])
    imported = run_agent("import-legacy", "--offsets", str(offsets_file), "--pending",
                         str(tmp_path / "none.json"), "-c", str(config))
    assert imported.returncode == 0, imported.stderr
    assert "shorter than the old offset" in imported.stdout and "gone.log: skipped" in imported.stdout
    assert run_agent("once", "-c", str(config)).returncode == 0
    assert receiver.counts() == dict(expected)


def test_files_changed_after_an_import_are_not_imported_a_second_time(old_setup, receiver) -> None:  # type: ignore[no-untyped-def]
    """The old script ran again after the import: its queue now holds what was imported and more."""
    config, pending_file, _offsets_file, expected = old_setup
    pending_file.write_text(json.dumps(PENDING_SHAPES["object from address to count"]))
    assert run_agent("import-legacy", "-c", str(config)).returncode == 0
    pending_file.write_text(json.dumps({**PENDING_SHAPES["object from address to count"], "192.0.2.1": 1}))
    refused = run_agent("import-legacy", "-c", str(config))
    assert refused.returncode == 2 and "would send their pending addresses a second time" in refused.stderr
    assert run_agent("once", "-c", str(config)).returncode == 0
    assert receiver.counts() == dict(expected + PENDING_COUNTS)


def test_nothing_to_import_is_said_plainly(tmp_path: Path) -> None:
    result = run_agent("import-legacy", "--state-dir", str(tmp_path / "state"), "--pending",
                       str(tmp_path / "a.json"), "--offsets", str(tmp_path / "b.json"))
    assert result.returncode == 2 and "nothing to import" in result.stderr
    assert not (tmp_path / "state" / "queue.db").exists()
