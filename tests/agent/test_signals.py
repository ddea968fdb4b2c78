"""A stop signal is acted on in a thread of its own, so it cannot deadlock the thread it interrupts."""

from __future__ import annotations

import subprocess
import sys
import textwrap

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
