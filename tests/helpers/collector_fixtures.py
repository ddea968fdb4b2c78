"""Collector fixtures (real collector on 127.0.0.1, real PostgreSQL). Filled by the collector work."""
