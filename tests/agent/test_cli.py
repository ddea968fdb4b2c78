"""The command line's own behaviour: exit codes and what reaches the terminal."""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import pytest

from remote_uploader.cli import QuietRotatingFileHandler
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
