"""Files that look alike, with real agent processes and the receiver's counts (issue 9, holes 1 and 2).

`tests/agent/tail/test_identity.py` holds the same cases step by step in process; these run them as an
operator would meet them: `forever` on per-vhost logs that share a header, and two `once` runs around
a rewrite of a file under a header longer than a fingerprint.
"""

from __future__ import annotations

import shutil
import signal
from pathlib import Path
from typing import Any

from tests.helpers.agent import run_agent, start_agent, write_config

HEADER = "#Version: 1.0\n#Fields: date time s-ip cs-method cs-uri-stem c-ip sc-status\n"
LONG_HEADER = "".join(f"# {f'header field {n:03d} ':-<70}\n" for n in range(20))  # 1.4 KiB


def lines(ip: str, n: int, start: int = 0) -> str:
    return "".join(f"2026-12-02 10:00:{i % 60:02d} {ip} GET /item/{start + i} 200\n" for i in range(n))


def test_per_vhost_logs_sharing_a_header_line_are_each_read_under_forever(tmp_path: Path, receiver: Any) -> None:
    for name in ("api.log", "shop.log", "www.log"):
        (tmp_path / name).write_text(HEADER)
    config = write_config(tmp_path / "agent.toml", url=receiver.url, token=receiver.token,
                          state_dir=tmp_path / "state", sources=[str(tmp_path / "*.log")],
                          read={"poll_interval": 0.1}, batching={"max_batch_age": 0.2})
    agent = start_agent("forever", "-c", str(config))
    try:
        assert receiver.wait_for_total(1, timeout=3) is False  # headers only: nothing to count yet
        with (tmp_path / "www.log").open("a") as handle:
            handle.write(lines("192.0.2.7", 40))
        with (tmp_path / "shop.log").open("a") as handle:
            handle.write(lines("192.0.2.8", 10))
        assert receiver.wait_for_total(50, timeout=30), receiver.counts()
    finally:
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=60)
    assert agent.returncode == 0, err
    assert receiver.counts() == {"192.0.2.7": 40, "192.0.2.8": 10}


def test_once_after_a_rewrite_under_a_long_common_header_reads_the_copy_on_and_the_new_content_whole(
        tmp_path: Path, receiver: Any) -> None:
    live = tmp_path / "app.log"
    config = write_config(tmp_path / "agent.toml", url=receiver.url, token=receiver.token,
                          state_dir=tmp_path / "state", sources=[str(live)])
    live.write_text(LONG_HEADER + lines("1.1.1.1", 100))
    first = run_agent("once", "-c", str(config))
    assert first.returncode == 0, first.stderr
    with live.open("a") as handle:
        handle.write(lines("1.1.1.1", 50, start=100))
    shutil.copyfile(live, tmp_path / "app.log.1")  # cp app.log app.log.1; : > app.log
    with live.open("r+") as handle:
        handle.truncate(0)
        handle.write(LONG_HEADER + lines("2.2.2.2", 300))  # the same inode, the same first KiB
    second = run_agent("once", "-c", str(config))
    assert second.returncode == 0, second.stderr
    assert receiver.counts() == {"1.1.1.1": 150, "2.2.2.2": 300}
