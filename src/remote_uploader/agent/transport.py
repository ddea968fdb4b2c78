"""The HTTP connection to the collector, with `ssl` loaded only when the collector is https://.

`http.client` imports `ssl` as it is imported (for its HTTPSConnection class), and `ssl` loads
OpenSSL: about 4 MiB of resident memory in every agent process, a tenth of its budget on a small
box, also when the collector is reached over plain http:// on the same host or a private network.
So `http.client` is imported here with `ssl` hidden from it, as on a Python built without ssl,
and an https:// collector is reached through `TLSConnection`, which wraps the socket itself and
so works however `http.client` was imported. `ssl` is imported by `tls_context`, on first use.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ssl

__all__ = ["HTTPConnection", "HTTPException", "TLSConnection", "TlsSettings", "tls_context"]


def _import_http_client() -> ModuleType:
    if "http.client" in sys.modules or "ssl" in sys.modules:
        import http.client

        return http.client
    sys.modules["ssl"] = None  # type: ignore[assignment]  # `import ssl` now raises ImportError
    try:
        import http.client

        return http.client
    finally:
        del sys.modules["ssl"]


_http_client = _import_http_client()
if TYPE_CHECKING:
    from http.client import HTTPConnection, HTTPException
else:
    HTTPConnection, HTTPException = _http_client.HTTPConnection, _http_client.HTTPException


class TLSConnection(HTTPConnection):
    """HTTP over TLS: a plain connection whose socket is wrapped once connected (no proxy tunnel)."""

    default_port = 443

    def __init__(self, host: str, port: int, *, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=timeout)
        self.context = context

    def connect(self) -> None:
        super().connect()
        self.sock = self.context.wrap_socket(self.sock, server_hostname=self.host)


@dataclass(frozen=True)
class TlsSettings:
    context: ssl.SSLContext
    refused: type[ssl.SSLCertVerificationError]  # the certificate was not accepted


def tls_context(ca_file: str, verify: bool) -> TlsSettings:
    """The context for an https:// collector: the system's CAs or `ca_file`; no checks if not `verify`."""
    import ssl

    context = ssl.create_default_context(cafile=ca_file or None)
    context.set_alpn_protocols(["http/1.1"])
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return TlsSettings(context, ssl.SSLCertVerificationError)
