"""Bounded body reading: limits on the wire and after gzip, bombs refused with flat memory."""

from __future__ import annotations

import asyncio
import gzip
import tracemalloc
import zlib
from collections.abc import Iterable
from typing import Any

import pytest

from remote_uploader.collector.body import check_headers, read_body
from remote_uploader.errors import BodyError, ClientGone


def receiver(chunks: Iterable[bytes]):  # type: ignore[no-untyped-def]
    parts = list(chunks)

    async def receive() -> dict[str, Any]:
        if not parts:
            return {"type": "http.disconnect"}
        chunk = parts.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(parts)}

    return receive


def read(chunks: Iterable[bytes], *, gzip_: bool = False, limit: int = 1000) -> bytes:
    return bytes(asyncio.run(read_body(receiver(chunks), gzip=gzip_, limit=limit)))


def status_of(chunks: Iterable[bytes], **kwargs: Any) -> int:
    with pytest.raises(BodyError) as caught:
        read(chunks, **kwargs)
    return caught.value.status


def test_plain_body_is_returned_whole() -> None:
    assert read([b"ab", b"cd", b""]) == b"abcd"


def test_body_over_the_limit_is_413_while_streaming() -> None:
    assert status_of([b"x" * 600, b"x" * 600], limit=1000) == 413


def test_gzip_body_is_decompressed_across_chunk_boundaries() -> None:
    packed = gzip.compress(b"hello world" * 50)
    assert read([packed[i : i + 7] for i in range(0, len(packed), 7)], gzip_=True, limit=10_000) == b"hello world" * 50


def test_concatenated_gzip_members_are_one_body() -> None:
    assert read([gzip.compress(b"abc") + gzip.compress(b"def")], gzip_=True) == b"abcdef"


def test_decompressed_size_is_limited_too() -> None:
    assert status_of([gzip.compress(b"x" * 2000)], gzip_=True, limit=1000) == 413


@pytest.mark.parametrize(
    "data",
    [b"not gzip at all", gzip.compress(b"abc", mtime=0)[:-4], gzip.compress(b"abc", mtime=0) + b"junk", b""],
)
def test_broken_gzip_is_400(data: bytes) -> None:
    assert status_of([data], gzip_=True) == 400


def test_a_gzip_bomb_is_refused_with_flat_memory() -> None:
    # 256 MiB of zeros in a quarter MiB of gzip, sent in 64 KiB chunks like a socket would.
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"\0" * (1 << 20)
    bomb = b"".join(compressor.compress(block) for _ in range(256)) + compressor.flush()
    chunks = [bomb[i : i + 65536] for i in range(0, len(bomb), 65536)]
    limit = 16 << 20
    tracemalloc.start()
    try:
        assert status_of(chunks, gzip_=True, limit=limit) == 413
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * limit  # the output buffer (at most limit + 1) and a little more, not 256 MiB


def test_a_disconnect_mid_body_is_client_gone() -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    with pytest.raises(ClientGone):
        asyncio.run(read_body(receive, gzip=False, limit=10))


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"content-type": "text/plain"}, 415),
        ({"content-encoding": "br"}, 415),
        ({"content-length": "5000"}, 413),
    ],
)
def test_headers_are_checked_before_the_body(headers: dict[str, str], status: int) -> None:
    with pytest.raises(BodyError) as caught:
        check_headers(headers, 1000)
    assert caught.value.status == status


def test_json_with_charset_and_gzip_are_accepted() -> None:
    assert check_headers({"content-type": "application/json; charset=utf-8", "content-encoding": "gzip"}, 10)
    assert not check_headers({}, 10)
