"""Parsing workers: big bodies are parsed in other processes, with the same results and errors
as in the server process; a worker's death costs no batch; workers never outlive the server."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from remote_uploader.collector.batch import parse_batch
from remote_uploader.collector.parsing import WORKER_MIN_BYTES, BatchParser
from remote_uploader.collector.storage import bulk
from remote_uploader.collector.storage.base import EncodedDeltas, IpDelta
from remote_uploader.errors import AgentMismatch, BatchInvalid
from tests.helpers.batches import random_records, wire_batch

ROOT = Path(__file__).resolve().parents[2]


def body(records: int = 300, agent: str = "web-1", seed: int = 1) -> bytearray:
    return bytearray(json.dumps(wire_batch(agent, f"b-{seed}", random_records(random.Random(seed), records))).encode())


def parse(parser: BatchParser, payload: bytearray, agent: str = "web-1") -> object:
    async def run() -> object:
        try:
            return await parser.parse(bytearray(payload), agent)
        except (BatchInvalid, AgentMismatch) as exc:
            return exc

    return asyncio.run(run())


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):  # reaped before the open, or between open and read
        return True


def wait_until_gone(pids: list[int], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not all(gone(pid) for pid in pids):
        assert time.monotonic() < deadline, f"still running: {[pid for pid in pids if not gone(pid)]}"
        time.sleep(0.05)


@pytest.fixture
def parser() -> Iterator[BatchParser]:
    made = BatchParser(1, "postgres-copy", min_bytes=0)
    yield made
    made.close()


def test_a_worker_returns_the_batch_encoded_for_the_storage(parser: BatchParser) -> None:
    payload = body()
    parsed = parse(parser, payload)
    expected = parse_batch(payload)
    assert isinstance(parsed, type(expected))
    assert isinstance(parsed.deltas, EncodedDeltas)
    assert parsed.deltas == bulk.encode("postgres-copy", expected.deltas, expected.buckets)
    assert parsed.buckets == ()  # carried by the encoded form
    assert (parsed.agent, parsed.batch_id, parsed.sent_at, parsed.records) == (
        expected.agent,
        expected.batch_id,
        expected.sent_at,
        expected.records,
    )
    pids = parser.worker_pids()
    assert len(pids) == 1 and pids[0] != os.getpid()
    parser.close()
    wait_until_gone(pids)


@pytest.mark.skipif(not bulk.HAS_SQLITE_IMAGE, reason="this SQLite cannot serialize databases")
def test_a_sqlite_image_from_a_worker_holds_the_deltas() -> None:
    parser = BatchParser(1, "sqlite-image", min_bytes=0)
    try:
        payload = body()
        parsed = parse(parser, payload)
        assert isinstance(parsed.deltas, EncodedDeltas)
        from tests.collector.storage.test_bulk import rows_of_image

        assert [IpDelta(*row) for row in rows_of_image(parsed.deltas.data)] == parse_batch(payload).deltas
    finally:
        parser.close()


def test_small_bodies_are_parsed_in_the_server_process() -> None:
    parser = BatchParser(2, "postgres-copy")
    try:
        payload = body(10)
        assert len(payload) < WORKER_MIN_BYTES
        parsed = parse(parser, payload)
        assert parsed == parse_batch(payload)
        assert parser.worker_pids() == []
    finally:
        parser.close()


def test_workers_name_every_error_as_the_server_process_would(parser: BatchParser) -> None:
    document = json.loads(body(50))
    document["records"][7]["ip"] = "192.0.2.01"
    document["records"][31]["count"] = 0
    invalid = bytearray(json.dumps(document).encode())
    from_worker = parse(parser, invalid)
    assert isinstance(from_worker, BatchInvalid)
    with pytest.raises(BatchInvalid) as local:
        parse_batch(invalid)
    assert from_worker.errors == local.value.errors
    assert [e.field for e in from_worker.errors] == ["records[7].ip", "records[31].count"]
    mismatch = parse(parser, body(agent="web-2"))
    assert isinstance(mismatch, AgentMismatch) and (mismatch.agent, mismatch.expected) == ("web-2", "web-1")


def test_a_dead_worker_costs_no_batch(parser: BatchParser) -> None:
    payload = body()
    plain = parse_batch(payload)
    expected = bulk.encode("postgres-copy", plain.deltas, plain.buckets)
    parse(parser, payload)
    (pid,) = parser.worker_pids()
    os.kill(pid, signal.SIGKILL)
    wait_until_gone([pid])
    again = parse(parser, payload)  # the broken pool is noticed: parsed in this process instead
    assert bulk.encoded(again.deltas, "postgres-copy", again.buckets) == expected
    third = parse(parser, payload)  # a new pool
    assert third.deltas == expected
    assert parser.worker_pids() and pid not in parser.worker_pids()


SERVER = """
import asyncio, json, sys, time
from remote_uploader.collector.parsing import BatchParser
parser = BatchParser(2, None, min_bytes=0)
payload = bytearray(sys.stdin.buffer.read())
async def main():
    await asyncio.gather(parser.parse(bytearray(payload), "web-1"), parser.parse(bytearray(payload), "web-1"))
asyncio.run(main())
print(json.dumps(parser.worker_pids()), flush=True)
time.sleep(120)
"""


def test_workers_exit_when_the_server_process_is_killed() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # its resource tracker complains of the kill
        env=env,
        cwd=ROOT,
    )
    try:
        assert server.stdin is not None and server.stdout is not None
        server.stdin.write(bytes(body()))
        server.stdin.close()
        pids = json.loads(server.stdout.readline())
        assert pids and all(not gone(pid) for pid in pids)
    finally:
        server.kill()
        server.wait()
    wait_until_gone(pids)
