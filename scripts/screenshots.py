"""Screenshots of every dashboard page for docs/dashboard.md, from a realistic demo dataset.

    scripts/screenshots [--out docs/dashboard] [--keep]

Builds a week of traffic in a fresh SQLite collector database (five agents, three sources,
brute-forcers and scanners among ordinary visitors; one agent silent, one lagging), stored
through the collector's own parser and `Storage.store_batch` with past arrival times, then
starts `collector serve` on 127.0.0.1, signs in with a read token in headless Chromium
(/usr/bin/chromium) and saves one PNG per page, at desktop and phone width. Addresses are from
the documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from remote_uploader.collector.auth import create_token  # noqa: E402
from remote_uploader.collector.batch import parse_batch  # noqa: E402
from remote_uploader.collector.storage import open_storage  # noqa: E402
from remote_uploader.collector.storage.base import Storage  # noqa: E402
from remote_uploader.collector.storage.model import WindowQuery  # noqa: E402
from remote_uploader.protocol import format_time  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
AGENTS = {  # name: (sources, share of traffic, seconds its last batch lies in the past, seconds in its queue)
    "web-1": (("/var/log/nginx/access.log", "/var/log/auth.log"), 0.4, 20, 2),
    "web-2": (("/var/log/nginx/access.log", "/var/log/auth.log"), 0.3, 35, 1),
    "mail-1": (("/var/log/mail.log", "/var/log/auth.log"), 0.15, 50, 3),
    "backup-1": (("/var/log/auth.log",), 0.1, 40, 420),  # lagging: batches wait minutes in its queue
    "vpn-gw": (("/var/log/auth.log",), 0.05, 3 * 3600, 1),  # silent for three hours
}


def addresses(rng: random.Random) -> tuple[list[str], list[str]]:
    """(ordinary visitors, attackers): attackers are few, hit often and cluster in ranges."""
    visitors = [f"192.0.2.{i}" for i in range(1, 255)] + [f"2001:db8:{rng.randrange(1, 0xffff):x}::{i:x}"
                                                          for i in range(1, 60)]
    attackers = [f"203.0.113.{i}" for i in rng.sample(range(1, 255), 24)]
    attackers += [f"198.51.100.{i}" for i in rng.sample(range(1, 255), 8)] + ["2001:db8:bad::17", "2001:db8:bad::42"]
    return visitors, attackers


def build(storage: Storage, now: datetime, seed: int = 7) -> datetime:
    """A week of traffic up to `now`, then the minutes that passed meanwhile; returns the last."""
    rng = random.Random(seed)
    visitors, attackers = addresses(rng)
    # Arrival times: every minute of the last two hours, every five minutes of the day before,
    # every hour of the week before; a burst (a scanner) thirty minutes ago.
    moments = [now - timedelta(minutes=m) for m in range(0, 120)]
    moments += [now - timedelta(minutes=m) for m in range(120, 24 * 60, 5)]
    moments += [now - timedelta(hours=h) for h in range(24, 7 * 24)]
    traffic(storage, sorted(moments), now, rng, visitors, attackers)
    last = now
    while (current := datetime.now(UTC).replace(second=0, microsecond=0)) > last:  # catch up
        missed = [last + timedelta(minutes=m) for m in range(1, int((current - last).total_seconds() // 60) + 1)]
        first_id = len(moments) * 10 + int(last.timestamp())
        traffic(storage, missed, missed[-1], rng, visitors, attackers, first_id=first_id)
        last = current
    return last


def traffic(storage: Storage, moments: list[datetime], now: datetime, rng: random.Random, visitors: list[str],
            attackers: list[str], first_id: int = 0) -> None:
    weights = [1 / (rank + 1) ** 1.2 for rank in range(len(attackers))]
    batch_number = first_id
    for moment in moments:
        age = (now - moment).total_seconds()
        spacing = 60 if age < 7200 else (300 if age < 86400 else 3600)
        daily = 0.6 + 0.4 * abs(((moment.hour + moment.minute / 60) - 4) % 24 - 12) / 12  # busier by day
        for agent, (sources, share, silent_for, queued_for) in AGENTS.items():
            if age < silent_for:
                continue
            records = []
            volume = int(share * daily * spacing * rng.uniform(1.5, 2.5))
            if 1800 <= age < 2400 and agent == "web-1":
                volume *= 6  # the burst
            seen = moment - timedelta(seconds=queued_for)
            stamp = format_time(seen)
            counts: dict[tuple[str, str], int] = {}
            for _ in range(volume):
                if rng.random() < 0.45:
                    ip = rng.choices(attackers, weights)[0]
                    source = "/var/log/auth.log" if "/var/log/auth.log" in sources else sources[0]
                else:
                    ip = rng.choice(visitors)
                    source = rng.choice(sources)
                counts[(ip, source)] = counts.get((ip, source), 0) + 1
            for (ip, source), count in counts.items():
                records.append({"ip": ip, "count": count, "first_seen": stamp, "last_seen": stamp, "source": source})
            batch_number += 1
            body = {"agent": agent, "batch_id": f"demo-{batch_number}", "sent_at": stamp, "records": records}
            storage.store_batch(parse_batch(json.dumps(body).encode(), agent), moment)


def decide(storage: Storage, now: datetime) -> int:
    """Decisions as rules would have made them (with their evidence), a range, and some by hand."""
    from remote_uploader.collector.storage.model import Evidence, NewDecision

    top = storage.window_counts(WindowQuery(since=now - timedelta(minutes=10), limit=40, min_count=20))
    minute = now - timedelta(minutes=10)
    made = []
    for row in top[:12]:
        evidence = (Evidence(row.ip, row.count, row.first_bucket, row.last_bucket),)
        rule = "sshd-bruteforce" if row.ip.startswith("203.") else "web-scanner"
        made.append(NewDecision(row.ip, "Ip", now + timedelta(hours=4), scenario=rule,
                                reason=f"{row.count} occurrences within 10m (rule: at least 20)",
                                details={"rule": rule, "window": "10m", "min_count": 20, "escalation_step": 1},
                                evidence=evidence))
    in_range = [row for row in top if row.ip.startswith("203.0.113.")][:6]
    made.append(NewDecision("203.0.113.0/24", "Range", now + timedelta(hours=24), scenario="subnet-24",
                            reason=f"{len(in_range)} addresses of 203.0.113.0/24 crossed sshd-bruteforce",
                            details={"rule": "subnet-24", "prefix_v4": 24, "min_addresses": 5},
                            evidence=tuple(Evidence(r.ip, r.count, r.first_bucket, r.last_bucket) for r in in_range)))
    made.append(NewDecision("2001:db8:bad::/64", "Range", now + timedelta(days=7), origin="cscli",
                            reason="known scanner network (ticket OPS-1432)"))
    stored = storage.add_decisions(made, minute)
    old = [NewDecision(f"198.51.100.{i}", "Ip", now - timedelta(hours=i), scenario="web-scanner",
                       reason="40 occurrences within 10m (rule: at least 20)") for i in range(1, 6)]
    storage.add_decisions(old, now - timedelta(days=1))
    storage.expire_decisions(now)
    return next(decision.id for decision, _ in stored if decision.scenario == "subnet-24")


def start_collector(db: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    process = subprocess.Popen([sys.executable, "-m", "remote_uploader.collector.cli", "serve", "--db", db,
                                "--host", "127.0.0.1", "--port", "0", "--parse-workers", "0"],
                               stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=log.parent)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        match = re.search(rb'msg="collector listening" url=(\S+)', log.read_bytes())
        if match:
            return process, match.group(1).decode()
        if process.poll() is not None:
            raise SystemExit(f"the collector exited:\n{log.read_text()}")
        time.sleep(0.1)
    raise SystemExit("the collector did not start")


def shoot(url: str, token: str, out: Path, detail_ip: str, decision_id: int) -> list[Path]:
    from playwright.sync_api import sync_playwright

    shots = [
        ("signin", "/", None),
        ("overview", "/", 1280),
        ("overview-day", "/?window=24h", 1280),
        ("ips", "/ips?since=24h", 1280),
        ("ips-filtered", "/ips?since=1h&cidr=203.0.113.0%2F24&agent=web-1", 1280),
        ("address", f"/ips/{detail_ip}", 1280),
        ("agents", "/agents", 1280),
        ("decisions", "/decisions", 1280),
        ("decision", f"/decisions/{decision_id}", 1280),
        ("phone-overview", "/", 390),
        ("phone-ips", "/ips", 390),
    ]
    made = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
        page = context.new_page()
        page.goto(url + "/")
        page.screenshot(path=str(out / "signin.png"))
        made.append(out / "signin.png")
        page.fill("#token", token)
        with page.expect_navigation():
            page.click("button[type=submit]")
        for name, path, width in shots[1:]:
            assert width is not None
            page.set_viewport_size({"width": width, "height": 900 if width > 600 else 844})
            page.goto(url + path)
            target = out / f"{name}.png"
            page.screenshot(path=str(target), full_page=not name.startswith(("ips", "phone-ips")))
            made.append(target)
        browser.close()
    return made


def report(storage: Storage, now: datetime) -> None:
    """Each agent's latest status report (docs/protocol.md, "Agent status"), as its last batch or
    heartbeat said: backup-1's queue backs up (batches wait minutes), vpn-gw's last word, three
    hours ago, was that its uploads were failing."""
    from remote_uploader import __version__
    from remote_uploader.protocol import AgentReport

    for agent, (_, _, silent_for, queued_for) in AGENTS.items():
        failing = 900.0 if agent == "vpn-gw" else 0.0
        queued = 240 if agent == "backup-1" else 1 if agent != "vpn-gw" else 57
        sources = (("/var/log/auth.log", 48_213_000),) if agent == "backup-1" else ()
        storage.store_agent_report(agent, AgentReport(
            version=__version__, queued_batches=queued, queued_records=queued * 812, queued_bytes=queued * 9_800,
            oldest_age=float(queued_for if agent != "vpn-gw" else 1_000), failing_for=failing, sources=sources,
        ), now - timedelta(seconds=silent_for))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard")
    parser.add_argument("--keep", action="store_true", help="keep the collector running until Ctrl+C")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ru-screens-"))
    db = f"sqlite://{work / 'collector.db'}"
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    storage = open_storage(db)
    try:
        storage.migrate()
        now = build(storage, now)
        range_decision = decide(storage, now)
        report(storage, now)
        token = create_token(storage, "screenshots", "read")
    finally:
        storage.close()
    process, url = start_collector(db, work / "collector.log")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        for path in shoot(url, token, args.out, f"203.0.113.{_top_attacker()}", range_decision):
            print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
        if args.keep:
            print(f"dashboard: {url}/  (read token: {token})  Ctrl+C stops it")
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _top_attacker() -> int:
    rng = random.Random(7)
    _, attackers = addresses(rng)
    return int(attackers[0].rsplit(".", 1)[1])


if __name__ == "__main__":
    raise SystemExit(main())
