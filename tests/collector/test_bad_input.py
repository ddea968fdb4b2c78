"""Bad input of every kind gets the right 4xx, stores nothing, and leaves the server healthy."""

from __future__ import annotations

import gzip
import http.client
import itertools
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.batches import record, wire_batch
from tests.helpers.collector_fixtures import CollectorProcess, CollectorThread

LIMIT = 1 << 20  # the module's collector takes bodies up to 1 MiB
_serial = itertools.count(1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CollectorThread]:
    workdir: Path = tmp_path_factory.mktemp("bad-input")
    (workdir / "collector.toml").write_text(f"[collector]\nmax_body = {LIMIT}\n")
    collector = CollectorThread(workdir, f"sqlite://{workdir}/collector.db", workdir / "collector.toml")
    collector.start()
    yield collector
    collector.stop()


def marker() -> str:
    """A fresh address: if it shows up in the counts, something of a bad request was stored."""
    number = next(_serial)
    return f"198.18.{number // 250}.{number % 250 + 1}"


def assert_nothing_stored_and_healthy(server: CollectorThread, *markers: str) -> None:
    counts = server.counts()
    assert not set(markers) & set(counts)
    assert httpx.get(server.url + "/v1/health").status_code == 200
    probe = marker()
    response = server.post_batch(wire_batch("test-agent", f"probe-{probe}", [record(probe, 2)]))
    assert response.status_code == 200
    assert server.counts()[probe] == 2


def detail(response: httpx.Response) -> list[tuple[str, str]]:
    return [(item["field"], item["error"]) for item in response.json()["detail"]]


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("body", [b"{not json", b"", b"\xff\xfe\x00", b"[" * 50_000, b'{"agent": "test-agent"'])
def test_malformed_json_is_400(server: CollectorThread, body: bytes, compress: bool) -> None:
    response = server.post_batch(body, compress=compress)
    assert response.status_code == 400
    assert detail(response)[0][0] == "body"
    assert_nothing_stored_and_healthy(server)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"count": "3"}, "records[1].count"),
        ({"count": 2.5}, "records[1].count"),
        ({"count": -4}, "records[1].count"),
        ({"ip": 17}, "records[1].ip"),
        ({"ip": "1.2.3.4.5"}, "records[1].ip"),
        ({"ip": "010.1.1.1"}, "records[1].ip"),
        ({"ip": "2001:DB8::1"}, "records[1].ip"),
        ({"ip": "::ffff:192.0.2.1"}, "records[1].ip"),
        ({"ip": "0.0.0.0"}, "records[1].ip"),
        ({"first_seen": 1714564800}, "records[1].first_seen"),
        ({"last_seen": "2024-13-01T00:00:00Z"}, "records[1].last_seen"),
        ({"source": ["x"]}, "records[1].source"),
        ({"source": "x" * 5000}, "records[1].source"),
    ],
)
def test_one_bad_record_rejects_the_whole_batch(server: CollectorThread, change: dict[str, Any], field: str) -> None:
    good = marker()
    batch = wire_batch("test-agent", f"bad-{good}", [record(good), {**record(marker()), **change}])
    response = server.post_batch(batch)
    assert response.status_code == 400
    assert [f for f, _ in detail(response)] == [field]
    assert_nothing_stored_and_healthy(server, good)
    assert server.post_batch({**batch, "records": batch["records"][:1]}).json()["duplicate"] is False


@pytest.mark.parametrize(
    "change",
    [{"records": "none"}, {"agent": 5}, {"batch_id": ""}, {"batch_id": "x" * 129}, {"sent_at": None}, {"agent": None}],
)
def test_wrong_top_level_types_are_400(server: CollectorThread, change: dict[str, Any]) -> None:
    good = marker()
    response = server.post_batch({**wire_batch("test-agent", f"t-{good}", [record(good)]), **change})
    assert response.status_code == 400
    assert detail(response)[0][0] == next(iter(change))
    assert_nothing_stored_and_healthy(server, good)


def test_a_lone_surrogate_is_400_not_a_server_error(server: CollectorThread) -> None:
    good = marker()
    body = json.dumps(wire_batch("test-agent", "x", [record(good)])).replace('"x"', '"\\udc80"').encode()
    response = server.post_batch(body)
    assert response.status_code == 400
    assert_nothing_stored_and_healthy(server, good)


