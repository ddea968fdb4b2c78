"""Invariants of extraction, checked on generated input (hypothesis).

- Cutting the input after any set of separator bytes, and scanning each piece with its real left
  context (as the reader does with its blocks and long lines), gives the counts of one scan.
- Scanning a file line by line, each line on its own, gives the counts of one scan.
- The stdlib, native and hyperscan engines give identical counts, on random text, binary junk,
  long runs and lines, and every generated benchmark workload (every suite here also runs on each).
- Whatever the bytes, a scan returns canonical addresses and positive counts, and never raises.
- A file written in pieces cut at any byte, read after each piece (nothing counted that a later
  byte could change), gives the counts of reading it whole.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from remote_uploader.agent.extract import CONTEXT, SEPARATORS, Extractor, count_lines, last_cut, scan_bytes
from remote_uploader.agent.extractors import build_extractor
from remote_uploader.agent.source import BlockReader
from remote_uploader.protocol import is_canonical_ip
from tests.helpers.engines import ENGINES, HAVE_HYPERSCAN, HAVE_NATIVE, needs_hyperscan, needs_native

# Pieces that make the rules work hard when glued together at random.
FRAGMENTS = [
    b"1.2.3.4", b"10.0.0.1", b"255.255.255.255", b"256.1.1.1", b"010.1.1.1", b"0.0.0.0", b"1.2.3",
    b"2001:db8::", b"::", b"::ffff:", b"::1", b"fe80::1%eth0", b"1:2:3:4:5:6:7:8", b"64:ff9b::",
    b"ab:", b"c:", b"12:34:56", b"12.5:", b"Chrome/", b"v", b"libfoo-", b"http://", b"[", b"]:443",
    b":8080", b"/8", b"-", b".", b":", b"%", b"_", b"\\n", b"\\", b"n", b"x", b"F", b"\xc3\xa9",
    b"\xff", b"\x00", b" ", b"\n", b",", b'"', b"=", b"@",
    b"UDP/", b"/", b":50122", b"::FFFF:", b": ",
]
hexish = st.text("0123456789.:abcf", max_size=6).map(str.encode)
pieces = st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=3), hexish)
fragment_soup = st.lists(pieces, max_size=40).map(b"".join)
any_bytes = st.one_of(fragment_soup, st.binary(max_size=300))


def scan_pieces(extractor: Extractor, data: bytes, cuts: list[int]) -> dict[str, int]:
    """Scan `data` as a file, cut at `cuts` (offsets into data), each piece with its left context."""
    buf = b"\n" * CONTEXT + data
    total: dict[str, int] = {}
    edges = [0, *sorted(set(cuts)), len(data)]
    for lo, hi in itertools.pairwise(edges):
        for ip, n in extractor.scan(buf, CONTEXT + lo, CONTEXT + hi).items():
            total[ip] = total.get(ip, 0) + n
    return total


@pytest.fixture(scope="module", params=ENGINES)
def extractor(request: pytest.FixtureRequest) -> Extractor:
    return build_extractor(engine=request.param)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=any_bytes, picks=st.lists(st.integers(min_value=0, max_value=10**6), max_size=8))
def test_cutting_after_separators_never_changes_the_counts(extractor: Extractor, data: bytes, picks: list[int]) -> None:
    cut_points = [i + 1 for i, byte in enumerate(data) if byte in SEPARATORS]
    cuts = [cut_points[p % len(cut_points)] for p in picks] if cut_points else []
    assert scan_pieces(extractor, data, cuts) == scan_bytes(extractor, data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=any_bytes)
def test_cutting_at_every_separator_never_changes_the_counts(extractor: Extractor, data: bytes) -> None:
    cuts = [i + 1 for i, byte in enumerate(data) if byte in SEPARATORS]
    assert scan_pieces(extractor, data, cuts) == scan_bytes(extractor, data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(fragment_soup.map(lambda b: b.replace(b"\n", b" ")), max_size=12))
def test_scanning_line_by_line_gives_the_counts_of_one_scan(extractor: Extractor, lines: list[bytes]) -> None:
    whole = b"".join(line + b"\n" for line in lines)
    by_line: dict[str, int] = {}
    for line in lines:
        for ip, n in scan_bytes(extractor, line + b"\n").items():
            by_line[ip] = by_line.get(ip, 0) + n
    assert by_line == scan_bytes(extractor, whole)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=any_bytes)
def test_any_bytes_give_canonical_addresses_and_positive_counts(extractor: Extractor, data: bytes) -> None:
    counts = scan_bytes(extractor, data)
    assert all(is_canonical_ip(ip) and n > 0 for ip, n in counts.items())


@needs_hyperscan
@settings(max_examples=600, deadline=None)
@given(data=any_bytes)
def test_hyperscan_and_stdlib_agree_on_any_bytes(data: bytes) -> None:
    assert scan_bytes(HYPERSCAN, data) == scan_bytes(STDLIB, data)


@needs_hyperscan
@settings(max_examples=200, deadline=None)
@given(data=fragment_soup, start=st.integers(min_value=0, max_value=400))
def test_hyperscan_and_stdlib_agree_when_a_scan_starts_mid_word(data: bytes, start: int) -> None:
    """Outside the reader's contract (a range that does not start after a separator) they still agree."""
    buf = b"\n" * CONTEXT + data
    begin = CONTEXT + start % (len(data) + 1)
    assert HYPERSCAN.scan(buf, begin, len(buf)) == STDLIB.scan(buf, begin, len(buf))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=any_bytes)
