"""What a new user meets in the first hour (issue 10): exit codes cron can trust, no tracebacks,
safe defaults, honest progress and stats, the effective configuration, and Chinese throughout.

Each test ran red on the main branch before its fix (the outputs are in the issue's report).
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.helpers.agent import (
    agent_command,
    agent_env,
    run_agent,
    start_agent,
    wait_for,
    write_access_log,
    write_config,
)
from tests.reliability.harness import drop_file_privileges, permissions_unenforceable_reason

EXIT_SOURCE = 5


@pytest.fixture
def good_log(tmp_path: Path):  # type: ignore[no-untyped-def]
    log = tmp_path / "good.log"
    return log, write_access_log(log, 300, seed=7, distinct=50)


def _config(tmp_path: Path, receiver, sources: list[str], **sections: dict[str, object]) -> Path:  # type: ignore[no-untyped-def]
    return write_config(tmp_path / "agent.toml", url=receiver.url, token=receiver.token,
                        state_dir=tmp_path / "state", sources=sources, **sections)


# --- 1. once and extract tell cron the truth ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["missing", "directory", "empty glob"])
def test_once_exits_5_naming_a_source_it_could_not_read_and_still_delivers_the_others(
        tmp_path: Path, receiver, good_log, kind: str) -> None:  # type: ignore[no-untyped-def]
    log, expected = good_log
    bad = {"missing": tmp_path / "missing.log", "directory": tmp_path / "adir",
           "empty glob": tmp_path / "nothing-*.log"}[kind]
    if kind == "directory":
        bad.mkdir()
    config = _config(tmp_path, receiver, [str(log), str(bad)])
    result = run_agent("once", "-c", str(config))
    assert result.returncode == EXIT_SOURCE, result.stdout + result.stderr
    assert str(bad) in result.stdout
    assert "All data delivered" not in result.stdout
    assert receiver.counts() == dict(expected)


def test_once_exits_5_for_an_unreadable_file(tmp_path: Path, receiver, good_log) -> None:  # type: ignore[no-untyped-def]
    reason = permissions_unenforceable_reason(tmp_path)
    if reason:
        pytest.skip(reason)
    log, expected = good_log
    locked = tmp_path / "locked.log"
    write_access_log(locked, 10, seed=8)
    locked.chmod(0)
    config = _config(tmp_path, receiver, [str(log), str(locked)])
    result = subprocess.run(agent_command("once", "-c", str(config)), capture_output=True, text=True,
                            env=agent_env(), timeout=120,
                            preexec_fn=drop_file_privileges if os.geteuid() == 0 else None)
    assert result.returncode == EXIT_SOURCE, result.stdout + result.stderr
    assert str(locked) in result.stdout
    assert "Traceback" not in result.stderr
    assert receiver.counts() == dict(expected)


def test_extract_exits_like_once_for_a_missing_file_and_still_counts_the_others(
        tmp_path: Path, good_log) -> None:  # type: ignore[no-untyped-def]
    log, expected = good_log
    result = run_agent("extract", "--json", str(log), str(tmp_path / "missing.log"))
    assert result.returncode == EXIT_SOURCE
    assert str(tmp_path / "missing.log") in result.stderr
    assert json.loads(result.stdout)["counts"] == dict(expected)


def test_extract_of_an_unreadable_file_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    reason = permissions_unenforceable_reason(tmp_path)
    if reason:
        pytest.skip(reason)
    locked = tmp_path / "locked.log"
    locked.write_text("10.0.0.1 x\n")
    locked.chmod(0)
    result = subprocess.run(agent_command("extract", str(locked)), capture_output=True, text=True,
                            env=agent_env(), timeout=60,
                            preexec_fn=drop_file_privileges if os.geteuid() == 0 else None)
    assert result.returncode == EXIT_SOURCE
    assert "Traceback" not in result.stderr
    assert str(locked) in result.stderr and "ermission denied" in result.stderr


def test_test_command_reports_every_glob_that_matches_nothing(tmp_path: Path, receiver, good_log) -> None:  # type: ignore[no-untyped-def]
    log, _ = good_log
    empty = str(tmp_path / "none-*.log")
    config = _config(tmp_path, receiver, [str(log), empty])
    result = run_agent("test", "-c", str(config))
    assert result.returncode == 1
    failed = [line for line in result.stdout.splitlines() if line.startswith("[FAIL]")]
    assert len(failed) == 1 and empty in failed[0], result.stdout


# --- 2. no tracebacks --------------------------------------------------------------------------------------


def test_once_into_a_closed_pipe_delivers_and_shows_no_traceback(tmp_path: Path, receiver, good_log) -> None:  # type: ignore[no-untyped-def]
    """`once ... | head -2`: head is gone before the agent's last lines; the run still counts."""
    log, expected = good_log
    config = _config(tmp_path, receiver, [str(log)])
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader left before anything was written: every print meets EPIPE
    try:
        result = subprocess.run(agent_command("once", "-c", str(config)), stdout=write_end,
                                stderr=subprocess.PIPE, text=True, env=agent_env(), timeout=120)
    finally:
        os.close(write_end)
    assert "Traceback" not in result.stderr and "BrokenPipeError" not in result.stderr, result.stderr
    assert result.returncode in (0, 128 + signal.SIGPIPE)
    assert receiver.counts() == dict(expected)


