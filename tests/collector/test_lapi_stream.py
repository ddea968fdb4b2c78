"""The CrowdSec decision stream and live lookups, against a real collector process.

Decisions are added and deleted through the storage library on the collector's own database
(as `collector decision add` does); the answers are read over HTTP as a bouncer reads them.
One collector serves the whole module: each test gives its decisions an origin of its own and
pulls only that origin (CrowdSec's `origins` filter), with keys of its own.
"""

from __future__ import annotations

import gzip
import http.client
import json
import re
import sqlite3
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from remote_uploader.collector.auth import create_bouncer_key
from remote_uploader.collector.lapi import StreamFilter
from remote_uploader.collector.routers.lapi import CHUNK, Encoder, Pull, wants_gzip
from remote_uploader.collector.storage import open_storage
from remote_uploader.collector.storage.base import Storage
from remote_uploader.collector.storage.model import NewDecision
from tests.helpers.bouncers import wait_for
from tests.helpers.collector_fixtures import CollectorThread

DURATION = re.compile(r"^-?\d+h\d+m\d+(\.\d{1,6})?s$")
UA = {"User-Agent": "crowdsec-firewall-bouncer/v0.0.25"}


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CollectorThread]:
    workdir = tmp_path_factory.mktemp("lapi")
    collector = CollectorThread(workdir, f"sqlite://{workdir}/collector.db")
    collector.start()
    yield collector
    collector.stop()


@pytest.fixture
def db(collector: CollectorThread) -> Iterator[Storage]:
    storage = open_storage(collector.db_url, pool_size=2)
    yield storage
    storage.close()


ORIGIN = ""
NET = 0


@pytest.fixture(autouse=True)
def origin(request: pytest.FixtureRequest) -> Iterator[str]:
    """This test's own origin (its decisions carry it, its pulls ask for it only) and its own
    addresses (a value has one active decision at a time, whoever made it): see `v`."""
    global ORIGIN, NET
    ORIGIN = "t-" + request.node.name[5:40]
    NET += 1
    yield ORIGIN


def v(value: str) -> str:
    """This test's version of an example address or range: 198.51.100.7 -> 198.51.NET.7."""
    if ":" in value:
        return value.replace("2001:db8::", f"2001:db8:{NET:x}::")
    address, slash, prefix = value.partition("/")
    octets = address.split(".")
    octets[2] = str(NET)
    return ".".join(octets) + slash + prefix


def key_for(db: Storage, name: str) -> str:
    return create_bouncer_key(db, f"{ORIGIN}-{name}")


def decide(db: Storage, value: str, seconds: float = 3600, scenario: str = "manual") -> int:
    scope = "Range" if "/" in value else "Ip"
    until = datetime.now(UTC) + timedelta(seconds=seconds)
    made = NewDecision(value=value, scope=scope, until=until, scenario=scenario, origin=ORIGIN)
    [(decision, created)] = db.add_decisions([made], datetime.now(UTC))
    assert created
    return decision.id


def expire(db_url: str, decision_id: int) -> None:
    """Move a decision's end into the past in the collector's own database.

    Why not a decision of a second or two: on a loaded machine the pull that must see it as new
    can come after it already ended, and the test would fail for the machine's sake. Time is moved
    here, at the point the test chooses; the collector's own expiry then does the rest.
    """
    past = int((datetime.now(UTC) - timedelta(seconds=1)).timestamp() * 1_000_000)
    if db_url.startswith("sqlite://"):
        with sqlite3.connect(db_url.removeprefix("sqlite://")) as connection:
            connection.execute("UPDATE decisions SET until = ? WHERE id = ?", (past, decision_id))
        return
    with psycopg.connect(db_url, autocommit=True) as connection:
        connection.execute("UPDATE decisions SET until = %s WHERE id = %s", (past, decision_id))


