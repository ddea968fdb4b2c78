"""`forever` stopped (SIGTERM) while a batch is in flight, then `once` on the same state: the end of
the copytruncate benchmark (docs/benchmarks.md), where one run counted 455 lines twice.

The candidate cause: the batch was stored at the collector but its answer had not reached the
agent when SIGTERM came; `forever` cut the request at the end of its drain period and left the
batch queued; the final `once` sent it again (or read its lines again) and the collector counted
them twice. Here the real collector stores, and the fault relay holds the answer at exactly that
moment (`hold_after`); the look-alike holds the request before anything is stored (`hold_before`).
Either way every line must be counted once: the offsets moved with the queued batch, so `once`
reads nothing of it again, and the resent batch keeps its id, which the collector has seen.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from tests.helpers.agent import run_agent, start_agent, wait_for, write_config
from tests.helpers.collector_fixtures import CollectorThread
from tests.helpers.faultproxy import FaultProxy

FAST_READ = {"poll_interval": 0.1, "rotate_grace": 0.5, "partial_line_idle": 1.0}


def _append(log: Path, start: int, n: int) -> dict[str, int]:
    """Lines `start`..`start + n - 1`, each with an address of its own (count 1), as the benchmark."""
    addresses = {f"10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}": 1 for i in range(start, start + n)}
    with log.open("a") as handle:
        handle.writelines(f"2026-12-02T10:00:00Z {ip} GET /x 200\n" for ip in addresses)
    return addresses


@pytest.mark.parametrize("copytruncate", [False, True], ids=["appended", "after-a-copytruncate"])
@pytest.mark.parametrize("hold", ["hold_after", "hold_before"], ids=["stored-not-acknowledged", "not-stored"])
def test_sigterm_with_a_batch_in_flight_then_once_counts_every_line_once(
        tmp_path: Path, collector: CollectorThread, hold: str, copytruncate: bool) -> None:
    """With `copytruncate`, the file is copied to ``access.log.1`` and truncated (as the benchmark
    does) once its first lines are delivered, and the held batch is the new content's: `once` then
    starts with a copy written seconds before `forever` last looked, the kind of file its first
    pass reads from 0 when no record knows it."""
    proxy = FaultProxy(int(collector.url.rsplit(":", 1)[1]))
    try:
        log = tmp_path / "access.log"
        expected = _append(log, 0, 600)
        # A request timeout far past the test: the held request is still in flight at SIGTERM
        # (a retry on timeout would pass the relay and be acknowledged, a case already covered).
        config = write_config(tmp_path / "agent.toml", url=proxy.url, token=collector.token,
                              state_dir=tmp_path / "state", sources=[str(log)], read=FAST_READ,
                              server={"timeout": 600.0}, shutdown={"drain_timeout": 0.5})
        agent = start_agent("forever", "-c", str(config))
        try:
            assert wait_for(lambda: sum(collector.counts().values()) == 600, timeout=120)
            proxy.add(hold, 1)
            if copytruncate:
                shutil.copyfile(log, tmp_path / "access.log.1")
                os.truncate(log, 0)
            expected |= _append(log, 600, 300)
            assert proxy.held.wait(120)  # hold_after: stored at the collector, its answer not sent
            stored_at_stop = sum(collector.counts().values())
            agent.send_signal(signal.SIGTERM)
            out, err = agent.communicate(timeout=120)
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.communicate()
        assert agent.returncode == 0, err
        assert "stay queued for the next start" in out, out + err  # the held batch was left queued
        if hold == "hold_after":
            assert stored_at_stop > 600  # ... and the collector had stored it
        proxy.clear()
        proxy.release()  # the held request ends (hold_before: reset, nothing forwarded)
        final = run_agent("once", "-c", str(config))
        assert final.returncode == 0, final.stdout + final.stderr
        counts = collector.counts()
        assert {ip: n for ip, n in counts.items() if n > 1} == {}
        assert counts == expected
        assert proxy.applied[hold] == 1
    finally:
        proxy.close()
