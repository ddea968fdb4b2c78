"""A dashboard to test: a real collector on SQLite, fed by a real agent (`once`), plus a batch
from an agent with a hostile name stored straight into its database."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from remote_uploader.collector.batch import parse_batch
from remote_uploader.collector.storage.model import Evidence, NewDecision
from remote_uploader.collector.storage.sqlite import SqliteStorage
from remote_uploader.protocol import AgentReport, format_time
from tests.helpers.agent import run_agent, write_config
from tests.helpers.collector_fixtures import CollectorProcess

HOSTILE_AGENT = '<script>alert("agent")</script> \'q\' «ü» 🚫'
HOSTILE_DIR = '<script>alert("src")<'  # a directory name: a log path may hold any of this
HOSTILE_IP = "198.51.100.66"
HOSTILE_SOURCE = "/var/log/\"><img src=x onerror=alert(1)>/ünï«code» 'q'.log"
HOSTILE_VERSION = "<img src=x onerror=alert(2)>\"'é"
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
    _store_decisions(db)
    return Site(collector, read_token, collector.token, log_dir)


def _store_decisions(db: Path) -> None:
    """One active decision with its evidence (as a rule makes it) and one made by hand, ended."""
    now = datetime.now(UTC)
    minute = now.replace(second=0, microsecond=0)
    storage = SqliteStorage(db)
    try:
        evidence = (Evidence("203.0.113.7", 30, minute, minute),)
        storage.add_decisions(
            [NewDecision("203.0.113.7", "Ip", now + timedelta(hours=4), scenario="sshd-bruteforce",
                         reason="30 failed logins within 10m (rule: at least 10)",
                         details={"window": "10m", "min_count": 10}, evidence=evidence),
             NewDecision("198.51.100.0/24", "Range", now + timedelta(hours=1), origin="cscli",
                         reason="scanner range, by hand")],
            now,
        )
        storage.delete_decisions(now, value="198.51.100.0/24")
    finally:
        storage.close()


def _store_hostile_batch(db: Path) -> None:
    """The protocol allows any agent name without control characters; token names are stricter,
    so this one can only come from the database (a future token scheme, another tool)."""
    now = format_time(datetime.now(UTC))
    record = {"ip": HOSTILE_IP, "count": 2, "first_seen": now, "last_seen": now, "source": HOSTILE_SOURCE}
    body = {"agent": HOSTILE_AGENT, "batch_id": "hostile-1", "sent_at": now, "records": [record]}
    storage = SqliteStorage(db)
    try:
        storage.store_batch(parse_batch(json.dumps(body).encode(), HOSTILE_AGENT), datetime.now(UTC))
        # Its status report: a queue backing up (uploads failing), a hostile version and file name.
        storage.store_agent_report(HOSTILE_AGENT, AgentReport(
            version=HOSTILE_VERSION, queued_batches=3, queued_records=40, queued_bytes=5000, oldest_age=90.0,
            failing_for=60.0, sources=((HOSTILE_SOURCE, 4096),)), datetime.now(UTC))
    finally:
        storage.close()
