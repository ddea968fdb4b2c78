"""The agent's HTTP connection: idle connections the collector closed are reopened, answers cut short
are errors. (That an agent process loads OpenSSL only for an https:// collector: tests/e2e/test_openssl.py.)"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from remote_uploader.agent.transport import Connection


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
