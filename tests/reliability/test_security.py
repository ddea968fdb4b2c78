"""Security properties: private state files, tokens that never leak, TLS verification by default, and a
collector that bounds bodies before and after decompression and shrugs off a burst of malformed requests."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import random
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from remote_uploader.config import DEFAULTS
from tests.helpers.agent import write_access_log, write_config
from tests.helpers.collector_fixtures import CollectorProcess
from tests.helpers.receiver import Receiver
from tests.reliability.harness import AgentProcess, Row, record, run, wait_until

SECRET = "tok-S3CRET-d41d8cd98f00b204e9800998ecf8427e"


def _umask_zero() -> None:
    os.umask(0)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_state_files_are_0600_in_a_0700_directory_even_with_umask_0(tmp_path: Path, receiver: Receiver) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)  # an existing, too-open directory is tightened
    log = tmp_path / "access.log"
    write_access_log(log, 500, seed=1)
    config = write_config(tmp_path / "agent.toml", url=receiver.url, token=receiver.token, state_dir=state,
                          sources=[str(log)], read={"poll_interval": 0.05})
    receiver.stop()  # keep batches queued so the WAL files exist while we look
    agent = AgentProcess(tmp_path, "forever", "-c", str(config), preexec=_umask_zero).start()
    assert wait_until(lambda: (state / "queue.db-wal").exists() and (state / "agent.log").exists(), timeout=30)
    time.sleep(0.5)
    live = {path.name: _mode(path) for path in state.iterdir()}
    dir_mode = _mode(state)
    receiver.start()
    assert agent.stop() == 0
    after = {path.name: _mode(path) for path in state.iterdir()}
    record(Row("security/file-modes", "state files private",
               "`forever` started with umask 000 on an existing 0755 state directory: directory and every file "
               f"in it checked while running and after ({', '.join(sorted(live))})", 2, None, None, None))
    assert dir_mode == 0o700
    assert {"queue.db", "queue.db-wal", "agent.lock", "agent.log"} <= set(live)
    assert set(live.values()) | set(after.values()) == {0o600}, (live, after)


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):  # the thread or process ended while we looked
                todo += [int(child) for child in (task / "children").read_text().split()]
    return found


@pytest.mark.parametrize("how", ["token_file", "environment"])
def test_token_never_in_logs_status_errors_or_process_titles(tmp_path: Path, how: str) -> None:
    receiver = Receiver(token=SECRET)
    receiver.start()
    try:
        log = tmp_path / "access.log"
        write_access_log(log, 3000, seed=2, distinct=2000)
        config = write_config(tmp_path / "agent.toml", url=receiver.url, token=SECRET, state_dir=tmp_path / "state",
                              sources=[str(log)], read={"poll_interval": 0.05},
                              agent={"log_level": "debug", "workers": 2})
        env: dict[str, str] = {}
        if how == "environment":
            (tmp_path / "token").write_text("")  # only the environment has it
            text = config.read_text().replace(f'token_file = "{tmp_path / "token"}"\n', "")
            assert "token_file" not in text
            config.write_text(text)
            env = {"REMOTE_UPLOADER_TOKEN": SECRET}
        receiver.fail_next(3, 503)  # some failures, so the error paths log too
        agent = AgentProcess(tmp_path, "forever", "-c", str(config), "-vv", env=env).start()
        titles: list[str] = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # sample process titles of the agent and its workers
            for pid in _descendants(agent.pid):
                try:
                    titles.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
                    titles.append(Path(f"/proc/{pid}/comm").read_text())
                except OSError:
                    pass
            time.sleep(0.2)
        outputs = [run(config, "status", env=env).stdout, run(config, "status", "--json", env=env).stdout,
                   run(config, "test", env=env).stdout]
        receiver.stop()  # errors from a dead collector, too
        time.sleep(1.0)
        assert agent.stop() == 0
        state_files = b"".join(p.read_bytes() for p in (tmp_path / "state").iterdir() if p.is_file())
    finally:
        receiver.close()
    texts = [*titles, *outputs, agent.stdout(), agent.stderr(), state_files.decode(errors="replace")]
    leaks = [text[:200] for text in texts if SECRET in text]
    record(Row(f"security/token-{how.replace('_', '-')}", f"token never shown ({how.replace('_', ' ')})",
               "token given by " + ("server.token_file" if how == "token_file" else "REMOTE_UPLOADER_TOKEN")
               + f": searched in {len(titles)} samples of /proc/PID/cmdline and comm (agent and workers), `status`, "
               "`status --json`, `test`, stdout/stderr at -vv with upload errors, every file in the state "
               "directory (debug log, queue)", len(texts), None, None, None, note=f"{len(leaks)} leaks"))
    assert any("forever" in title for title in titles)
    assert leaks == []


def test_a_token_on_the_command_line_is_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path / "agent.toml", url="http://127.0.0.1:9", token="x", state_dir=tmp_path / "s",
                          sources=[str(tmp_path / "a.log")])
    result = run(config, "test", "--set", f"server.token={SECRET}")
    assert result.returncode == 2 and "server.token" in result.stderr


def test_tls_verification_is_on_by_default() -> None:
    """The default, not just the CA test: a config that says nothing about TLS verifies certificates."""
    from remote_uploader.agent.sink import HttpSink
    from remote_uploader.config import load

    config = load(None, env={}, overrides={"server.url": "https://collector.example:8443"})
    tls = HttpSink(config.server).tls
    assert DEFAULTS["server.verify_tls"] is True
    assert tls is not None and tls.context.verify_mode.name == "CERT_REQUIRED" and tls.context.check_hostname


# --- the collector under hostile input -------------------------------------------------------------------


@pytest.fixture
def small_collector(tmp_path: Path) -> Iterator[CollectorProcess]:
    process = CollectorProcess(tmp_path, "sqlite://" + str(tmp_path / "collector.db"),
                               extra_args=["--max-body", str(1024 * 1024), "--no-access-log"])
    process.start()
    yield process
    process.stop()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _valid_batch(batch_id: str, ip: str, count: int) -> dict[str, object]:
    now = "2026-11-28T10:00:00Z"
    return {"agent": "test-agent", "batch_id": batch_id, "sent_at": now,
            "records": [{"ip": ip, "count": count, "first_seen": now, "last_seen": now, "source": "/x.log"}]}


def _malformed(rng: random.Random, n: int) -> tuple[bytes, dict[str, str]]:
    """One hostile request body and its headers, cycling through the kinds of damage."""
    kind = n % 10
    good = json.dumps(_valid_batch(f"bad-{n}", "203.0.113.5", 1)).encode()
    headers = {"Content-Type": "application/json"}
    if kind == 0:
        return rng.randbytes(rng.randint(1, 5000)), headers
    if kind == 1:
        return good[: rng.randint(1, len(good) - 1)], headers  # cut short
    if kind == 2:
        return good.replace(b"203.0.113.5", b"203.0.113.05"), headers  # non-canonical IPv4
    if kind == 3:
        return good.replace(b"203.0.113.5", b"2001:DB8::1"), headers  # non-canonical IPv6
    if kind == 4:
        return good.replace(b'"count": 1', b'"count": -5'), headers
    if kind == 5:
        return good.replace(b'"count": 1', b'"count": "1"'), headers
    if kind == 6:
        return b"\x1f\x8b\x08\x00" + rng.randbytes(200), {**headers, "Content-Encoding": "gzip"}  # broken gzip
    if kind == 7:
        return b"[" * 100_000 + b"]" * 100_000, headers  # deep nesting
    if kind == 8:
        return good.replace(b'"2026-11-28T10:00:00Z"', b'"yesterday"', 1), headers
    return good, {**headers, "Content-Encoding": "br"}  # an encoding nobody offered


def test_collector_bounds_bodies_and_stays_healthy_under_a_burst_of_malformed_requests(
        small_collector: CollectorProcess) -> None:
    collector = small_collector
    assert collector.proc is not None
    pid = collector.proc.pid
    auth = collector.headers()
    url = collector.url + "/v1/batches"
    rss_before = _rss_kib(pid)

    over = httpx.post(url, content=b"{" + b" " * (2 * 1024 * 1024) + b"}",
                      headers={**auth, "Content-Type": "application/json"}, timeout=60)
    bomb = gzip.compress(b"[" + b" " * (512 * 1024 * 1024) + b"]", compresslevel=9)  # 512 MiB inflated
    bombed = httpx.post(url, content=bomb, timeout=120,
                        headers={**auth, "Content-Type": "application/json", "Content-Encoding": "gzip"})
    rss_after_bomb = _rss_kib(pid)

    statuses: list[int] = []
    lock = threading.Lock()

    def burst(worker: int) -> None:
        rng = random.Random(worker)
        with httpx.Client(timeout=60) as client:
            for n in range(worker, 600, 6):
                body, headers = _malformed(rng, n)
                token = {"Authorization": "Bearer not-a-token"} if n % 13 == 0 else auth
                headers = {**headers, **token}
                code = client.post(url, content=body, headers=headers).status_code
                with lock:
                    statuses.append(code)

    threads = [threading.Thread(target=burst, args=(w,)) for w in range(6)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    burst_s = time.monotonic() - started
    health = httpx.get(collector.url + "/v1/health", timeout=30)
    accepted = collector.post_batch(_valid_batch("good-1", "198.51.100.7", 42))
    counts = collector.counts()
    server_errors = [code for code in statuses if code >= 500]
    record(Row("security/collector-hostile", "collector under hostile input",
               f"a 2 MiB body over a 1 MiB limit, a gzip bomb (512 MiB inflated, {len(bomb) // 1024} KiB sent), then "
               f"{len(statuses)} malformed requests from 6 clients (junk, cut JSON, non-canonical IPs, bad counts "
               "and times, broken gzip, deep nesting, unknown encoding, bad tokens); then one valid batch",
               len(statuses) + 2, None, None, burst_s,
               note=f"{len(server_errors)} answers were 5xx; stored afterwards: {len(counts)} address(es)"))
    assert over.status_code == 413
    assert bombed.status_code == 413
    assert rss_after_bomb - rss_before < 64 * 1024, "the bomb was inflated into memory"
    assert len(statuses) == 600 and server_errors == []
    assert all(400 <= code < 500 for code in statuses)
    assert health.status_code == 200 and accepted.status_code == 200
    assert counts == {"198.51.100.7": 42}, "nothing of the malformed requests may be stored"
