"""Signals, acted on by a thread of their own rather than inside a Python signal handler.

A Python signal handler runs in the main thread, between two bytecodes of whatever it was doing.
The agent's main thread spends its idle time in `agent.stop.wait()`, which holds the lock of that
very Event for a few bytecodes at a time; a handler that calls `stop.set()` at that moment waits
for a lock its own thread holds, forever (a second signal runs the same handler and waits too).
Logging from a handler has the same hazard with the log handler's locks.

So the Python-level handler does nothing: the interpreter's C handler writes the signal number
to a pipe (`signal.set_wakeup_fd`), and a watcher thread reads it and calls the action, where
taking locks is as safe as anywhere else.

Until the watcher is open, a SIGTERM's default action would kill the process: a service manager
(or a test) that stops the agent during its start-up would see it die of the signal instead of
exiting 0. `hold_early()` is called first thing in the process, before the heavy imports: from
then on the signals are only written to the pipe, and the watcher that opens later adopts the
pipe and acts on what arrived meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Mapping
from types import FrameType, TracebackType

_END = 0  # not a signal number: written by close() to end the watcher thread
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# `forever` also holds SIGHUP (reload): its default action ends the process, and a reload sent while
# `forever` starts (a deploy that starts then reloads; generative finding F4) must not stop the service
# (a death by SIGHUP is a clean stop to systemd: no restart). Its watcher adopts it and reloads.
EARLY_SIGNALS = {"once": STOP_SIGNALS, "forever": (*STOP_SIGNALS, signal.SIGHUP)}


class _Held:
    """The pipe and dispositions set by hold_early(), until a SignalWatcher adopts them."""

    def __init__(self, signums: tuple[int, ...]) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.write_fd, False)
        self.previous_fd = signal.set_wakeup_fd(self.write_fd, warn_on_full_buffer=False)
        self.previous = {signum: signal.signal(signum, _ignore) for signum in signums}

    def release(self) -> None:
        """Put back what was there before; signals that arrived meanwhile are dropped."""
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self.previous_fd)
        os.close(self.write_fd)
        os.close(self.read_fd)


_held: _Held | None = None


def hold_early(signums: tuple[int, ...] = STOP_SIGNALS) -> None:
    """Keep `signums` from killing the process until a SignalWatcher acts on them (main thread only).

    Call it only where a watcher will be opened (`once`, `forever`), or call release_early() when
    none was: a held SIGTERM that nobody reads is a SIGTERM ignored.
    """
    global _held
    if _held is None:
        _held = _Held(signums)


def release_early() -> None:
    """Undo hold_early() if no watcher adopted it (the command ended before opening one)."""
    global _held
    held, _held = _held, None
    if held is not None:
        held.release()


def _ignore(signum: int, frame: FrameType | None) -> None:
    """Installed so that the C handler runs (and writes to the wakeup pipe); the work is elsewhere."""


class SignalWatcher:
    """While open, each of `actions`' signals calls its action in the watcher thread, in order.

    Must be opened in the main thread (only it can set signal handlers); close() puts back the
    handlers and wakeup fd that were there before.
    """

    def __init__(self, actions: Mapping[int, Callable[[int], None]]) -> None:
        global _held
        self.actions = dict(actions)
        held, _held = _held, None
        if held is not None:  # adopt the early pipe: the signals that arrived since are in it
            self._read_fd, self._write_fd = held.read_fd, held.write_fd
            self._previous_fd = held.previous_fd
            self._previous = {signum: signal.signal(signum, _ignore) for signum in self.actions}
            self._previous.update(held.previous)
        else:
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
