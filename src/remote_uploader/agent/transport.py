"""The agent's HTTP/1.1 connection to the collector: h11 speaks the protocol, we move the bytes.

Why not the standard library's `http.client`: importing it imports `ssl` (for its HTTPSConnection
class), and `ssl` loads OpenSSL, about 4 MiB resident in every agent process (a tenth of its
budget on a small box), also when the collector is reached over plain http:// on the same host
or a private network. h11 is the HTTP/1.1 state machine without any I/O of its own (the one
uvicorn serves with), so here `ssl` is imported only by `tls_context`, for an https:// collector.

One keep-alive connection, one request at a time; every socket operation has the configured
timeout. Any failure (refused, reset, timed out, a peer speaking broken HTTP) is an OSError, and
the connection is closed: the request may or may not have been received, and the caller sends
it again under the same batch id.
"""

from __future__ import annotations

import contextlib
import select
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import h11

if TYPE_CHECKING:
    import ssl

RECV_BYTES = 64 * 1024


class ProtocolError(OSError):
    """The peer's bytes were not the HTTP/1.1 answer they should be (or it hung up mid-answer)."""


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes  # at most `max_body` bytes of it


@dataclass(frozen=True)
class TlsSettings:
    context: ssl.SSLContext
    refused: type[ssl.SSLCertVerificationError]  # raised when the certificate is not accepted


def tls_context(ca_file: str, verify: bool) -> TlsSettings:
    """The context for an https:// collector: the system's CAs or `ca_file`; no checks if not `verify`."""
    import ssl

    context = ssl.create_default_context(cafile=ca_file or None)
    context.set_alpn_protocols(["http/1.1"])
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return TlsSettings(context, ssl.SSLCertVerificationError)


class Connection:
    """A keep-alive HTTP/1.1 client connection, opened on first use and after any failure."""

    def __init__(self, host: str, port: int, timeout: float, tls: TlsSettings | None = None) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.tls = tls
        self.sock: socket.socket | None = None  # shutting it down from another thread aborts a request
        self._h11 = h11.Connection(h11.CLIENT)
        default_port = 443 if tls is not None else 80
        name = f"[{host}]" if ":" in host else host
        self._host_header = name if port == default_port else f"{name}:{port}"

    def send_request(self, method: str, target: str, headers: dict[str, str], body: bytes | None) -> None:
        """Write the whole request; the answer is read by `read_response`."""
        with self._closed_on_failure():
            if self.sock is None or self._h11.our_state is not h11.IDLE or self._dropped():
                self._open()
            fields = [("Host", self._host_header), *headers.items()]
            if body is not None:
                fields.append(("Content-Length", str(len(body))))
            data = self._h11.send(h11.Request(method=method, target=target, headers=fields)) or b""
            if body:
                data += self._h11.send(h11.Data(data=body)) or b""
            data += self._h11.send(h11.EndOfMessage()) or b""
            assert self.sock is not None
            self.sock.sendall(data)

    def read_response(self, max_body: int) -> Response:
        """The answer to the request just sent; the connection stays open if both sides allow it."""
        with self._closed_on_failure():
            head = self._next(h11.Response)
            assert isinstance(head, h11.Response)
            body = bytearray()
            while not isinstance(event := self._next(h11.Data, h11.EndOfMessage), h11.EndOfMessage):
                assert isinstance(event, h11.Data)
                body += event.data
                if len(body) > max_body:  # more than we would ever read: hang up rather than drain it
                    self.close()
                    break
            else:
                self._reuse_or_close()
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in head.headers}
        return Response(head.status_code, headers, bytes(body[:max_body]))

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None

    def abort(self) -> None:
        """Cut a request in flight from another thread: the blocked send or receive fails at once."""
        sock = self.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    @contextlib.contextmanager
    def _closed_on_failure(self) -> Iterator[None]:
        """Any failure leaves the connection in an unknown state: close it; h11's errors become OSError."""
        try:
            yield
        except h11.ProtocolError as exc:
            self.close()
            raise ProtocolError(str(exc)) from exc
        except OSError:
            self.close()
            raise

    def _dropped(self) -> bool:
        """An idle keep-alive connection that is readable was closed by the peer (its idle timeout):
        a request sent on it would be lost to a reset, and cost a retry with backoff."""
        assert self.sock is not None
        readable, _, _ = select.select([self.sock], [], [], 0)
        return bool(readable)

    def _open(self) -> None:
        self.close()
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                sock = self.tls.context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self._h11 = h11.Connection(h11.CLIENT)

    def _next(self, *wanted: type[h11.Event]) -> h11.Event:
        """The next protocol event, reading from the socket as h11 needs; informational 1xx skipped."""
        assert self.sock is not None
        while True:
            event = self._h11.next_event()
            if event is h11.NEED_DATA:
                self._h11.receive_data(self.sock.recv(RECV_BYTES))
                continue
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, wanted):
                return event
            if isinstance(event, h11.ConnectionClosed):
                raise ProtocolError("the collector closed the connection without answering")
            raise ProtocolError(f"unexpected {type(event).__name__} from the collector")

    def _reuse_or_close(self) -> None:
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()
        else:
            self.close()
