"""`once` against a real HTTP receiver on 127.0.0.1: exact delivery through every kind of answer."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tests.helpers.agent import run_agent, start_agent, wait_for, write_access_log, write_config


@pytest.fixture
def setup(tmp_path: Path, receiver):  # type: ignore[no-untyped-def]
    """A log with known counts and a config pointing at the receiver; returns (config, expected)."""
    log = tmp_path / "access.log"
    expected = write_access_log(log, 3000, seed=1)
    config = write_config(tmp_path / "agent.toml", url=receiver.url, token=receiver.token,
                          state_dir=tmp_path / "state", sources=[str(log)],
                          batching={"min_upload_batch": 10, "force_upload_threshold": 100, "max_memory_ips": 200})
    return config, expected, log


def test_once_delivers_every_occurrence_exactly(setup, receiver) -> None:  # type: ignore[no-untyped-def]
    config, expected, _ = setup
    result = run_agent("once", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert receiver.counts() == dict(expected)
    assert "All data delivered" in result.stdout


def test_second_once_sends_nothing_new_and_appended_lines_are_sent(setup, receiver) -> None:  # type: ignore[no-untyped-def]
    config, expected, log = setup
    assert run_agent("once", "-c", str(config)).returncode == 0
    first_batches = len(receiver.batch_ids())
    assert run_agent("once", "-c", str(config)).returncode == 0
    assert len(receiver.batch_ids()) == first_batches
    more = write_access_log(log, 500, seed=2, append=True)
    assert run_agent("once", "-c", str(config)).returncode == 0
    assert receiver.counts() == dict(expected + more)


def test_retries_after_connection_resets_count_nothing_twice(setup, receiver) -> None:  # type: ignore[no-untyped-def]
    config, expected, _ = setup
    receiver.reset_next(3, after_store=True)  # stored, but the agent never hears so: it must resend
    receiver.reset_next(2, after_store=False)
    result = run_agent("once", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert receiver.counts() == dict(expected)
    duplicates = [r for r in receiver.requests() if r.duplicate]
    assert duplicates, "the batches stored before a reset must have been sent again and found duplicate"


def test_server_errors_and_429_are_retried_until_delivered(setup, receiver) -> None:  # type: ignore[no-untyped-def]
    config, expected, _ = setup
    receiver.fail_next(2, 503)
    receiver.fail_next(2, 500)
    receiver.fail_next(1, 408)
    result = run_agent("once", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert receiver.counts() == dict(expected)


def test_retry_after_is_honoured(setup, receiver) -> None:  # type: ignore[no-untyped-def]
    config, expected, _ = setup
    receiver.fail_next(1, 429, retry_after=1)
    assert run_agent("once", "-c", str(config)).returncode == 0
    posts = [r for r in receiver.requests() if r.method == "POST"]
    refused = next(r for r in posts if r.status == 429)
    resent = next(r for r in posts if r.batch_id == refused.batch_id and r.time > refused.time)
    # The batch may not come again before the server said it could: the agent's backoff cap is
    # 0.5 s, so only Retry-After explains a wait of a second. (Another upload may have been in
    # flight beside it already: that one is not a retry.)
    assert resent.time - refused.time >= 0.95
    assert receiver.counts() == dict(expected)


def test_413_splits_the_batch_until_it_fits(setup, receiver) -> None:  # type: ignore[no-untyped-def]
    config, expected, _ = setup
    receiver.max_records(30)
    result = run_agent("once", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert receiver.counts() == dict(expected)
    assert any(r.status == 413 for r in receiver.requests())
    assert any(batch_id.endswith(".1") for batch_id in receiver.batch_ids())


def test_a_413_to_one_record_keeps_it_queued_and_says_what_to_fix(tmp_path: Path, receiver) -> None:  # type: ignore[no-untyped-def]
    """A 413 to a one-record batch is a limit set below any body (or an answer not about this
    body): the record is not dead-lettered but kept, and sent once the limit is lifted (F5)."""
    log = tmp_path / "access.log"
    expected = write_access_log(log, 60, seed=4)
    config = write_config(tmp_path / "agent.toml", url=receiver.url, token=receiver.token,
                          state_dir=tmp_path / "state", sources=[str(log)])
    receiver.max_records(0)  # every body refused as too large, however small
    result = run_agent("once", "-c", str(config), "--max-retry-time", "1")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "refuses a body this small" in (tmp_path / "state" / "agent.log").read_text()
    status = json.loads(run_agent("status", "-c", str(config), "--json").stdout)
    assert status["dead_letters"] == []
    assert status["queue"]["records"] > 0
    assert receiver.total() == 0

    receiver.max_records(None)
    result = run_agent("once", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert receiver.counts() == dict(expected)


def test_a_refused_batch_goes_to_dead_letters_and_requeue_sends_it(setup, receiver) -> None:  # type: ignore[no-untyped-def]
    config, expected, _ = setup
    receiver.fail_next(1, 400)
    assert run_agent("once", "-c", str(config)).returncode == 0
    status = json.loads(run_agent("status", "-c", str(config), "--json").stdout)
    assert len(status["dead_letters"]) == 1
    dead_records = status["dead_letters"][0]["records"]
    assert dead_records > 0
    assert sum(receiver.counts().values()) < sum(expected.values())

    assert run_agent("requeue", "-c", str(config)).returncode == 0
    assert run_agent("once", "-c", str(config)).returncode == 0
    assert receiver.counts() == dict(expected)
    status = json.loads(run_agent("status", "-c", str(config), "--json").stdout)
    assert status["dead_letters"] == []


def test_unreachable_server_exits_3_with_data_queued_and_next_run_delivers(tmp_path: Path, receiver) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "access.log"
    expected = write_access_log(log, 2000, seed=3)
    dead_url = "http://127.0.0.1:9"  # discard port: nothing listens
    config = write_config(tmp_path / "agent.toml", url=dead_url, token=receiver.token,
                          state_dir=tmp_path / "state", sources=[str(log)])
    result = run_agent("once", "-c", str(config), "--max-retry-time", "1")
    assert result.returncode == 3
    assert "safely queued" in result.stdout
    queued = json.loads(run_agent("status", "-c", str(config), "--json").stdout)["queue"]["records"]
    assert queued > 0

    config = write_config(tmp_path / "agent.toml", url=receiver.url, token=receiver.token,
                          state_dir=tmp_path / "state", sources=[str(log)])
    result = run_agent("once", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert f"Recovered {queued} pending records" in result.stdout
    assert receiver.counts() == dict(expected)


def test_wrong_token_keeps_data_queued(setup, receiver, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, expected, log = setup
    config = write_config(tmp_path / "bad.toml", url=receiver.url, token="wrong-token",
                          state_dir=tmp_path / "state", sources=[str(log)])
    result = run_agent("once", "-c", str(config), "--max-retry-time", "1")
    assert result.returncode == 3
    assert "token" in result.stdout + result.stderr
    assert "wrong-token" not in result.stdout + result.stderr
    assert "wrong-token" not in (tmp_path / "state" / "agent.log").read_text()
    assert receiver.total() == 0
    good = write_config(tmp_path / "good.toml", url=receiver.url, token=receiver.token,
                        state_dir=tmp_path / "state", sources=[str(log)])
    assert run_agent("once", "-c", str(good)).returncode == 0
    assert receiver.counts() == dict(expected)


def test_a_second_agent_on_the_same_state_dir_is_refused(setup, receiver) -> None:  # type: ignore[no-untyped-def]
    config, expected, _ = setup
    # The first agent must still hold the state directory when the second starts, however long
    # that start takes on a loaded machine: every upload fails until the test says otherwise,
    # and its retry budget outlasts any start-up (a few delayed uploads did not: the first was
    # done, its lock free, before a slow second agent got to it).
    receiver.fail_next(100_000, 503)
    first = start_agent("once", "-c", str(config), "--max-retry-time", "600")
    try:
        assert wait_for(receiver.requests, timeout=60), "the first agent never sent anything"
        second = run_agent("once", "-c", str(config))
        assert second.returncode == 4, second.stderr
        assert "another agent" in second.stderr
    finally:
        receiver.clear_faults()  # the first agent delivers and exits
        first.communicate(timeout=120)
    assert first.returncode == 0
    assert receiver.counts() == dict(expected)


def test_state_files_are_private(setup, receiver, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config, _, _ = setup
    assert run_agent("once", "-c", str(config)).returncode == 0
    state = tmp_path / "state"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for path in state.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


def test_file_replaced_since_last_run_is_read_from_the_start(setup, receiver) -> None:  # type: ignore[no-untyped-def]
    config, expected, log = setup
    assert run_agent("once", "-c", str(config)).returncode == 0
    os.unlink(log)
    fresh = write_access_log(log, 800, seed=9)
    assert run_agent("once", "-c", str(config)).returncode == 0
    assert receiver.counts() == dict(expected + fresh)


def test_unterminated_final_line_of_an_idle_file_is_taken(tmp_path: Path, receiver) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "app.log"
    log.write_text("client 198.51.100.1 ok\nclient 198.51.100.2 no newline")
    os.utime(log, (1_000_000_000, 1_000_000_000))
    config = write_config(tmp_path / "agent.toml", url=receiver.url, token=receiver.token,
                          state_dir=tmp_path / "state", sources=[str(log)])
    assert run_agent("once", "-c", str(config)).returncode == 0
    assert receiver.counts() == {"198.51.100.1": 1, "198.51.100.2": 1}


def test_unterminated_final_line_of_a_busy_file_is_held_back(tmp_path: Path, receiver) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "app.log"
    log.write_text("client 198.51.100.1 ok\nclient 198.51.100.2 half-writ")
    # "Busy" is a file written to within `partial_line_idle`: an hour here, so that the file is
    # busy whatever the machine's load makes of the agent's start-up (5 s, the default, was not).
    config = write_config(tmp_path / "agent.toml", url=receiver.url, token=receiver.token,
                          state_dir=tmp_path / "state", sources=[str(log)], read={"partial_line_idle": 3600})
    assert run_agent("once", "-c", str(config)).returncode == 0
    assert receiver.counts() == {"198.51.100.1": 1}
    with log.open("a") as handle:
        handle.write("ten 198.51.100.3\n")
    assert run_agent("once", "-c", str(config)).returncode == 0
    # The completed line is "client 198.51.100.2 half-written 198.51.100.3": both count, once.
    assert receiver.counts() == {"198.51.100.1": 1, "198.51.100.2": 1, "198.51.100.3": 1}


def test_an_address_at_the_end_of_an_idle_file_waits_for_the_byte_after_it(  # type: ignore[no-untyped-def]
        tmp_path: Path, receiver) -> None:
    """Row 38 of extraction-cases.md, at every cut of a line: one file per cut, each written up to
    its cut and left idle, read by `once`; then completed and read again. Every address counts
    once, as written, in every file (10.0.0.123, never 10.0.0.1 or nothing)."""
    line = b"a 192.0.2.1 client=10.0.0.123 [2001:db8::1]:443 ::ffff:198.51.100.61 x\n"
    logs = tmp_path / "logs"
    logs.mkdir()
    for cut in range(len(line)):
        path = logs / f"cut{cut:03d}.log"
        path.write_bytes(b"file %03d\n" % cut + line[:cut])  # distinct heads: no file is a copy of another
        os.utime(path, (1_000_000_000, 1_000_000_000))  # idle for long: older than partial_line_idle
    config = write_config(tmp_path / "agent.toml", url=receiver.url, token=receiver.token,
                          state_dir=tmp_path / "state", sources=[str(logs / "*.log")])
    first = run_agent("once", "-c", str(config))
    assert first.returncode == 0, first.stderr[-3000:]
    for cut in range(len(line)):
        with (logs / f"cut{cut:03d}.log").open("ab") as handle:
            handle.write(line[cut:])
    second = run_agent("once", "-c", str(config))
    assert second.returncode == 0, second.stderr[-3000:]
    n = len(line)
    assert receiver.counts() == {"192.0.2.1": n, "10.0.0.123": n, "2001:db8::1": n, "198.51.100.61": n}
