"""Signals, acted on by a thread of their own rather than inside a Python signal handler.

A Python signal handler runs in the main thread, between two bytecodes of whatever it was doing.
The agent's main thread spends its idle time in `agent.stop.wait()`, which holds the lock of that
very Event for a few bytecodes at a time; a handler that calls `stop.set()` at that moment waits
for a lock its own thread holds, forever (a second signal runs the same handler and waits too).
Logging from a handler has the same hazard with the log handler's locks.

So the Python-level handler does nothing: the interpreter's C handler writes the signal number
to a pipe (`signal.set_wakeup_fd`), and a watcher thread reads it and calls the action, where
taking locks is as safe as anywhere else.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Mapping
from types import FrameType, TracebackType

_END = 0  # not a signal number: written by close() to end the watcher thread


def _ignore(signum: int, frame: FrameType | None) -> None:
    """Installed so that the C handler runs (and writes to the wakeup pipe); the work is elsewhere."""


class SignalWatcher:
    """While open, each of `actions`' signals calls its action in the watcher thread, in order.

    Must be opened in the main thread (only it can set signal handlers); close() puts back the
    handlers and wakeup fd that were there before.
    """

    def __init__(self, actions: Mapping[int, Callable[[int], None]]) -> None:
        self.actions = dict(actions)
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)  # set_wakeup_fd requires it; a full pipe drops bytes
        self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        self._previous = {signum: signal.signal(signum, _ignore) for signum in self.actions}
        self._thread = threading.Thread(target=self._watch, name="signals", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while data := os.read(self._read_fd, 64):
            for signum in data:
                if signum == _END:
                    return
                action = self.actions.get(signum)
                if action is not None:
                    action(signum)

    def close(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._previous_fd)
        with contextlib.suppress(OSError):
            os.write(self._write_fd, bytes([_END]))
        self._thread.join(timeout=5.0)
        os.close(self._write_fd)
        if not self._thread.is_alive():
            os.close(self._read_fd)

    def __enter__(self) -> SignalWatcher:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
