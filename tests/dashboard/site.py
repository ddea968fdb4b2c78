"""A dashboard to test: a real collector on SQLite, fed by a real agent (`once`), plus a batch
from an agent with a hostile name stored straight into its database."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from remote_uploader.collector.batch import ip_key
from remote_uploader.collector.storage.base import Batch, IpDelta, to_micros
from remote_uploader.collector.storage.sqlite import SqliteStorage
from tests.helpers.agent import run_agent, write_config
from tests.helpers.collector_fixtures import CollectorProcess

HOSTILE_AGENT = '<script>alert("agent")</script> \'q\' «ü» 🚫'
HOSTILE_DIR = '<script>alert("src")<'  # a directory name: a log path may hold any of this
HOSTILE_IP = "198.51.100.66"
# Addresses in the agent's log, with how often each appears.
LOG_COUNTS = {"203.0.113.7": 30, "203.0.113.9": 12, "198.51.100.23": 5, "2001:db8::5": 3}


@dataclass
class Site:
    collector: CollectorProcess
    read_token: str
    agent_token: str
    log_dir: Path


def build(root: Path, extra_args: tuple[str, ...] = ()) -> Site:
    db = root / "collector.db"
    collector = CollectorProcess(root, f"sqlite://{db}", list(extra_args))
    collector.start()
    read_token = collector.add_token("viewer", read_only=True)
    log_dir = root / HOSTILE_DIR
    log_dir.mkdir()
    log = log_dir / "auth\"'é.log"
    lines = []
    for ip, count in LOG_COUNTS.items():
        lines += [f"Failed password for root from {ip} port 22 ssh2\n"] * count
    log.write_text("".join(lines))
    config = write_config(root / "agent.toml", url=collector.url, token=collector.token,
                          state_dir=root / "agent-state", sources=[str(log)])
    result = run_agent("once", "-c", str(config))
    assert result.returncode == 0, result.stderr
    _store_hostile_batch(db)
    return Site(collector, read_token, collector.token, log_dir)


def _store_hostile_batch(db: Path) -> None:
    """The protocol allows any agent name without control characters; token names are stricter,
    so this one can only come from the database (a future token scheme, another tool)."""
    now = to_micros(datetime.now(UTC))
    storage = SqliteStorage(db)
    try:
        delta = IpDelta(HOSTILE_IP, ip_key(HOSTILE_IP), 2, now, now)
        storage.store_batch(Batch(HOSTILE_AGENT, "hostile-1", datetime.now(UTC), 2, [delta]), datetime.now(UTC))
    finally:
        storage.close()
