"""The command line's own behaviour: exit codes and what reaches the terminal."""

from __future__ import annotations

import errno
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from remote_uploader.cli import QuietRotatingFileHandler, build_parser
from tests.helpers.agent import run_agent


def test_status_of_a_damaged_queue_exits_non_zero_and_names_the_recovery(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "queue.db").write_bytes(b"garbage, not a database" * 100)
    result = run_agent("status", "--state-dir", str(state))
    assert result.returncode == 4
    assert "reset-state" in result.stdout


def test_an_unwritable_log_file_is_reported_once_not_per_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    class FullDisk:
        closed = False

        def write(self, text: str) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

    handler = QuietRotatingFileHandler(tmp_path / "agent.log")
    handler.stream.close()
    handler.stream = FullDisk()  # type: ignore[assignment]
    logger = logging.getLogger("test.quiet")
    logger.addHandler(handler)
    try:
        for number in range(5):
            logger.error("line %d", number)
    finally:
        logger.removeHandler(handler)
    err = capsys.readouterr().err
    assert err.count("cannot write the log file") == 1
    assert "Traceback" not in err


@pytest.mark.parametrize("line", [
    ["once", "a.log", "--workers", "1", "--set", "agent.engine=native", "-q"],
    ["once", "--max-retry-time", "5", "--url", "http://127.0.0.1:1", "a.log", "b.log"],
    ["forever", "-c", "x.toml", "-vv", "--lang", "zh"],
    ["extract", "a.log", "--json", "--exclude", "10.0.0.0/8", "--engine", "stdlib"],
    ["config", "show", "--json", "a.log"],
    ["ips", "--since", "1h", "--limit", "5", "--csv"],
    ["reset-state", "--forget-offsets"],
    ["collector", "serve", "--port", "1"],
])
def test_a_parser_built_for_the_command_named_first_parses_its_line_as_the_full_parser(line: list[str]) -> None:
    assert vars(build_parser(only=line[0]).parse_args(line)) == vars(build_parser().parse_args(line))


@pytest.mark.parametrize("line", [["once", "--bogus"], ["once", "--help"], ["extract"], ["config"],
                                  ["ips", "--sort", "nope"], ["status", "--workers", "x"]])
def test_a_parser_built_for_the_command_named_first_refuses_and_helps_as_the_full_parser(
    line: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    said = []
    for parser in (build_parser(only=line[0]), build_parser()):
        with pytest.raises(SystemExit) as stopped:
            parser.parse_args(line)
        said.append((stopped.value.code, capsys.readouterr()))
    assert said[0] == said[1]


def test_a_worker_process_does_not_import_what_only_the_agent_uses() -> None:
    """A worker's start-up is paid again by every `once` with two workers (docs/benchmarks.md)."""
    probe = ("import sys, remote_uploader.agent.parallel, remote_uploader.agent.extract as e; "
             "print('subprocess' in sys.modules, e._scan_patterns.cache_info().currsize)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split() == ["False", "0"]  # no subprocess module, the stdlib patterns not compiled
