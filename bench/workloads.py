"""Deterministic log workloads with exact expected per-IP counts (issue 5).

    python -m bench.workloads nginx --size 100M --out bench/data/
    python -m bench.workloads all --size 50M

Each workload writes `<out>/<name>-<size>.log` and, next to it, `<name>-<size>.json`:
`{"workload", "generator", "seed", "bytes", "lines", "occurrences", "counts": {canonical ip: n}}`.
The same name, size, seed and generator version always give the same bytes.

- nginx:  combined log format plus an X-Forwarded-For field; Zipf-distributed clients, 10% IPv6
          (some upper-case or fully written out, some IPv4-mapped `::ffff:a.b.c.d`, which count as
          the IPv4 address); user agents and paths full of version strings that are not addresses.
- sshd:   an auth log: failed passwords, invalid users, accepted keys, PAM `rhost=`, disconnects
          (`port 22:11:`), cron lines without addresses; 15% IPv6.
- dense:  one address per line, the most candidates per byte.
- sparse: an application log where 1 line in 200 has an address.

Speed: address pools, paths and a tape of 2**20 Zipf draws are made up front, and lines are
assembled from them with %-formatting, so 500 MB takes well under a minute. Addresses are only ever written
where the expected counts record them; everything else is chosen to be uncountable under the
rules in docs/extraction.md (and bench_extract checks that the extractor agrees).
"""

from __future__ import annotations

import argparse
import ipaddress
import itertools
import json
import operator
import random
import string
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_SIZE = 500 * 1000 * 1000
DEFAULT_SEED = 20240501
#: Bumped whenever a generator changes what it writes, so that stale files are made again.
GENERATOR_VERSION = 2
BATCH_LINES = 5000
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True, eq=False)  # identity hash: counting millions of them stays in C
class Address:
    written: str  # as it appears in the log
    canonical: str  # what must be counted
    line: str = ""  # `written` and a newline, for the workloads that are nothing else

    def __post_init__(self) -> None:
        object.__setattr__(self, "line", self.written + "\n")


Batch = tuple[list[str], list[Address], list[int]]  # lines, addresses in order, addresses per line


