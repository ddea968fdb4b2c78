"""The real agent (`remote-uploader once`) against the real collector, on both backends."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.helpers.agent import run_agent, write_access_log, write_config
from tests.helpers.collector_fixtures import CollectorProcess, CollectorThread

SMALL_BATCHES = {"min_upload_batch": 20, "force_upload_threshold": 150, "max_memory_ips": 300}


def _config(tmp_path: Path, collector: CollectorThread, log: Path, token: str | None = None) -> Path:
    return write_config(
        tmp_path / "agent.toml",
        url=collector.url,
        token=token or collector.token,
        state_dir=tmp_path / "state",
        sources=[str(log)],
        batching=SMALL_BATCHES,
    )


def test_once_delivers_exact_counts(collector_any: CollectorThread, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    expected = write_access_log(log, 4000, seed=7)
    config = _config(tmp_path, collector_any, log)
    result = run_agent("once", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert collector_any.counts() == dict(expected)
    more = write_access_log(log, 800, seed=8, append=True)
    assert run_agent("once", "-c", str(config)).returncode == 0
    assert collector_any.counts() == dict(expected + more)
    (agent,) = collector_any.get("/v1/agents").json()["items"]
    assert agent["agent"] == "test-agent" and agent["duplicates"] == 0


def test_the_agent_splits_batches_that_the_collector_finds_too_large(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    collector = CollectorProcess(tmp_path, f"sqlite://{tmp_path}/collector.db", ["--max-body", "4096"])
    request.addfinalizer(collector.stop)
    collector.start()  # a process: the test reads its log
    log = tmp_path / "access.log"
    expected = write_access_log(log, 2000, seed=3)
    result = run_agent("once", "-c", str(_config(tmp_path, collector, log)))
    assert result.returncode == 0, result.stderr
    assert collector.counts() == dict(expected)
    assert "status=413" in collector.log()


def test_a_wrong_token_keeps_the_data_queued_until_it_is_fixed(collector: CollectorThread, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    expected: Counter[str] = write_access_log(log, 1000, seed=5)
    wrong = run_agent("once", "--max-retry-time", "1", "-c", str(_config(tmp_path, collector, log, "ru_wrong")))
    assert wrong.returncode != 0
    assert collector.counts() == {}
    right = run_agent("once", "-c", str(_config(tmp_path, collector, log)))
    assert right.returncode == 0, right.stderr
    assert collector.counts() == dict(expected)


@pytest.mark.parametrize("collector_process", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
                         indirect=True)
def test_a_collector_restart_between_runs_loses_and_doubles_nothing(
    collector_process: CollectorProcess, tmp_path: Path
) -> None:
    collector = collector_process  # a process: the test kills it
    log = tmp_path / "access.log"
    expected = write_access_log(log, 1500, seed=11)
    config = _config(tmp_path, collector, log)
    assert run_agent("once", "-c", str(config)).returncode == 0
    collector.kill()
    more = write_access_log(log, 700, seed=12, append=True)
    collector.start()
    assert run_agent("once", "-c", str(config)).returncode == 0
    assert collector.counts() == dict(expected + more)


def test_several_real_agents_at_once_deliver_exact_counts(collector_any: CollectorThread, tmp_path: Path) -> None:
    from tests.helpers.agent import start_agent

    expected: Counter[str] = Counter()
    agents = []
    for number in range(3):
        home = tmp_path / f"agent-{number}"
        home.mkdir()
        log = home / "access.log"
        expected += write_access_log(log, 2500, seed=20 + number)  # overlapping address pools
        name = f"web-{number}"
        config = write_config(
            home / "agent.toml",
            url=collector_any.url,
            token=collector_any.add_token(name),
            state_dir=home / "state",
            sources=[str(log)],
            agent={"id": name},
            batching=SMALL_BATCHES,
        )
        agents.append(start_agent("once", "-c", str(config)))
    for process in agents:
        _, stderr = process.communicate(timeout=240)
        assert process.returncode == 0, stderr
    assert collector_any.counts() == dict(expected)
    stats = {item["agent"]: item for item in collector_any.get("/v1/agents").json()["items"]}
    assert set(stats) == {"web-0", "web-1", "web-2"}


def test_the_test_command_says_when_the_token_belongs_to_another_agent(collector, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.helpers.agent import run_agent, write_config

    log = tmp_path / "a.log"
    log.write_text("client 198.51.100.7\n")
    config = write_config(tmp_path / "agent.toml", url=collector.url, token=collector.token,
                          state_dir=tmp_path / "state", sources=[str(log)], agent={"id": "someone-else"})
    result = run_agent("test", "-c", str(config))
    assert result.returncode == 1
    assert "not for agent someone-else" in result.stdout
    good = write_config(tmp_path / "good.toml", url=collector.url, token=collector.token,
                        state_dir=tmp_path / "state", sources=[str(log)])
    result = run_agent("test", "-c", str(good))
    assert result.returncode == 0, result.stdout
    assert "token accepted" in result.stdout
    assert collector.counts() == {}  # the check stores nothing


def test_a_max_memory_ips_above_the_collectors_batch_limit_still_delivers_everything(
    collector: CollectorThread, tmp_path: Path
) -> None:
    """A batch of more records than the collector takes would be refused (400) at every retry:
    the agent never seals one, whatever `max_memory_ips` says."""
    addresses = [f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}" for n in range(1, 120_001)]
    (tmp_path / "a.log").write_text("".join(f"{ip} x\n" for ip in addresses))
    config = write_config(
        tmp_path / "agent.toml", url=collector.url, token=collector.token, state_dir=tmp_path / "state",
        sources=["a.log"],  # a short source: the batch stays under the collector's body limit
        batching={"max_memory_ips": 200_000, "force_upload_threshold": 200_000, "min_upload_batch": 200_000},
        server={"timeout": 120.0},
    )
    result = run_agent("once", "-c", str(config), timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert collector.counts() == dict.fromkeys(addresses, 1)


def test_a_batch_stored_but_unacknowledged_then_a_destroyed_queue_is_not_doubled_on_the_real_collector(
        collector_any: CollectorProcess, tmp_path: Path) -> None:
    """Hole 10's last window, end to end on both backends: the agent is killed after the collector
    stored its 3rd batch and before the answer was recorded, the queue database is then destroyed;
    `reset-state` asks the collector which bytes it stored and resumes past them."""
    log = tmp_path / "access.log"
    expected = write_access_log(log, 3000, seed=25, distinct=1500)
    config = write_config(tmp_path / "agent.toml", url=collector_any.url, token=collector_any.token,
                          state_dir=tmp_path / "state", sources=[str(log)], server={"upload_concurrency": 1},
                          batching={"min_upload_batch": 10, "force_upload_threshold": 100, "max_memory_ips": 200})
    killed = run_agent("once", "-c", str(config), env={"REMOTE_UPLOADER_CRASH_AT": "before_ack:3"})
    assert killed.returncode == -9, killed.stdout + killed.stderr
    (tmp_path / "state" / "queue.db").write_bytes(b"\0" * 4096)
    for suffix in ("-wal", "-shm"):
        (tmp_path / "state" / f"queue.db{suffix}").unlink(missing_ok=True)

    reset = run_agent("reset-state", "-c", str(config))
    assert reset.returncode == 0, reset.stdout + reset.stderr
    assert "they resume after it" in reset.stdout, reset.stdout
    assert run_agent("once", "-c", str(config)).returncode == 0
    assert Counter(collector_any.counts()) == expected
