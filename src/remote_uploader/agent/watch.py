"""File events (Linux inotify) that wake `forever`'s reading loop: a write is read in milliseconds.

Events only *wake* the loop; they decide nothing. What a file is, where its content went and from
which offset it is read stay the rules of tail.py, applied by the same pass and the same
`growth()` steps that polling runs; so an event lost, merged or misread costs latency, never a line.
Polling stays: as the safety net (a pass every `read.poll_interval` whatever the events say), and
as the whole mechanism where events do not work (`read.watch = poll`, no inotify on this platform
or file system, NFS, the `fs.inotify.max_user_watches` limit reached).

One watch per *directory* (of every configured path or glob, and of every file followed): its
events cover the files in it, including the rotated names, a file created or renamed there, and a
truncation (`IN_MODIFY`). A directory watch says nothing of a file once it is deleted (a rotated
file we still hold open): the pass reads those. When the kernel's queue of events overflows
(`IN_Q_OVERFLOW`, past `fs.inotify.max_queued_events`), which files changed is unknown: the loop
makes a full pass, which reads everything from the offsets, so nothing is lost.

Why a few lines of ctypes over the three system calls rather than a package: the agent installs
on servers with only its own dependencies, the packages that exist (inotify-simple, for one) are
thin ctypes wrappers of the same calls, and the event format is a fixed kernel ABI.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import select
import struct
import sys
import threading
from collections.abc import Iterable

log = logging.getLogger(__name__)

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

# Writes and truncations (IN_MODIFY), and every way a name appears or goes in the directory.
DIR_MASK = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
            | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)
# Events after which the set of files may have changed: a pass (not only the growth of open files).
NAME_EVENTS = IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ATTRIB
EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then len bytes of name


class WatchUnavailable(OSError):
    """inotify cannot be used here (another platform, no libc symbol, a limit): poll instead."""


def _libc() -> ctypes.CDLL:
    if not sys.platform.startswith("linux"):
        raise WatchUnavailable(errno.ENOSYS, "inotify is Linux only")
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    for name in ("inotify_init1", "inotify_add_watch", "inotify_rm_watch"):
        if not hasattr(libc, name):
            raise WatchUnavailable(errno.ENOSYS, f"libc has no {name}")
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    return libc


class Watcher:
    """Directory watches on one inotify descriptor, read by a thread that sets `wake` on events.

    The reading loop calls `watch(dirs)` after each pass and `take()` when woken: which paths had
    events since the last take (written to; created, renamed or deleted), and whether only a full
    pass can tell (an overflow, a watched directory gone). The loop ignores paths no source cares
    about (a directory such as /var/log holds other logs). `complete` is False while some
    directory could not be watched (the limit of watches, a file system without events): the
    loop then keeps its polling rate for the growth of open files.
    """

    def __init__(self, wake: threading.Event) -> None:
        self.wake = wake
        self._libc = _libc()
        fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            code = ctypes.get_errno()
            raise WatchUnavailable(code, f"inotify_init1: {os.strerror(code)}")
        self.fd: int = fd
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._lock = threading.Lock()
        self._wds: dict[str, int] = {}  # directory -> watch descriptor
        self._dirs: dict[int, str] = {}
        self._changed: set[str] = set()  # paths written to or truncated
        self._named: set[str] = set()  # paths created, renamed (from or to), deleted, chmod-ed
        self._rescan = False
        self.complete = True
        self._refused: set[str] = set()  # said once each
        self.overflows = 0
        self._thread: threading.Thread | None = None

    # --- the reading loop's side ----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="watch", daemon=True)
        self._thread.start()

    def watch(self, dirs: Iterable[str]) -> None:
        """Watch exactly `dirs` (directories; those that do not exist are skipped, the pass finds
        them later). A directory refused by the kernel makes the watch set incomplete."""
        wanted = {os.path.abspath(d) for d in dirs}
        complete = True
        with self._lock:
            for directory in [d for d in self._wds if d not in wanted]:
                wd = self._wds.pop(directory)
                self._dirs.pop(wd, None)
                self._libc.inotify_rm_watch(self.fd, wd)
            for directory in wanted - set(self._wds):
                wd = self._libc.inotify_add_watch(self.fd, os.fsencode(directory), DIR_MASK)
                if wd >= 0:
                    self._wds[directory] = wd
                    self._dirs[wd] = directory
                    continue
                code = ctypes.get_errno()
                if code in (errno.ENOENT, errno.ENOTDIR):
                    continue  # not there (yet): a glob's directory created later is found by a pass
                complete = False
                if directory not in self._refused:
                    self._refused.add(directory)
                    hint = " (raise fs.inotify.max_user_watches)" if code == errno.ENOSPC else ""
                    log.warning("event=watch_refused path=%s reason=%r action=polling%s", directory,
                                os.strerror(code), hint)
        self.complete = complete

    def take(self) -> tuple[bool, set[str], set[str]]:
        """Since the last take: whether only a full pass can tell what changed (an overflow, a
        watched directory gone), the paths written to, the paths that appeared or went. Reset."""
        with self._lock:
            taken = self._rescan, self._changed, self._named
            self._rescan, self._changed, self._named = False, set(), set()
        return taken

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        for fd in (self.fd, self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    # --- the watch thread ---------------------------------------------------------------------------------

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if self._stop_r in ready:
                return
            if self.read_events():
                self.wake.set()

    def read_events(self) -> bool:
        """Read every queued event (without blocking); True if any mattered. Public so that a test
        can fill the kernel's queue before the thread reads it."""
        mattered = False
        while True:
            try:
                data = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                return mattered
            except OSError as exc:
                log.warning("event=watch_read_failed reason=%r action=rescan", str(exc))
                with self._lock:
                    self._rescan = True
                return True
            mattered = self._parse(data) or mattered

    def _parse(self, data: bytes) -> bool:
        mattered = False
        at = 0
        with self._lock:
            while at + EVENT.size <= len(data):
                wd, mask, _cookie, length = EVENT.unpack_from(data, at)
                name = data[at + EVENT.size: at + EVENT.size + length].rstrip(b"\0")
                at += EVENT.size + length
                if mask & IN_Q_OVERFLOW:
                    self.overflows += 1
                    log.info("event=watch_overflow action=rescan")
                    self._rescan = mattered = True
                    continue
                directory = self._dirs.get(wd)
                if directory is None:
                    continue  # a watch removed meanwhile
                if mask & IN_IGNORED:
                    self._wds.pop(directory, None)
                    self._dirs.pop(wd, None)
                    self._rescan = mattered = True  # the directory went away: the pass decides
                    continue
                if mask & (IN_DELETE_SELF | IN_MOVE_SELF):
                    self._rescan = mattered = True
                    continue
                if not name:
                    continue
                path = os.path.join(directory, os.fsdecode(name))
                (self._named if mask & NAME_EVENTS else self._changed).add(path)
                mattered = True
        return mattered