def pull(collector: CollectorThread, key: str, **params: str) -> dict[str, Any]:
    params.setdefault("origins", ORIGIN)
    response = httpx.get(
        collector.url + "/v1/decisions/stream", params=params, headers={"X-Api-Key": key, **UA}, timeout=30
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def values(decisions: list[dict[str, Any]] | None) -> set[str]:
    return {d["value"] for d in decisions or []}


def test_startup_sends_every_active_decision_and_later_pulls_only_the_changes(
    collector: CollectorThread, db: Storage
) -> None:
    key = key_for(db, "fw-1")
    decide(db, v("198.51.100.7"), scenario="sshd-bruteforce")
    decide(db, v("2001:db8::5"))
    gone = decide(db, v("192.0.2.9"))
    decide(db, v("203.0.113.0/24"), seconds=4 * 3600)
    first = pull(collector, key, startup="true")
    assert values(first["new"]) == {v("198.51.100.7"), v("2001:db8::5"), v("192.0.2.9"), v("203.0.113.0/24")}
    assert first["deleted"] == []
    by_value = {d["value"]: d for d in first["new"]}
    ranged = by_value[v("203.0.113.0/24")]
    assert ranged["scope"] == "Range" and by_value[v("2001:db8::5")]["scope"] == "Ip"
    assert set(ranged) >= {"id", "origin", "type", "scope", "value", "duration", "scenario"}
    assert ranged["type"] == "ban" and DURATION.match(ranged["duration"])
    assert ranged["duration"].startswith(("3h59m", "4h0m0s"))  # hours, minutes, seconds all written
    assert by_value[v("198.51.100.7")]["scenario"] == "sshd-bruteforce"

    assert pull(collector, key) == {"new": [], "deleted": []}  # nothing changed
    decide(db, v("198.51.100.8"))
    db.delete_decisions(datetime.now(UTC), decision_id=gone)
    delta = pull(collector, key, startup="false")
    assert values(delta["new"]) == {v("198.51.100.8")}
    assert values(delta["deleted"]) == {v("192.0.2.9")}
    assert pull(collector, key) == {"new": [], "deleted": []}


def test_each_key_has_its_own_delta(collector: CollectorThread, db: Storage) -> None:
    one, two = key_for(db, "fw-1"), key_for(db, "fw-2")
    pull(collector, one, startup="true")
    decide(db, v("198.51.100.7"))
    assert values(pull(collector, one)["new"]) == {v("198.51.100.7")}
    # fw-2 never pulled: its first pull is a full one, whatever it asks for.
    assert values(pull(collector, two)["new"]) == {v("198.51.100.7")}
    assert pull(collector, two)["new"] == []


def test_an_expired_decision_goes_to_deleted(collector: CollectorThread, db: Storage) -> None:
    key = key_for(db, "fw-1")
    made = decide(db, v("198.51.100.7"))
    assert values(pull(collector, key, startup="true")["new"]) == {v("198.51.100.7")}
    expire(collector.db_url, made)
    deleted = wait_for(lambda: pull(collector, key)["deleted"], "the expired decision in deleted")
    assert values(deleted) == {v("198.51.100.7")}
    assert DURATION.match(deleted[0]["duration"]) and deleted[0]["duration"].startswith("-")


def test_a_replaced_decision_is_taken_back_and_sent_again(collector: CollectorThread, db: Storage) -> None:
    key = key_for(db, "fw-1")
    old = decide(db, v("198.51.100.7"), seconds=60)
    pull(collector, key, startup="true")
    [(longer, _)] = db.add_decisions(
        [NewDecision(value=v("198.51.100.7"), scope="Ip", until=datetime.now(UTC) + timedelta(hours=4), origin=ORIGIN)],
        datetime.now(UTC),
        replace=True,
    )
    delta = pull(collector, key)
    # Bouncers apply `deleted` before `new`: the firewall bouncer drops the old nftables element
    # and adds one with the longer timeout (it would skip an address it holds already).
    assert [d["id"] for d in delta["deleted"]] == [old]
    assert [d["id"] for d in delta["new"]] == [longer.id]


def test_filters_apply_to_new_and_deleted(collector: CollectorThread, db: Storage) -> None:
    key = key_for(db, "fw-1")
    decide(db, v("198.51.100.7"), scenario="sshd-bruteforce")
    web = decide(db, v("198.51.100.8"), scenario="web-scan")
    decide(db, v("203.0.113.0/24"), scenario="sshd-range")
    chosen = {"scopes": "ip", "scenarios_not_containing": "WEB"}
    assert values(pull(collector, key, startup="true", **chosen)["new"]) == {v("198.51.100.7")}
    db.delete_decisions(datetime.now(UTC), decision_id=web)
    assert pull(collector, key, **chosen) == {"new": [], "deleted": []}
    assert values(pull(collector, key, startup="true", scenarios_containing="range")["new"]) == {v("203.0.113.0/24")}
    assert pull(collector, key, startup="true", origins="CAPI")["new"] == []


def test_unknown_parameters_are_ignored_and_bad_ones_named(collector: CollectorThread, db: Storage) -> None:
    key = key_for(db, "fw-1")
    assert pull(collector, key, startup="true", dedup="false", whatever="1") == {"new": [], "deleted": []}
    for params, field in (({"scopes": "ip,username"}, "query.scopes"), ({"startup": "maybe"}, "query.startup")):
        response = httpx.get(collector.url + "/v1/decisions/stream", params=params, headers={"X-Api-Key": key})
        assert response.status_code == 400
        assert response.json()["detail"][0]["field"] == field and field in response.json()["message"]


def test_keys_tokens_and_endpoints_do_not_mix(collector: CollectorThread, db: Storage) -> None:
    key = key_for(db, "fw-1")
    stream = collector.url + "/v1/decisions/stream"
    missing = httpx.get(stream)
    assert missing.status_code == 401 and "X-Api-Key" in missing.json()["message"]
    assert httpx.get(stream, headers={"X-Api-Key": "rub_nonsense"}).status_code == 401
    agent = httpx.get(stream, headers={"X-Api-Key": collector.token})
    assert agent.status_code == 403 and "bouncer key" in agent.json()["detail"][0]["error"]
    batch = {"agent": "test-agent", "batch_id": "b1", "sent_at": "2026-05-01T12:00:00Z", "records": []}
    sent = collector.post_batch(batch, token=key)
    assert sent.status_code == 403 and "only pull decisions" in sent.text
    assert collector.get("/v1/ips", token=key).status_code == 403
    db.revoke_bouncer(f"{ORIGIN}-fw-1")
    assert httpx.get(stream, headers={"X-Api-Key": key}).status_code == 401


def test_head_is_a_probe_that_reads_and_records_nothing(collector: CollectorThread, db: Storage) -> None:
    key = key_for(db, "fw-1")
    for path in ("/v1/decisions/stream", "/v1/decisions"):
        response = httpx.head(collector.url + path, headers={"X-Api-Key": key})
        assert response.status_code == 200 and response.content == b""
    [bouncer] = [b for b in db.list_bouncers() if b.name == f"{ORIGIN}-fw-1"]
    assert bouncer.last_pull_at is None
    assert httpx.head(collector.url + "/v1/decisions/stream", headers={"X-Api-Key": "bad"}).status_code == 401


def test_live_lookup_finds_addresses_and_ranges_and_answers_null(collector: CollectorThread, db: Storage) -> None:
    key = key_for(db, "nginx")
    decide(db, v("198.51.100.7"))
    ranged = decide(db, v("203.0.113.0/24"), scenario="sshd-range")

    def live(**params: str) -> httpx.Response:
        return httpx.get(
            collector.url + "/v1/decisions", params={"origins": ORIGIN, **params}, headers={"X-Api-Key": key}
        )

    inside = live(ip=v("203.0.113.77")).json()
    assert [d["id"] for d in inside] == [ranged] and inside[0]["scope"] == "Range"
    assert values(live(ip=v("198.51.100.7")).json()) == {v("198.51.100.7")}
    nothing = live(ip=v("192.0.2.1"))
    assert nothing.status_code == 200 and nothing.content == b"null"  # the lua bouncer compares to "null"
    assert values(live(range=v("203.0.113.128/25")).json()) == {v("203.0.113.0/24")}
    assert live(range=v("203.0.0.0/16")).content == b"null"  # no decision holds the whole /16
    assert values(live(range=v("203.0.0.0/16"), contains="false").json()) == {v("203.0.113.0/24")}
    assert values(live().json()) == {v("198.51.100.7"), v("203.0.113.0/24")}
    assert values(live(scope="range").json()) == {v("203.0.113.0/24")}
    bad = live(ip="203.0.113.300")
    assert bad.status_code == 400 and bad.json()["detail"][0]["field"] == "query.ip"


def test_usage_metrics_are_accepted_quietly(collector: CollectorThread, db: Storage) -> None:
    key = key_for(db, "fw-1")
    body = {"remediation_components": [{"type": "crowdsec-firewall-bouncer", "metrics": []}]}
    response = httpx.post(collector.url + "/v1/usage-metrics", json=body, headers={"X-Api-Key": key})
    assert response.status_code == 201
    assert httpx.post(collector.url + "/v1/usage-metrics", json=body).status_code == 401


def test_a_pull_cut_short_records_nothing_and_is_sent_again(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite://{tmp_path}/c.db", pool_size=2)
    try:
        storage.migrate()
        create_bouncer_key(storage, "fw-1")
        for n in range(3):
            decide(storage, f"198.51.100.{n + 1}")

        def start(startup: bool) -> Iterator[bytes]:
            [bouncer] = storage.list_bouncers()
            made = Pull(storage, bouncer, startup, StreamFilter(), "test")
            return made.body(made.first_page())

        body = start(True)
        next(body)
        body.close()  # the connection went away: Starlette stops iterating the body
        assert storage.list_bouncers()[0].last_seq is None
        assert b"198.51.100.3" in b"".join(start(False))  # still a full answer
        mark = storage.list_bouncers()[0].last_seq
        assert mark is not None and mark == storage.decision_seq()
    finally:
        storage.close()


def raw_get(collector: CollectorThread, target: str, headers: dict[str, str]) -> http.client.HTTPResponse:
    """A GET as a bouncer's HTTP client sends it, with exactly these headers (httpx would add its
    own Accept-Encoding and decode the answer)."""
    host, port = collector.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.request("GET", target, headers=headers)
    return connection.getresponse()


def timeless(answer: dict[str, Any]) -> dict[str, Any]:
    """A stream answer without the durations (time left: they differ between two pulls)."""
    return {part: [{**d, "duration": None} for d in answer[part]] for part in ("new", "deleted")}


def test_answers_are_gzipped_for_bouncers_that_accept_gzip(collector: CollectorThread, db: Storage) -> None:
    decide(db, v("198.51.100.7"))
    decide(db, v("203.0.113.0/24"))
    target = f"/v1/decisions/stream?startup=true&origins={ORIGIN}"
    plain = raw_get(collector, target, {"X-Api-Key": key_for(db, "fw-plain")})
    assert plain.getheader("Content-Encoding") is None and plain.getheader("Vary") == "Accept-Encoding"
    expected = json.loads(plain.read())
    # Go's HTTP client sends exactly this header by itself (crowdsec-firewall-bouncer does).
    zipped = raw_get(collector, target, {"X-Api-Key": key_for(db, "fw-go"), "Accept-Encoding": "gzip"})
    assert zipped.status == 200 and zipped.getheader("Content-Encoding") == "gzip"
    assert timeless(json.loads(gzip.decompress(zipped.read()))) == timeless(expected)
    assert values(expected["new"]) == {v("198.51.100.7"), v("203.0.113.0/24")}
    refused = raw_get(collector, target, {"X-Api-Key": key_for(db, "fw-q0"), "Accept-Encoding": "gzip;q=0, br"})
    assert refused.getheader("Content-Encoding") is None and timeless(json.loads(refused.read())) == timeless(expected)

    key = key_for(db, "live")
    for ip, answer in ((v("198.51.100.7"), [v("198.51.100.7")]), (v("192.0.2.1"), None)):
        live = raw_get(collector, f"/v1/decisions?ip={ip}", {"X-Api-Key": key, "Accept-Encoding": "deflate, gzip"})
        assert live.getheader("Content-Encoding") == "gzip"
        found = json.loads(gzip.decompress(live.read()))
        assert (found if found is None else [d["value"] for d in found]) == answer
    # An error stays plain JSON, whatever the client accepts.
    denied = raw_get(collector, target, {"X-Api-Key": "rub_nope", "Accept-Encoding": "gzip"})
    assert denied.status == 401 and "X-Api-Key" in json.loads(denied.read())["message"]


@pytest.mark.parametrize(
    ("header", "gzipped"),
    [
        ("gzip", True),
        ("GZIP;q=0.5", True),
        ("x-gzip", True),
        ("br, gzip", True),
        ("gzip;q=0", False),
        ("*", False),
        ("identity", False),
        ("", False),
        ("gzip;q=nonsense", False),
    ],
)
def test_accept_encoding_is_read_as_http_means_it(header: str, gzipped: bool) -> None:
    assert wants_gzip(header) is gzipped


def test_a_large_pull_is_compressed_chunk_by_chunk_and_decodes_as_it_arrives(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite://{tmp_path}/c.db", pool_size=2)
    try:
        storage.migrate()
        create_bouncer_key(storage, "fw-1")
        until = datetime.now(UTC) + timedelta(hours=1)
        news = [NewDecision(f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}", "Ip", until) for n in range(6000)]
        storage.add_decisions(news, datetime.now(UTC))

        def start(encoder: Encoder) -> Iterator[bytes]:
            [bouncer] = storage.list_bouncers()
            made = Pull(storage, bouncer, True, StreamFilter(), "test")
            return made.body(made.first_page(), encoder)

        # Cut short after its first chunk: not a whole gzip stream, and nothing recorded.
        body = start(Encoder(gzip=True))
        with pytest.raises(EOFError):
            gzip.decompress(next(body))
        body.close()
        assert storage.list_bouncers()[0].last_seq is None

        chunks = list(start(Encoder(gzip=True)))
        assert len(chunks) >= 3  # each CHUNK of JSON went out as soon as it was compressed
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        sizes = [len(decoder.decompress(chunk)) for chunk in chunks]
        assert all(size >= CHUNK for size in sizes[:-1])  # each chunk decodes whole on arrival
        assert decoder.eof
        answer = json.loads(gzip.decompress(b"".join(chunks)))
        assert len(answer["new"]) == 6000 and answer["deleted"] == []
        assert sum(map(len, chunks)) * 5 < sum(sizes)  # and it is worth it
        assert storage.list_bouncers()[0].last_seq == storage.decision_seq()
    finally:
        storage.close()


@pytest.mark.postgres
def test_the_stream_works_the_same_on_postgresql(collector_pg: CollectorThread) -> None:
    storage = open_storage(collector_pg.db_url, pool_size=2)
    try:
        key = create_bouncer_key(storage, "fw-pg")
        kept = decide(storage, v("198.51.100.7"))
        gone = decide(storage, v("203.0.113.0/24"))
        first = pull(collector_pg, key, startup="true")
        assert [d["id"] for d in first["new"]] == [kept, gone] and first["new"][1]["scope"] == "Range"
        storage.delete_decisions(datetime.now(UTC), decision_id=gone)
        made = decide(storage, v("198.51.100.8"))
        delta = pull(collector_pg, key)
        assert [d["id"] for d in delta["deleted"]] == [gone] and [d["id"] for d in delta["new"]] == [made]
        expire(collector_pg.db_url, made)
        expired = wait_for(lambda: pull(collector_pg, key)["deleted"], "the expired decision in deleted")
        assert [d["id"] for d in expired] == [made]
        live = httpx.get(
            collector_pg.url + "/v1/decisions", params={"ip": v("198.51.100.7")}, headers={"X-Api-Key": key}
        )
        assert [d["id"] for d in live.json()] == [kept]
    finally:
        storage.close()