def parse_size(text: str) -> int:
    """`500M`, `50m`, `2G`, `1000` (bytes); decimal units, like the sizes in the issue."""
    units = {"K": 10**3, "M": 10**6, "G": 10**9}
    text = text.strip().upper().removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def size_label(size: int) -> str:
    for unit, factor in (("G", 10**9), ("M", 10**6), ("K", 10**3)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


# --- Address pools ----------------------------------------------------------------------------

def _ipv4(rnd: random.Random) -> str:
    # 1..223 first octet: no 0.x (unspecified at 0.0.0.0), no multicast; the last one 1..254.
    x = rnd.getrandbits(32)
    return f"{(x >> 24) % 223 + 1}.{(x >> 16) & 255}.{(x >> 8) & 255}.{x % 254 + 1}"


def _ipv6(rnd: random.Random) -> ipaddress.IPv6Address:
    prefix = rnd.choice((0x20010DB8, 0x2A001450, 0x24068600, 0x2A0398C0))
    groups = [prefix >> 16, prefix & 0xFFFF] + [rnd.choice((0, 0, rnd.getrandbits(16))) for _ in range(6)]
    if all(g == 0 for g in groups[2:]):
        groups[7] = 1
    return ipaddress.IPv6Address(sum(g << (16 * (7 - i)) for i, g in enumerate(groups)))


def address_pool(rnd: random.Random, n: int, v6_share: float, *, mapped_share: float = 0.0) -> list[Address]:
    """`n` distinct addresses; IPv6 ones in several spellings of the same canonical form."""
    pool: list[Address] = []
    seen: set[str] = set()
    while len(pool) < n:
        if rnd.random() < v6_share:
            addr = _ipv6(rnd)
            canonical = str(addr)
            style = rnd.random()
            written = addr.exploded if style < 0.1 else canonical.upper() if style < 0.2 else canonical
        else:
            canonical = _ipv4(rnd)
            written = f"::ffff:{canonical}" if rnd.random() < mapped_share else canonical
        if canonical in seen:
            continue
        seen.add(canonical)
        pool.append(Address(written, canonical))
    return pool


class Zipf:
    """Draws from `items` with weights 1/rank**s, fast.

    A tape of 2**20 weighted draws is made once; a request for k draws is a slice of the tape at a
    random offset (wrapping around). The counts stay exact because they are taken from what is
    written, and the distribution is Zipf's as far as any benchmark can tell.
    """

    TAPE = 1 << 20

    def __init__(self, items: Sequence[Address], rnd: random.Random, s: float = 1.1) -> None:
        cum_weights = list(itertools.accumulate(1.0 / (k + 1) ** s for k in range(len(items))))
        self.tape = rnd.choices(items, cum_weights=cum_weights, k=self.TAPE)

    def draw(self, rnd: random.Random, k: int) -> list[Address]:
        at = rnd.randrange(self.TAPE)
        part = self.tape[at : at + k]
        while len(part) < k:
            part += self.tape[: k - len(part)]
        return part


class Clock:
    """A log clock that advances one second every `lines_per_second` lines."""

    def __init__(self, lines_per_second: int, fmt: Callable[[time.struct_time], str]) -> None:
        self.t = 1_700_000_000
        self.every = lines_per_second
        self.fmt = fmt
        self.left = 0
        self.text = ""

    def now(self) -> str:
        if self.left == 0:
            self.t += 1
            self.left = self.every
            self.text = self.fmt(time.gmtime(self.t))
        self.left -= 1
        return self.text


def _nginx_time(t: time.struct_time) -> str:
    return f"{t.tm_mday:02d}/{MONTHS[t.tm_mon - 1]}/{t.tm_year}:{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"


def _syslog_time(t: time.struct_time) -> str:
    return f"{MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"


def _iso_time(t: time.struct_time) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", t)


# --- Workloads --------------------------------------------------------------------------------

USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.6099.129 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.1.2 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    # The frozen Chrome user agent: `119.0.0.0` follows `Chrome/`, a product version, not an address.
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/119.0.0.0 Safari/537.36 Edg/119.0.2151.97",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "curl/8.4.0",
    "python-requests/2.31.0",
    "Wget/1.21.4",
    "okhttp/4.12.0",
    "Go-http-client/1.1",
    "Java/17.0.9",
    "kube-probe/1.28",
    "Prometheus/2.48.1",
    "libwww-perl/6.72",
    "monitoring-agent v1.2.3.4 (build libfoo-2.1.0.5)",
)
PATH_SHAPES = (
    "/api/v1/items/%d",
    "/api/v2/users/%d/orders?page=%d",
    "/static/js/app-2.1.0.%d.min.js",
    "/download/libfoo-1.2.3.%d.tar.gz",
    "/docs/v1.2.3.%d/index.html",
    "/img/%d.png",
    "/search?q=release+10.%d&lang=en",
    "/health",
    "/metrics",
    "/wp-login.php?id=%d",
)
REFERERS = ("-", "-", "https://example.com/", "https://www.google.com/search?q=example", "https://example.com/cart?v=2.1.0")
METHODS = ("GET",) * 8 + ("POST", "HEAD")
STATUSES = (200,) * 12 + (301, 304, 404, 404, 500, 503)


def _fill(shape: str, rnd: random.Random) -> str:
    return shape % tuple(rnd.randint(1, 9999) for _ in range(shape.count("%d")))


class Nginx:
    """Combined log format with `"$http_x_forwarded_for"` appended."""

    LINE = '%s - - [%s] "%s %s HTTP/1.1" %d %d "%s" "%s" "%s"\n'

    def __init__(self, rnd: random.Random) -> None:
        self.rnd = rnd
        self.clients = Zipf(address_pool(rnd, 50_000, 0.10, mapped_share=0.02), rnd)
        self.proxies = address_pool(rnd, 2_000, 0.10)
        self.paths = [_fill(rnd.choice(PATH_SHAPES), rnd) for _ in range(3_000)]
        self.clock = Clock(40, _nginx_time)

    def batch(self, n: int) -> Batch:
        rnd, line = self.rnd, self.LINE
        clients = self.clients.draw(rnd, n)
        lines: list[str] = []
        ips: list[Address] = []
        per_line: list[int] = []
        for client in clients:
            ips.append(client)
            hops = 0 if rnd.random() < 0.7 else rnd.randint(1, 3)
            if hops:
                chain = rnd.sample(self.proxies, hops)
                xff = ", ".join(a.written for a in chain)
                ips.extend(chain)
            else:
                xff = "-"
            per_line.append(1 + hops)
            lines.append(line % (
                client.written, self.clock.now(), rnd.choice(METHODS), rnd.choice(self.paths),
                rnd.choice(STATUSES), rnd.randint(0, 99_999), rnd.choice(REFERERS), rnd.choice(USER_AGENTS), xff,
            ))
        return lines, ips, per_line


