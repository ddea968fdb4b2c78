"""The `hyperscan` extraction engine (`pip install 'remote-uploader[fast]'`): same counts, fewer candidates.

Importing this module raises ImportError when the `hyperscan` package is missing;
`build_extractor(engine="auto")` then falls back to the standard-library engine.

How it stays identical to the stdlib engine (extract.py): it hands the very same validators the
very same bytes. Hyperscan reports each candidate once, at its end, with its start (leftmost):

- IPv4: from the first `.` of `A.B.C.D` (the start) to the byte after the last octet, or the two
  bytes after it when the first is a `.`. The key is the match plus the 5 bytes before it.
  The pattern leaves out what the validator would refuse anyway (a 4th digit, `.` + word byte),
  so that most non-addresses (versions in user agents) never reach Python.
- IPv6: from the first `:` of a run of hex digits, colons and dots to the byte after the run, and
  only runs that could hold an address (a `::`, an embedded IPv4 address, or eight groups), so
  that times of day (`12:34:56`) never reach Python. The key is the match plus the 6 bytes before.

The stdlib engine anchors at the same first `.`/`:`; candidates it would skip because an earlier
match consumed their anchor are exactly those the validator rejects (preceded by `.`/`:`), so the
sets of accepted candidates agree. tests/test_extract_properties.py checks this on random input.
"""

from __future__ import annotations

from collections import Counter
from typing import Final

import hyperscan

from remote_uploader.agent.extract import (
    _SEP_RE,
    CONTEXT,
    DIGITS,
    MAX_V6_RUN,
    SEPARATORS,
    V4_AT,
    BoundedCache,
    Buffer,
    StdlibExtractor,
    _padded,
    _windows,
    v6_candidate,
)

_RUN = rb"[0-9A-Fa-f:.]"
V4_PATTERN: Final = rb"\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(?:[^0-9.]|\.[^0-9A-Za-z_\x80-\xff])"
V6_PATTERN: Final = (
    rb":(?:" + _RUN + rb"*:)?"
    rb"(?::|[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]|[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){6})"
    + _RUN + rb"*[^0-9A-Fa-f:.]"
)
_V4_ID: Final = 0
_V6_ID: Final = 1


def _compile() -> hyperscan.Database:
    db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    db.compile(
        expressions=[V4_PATTERN, V6_PATTERN],
        ids=[_V4_ID, _V6_ID],
        flags=[hyperscan.HS_FLAG_SOM_LEFTMOST, hyperscan.HS_FLAG_SOM_LEFTMOST],
    )
    return db


def _v4_key(key: bytes) -> str | None:
    """5 bytes, the anchor `.`, `B.C.D` and 1 or 2 bytes after: the stdlib rules decide, at the anchor."""
    match = V4_AT.match(key, 5)
    if match is None:
        return None
    first = 5
    while key[first - 1] in DIGITS:
        first -= 1
    quad = key[first : match.end()]
    return None if quad == b"0.0.0.0" else quad.decode("ascii")


def _v6_key(key: bytes) -> str | None:
    return v6_candidate(key[:7], key[7:])


class HyperscanExtractor:
    """Hyperscan finds the candidates (one Python callback each); validation is shared with stdlib."""

    name = "hyperscan"
    context = CONTEXT

    def __init__(self) -> None:
        self._db = _compile()  # one per extractor: a database owns its scratch space
        self._v4_cache: BoundedCache[bytes] = BoundedCache()
        self._v6_cache: BoundedCache[bytes] = BoundedCache()
        self._stdlib = StdlibExtractor()

    def scan(self, buf: Buffer, start: int, end: int) -> dict[str, int]:
        buf, start, end = _padded(buf, start, end, self.context)
        out: dict[str, int] = {}
        if start < end and buf[start - 1] not in SEPARATORS:
            # Not at a line or separator boundary (a caller outside the reader's contract): a
            # candidate may have begun before `start`. Hand the piece up to the first separator
            # to the stdlib engine, which anchors exactly as the contract-less stdlib scan would.
            sep = _SEP_RE.search(buf, start, end)
            cut = sep.end() if sep else end
            out = self._stdlib.scan(buf, start, cut)
            start = cut
        v4: Counter[bytes] = Counter()
        v6: Counter[bytes] = Counter()
        for lo, hi in _windows(buf, start, end):
            if hi > lo:
                found4, found6 = self._scan_window(buf, lo, hi)
                v4.update(found4)
                v6.update(found6)
        self._v4_cache.resolve(v4, _v4_key, out)
        self._v6_cache.resolve(v6, _v6_key, out)
        return out

    def _scan_window(self, buf: Buffer, lo: int, hi: int) -> tuple[list[bytes], list[bytes]]:
        """The candidate keys of buf[lo:hi] (lo is just after a separator), IPv4 then IPv6."""
        ctx = self.context
        v4: list[bytes] = []
        v6: list[bytes] = []
        # A final newline plays the part of the end of the range, so every pattern can end on a byte.
        data = b"".join((buf[lo - ctx : hi], b"\n"))
        add4 = v4.append
        add6 = v6.append

        def on_match(pattern: int, first: int, after: int, _flags: int, _context: object) -> None:
            if first < ctx:
                return  # inside the left context: it ends at or before the separator before `lo`
            if pattern == _V4_ID:
                add4(data[first - 5 : after])
            elif after - first - 2 <= MAX_V6_RUN:
                add6(data[first - 6 : after])

        self._db.scan(data, match_event_handler=on_match)
        return v4, v6
