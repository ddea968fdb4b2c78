"""The demo behind scripts/demo: a real collector, a real agent, the bundled sample logs.

Everything lives in .demo/ (recreated on each run); nothing outside the repository is touched
and nothing listens anywhere but 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".demo"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "remote_uploader", *args]


def get(url: str, token: str) -> bytes:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return bytes(response.read())


def wait_healthy(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("the collector exited before it was ready")
        try:
            with urllib.request.urlopen(url + "/v1/health", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the collector did not become healthy within 30 s")


def write_agent_config(url: str, token_file: Path) -> Path:
    logs = ROOT / "examples" / "logs"
    config = WORK / "agent.toml"
    config.write_text(f"""
[agent]
id = "demo-agent"
state_dir = "{WORK / 'agent-state'}"
stats_interval = 0

[server]
url = "{url}"
token_file = "{token_file}"

[[sources]]
paths = ["{logs / 'nginx-access.log'}", "{logs / 'app.log'}"]

[[sources]]
paths = ["{logs / 'auth.log'}"]
regex = '(?:Failed password|Invalid user) .* from (?P<ip>\\S+) port'
""")
    return config


def main() -> int:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    db = f"sqlite:///{WORK / 'collector.db'}"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    added = subprocess.run(cli("collector", "token", "add", "demo-agent", "--db", db),
                           check=True, capture_output=True, text=True)
    token = added.stdout.strip().splitlines()[-1]
    token_file = WORK / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    print(f"== collector on {url} (SQLite: {WORK / 'collector.db'})", flush=True)
    collector = subprocess.Popen(cli("collector", "serve", "--db", db, "--host", "127.0.0.1", "--port", str(port)),
                                 stdout=(WORK / "collector.log").open("wb"), stderr=subprocess.STDOUT)
    try:
        wait_healthy(url, collector)
        config = write_agent_config(url, token_file)
        print("== agent: remote-uploader once on examples/logs/*.log", flush=True)
        agent = subprocess.run(cli("once", "-c", str(config)))
        if agent.returncode != 0:
            return agent.returncode
        print("\n== top addresses at the collector (GET /v1/ips?sort=count&limit=10)")
        ips = json.loads(get(f"{url}/v1/ips?sort=count&limit=10", token))
        for item in ips["items"]:
            print(f"  {item['count']:>6}  {item['ip']:<40} agents={item.get('agents', 1)}")
        print("\n== blocklist for a firewall (GET /v1/blocklist?format=txt&min_count=20)")
        print(get(f"{url}/v1/blocklist?format=txt&min_count=20", token).decode().rstrip())
        print(f"\nThe collector's log is in {WORK / 'collector.log'}; the agent's state in {WORK / 'agent-state'}.")
        read = subprocess.run(cli("collector", "token", "add", "demo-viewer", "--read-only", "--db", db),
                              check=True, capture_output=True, text=True)
        read_token_file = WORK / "read-token"
        read_token_file.write_text(read.stdout.strip().splitlines()[-1] + "\n")
        read_token_file.chmod(0o600)
        if sys.stdin.isatty():
            print(f"\n== dashboard: sign in with the read token in {read_token_file}; Ctrl+C stops the collector")
            print(f"Dashboard: {url}/", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                collector.wait()
        else:
            print(f"\n== dashboard (read token in {read_token_file}; "
                  "the collector stops now, as nobody is at a terminal)")
            print(f"Dashboard: {url}/", flush=True)
        return 0
    finally:
        collector.send_signal(signal.SIGTERM)
        try:
            collector.wait(timeout=15)
        except subprocess.TimeoutExpired:
            collector.kill()


if __name__ == "__main__":
    raise SystemExit(main())
