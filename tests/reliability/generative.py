"""The generative checker (issue 9): random schedules of writes, rotations, kills and faults, driven
through the real agent and the real collector, and checked against a model of what was written.

Hand-written scenarios find what their authors imagined; this invents the interleavings. A
*schedule* is a seed, a glob and a list of operations (appends, rotations of every style, SIGKILL
and restart of `forever`, `once` killed at random or at a crash point, the collector killed,
faults between the agent and the collector, clock steps, agent id and token changes, a full
disk). It runs against real processes: the agent (`python -m remote_uploader`), the collector
(`remote_uploader.collector.cli serve` on SQLite) and, between them, the fault relay
(`tests/helpers/faultproxy.py`). After the last operation the checker stops making trouble (faults
cleared, collector up, disk space back, unfinished lines finished), lets `forever` drain, stops it
with SIGTERM and compares the collector's counts, address by address, with the model: every complete
address exactly once. The one tolerated loss is copytruncate's own window (lines written between the
copy and the truncate, in neither file unless the agent read them in time, docs/forever.md); those
lines use addresses of their own (198.18.0.0/16) so a loss there can be told apart and is *reported*
per schedule, never folded into the clean figures.

Why our own seeded scheduler and not hypothesis' RuleBasedStateMachine: the system under test is a
set of processes with timing of their own, so one schedule does not always fail the same way, and
hypothesis' shrinker assumes a deterministic test (it reports "Flaky" and stops where we need it to
keep going). A schedule here is plain data: the op list is fixed by the seed, each op carries its own
seed for its content, and every op is valid in any state (a rotation of a missing file, a start of a
running agent are no-ops), so any sub-list of a schedule is a schedule. That makes replay exact (the
same ops, the same bytes) and shrinking simple: delta debugging (ddmin) over the op list, each
candidate run against fresh processes, bounded in time. A failing schedule is kept as JSON under
tests/reliability/schedules/ and replayed by tests/reliability/test_generative.py.

Operation families (each one switch, `--families`), and the known hole of issue 9 each hit on a main
without its fix: append (always on), partial (5), odd (CRLF, NUL, long lines), rename, copytruncate,
truncate, delete, compress, reuse (inode reuse), shared (1: files with a common header or identical
content), kill (forever SIGKILL/SIGTERM/restart), once (crash points and random kills of `once`),
collector (SIGKILL and restart), faults (5xx, 429, resets before and after storing), limit413 (6: 413
with limits that change between attempts), html (3: a non-collector 200), clock (4), identity (9),
diskfull (8). Truncate, delete, reuse and compress destroy the bytes the agent has not read yet; the
documented rules make that a loss by design, so these ops wait (a few seconds) until the agent's
durable offset reaches the end of the file and are skipped (and counted as skipped) if it does not.

    python -m tests.reliability.generative --minutes 10            long run, summary at the end
    python -m tests.reliability.generative --replay FILE.json      one kept schedule
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from remote_uploader.agent.source import fingerprint
from tests.helpers.agent import random_ipv4, random_ipv6, write_config
from tests.helpers.collector_fixtures import CollectorProcess
from tests.helpers.faultproxy import FaultProxy
from tests.reliability.harness import AgentProcess, fill, small_filesystem, tmpfs_unavailable_reason

FAMILIES: dict[str, str] = {
    "append": "appends of whole lines (always on)",
    "partial": "a line written in two pieces, cut anywhere (half the time inside its address), the rest later",
    "odd": "CRLF line ends, NUL bytes, lines of 70 KB",
    "rename": "rename + create rotation (logrotate's default)",
    "copytruncate": "copy, then truncate; sometimes lines written between the two (the window)",
    "truncate": "truncate in place once the agent has read the file",
    "delete": "delete once read; the next write creates a new file",
    "compress": "rename + create, and the rotated file gzipped once read",
    "reuse": "same inode, new content longer than the old: truncate and rewrite at once",
    "shared": "files starting with the same header line; identical lines written to two files",
    "kill": "forever SIGKILLed, stopped with SIGTERM, restarted",
    "once": "once, killed at a crash point or at a random moment",
    "collector": "the collector SIGKILLed and restarted",
    "faults": "500, 503, 429 with Retry-After, resets before and after the collector stored",
    "limit413": "413 for bodies over a limit that changes between attempts, with resets after storing",
    "html": "a 200 that is not a collector's (an HTML page)",
    "clock": "the agent's wall clock stepped (REMOTE_UPLOADER_CLOCK_FILE)",
    "identity": "agent id and token changed with batches queued",
    "diskfull": "the state directory's disk full, then freed",
}
# The issue-9 holes each family runs into on a main that does not have their fix yet.
KNOWN_HOLES = {"shared": 1, "reuse": 2, "html": 3, "clock": 4, "partial": 5, "limit413": 6, "identity": 9,
               "diskfull": 8}
# What passes on main today, and so runs in the test suite (widened as the fixes are merged).
SUITE_FAMILIES = ("append", "partial", "odd", "rename", "copytruncate", "truncate", "delete", "compress", "shared",
                  "kill", "once", "collector", "faults", "clock", "html", "limit413", "identity", "diskfull")

PLAIN_FILES = ("a.log", "b.log")
_SHORT = b"#Version: 1.0\n#Fields: date time s-ip cs-method cs-uri-stem sc-status\n"
_LONG = _SHORT + b"".join(b"#Comment: " + bytes([65 + i]) * 100 + b"\n" for i in range(11))  # over 1 KiB
HEADERS = {"h1.log": _SHORT, "h2.log": _SHORT, "h3.log": _LONG}  # what each file starts with, every time
HEADER_FILES = tuple(HEADERS)
WINDOW_PREFIX = "198.18."  # addresses written inside a copytruncate window, and nowhere else
CRASH_POINTS = ("after_seal", "after_post", "before_ack", "after_ack")
FAULT_KINDS = ("status_500", "status_503", "status_429", "reset_before", "reset_after")
DRAIN_TIMEOUT = 30.0
STALL_TIMEOUT = 6.0  # seconds without a new count or a queued batch before the drain gives up waiting
CATCH_UP_TIMEOUT = 5.0
ONCE_TIMEOUT = 120.0  # `once` gives up after max_retry_time (3 s) on a full disk or an unreachable collector


# --- schedules -----------------------------------------------------------------------------------


@dataclass
class Schedule:
    """One run: plain data, so it can be stored, replayed and shrunk."""

    seed: int
    glob: str  # "*.log" or "*.log*" (rotated names match too)
    families: list[str]
    ops: list[dict[str, Any]]
    note: str = ""
    xfail: str = ""  # a kept schedule that still fails on main: the reason (hole, branch)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Schedule:
        doc = json.loads(text)
        return cls(**{k: doc[k] for k in ("seed", "glob", "families", "ops")},
                   note=doc.get("note", ""), xfail=doc.get("xfail", ""))


def generate(seed: int, families: Sequence[str], n_ops: int) -> Schedule:
    """A schedule of `n_ops` operations drawn from `families`, fixed by `seed`.

    The generator keeps a rough idea of the state (is `forever` running, is the collector up) only
    to make sensible schedules likely; every op is still valid in any state.
    """
    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown families {sorted(unknown)}; known: {', '.join(FAMILIES)}")
    fams = set(families) | {"append"}
    rng = random.Random(seed)
    files = list(PLAIN_FILES) + (list(HEADER_FILES) if "shared" in fams else [])
    rotations = [s for s in ("rename", "copytruncate", "truncate", "delete", "compress", "reuse") if s in fams]
    ops: list[dict[str, Any]] = [{"op": "start"}]
    if "shared" in fams:
        ops += [{"op": "header", "file": name} for name in HEADER_FILES]
    up = {"agent": True, "collector": True}  # what the generator believes, to make sensible schedules likely

    def op_seed() -> int:
        return rng.randrange(1 << 30)

    while len(ops) < n_ops:
        choices: list[tuple[float, Callable[[], Any]]] = [
            (6, lambda: {"op": "append", "file": rng.choice(files), "seed": op_seed(), "lines": rng.randint(1, 60),
                         "style": rng.choice(["plain"] + (["crlf", "nul", "long"] if "odd" in fams else []))}),
            (3, lambda: {"op": "sleep", "s": round(rng.uniform(0.05, 1.2), 2)}),
        ]
        if "partial" in fams:
            # Half the cuts fall inside the last line's first address: the case that must not count early.
            choices += [(2, lambda: {"op": "append", "file": rng.choice(files), "seed": op_seed(),
                                     "lines": rng.randint(1, 20), "style": "partial",
                                     "cut": round(rng.random(), 3) if rng.random() < 0.5 else -rng.randint(1, 15)}),
                        (1, lambda: {"op": "finish", "file": rng.choice(files)})]
        if rotations:
            def rotation() -> dict[str, Any]:
                style = rng.choice(rotations)
                window = rng.choice([0, 0, rng.randint(1, 8)]) if style == "copytruncate" else 0
                return {"op": "rotate", "file": rng.choice(files), "style": style, "window": window,
                        "seed": op_seed()}
            choices.append((2.5, rotation))
        if "shared" in fams:
            choices += [(1, lambda: {"op": "twin", "files": rng.sample(files, 2), "seed": op_seed(),
                                     "lines": rng.randint(1, 30)}),
                        (0.5, lambda: {"op": "header", "file": rng.choice(HEADER_FILES)})]
        if "kill" in fams:
            choices.append((2, lambda: rng.choice([
                {"op": "restart", "pause": round(rng.uniform(0, 0.8), 2)},
                {"op": "kill"} if up["agent"] else {"op": "start"},
                {"op": "term"} if up["agent"] else {"op": "start"}])))
        if "once" in fams:
            choices.append((1.5, lambda: {"op": "once", "crash": rng.choice(
                [None, *[f"{p}:{rng.randint(1, 3)}" for p in CRASH_POINTS]]),
                "kill_after": rng.choice([None, round(rng.uniform(0.3, 2.0), 2)])}))
        if "collector" in fams:
            choices.append((1, lambda: {"op": "collector_restart", "pause": round(rng.uniform(0, 1.0), 2)}
                            if rng.random() < 0.5 else {"op": "collector_kill"} if up["collector"]
                            else {"op": "collector_start"}))
        if "faults" in fams:
            choices.append((2, lambda: {"op": "fault", "kind": rng.choice(FAULT_KINDS), "n": rng.randint(1, 4)}))
        if "limit413" in fams:
            choices += [(1, lambda: {"op": "limit", "bytes": rng.choice([None, 700, 1200, 2500, 6000])}),
                        (1, lambda: {"op": "fault", "kind": rng.choice(["reset_after", "status_413"]),
                                     "n": rng.randint(1, 3)}),
                        # stored but not acknowledged, then the replay (and the other upload) refused as too large
                        (1, lambda: [{"op": "fault", "kind": "reset_after", "n": 1},
                                     {"op": "fault", "kind": "status_413", "n": 2}])]
        if "html" in fams:
            choices.append((0.7, lambda: {"op": "fault", "kind": "html_200", "n": rng.randint(1, 3)}))
        if "clock" in fams:
            choices += [(1, lambda: {"op": "clock", "offset": rng.choice(
                [0.0, -0.5, -2.0, -30.0, -3600.0, 0.7, 45.0, 7200.0, -86400.0, 172800.0])}),
                        # a step back while a backlog of megabytes is being read: inside an open batch
                        (0.7, lambda: [{"op": "append", "file": rng.choice(files), "seed": op_seed(),
                                        "lines": rng.randint(40, 80), "style": "long"},
                                       {"op": "sleep", "s": round(rng.uniform(0.0, 0.3), 2)},
                                       {"op": "clock", "offset": -rng.choice([0.5, 3.0, 600.0, 86400.0])}])]
        if "identity" in fams:  # changed while batches are queued (the collector refusing them for a while)
            choices.append((0.6, lambda: [
                {"op": "fault", "kind": "status_503", "n": rng.randint(2, 8)},
                {"op": "append", "file": rng.choice(files), "seed": op_seed(), "lines": rng.randint(5, 40),
                 "style": "plain"},
                {"op": "sleep", "s": round(rng.uniform(0.2, 0.8), 2)},
                {"op": "identity", "change": rng.choice(["id", "token"]), "name": f"agent-{rng.randrange(1000)}"}]))
        if "diskfull" in fams:
            choices.append((0.8, lambda: {"op": "disk", "full": rng.random() < 0.6}))
        weights = [w for w, _ in choices]
        made = rng.choices([make for _, make in choices], weights)[0]()
        for op in made if isinstance(made, list) else [made]:
            if op["op"] in ("kill", "term", "start", "restart"):
                up["agent"] = op["op"] in ("start", "restart")
            elif op["op"].startswith("collector_"):
                up["collector"] = op["op"] != "collector_kill"
            ops.append(op)
    glob = rng.choice(["*.log", "*.log*"])
    return Schedule(seed, glob, sorted(fams), ops)


# --- the model of what was written ---------------------------------------------------------------


def make_lines(seed: int, n: int, style: str, pool: Sequence[str]) -> tuple[list[bytes], Counter[str]]:
    """`n` log lines in `style` and the exact addresses in them (each line holds two)."""
    rng = random.Random(seed)
    counts: Counter[str] = Counter()
    lines = []
    for k in range(n):
        client, hop = rng.choice(pool), rng.choice(pool)
        counts[client] += 1
        counts[hop] += 1
        path = f"/p/{seed % 997}/{k}"
        if style == "nul":
            path = path + "\0x\0"
        line = f'{client} - - [02/Dec/2026:12:00:{k % 60:02d} +0000] "GET {path} HTTP/1.1" 200 {k} "-" "ua" "{hop}"'
        if style == "long":
            line = line + " " + "q=" + "a" * rng.randint(20_000, 70_000)
        data = line.encode() + (b"\r\n" if style == "crlf" else b"\n")
        if style == "nul" and k == 0:
            data = b"\0" * rng.randint(1, 64) + data  # a writer's crash left NULs before the line
        lines.append(data)
    return lines, counts


def address_pool(seed: int, n: int = 250) -> list[str]:
    rng = random.Random(seed)
    pool = {random_ipv6(rng) if rng.random() < 0.15 else random_ipv4(rng) for _ in range(n)}
    return sorted(ip for ip in pool if not ip.startswith(WINDOW_PREFIX))


def window_pool(seed: int) -> list[str]:
    rng = random.Random(seed)
    return sorted({f"{WINDOW_PREFIX}{rng.randrange(256)}.{rng.randint(1, 254)}" for _ in range(40)})


@dataclass
class Result:
    """What one schedule did and what the collector holds at the end."""

    seed: int
    ops: int
    op_kinds: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    expected: int = 0
    lost: int = 0
    doubled: int = 0
    window_written: int = 0
    window_lost: int = 0
    anomalies: list[str] = field(default_factory=list)
    worst: list[tuple[str, int, int]] = field(default_factory=list)  # (ip, expected, counted)
    queued_left: int = 0
    dead_letters: int = 0
    seconds: float = 0.0
    workdir: str = ""

    @property
    def failed(self) -> bool:
        return bool(self.lost or self.doubled or self.anomalies)

    def line(self) -> str:
        return (f"seed={self.seed} ops={self.ops} expected={self.expected} lost={self.lost} "
                f"doubled={self.doubled} window_lost={self.window_lost}/{self.window_written} "
                f"queued_left={self.queued_left} dead_letters={self.dead_letters} "
                f"anomalies={self.anomalies} worst={self.worst[:5]} ({self.seconds:.1f} s)")


def judge(expected: Counter[str], window: Counter[str], got: dict[str, int], result: Result) -> None:
    """Fill lost/doubled/window figures: window addresses may fall short (tolerated, reported), never
    exceed; every other address must match exactly; an address nobody wrote is doubled."""
    worst = []
    for ip in set(expected) | set(window) | set(got):
        want, have = expected.get(ip, 0), got.get(ip, 0)
        if ip in window:
            short = max(0, window[ip] - have)
            result.window_lost += short
            extra = max(0, have - window[ip])
        else:
            short, extra = max(0, want - have), max(0, have - want)
            result.lost += short
        result.doubled += extra
        if (short and ip not in window) or extra:
            worst.append((ip, window.get(ip, want), have))
    result.window_written = sum(window.values())
    result.expected = sum(expected.values())
    result.worst = sorted(worst, key=lambda item: -abs(item[1] - item[2]))[:20]


def _catches(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler for `signum` (its SigCgt mask in /proc; False if gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(mask & (1 << (signum - 1)))


# --- running one schedule ------------------------------------------------------------------------


class World:
    """The processes, files and model of one schedule; `run()` executes it and returns the Result."""

    def __init__(self, workdir: Path, schedule: Schedule, log: Callable[[str], None] = lambda _: None) -> None:
        self.dir = workdir
        self.schedule = schedule
        self.say = log
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.state = workdir / "state"
        self.clock = workdir / "clock"
        self.clock.write_text("0.0\n")
        self.pool = address_pool(schedule.seed)
        self.wpool = window_pool(schedule.seed)
        self.expected: Counter[str] = Counter()
        self.window: Counter[str] = Counter()
        self.pending: dict[str, bytes] = {}  # file name -> the rest of its unfinished line
        self.result = Result(schedule.seed, len(schedule.ops), workdir=str(workdir))
        self.agent_id = "test-agent"
        self.forever_on = False
        self.disk_full: Path | None = None
        self.collector = CollectorProcess(workdir, "sqlite://" + str(workdir / "collector.db"))
        self.token = self.collector.token
        self.reader = self.collector.add_token("generative-checker", read_only=True)  # survives token changes
        self.proxy: FaultProxy | None = None
        self.config = workdir / "agent.toml"
        self.forever = AgentProcess(workdir, "forever", "-c", str(self.config), env=self.env())

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"REMOTE_UPLOADER_CLOCK_FILE": str(self.clock), **(extra or {})}

    def write_config(self) -> None:
        assert self.proxy is not None
        write_config(self.config, url=self.proxy.url, token=self.token, state_dir=self.state,
                     sources=[str(self.logs / self.schedule.glob)],
                     agent={"id": self.agent_id, "workers": 2},
                     server={"max_retry_time": 3.0, "timeout": 5.0, "retry_after_cap": 1.0},
                     batching={"min_upload_batch": 20, "force_upload_threshold": 150, "max_memory_ips": 300,
                               "max_batch_age": 0.2},
                     read={"block_size": "16KiB", "poll_interval": 0.1, "partial_line_idle": 0.5,
                           "rotate_grace": 0.5},
                     shutdown={"drain_timeout": 10.0})

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        mounted: contextlib.AbstractContextManager[Path] = contextlib.nullcontext(self.state)
        if "diskfull" in self.schedule.families:
            reason = tmpfs_unavailable_reason()
            if reason is None:
                mounted = small_filesystem(self.state, "6m")
            else:  # reported in the summary's skipped line, not a failure of the agent
                self.result.skipped[f"diskfull ({reason})"] += 1
        with mounted:
            self.collector.start()
            self.proxy = FaultProxy(self.collector.port)
            self.write_config()
            try:
                yield
            finally:
                with contextlib.suppress(Exception):
                    self.forever.kill()
                self.proxy.close()
                self.collector.stop()

    def run(self) -> Result:
        started = time.monotonic()
        with self.running():
            self.first_look()
            for index, op in enumerate(self.schedule.ops):
                self.result.op_kinds[op["op"] if op["op"] != "rotate" else f"rotate_{op['style']}"] += 1
                began = time.monotonic()
                getattr(self, "op_" + op["op"])(**{k: v for k, v in op.items() if k != "op"})
                self.say(f"  op {index} {op} {time.monotonic() - began:.2f} s")
                self.check_forever(f"after op {index} {op}")
            self.drain()
        self.result.seconds = time.monotonic() - started
        return self.result

    # -- the agent --------------------------------------------------------------------------------

    def first_look(self) -> None:
        """Start `forever` and wait until it has looked at the files once (its `tail_last_seen` is on disk).

        By design, files rotated away before the agent's very first look are history, not read
        (docs/forever.md); every op comes after this, so everything the schedule writes is expected.
        """
        self.op_start()
        deadline = time.monotonic() + 60
        while self.kv("tail_last_seen") is None:
            if time.monotonic() > deadline:
                self.result.anomalies.append("forever did not look at its files within 60 s of its start")
                return
            self.check_forever("before the first look")
            time.sleep(0.1)

    def check_forever(self, where: str) -> None:
        """`forever` that should be running and is not exited on its own: a finding (then restarted)."""
        if self.forever_on and not self.forever.alive():
            assert self.forever.proc is not None
            code = self.forever.proc.returncode
            self.result.anomalies.append(f"forever exited with {code} by itself ({where}): "
                                         + self.forever.stderr()[-300:].replace("\n", " | "))
            self.forever.start()

    def op_start(self) -> None:
        if not self.forever.alive():
            self.forever.start()
        self.forever_on = True

    def op_kill(self) -> None:
        self.forever.kill()
        self.forever_on = False

    def op_term(self) -> None:
        self.forever_on = False
        if self.forever.alive():
            code = self.forever.stop(timeout=60)
            if code == -signal.SIGTERM:  # it had not set up its signal handling yet: a plain kill
                self.result.op_kinds["term_before_ready"] += 1
            elif code != 0:
                self.result.anomalies.append(f"forever exited {code} after SIGTERM")

    def op_restart(self, pause: float) -> None:
        self.forever.kill()
        time.sleep(pause)
        self.forever.start()
        self.forever_on = True

    def op_once(self, crash: str | None, kill_after: float | None) -> None:
        """`once` to its end (or killed). On a state disk that stays full it must end too: it waits for
        space only as long as its retry budget (`server.max_retry_time`, 3 s here), then exits 3 with
        everything safe (docs/reliability.md, "Full disk"); a `once` still running after ONCE_TIMEOUT
        is a finding (an anomaly, killed), not a crash of the checker."""
        was_on = self.forever_on
        self.op_term()
        env = self.env({"REMOTE_UPLOADER_CRASH_AT": crash} if crash else None)
        if kill_after is None:
            once = AgentProcess(self.dir, "once", "-c", str(self.config), env=env).start()
            assert once.proc is not None
            try:
                code = once.proc.wait(timeout=ONCE_TIMEOUT)
            except subprocess.TimeoutExpired:
                once.kill()
                self.result.anomalies.append(f"once still running after {ONCE_TIMEOUT:.0f} s (crash={crash}, "
                                             f"disk full: {self.disk_full is not None}); killed")
                code = -9
            if self.disk_full is not None and code == 3:
                self.result.op_kinds["once_gave_up_disk_full"] += 1
        else:
            once = AgentProcess(self.dir, "once", "-c", str(self.config), env=env).start()
            time.sleep(kill_after)
            once.kill()
            code = once.proc.returncode if once.proc else 0
        nothing_to_read = code == 5 and not any(self.logs.glob(self.schedule.glob))  # an empty glob: exit 5
        if code not in (0, 3, -9) and not nothing_to_read:
            self.result.anomalies.append(f"once exited {code} (crash={crash})")
        if was_on:
            self.op_start()

    def op_sleep(self, s: float) -> None:
        time.sleep(s)

    # -- the collector and the wire ---------------------------------------------------------------

    def op_collector_kill(self) -> None:
        self.collector.kill()

    def op_collector_start(self) -> None:
        if self.collector.proc is None or self.collector.proc.poll() is not None:
            self.collector.start()

    def op_collector_restart(self, pause: float) -> None:
        self.collector.kill()
        time.sleep(pause)
        self.collector.start()

    def op_fault(self, kind: str, n: int) -> None:
        assert self.proxy is not None
        self.proxy.add(kind, n)

    def op_limit(self, bytes: int | None) -> None:
        assert self.proxy is not None
        self.proxy.limit(bytes)

    def op_clock(self, offset: float) -> None:
        self.clock.write_text(f"{offset}\n")

    def op_identity(self, change: str, name: str) -> None:
        """A new agent id (with a token of that name) or a new token for the same id, then SIGHUP."""
        if change == "id":
            self.agent_id = name
        self.token = self.collector.add_token(self.agent_id)
        self.write_config()
        if self.forever.alive():
            # Not before the agent handles any signal (the interpreter's own start-up comes first): from
            # the moment it catches SIGTERM, a reload must not kill it either (finding F4).
            deadline = time.monotonic() + 30
            while not _catches(self.forever.pid, signal.SIGTERM) and self.forever.alive() \
                    and time.monotonic() < deadline:
                time.sleep(0.002)
            # A `forever` that ended by itself meanwhile is not the checker's to crash on: the
            # check after this op reports it (an anomaly of the schedule) and starts it again.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.forever.pid, signal.SIGHUP)

    def op_disk(self, full: bool) -> None:
        if full and self.disk_full is None and "diskfull" in self.schedule.families and self.state.is_mount():
            self.disk_full = fill(self.state)
        elif not full and self.disk_full is not None:
            self.disk_full.unlink()
            self.disk_full = None

    # -- the files --------------------------------------------------------------------------------

    def write(self, name: str, data: bytes) -> None:
        fd = os.open(self.logs / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def new_file(self, name: str) -> None:
        """Create `name` as its writer would: a header file starts with its header."""
        self.write(name, HEADERS.get(name, b""))

    def op_finish(self, file: str) -> None:
        rest = self.pending.pop(file, b"")
        if rest:
            self.write(file, rest)

    def op_append(self, file: str, seed: int, lines: int, style: str, cut: float = 0.0) -> None:
        self.op_finish(file)
        if not (self.logs / file).exists():
            self.new_file(file)
        data, counts = make_lines(seed, lines, "plain" if style == "partial" else style, self.pool)
        self.expected += counts
        blob = b"".join(data)
        if style == "partial":  # cut >= 0: a fraction of the last line; < 0: -cut bytes into it (its address)
            last = data[-1]
            into = -int(cut) if cut < 0 else int(cut * len(last))
            at = len(blob) - len(last) + max(1, min(len(last) - 1, into))
            blob, self.pending[file] = blob[:at], blob[at:]
        self.write(file, blob)

    def op_twin(self, files: list[str], seed: int, lines: int) -> None:
        data, counts = make_lines(seed, lines, "plain", self.pool)
        for name in files:
            self.op_finish(name)
            if not (self.logs / name).exists():
                self.new_file(name)
            self.write(name, b"".join(data))
            self.expected += counts

    def op_header(self, file: str) -> None:
        if not (self.logs / file).exists():
            self.new_file(file)

    def op_rotate(self, file: str, style: str, window: int, seed: int) -> None:
        path = self.logs / file
        if not path.exists():
            return
        self.op_finish(file)
        if style in ("truncate", "delete", "reuse") and not self.caught_up(path):
            self.result.skipped[style] += 1
            return
        if style == "rename" or style == "compress":
            self.shift(file)
            path.rename(self.logs / f"{file}.1")
            self.new_file(file)
            if style == "compress":
                self.compress(self.logs / f"{file}.1")
        elif style == "copytruncate":
            self.shift(file)
            shutil.copyfile(path, self.logs / f"{file}.1")
            if window:
                data, counts = make_lines(seed, window, "plain", self.wpool)
                self.window += counts
                self.write(file, b"".join(data))
            os.truncate(path, 0)
            self.write(file, HEADERS.get(file, b""))
        elif style == "truncate":
            os.truncate(path, 0)
        elif style == "delete":
            path.unlink()
        elif style == "reuse":
            size = path.stat().st_size
            os.truncate(path, 0)
            self.new_file(file)
            n = 1
            while True:  # longer than the old content, so the size alone cannot tell
                data, counts = make_lines(seed + n, 40, "plain", self.pool)
                self.expected += counts
                self.write(file, b"".join(data))
                if path.stat().st_size > size:
                    break
                n += 1

    def shift(self, file: str) -> None:
        """file.N[.gz] -> file.N+1[.gz], oldest first; nothing is ever deleted."""
        rotated = []
        for entry in self.logs.iterdir():
            rest = entry.name[len(file) + 1:] if entry.name.startswith(file + ".") else ""
            digits, _, ext = rest.partition(".")
            if digits.isdigit() and ext in ("", "gz"):
                rotated.append((int(digits), ext, entry))
        for number, ext, entry in sorted(rotated, reverse=True):
            entry.rename(self.logs / (f"{file}.{number + 1}" + (f".{ext}" if ext else "")))

    def compress(self, path: Path) -> None:
        """gzip a rotated file once the agent has read it (else leave it: `delaycompress`)."""
        if not self.caught_up(path):
            self.result.skipped["compress"] += 1
            return
        with path.open("rb") as src, gzip.open(path.with_name(path.name + ".gz"), "wb") as dst:
            shutil.copyfileobj(src, dst)
        path.unlink()

    def caught_up(self, path: Path) -> bool:
        """True once the agent's durable offset for this inode reaches its end (waits while `forever`
        runs and could get there; a destructive rotation is only safe then)."""
        deadline = time.monotonic() + (CATCH_UP_TIMEOUT if self.forever.alive() and self.disk_full is None else 0)
        while True:
            if self.durable_at_end(path):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)

    def durable_at_end(self, path: Path) -> bool:
        """A record of this inode, of this content (its fingerprint), whose offset is the file's size.

        Offset >= size is not enough: after this checker truncated an inode, the record of the old
        content keeps its old offset until the agent notices, and new content shorter than that
        would look read. (If the agent's fingerprint changes, this only ever says "not yet", and the
        destructive op is skipped, never done too early.)"""
        db = self.state / "queue.db"
        if not db.exists():
            return False
        try:
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
                fd = os.open(path, os.O_RDONLY)
                try:
                    st = os.fstat(fd)
                    rows = conn.execute("SELECT fp_len, fp_hash, offset FROM files WHERE dev = ? AND ino = ?",
                                        (st.st_dev, st.st_ino)).fetchall()
                    return any(offset == st.st_size and fingerprint(fd, fp_len) == (fp_len, bytes(fp_hash))
                               for fp_len, fp_hash, offset in rows)
                finally:
                    os.close(fd)
        except (sqlite3.Error, OSError):
            return False

    def kv(self, key: str) -> str | None:
        db = self.state / "queue.db"
        if not db.exists():
            return None
        try:
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
                row = conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error:
            return None
        return None if row is None else str(row[0])

    def counts(self) -> dict[str, int]:
        """Total count per address at the collector, read with the checker's own read-only token."""
        totals: dict[str, int] = {}
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 10000, **({"cursor": cursor} if cursor else {})}
            response = self.collector.get("/v1/ips", token=self.reader, **params)
            response.raise_for_status()
            page = response.json()
            totals.update({item["ip"]: item["count"] for item in page["items"]})
            cursor = page["next_cursor"]
            if not cursor:
                return totals

    def spool_rows(self, table: str) -> int:
        db = self.state / "queue.db"
        try:
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
                return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
        except sqlite3.Error:
            return -1

    # -- the end ----------------------------------------------------------------------------------

    def drain(self) -> None:
        """No more trouble: let `forever` deliver everything, stop it, compare."""
        assert self.proxy is not None
        self.proxy.clear()
        self.op_disk(full=False)
        self.op_collector_start()
        for name in list(self.pending):
            self.op_finish(name)
        self.op_start()
        deadline = time.monotonic() + DRAIN_TIMEOUT
        last, still_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            got = self.counts()
            if all(got.get(ip, 0) >= n for ip, n in self.expected.items()):
                break
            total = sum(got.values())
            if total != last or self.spool_rows("batches") > 0:
                last, still_since = total, time.monotonic()
            elif time.monotonic() - still_since > STALL_TIMEOUT:
                break  # nothing queued and nothing arriving: what is missing is not coming
            self.check_forever("while draining")
            time.sleep(0.3)
        time.sleep(1.0)  # anything late (a double count) has its chance to arrive
        self.check_forever("at the end")
        self.op_term()
        self.result.faults = Counter(self.proxy.applied)
        judge(self.expected, self.window, self.counts(), self.result)
        self.result.queued_left = self.spool_rows("batches")
        self.result.dead_letters = self.spool_rows("dead_letters")


