"""The extraction API: separators and cuts, engines, the regex and exclude options, junk, bounded memory.

The rules themselves are in test_extract_cases.py; invariants on generated input in
test_extract_properties.py.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest

from remote_uploader.agent import extract
from remote_uploader.agent.extract import CONTEXT, SEPARATORS, WINDOW, BoundedCache, is_separator, last_cut, scan_bytes
from remote_uploader.agent.extractors import build_extractor
from remote_uploader.protocol import is_canonical_ip
from tests.helpers.engines import ENGINES, HAVE_HYPERSCAN, HAVE_NATIVE

# --- Separators and cuts -------------------------------------------------------------------------

def test_separators_are_whitespace_controls_and_quoting_punctuation() -> None:
    for byte in b" \t\r\n\x00\x1b\x7f,;\"'()<>|{}!?*&^~`+$#\\":
        assert is_separator(byte), chr(byte)


def test_nothing_an_address_or_its_context_is_made_of_is_a_separator() -> None:
    for byte in b"0123456789abcdefABCDEFxyzXYZ.:%_-[]/@=":
        assert not is_separator(byte), chr(byte)
    assert not any(is_separator(byte) for byte in range(0x80, 0x100))
    assert frozenset(b for b in range(256) if is_separator(b)) == SEPARATORS


def test_last_cut_is_just_after_the_last_separator() -> None:
    buf = b"xx 1.2.3.4,5.6.7.8xx"
    assert last_cut(buf, 0, len(buf)) == buf.index(b",") + 1
    assert last_cut(buf, 0, 3) == 3  # the separator is the last byte of the range
    assert last_cut(buf, 3, 10) == 3  # none in (3, 10]: start


def test_last_cut_finds_a_separator_far_back_in_a_long_run() -> None:
    buf = bytearray(b" " + b"a" * 200_000)
    assert last_cut(buf, 0, len(buf)) == 1
    assert last_cut(memoryview(buf), 1, len(buf)) == 1


# --- Scanning ------------------------------------------------------------------------------------

@pytest.mark.parametrize("engine", ENGINES)
def test_every_occurrence_counts(engine: str) -> None:
    data = b"1.2.3.4 1.2.3.4\n" * 1000 + b"from 2001:db8::1 port 22\n" * 500
    assert scan_bytes(build_extractor(engine=engine), data) == {"1.2.3.4": 2000, "2001:db8::1": 500}


@pytest.mark.parametrize("engine", ENGINES)
def test_a_scan_reads_only_its_range_and_its_left_context(engine: str) -> None:
    extractor = build_extractor(engine=engine)
    buf = b"9.9.9.9 " * 4 + b"\n" + b"1.2.3.4 5.6.7.8\n" + b"7.7.7.7\n"
    start = buf.index(b"1.2.3.4")
    end = buf.index(b"7.7.7.7")
    assert start >= extractor.context
    assert extractor.scan(buf, start, end) == {"1.2.3.4": 1, "5.6.7.8": 1}


@pytest.mark.parametrize("engine", ENGINES)
def test_a_range_at_the_start_of_the_buffer_is_padded_as_the_start_of_a_file(engine: str) -> None:
    extractor = build_extractor(engine=engine)
    assert extractor.scan(b"1.2.3.4 x\n", 0, 10) == {"1.2.3.4": 1}
    assert extractor.scan(bytearray(b"::ffff:1.2.3.4\n"), 0, 15) == {"1.2.3.4": 1}


@pytest.mark.parametrize("engine", ENGINES)
def test_a_range_outside_the_buffer_is_refused(engine: str) -> None:
    with pytest.raises(ValueError, match="outside a buffer"):
        build_extractor(engine=engine).scan(b"1.2.3.4\n", 4, 100)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_block_larger_than_a_scan_window_counts_every_address(engine: str) -> None:
    lines = [b"client %d.%d.%d.%d x" % (10, i % 256, i // 256 % 256, 1 + i % 200) for i in range(3 * WINDOW // 16)]
    data = b"\n".join(lines) + b"\n"
    assert len(data) > 2 * WINDOW
    counts = scan_bytes(build_extractor(engine=engine), data)
    assert sum(counts.values()) == len(lines)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_line_longer_than_a_block_is_counted_in_pieces(engine: str, tmp_path: Path) -> None:
    """A 1 MB line, read in 64 KiB blocks cut at the last separator: the same counts as whole."""
    rnd = random.Random(7)
    words = [b"%d.%d.%d.%d" % (rnd.randint(1, 223), rnd.randint(0, 255), 7, rnd.randint(1, 254)) for _ in range(70_000)]
    path = tmp_path / "long.log"
    path.write_bytes(b"start " + b" ".join(words) + b" end\nnext 1.1.1.1\n")
    extractor = build_extractor(engine=engine)
    buf = bytearray(b"\n" * CONTEXT) + path.read_bytes()
    total: dict[str, int] = {}
    start = CONTEXT
    while start < len(buf):
        hi = min(start + 65536, len(buf))
        cut = last_cut(buf, start, hi) if hi < len(buf) else hi
        for ip, n in extractor.scan(buf, start, cut).items():
            total[ip] = total.get(ip, 0) + n
        start = cut
    expected: dict[str, int] = {"1.1.1.1": 1}
    for word in words:
        expected[word.decode()] = expected.get(word.decode(), 0) + 1
    assert total == expected


# --- Junk ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("engine", ENGINES)
def test_binary_junk_never_crashes_and_yields_only_canonical_addresses(engine: str) -> None:
    extractor = build_extractor(engine=engine)
    rnd = random.Random(1)
    junk = bytes(rnd.getrandbits(8) for _ in range(300_000)) + os.urandom(100_000)
    counts = scan_bytes(extractor, junk)
    assert all(is_canonical_ip(ip) for ip in counts)


@pytest.mark.parametrize("engine", ENGINES)
def test_an_address_glued_to_binary_junk_is_not_counted_but_one_between_nuls_is(engine: str) -> None:
    extractor = build_extractor(engine=engine)
    assert scan_bytes(extractor, b"\xfe\xff1.2.3.4\xfe \x80::ffff:5.6.7.8\x81 \xc0fe80::1") == {}
    assert scan_bytes(extractor, b"\x00\x001.2.3.4\x00\x00 \x01fe80::1\x02") == {"1.2.3.4": 1, "fe80::1": 1}


@pytest.mark.parametrize("engine", ENGINES)
def test_invalid_utf8_around_addresses_is_fine(engine: str) -> None:
    data = b"sshd: Failed for " + b"\xc3\x28\xa0\xa1 from 203.0.113.9 port 22 \xf0\x28\x8c\x28\n"
    assert scan_bytes(build_extractor(engine=engine), data) == {"203.0.113.9": 1}


@pytest.mark.parametrize("engine", ENGINES)
def test_an_endless_run_of_hex_and_colons_is_scanned_in_linear_time(engine: str) -> None:
    extractor = build_extractor(engine=engine)
    runs = [b"1:" * 200_000, b"ab:cd." * 100_000, b":" * 300_000, b"12345:" * 6 + b"1.2" * 100_000]
    for run in runs:
        assert scan_bytes(extractor, b"x " + run + b" 9.9.9.9\n") == {"9.9.9.9": 1}


# --- Memory --------------------------------------------------------------------------------------

def test_a_bounded_cache_empties_itself_when_full(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(extract, "CACHE_LIMIT", 100)
    cache: BoundedCache[bytes] = BoundedCache()
    out: dict[str, int] = {}
    for i in range(1000):
        cache.resolve({b"%d" % i: 1}, lambda key: "10.0.{}.{}".format(*divmod(int(key), 256)), out)
        assert len(cache) <= 100
    assert sum(out.values()) == 1000 and len(out) == 1000


@pytest.mark.parametrize("engine", ENGINES)
def test_caches_stay_bounded_on_a_flood_of_distinct_addresses(engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(extract, "CACHE_LIMIT", 1000)
    extractor = build_extractor(engine=engine, exclude=["192.0.2.0/24"])
    data = b"".join(b"2001:db8::%x 10.%d.%d.1\n" % (i, i // 256 % 256, i % 256) for i in range(20_000))
    counts = scan_bytes(extractor, data)
    assert len(counts) == 40_000
    caches = [v for v in vars(extractor).values() if isinstance(v, dict)]
    inner = getattr(extractor, "inner", None)
    caches += [v for v in vars(inner).values() if isinstance(v, dict)] if inner is not None else []
    assert caches and all(len(cache) <= 1000 for cache in caches)


# --- Engines -------------------------------------------------------------------------------------

def test_auto_picks_native_then_hyperscan_then_stdlib_as_installed() -> None:
    expected = "native" if HAVE_NATIVE else "hyperscan" if HAVE_HYPERSCAN else "stdlib"
    assert getattr(build_extractor(), "name", None) == expected


def _without_native(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a machine where `pip install .` found no compiler: the C module is absent."""
    import remote_uploader.agent

    monkeypatch.setitem(sys.modules, "remote_uploader.agent._native", None)  # importing it raises ImportError
    monkeypatch.delattr(remote_uploader.agent, "_native", raising=False)
    monkeypatch.delitem(sys.modules, "remote_uploader.agent.extract_native", raising=False)


