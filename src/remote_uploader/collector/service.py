"""The collector's collaborators, shared by every router: settings, storage, metrics, the batch
parser, the decision engine, and the pruner of old batch ids.

One `Collector` per app (`create_app` makes it and keeps it in `app.state.collector`); routers
reach it through the `Service` dependency (routers/deps.py). `start()` and `stop()` are the
app's lifespan: the background threads run while the app serves.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import UTC, datetime, timedelta

from remote_uploader.collector.decisions.engine import DecisionEngine
from remote_uploader.collector.metrics import Metrics
from remote_uploader.collector.parsing import BatchParser
from remote_uploader.collector.reports import Reports
from remote_uploader.collector.settings import CollectorSettings
from remote_uploader.collector.storage.base import Storage
from remote_uploader.errors import CollectorError
from remote_uploader.logs import fields

logger = logging.getLogger(__name__)


class Collector:
    """The app's collaborators, shared by the route functions."""

    def __init__(self, settings: CollectorSettings, storage: Storage, metrics: Metrics) -> None:
        self.settings = settings
        self.storage = storage
        self.metrics = metrics
        self.parser = BatchParser(
            settings.parse_workers, storage.bulk_form, bucket=settings.bucket, addresses=bool(settings.rules)
        )
        self.decisions = DecisionEngine(
            storage,
            settings.rules,
            settings.allowlist,
            decision_interval=settings.decision_interval,
            rollup_interval=settings.rollup_interval,
            retentions=(
                timedelta(seconds=settings.bucket_retention),
                timedelta(seconds=settings.hour_retention),
                timedelta(seconds=settings.day_retention),
            ),
        )
        self.retry_after = {"Retry-After": str(settings.retry_after)}
        # Batches parsed and stored at once (routers/ingest.py); the rest wait, then get a 429.
        self.slots = asyncio.Semaphore(settings.max_concurrent_batches)
        self._stop = threading.Event()
        self._pruner: threading.Thread | None = None
        # Agent name -> the version its User-Agent header named, as this process last saw it (for
        # the dashboard's Agents page; not stored: a restart forgets it until the next batch).
        self.agent_versions: dict[str, str] = {}
        # Agents' status reports (reports.py): with each batch, or alone as a heartbeat.
        self.reports = Reports(storage, settings.agent_lag_warn)

    # -- lifespan -----------------------------------------------------------------------------

    def start(self) -> None:
        self._pruner = threading.Thread(target=self._prune_loop, name="collector-pruner", daemon=True)
        self._pruner.start()
        self.decisions.start()

    def stop(self) -> None:
        self.decisions.stop()
        self._stop.set()
        if self._pruner is not None:
            self._pruner.join(timeout=10)
        self.parser.close()

    # -- pruning ------------------------------------------------------------------------------

    def prune_once(self) -> int:
        cutoff = datetime.now(UTC) - timedelta(days=self.settings.retention_days)
        return self.storage.prune_batches(cutoff)

    def _prune_loop(self) -> None:
        while True:
            try:
                deleted = self.prune_once()
                if deleted:
                    logger.info("pruned batch ids", extra=fields(deleted=deleted))
            except CollectorError as exc:
                logger.warning("pruning failed", extra=fields(error=exc))
            if self._stop.wait(self.settings.prune_interval):
                return
