"""The HTTP API on a real collector process (SQLite, and PostgreSQL where marked)."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.helpers.batches import record, wire_batch
from tests.helpers.collector_fixtures import CollectorProcess, CollectorThread

MakeCollector = Callable[..., CollectorThread]


def test_a_batch_is_counted_once_and_its_replay_answers_duplicate(collector_any: CollectorThread) -> None:
    c = collector_any
    batch = wire_batch(
        "test-agent", "b-1", [record("203.0.113.7", 3), record("2001:db8::1", 2), record("203.0.113.7", 1)]
    )
    first = c.post_batch(batch)
    assert (first.status_code, first.json()) == (200, {"batch_id": "b-1", "accepted": 3, "duplicate": False,
                                                       "agent": "test-agent"})
    replay = c.post_batch(batch, compress=False)
    assert (replay.status_code, replay.json()) == (200, {"batch_id": "b-1", "accepted": 3, "duplicate": True,
                                                        "agent": "test-agent"})
    assert c.counts() == {"203.0.113.7": 4, "2001:db8::1": 2}
    (agent,) = c.get("/v1/agents").json()["items"]
    assert (agent["agent"], agent["batches"], agent["duplicates"], agent["records"]) == ("test-agent", 1, 1, 3)


def test_the_batch_agent_must_be_the_token_name(collector: CollectorThread) -> None:
    response = collector.post_batch(wire_batch("someone-else", "b-1", [record("203.0.113.7")]))
    assert response.status_code == 403
    assert response.json()["detail"][0]["field"] == "agent"
    assert collector.counts() == {}


def test_a_name_mismatch_is_403_even_in_an_otherwise_empty_body(collector: CollectorThread) -> None:
    # What an agent's self-test can send: 403 means "this token is not for this agent id",
    # 400 means "token and id accepted" (and nothing is stored either way).
    assert collector.post_batch({"agent": "web-7"}).status_code == 403
    assert collector.post_batch({"agent": "test-agent"}).status_code == 400
    assert collector.post_batch({}).status_code == 400


def test_read_only_tokens_read_but_do_not_send(collector: CollectorThread) -> None:
    reader = collector.add_token("dashboard", read_only=True)
    assert collector.get("/v1/ips", token=reader).status_code == 200
    response = collector.post_batch(wire_batch("dashboard", "b-1", [record("203.0.113.7")]), token=reader)
    assert response.status_code == 403
    assert collector.counts() == {}


def test_reads_need_a_token_but_health_does_not(collector: CollectorThread) -> None:
    for path in ("/v1/ips", "/v1/ips/192.0.2.1", "/v1/agents", "/v1/blocklist"):
        response = httpx.get(collector.url + path)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"] == "Bearer"
    health = httpx.get(collector.url + "/v1/health")
    assert health.status_code == 200 and health.json()["storage"] == "ok"


def test_a_revoked_token_is_refused_at_once(collector: CollectorThread) -> None:
    from remote_uploader.collector.storage import open_storage

    token = collector.add_token("web-9")
    assert collector.get("/v1/agents", token=token).status_code == 200
    storage = open_storage(collector.db_url)
    try:
        assert storage.revoke_token("web-9")
    finally:
        storage.close()
    assert collector.get("/v1/agents", token=token).status_code == 401


def _load_sample(c: CollectorThread) -> None:
    other = c.add_token("web-2")
    c.post_batch(
        wire_batch(
            "test-agent",
            "1",
            [
                record("198.51.100.1", 5, first=0, last=100),
                record("198.51.100.2", 9, first=0, last=10),
                record("203.0.113.5", 1, first=0, last=300),
                record("2001:db8::5", 5, first=0, last=200),
            ],
        )
    ).raise_for_status()
    c.post_batch(wire_batch("web-2", "1", [record("198.51.100.2", 1, last=20)]), token=other).raise_for_status()


def ips(c: CollectorThread, **params: object) -> list[str]:
    response = c.get("/v1/ips", **params)
    assert response.status_code == 200, response.text
    return [item["ip"] for item in response.json()["items"]]


def test_listing_filters_sorts_and_pages(collector_any: CollectorThread) -> None:
    c = collector_any
    _load_sample(c)
    assert ips(c) == ["198.51.100.2", "198.51.100.1", "2001:db8::5", "203.0.113.5"]
    assert ips(c, sort="last_seen") == ["203.0.113.5", "2001:db8::5", "198.51.100.1", "198.51.100.2"]
    assert ips(c, min_count=5) == ["198.51.100.2", "198.51.100.1", "2001:db8::5"]
    assert ips(c, since="2024-05-01T12:01:40Z") == ["198.51.100.1", "2001:db8::5", "203.0.113.5"]
    assert ips(c, cidr="198.51.100.0/24") == ["198.51.100.2", "198.51.100.1"]
    assert ips(c, cidr="2001:db8::/32") == ["2001:db8::5"]
    assert ips(c, agent="web-2") == ["198.51.100.2"]
    first = c.get("/v1/ips", limit=3).json()
    assert len(first["items"]) == 3 and first["next_cursor"]
    rest = c.get("/v1/ips", limit=3, cursor=first["next_cursor"]).json()
    assert [i["ip"] for i in rest["items"]] == ["203.0.113.5"] and rest["next_cursor"] is None
    item = c.get("/v1/ips", agent="web-2").json()["items"][0]
    assert (item["count"], item["agents"]) == (1, 2)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"since": "yesterday"}, "query.since"),
        ({"cidr": "10.0.0.0/33"}, "query.cidr"),
        ({"cursor": "garbage"}, "query.cursor"),
        ({"sort": "ip"}, "query.sort"),
        ({"limit": 0}, "query.limit"),
        ({"min_count": 2**64}, "query.min_count"),
        ({"agent": "a\x00b"}, "query.agent"),
    ],
)
def test_bad_query_parameters_are_400_naming_the_parameter(
    collector: CollectorThread, params: dict[str, object], field: str
) -> None:
    response = collector.get("/v1/ips", **params)
    assert response.status_code == 400
    assert response.json()["detail"][0]["field"] == field


def test_a_cursor_from_another_sort_order_is_refused(collector: CollectorThread) -> None:
    _load_sample(collector)
    cursor = collector.get("/v1/ips", limit=1).json()["next_cursor"]
    assert collector.get("/v1/ips", sort="last_seen", cursor=cursor).status_code == 400


def test_one_address_with_per_agent_counts(collector_any: CollectorThread) -> None:
    c = collector_any
    _load_sample(c)
    detail = c.get("/v1/ips/198.51.100.2").json()
    assert (detail["count"], detail["agents"]) == (10, 2)
    assert [(a["agent"], a["count"]) for a in detail["by_agent"]] == [("test-agent", 9), ("web-2", 1)]
    assert c.get("/v1/ips/2001:DB8:0::5").json()["ip"] == "2001:db8::5"  # any spelling finds it
    assert c.get("/v1/ips/192.0.2.99").status_code == 404
    assert c.get("/v1/ips/not-an-ip").status_code == 400


def test_blocklists_leave_out_private_and_allowlisted_addresses(make_collector: MakeCollector) -> None:
    c = make_collector(config='allowlist = ["8.8.8.0/24"]\n')
    c.post_batch(
        wire_batch(
            "test-agent",
            "1",
            [record("8.8.8.8", 9), record("9.9.9.9", 3), record("10.1.1.1", 9), record("2a00:1450::1", 1)],
        )
    ).raise_for_status()

    def listed(**params: object) -> list[str]:
        response = c.get("/v1/blocklist", **params)
        assert response.status_code == 200, response.text
        return [line for line in response.text.splitlines() if line and not line.startswith("#")]

    assert listed() == ["9.9.9.9", "2a00:1450::1"]
    assert listed(include_private="true") == ["9.9.9.9", "10.1.1.1", "2a00:1450::1"]
    assert listed(min_count=2) == ["9.9.9.9"]
    assert listed(family="6") == ["2a00:1450::1"]
    text = c.get("/v1/blocklist").text
    assert "# count: 2" in text and re.search(r"# generated_at: \d{4}-\d\d-\d\dT", text)
    as_json = c.get("/v1/blocklist", format="json")
    assert as_json.headers["content-type"] == "application/json"
    assert [i["ip"] for i in as_json.json()["items"]] == ["9.9.9.9", "2a00:1450::1"]
    nft = c.get("/v1/blocklist", format="nft", name="edge").text
    assert "add element inet edge edge_v4 { 9.9.9.9 }" in nft and "flags interval" in nft
    ipset = c.get("/v1/blocklist", format="ipset").text
    assert "add remote_uploader_v4.new 9.9.9.9" in ipset
    assert c.get("/v1/blocklist", name="bad name!").status_code == 400


def test_metrics_count_batches_by_result(collector: CollectorThread) -> None:
    batch = wire_batch("test-agent", "m-1", [record("203.0.113.7", 2)])
    collector.post_batch(batch)
    collector.post_batch(batch)
    collector.post_batch(b"{not json")
    text = httpx.get(collector.url + "/metrics").text
    assert 'collector_batches_total{result="accepted"} 1.0' in text
    assert 'collector_batches_total{result="duplicate"} 1.0' in text
    assert 'collector_batches_total{result="rejected"} 1.0' in text
    assert "collector_records_total 1.0" in text
    assert 'collector_request_duration_seconds_count{method="POST",route="/v1/batches",status="200"} 2.0' in text
    assert "collector_storage_errors_total" in text


def test_openapi_documents_the_api_with_400_not_422(collector: CollectorThread) -> None:
    schema = httpx.get(collector.url + "/openapi.json").json()
    assert {"/v1/batches", "/v1/health", "/v1/ips", "/v1/ips/{ip}", "/v1/agents", "/v1/blocklist"} <= set(
        schema["paths"]
    )
    assert "bearer" in schema["components"]["securitySchemes"]
    responses = schema["paths"]["/v1/batches"]["post"]["responses"]
    assert {"200", "400", "401", "403", "413", "415", "429", "503"} <= set(responses)
    assert all("422" not in op["responses"] for path in schema["paths"].values() for op in path.values())


def test_the_access_log_is_structured_and_never_contains_tokens(collector_process: CollectorProcess) -> None:
    collector = collector_process
    collector.post_batch(wire_batch("test-agent", "log-1", [record("203.0.113.7")]))
    collector.get("/v1/ips", min_count=1)
    httpx.get(collector.url + "/v1/agents", headers={"Authorization": "Bearer ru_wrong-token-value"})
    collector.stop()
    log = collector.log()
    assert re.search(r"method=POST path=/v1/batches status=200 .*principal=test-agent .*batch_id=log-1", log)
    assert 'path="/v1/ips?min_count=1" status=200' in log
    assert collector.token not in log and "ru_wrong-token-value" not in log


def test_a_restart_keeps_counts_and_remembers_batch_ids(collector_process_any: CollectorProcess) -> None:
    c = collector_process_any
    batch = wire_batch("test-agent", "r-1", [record("203.0.113.7", 3)])
    c.post_batch(batch).raise_for_status()
    assert c.stop() == 0  # SIGTERM is a clean exit
    c.start()
    assert c.post_batch(batch).json()["duplicate"] is True
    c.kill()
    c.start()
    assert c.post_batch(batch).json()["duplicate"] is True
    assert c.counts() == {"203.0.113.7": 3}


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_locked_database_answers_503_with_retry_after_then_recovers(
    make_collector: MakeCollector, request: pytest.FixtureRequest, backend: str
) -> None:
    c = make_collector(backend, config="db_timeout = 0.5\nretry_after = 7\n")
    batch = wire_batch("test-agent", "l-1", [record("203.0.113.7", 3)])
    if backend == "sqlite":
        path = c.db_url.removeprefix("sqlite://")
        holder: sqlite3.Connection | psycopg.Connection[tuple[object, ...]] = sqlite3.connect(
            path, isolation_level=None
        )
        holder.execute("BEGIN EXCLUSIVE")
    else:
        holder = psycopg.connect(c.db_url)
        holder.execute("LOCK TABLE batches IN ACCESS EXCLUSIVE MODE")
    try:
        response = c.post_batch(batch)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "7"
        assert response.json()["detail"][0]["field"] == "storage"
    finally:
        holder.rollback()
        holder.close()
    assert c.post_batch(batch).json() == {"batch_id": "l-1", "accepted": 1, "duplicate": False, "agent": "test-agent"}
    assert c.counts() == {"203.0.113.7": 3}
    assert 'collector_storage_errors_total{kind="unavailable"}' in httpx.get(c.url + "/metrics").text


def test_unknown_read_parameters_are_refused_so_typos_do_not_widen_a_blocklist(collector: CollectorThread) -> None:
    response = collector.get("/v1/blocklist", min_cout=100)
    assert response.status_code == 400
    assert response.json()["detail"] == [{"field": "query.min_cout", "error": "unknown parameter"}]
    assert httpx.get(collector.url + "/v1/health?probe=1").status_code == 200
    assert httpx.get(collector.url + "/metrics?x=1").status_code == 200


def test_https_with_a_certificate(tmp_path: Path) -> None:
    import ssl

    import trustme

    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    certificate.private_key_and_cert_chain_pem.write_to_path(str(cert))
    certificate.private_key_pem.write_to_path(str(key))
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    server = CollectorProcess(
        tmp_path,
        f"sqlite://{tmp_path}/c.db",
        ["--tls-cert", str(cert), "--tls-key", str(key)],
        verify=client_context,
    )
    try:
        server.start()
        assert server.url.startswith("https://")
        batch = wire_batch("test-agent", "tls-1", [record("203.0.113.7", 2)])
        assert server.post_batch(batch).status_code == 200
        assert server.counts() == {"203.0.113.7": 2}
        with pytest.raises(httpx.ConnectError):  # a client that does not trust the CA refuses
            httpx.get(server.url + "/v1/health")
    finally:
        server.stop()


def test_a_missing_certificate_is_a_clear_startup_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "remote_uploader.collector.cli",
            "serve",
            "--db",
            f"{tmp_path}/c.db",
            "--tls-cert",
            str(tmp_path / "none.pem"),
            "--tls-key",
            str(tmp_path / "none.key"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "collector.tls_cert" in result.stderr and "Traceback" not in result.stderr


def test_old_batch_ids_are_pruned_while_serving(make_collector: MakeCollector) -> None:
    from tests.helpers.agent import wait_for

    # Retention of about a tenth of a second, pruned five times a second.
    c = make_collector(config="retention_days = 0.000001\nprune_interval = 0.2\n")
    batch = wire_batch("test-agent", "p-1", [record("203.0.113.7", 3)])
    assert c.post_batch(batch).json()["duplicate"] is False
    assert wait_for(lambda: c.post_batch(batch).json()["duplicate"] is False, timeout=30)
    assert c.counts() == {"203.0.113.7": 6}  # the documented cost of replaying past retention


@pytest.mark.postgres
def test_postgres_going_away_gives_503_and_the_collector_recovers(make_collector: MakeCollector) -> None:
    c = make_collector("postgres", config="db_timeout = 1\n")
    name = c.db_url.rsplit("/", 1)[1]
    admin_url = c.db_url.rsplit("/", 1)[0] + "/postgres"
    batch = wire_batch("test-agent", "down-1", [record("203.0.113.7", 3)])
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        try:
            response = c.post_batch(batch)
            assert response.status_code == 503 and "retry-after" in response.headers
            assert httpx.get(c.url + "/v1/health").status_code == 503
        finally:
            admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
    from tests.helpers.agent import wait_for

    assert wait_for(lambda: httpx.get(c.url + "/v1/health").status_code == 200, timeout=30)
    assert c.post_batch(batch).json()["duplicate"] is False
    assert c.counts() == {"203.0.113.7": 3}


def test_too_many_batches_in_flight_get_429_with_retry_after(make_collector: MakeCollector) -> None:
    import socket

    from tests.helpers.agent import wait_for

    c = make_collector(config="max_concurrent_batches = 1\ndb_timeout = 0.5\nretry_after = 3\n")
    host, port = c.url.removeprefix("http://").rsplit(":", 1)
    slow = socket.create_connection((host, int(port)))
    try:
        # A client that starts a batch and stalls mid-body holds the only slot.
        slow.sendall(
            f"POST /v1/batches HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {c.token}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{".encode()
        )
        batch = wire_batch("test-agent", "busy-1", [record("203.0.113.7")])
        assert wait_for(lambda: c.post_batch(batch).status_code == 429, timeout=30)
        refused = c.post_batch(batch)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "3"
    finally:
        slow.close()
    assert wait_for(lambda: c.post_batch(batch).status_code == 200, timeout=30)
    assert c.counts() == {"203.0.113.7": 1}


def test_a_producers_stream_ranges_are_served_to_agent_tokens_only(collector: CollectorProcess) -> None:
    """What `reset-state` asks after a destroyed queue (docs/protocol.md, "Streams")."""
    producer, stream = "ab" * 16, "cd" * 16
    body = {**wire_batch("test-agent", "b-1", [record("203.0.113.7")]), "producer": producer, "seq": 1,
            "streams": [{"id": stream, "start": 0, "end": 120}]}
    assert collector.post_batch(body).status_code == 200
    path = f"/v1/producers/{producer}/streams"
    answer = collector.get(path)
    assert (answer.status_code, answer.json()) == (200, {"producer": producer, "streams": {stream: [[0, 120]]}})
    assert collector.get(path, token=collector.add_token("dashboard", read_only=True)).status_code == 403
    assert collector.get("/v1/producers/NOT-HEX/streams").json()["detail"][0]["field"] == "path.producer"
    assert collector.get(f"/v1/producers/{'ef' * 16}/streams").json()["streams"] == {}


@pytest.mark.parametrize(("streams", "field"), [
    ([{"id": "cd" * 16, "start": 10, "end": 10}], "streams[0]"),  # empty range
    ([{"id": "CD" * 16, "start": 0, "end": 10}], "streams[0]"),  # upper-case id
    ([{"id": "cd" * 16, "start": -1, "end": 10}], "streams[0]"),
    ({"id": "cd" * 16}, "streams"),
])
def test_bad_stream_ranges_are_400_naming_the_field_and_store_nothing(
        collector: CollectorProcess, streams: object, field: str) -> None:
    body = {**wire_batch("test-agent", "b-1", [record("203.0.113.7")]), "producer": "ab" * 16, "seq": 1,
            "streams": streams}
    response = collector.post_batch(body)
    assert response.status_code == 400
    assert response.json()["detail"][0]["field"] == field
    assert collector.counts() == {}
    without_producer = {**wire_batch("test-agent", "b-2", [record("203.0.113.7")]),
                        "streams": [{"id": "cd" * 16, "start": 0, "end": 10}]}
    assert collector.post_batch(without_producer).json()["detail"][0]["field"] == "streams"
