"""canonical_ip: the same answer as the plain ipaddress spelling it replaced, on any text.

canonical_ip parses IPv6 text with IPv6Address directly (not through ip_address's IPv4 attempt)
and writes it with the C library's inet_ntop where that agrees with ipaddress (checked at import).
The reference below is the plain version, word for word as it was; hypothesis compares them on
addresses with many zero groups (where the `::` rules bite), on addresses as people write them
(upper case, leading zeros, embedded IPv4, zones) and on any text.
"""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from remote_uploader import protocol
from remote_uploader.protocol import canonical_ip


def reference(text: str) -> str | None:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id is not None:
            return None
        mapped = addr.ipv4_mapped
        if mapped is not None:
            return None if mapped.is_unspecified else str(mapped)
    if addr.is_unspecified:
        return None
    return str(addr)


# 8 groups, each zero half of the time: every shape of zero runs
groups = st.lists(st.one_of(st.just(0), st.integers(min_value=0, max_value=0xFFFF)), min_size=8, max_size=8)


@settings(max_examples=2000, deadline=None)
@given(words=groups)
def test_every_ipv6_address_is_spelled_as_ipaddress_spells_it(words: list[int]) -> None:
    value = int.from_bytes(b"".join(w.to_bytes(2, "big") for w in words), "big")
    addr = ipaddress.IPv6Address(value)
    for text in (str(addr), addr.exploded, addr.exploded.upper()):
        assert canonical_ip(text) == reference(text)
    assert protocol._v6_str_ntop(addr) == str(addr)


written = st.lists(st.sampled_from(["", "0", "00", "1", "01", "ffff", "FFFF", "abcd", "12345", "1.2.3.4",
                                    "01.2.3.4", "%eth0", "%1", " "]), min_size=1, max_size=10).map(":".join)


@settings(max_examples=2000, deadline=None)
@given(text=written | st.text(alphabet="0123456789abcdefABCDEF:.%x ", max_size=45) | st.text(max_size=20))
def test_any_text_gets_the_answer_of_the_ipaddress_spelling(text: str) -> None:
    assert canonical_ip(text) == reference(text)


def test_the_c_library_formatter_is_used_only_where_it_agrees_and_dotted_forms_go_to_ipaddress() -> None:
    assert protocol._NTOP_AGREES is (protocol._v6_str is protocol._v6_str_ntop)
    assert canonical_ip("::1.2.3.4") == "::102:304" == reference("::1.2.3.4")
    assert canonical_ip("::ffff:1.2.3.4") == "1.2.3.4"
    assert canonical_ip("1:0:0:2:0:0:0:3") == "1:0:0:2::3"
    # the forms C libraries write with a dotted quad, whatever the last 32 bits
    for low in (0, 1, 0x10000, 0xFFFF, 0x01020304, 0xFFFFFFFF):
        for word_5 in (0, 1, 0xFFFE, 0xFFFF):
            for word_4 in (0, 1):
                addr = ipaddress.IPv6Address(word_4 << 48 | word_5 << 32 | low)
                assert protocol._v6_str_ntop(addr) == str(addr)