def test_auto_picks_hyperscan_when_the_native_core_is_not_built(monkeypatch: pytest.MonkeyPatch) -> None:
    _without_native(monkeypatch)
    assert getattr(build_extractor(engine="auto"), "name", None) == ("hyperscan" if HAVE_HYPERSCAN else "stdlib")
    with pytest.raises(ValueError, match=r"engine 'native' is not built in this installation.*choose 'stdlib'"):
        build_extractor(engine="native")


def test_auto_falls_back_to_stdlib_without_native_or_hyperscan(monkeypatch: pytest.MonkeyPatch) -> None:
    _without_native(monkeypatch)
    monkeypatch.setitem(sys.modules, "hyperscan", None)  # `import hyperscan` now raises ImportError
    monkeypatch.delitem(sys.modules, "remote_uploader.agent.extract_fast", raising=False)
    assert getattr(build_extractor(engine="auto"), "name", None) == "stdlib"
    with pytest.raises(ValueError, match=r"pip install 'remote-uploader\[fast\]'"):
        build_extractor(engine="hyperscan")


def test_the_stdlib_engine_is_the_pure_python_path_even_where_native_is_built() -> None:
    assert getattr(build_extractor(engine="stdlib"), "name", None) == "stdlib"


def test_an_unknown_engine_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError,
                       match=r"unknown extraction engine 'pcre'; choose one of auto, native, stdlib, hyperscan"):
        build_extractor(engine="pcre")


