"""Bytes -> IP occurrences: the extraction stage of the agent (rules: docs/extraction.md).

The reader hands over whole lines of a large block, `scan(buf, start, end)`, with `context` real
bytes (or newline padding) before `start`. The hot path does no per-line Python work: two `re`
passes per window of the block, each anchored on a literal so that sre's fast literal search
runs in C, `findall` building the results in C and `collections.Counter` counting them in C;
Python only sees each *distinct* result once.

- IPv4 (the hot pass): anchored on the first `.`; every rule is in the pattern (lookbehinds after
  the anchor read the first octet and what precedes it), and each result is the 15 bytes that end
  with the address, so turning a result into an address is a `translate` and a `rpartition`.
- IPv6: anchored on the first `:` of a run of hex digits, colons and dots, only when the run could
  hold an address (so times of day cost one failed test); each result is (7 bytes of left context,
  the run and the byte after it), judged by `validate_v6`, whose expensive part is cached.

Splitting: a separator byte (`SEPARATORS`) is never inside a match, and no rule looks to the right
past one; on the left the patterns only read real bytes of the file. So cutting the input after
any separator, and scanning the pieces with their left context, gives the same counts as one scan
(tests/agent/extract/test_properties.py checks it).

Who owns what, so that nothing is counted twice: the IPv4 pass skips a dotted quad that follows
`X:` where X is a hex digit or `:`; the IPv6 pass decides those (`::ffff:1.2.3.4` is a mapped
address, `64:ff9b::1.2.3.4` a NAT64 one, `src:1.2.3.4` a label followed by an IPv4 address).

The `hyperscan` engine (extract_fast.py) builds its IPv4 pattern from the same pieces (`V4_BEFORE`,
`OCTET`, `WORD_CLASS`) and judges IPv6 candidates with the same `v6_candidate`; a test compares
the two engines on the cases, random text, binary junk and every benchmark workload.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Final, Protocol, TypeVar

from remote_uploader.protocol import Network, canonical_ip

Buffer = bytes | bytearray | memoryview

#: Bytes of real left context `scan` may read before `start` (the IPv4 window reaches 13 back).
CONTEXT: Final = 16
#: Distinct candidates (and excluded-or-not answers) remembered before a cache is emptied.
CACHE_LIMIT: Final = 100_000
#: `scan` works through a block in windows of about this size (cut after a separator), so the
#: lists `findall` builds stay small even when every line is an address...
WINDOW: Final = 256 * 1024
#: ...and turns what it counted into addresses whenever it holds more distinct matches than this.
RESOLVE_AT: Final = 16_384


class Extractor(Protocol):
    """What the reader codes against; every engine and the regex option implement it."""

    context: int  # bytes of left context the scan may look at before `start`

    def scan(self, buf: Buffer, start: int, end: int) -> dict[str, int]:
        """Occurrence counts of canonical IPs in buf[start:end]."""
        ...


# --- Byte classes ------------------------------------------------------------------------------

def _bytes_of(chars: str) -> frozenset[int]:
    return frozenset(chars.encode("ascii"))


DIGITS: Final = _bytes_of("0123456789")
HEX: Final = DIGITS | _bytes_of("abcdefABCDEF")
_HEX_DIGITS: Final = b"0123456789abcdefABCDEF"
LETTERS: Final = frozenset(range(65, 91)) | frozenset(range(97, 123))
NON_ASCII: Final = frozenset(range(128, 256))
#: Bytes an address must not be glued to: a letter, digit or `_` makes it part of a word, and any
#: non-ASCII byte is taken as part of a (UTF-8 or binary) word too.
WORD: Final = LETTERS | DIGITS | _bytes_of("_") | NON_ASCII
#: Inside JSON strings `\n`, `\t`, `\r` end a word even though `n`, `t`, `r` are letters.
ESCAPES: Final = _bytes_of("ntr")
BACKSLASH: Final = ord("\\")

#: Bytes that are never part of an address, a port, a zone id, or the context validation reads:
#: ASCII whitespace and control bytes, and the punctuation ``!"#$&'()*+,;<>?\\^`{|}~``.
#: Not separators: letters, digits, bytes >= 0x80, and ``. : % _ - [ ] / @ =``.
SEPARATORS: Final = frozenset(range(0, 33)) | frozenset({127}) | _bytes_of("!\"#$&'()*+,;<>?\\^`{|}~")
_SEP_RE: Final = re.compile(b"[" + b"".join(re.escape(bytes([b])) for b in sorted(SEPARATORS)) + b"]")
_SEP_MARK: Final = bytes(10 if b in SEPARATORS else 0 for b in range(256))  # for translate()


def is_separator(byte: int) -> bool:
    """True when the reader may cut a long line after `byte` without changing any count."""
    return byte in SEPARATORS


def last_cut(buf: Buffer, start: int, end: int) -> int:
    """The largest p in (start, end] with buf[p-1] a separator, or `start` if there is none.

    Searches backwards in 64 KiB steps, so a separator near the end (the usual case) costs little.
    """
    hi = end
    while hi > start:
        lo = max(start, hi - 65536)
        found = bytes(buf[lo:hi]).translate(_SEP_MARK).rfind(b"\n")
        if found >= 0:
            return lo + found + 1
        hi = lo
    return start


try:
    from remote_uploader.agent._native import count_lines as _native_count_lines
except ImportError:  # not built here (no compiler at install time): bytes.count does the same
    _native_count_lines = None  # type: ignore[assignment]


def count_lines(buf: Buffer, start: int, end: int) -> int:
    """Newlines in buf[start:end]: the C core's vectorised count where it is built, else bytes.count.

    Not an extraction rule (the answer is the same either way), so `agent.engine` does not choose it.
    """
    if _native_count_lines is None:
        return buf.count(b"\n", start, end)
    return _native_count_lines(buf, start, end)


def _windows(buf: Buffer, start: int, end: int) -> Iterator[tuple[int, int]]:
    """Cut [start, end) after separators into pieces of about WINDOW bytes."""
    lo = start
    while end - lo > WINDOW:
        sep = _SEP_RE.search(buf, lo + WINDOW, end)
        if sep is None:
            break
        yield lo, sep.end()
        lo = sep.end()
    yield lo, end


# --- IPv4: the rules are in the pattern ---------------------------------------------------------
#
# The IPv4 pass is the hot one (one or more addresses per line), so every IPv4 rule is written
# into the pattern and the scan's keys are the addresses themselves, with no Python validation.
# Anchor: the first `.` (sre's literal search). Then, checked in this order:
#   - the next bytes look like `B.C.D` (a cheap lookahead that most dots in a log fail);
#   - lookbehind: the first octet A, 1 to 3 digits with no leading zero and <= 255, preceded by
#     P (and Q before it) such that A is not glued to a word: P is a boundary byte; or `\n`, `\t`,
#     `\r` (escapes in JSON strings); or `-` / `/` not after a letter or `_` (`libfoo-2.1.0.5` and
#     `Chrome/120.0.0.0` are versions, `1.2.3.4-1.2.3.9` a range, `http://1.2.3.4` a URL); or `:`
#     not after a hex digit or `:` (after one, the IPv6 pass owns it: `::ffff:1.2.3.4`);
#   - B, C, D: decimal octets, no leading zero, <= 255;
#   - on the right: no word byte, and no `.` followed by one (`1.2.3.4.5`, `4.3.2.1.in-addr`), so
#     a sentence-final `1.2.3.4.` still counts;
#   - or else: a letter (or `_`) and `/` before it, and `/` right after it: a path segment between
#     slashes (Asterisk's `IPV4/UDP/203.0.113.99/5070`), where a version (`Chrome/120.0.0.0 `)
#     would be followed by a space or the end.
#: The bytes of a word, as the body of a regex character class.
WORD_CLASS: Final = rb"0-9A-Za-z_\x80-\xff"
#: The two bytes before the first octet (Q, P), in the order of the rules above.
V4_BEFORE: Final = (
    rb"(?:[\x00-\xff][^" + WORD_CLASS + rb".:/\-]"
    rb"|\\[ntr]"
    rb"|[^A-Za-z_\x80-\xff][\-/]"
    rb"|[^0-9A-Fa-f:]:)"
)
OCTET: Final = rb"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_FIRST_OCTET: Final = (
    rb"(?:(?<=" + V4_BEFORE + rb"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9])\.)"
    rb"|(?<=" + V4_BEFORE + rb"[1-9][0-9]\.)"
    rb"|(?<=" + V4_BEFORE + rb"[0-9]\.))"
)
#: A letter (or `_`) and `/` before the first octet: an address only with `/` right after it.
V4_SLASHED: Final = rb"[A-Za-z_\x80-\xff]/"
_FIRST_OCTET_SLASHED: Final = (
    rb"(?:(?<=" + V4_SLASHED + rb"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9])\.)"
    rb"|(?<=" + V4_SLASHED + rb"[1-9][0-9]\.)"
    rb"|(?<=" + V4_SLASHED + rb"[0-9]\.))"
)
_REST: Final = OCTET + rb"\." + OCTET + rb"\." + OCTET
V4_RULES: Final = (
    rb"\.(?=[0-9]{1,3}\.[0-9]{1,3}\.[0-9])(?:"
    + _FIRST_OCTET + _REST + rb"(?![" + WORD_CLASS + rb"]|\.[" + WORD_CLASS + rb"])"
    + rb"|" + _FIRST_OCTET_SLASHED + _REST + rb"(?=/))"
)
#: The scan's single group is the 15 bytes that end where the match ends: they hold the whole
#: address (`255.255.255.255`), and one bytes object per match is half the cost of a tuple.
V4_SCAN: Final = V4_RULES + rb"(?<=([\x00-\xff]{15}))"
# Everything but digits and dots becomes a space: in a window, the address follows the last space.
_BLANK_ALL_BUT_QUAD: Final = bytes(b if b in DIGITS or b == 0x2E else 0x20 for b in range(256))


def add_v4_windows(windows: Counter[bytes], out: dict[str, int]) -> None:
    """Add to `out` the addresses of IPv4 windows: bytes that end with an address, or with an address
    and the 1 or 2 bytes after it (not digits), and have no digit or `.` right before it."""
    blank = _BLANK_ALL_BUT_QUAD
    get = out.get
    for window, n in windows.items():
        quad = window.translate(blank).rstrip(b" .").rpartition(b" ")[2]
        if quad != b"0.0.0.0":
            ip = quad.decode("ascii")
            out[ip] = get(ip, 0) + n


# --- IPv6: found by the pattern, judged in Python -----------------------------------------------

def _octets_ok(text: bytes) -> bool:
    """Four decimal octets, none with a leading zero (ambiguous: octal for inet_aton), each <= 255."""
    parts = text.split(b".")
    return len(parts) == 4 and all(
        0 < len(p) <= 3 and (p[0] != 48 or len(p) == 1) and int(p) <= 255 for p in parts
    )


def _ends_word(head: bytes) -> bool:
    """Is the last byte of `head` (the byte left of a candidate) a boundary, rather than part of a word?"""
    p = head[-1]
    if p not in WORD and p != 0x2E:  # "."
        return True
    # `\n2001:db8::1` inside a JSON string: the letter is part of an escape, not of a word.
    return p in ESCAPES and len(head) >= 2 and head[-2] == BACKSLASH


# After the last colon before an embedded IPv4 address: the address, an optional port, or a colon
# that ends it (`from ::FFFF:192.0.2.3: Invalid`).
_V4_TAIL: Final = re.compile(rb"([0-9]{1,3}(?:\.[0-9]{1,3}){3})(?::[0-9]{0,5})?")
# What may follow a plain IPv6 address in the run: a port of 5 digits (no hex group has 5 digits:
# HAProxy's `2001:db8::1234:58430`), or a colon that ends it. Both only after a group.
_V6_AFTER: Final = re.compile(rb"(?<=[0-9A-Fa-f]):(?:[0-9]{5})?\Z")
#: Longest run after the anchor colon worth validating: `ffff:...:255.255.255.255:65535.` fits.
MAX_V6_RUN: Final = 56


def _v6_text(text: bytes) -> str | None:
    """An IPv6 address, possibly ending in an embedded IPv4 address and a port (`::ffff:1.2.3.4:80`)."""
    dot = text.find(b".")
    if dot < 0:
        ip = canonical_ip(text.decode("ascii"))
        if ip is None and (after := _V6_AFTER.search(text)) is not None:
            ip = canonical_ip(text[: after.start()].decode("ascii"))
        return ip
    colon = text.rfind(b":", 0, dot)
    tail = _V4_TAIL.fullmatch(text, colon + 1) if colon >= 0 else None
    if tail is None or not _octets_ok(tail[1]):
        return None
    return canonical_ip((text[: colon + 1] + tail[1]).decode("ascii"))


def validate_v6(before: bytes, run: bytes, after: bytes) -> str | None:
    """A candidate from the IPv6 pass -> its canonical address, or None.

    before: 6 bytes ending with the first group (if any), then the anchor `:` (7 bytes in all);
    run: the hex digits, colons and dots after the anchor (at most MAX_V6_RUN);
    after: the byte after the run, if any.
    """
    if after and after[0] in WORD:
        return None
    head = before[:-1].rstrip(_HEX_DIGITS)
    group = before[len(head) : -1]
    return _v6_decide(group, not head or len(group) > 4 or not _ends_word(head), run)


@functools.lru_cache(maxsize=1 << 15)
def _v6_decide(group: bytes, glued: bool, run: bytes) -> str | None:
    """`group` (hex digits right before the anchor `:`), whether it is glued to a word, the run after."""
    text = (group + b":" + run).rstrip(b".")  # a sentence-final dot (or an ellipsis), as for IPv4
    dot = text.find(b".")
    if dot >= 0 and text.rfind(b":", 0, dot) == len(group):
        # One colon before an IPv4 address: `src:1.2.3.4` is a label and an address. With no
        # hex digit before the colon the IPv4 pass owns the address: do not count it twice.
        tail = _V4_TAIL.fullmatch(text, len(group) + 1)
        if not group or tail is None or not _octets_ok(tail[1]):
            return None
        return canonical_ip(tail[1].decode("ascii"))
    if not glued:
        return _v6_text(text)
    # Glued to a word on the left: `host:2001:db8::1` is a label, a colon and an address.
    if run.startswith(b":"):
        return None
    return _v6_text(run.rstrip(b"."))


RUN_BYTES: Final = HEX | _bytes_of(":.")


def v6_candidate(before: bytes, rest: bytes) -> str | None:
    """A match of the IPv6 scan: 7 bytes ending with the anchor `:`, then the run after it and the
    byte after the run (absent at the end of the range). A run longer than MAX_V6_RUN, cut there,
    still ends in a run byte and is refused."""
    if rest and rest[-1] not in RUN_BYTES:
        return validate_v6(before, rest[:-1], rest[-1:])
    if len(rest) > MAX_V6_RUN:
        return None
    return validate_v6(before, rest, b"")


def normalize_capture(text: str) -> str | None:
    """Text captured by a user regex (`[2001:db8::1]:443`, `1.2.3.4:80`, `fe80::1%eth0`) -> canonical."""
    text = text.strip()
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            return None
        text = text[1:close]
    text = text.split("%", 1)[0].split("/", 1)[0]
    if "." in text:
        head, _, port = text.rpartition(":")
        if "." not in port and port.isascii() and port.isdigit():
            text = head  # `1.2.3.4:80`, `::ffff:1.2.3.4:8080`
    if not text.isascii():
        return None
    return canonical_ip(text)


# --- Engines -------------------------------------------------------------------------------------

K = TypeVar("K", bound=Hashable)
_MISSING: Final = "\0 not cached"  # never a canonical address


class BoundedCache(dict[K, "str | None"]):
    """Candidate -> canonical address or None; emptied when it grows past CACHE_LIMIT entries."""

    def resolve(self, counts: dict[K, int], validate: Callable[[K], str | None], out: dict[str, int]) -> None:
        """Add the counts of `counts` (candidate -> occurrences) to `out` under their canonical addresses."""
        get = self.get
        for key, n in counts.items():
            ip = get(key, _MISSING)
            if ip is _MISSING:
                if len(self) >= CACHE_LIMIT:
                    self.clear()
                ip = self[key] = validate(key)
            if ip is not None:
                out[ip] = out.get(ip, 0) + n


def _padded(buf: Buffer, start: int, end: int, context: int) -> tuple[Buffer, int, int]:
    """Check the bounds; give a buffer with `context` bytes before `start` (newlines if the file starts there)."""
    if not 0 <= start <= end <= len(buf):
        raise ValueError(f"scan range [{start}, {end}) is outside a buffer of {len(buf)} bytes")
    if start >= context:
        return buf, start, end
    pad = context - start
    return b"\n" * pad + bytes(buf[:end]), context, end + pad


_RUN: Final = rb"[0-9A-Fa-f:.]"
# A run after a `:` can only hold an address if it has a `::`, a dotted quad right after a colon,
# or six more colons. Each test holds for a run whenever it holds for a part of it that follows a
# later colon; so when the first colon of a run fails, every later one fails too and no anchor
# moves (a run that fails has at most 6 colons: at most 7 tries, each linear in the run).
_QUAD: Final = rb"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]"
PLAUSIBLE_V6: Final = rb"(?=:|%s|(?:[0-9A-Fa-f.]*+:){6}|%s*?:(?::|%s))" % (_QUAD, _RUN, _QUAD)
# Two shortcuts to the same answer as the test above, for the colons of a log that are not in
# addresses (they only save time): a colon with another one at most 2 run bytes before it is not
# the first of its run; a time of day (`12:34`, `12:34:56`, `12:34:56.789`) fails the test.
_LATER_COLON: Final = rb"(?<!::)(?<!:[0-9A-Fa-f.]:)(?<!:[0-9A-Fa-f.]{2}:)"
_TIME_OF_DAY: Final = rb"(?![0-9]{2}:[0-9]{2}(?::[0-9]{2})?(?:[.,][0-9]+)?[^0-9A-Fa-f:.])"
# IPv6, anchored on the first `:` of a run of hex digits, colons and dots. Groups: 7 bytes of left
# context ending with the anchor; the run (at most MAX_V6_RUN bytes) and the byte after it. The
# rest of a longer run is consumed (only then does the group end in a run byte), so no later
# colon of it becomes an anchor.
V6_SCAN: Final = (
    rb":(?=%s)%s%s%s(?<=([\x00-\xff]{7}))(%s{0,%d}+[\x00-\xff]?)(?:(?<=%s)%s*+)?"
    % (_RUN, _LATER_COLON, _TIME_OF_DAY, PLAUSIBLE_V6, _RUN, MAX_V6_RUN, _RUN, _RUN)
)


@functools.cache
def _scan_patterns() -> tuple[re.Pattern[bytes], re.Pattern[bytes]]:
    """The stdlib engine's two patterns, compiled when that engine is first used.

    Not at import: the native engine has these rules in C and never matches with them, and
    compiling both took about 3 ms of every start-up of the agent and of each worker process.
    """
    return re.compile(V4_SCAN), re.compile(V6_SCAN)


class StdlibExtractor:
    """The default engine: two `re.findall` passes per window, counted in C, resolved per distinct key."""

    name = "stdlib"
    context = CONTEXT

    def scan(self, buf: Buffer, start: int, end: int) -> dict[str, int]:
        buf, start, end = _padded(buf, start, end, self.context)
        out: dict[str, int] = {}
        v4: Counter[bytes] = Counter()
        v6: Counter[tuple[bytes, bytes]] = Counter()
        v4_scan, v6_scan = _scan_patterns()
        for lo, hi in _windows(buf, start, end):
            v4.update(v4_scan.findall(buf, lo, hi))
            v6.update(v6_scan.findall(buf, lo, hi))
            if len(v4) + len(v6) > RESOLVE_AT:
                self._resolve(v4, v6, out)
        self._resolve(v4, v6, out)
        return out

    @staticmethod
    def _resolve(v4: Counter[bytes], v6: Counter[tuple[bytes, bytes]], out: dict[str, int]) -> None:
        add_v4_windows(v4, out)
        get = out.get
        for (before, rest), n in v6.items():
            ip = v6_candidate(before, rest)
            if ip is not None:
                out[ip] = get(ip, 0) + n
        v4.clear()
        v6.clear()


class RegexExtractor:
    """Only the addresses a user regex captures in its group `ip` (per line: not the hot path)."""

    name = "regex"
    context = CONTEXT
    per_line = True  # a match needs the whole line: an unterminated one is not cut at a separator

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern
        self._cache: BoundedCache[str] = BoundedCache()

    def scan(self, buf: Buffer, start: int, end: int) -> dict[str, int]:
        buf, start, end = _padded(buf, start, end, self.context)
        found: Counter[str] = Counter()
        text = bytes(buf[start:end]).decode("utf-8", "surrogateescape")
        finditer = self.pattern.finditer
        for line in text.replace("\r\n", "\n").split("\n"):
            found.update(ip for m in finditer(line) if (ip := m.group("ip")) is not None)
        out: dict[str, int] = {}
        self._cache.resolve(found, normalize_capture, out)
        return out


class ExcludingExtractor:
    """Wraps an extractor and drops addresses inside any of the excluded networks (checked once per address)."""

    def __init__(self, inner: Extractor, networks: Sequence[Network]) -> None:
        self.inner = inner
        self.networks = tuple(networks)
        self.context = inner.context
        self.name = getattr(inner, "name", "custom")
        self.per_line = getattr(inner, "per_line", False)
        self._excluded: dict[str, bool] = {}

    def _is_excluded(self, ip: str) -> bool:
        addr = ipaddress.ip_address(ip)
        return any(addr.version == net.version and addr in net for net in self.networks)

    def scan(self, buf: Buffer, start: int, end: int) -> dict[str, int]:
        counts = self.inner.scan(buf, start, end)
        excluded = self._excluded
        for ip in list(counts):
            hit = excluded.get(ip)
            if hit is None:
                if len(excluded) >= CACHE_LIMIT:
                    excluded.clear()
                hit = excluded[ip] = self._is_excluded(ip)
            if hit:
                del counts[ip]
        return counts


def scan_bytes(extractor: Extractor, data: bytes) -> dict[str, int]:
    """Counts for a whole in-memory text (tests, `test` samples): as if `data` were a file."""
    return extractor.scan(b"\n" * extractor.context + data, extractor.context, extractor.context + len(data))
