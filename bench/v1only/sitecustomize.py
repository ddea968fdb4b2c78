"""Loaded by `collector serve` when bench_e2e puts this folder on PYTHONPATH (variant `...-f1`):
the collector then lists only body format 1 in `Accept-Post`, as a collector from before format 2
did, so the agent sends every queued body rewritten in format 1 (agent/sink.py). Benchmarks only.
"""

import remote_uploader.protocol as protocol

protocol.ACCEPTED_MEDIA = protocol.MEDIA_V1