# --- The regex option ----------------------------------------------------------------------------

SSHD = b"""\
Oct 11 22:14:15 web sshd[1]: Failed password for root from 203.0.113.5 port 22 ssh2
Oct 11 22:14:16 web sshd[2]: Accepted publickey for deploy from 198.51.100.7 port 50022 ssh2
Oct 11 22:14:17 web sshd[3]: Failed password for invalid user admin from 2001:DB8::9 port 22 ssh2
Oct 11 22:14:18 web sshd[4]: Failed password for root from 203.0.113.5 port 22 ssh2
Oct 11 22:14:19 web sshd[5]: Failed password for root from not-an-address port 22 ssh2
"""


def test_a_regex_counts_only_the_addresses_its_ip_group_captures() -> None:
    extractor = build_extractor(regex=r"Failed password for (?:invalid user )?\S+ from (?P<ip>\S+) port")
    assert scan_bytes(extractor, SSHD) == {"203.0.113.5": 2, "2001:db8::9": 1}


def test_a_regex_capture_is_stripped_of_brackets_ports_and_zones_and_made_canonical() -> None:
    extractor = build_extractor(regex=r"peer=(?P<ip>\S+)")
    data = (
        b"peer=[2001:db8::1]:443\npeer=1.2.3.4:80\npeer=fe80::1%eth0\npeer=::ffff:192.0.2.1:8080\n"
        b"peer=010.1.1.1\npeer=0.0.0.0\npeer=10.0.0.0/8\n"
    )
    assert scan_bytes(extractor, data) == {"2001:db8::1": 1, "1.2.3.4": 1, "fe80::1": 1, "192.0.2.1": 1, "10.0.0.0": 1}


def test_a_regex_counts_every_match_in_a_line_and_skips_an_unused_group() -> None:
    extractor = build_extractor(regex=r"(?:ip=(?P<ip>[0-9.]+)|user=\w+)")
    assert scan_bytes(extractor, b"ip=1.1.1.1 user=x ip=2.2.2.2\r\nuser=y\n") == {"1.1.1.1": 1, "2.2.2.2": 1}


def test_a_regex_sees_non_utf8_lines_without_crashing() -> None:
    extractor = build_extractor(regex=r"from (?P<ip>\S+)")
    assert scan_bytes(extractor, b"\xff\xfe from 1.2.3.4 \x00\n\xc3( from \xff1.2.3.4\n") == {"1.2.3.4": 1}


def test_an_invalid_regex_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match=r"invalid regex 'from \(\?P<ip>\\S\+': missing \), unterminated subpattern"):
        build_extractor(regex=r"from (?P<ip>\S+")


def test_a_regex_without_a_group_named_ip_is_refused() -> None:
    with pytest.raises(ValueError, match=r"regex 'from \(\\S\+\)' has no group named 'ip'"):
        build_extractor(regex=r"from (\S+)")


# --- The exclude option --------------------------------------------------------------------------

@pytest.mark.parametrize("engine", ENGINES)
def test_excluded_networks_are_dropped_whatever_the_spelling(engine: str) -> None:
    extractor = build_extractor(engine=engine, exclude=["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"])
    data = b"10.1.2.3 ::ffff:10.9.9.9 11.0.0.1 2001:DB8::1 2001:db9::1 192.0.2.7 192.0.2.8\n"
    assert scan_bytes(extractor, data) == {"11.0.0.1": 1, "2001:db9::1": 1, "192.0.2.8": 1}


def test_exclude_applies_to_regex_captures_too() -> None:
    extractor = build_extractor(regex=r"from (?P<ip>\S+)", exclude=["203.0.113.0/24"])
    assert scan_bytes(extractor, SSHD) == {"198.51.100.7": 1, "2001:db8::9": 1}


def test_an_invalid_cidr_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match=r"invalid CIDR '10\.0\.0\.0/33' in exclude"):
        build_extractor(exclude=["192.0.2.0/24", "10.0.0.0/33"])


def test_a_single_string_instead_of_a_list_of_cidrs_is_refused() -> None:
    with pytest.raises(ValueError, match="exclude must be a list"):
        build_extractor(exclude="10.0.0.0/8")
