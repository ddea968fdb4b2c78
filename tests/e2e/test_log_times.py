"""A backlog read by `once` lands in the minutes its lines were written, at a real collector.

A source with `timestamp_pattern` makes the agent count each line in the minute the line says
(agent/timestamps.py). Here three hours of an nginx log, ending an hour ago, are read by one
`once` run: the collector's per-minute buckets must hold exactly what each minute of the log
held, spread over those three hours (not all in the minute of the run), and the totals must be
exact: a second run over the grown log adds only the new lines.
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.helpers.agent import random_ipv4, run_agent, write_config
from tests.helpers.collector_fixtures import CollectorProcess

UNTIMED = "198.51.100.77"


def write_log(
    path: Path, start: datetime, minutes: int, seed: int, append: bool = False
) -> tuple[Counter[str], Counter[datetime]]:
    """Lines every 20 s from `start` for `minutes`: (total per address, total per minute)."""
    rng = random.Random(seed)
    pool = [random_ipv4(rng) for _ in range(200)]
    per_ip: Counter[str] = Counter()
    per_minute: Counter[datetime] = Counter()
    lines = []
    for step in range(minutes * 3):
        moment = start + timedelta(seconds=20 * step)
        client, hop = rng.choice(pool), rng.choice(pool)
        stamp = moment.strftime("%d/%b/%Y:%H:%M:%S +0000")
        lines.append(f'{client} - - [{stamp}] "GET /item/{step} HTTP/1.1" 200 12 "-" "curl/8" "{hop}"\n')
        per_ip.update((client, hop))
        per_minute[moment.replace(second=0)] += 2
    with path.open("a" if append else "w", encoding="ascii") as handle:
        handle.writelines(lines)
    return per_ip, per_minute


def series(collector: CollectorProcess) -> dict[datetime, int]:
    response = collector.get("/v1/series", since="6h")
    assert response.status_code == 200, response.text
    points = response.json()["points"]
    assert all(point["seconds"] == 60 for point in points)
    return {datetime.fromisoformat(point["start"]): point["count"] for point in points}


def test_a_backlog_lands_in_the_minutes_of_its_lines_exactly_once(
    collector_any: CollectorProcess, tmp_path: Path
) -> None:
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start = hour - timedelta(hours=4)  # three whole hours, the last ending an hour ago or more
    log = tmp_path / "access.log"
    per_ip, per_minute = write_log(log, start, 180, seed=1)
    with log.open("a", encoding="ascii") as handle:  # a line whose time cannot be read: read time
        handle.write(f"upstream said: connection reset by {UNTIMED}\n")
    per_ip[UNTIMED] += 1
    config = write_config(
        tmp_path / "agent.toml",
        url=collector_any.url,
        token=collector_any.token,
        state_dir=tmp_path / "state",
        sources=[{"paths": [str(log)], "timestamp_pattern": "common"}],
        batching={"min_upload_batch": 20, "force_upload_threshold": 150, "max_memory_ips": 300},
        agent={"stats_interval": 0.01},
    )
    result = run_agent("once", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert "timestamp_pattern (read time used): 1" in result.stdout + result.stderr

    assert collector_any.counts() == dict(per_ip)  # exactly once
    buckets = series(collector_any)
    logged = {minute: count for minute, count in buckets.items() if minute < hour}
    assert logged == dict(per_minute)
    assert {minute.replace(minute=0) for minute in logged} == {start + timedelta(hours=n) for n in range(3)}
    recent = [count for minute, count in buckets.items() if minute >= hour - timedelta(minutes=1)]
    assert recent == [1]  # the line without a time, in the minute it was read

    # More lines (the next half hour of the log) and a second run: only they are added.
    more_ip, more_minute = write_log(log, start + timedelta(hours=3), 30, seed=2, append=True)
    assert run_agent("once", "-c", str(config)).returncode == 0
    assert collector_any.counts() == dict(per_ip + more_ip)
    logged = {minute: count for minute, count in series(collector_any).items() if minute < hour}
    assert logged == dict(per_minute + more_minute)
