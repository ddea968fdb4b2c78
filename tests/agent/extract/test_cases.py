"""The extraction rules as a table: every row of extraction-cases.md, then the cases our rules add.

Each fragment is scanned as a one-line file by every engine; the expected value is the exact
counts (so "must not count" is checked too: anything else found fails the test).
See docs/extraction.md for the rules and the reasons.
"""

from __future__ import annotations

import pytest

from remote_uploader.agent.extract import scan_bytes
from remote_uploader.agent.extractors import build_extractor
from tests.helpers.engines import ENGINES  # the optional engines are skipped, with the reason, where absent

# (row of extraction-cases.md, fragment, exact counts)
CASES_TABLE = [
    (1, "client 1.2.3.4:8080 x", {"1.2.3.4": 1}),
    (2, "from [2001:db8::1]:443", {"2001:db8::1": 1}),
    (3, "http://[2001:db8::2]:8080/x", {"2001:db8::2": 1}),
    (4, "GET http://5.6.7.8/x", {"5.6.7.8": 1}),
    (5, "from ::ffff:192.0.2.1 port 22", {"192.0.2.1": 1}),
    (6, "::ffff:c000:201", {"192.0.2.1": 1}),
    (7, "x ::ffff:1.2.3.4:8080", {"1.2.3.4": 1}),
    (8, "from fe80::1%eth0 port 22", {"fe80::1": 1}),
    (9, "from 010.001.001.001 x", {}),
    (10, "1.2.3.04", {}),
    (11, "from 256.1.1.1 x", {}),
    (12, "v1.2.3.4", {}),
    (13, "libfoo-2.1.0.5", {}),
    (14, "ver 1.2.3.4.5 x", {}),
    (15, "snmp 1.3.6.1.4.1.2021", {}),
    (16, "addr 1.2.3.4. end", {"1.2.3.4": 1}),
    (17, "X-Forwarded-For: 1.1.1.1, 2.2.2.2", {"1.1.1.1": 1, "2.2.2.2": 1}),
    (18, "from :: x", {}),
    (19, "from 0.0.0.0 x", {}),
    (20, "mac 00:11:22:33:44:55", {}),
    (21, "at 2024-01-01T12:34:56Z", {}),
    (22, "1:2:3:4:5:6:7:8:9 x", {}),
    (23, "2001:db8::1::2", {}),
    (24, "2001:DB8:0:0:0:0:0:1", {"2001:db8::1": 1}),
    (25, "net 10.0.0.0/8 x", {"10.0.0.0": 1}),
    (26, "a1.2.3.4b", {}),
    (26, "id_1.2.3.4_x", {}),
    (27, "unknown[203.0.113.5]", {"203.0.113.5": 1}),
    (28, "user@1.2.3.4", {"1.2.3.4": 1}),
    (28, "rhost=1.2.3.4", {"1.2.3.4": 1}),
    (28, '"1.2.3.4"', {"1.2.3.4": 1}),
    (29, "range 1.2.3.4-1.2.3.9", {"1.2.3.4": 1, "1.2.3.9": 1}),
    (30, "127.1", {}),
    (30, "0x7f.0.0.1", {}),
    (30, "1.2.3", {}),
    (31, "\uff11.\uff12.\uff13.\uff14", {}),  # fullwidth digits
    (31, "\u0661.\u0662.\u0663.\u0664", {}),  # Arabic-Indic digits
    (31, "\uff11\uff0e\uff12\uff0e\uff13\uff0e\uff14", {}),  # fullwidth digits and fullwidth dots
    (32, "64:ff9b::192.0.2.1", {"64:ff9b::c000:201": 1}),
    (33, "Chrome/120.0.6099.129", {}),
    (34, "1.2.3.4 1.2.3.4", {"1.2.3.4": 2}),
    (35, 'RemoteAddress="IPV4/UDP/203.0.113.99/5070"', {"203.0.113.99": 1}),  # Asterisk security log
    (35, 'RemoteAddress="IPV4/UDP/141.255.164.106/5084"', {"141.255.164.106": 1}),
    (36, "from ::FFFF:198.51.100.61: Invalid", {"198.51.100.61": 1}),  # ejabberd
    (36, "authentication for test@example.ch from ::FFFF:192.0.2.3: Invalid", {"192.0.2.3": 1}),
    (37, "haproxy[911]: 2001:db8:4::17:50122 [02/Mar/2015:10:00:00.000]", {"2001:db8:4::17": 1}),
    (37, "haproxy[760]: 2001:db8::1234:58430 [14/Nov/2015:12:00:00.000]", {"2001:db8::1234": 1}),
]

