"""Parsing batch bodies off the event loop: big ones in worker processes, small ones in a thread.

Why processes: decoding, validating and encoding a batch of 100,000 records is about a quarter
of a second of pure Python. In the server process it would hold the interpreter lock, and the
storage thread, whose SQLite statements run without it, would wait for the lock between
statements; so one process parses and stores one after the other. In a worker process the
parse of one batch runs on another core while the server process stores the one before: the
two halves of ingest, each good for about 200,000 records a second, overlap.

A worker returns the `ValidBatch` with its deltas already in the storage's bulk form
(`Storage.bulk_form`, see storage/bulk.py): a few megabytes of bytes to send back, and nothing
per address left for the server process to do but hand them to the database.

Small bodies (under `WORKER_MIN_BYTES`) are parsed in a thread of the server process: a round
trip to a worker would cost more than it saves. The workers are started at the first big body
(spawned: a clean interpreter, not a fork of a process with threads and database connections),
exit when the pool is closed or the server process dies, and a pool broken by a worker's death
is replaced; the batch that was in flight is parsed in the server process instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import multiprocessing
import os
import signal
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import wait

from starlette.concurrency import run_in_threadpool

from remote_uploader.collector.batch import parse_batch
from remote_uploader.collector.storage import bulk
from remote_uploader.collector.storage.base import BulkForm, ValidBatch
from remote_uploader.logs import fields

logger = logging.getLogger(__name__)

WORKER_MIN_BYTES = 1 << 20  # about 7,000 records


def parse_and_encode(
    payload: bytes | bytearray, agent: str, form: BulkForm | None, bucket: int = 60, addresses: bool = False,
    body_format: int = 1,
) -> ValidBatch:
    """`parse_batch`, with the deltas encoded in `form` (what a worker process runs).

    The cyclic garbage collector is off meanwhile: a batch makes a hundred thousand objects and
    no cycles, and this process does nothing else.
    """
    gc.disable()
    try:
        batch = parse_batch(payload, agent, bucket, body_format=body_format)
        if form is not None:
            kept = tuple(batch.counted_addresses()) if addresses else ()
            encoded = bulk.encoded(batch.deltas, form, batch.buckets)
            batch = dataclasses.replace(batch, deltas=encoded, buckets=(), addresses=kept)
        return batch
    finally:
        gc.enable()


def _start_worker() -> None:
    # Signals are for the server process, which closes the pool when it stops (a Ctrl-C reaches
    # the whole process group). A worker whose server process died (SIGKILL) exits by itself:
    # nothing else would end it while it waits for work.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    if parent is not None:
        sentinel = parent.sentinel
        threading.Thread(target=_exit_with_parent, args=(sentinel,), name="parent-watch", daemon=True).start()
    gc.freeze()


def _exit_with_parent(sentinel: int) -> None:
    wait([sentinel])
    os._exit(0)


class BatchParser:
    """Parses bodies for one collector; `workers` = 0 parses every body in a thread."""

    def __init__(
        self,
        workers: int,
        form: BulkForm | None,
        *,
        min_bytes: int = WORKER_MIN_BYTES,
        bucket: int = 60,
        addresses: bool = False,
    ) -> None:
        self.workers = workers
        self.bucket = bucket  # seconds per time bucket; 0: no buckets
        self.addresses = addresses  # send back the addresses (rules need them) with encoded deltas
        self.form = form
        self.min_bytes = min_bytes
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    async def parse(self, payload: bytearray, agent: str, body_format: int = 1) -> ValidBatch:
        """The validated batch; `BatchInvalid` or `AgentMismatch` as `parse_batch` raises them."""
        if self.workers > 0 and len(payload) >= self.min_bytes:
            pool = self._get_pool()
            try:
                return await asyncio.get_running_loop().run_in_executor(
                    pool, parse_and_encode, payload, agent, self.form, self.bucket, self.addresses, body_format
                )
            except (BrokenProcessPool, OSError) as exc:  # a worker died, or none could be started
                logger.warning(
                    "parsing worker lost; parsing in the server process", extra=fields(error=type(exc).__name__)
                )
                self._discard(pool)
        return await run_in_threadpool(parse_batch, payload, agent, self.bucket, None, body_format)

    def _get_pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker
                )
            return self._pool

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)

    def worker_pids(self) -> list[int]:
        """The worker processes now running (none before the first big body)."""
        with self._lock:
            processes = dict(self._pool._processes or {}) if self._pool is not None else {}
        return sorted(pid for pid, process in processes.items() if process.is_alive())

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