class Sshd:
    USERS = ("root", "admin", "ubuntu", "test", "oracle", "git", "postgres", "deploy", "user1", "pi")
    WITH_IP = (
        "%s web-1 sshd[%d]: Failed password for %s from %s port %d ssh2\n",
        "%s web-1 sshd[%d]: Failed password for invalid user %s from %s port %d ssh2\n",
        "%s web-1 sshd[%d]: Invalid user %s from %s port %d\n",
        "%s web-1 sshd[%d]: Disconnected from authenticating user %s %s port %d [preauth]\n",
    )
    RHOST = ("%s web-1 sshd[%d]: pam_unix(sshd:auth): authentication failure; "
             "logname= uid=0 euid=0 tty=ssh ruser= rhost=%s  user=%s\n")
    ACCEPTED = "%s web-1 sshd[%d]: Accepted publickey for deploy from %s port %d ssh2: ED25519 SHA256:%s\n"
    DISCONNECT = "%s web-1 sshd[%d]: Received disconnect from %s port %d:11: Bye Bye [preauth]\n"
    NO_IP = (
        "%s web-1 sshd[%d]: pam_unix(sshd:session): session closed for user deploy\n",
        "%s web-1 CRON[%d]: (root) CMD (command -v debian-sa1 > /dev/null && debian-sa1 1 1)\n",
        "%s web-1 sshd[%d]: Server listening on 0.0.0.0 port 22.\n",
        "%s web-1 sshd[%d]: Server listening on :: port 22.\n",
        "%s web-1 systemd[%d]: Started OpenBSD Secure Shell server 1:9.2p1-2+deb12u1.\n",
    )

    def __init__(self, rnd: random.Random) -> None:
        self.rnd = rnd
        self.attackers = Zipf(address_pool(rnd, 20_000, 0.15), rnd, 0.9)
        alphabet = string.ascii_letters + string.digits + "+/"
        self.fingerprints = ["".join(rnd.choice(alphabet) for _ in range(43)) for _ in range(50)]
        self.clock = Clock(5, _syslog_time)

    def batch(self, n: int) -> Batch:
        rnd = self.rnd
        attackers = self.attackers.draw(rnd, n)
        lines: list[str] = []
        ips: list[Address] = []
        per_line: list[int] = []
        for addr in attackers:
            ts, pid, kind = self.clock.now(), rnd.randint(1000, 99_999), rnd.random()
            if kind < 0.08:
                lines.append(rnd.choice(self.NO_IP) % (ts, pid))
                per_line.append(0)
                continue
            if kind < 0.70:
                lines.append(rnd.choice(self.WITH_IP) % (ts, pid, rnd.choice(self.USERS), addr.written,
                                                         rnd.randint(1024, 65535)))
            elif kind < 0.85:
                lines.append(self.RHOST % (ts, pid, addr.written, rnd.choice(self.USERS)))
            elif kind < 0.93:
                lines.append(self.DISCONNECT % (ts, pid, addr.written, rnd.randint(1024, 65535)))
            else:
                lines.append(self.ACCEPTED % (ts, pid, addr.written, rnd.randint(1024, 65535),
                                              rnd.choice(self.fingerprints)))
            ips.append(addr)
            per_line.append(1)
        return lines, ips, per_line


_LINE = operator.attrgetter("line")


class Dense:
    def __init__(self, rnd: random.Random) -> None:
        self.rnd = rnd
        self.pool = Zipf(address_pool(rnd, 200_000, 0.15, mapped_share=0.01), rnd, 0.8)

    def batch(self, n: int) -> Batch:
        chosen = self.pool.draw(self.rnd, n)
        return list(map(_LINE, chosen)), chosen, [1] * n


