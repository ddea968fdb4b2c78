"""Clock steps cannot make a batch undeliverable (issue 9, hole 4): the real agent, stepped through
the test clock hook (`REMOTE_UPLOADER_CLOCK_FILE`), against the real collector."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from remote_uploader.agent.batch import encode_sealed
from remote_uploader.agent.clock import ENV as CLOCK_ENV
from remote_uploader.agent.spool import Spool, prepare_state_dir
from remote_uploader.protocol import Record, format_time
from tests.helpers.agent import run_agent, start_agent, wait_for, write_config
from tests.helpers.collector_fixtures import CollectorProcess, CollectorThread


def _set_offset(path: Path, seconds: float) -> None:
    """Step the agent's clock: a new file renamed over the old one (never half written)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(repr(seconds))
    os.replace(tmp, path)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _lines_read(port: int) -> float:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return -1
    found = re.search(r"^remote_uploader_lines_read_total (\S+)$", text, re.M)
    return float(found[1]) if found else -1


def _dead_letters(config: Path) -> int:
    status = run_agent("status", "--json", "-c", str(config))
    dead: list[object] = json.loads(status.stdout)["dead_letters"]
    return len(dead)


def _seen(collector: CollectorThread, ip: str) -> tuple[datetime, datetime]:
    item = collector.get(f"/v1/ips/{ip}").json()
    return datetime.fromisoformat(item["first_seen"]), datetime.fromisoformat(item["last_seen"])


def test_a_clock_stepped_back_inside_an_open_batch_is_delivered_not_dead_lettered(
        collector: CollectorThread, tmp_path: Path) -> None:
    clock = tmp_path / "clock"
    _set_offset(clock, 0.0)
    log = tmp_path / "app.log"
    log.write_text("client 192.0.2.1 ok\n")
    port = _free_port()
    state = tmp_path / "state"
    # One batch for both lines: sealed only at shutdown (no size or age reaches a seal before).
    config = write_config(tmp_path / "agent.toml", url=collector.url, token=collector.token, state_dir=state,
                          sources=[str(log)], read={"poll_interval": 0.1},
                          batching={"max_batch_age": 600.0, "min_upload_batch": 1000},
                          agent={"metrics_listen": f"127.0.0.1:{port}"}, shutdown={"drain_timeout": 20.0})
    agent = start_agent("forever", "-c", str(config), env={CLOCK_ENV: str(clock)})
    try:
        assert wait_for(lambda: _lines_read(port) == 1, timeout=30)
        _set_offset(clock, -30.0)  # NTP steps the clock back while the batch is open
        # The agent looks at the clock file at most every 50 ms, counted from its last look, which
        # was when it read the first line (before we saw it counted): past this, it sees the step.
        time.sleep(0.06)
        with log.open("a") as handle:
            handle.write("client 192.0.2.2 ok\n")
        assert wait_for(lambda: _lines_read(port) == 2, timeout=30)
    finally:
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=60)
    assert agent.returncode == 0, err[-3000:]
    assert collector.counts() == {"192.0.2.1": 1, "192.0.2.2": 1}
    assert _dead_letters(config) == 0
    first, last = _seen(collector, "192.0.2.2")
    assert first <= last


def test_a_batch_an_old_agent_queued_with_last_seen_before_first_seen_is_delivered(
        collector: CollectorThread, tmp_path: Path) -> None:
    state = tmp_path / "state"
    prepare_state_dir(state)
    spool = Spool(state)
    first = datetime.now(UTC) - timedelta(minutes=10)
    records = [Record("198.51.100.7", 3, format_time(first), format_time(first - timedelta(seconds=0.5)), "a.log")]
    spool.commit(encode_sealed("test-agent", "old-batch-1", records, time.time() - 600, compress=True), {})
    spool.close()
    log = tmp_path / "empty.log"
    log.write_text("")
    config = write_config(tmp_path / "agent.toml", url=collector.url, token=collector.token, state_dir=state,
                          sources=[str(log)])
    result = run_agent("once", "-c", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    assert collector.counts() == {"198.51.100.7": 3}
    assert _dead_letters(config) == 0
    seen_first, seen_last = _seen(collector, "198.51.100.7")
    assert seen_last - seen_first == timedelta(seconds=0.5)
    assert re.search(r"^collector_clamped_times_total 1\.0$", collector.get("/metrics").text, re.M)


def test_times_from_an_agent_clock_far_ahead_are_clamped_to_the_arrival_and_counted(
        collector_process: CollectorProcess, tmp_path: Path) -> None:
    collector = collector_process  # a process: the test reads its log
    clock = tmp_path / "clock"
    _set_offset(clock, 10 * 86400.0)  # the agent's clock is ten days ahead
    log = tmp_path / "app.log"
    log.write_text("client 203.0.113.40 ok\nclient 203.0.113.41 ok\n")
    config = write_config(tmp_path / "agent.toml", url=collector.url, token=collector.token,
                          state_dir=tmp_path / "state", sources=[str(log)])
    result = run_agent("once", "-c", str(config), env={CLOCK_ENV: str(clock)})
    done = datetime.now(UTC)
    assert result.returncode == 0, result.stderr[-3000:]
    assert collector.counts() == {"203.0.113.40": 1, "203.0.113.41": 1}
    first, last = _seen(collector, "203.0.113.40")
    assert first <= last <= done  # the arrival time, not ten days ahead
    metrics = collector.get("/metrics").text
    assert re.search(r"^collector_clamped_times_total 5\.0$", metrics, re.M), metrics  # 2 x 2 times + sent_at
    assert 'msg="times clamped"' in collector.log()
