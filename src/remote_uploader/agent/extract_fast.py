"""The `hyperscan` extraction engine (`pip install 'remote-uploader[fast]'`): the same counts as stdlib.

Importing this module raises ImportError when the `hyperscan` package is missing;
`build_extractor(engine="auto")` then falls back to the standard-library engine.

Hyperscan finds the candidates; one Python callback per match keeps a slice of the block, the
slices are counted with `Counter`, and each distinct one is turned into an address once:

- IPv4: the pattern is the stdlib rules, built from the same pieces (`V4_BEFORE`, `OCTET`,
  `WORD_CLASS`), with the context they look at consumed instead (Hyperscan has no lookbehind):
  the 2 bytes before the first octet and 1 or 2 bytes after the last. Every match is an address;
  the slice is the 17 bytes that end with the match, and the address is its last run of digits
  and dots.
- IPv6: from the first `:` of a run of hex digits, colons and dots to the byte after the run, only
  for runs that could hold an address (a `::`, a dotted quad after a colon, eight groups), so times
  of day never reach Python. The slice starts 6 bytes before the `:`; `v6_candidate`, the stdlib
  judge, decides.

Why the counts are the same: an IPv4 match of either engine is one of the other's (the stdlib
engine skips no anchor that could start an address: a `.` inside an earlier match follows a digit
and a `.`), and both engines take an IPv6 run from its first colon. tests/agent/extract/test_properties.py
compares them on random text, binary junk and every benchmark workload.
"""

from __future__ import annotations

from collections import Counter
from typing import Final

import hyperscan

from remote_uploader.agent.extract import (
    _SEP_RE,
    CONTEXT,
    MAX_V6_RUN,
    OCTET,
    RESOLVE_AT,
    SEPARATORS,
    V4_BEFORE,
    V4_SLASHED,
    WORD_CLASS,
    Buffer,
    StdlibExtractor,
    _padded,
    _windows,
    add_v4_windows,
    v6_candidate,
)

# IPv4: the stdlib rules, with what they check before and after the address consumed instead of
# looked at (Hyperscan has no lookbehind): 2 bytes before the first octet, 1 or 2 after the last.
# A letter and `/` before it, `/` after it: a path segment (the two alternatives never both match).
_QUAD = OCTET + rb"\." + OCTET + rb"\." + OCTET + rb"\." + OCTET
V4_PATTERN: Final = (
    rb"(?:" + V4_BEFORE + _QUAD + rb"(?:[^" + WORD_CLASS + rb".]|\.[^" + WORD_CLASS + rb"])"
    + rb"|" + V4_SLASHED + _QUAD + rb"/)"
)
#: Bytes kept per IPv4 match, ending where it ends: the longest address and 2 bytes after it.
V4_KEY: Final = 17
# IPv6: runs from their first `:` that could hold an address (a `::`, a dotted quad after a colon,
# eight groups), to the byte after the run; `v6_candidate` judges them as it does for stdlib.
_RUN = rb"[0-9A-Fa-f:.]"
V6_PATTERN: Final = (
    rb":(?:" + _RUN + rb"*:)?"
    rb"(?::|[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]|[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){6})"
    + _RUN + rb"*[^0-9A-Fa-f:.]"
)


def _compile(pattern: bytes, flags: int) -> hyperscan.Database:
    db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    db.compile(expressions=[pattern], ids=[0], flags=[flags])
    return db


class HyperscanExtractor:
    """Hyperscan finds the candidates (one Python callback each); the rules are stdlib's."""

    name = "hyperscan"
    context = CONTEXT

    def __init__(self) -> None:
        # One database per pattern, each with a callback that does one thing: 10% faster than one
        # database and a callback that asks which pattern matched. Only IPv6 needs where its match
        # starts (its left context); start-of-match tracking on IPv4 would cost a third more.
        # One pair per extractor: a database owns its scratch space.
        self._v4_db = _compile(V4_PATTERN, 0)
        self._v6_db = _compile(V6_PATTERN, hyperscan.HS_FLAG_SOM_LEFTMOST)
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
                if len(v4) + len(v6) > RESOLVE_AT:
                    self._resolve(v4, v6, out)
        self._resolve(v4, v6, out)
        return out

    @staticmethod
    def _resolve(v4: Counter[bytes], v6: Counter[bytes], out: dict[str, int]) -> None:
        add_v4_windows(v4, out)
        get = out.get
        for key, n in v6.items():
            ip = v6_candidate(key[:7], key[7:])
            if ip is not None:
                out[ip] = get(ip, 0) + n
        v4.clear()
        v6.clear()

    def _scan_window(self, buf: Buffer, lo: int, hi: int) -> tuple[list[bytes], list[bytes]]:
        """The candidate keys of buf[lo:hi] (lo is just after a separator), IPv4 then IPv6."""
        ctx = self.context
        v4: list[bytes] = []
        v6: list[bytes] = []
        # A final newline plays the part of the end of the range, so every pattern can end on a byte.
        data = b"".join((buf[lo - ctx : hi], b"\n"))
        add4 = v4.append
        add6 = v6.append
        key_len, max_run = V4_KEY, MAX_V6_RUN  # closure cells: cheaper than globals, once per match

        # A match ending at or before `ctx` lies in the left context: it ends at or before the
        # separator just before `lo`, and its range counted it.
        def on_v4(_id: int, _first: int, after: int, _flags: int, _context: object) -> None:
            if after > ctx:
                add4(data[after - key_len : after])

        def on_v6(_id: int, first: int, after: int, _flags: int, _context: object) -> None:
            if after > ctx and after - first - 2 <= max_run:
                add6(data[first - 6 : after])

        self._v4_db.scan(data, match_event_handler=on_v4)
        self._v6_db.scan(data, match_event_handler=on_v6)
        return v4, v6
