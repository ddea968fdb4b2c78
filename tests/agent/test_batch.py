"""When a batch is sealed: the adaptive seal of a caught-up batch, the old bounds for a backlog."""

from __future__ import annotations

from remote_uploader.agent.batch import Batch, SealPolicy


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
