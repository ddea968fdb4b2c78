"""`forever`, the basics: appended lines arrive, nothing twice across polls, SIGTERM exits 0."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.helpers.agent import start_agent, write_access_log, write_config


def test_appended_lines_arrive_once_across_many_polls_and_sigterm_exits_0(tmp_path: Path, receiver) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "access.log"
    expected = write_access_log(log, 300, seed=1)
    config = write_config(tmp_path / "agent.toml", url=receiver.url, token=receiver.token,
                          state_dir=tmp_path / "state", sources=[str(log)],
                          read={"poll_interval": 0.05}, batching={"max_batch_age": 2.0})
    agent = start_agent("forever", "-c", str(config))
    try:
        assert receiver.wait_for_total(sum(expected.values()), timeout=30)
        for seed in range(2, 6):  # several polls happen while each batch is still in memory
            expected += write_access_log(log, 50, seed=seed, append=True)
        assert receiver.wait_for_total(sum(expected.values()), timeout=30)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.communicate(timeout=30)
    assert agent.returncode == 0
    assert receiver.counts() == dict(expected)


def test_lines_appended_to_a_followed_file_are_read_between_two_passes(tmp_path: Path, receiver) -> None:  # type: ignore[no-untyped-def]
    """Passes every 60 s: only the look at the open files' sizes in between can bring these lines."""
    log = tmp_path / "access.log"
    expected = write_access_log(log, 10, seed=1)
    config = write_config(tmp_path / "agent.toml", url=receiver.url, token=receiver.token,
                          state_dir=tmp_path / "state", sources=[str(log)], read={"poll_interval": 60.0})
    agent = start_agent("forever", "-c", str(config))
    try:
        assert receiver.wait_for_total(sum(expected.values()), timeout=30)  # the first pass
        for seed in range(2, 5):
            expected += write_access_log(log, 5, seed=seed, append=True)
            assert receiver.wait_for_total(sum(expected.values()), timeout=30)  # well before the next pass
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.communicate(timeout=30)
    assert agent.returncode == 0
    assert receiver.counts() == dict(expected)
