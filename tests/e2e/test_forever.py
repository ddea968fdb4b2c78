"""`forever` as a service: shutdown and restart under load, latency of a trickle, backpressure with the
collector down, `status` beside the running agent, SIGHUP reload, the Prometheus endpoint."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.request
from collections import Counter
from pathlib import Path

from tests.helpers.agent import run_agent, start_agent, wait_for, write_access_log, write_config

FAST_READ = {"poll_interval": 0.1, "rotate_grace": 0.5, "partial_line_idle": 1.0}


def _stop(agent, timeout: float = 60) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    if agent.poll() is None:
        agent.send_signal(signal.SIGTERM)
    out, err = agent.communicate(timeout=timeout)
    return agent.returncode, out, err


def test_sigterm_under_heavy_load_exits_0_within_the_drain_period_and_a_restart_delivers_the_rest(
        tmp_path: Path, receiver) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "access.log"
    expected = write_access_log(log, 120_000, seed=3, distinct=20_000)
    config = write_config(tmp_path / "agent.toml", url=receiver.url, token=receiver.token,
                          state_dir=tmp_path / "state", sources=[str(log)], read=FAST_READ,
                          batching={"max_memory_ips": 2000, "force_upload_threshold": 1000, "min_upload_batch": 100},
                          shutdown={"drain_timeout": 2.0})
    receiver.delay_fraction(1.0, 0.2)  # a slow collector: the queue grows while reading goes on
    agent = start_agent("forever", "-c", str(config))
    try:
        assert receiver.wait_for_requests(2, timeout=30)
        started = time.monotonic()
        code, out, err = _stop(agent)
        elapsed = time.monotonic() - started
    finally:
        if agent.poll() is None:
            agent.kill()
    assert code == 0, err
    assert elapsed < 2.0 + 10, elapsed  # the drain period plus generous slack for a loaded machine
    assert receiver.total() < sum(expected.values()), "the load was not heavy enough to test a drain"
    assert "stay queued" in out or "delivered" in out
    receiver.clear_faults()
    again = start_agent("forever", "-c", str(config))
    try:
        assert receiver.wait_for_total(sum(expected.values()), timeout=60)
        time.sleep(0.5)
    finally:
        code, _, err = _stop(again)
    assert code == 0, err
    assert receiver.counts() == dict(expected)


def test_a_second_signal_exits_at_once_and_loses_nothing(tmp_path: Path, receiver) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "access.log"
    expected = write_access_log(log, 60_000, seed=4, distinct=10_000)
    config = write_config(tmp_path / "agent.toml", url=receiver.url, token=receiver.token,
                          state_dir=tmp_path / "state", sources=[str(log)], read=FAST_READ,
                          batching={"max_memory_ips": 1000, "force_upload_threshold": 500, "min_upload_batch": 50},
                          shutdown={"drain_timeout": 30.0})
    receiver.delay_fraction(1.0, 0.5)
    agent = start_agent("forever", "-c", str(config))
    assert receiver.wait_for_requests(1, timeout=30)
    agent.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    agent.send_signal(signal.SIGTERM)
    agent.communicate(timeout=10)  # far less than the 30 s drain period
    assert agent.returncode == 128 + signal.SIGTERM
    receiver.clear_faults()
    result = run_agent("once", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert receiver.counts() == dict(expected)


def test_a_trickle_of_lines_arrives_within_seconds_with_default_settings(tmp_path: Path, receiver) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "access.log"
    log.write_text("")
    config = write_config(tmp_path / "agent.toml", url=receiver.url, token=receiver.token,
                          state_dir=tmp_path / "state", sources=[str(log)])  # poll 1 s, max_batch_age 1 s
    agent = start_agent("forever", "-c", str(config))
    try:
        for n in range(1, 7):  # far below min_upload_batch (100): only max_batch_age seals these
            with log.open("a") as handle:
                handle.write(f'198.51.100.{n} - - [28/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 1\n')
            assert receiver.wait_for_total(n, timeout=8), f"line {n} not delivered"  # 1-2 s expected
            time.sleep(0.3)
    finally:
        code, _, err = _stop(agent)
    assert code == 0, err
    assert receiver.counts() == {f"198.51.100.{n}": 1 for n in range(1, 7)}


def test_collector_down_and_queue_full_pause_reading_keep_rotated_files_open_and_status_works(
        tmp_path: Path, receiver) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "access.log"
    expected = write_access_log(log, 3000, seed=5, distinct=600)
    config = write_config(tmp_path / "agent.toml", url=receiver.url, token=receiver.token,
                          state_dir=tmp_path / "state", sources=[str(log)], read=FAST_READ,
                          batching={"max_memory_ips": 100, "force_upload_threshold": 50, "min_upload_batch": 10},
                          queue={"max_bytes": 4096}, agent={"stats_interval": 0.3})
    receiver.stop()  # the collector is down
    agent = start_agent("forever", "-c", str(config))
    try:
        state = tmp_path / "state"
        assert wait_for(lambda: "event=queue_full" in _read(state / "agent.log"), timeout=30)
        log.unlink()  # rotated away (deleted) while reading is paused: its descriptor must stay open
        expected += write_access_log(log, 500, seed=6, distinct=600)
        status = run_agent("status", "--json", "-c", str(config), timeout=20)
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["agent_running"] is True
        assert report["queue"]["batches"] >= 1
        time.sleep(1.0)  # a few stats periods while paused
        receiver.start()  # the collector is back
        assert receiver.wait_for_total(sum(expected.values()), timeout=60)
        time.sleep(0.5)
    finally:
        code, out, err = _stop(agent)
    assert code == 0, err
    assert receiver.counts() == dict(expected)
    assert "Reading paused" in out
    assert f"Behind: {log}" in out and " bytes (" in out
    assert "WARNING: memory pressure" in out


def test_sighup_picks_up_new_sources_and_a_bad_config_keeps_the_old_one(tmp_path: Path, receiver) -> None:  # type: ignore[no-untyped-def]
    first, second = tmp_path / "a.log", tmp_path / "b.log"
    expected = write_access_log(first, 200, seed=7)
    other = write_access_log(second, 300, seed=8)
    settings = {"url": receiver.url, "token": receiver.token, "state_dir": tmp_path / "state", "read": FAST_READ,
                "batching": {"max_batch_age": 0.2}}
    config = write_config(tmp_path / "agent.toml", sources=[str(first)], **settings)  # type: ignore[arg-type]
    agent = start_agent("forever", "-c", str(config))
    try:
        assert receiver.wait_for_total(sum(expected.values()), timeout=30)
        write_config(tmp_path / "agent.toml", sources=[str(first), str(second)], **settings)  # type: ignore[arg-type]
        agent.send_signal(signal.SIGHUP)
        expected += other
        assert receiver.wait_for_total(sum(expected.values()), timeout=30)
        config.write_text(config.read_text() + "\n[batching]\nmax_memory_ips = -1\n")  # invalid
        agent.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "config_reload_failed" in _read(tmp_path / "state" / "agent.log"), timeout=15)
        expected += write_access_log(second, 100, seed=9, append=True)
        assert receiver.wait_for_total(sum(expected.values()), timeout=30)
        time.sleep(0.3)
    finally:
        code, out, err = _stop(agent)
    assert code == 0, err
    assert receiver.counts() == dict(expected)
    assert "Configuration reloaded" in out and "the old one stays in force" in out


def test_prometheus_endpoint_reports_reading_queue_lag_and_upload_latency(tmp_path: Path, receiver) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "access.log"
    expected: Counter[str] = write_access_log(log, 500, seed=10)
    port = _free_port()
    config = write_config(tmp_path / "agent.toml", url=receiver.url, token=receiver.token,
                          state_dir=tmp_path / "state", sources=[str(log)], read=FAST_READ,
                          batching={"max_batch_age": 0.2}, agent={"metrics_listen": f"127.0.0.1:{port}"})
    agent = start_agent("forever", "-c", str(config))
    try:
        assert receiver.wait_for_total(sum(expected.values()), timeout=30)
        assert wait_for(lambda: _metrics(_scrape(port)).get("remote_uploader_batches_sent_total", 0) >= 1, timeout=15)
        values = _metrics(_scrape(port))
    finally:
        code, _, err = _stop(agent)
    assert code == 0, err
    assert values["remote_uploader_lines_read_total"] == 500
    assert values["remote_uploader_ip_occurrences_total"] == sum(expected.values())
    assert values["remote_uploader_batches_sent_total"] >= 1
    assert values["remote_uploader_upload_latency_seconds_count"] >= 1
    assert values["remote_uploader_queue_batches"] == 0
    assert values[f'remote_uploader_file_lag_bytes{{path="{log}",status="active"}}'] == 0
    assert values["remote_uploader_last_success_timestamp_seconds"] > 0
    for name in ("bytes_read_total", "batches_sealed_total", "upload_failures_total",
                 "batches_dead_lettered_total", "queue_bytes", "reading_paused"):
        assert f"remote_uploader_{name}" in values


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def _metrics(text: str) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def _scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return str(response.read().decode())
    except OSError:
        return ""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_status_reads_the_queue_read_only(tmp_path: Path, receiver) -> None:  # type: ignore[no-untyped-def]
    """`status` opens the database read-only: it works on a state directory it may not write."""
    log = tmp_path / "access.log"
    write_access_log(log, 100, seed=12)
    config = write_config(tmp_path / "agent.toml", url=receiver.url, token=receiver.token,
                          state_dir=tmp_path / "state", sources=[str(log)])
    assert run_agent("once", "-c", str(config)).returncode == 0
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "state").iterdir() if p.name.startswith("queue")}
    result = run_agent("status", "--json", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["files"][0]["behind"] == 0
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "state").iterdir() if p.name.startswith("queue")}
    assert after.get("queue.db") == before.get("queue.db")
    assert os.environ.get("REMOTE_UPLOADER_CONFIG") is None