def test_bytes_bytearray_and_memoryview_scan_alike(extractor: Extractor, data: bytes) -> None:
    buf = b"\n" * CONTEXT + data
    expected = extractor.scan(buf, CONTEXT, len(buf))
    assert extractor.scan(bytearray(buf), CONTEXT, len(buf)) == expected
    assert extractor.scan(memoryview(buf), CONTEXT, len(buf)) == expected


@needs_native
@settings(max_examples=600, deadline=None)
@given(data=any_bytes)
def test_native_and_stdlib_agree_on_any_bytes(data: bytes) -> None:
    assert scan_bytes(NATIVE, data) == scan_bytes(STDLIB, data)


@needs_native
@settings(max_examples=300, deadline=None)
@given(data=fragment_soup, start=st.integers(min_value=0, max_value=400), end=st.integers(min_value=0, max_value=400))
def test_native_and_stdlib_agree_on_any_range_even_one_cut_mid_word(data: bytes, start: int, end: int) -> None:
    """Outside the reader's contract too: a range that starts or ends inside a word or an address,
    with the left context the C core may read before it and nothing after it."""
    buf = b"\n" * CONTEXT + data
    lo, hi = sorted((CONTEXT + start % (len(data) + 1), CONTEXT + end % (len(data) + 1)))
    assert NATIVE.scan(buf, lo, hi) == STDLIB.scan(buf, lo, hi)


@needs_native
@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=3000) | fragment_soup, start=st.integers(min_value=0), end=st.integers(min_value=0))
def test_native_scan_counting_gives_the_scan_and_the_line_count_of_any_range(data: bytes, start: int,
                                                                                 end: int) -> None:
    """The one-pass scan (counts and newlines together, what `scan_parts` uses) against the two
    passes it replaces, on ranges of every length (the 32-byte steps and the byte loop after them)."""
    buf = b"\n" * CONTEXT + data
    lo, hi = sorted((CONTEXT + start % (len(data) + 1), CONTEXT + end % (len(data) + 1)))
    assert NATIVE.scan_counting(buf, lo, hi) == (STDLIB.scan(buf, lo, hi), buf.count(b"\n", lo, hi))  # type: ignore[attr-defined]


# Runs near the C core's limits: an IPv6 run of exactly MAX_V6_RUN bytes and one longer, octets of
# 4 digits, dotted and colon sequences longer than any address.
long_runs = st.lists(
    st.one_of(
        st.sampled_from([b"1:" * 28, b"1:" * 29, b"::" * 30, b"ffff:" * 12, b"1234.", b"1.2.3.4." * 10,
                         b"255.255.255.255", b"::ffff:255.255.255.255:65535", b"." * 60, b":" * 60]),
        pieces,
    ),
    max_size=20,
).map(b"".join)


@needs_native
@settings(max_examples=400, deadline=None)
@given(data=long_runs)
def test_native_and_stdlib_agree_on_runs_at_and_past_the_length_limits(data: bytes) -> None:
    assert scan_bytes(NATIVE, data) == scan_bytes(STDLIB, data)


