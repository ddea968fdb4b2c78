"""Reading a request body under a size limit, before and after gzip, without ever holding more.

The limit applies twice: to the bytes on the wire (a Content-Length above it is refused before a
byte of the body is read; a chunked body is counted as it streams in) and to the decompressed
bytes of a gzip body. Decompression is incremental with `max_length`, so a gzip bomb (a few
kilobytes that inflate to gigabytes) costs at most `limit` bytes of memory and the time to
inflate that much before the 413.

If we answer before the client has sent its whole body (413 on Content-Length, 401 on a bad
token), uvicorn reads and discards the rest and keeps the connection usable, so the client gets
to read our answer instead of a broken pipe.
"""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from remote_uploader.errors import BodyError, ClientGone
from remote_uploader.protocol import ACCEPT_POST, ACCEPTED_MEDIA, MEDIA_V1, MEDIA_V2

GZIP_WBITS = 16 + zlib.MAX_WBITS  # a gzip header and trailer around a deflate stream

Receive = Callable[[], Awaitable[Mapping[str, Any]]]


def body_format(headers: Mapping[str, str]) -> int:
    """The body format its media type names: 1 (application/json, the default) or 2."""
    media = headers.get("content-type", MEDIA_V1).split(";", 1)[0].strip().lower()
    if media == MEDIA_V2:
        return 2
    if media != MEDIA_V1:
        raise BodyError(415, "content-type", f"unsupported media type {media!r}; send one of {ACCEPTED_MEDIA}",
                        {ACCEPT_POST: ACCEPTED_MEDIA})
    return 1


def check_headers(headers: Mapping[str, str], limit: int) -> bool:
    """Validate Content-Type, Content-Encoding and Content-Length; return True for gzip."""
    body_format(headers)
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", "x-gzip"):
        raise BodyError(415, "content-encoding", f"unsupported content encoding {encoding!r}; use gzip")
    length = headers.get("content-length")
    if length is not None and length.strip().isdigit() and int(length) > limit:
        raise BodyError(413, "body", f"body of {int(length)} bytes is larger than the limit of {limit}")
    return encoding != "identity"


class _Inflater:
    """Incremental gzip decoding with a bound on the output; handles concatenated members."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.out = bytearray()
        self._decoder = zlib.decompressobj(GZIP_WBITS)
        self._started = False

    def feed(self, data: bytes) -> None:
        try:
            while data:
                if self._decoder.eof:
                    # The next gzip member (RFC 1952 allows several) or trailing junk.
                    self._decoder = zlib.decompressobj(GZIP_WBITS)
                self._started = True
                room = self.limit - len(self.out) + 1  # one byte more than allowed proves "too big"
                self.out += self._decoder.decompress(data, room)
                if len(self.out) > self.limit:
                    raise BodyError(413, "body", f"decompressed body is larger than the limit of {self.limit} bytes")
                data = self._decoder.unconsumed_tail or self._decoder.unused_data
        except zlib.error as exc:
            raise BodyError(400, "body", f"not valid gzip data: {exc}") from None

    def finish(self) -> bytearray:
        if not self._started or not self._decoder.eof:
            raise BodyError(400, "body", "gzip data is truncated")
        return self.out


async def read_body(receive: Receive, *, gzip: bool, limit: int) -> bytearray:
    """The (decompressed) body, at most `limit` bytes; raises BodyError or ClientGone."""
    inflater = _Inflater(limit) if gzip else None
    raw = bytearray()
    received = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        received += len(chunk)
        if received > limit:
            raise BodyError(413, "body", f"body is larger than the limit of {limit} bytes")
        if inflater is not None:
            inflater.feed(chunk)
        else:
            raw += chunk
        if not message.get("more_body", False):
            break
    return inflater.finish() if inflater is not None else raw
