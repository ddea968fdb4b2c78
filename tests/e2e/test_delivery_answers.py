"""Delivery is an answer that names the batch (issue 9, hole 3).

A batch leaves the queue only when the answer is 2xx, parses as a collector's answer and carries
the batch id that was sent. Anything else that says 2xx (a web server's welcome page, a captive
portal, a load balancer's default page) is a failure, retried and reported loudly; a redirect or
a proxy's 404/405/421 is configuration, like 401: nothing is dead-lettered for it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.helpers.agent import run_agent, write_access_log, write_config


class Impostor:
    """A web server on 127.0.0.1 that answers every request with one fixed answer, reading the body."""

    def __init__(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.status, self.body, self.headers = status, body, headers or {}
        self.posts = 0
        impostor = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                if self.command == "POST":
                    impostor.posts += 1
                self.send_response(impostor.status)
                for name, value in impostor.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(impostor.body)))
                self.end_headers()
                self.wfile.write(impostor.body)

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def impostor_factory() -> Iterator[type[Impostor]]:
    made: list[Impostor] = []

    class Made(Impostor):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            made.append(self)

    yield Made
    for impostor in made:
        impostor.close()


def _config(tmp_path: Path, url: str, token: str) -> tuple[Path, Path]:
    log = tmp_path / "access.log"
    config = write_config(tmp_path / "agent.toml", url=url, token=token, state_dir=tmp_path / "state",
                          sources=[str(log)], server={"max_retry_time": 1.0})
    return config, log


def _status(config: Path) -> dict[str, object]:
    shown = run_agent("status", "--json", "-c", str(config))
    assert shown.returncode == 0, shown.stderr
    result: dict[str, object] = json.loads(shown.stdout)
    return result


@pytest.mark.parametrize("status,body", [
    (200, b"<html>Welcome</html>"),
    (204, b""),
    (200, b'{"status": "ok"}'),  # JSON, but not an answer to this batch
    (200, b'{"batch_id": "another-batch", "accepted": 1, "duplicate": false}'),
])
def test_a_2xx_that_does_not_name_the_batch_is_not_delivery(
        tmp_path: Path, receiver, impostor_factory, status: int, body: bytes) -> None:  # type: ignore[no-untyped-def]
    impostor = impostor_factory(status, body, {"Content-Type": "text/html"})
    config, log = _config(tmp_path, impostor.url, receiver.token)
    expected = write_access_log(log, 400, seed=3)

    result = run_agent("once", "-c", str(config))

    assert result.returncode == 3, result.stdout + result.stderr
    assert impostor.posts >= 2, "a wrong answer is a failure that is retried"
    said = result.stdout + result.stderr
    assert "not a remote-uploader collector" in said
    assert f"HTTP {status}" in said
    if body:
        assert body[:12].decode() in said, "the first bytes of the answer are shown"
    queue = _status(config)["queue"]
    assert isinstance(queue, dict) and queue["batches"] >= 1, "nothing left the queue"
    assert _status(config)["dead_letters"] == []

    # The right URL: everything arrives, once.
    config, _ = _config(tmp_path, receiver.url, receiver.token)
    assert run_agent("once", "-c", str(config)).returncode == 0
    assert receiver.counts() == dict(expected)


@pytest.mark.parametrize("status,hint", [
    (301, "redirect"),
    (302, "redirect"),
    (308, "redirect"),
    (404, "server.url"),
    (405, "server.url"),
    (421, "server.url"),
])
def test_redirects_and_wrong_paths_are_configuration_errors_that_keep_the_batch_queued(
        tmp_path: Path, receiver, impostor_factory, status: int, hint: str) -> None:  # type: ignore[no-untyped-def]
    impostor = impostor_factory(status, b"<html>Moved</html>", {"Location": "https://elsewhere.example/v1/batches"})
    config, log = _config(tmp_path, impostor.url, receiver.token)
    expected = write_access_log(log, 300, seed=4)

    result = run_agent("once", "-c", str(config))

    assert result.returncode == 3, result.stdout + result.stderr
    said = result.stdout + result.stderr
    assert f"HTTP {status}" in said and hint in said, said
    status_now = _status(config)
    assert status_now["dead_letters"] == [], "configuration is never a reason to dead-letter data"
    queue = status_now["queue"]
    assert isinstance(queue, dict) and queue["batches"] >= 1

    config, _ = _config(tmp_path, receiver.url, receiver.token)
    assert run_agent("once", "-c", str(config)).returncode == 0
    assert receiver.counts() == dict(expected)