class Sparse:
    QUIET = (
        "%s.%03dZ INFO  [worker-%d] com.example.billing.Invoices - invoice %d done in %d ms (build-2.1.0.5)\n",
        "%s.%03dZ DEBUG [worker-%d] com.example.cache.Lru - evicted %d entries, %d left; schema v1.2.3.4\n",
        "%s.%03dZ INFO  [http-%d] com.example.web.Router - GET /api/v1/items/%d -> 200 (%d ms)\n",
        "%s.%03dZ WARN  [worker-%d] com.example.queue.Consumer - retry %d of job %d after 12:30:00 backoff\n",
    )
    LOUD = (
        "%s.%03dZ WARN  [http-%d] com.example.web.RateLimiter - rejected request from %s (limit %d/min)\n",
        "%s.%03dZ INFO  [http-%d] com.example.web.Session - login ok client_ip=%s session=%d\n",
    )

    def __init__(self, rnd: random.Random) -> None:
        self.rnd = rnd
        self.pool = Zipf(address_pool(rnd, 5_000, 0.10), rnd)
        self.clock = Clock(200, _iso_time)

    def batch(self, n: int) -> Batch:
        rnd = self.rnd
        lines: list[str] = []
        ips: list[Address] = []
        per_line: list[int] = []
        randint = rnd.randint
        for _ in range(n):
            ts, ms, worker = self.clock.now(), randint(0, 999), randint(1, 16)
            if randint(1, 200) == 1:
                addr = self.pool.draw(rnd, 1)[0]
                lines.append(rnd.choice(self.LOUD) % (ts, ms, worker, addr.written, randint(1, 600)))
                ips.append(addr)
                per_line.append(1)
            else:
                lines.append(rnd.choice(self.QUIET) % (ts, ms, worker, randint(1, 10**6), randint(1, 999)))
                per_line.append(0)
        return lines, ips, per_line


WORKLOADS: dict[str, Callable[[random.Random], Nginx | Sshd | Dense | Sparse]] = {
    "nginx": Nginx, "sshd": Sshd, "dense": Dense, "sparse": Sparse,
}


@dataclass(frozen=True)
class Workload:
    name: str
    log: Path
    expected: Path

    def counts(self) -> dict[str, int]:
        data: dict[str, int] = json.loads(self.expected.read_text())["counts"]
        return data


def paths_for(name: str, size: int, out: Path) -> Workload:
    stem = f"{name}-{size_label(size)}"
    return Workload(name, out / f"{stem}.log", out / f"{stem}.json")


def generate(name: str, size: int = DEFAULT_SIZE, out: Path = Path("bench/data"), seed: int = DEFAULT_SEED) -> Workload:
    """Write the workload (at most `size` bytes, whole lines) and its expected counts; return the paths."""
    wl = paths_for(name, size, out)
    out.mkdir(parents=True, exist_ok=True)
    gen = WORKLOADS[name](random.Random(f"{name}:{seed}"))
    seen: Counter[Address] = Counter()
    written = lines = 0
    tmp = wl.log.with_suffix(".log.tmp")
    with tmp.open("wb") as fh:
        while written < size:
            batch_lines, ips, per_line = gen.batch(BATCH_LINES)
            chunk = "".join(batch_lines).encode()
            if written + len(chunk) > size:
                keep, room = 0, size - written
                for text in batch_lines:
                    room -= len(text.encode())
                    if room < 0:
                        break
                    keep += 1
                batch_lines, ips = batch_lines[:keep], ips[: sum(per_line[:keep])]
                chunk = "".join(batch_lines).encode()
                if not batch_lines:
                    break
            fh.write(chunk)
            seen.update(ips)
            written += len(chunk)
            lines += len(batch_lines)
    tmp.replace(wl.log)
    counts: Counter[str] = Counter()
    for addr, n in seen.items():
        counts[addr.canonical] += n
    wl.expected.write_text(json.dumps({
        "workload": name, "generator": GENERATOR_VERSION, "seed": seed, "bytes": written, "lines": lines,
        "occurrences": sum(counts.values()), "counts": dict(sorted(counts.items())),
    }, separators=(",", ":")))
    return wl


def ensure(name: str, size: int, out: Path, seed: int = DEFAULT_SEED) -> Workload:
    """The workload's paths, generating it first if it is not there yet (or was cut short)."""
    wl = paths_for(name, size, out)
    if wl.log.exists() and wl.expected.exists():
        meta = json.loads(wl.expected.read_text())
        fresh = meta.get("generator") == GENERATOR_VERSION and meta.get("seed") == seed
        if fresh and meta.get("bytes") == wl.log.stat().st_size:
            return wl
    return generate(name, size, out, seed)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.workloads", description=__doc__.split("\n\n")[0])
    parser.add_argument("workload", choices=[*WORKLOADS, "all"])
    parser.add_argument("--size", type=parse_size, default=DEFAULT_SIZE, help="e.g. 500M (default), 50M, 2G")
    parser.add_argument("--out", type=Path, default=Path("bench/data"))
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    for name in WORKLOADS if args.workload == "all" else [args.workload]:
        began = time.perf_counter()
        wl = generate(name, args.size, args.out, args.seed)
        meta = json.loads(wl.expected.read_text())
        print(f"{wl.log}: {meta['bytes']} bytes, {meta['lines']} lines, {meta['occurrences']} addresses "
              f"({len(meta['counts'])} distinct) in {time.perf_counter() - began:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
