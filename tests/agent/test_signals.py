"""A stop signal is acted on in a thread of its own, so it cannot deadlock the thread it interrupts."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.helpers.agent import kill, start_agent, wait_for, write_access_log, write_config

# The main thread holds the lock of the Event that the stop action sets, as it does for a few
# bytecodes of every `agent.stop.wait()`, when the signal arrives. A handler that set the Event
# itself would wait for that lock forever; the watcher thread waits only until it is released.
HOLDS_THE_LOCK_WHEN_SIGNALLED = textwrap.dedent("""
    import os, signal, threading
    from remote_uploader.agent.signals import SignalWatcher

    stop = threading.Event()
    with SignalWatcher({signal.SIGTERM: lambda signum: stop.set()}):
        with stop._cond:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):
                pass  # bytecodes: a Python-level handler would run here, holding the lock
        print("stopped" if stop.wait(10) else "not stopped", flush=True)
""")


def test_a_signal_arriving_while_the_stop_event_is_locked_still_stops() -> None:
    done = subprocess.run([sys.executable, "-c", HOLDS_THE_LOCK_WHEN_SIGNALLED], capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "stopped"), done.stderr


def test_the_previous_handlers_are_back_after_close() -> None:
    script = textwrap.dedent("""
        import signal
        from remote_uploader.agent.signals import SignalWatcher

        before = signal.getsignal(signal.SIGTERM), signal.set_wakeup_fd(-1)
        signal.set_wakeup_fd(before[1])
        with SignalWatcher({signal.SIGTERM: print}):
            assert signal.getsignal(signal.SIGTERM) is not before[0]
        print(signal.getsignal(signal.SIGTERM) is before[0], signal.set_wakeup_fd(-1) == before[1])
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["True", "True"], done.stderr


def test_a_sigterm_held_early_is_acted_on_by_the_watcher_that_opens_later() -> None:
    """Start-up (imports, the queue database) runs before the watcher opens: a SIGTERM meanwhile
    must not kill the process (its default action) but stop it once the watcher is there."""
    script = textwrap.dedent("""
        import os, signal, threading
        from remote_uploader.agent.signals import SignalWatcher, hold_early

        hold_early()
        os.kill(os.getpid(), signal.SIGTERM)  # during start-up: the process lives on
        stop = threading.Event()
        with SignalWatcher({signal.SIGTERM: lambda signum: stop.set()}):
            stopped = stop.wait(30)
        print(stopped, signal.getsignal(signal.SIGTERM) is signal.SIG_DFL,
              signal.set_wakeup_fd(-1) == -1)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.split()) == (0, ["True", "True", "True"]), done.stderr


def test_release_early_gives_back_the_default_action_when_no_watcher_opened() -> None:
    script = textwrap.dedent("""
        import os, signal
        from remote_uploader.agent.signals import hold_early, release_early

        hold_early()
        release_early()
        print("released", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        print("still alive", flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.split()) == (-15, ["released"]), done.stderr


def _catches(pid: int, signum: int) -> bool:
    """Whether the process has a handler for `signum` (its SigCgt mask in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(mask & (1 << (signum - 1)))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to see when SIGTERM is caught")
def test_sigterm_as_soon_as_forever_catches_it_stops_it_cleanly(tmp_path: Path, receiver) -> None:  # type: ignore[no-untyped-def]
    """The earliest SIGTERM the agent can tell apart from its default action (killed: -15) comes
    while it is still importing and opening its queue: it must still mean "stop, exit 0"."""
    log = tmp_path / "access.log"
    write_access_log(log, 10)
    config = write_config(tmp_path / "agent.toml", url=receiver.url, token=receiver.token,
                          state_dir=tmp_path / "state", sources=[str(log)])
    agent = start_agent("forever", "-c", str(config))
    try:
        assert wait_for(lambda: _catches(agent.pid, signal.SIGTERM) or agent.poll() is not None, timeout=60)
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=60)
    finally:
        kill(agent)
    assert agent.returncode == 0, stderr


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to see when SIGTERM is caught")
def test_a_reload_during_forevers_start_up_does_not_stop_it(tmp_path: Path, receiver) -> None:  # type: ignore[no-untyped-def]
    """Generative finding F4: a SIGHUP (reload) while `forever` was still importing killed it (its
    default action), and a death by SIGHUP is a clean stop to systemd: no restart. It is held from
    the same early moment as SIGTERM, and its watcher reloads once open."""
    log = tmp_path / "access.log"
    write_access_log(log, 10)
    config = write_config(tmp_path / "agent.toml", url=receiver.url, token=receiver.token,
                          state_dir=tmp_path / "state", sources=[str(log)])
    agent = start_agent("forever", "-c", str(config))
    try:
        assert wait_for(lambda: _catches(agent.pid, signal.SIGTERM) or agent.poll() is not None, timeout=60,
                        interval=0.001)
        # From the earliest moment a stop is caught until the agent has delivered, a reload every 10 ms:
        # whatever start-up is doing when one lands, none may kill it.
        while agent.poll() is None and receiver.total() < 20:
            agent.send_signal(signal.SIGHUP)
            time.sleep(0.01)
        assert agent.poll() is None, f"forever died of the reload: {agent.returncode}"
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=60)
    finally:
        kill(agent)
    assert agent.returncode == 0, stderr
