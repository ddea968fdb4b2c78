"""A sealed body is the same bytes whichever writer wrote its arrays, and reads back as sealed.

The native core writes format 2's arrays (`json_strings`, `json_ints`) where it is built;
json.dumps writes them elsewhere, and for any list the native writers decline. Both paths run
here: the native writers against json.dumps on generated lists, and a whole body sealed with
and without them. `gzip_body` (ISA-L with the `fast` extra, zlib without) against gzip's reader.
"""

from __future__ import annotations

import gzip
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from remote_uploader.agent import batch as batch_module
from remote_uploader.agent.batch import Batch, decode_queued, encode_format_2, gzip_body, json_array, records_of
from tests.helpers.engines import needs_native

addresses = st.lists(st.ip_addresses().map(str), max_size=50)
any_text = st.lists(st.text(max_size=12), max_size=30)
any_ints = st.lists(st.integers(min_value=-(2**70), max_value=2**70), max_size=30)


def compact(items: list[object]) -> str:
    return json.dumps(items, separators=(",", ":"))


@needs_native
@settings(max_examples=300, deadline=None)
@given(items=addresses | any_text)
def test_the_native_string_writer_writes_what_json_dumps_writes_or_declines(items: list[str]) -> None:
    from remote_uploader.agent._native import json_strings

    text = json_strings(items)
    assert text is None or text == compact(items)  # type: ignore[arg-type]
    assert json_array(items, json_strings) == compact(items)  # type: ignore[arg-type]


@needs_native
@settings(max_examples=300, deadline=None)
@given(items=any_ints | st.lists(st.integers(min_value=0, max_value=2**63 - 1), max_size=30))
def test_the_native_int_writer_writes_what_json_dumps_writes_or_declines(items: list[int]) -> None:
    from remote_uploader.agent._native import json_ints

    text = json_ints(items)  # type: ignore[arg-type]
    assert text is None or text == compact(items)  # type: ignore[arg-type]
    assert json_array(items, json_ints) == compact(items)  # type: ignore[arg-type]


@needs_native
def test_the_native_writers_take_every_address_and_count_and_decline_what_needs_escaping() -> None:
    from remote_uploader.agent._native import json_ints, json_strings

    assert json_strings(["1.2.3.4", "2001:db8::1", "::ffff:1.2.3.4"]) == '["1.2.3.4","2001:db8::1","::ffff:1.2.3.4"]'
    assert json_strings([]) == "[]" and json_ints([]) == "[]"
    assert json_ints([0, 1, 10, 2**63 - 1]) == f"[0,1,10,{2**63 - 1}]"
    for declined in (['a"b'], ["a\\b"], ["\n"], ["\x7f"], ["é"], [1]):
        assert json_strings(declined) is None  # type: ignore[arg-type]
    for declined_ints in ([-1], [2**64], [True], [1.0], ["1"]):
        assert json_ints(declined_ints) is None  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        json_strings(("a",))  # type: ignore[arg-type]


@pytest.mark.parametrize("native", [True, False], ids=["native writers", "json.dumps"])
def test_a_sealed_body_is_the_same_bytes_with_either_writer_and_reads_back(native: bool,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    batch = Batch(0.0)
    batch.add("/var/log/a.log", {"1.2.3.4": 3, "2001:db8::1": 1, "10.0.0.1": 2**40}, 1_700_000_000.0)
    batch.add("/var/log/\"quoted\" é.log", {"1.2.3.4": 1}, 1_700_000_001.0)
    expected = encode_format_2("agent", "b" * 32, 1, batch.groups(), ("p", 7, ""), [("s", 0, 10)])
    if not native:
        monkeypatch.setattr(batch_module, "_native_json_strings", None)
        monkeypatch.setattr(batch_module, "_native_json_ints", None)
    body = encode_format_2("agent", "b" * 32, 1, batch.groups(), ("p", 7, ""), [("s", 0, 10)])
    assert body == expected
    document = json.loads(body)
    assert sorted((r.source, r.ip, r.count) for r in records_of(document)) == [
        ("/var/log/\"quoted\" é.log", "1.2.3.4", 1),
        ("/var/log/a.log", "1.2.3.4", 3), ("/var/log/a.log", "10.0.0.1", 2**40), ("/var/log/a.log", "2001:db8::1", 1)]


@pytest.mark.parametrize("isal", [True, False], ids=["installed deflater", "zlib"])
@settings(max_examples=50, deadline=None)
@given(raw=st.binary(max_size=200_000) | st.just(b'{"format":2,' + b'"1.2.3.4",' * 20_000))
def test_a_gzip_body_is_read_by_the_gzip_reader_and_by_decode_queued(isal: bool, raw: bytes) -> None:
    with pytest.MonkeyPatch.context() as patch:
        if not isal:
            patch.setattr(batch_module, "_isal_compress", None)
        body = gzip_body(raw)
    assert gzip.decompress(body) == raw
    if raw.startswith(b'{"format":2,'):
        return
    assert decode_queued(gzip_body(b'{"a":1}'), "gzip") == {"a": 1}


groups = st.lists(
    st.tuples(st.integers(min_value=0, max_value=2), st.integers(min_value=0, max_value=2**53),
              st.integers(min_value=0, max_value=2**40),
              st.lists(st.tuples(st.ip_addresses().map(str) | st.text(max_size=8),
                                 st.integers(min_value=1, max_value=2**40)), max_size=20)),
    max_size=5)


@settings(max_examples=300, deadline=None)
@given(groups=groups, sources=st.lists(st.text(max_size=10), min_size=3, max_size=3))
def test_a_format_2_document_rewritten_in_format_1_is_the_text_of_its_records(
        groups: list[tuple[int, int, int, list[tuple[str, int]]]], sources: list[str]) -> None:
    # format_1_records writes per group (the fast path for plain addresses, json.dumps for any
    # other text); the reference is the Record path it replaces, on the same document.
    from remote_uploader.agent.batch import format_1_records
    from remote_uploader.protocol import encode_records

    document = {"format": 2, "sources": sources, "groups": [
        {"source": source, "first_seen": first, "last_seen": first + span,
         "ip": [ip for ip, _ in pairs], "count": [count for _, count in pairs]}
        for source, first, span, pairs in groups]}
    assert format_1_records(document) == encode_records(records_of(document))
