"""The test clock hook: `REMOTE_UPLOADER_CLOCK_FILE` steps the agent's wall clock (agent/clock.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from remote_uploader.agent import clock

PROBE = (
    "import sys, time; from remote_uploader.agent.clock import wall; "
    "print(wall() - time.time()); sys.stdout.flush(); sys.stdin.readline(); time.sleep(0.06); "
    "print(wall() - time.time())"
)


def _set_offset(path: Path, offset: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(offset)
    os.replace(tmp, path)


def test_unset_the_wall_clock_is_time_time_itself() -> None:
    if os.environ.get(clock.ENV):
        return
    assert clock.wall is time.time


def test_the_offset_in_the_clock_file_steps_the_wall_clock_and_a_change_is_seen_while_running(
        tmp_path: Path) -> None:
    offset = tmp_path / "offset"
    _set_offset(offset, "-3600")
    env = {**os.environ, clock.ENV: str(offset)}
    probe = subprocess.Popen([sys.executable, "-c", PROBE], env=env, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert probe.stdout is not None and probe.stdin is not None
    first = float(probe.stdout.readline())
    _set_offset(offset, "86400.5")
    probe.stdin.write("\n")
    probe.stdin.flush()
    second = float(probe.stdout.readline())
    assert probe.wait(timeout=30) == 0
    assert abs(first - -3600) < 1 and abs(second - 86400.5) < 1


def test_a_missing_or_garbage_clock_file_means_no_offset(tmp_path: Path) -> None:
    stepped = clock._SteppedClock(str(tmp_path / "absent"))
    assert abs(stepped() - time.time()) < 1
    garbage = tmp_path / "garbage"
    for text in ("soon", "nan", "inf", "", "\xff"):
        garbage.write_text(text, encoding="latin-1")
        stepped = clock._SteppedClock(str(garbage))
        assert abs(stepped() - time.time()) < 1, text
