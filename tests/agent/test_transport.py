"""The agent's HTTP connection: no OpenSSL (about 4 MiB per process) unless the collector is https://,
idle connections the collector closed are reopened, answers cut short are errors."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from remote_uploader.agent.transport import Connection

AGENT_PROCESS = textwrap.dedent("""
    import json, sys
    import remote_uploader.cli, remote_uploader.agent.runner, remote_uploader.agent.forever
    from remote_uploader.agent.sink import HttpSink
    from remote_uploader.config import load

    HttpSink(load(None, env={{}}, overrides={{"server.url": "{url}"}}).server)
    maps = open("/proc/self/maps").read()
    print(json.dumps({{"ssl": "ssl" in sys.modules, "libcrypto": "libcrypto" in maps}}))
""")


def loaded(url: str) -> dict[str, bool]:
    done = subprocess.run([sys.executable, "-c", AGENT_PROCESS.format(url=url)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_an_http_collector_does_not_load_openssl() -> None:
    assert loaded("http://127.0.0.1:8080") == {"ssl": False, "libcrypto": False}


def test_an_https_collector_loads_it() -> None:
    assert loaded("https://127.0.0.1:8443") == {"ssl": True, "libcrypto": True}


def test_a_keep_alive_connection_the_collector_closed_while_idle_is_reopened_not_failed() -> None:
    """uvicorn closes idle keep-alive connections after a few seconds; a request must not be sent
    into one (it would be lost to a reset and cost a retry with backoff)."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        served: list[int] = []

        def serve() -> None:
            for n in (1, 2):
                conn, _ = server.accept()
                with conn:
                    conn.recv(65536)
                    conn.sendall(answer)
                    served.append(n)  # then hang up while the client is idle, as an idle timeout does

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        client = Connection("127.0.0.1", port, timeout=5)
        first = client.send_request("GET", "/v1/health", {}, None) or client.read_response(1024)
        time.sleep(0.2)  # the server has closed its side by now
        second = client.send_request("GET", "/v1/health", {}, None) or client.read_response(1024)
        client.close()
        thread.join(5)
    assert (first.status, second.status, served) == (200, 200, [1, 2])


def test_an_answer_cut_short_is_an_oserror_and_closes_the_connection() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]

        def serve() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}")  # 2 of 10 bytes

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        client = Connection("127.0.0.1", port, timeout=5)
        client.send_request("POST", "/v1/batches", {}, b"[]")
        with pytest.raises(OSError, match=r"closed|incomplete|peer"):
            client.read_response(1024)
        assert client.sock is None
        thread.join(5)