@needs_native
@settings(max_examples=30, deadline=None)
@given(seed=st.binary(min_size=1, max_size=64), repeat=st.integers(min_value=1000, max_value=40_000))
def test_native_never_crashes_on_huge_lines_of_junk_and_nuls(seed: bytes, repeat: int) -> None:
    """A line of up to 2.5 MB without a newline, built from junk, NULs and address pieces."""
    data = (seed + b"\x00" + b"1.2.3.4" + b"\x00::ffff:").__mul__(repeat // 8 + 1)[: repeat * 64]
    assert scan_bytes(NATIVE, data) == scan_bytes(STDLIB, data)


STDLIB = build_extractor(engine="stdlib")
HYPERSCAN = build_extractor(engine="hyperscan") if HAVE_HYPERSCAN else STDLIB
NATIVE = build_extractor(engine="native") if HAVE_NATIVE else STDLIB


# --- Real files: the generated workloads ---------------------------------------------------------

WORKLOAD_SIZE = 400_000


@pytest.fixture(scope="module")
def workloads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from bench.workloads import WORKLOADS, generate

    out = tmp_path_factory.mktemp("workloads")
    return {name: generate(name, WORKLOAD_SIZE, out).log for name in WORKLOADS}


def read_like_the_reader(extractor: Extractor, path: Path, block: int) -> dict[str, int]:
    """Blocks of `block` bytes, cut at the last newline (or, in a longer line, the last separator)."""
    data = path.read_bytes()
    total: dict[str, int] = {}
    buf = b"\n" * CONTEXT + data
    start, size = CONTEXT, len(buf)
    while start < size:
        hi = min(start + block, size)
        cut = buf.rfind(b"\n", start, hi) + 1 if hi < size else size
        if cut <= start:
            cut = last_cut(buf, start, hi)
        if cut <= start:
            cut = hi  # no separator at all in a whole block: cut anyway (counts may differ there)
        for ip, n in extractor.scan(buf, start, cut).items():
            total[ip] = total.get(ip, 0) + n
        start = cut
    return total


@pytest.mark.parametrize("name", ["nginx", "sshd", "dense", "sparse"])
def test_each_workload_scans_to_its_expected_counts_in_any_block_size(
    extractor: Extractor, workloads: dict[str, Path], name: str
) -> None:
    path = workloads[name]
    expected = json.loads(path.with_suffix(".json").read_text())["counts"]
    assert scan_bytes(extractor, path.read_bytes()) == expected
    assert read_like_the_reader(extractor, path, 4096) == expected
    assert read_like_the_reader(extractor, path, 100) == expected  # shorter than a line: cut at separators


# --- a file that grows while it is read (issue 9, hole 5; extraction-cases row 38) ---------------


def read_while_growing(extractor: Extractor, path: Path, pieces: list[bytes], block_size: int = 1024) -> dict[str, int]:
    """Counts of a file written in `pieces`, read after each write as `forever` reads a live file
    whose writer paused (nothing may be counted that the next byte could change), then once more
    when it can no longer grow (rotated away, deleted)."""
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)
    total: dict[str, int] = {}

    def drain(can_grow: bool) -> None:
        while True:
            chunk = reader.next_chunk()
            if chunk is None and reader.pending:
                chunk = reader.take_partial(whole=not can_grow)
            if chunk is None:
                return
            if chunk.scan:
                for ip, n in extractor.scan(chunk.buf, chunk.start, chunk.end).items():
                    total[ip] = total.get(ip, 0) + n

    try:
        reader = BlockReader(fd, 0, block_size, extractor.context)
        for piece in pieces:
            with path.open("ab") as handle:
                handle.write(piece)
            drain(can_grow=True)
        drain(can_grow=False)
    finally:
        os.close(fd)
    return total


def _split(data: bytes, picks: list[int]) -> list[bytes]:
    edges = [0, *sorted({p % (len(data) + 1) for p in picks}), len(data)]
    return [data[lo:hi] for lo, hi in itertools.pairwise(edges)]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=any_bytes, picks=st.lists(st.integers(min_value=0, max_value=10**6), max_size=6))
def test_a_file_written_in_pieces_cut_at_any_byte_counts_as_if_read_whole(
        extractor: Extractor, tmp_path_factory: pytest.TempPathFactory, data: bytes, picks: list[int]) -> None:
    path = tmp_path_factory.mktemp("grow") / "app.log"
    assert read_while_growing(extractor, path, _split(data, picks)) == scan_bytes(extractor, data)


LINE = b"a 192.0.2.1 client=10.0.0.123 [2001:db8::1]:443 via ::FFFF:198.51.100.61: x/203.0.113.9/5070\n"


def test_a_line_cut_at_every_byte_counts_each_address_once_when_complete(
        extractor: Extractor, tmp_path: Path) -> None:
    """Row 38: `client=10.0.0.1`, then `23 GET /`, counts 10.0.0.123, never 10.0.0.1."""
    whole = scan_bytes(extractor, LINE)
    assert whole == {"192.0.2.1": 1, "10.0.0.123": 1, "2001:db8::1": 1, "198.51.100.61": 1, "203.0.113.9": 1}
    for cut in range(len(LINE) + 1):
        got = read_while_growing(extractor, tmp_path / f"cut{cut}.log", [LINE[:cut], LINE[cut:]])
        assert got == whole, f"cut after {LINE[:cut]!r}"


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=3000) | fragment_soup, a=st.integers(min_value=0), b=st.integers(min_value=0))
def test_count_lines_counts_the_newlines_of_any_range(data: bytes, a: int, b: int) -> None:
    lo, hi = sorted((a % (len(data) + 1), b % (len(data) + 1)))
    assert count_lines(data, lo, hi) == count_lines(bytearray(data), lo, hi) == data.count(b"\n", lo, hi)


@needs_native
def test_the_native_core_refuses_a_range_outside_the_buffer_and_a_non_buffer() -> None:
    from remote_uploader.agent import _native

    for start, end in [(-1, 2), (3, 2), (0, 9)]:
        with pytest.raises(ValueError, match="outside a buffer of 8 bytes"):
            _native.scan(b"1.2.3.4\n", start, end)
        with pytest.raises(ValueError, match="outside a buffer of 8 bytes"):
            _native.count_lines(b"1.2.3.4\n", start, end)
    with pytest.raises(TypeError):
        _native.scan("1.2.3.4 text, not bytes", 0, 4)  # type: ignore[arg-type]