def _raw_post(server: CollectorThread, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """Send like a plain stdlib client (the agent uses one): whole body first, then read the answer."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        conn.request("POST", "/v1/batches", body=body, headers={**server.headers(), **headers})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_a_huge_body_is_413_and_the_client_reads_the_answer(server: CollectorThread) -> None:
    body = b"x" * (40 * LIMIT)
    status, answer = _raw_post(server, body, {"Content-Type": "application/json"})
    assert status == 413
    assert json.loads(answer)["detail"][0]["field"] == "body"
    assert_nothing_stored_and_healthy(server)


def test_a_huge_chunked_body_is_413_while_streaming(server: CollectorThread) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            yield b" " * 65536

    response = httpx.post(
        server.url + "/v1/batches", content=chunks(), headers={**server.headers(), "Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert_nothing_stored_and_healthy(server)


def _bomb(size: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b" " * (1 << 20)
    return b"".join(compressor.compress(block) for _ in range(size >> 20)) + compressor.flush()


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_a_gzip_bomb_is_413_with_flat_memory(collector_process: CollectorProcess) -> None:
    collector = collector_process  # a process of its own: its peak memory is the measure
    assert collector.proc is not None
    before = _peak_rss_kib(collector.proc.pid)
    bomb = _bomb(1 << 30)  # 1 GiB of spaces in about 1 MiB of gzip: far under the 16 MiB wire limit
    response = collector.post_batch(bomb, compress=False, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 413
    assert "decompressed" in detail(response)[0][1]
    after = _peak_rss_kib(collector.proc.pid)
    assert after - before < 200 * 1024  # the 16 MiB limit and parsing overheads, never the 1 GiB
    assert collector.counts() == {}
    assert collector.post_batch(wire_batch("test-agent", "ok", [record("203.0.113.1")])).status_code == 200


@pytest.mark.parametrize("body", [b"\x1f\x8b\x08\x00garbage", gzip.compress(b"{}", mtime=0)[:-6], b"plain, not gzip"])
def test_broken_gzip_is_400(server: CollectorThread, body: bytes) -> None:
    response = server.post_batch(body, compress=False, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 400
    assert_nothing_stored_and_healthy(server)


@pytest.mark.parametrize(
    "headers", [{"Content-Encoding": "br"}, {"Content-Encoding": "deflate"}, {"Content-Type": "text/plain"}]
)
def test_unsupported_encodings_and_media_types_are_415(server: CollectorThread, headers: dict[str, str]) -> None:
    good = marker()
    response = server.post_batch(wire_batch("test-agent", good, [record(good)]), compress=False, headers=headers)
    assert response.status_code == 415
    assert_nothing_stored_and_healthy(server, good)


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (None, 401),
        ("Bearer", 401),
        ("Basic dGVzdDp0ZXN0", 401),
        ("Bearer ru_not-a-real-token", 401),
        ("Bearer " + "x" * 10_000, 401),
        ("OTHER-AGENT", 403),
    ],
)
def test_wrong_tokens_are_refused(server: CollectorThread, authorization: str | None, status: int) -> None:
    good = marker()
    headers = {"Content-Type": "application/json"}
    if authorization == "OTHER-AGENT":
        authorization = "Bearer " + server.add_token(f"other-{good.replace('.', '-')}")
    if authorization is not None:
        headers["Authorization"] = authorization
    body = json.dumps(wire_batch("test-agent", good, [record(good)])).encode()
    response = httpx.post(server.url + "/v1/batches", content=body, headers=headers)
    assert response.status_code == status
    assert_nothing_stored_and_healthy(server, good)


def test_a_bad_token_with_a_big_body_still_gets_its_401(server: CollectorThread) -> None:
    status, _ = _raw_post(server, b"x" * (8 * LIMIT), {"Authorization": "Bearer wrong"})
    assert status == 401


def test_unknown_paths_and_methods_are_4xx_in_the_error_format(server: CollectorThread) -> None:
    assert httpx.get(server.url + "/v2/nothing").json() == {"detail": [{"field": "path", "error": "Not Found"}]}
    assert httpx.delete(server.url + "/v1/batches").status_code == 405
