"""`status` during rotations: a record is sized by where its content is now, not by its old path."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.agent import write_access_log, write_config
from tests.helpers.receiver import Receiver
from tests.reliability.harness import run, status


def test_status_follows_a_rotated_file_instead_of_sizing_the_new_one(tmp_path: Path, receiver: Receiver) -> None:
    """Regression: after a rename rotation `status` sized the *new* file at the old path against the
    old offset, and so reported 0 bytes behind for a rotated file that still had unread lines."""
    live = tmp_path / "access.log"
    write_access_log(live, 2000, seed=1)
    config = write_config(tmp_path / "agent.toml", url=receiver.url, token=receiver.token,
                          state_dir=tmp_path / "state", sources=[str(live)])
    assert run(config, "once").returncode == 0
    rotated = tmp_path / "access.log.1"
    live.rename(rotated)
    with rotated.open("a") as handle:
        handle.write("198.51.100.1 - - late line written just before the rotation\n" * 10)
    write_access_log(live, 100, seed=2)  # the new live file: smaller than the old offset
    [item] = status(config)["files"]
    assert item["path"] == str(rotated) and item["recorded_path"] == str(live)
    assert item["behind"] == rotated.stat().st_size - item["offset"] > 0