# --- 3. reset-state: the default keeps the offsets ---------------------------------------------------------


def test_plain_reset_state_keeps_the_offsets_so_nothing_is_counted_twice(
        tmp_path: Path, receiver, good_log) -> None:  # type: ignore[no-untyped-def]
    log, expected = good_log
    config = _config(tmp_path, receiver, [str(log)])
    assert run_agent("once", "-c", str(config)).returncode == 0
    reset = run_agent("reset-state", "-c", str(config))
    assert reset.returncode == 0, reset.stderr
    more = write_access_log(log, 50, seed=9, distinct=20, append=True)
    assert run_agent("once", "-c", str(config)).returncode == 0
    assert receiver.counts() == dict(expected + more)


def test_reset_state_forgets_offsets_only_when_asked_explicitly(tmp_path: Path, receiver, good_log) -> None:  # type: ignore[no-untyped-def]
    log, expected = good_log
    config = _config(tmp_path, receiver, [str(log)])
    assert run_agent("once", "-c", str(config)).returncode == 0
    reset = run_agent("reset-state", "--forget-offsets", "-c", str(config))
    assert reset.returncode == 0, reset.stderr
    assert "read again from its start" in reset.stdout
    assert run_agent("once", "-c", str(config)).returncode == 0
    assert receiver.counts() == {ip: 2 * n for ip, n in expected.items()}


# --- 5. no stale "behind" after compressed rotations -------------------------------------------------------


