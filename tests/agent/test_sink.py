"""Backoff: exponential, full jitter, capped, reset on success; Retry-After wins, capped."""

from __future__ import annotations

from remote_uploader.agent.sink import Backoff, parse_retry_after


def test_the_ceiling_doubles_up_to_the_cap_with_full_jitter() -> None:
    backoff = Backoff(base=0.5, cap=4.0, retry_after_cap=60, rng=lambda: 1.0)
    assert [backoff.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    low = Backoff(base=0.5, cap=4.0, retry_after_cap=60, rng=lambda: 0.0)
    assert low.next_delay() == 0.0


def test_success_resets_the_sequence() -> None:
    backoff = Backoff(base=1.0, cap=100.0, retry_after_cap=60, rng=lambda: 1.0)
    backoff.next_delay()
    backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() == 1.0


def test_retry_after_wins_and_is_capped() -> None:
    backoff = Backoff(base=0.1, cap=0.2, retry_after_cap=30, rng=lambda: 1.0)
    assert backoff.next_delay(retry_after=7) == 7
    assert backoff.next_delay(retry_after=3600) == 30


def test_retry_after_parses_seconds_and_http_dates() -> None:
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
