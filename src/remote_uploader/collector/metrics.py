"""Prometheus metrics of one collector app, in a registry of its own.

A registry per app (not the global default) so that tests can build several apps in one
process, and so that /metrics shows only what this collector measured.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.batches = Counter(
            "collector_batches",
            "Batches received, by result: accepted (counted now), duplicate (counted before), "
            "rejected (invalid, too large, wrong agent or unauthorised).",
            ["result"],
            registry=self.registry,
        )
        for result in ("accepted", "duplicate", "rejected"):
            self.batches.labels(result)
        self.records = Counter("collector_records", "Records in accepted batches.", registry=self.registry)
        self.clamped_times = Counter(
            "collector_clamped_times",
            "Time fields of accepted batches changed to fit: later than arrival plus the allowed skew "
            "(set to the arrival time), before 1970, or a last_seen before its first_seen (swapped).",
            registry=self.registry,
        )
        self.latency = Histogram(
            "collector_request_duration_seconds",
            "HTTP request latency by route template, method and status.",
            ["route", "method", "status"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.storage_errors = Counter(
            "collector_storage_errors",
            "Storage operations that failed, by kind: unavailable (answered 503) or error.",
            ["kind"],
            registry=self.registry,
        )
        for kind in ("unavailable", "error"):
            self.storage_errors.labels(kind)

    def render(self) -> bytes:
        return generate_latest(self.registry)