def test_status_shows_no_bytes_behind_for_content_compressed_away_after_rotation(
        tmp_path: Path, receiver) -> None:  # type: ignore[no-untyped-def]
    """logrotate with compress + delaycompress: c.log -> c.log.1 -> c.log.2.gz, every line delivered."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "c.log"
    config = _config(tmp_path, receiver, [str(log)])
    expected = write_access_log(log, 200, seed=1)
    assert run_agent("once", "-c", str(config)).returncode == 0
    for generation in (2, 3):
        fresh = logs / "fresh.tmp"  # made first, so the new log cannot take the freed inode of c.log.1
        expected += write_access_log(fresh, 200, seed=generation)
        rotated = logs / "c.log.1"
        if rotated.exists():
            with (logs / "c.log.2.gz").open("wb") as compressed:
                subprocess.run(["gzip", "-c", str(rotated)], stdout=compressed, check=True)
            rotated.unlink()
        log.rename(rotated)
        fresh.rename(log)
        result = run_agent("once", "-c", str(config))
        assert result.returncode == 0, result.stdout + result.stderr
    assert receiver.counts() == dict(expected)
    status = run_agent("status", "--json", "-c", str(config))
    report = json.loads(status.stdout)
    behind = [item for item in report["files"] if item["behind"] != 0]
    assert behind == [], report["files"]
    text = run_agent("status", "-c", str(config)).stdout
    assert "? bytes behind" not in text, text


def _rotate_compressed(logs: Path, fresh_lines: int, seed: int):  # type: ignore[no-untyped-def]
    """logrotate with compress + delaycompress: c.log.1 -> c.log.2.gz, c.log -> c.log.1, a new c.log.

    The new log is written first, so it cannot take the inode c.log.1 frees (a reused inode is
    another case, handled as replaced content)."""
    fresh = logs / "fresh.tmp"
    written = write_access_log(fresh, fresh_lines, seed=seed)
    rotated = logs / "c.log.1"
    if rotated.exists():
        with (logs / "c.log.2.gz").open("wb") as compressed:
            subprocess.run(["gzip", "-c", str(rotated)], stdout=compressed, check=True)
        rotated.unlink()
    (logs / "c.log").rename(rotated)
    fresh.rename(logs / "c.log")
    return written


def test_forever_reports_no_lag_for_content_compressed_away_after_rotation(tmp_path: Path, receiver) -> None:  # type: ignore[no-untyped-def]
    from tests.e2e.test_forever import FAST_READ, _free_port, _scrape, _stop

    logs = tmp_path / "logs"
    logs.mkdir()
    expected = write_access_log(logs / "c.log", 100, seed=1)
    port = _free_port()
    config = _config(tmp_path, receiver, [str(logs / "c.log")], read=FAST_READ,
                     batching={"max_batch_age": 0.2}, agent={"metrics_listen": f"127.0.0.1:{port}"})
    agent_log = tmp_path / "state" / "agent.log"
    agent = start_agent("forever", "-c", str(config))
    try:
        assert receiver.wait_for_total(sum(expected.values()), timeout=30)
        for generation, lines in ((2, 200), (3, 400)):  # each generation longer than the one before
            expected += _rotate_compressed(logs, lines, generation)
            assert receiver.wait_for_total(sum(expected.values()), timeout=30)
            assert wait_for(lambda g=generation: agent_log.read_text().count("event=rotated_file_done") >= g - 1,
                            timeout=30)
        lags = [line for line in _scrape(port).splitlines() if line.startswith("remote_uploader_file_lag_bytes")]
    finally:
        code, _out, err = _stop(agent)
    assert code == 0, err
    assert receiver.counts() == dict(expected)
    assert lags and all(float(line.rsplit(" ", 1)[1]) == 0 for line in lags), lags


# --- 6. the progress line, -q and the queue size -------------------------------------------------------------


def _run_in_pty(args: list[str], timeout: float = 120) -> tuple[int, str]:
    """Run with stdout and stderr on a terminal (the progress line is shown only there)."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal, env=agent_env())
    os.close(terminal)
    output = bytearray()
    while True:
        ready, _, _ = select.select([controller], [], [], timeout)
        if not ready:
            process.kill()
            break
        try:
            data = os.read(controller, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        output += data
    os.close(controller)
    return process.wait(timeout=30), output.decode(errors="replace")


def test_progress_line_ends_at_100_percent_before_the_stats(tmp_path: Path, receiver) -> None:  # type: ignore[no-untyped-def]
    big = tmp_path / "big.log"
    line = b"203.0.113.9 - - GET /" + b"x" * 100 + b"\n"
    with big.open("wb") as handle:
        for _ in range(34 * 1024 * 1024 // (len(line) * 1024) + 1):
            handle.write(line * 1024)
    config = _config(tmp_path, receiver, [str(big)], agent={"workers": 1})
    code, output = _run_in_pty(agent_command("once", "-c", str(config)))
    assert code == 0, output
    frames = output.replace("\r\n", "\n").split("\r")  # the terminal turns each \n into \r\n
    assert "(100%)" in output, output[-500:]
    assert "\x1b[KPending" not in output  # the last frame ended with a newline before the stats
    last_frame = next(frame for frame in reversed(frames) if "Reading:" in frame)
    assert "(100%)\x1b[K\nPending IPs" in last_frame


def test_quiet_once_prints_nothing_when_all_is_well(tmp_path: Path, receiver, good_log) -> None:  # type: ignore[no-untyped-def]
    log, _ = good_log
    config = _config(tmp_path, receiver, [str(log)])
    result = run_agent("once", "-q", "-c", str(config))
    assert result.returncode == 0
    assert result.stdout == "" and result.stderr == ""


def test_quiet_once_still_names_the_source_it_could_not_read(tmp_path: Path, receiver, good_log) -> None:  # type: ignore[no-untyped-def]
    log, _ = good_log
    config = _config(tmp_path, receiver, [str(log), str(tmp_path / "missing.log")])
    result = run_agent("once", "-q", "-c", str(config))
    assert result.returncode == EXIT_SOURCE
    assert str(tmp_path / "missing.log") in result.stdout + result.stderr
    assert "Pending IPs" not in result.stdout


def test_persistent_queue_size_is_what_is_queued_not_the_database_files(
        tmp_path: Path, receiver, good_log) -> None:  # type: ignore[no-untyped-def]
    log, _ = good_log
    config = _config(tmp_path, receiver, [str(log)])
    result = run_agent("once", "-c", str(config))
    assert result.returncode == 0
    assert "Persistent queue size: 0.00 MB" in result.stdout, result.stdout


# --- 8. the effective configuration ----------------------------------------------------------------------------


def test_config_show_prints_every_key_with_its_value_and_origin(tmp_path: Path) -> None:
    from remote_uploader.config import KNOWN_KEYS

    config = tmp_path / "agent.toml"
    config.write_text('[batching]\nmin_upload_batch = 77\n[server]\ntoken = "s3cret-token"\n'
                      '[[sources]]\npaths = ["/var/log/x.log"]\n')
    args = ("-c", str(config), "--profile", "large-memory", "--set", "read.poll_interval=0.5")
    env = {"REMOTE_UPLOADER_SERVER_TIMEOUT": "7"}
    result = run_agent("config", "show", "--json", *args, env=env)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    keys = shown["keys"]
    assert set(keys) == KNOWN_KEYS
    assert keys["batching.min_upload_batch"] == {"value": 77, "origin": str(config)}
    assert keys["batching.max_memory_ips"] == {"value": 20000, "origin": "profile large-memory"}
    assert keys["server.timeout"] == {"value": 7.0, "origin": "environment REMOTE_UPLOADER_SERVER_TIMEOUT"}
    assert keys["read.poll_interval"] == {"value": 0.5, "origin": "command line"}
    assert keys["server.backoff_cap"] == {"value": 60.0, "origin": "default"}
    assert keys["server.token"]["value"] == "***"
    assert shown["sources"] == [{"paths": ["/var/log/x.log"], "regex": None, "exclude": [], "name": "",
                                 "timestamp_pattern": None, "origin": str(config)}]
    text = run_agent("config", "show", *args, env=env)
    assert text.returncode == 0
    assert "s3cret-token" not in text.stdout + result.stdout
    document = tomllib.loads(text.stdout)
    assert document["batching"]["min_upload_batch"] == 77
    assert document["server"]["timeout"] == 7.0
    assert document["sources"][0]["paths"] == ["/var/log/x.log"]
    assert f"min_upload_batch = 77  # {config}" in text.stdout


# --- 9. Chinese, and messages that read right ------------------------------------------------------------------


def test_chinese_translates_source_errors_and_status_words(tmp_path: Path, receiver, good_log) -> None:  # type: ignore[no-untyped-def]
    log, _ = good_log
    config = _config(tmp_path, receiver, [str(log), str(tmp_path / "missing.log")])
    once = run_agent("once", "--lang", "zh", "-c", str(config))
    assert "No such file or directory" not in once.stdout, once.stdout
    assert "文件不存在" in once.stdout
    status = run_agent("status", "--lang", "zh", "-c", str(config))
    assert "(active)" not in status.stdout, status.stdout


def test_chinese_help_is_translated(tmp_path: Path) -> None:
    result = run_agent("once", "--help", env={"LANG": "zh_CN.UTF-8"})
    assert result.returncode == 0
    assert "read every file" not in result.stdout
    assert "用法" in result.stdout and "配置" in result.stdout
    top = run_agent("--lang", "zh", "--help")
    assert "用法" in top.stdout and "read every file to its end" not in top.stdout


def test_a_missing_config_file_is_named_as_a_file_not_as_a_key(tmp_path: Path) -> None:
    result = run_agent("once", "-c", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert "config key config" not in result.stderr
    assert f"config file {tmp_path / 'nope.toml'}: does not exist" in result.stderr


def test_once_never_announces_a_retry_after_it_will_have_given_up(tmp_path: Path, receiver, good_log) -> None:  # type: ignore[no-untyped-def]
    """A Retry-After of 30 s against a budget of 1.5 s: the log must not promise a retry in 30 s."""
    log, _ = good_log
    receiver.fail_next(100, 503, retry_after=30)
    config = _config(tmp_path, receiver, [str(log)])
    result = run_agent("once", "-c", str(config), "--max-retry-time", "1.5")
    assert result.returncode == 3
    announced = [line for line in result.stderr.splitlines() if "event=upload_failed" in line]
    assert announced, result.stderr
    for line in announced:
        retry_in = line.split("retry_in=")[1].split()[0]
        assert retry_in == "none" or float(retry_in.rstrip("s")) <= 1.5, line
    assert "giving_up_in=" in result.stderr