def run_schedule(schedule: Schedule, keep: Path | None = None, log: Callable[[str], None] = lambda _: None) -> Result:
    """Run one schedule in a fresh directory; kept (its path in the result) only if it failed."""
    workdir = Path(tempfile.mkdtemp(prefix=f"gen-{schedule.seed}-", dir=keep))
    try:
        result = World(workdir, schedule, log).run()
    except BaseException:
        log(f"schedule {schedule.seed} raised; its directory is kept: {workdir}")
        raise
    if not result.failed:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


# --- shrinking -----------------------------------------------------------------------------------


def ddmin(items: list[Any], fails: Callable[[list[Any]], bool], deadline: float) -> list[Any]:
    """Zeller's delta debugging: a smaller list for which `fails` still holds (1-minimal if time allows).

    `items[0]` (the agent's start) is kept in every candidate. Each test is a real run, so the search
    stops at `deadline` with the smallest failing list found so far.
    """
    head, rest = items[:1], items[1:]
    n = 2
    while len(rest) >= 2 and time.monotonic() < deadline:
        chunk = max(1, len(rest) // n)
        parts = [rest[i:i + chunk] for i in range(0, len(rest), chunk)]
        reduced = False
        for i in range(len(parts)):
            if time.monotonic() >= deadline:
                break
            complement = [x for j, part in enumerate(parts) if j != i for x in part]
            if fails(head + parts[i]):
                rest, n, reduced = parts[i], 2, True
                break
            if len(parts) > 2 and fails(head + complement):
                rest, n, reduced = complement, max(n - 1, 2), True
                break
        if not reduced:
            if n >= len(rest):
                break
            n = min(len(rest), n * 2)
    return head + rest


def shrink(schedule: Schedule, seconds: float, log: Callable[[str], None] = print) -> Schedule:
    """The shortest sub-schedule found within `seconds` that still loses, doubles or misbehaves."""
    deadline = time.monotonic() + seconds

    def fails(ops: list[dict[str, Any]]) -> bool:
        candidate = Schedule(schedule.seed, schedule.glob, schedule.families, ops)
        result = run_schedule(candidate)
        log(f"  shrink: {len(ops)} ops -> {'fails' if result.failed else 'passes'}: {result.line()}")
        return result.failed

    ops = ddmin(schedule.ops, fails, deadline)
    return Schedule(schedule.seed, schedule.glob, schedule.families, ops)


# --- long runs -----------------------------------------------------------------------------------


@dataclass
class Totals:
    schedules: int = 0
    operations: int = 0
    op_kinds: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    expected: int = 0
    lost: int = 0
    doubled: int = 0
    window_written: int = 0
    window_lost: int = 0
    failed: list[int] = field(default_factory=list)
    minutes: float = 0.0

    def add(self, result: Result) -> None:
        self.schedules += 1
        self.operations += result.ops
        self.op_kinds.update(result.op_kinds)
        self.faults.update(result.faults)
        self.skipped.update(result.skipped)
        self.expected += result.expected
        self.lost += result.lost
        self.doubled += result.doubled
        self.window_written += result.window_written
        self.window_lost += result.window_lost
        if result.failed:
            self.failed.append(result.seed)

    def summary(self) -> str:
        def fmt(c: Counter[str]) -> str:
            return ", ".join(f"{k} {v}" for k, v in sorted(c.items())) or "none"
        return "\n".join([
            f"generative: {self.schedules} schedules, {self.operations} operations in {self.minutes:.1f} min",
            f"  operations: {fmt(self.op_kinds)}",
            f"  faults at the relay: {fmt(self.faults)}",
            f"  destructive rotations skipped (agent not caught up): {fmt(self.skipped)}",
            f"  occurrences expected {self.expected}: lost {self.lost}, doubled {self.doubled}",
            f"  copytruncate window (tolerated, reported): {self.window_lost} lost of {self.window_written} written",
            f"  failing schedules: {len(self.failed)} {self.failed[:20]}",
        ])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability.generative", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0, help="stop starting new schedules after this long")
    parser.add_argument("--families", default=",".join(SUITE_FAMILIES),
                        help=f"comma-separated, or 'all' (default: the suite's: {','.join(SUITE_FAMILIES)})")
    parser.add_argument("--seed", type=int, default=None, help="first seed (default: from the time)")
    parser.add_argument("--ops", type=int, default=40, help="operations per schedule")
    parser.add_argument("--shrink-minutes", type=float, default=5.0, help="time to shrink each failure (0: do not)")
    parser.add_argument("--keep", type=Path, default=Path(__file__).parent / "schedules",
                        help="where shrunk failing schedules are written")
    parser.add_argument("--replay", type=Path, nargs="*", help="run these schedule files instead")
    parser.add_argument("--json", type=Path, help="also write the totals here")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every op and how long it took")
    args = parser.parse_args(argv)
    families = list(FAMILIES) if args.families == "all" else [f for f in args.families.split(",") if f]
    # SIGTERM (timeout(1), a CI limit) unwinds like Ctrl-C: each World's cleanup kills its agent and collector.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    totals = Totals()
    started = time.monotonic()
    if args.replay is not None:
        schedules: Iterator[Schedule] = (Schedule.from_json(p.read_text()) for p in args.replay)
    else:
        first = args.seed if args.seed is not None else int(time.time()) % 1_000_000

        def endless() -> Iterator[Schedule]:
            seed = first
            while time.monotonic() - started < args.minutes * 60:
                yield generate(seed, families, args.ops)
                seed += 1
        schedules = endless()
    for schedule in schedules:
        result = run_schedule(schedule, log=print if args.verbose else lambda _: None)
        totals.add(result)
        print(("FAIL " if result.failed else "ok   ") + result.line(), flush=True)
        if result.failed and args.replay is None and args.shrink_minutes > 0:
            small = shrink(schedule, args.shrink_minutes * 60)
            small.note = f"found {time.strftime('%Y-%m-%d')}: {result.line()}"
            args.keep.mkdir(parents=True, exist_ok=True)
            target = args.keep / f"found-{schedule.seed}.json"
            target.write_text(small.to_json())
            print(f"  shrunk to {len(small.ops)} ops: {target}", flush=True)
    totals.minutes = (time.monotonic() - started) / 60
    print(totals.summary(), flush=True)
    if args.json:
        # Not asdict(): it rebuilds a Counter from (key, value) pairs, counting the pairs.
        args.json.write_text(json.dumps({k: dict(v) if isinstance(v, Counter) else v
                                         for k, v in vars(totals).items()}, indent=1))
    return 1 if totals.failed else 0


if __name__ == "__main__":
    sys.exit(main())
