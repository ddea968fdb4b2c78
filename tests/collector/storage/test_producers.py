"""The producer rule alone (storage/producers.py): whatever order wholes, parts and replays arrive
in, every batch is counted exactly once, and nothing is kept above the watermark at the end."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from remote_uploader.collector.storage.producers import ProducerState

DEPTH = 3  # a batch holds 2**DEPTH occurrences; a part at depth d holds 2**(DEPTH - d)


def split_tree(rng: random.Random, path: str = "") -> list[str]:
    """Every path an agent could send for one batch: the whole, then its halves as 413s split them."""
    if len(path) == DEPTH or rng.random() < 0.4:
        return [path]
    return [path, *split_tree(rng, path + "0"), *split_tree(rng, path + "1")]


@settings(max_examples=300, deadline=None)
@given(batches=st.integers(1, 8), seed=st.integers(0, 2**32), replays=st.integers(0, 3))
def test_any_order_of_wholes_parts_and_replays_counts_every_batch_exactly_once(
        batches: int, seed: int, replays: int) -> None:
    rng = random.Random(seed)
    arrivals = [(seq, path) for seq in range(1, batches + 1) for path in split_tree(rng)]
    arrivals += [rng.choice(arrivals) for _ in range(replays)]
    rng.shuffle(arrivals)
    state = ProducerState()
    counted = dict.fromkeys(range(1, batches + 1), 0)
    for seq, path in arrivals:
        if state.admit(seq, path):
            counted[seq] += 2 ** (DEPTH - len(path))
        state = ProducerState.load(state.watermark, state.dump())  # as stored between requests
    assert counted == dict.fromkeys(range(1, batches + 1), 2**DEPTH)
    assert (state.watermark, state.size) == (batches, 0)


def test_a_gap_keeps_one_range_above_the_watermark_until_it_is_filled() -> None:
    state = ProducerState()
    for seq in [1, 2, *range(4, 1000)]:
        assert state.admit(seq)
    assert (state.watermark, state.size) == (2, 1)
    assert not state.admit(500) and not state.admit(1) and state.admit(3)
    assert (state.watermark, state.size) == (999, 0)
