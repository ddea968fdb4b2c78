"""When a batch is sealed (the adaptive seal of a caught-up batch, the old bounds for a backlog), and
how chunks merge into it (the native core's merge against the pure-Python one)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from remote_uploader.agent import batch as batch_module
from remote_uploader.agent.batch import Batch, SealPolicy
from tests.helpers.engines import needs_native


def test_a_caught_up_batch_is_sealed_at_half_its_max_age_a_busy_one_at_its_max_age() -> None:
    policy = SealPolicy(force_upload_threshold=1000, min_upload_batch=10, max_batch_age=1.0)
    batch = Batch(100.0)
    batch.add("access.log", {"192.0.2.1": 1}, 100.1)
    assert not policy.should_seal(batch, 100.4, caught_up=True)
    assert policy.should_seal(batch, 100.5, caught_up=True)  # a trickle: within max_batch_age end to end
    assert not policy.should_seal(batch, 101.5, caught_up=False)  # busy: waits for min_upload_batch
    batch.add("access.log", {f"192.0.2.{n}": 1 for n in range(2, 12)}, 100.2)
    assert not policy.should_seal(batch, 100.9, caught_up=False)
    assert policy.should_seal(batch, 101.0, caught_up=False)


def test_a_caught_up_batch_goes_at_once_while_the_uploader_is_idle_and_waits_while_it_is_busy() -> None:
    policy = SealPolicy(force_upload_threshold=1000, min_upload_batch=10, max_batch_age=1.0)
    batch = Batch(100.0)
    batch.add("access.log", {"192.0.2.1": 1}, 100.0)
    assert policy.should_seal(batch, 100.0, caught_up=True, uploader_free=True)  # nothing in flight: now
    assert not policy.should_seal(batch, 100.4, caught_up=True, uploader_free=False)  # in flight: accumulate
    assert policy.should_seal(batch, 100.5, caught_up=True, uploader_free=False)  # the old bound still holds
    assert not policy.should_seal(batch, 100.0, caught_up=False, uploader_free=True)  # a backlog: the old rules
    assert not policy.should_seal(Batch(100.0), 100.0, caught_up=True, uploader_free=True)  # nothing to seal


# --- Batch.add: the native core's merge and the pure-Python one give the same batch -------------

chunks = st.lists(st.dictionaries(st.sampled_from(["1.2.3.4", "10.0.0.1", "2001:db8::1", "::1", "8.8.8.8"]),
                                  st.integers(min_value=1, max_value=2**66), max_size=5), max_size=8)


@settings(max_examples=200, deadline=None)
@given(parts=chunks, streams=st.lists(st.sampled_from(["/a.log", "/b.log"]), min_size=8, max_size=8))
def test_adding_chunks_gives_the_same_batch_with_the_native_merge_and_without(
        parts: list[dict[str, int]], streams: list[str]) -> None:
    batches = []
    for native in (True, False):
        with pytest.MonkeyPatch.context() as patch:
            if not native:
                patch.setattr(batch_module, "_native_add_counts", None)
            batch = Batch(0.0)
            for stream, counts in zip(streams, parts, strict=False):
                batch.add(stream, counts, 1.0)
            batches.append((batch.counts, batch.size, batch.occurrences))
    expected: dict[str, Counter[str]] = {}
    for stream, counts in zip(streams, parts, strict=False):
        if counts:
            expected.setdefault(stream, Counter()).update(counts)
    assert batches[0] == batches[1] == (expected, sum(map(len, expected.values())),
                                        sum(sum(c.values()) for c in parts))


@needs_native
def test_the_native_merge_refuses_a_dict_added_to_itself_and_adds_any_numbers() -> None:
    from remote_uploader.agent._native import add_counts

    counts = {"1.2.3.4": 1}
    with pytest.raises(ValueError, match="itself"):
        add_counts(counts, counts)
    known = {"1.2.3.4": 2**70}
    assert add_counts(known, {"1.2.3.4": 1, "::1": 2}) == (1, 3)
    assert known == {"1.2.3.4": 2**70 + 1, "::1": 2}