# Cases the table does not settle, decided in docs/extraction.md.
OUR_CASES = [
    ("product version: a letter and `/` before it", "Chrome/120.0.0.0 Safari/537.36", {}),
    ("product version in a long user agent", "Mozilla/5.0 (X11) Version/1.2.3.4 Mobile", {}),
    ("a path segment after a digit or `/` is an address", "GET /v1/1.2.3.4 //5.6.7.8", {"1.2.3.4": 1, "5.6.7.8": 1}),
    ("a path at the start of a request is an address", "GET /1.2.3.4 HTTP/1.1", {"1.2.3.4": 1}),
    ("a label and a colon before an IPv4 address", "src:1.2.3.4 client:5.6.7.8:8080", {"1.2.3.4": 1, "5.6.7.8": 1}),
    ("a label and a colon before an IPv6 address", "host:2001:db8::5 src:fe80::1%eth0",
     {"2001:db8::5": 1, "fe80::1": 1}),
    ("two colons before a dotted quad: a longer colon sequence", "a:b:1.2.3.4 12:34:1.2.3.5", {}),
    ("address pairs separated by a colon", "1.2.3.4:5.6.7.8", {"1.2.3.4": 1, "5.6.7.8": 1}),
    ("escapes inside JSON strings end a word", r'{"msg":"peer\t1.2.3.4\nnext"}', {"1.2.3.4": 1}),
    ("IPv4-compatible IPv6 is reported as the IPv6 address", "from ::1.2.3.4 x", {"::102:304": 1}),
    ("a sentence-final dot after IPv6", "seen 2001:db8::1. Then", {"2001:db8::1": 1}),
    ("an ellipsis after an address", "from 1.2.3.4... waiting", {"1.2.3.4": 1}),
    ("reverse DNS names are longer dotted sequences", "4.3.2.1.in-addr.arpa", {}),
    ("a host name made of an address", "1.2.3.4.nip.io", {}),
    ("IPv6 ranges", "fe80::1-fe80::9", {"fe80::1": 1, "fe80::9": 1}),
    ("C++ scopes are not addresses", "std::map<int> Foo::bar", {}),
    ("a hex word pair with :: is a valid IPv6 address", "dead::beef", {"dead::beef": 1}),
    ("glued to a UTF-8 letter", "caf\u00e91.2.3.4", {}),
    ("glued to non-UTF-8 junk", "\udcff1.2.3.4\udcfe", {}),
    ("NUL and control bytes are separators", "\x001.2.3.4\x00\x07::ffff:5.6.7.8\x1b", {"1.2.3.4": 1, "5.6.7.8": 1}),
    ("a 4-digit octet glues", "1.2.3.4567 1234.5.6.7", {}),
    ("the loopback and private ranges count", "127.0.0.1 10.1.2.3 ::1", {"127.0.0.1": 1, "10.1.2.3": 1, "::1": 1}),
    ("mapped and plain spellings are one key", "::ffff:1.2.3.4 1.2.3.4 ::FFFF:1.2.3.4", {"1.2.3.4": 3}),
    ("the full IPv6 form with an embedded IPv4 address", "0:0:0:0:0:ffff:192.0.2.1", {"192.0.2.1": 1}),
    ("eight groups and no ::", "1:2:3:4:5:6:7:8 x", {"1:2:3:4:5:6:7:8": 1}),
    ("an IPv6 CIDR suffix", "route 2001:db8::/32 via", {"2001:db8::": 1}),
    ("syslog times and pids", "Oct 11 22:14:15 web sshd[4242]: from 1.2.3.4", {"1.2.3.4": 1}),
    ("timestamps with milliseconds", "2024-01-01T12:34:56.789Z 12:00:00.123", {}),
    ("an address between `/` after a word is a path segment, not a version", "/ban/1.2.3.4/ IPV6/x/5.6.7.8/",
     {"1.2.3.4": 1, "5.6.7.8": 1}),
    ("a product version is still one before a space or the end", "Chrome/1.2.3.4 x Chrome/5.6.7.8", {}),
    ("a colon ends a plain IPv6 address too", "from 2001:db8::7: Invalid", {"2001:db8::7": 1}),
    ("a label, an address and a colon", "src:1.2.3.4: x", {"1.2.3.4": 1}),
    ("a 5-digit group after eight groups is a port", "1:2:3:4:5:6:7:8:50122 x", {"1:2:3:4:5:6:7:8": 1}),
    ("a 4-digit group after an address is a group, not a port", "2001:db8::17:5012 x", {"2001:db8::17:5012": 1}),
    ("a 5-digit port after a mapped address", "::ffff:1.2.3.4:50122 x", {"1.2.3.4": 1}),
    ("two colons then a 5-digit group is no port", "2001:db8::50122 x", {}),
]


def _encode(fragment: str) -> bytes:
    return fragment.encode("utf-8", "surrogateescape")


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("row", "fragment", "expected"), CASES_TABLE, ids=[f"row{r}-{f}" for r, f, _ in CASES_TABLE])
def test_every_row_of_the_cases_table_counts_exactly_what_it_says(
    engine: str, row: int, fragment: str, expected: dict[str, int]
) -> None:
    assert scan_bytes(build_extractor(engine=engine), _encode(fragment)) == expected


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("rule", "fragment", "expected"), OUR_CASES, ids=[r for r, _, _ in OUR_CASES])
def test_the_rules_we_added_decide_these_fragments(
    engine: str, rule: str, fragment: str, expected: dict[str, int]
) -> None:
    assert scan_bytes(build_extractor(engine=engine), _encode(fragment)) == expected


@pytest.mark.parametrize("engine", ENGINES)
def test_a_fragment_counts_the_same_in_the_middle_of_a_log(engine: str) -> None:
    """The table's rows, all in one file, each in the middle of a line: the counts add up."""
    extractor = build_extractor(engine=engine)
    text = b"".join(b"<%d> " % n + _encode(fragment) + b" ;\n" for n, (_, fragment, _) in enumerate(CASES_TABLE))
    expected: dict[str, int] = {}
    for _, _, counts in CASES_TABLE:
        for ip, n in counts.items():
            expected[ip] = expected.get(ip, 0) + n
    assert scan_bytes(extractor, text) == expected
