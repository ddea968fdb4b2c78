"""Who may see the dashboard, and what every page sends: sessions, refusals, headers.

Plain HTTP against a real collector process (the browser tests show the same from Chromium).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from remote_uploader.collector.dashboard import session
from remote_uploader.collector.dashboard.render import CSP
from remote_uploader.collector.storage.sqlite import SqliteStorage
from remote_uploader.protocol import format_time
from tests.helpers.collector_fixtures import CollectorProcess

PAGES = ("/", "/ips", "/ips?since=7d&sort=last_seen", "/ips/203.0.113.7", "/agents", "/decisions")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CollectorProcess]:
    root = tmp_path_factory.mktemp("access")
    process = CollectorProcess(root, f"sqlite://{root}/c.db")
    process.start()
    now = format_time(datetime.now(UTC))
    record = {"ip": "203.0.113.7", "count": 3, "first_seen": now, "last_seen": now, "source": "/var/log/a.log"}
    batch = {"agent": "test-agent", "batch_id": "a-1", "sent_at": now, "records": [record]}
    assert process.post_batch(batch).status_code == 200
    yield process
    process.stop()


def _sign_in(server: CollectorProcess, token: str, **headers: str) -> httpx.Response:
    return httpx.post(server.url + "/signin", data={"token": token}, headers=headers, verify=server.verify)


def _session(server: CollectorProcess, name: str = "viewer") -> httpx.Client:
    response = _sign_in(server, server.add_token(name, read_only=True))
    assert response.status_code == 303 and response.headers["location"] == "/"
    return httpx.Client(base_url=server.url, cookies=response.cookies, verify=server.verify)


def test_a_read_token_signs_in_to_an_httponly_strict_cookie_that_holds_no_token(server: CollectorProcess) -> None:
    token = server.add_token("viewer", read_only=True)
    response = _sign_in(server, token)
    cookie = response.headers["set-cookie"]
    assert response.status_code == 303
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain http: a Secure cookie would never come back
    assert token not in cookie and token[3:20] not in cookie
    assert token not in server.log()


@pytest.mark.parametrize(
    ("case", "token", "headers"),
    [
        ("unknown token", "ru_" + "A" * 43, {}),
        ("agent token", "AGENT", {}),
        ("empty", "", {}),
        ("huge", "x" * 10_000, {}),
        ("another site's form", "READ", {"Origin": "https://evil.example"}),
    ],
)
def test_every_refused_sign_in_gets_the_same_answer_and_no_cookie(
    server: CollectorProcess, case: str, token: str, headers: dict[str, str]
) -> None:
    token = {"AGENT": server.token, "READ": server.add_token("viewer", read_only=True)}.get(token, token)
    response = _sign_in(server, token, **headers)
    assert (response.status_code, response.headers["location"]) == (303, "/?refused=1"), case
    assert "set-cookie" not in response.headers
    if token:
        assert token not in server.log()


def test_without_a_session_pages_redirect_to_the_sign_in_form_and_show_nothing(server: CollectorProcess) -> None:
    form = httpx.get(server.url + "/")
    assert form.status_code == 200 and 'name="token"' in form.text and "203.0.113.7" not in form.text
    for path in PAGES[1:]:
        response = httpx.get(server.url + path)
        assert (response.status_code, response.headers["location"]) == (303, "/"), path
        assert "203.0.113.7" not in response.text


def test_every_page_sends_a_strict_content_security_policy_and_no_script(server: CollectorProcess) -> None:
    with _session(server) as client:
        for path in (*PAGES, "/ips?since=nonsense", "/static/dashboard.css"):
            response = client.get(path)
            assert response.status_code in (200, 400), path
            assert response.headers["content-security-policy"] == CSP
            assert "script-src" not in CSP and "default-src 'none'" in CSP  # so: no script at all
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["x-frame-options"] == "DENY"
            assert "<script" not in response.text and " style=" not in response.text
    assert httpx.get(server.url + "/").headers["content-security-policy"] == CSP


def test_a_bad_filter_is_a_400_page_naming_the_field(server: CollectorProcess) -> None:
    with _session(server) as client:
        for path, field in (("/ips?since=nonsense", "since"), ("/ips?min_count=-3", "min_count"),
                            ("/ips?cidr=300.1.1.1/8", "cidr"), ("/ips?sort=ip", "sort"), ("/?window=2y", "window"),
                            ("/ips?page=0", "page"), ("/ips?page=x", "page"), ("/decisions/abc", "decision"),
                            ("/ips?source=a%00b", "source"), ("/ips/203.0.113.7?window=1y", "window"),
                            ("/ips/not-an-address", "address")):
            response = client.get(path)
            assert response.status_code == 400, path
            assert f"<strong>{field}</strong>" in response.text, path


def test_a_forged_or_altered_cookie_is_refused(server: CollectorProcess) -> None:
    with _session(server) as client:
        good = client.cookies[session.COOKIE]
        name, stamp, signature = good.split(".")
        # The first character, not the last: base64's last character of 32 bytes carries two
        # unused bits, so some changes to it decode to the very same signature.
        flipped = ("B" if signature[0] == "A" else "A") + signature[1:]
        other = session._encode_name("test-agent")
        for forged in (f"{name}.{stamp}.{flipped}", f"{other}.{stamp}.{signature}", f"{name}.{stamp}", "x" * 5000):
            response = httpx.get(server.url + "/agents", cookies={session.COOKIE: forged})
            assert response.status_code == 303, forged[:40]


def test_revoking_or_replacing_the_token_ends_its_sessions(server: CollectorProcess) -> None:
    with _session(server, "short-lived") as client:
        assert client.get("/agents").status_code == 200
        server.add_token("short-lived", read_only=True)  # --replace: a new token, a new key
        assert client.get("/agents").status_code == 303
    with _session(server, "revoked") as client:
        storage = SqliteStorage(server.db_url.removeprefix("sqlite://"))
        try:
            assert storage.revoke_token("revoked")
        finally:
            storage.close()
        assert client.get("/agents").status_code == 303


def test_a_session_older_than_session_hours_is_refused(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "c.db")
    storage.migrate()
    try:
        from remote_uploader.collector.auth import create_token

        cookie = session.sign_in(storage, create_token(storage, "viewer", "read"))
        assert cookie is not None
        assert session.check(storage, cookie, 3600) is not None

        class Earlier(type(session._signer(""))):  # type: ignore[misc]
            def get_timestamp(self) -> int:
                return int(time.time()) - 7200

        role_hash = storage.token_by_name("viewer")
        assert role_hash is not None
        old = Earlier(role_hash[1], salt=session.SALT, digest_method=session.hashlib.sha256)
        stale = old.sign(session._encode_name("viewer")).decode()
        assert session.check(storage, stale, 3600) is None
        assert session.check(storage, stale, 3 * 3600) is not None
    finally:
        storage.close()


def test_anonymous_read_serves_pages_without_a_session(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text("[collector]\ndashboard_anonymous = true\n")
    process = CollectorProcess(tmp_path, f"sqlite://{tmp_path}/c.db", ["-c", str(tmp_path / "c.toml")])
    process.start()
    try:
        for path in PAGES:
            response = httpx.get(process.url + path)
            assert response.status_code in (200, 404), path
            assert 'name="token"' not in response.text
        assert httpx.get(process.url + "/v1/ips").status_code == 401  # the API still wants a token
    finally:
        process.stop()


def test_the_dashboard_can_be_turned_off(tmp_path: Path) -> None:
    process = CollectorProcess(tmp_path, f"sqlite://{tmp_path}/c.db", ["--no-dashboard"])
    process.start()
    try:
        assert httpx.get(process.url + "/").status_code == 404
        assert httpx.get(process.url + "/static/dashboard.css").status_code == 404
    finally:
        process.stop()


def test_under_tls_the_session_cookie_is_secure(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    certificate.private_key_and_cert_chain_pem.write_to_path(str(cert))
    certificate.private_key_pem.write_to_path(str(key))
    context = ssl.create_default_context()
    authority.configure_trust(context)
    process = CollectorProcess(tmp_path, f"sqlite://{tmp_path}/c.db", ["--tls-cert", str(cert), "--tls-key", str(key)],
                               verify=context)
    process.start()
    try:
        response = _sign_in(process, process.add_token("viewer", read_only=True))
        assert response.status_code == 303
        assert "Secure" in response.headers["set-cookie"]
    finally:
        process.stop()


def test_signing_out_clears_the_cookie_and_another_site_cannot_do_it(server: CollectorProcess) -> None:
    with _session(server) as client:
        foreign = client.post("/signout", headers={"Origin": "https://evil.example"})
        assert foreign.status_code == 303 and "set-cookie" not in foreign.headers
        response = client.post("/signout")
        assert response.status_code == 303
        assert session.COOKIE in response.headers["set-cookie"] and "Max-Age=0" in response.headers["set-cookie"]
