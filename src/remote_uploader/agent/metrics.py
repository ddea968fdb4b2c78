"""The optional Prometheus endpoint of `forever` (`agent.metrics_listen = "127.0.0.1:9464"`).

Imported only when an address is configured, so the agent needs `prometheus_client` only then.
Values are read at scrape time from the agent's counters, a read-only connection to the queue
database and the tailer's per-file lag; the upload latency is observed (`Stats.on_sent`), not
timed by wrapping the sink: nothing here changes what the agent runs.

    remote_uploader_lines_read_total                  lines read
    remote_uploader_bytes_read_total                  bytes read
    remote_uploader_ip_occurrences_total              IP addresses extracted (each occurrence)
    remote_uploader_batches_sealed_total              batches sealed into the queue
    remote_uploader_batches_sent_total                batches acknowledged by the collector
    remote_uploader_upload_failures_total             failed upload attempts (retried)
    remote_uploader_batches_dead_lettered_total       batches refused for good (dead letters)
    remote_uploader_files_rotated_total               followed files that left their live path
    remote_uploader_files_truncated_total             followed files that lost their content in place
    remote_uploader_queue_batches / _queue_records    what waits in the queue
    remote_uploader_queue_bytes                       queue database size on disk
    remote_uploader_memory_ips                        records in the in-memory batch
    remote_uploader_reading_paused                    1 while reading waits for queue space
    remote_uploader_file_lag_bytes{path,status}       bytes of each followed file not read yet
    remote_uploader_upload_latency_seconds            histogram of POST round trips that succeeded
    remote_uploader_last_success_timestamp_seconds    when the collector last acknowledged a batch
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from remote_uploader.agent.spool import Spool
from remote_uploader.errors import ConfigError

if TYPE_CHECKING:
    from remote_uploader.agent.runner import Agent
    from remote_uploader.agent.tail import Tailer

log = logging.getLogger(__name__)

PREFIX = "remote_uploader"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class AgentCollector(Collector):
    def __init__(self, agent: Agent, tailer: Tailer) -> None:
        self.agent = agent
        self.tailer = tailer
        self.spool: Spool | None = None

    def collect(self) -> Iterator[Any]:
        stats = self.agent.stats
        for name, value, text in (
            ("lines_read", stats.lines, "Lines read from the followed files."),
            ("bytes_read", stats.bytes_read, "Bytes read from the followed files."),
            ("ip_occurrences", stats.occurrences, "IP address occurrences extracted."),
            ("batches_sealed", stats.batches_sealed, "Batches sealed into the durable queue."),
            ("batches_sent", stats.batches_sent, "Batches acknowledged by the collector."),
            ("upload_failures", stats.batches_failed, "Failed upload attempts (each is retried)."),
            ("batches_dead_lettered", stats.batches_dead, "Batches the collector refused for good."),
            ("files_rotated", stats.rotations, "Followed files that left their live path (renamed or deleted)."),
            ("files_truncated", stats.truncations, "Followed files that lost their content in place."),
        ):
            yield CounterMetricFamily(f"{PREFIX}_{name}", text, value=value)
        yield GaugeMetricFamily(f"{PREFIX}_memory_ips", "Records in the in-memory batch.", value=stats.memory_ips)
        yield GaugeMetricFamily(f"{PREFIX}_reading_paused", "1 while reading waits for queue space.",
                                value=int(stats.paused))
        yield GaugeMetricFamily(f"{PREFIX}_last_success_timestamp_seconds",
                                "Unix time the collector last acknowledged a batch (0: never).",
                                value=stats.last_success or 0.0)
        try:
            if self.spool is None:
                self.spool = Spool(self.agent.config.agent.state_dir, readonly=True)
            queue = self.spool.stats()
        except Exception as exc:  # a scrape must not fail because of the queue: say it in the log
            log.warning("event=metrics_queue_failed reason=%r", str(exc))
        else:
            yield GaugeMetricFamily(f"{PREFIX}_queue_batches", "Batches waiting in the queue.", value=queue.batches)
            yield GaugeMetricFamily(f"{PREFIX}_queue_records", "Records waiting in the queue.", value=queue.records)
            yield GaugeMetricFamily(f"{PREFIX}_queue_bytes", "Queue database size on disk, in bytes.",
                                    value=queue.disk_bytes)
            yield GaugeMetricFamily(f"{PREFIX}_dead_letters", "Batches in the dead-letter table.",
                                    value=queue.dead_batches)
        lag = GaugeMetricFamily(f"{PREFIX}_file_lag_bytes", "Bytes of a followed file not read yet.",
                                labels=["path", "status"])
        for item in self.tailer.lag():
            lag.add_metric([item.path, item.status], item.behind)
        yield lag


class MetricsServer:
    def __init__(self, server: Any, collector: AgentCollector) -> None:
        self.server = server
        self.collector = collector

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self.collector.spool is not None:
            self.collector.spool.close()


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def serve_metrics(listen: str, agent: Agent, tailer: Tailer) -> MetricsServer:
    """Serve /metrics on `listen` in a daemon thread; the upload latency observed from the stats."""
    registry = CollectorRegistry()
    histogram = Histogram(f"{PREFIX}_upload_latency_seconds", "Round trip of successful batch uploads.",
                          buckets=LATENCY_BUCKETS, registry=registry)
    agent.stats.on_sent.append(histogram.observe)
    collector = AgentCollector(agent, tailer)
    registry.register(collector)
    host, port = parse_listen(listen)
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError("agent.metrics_listen", f"cannot listen on {listen}: {exc.strerror or exc}") from exc
    log.info("event=metrics_listening address=%s:%d", host, server.server_port)
    return MetricsServer(server, collector)
