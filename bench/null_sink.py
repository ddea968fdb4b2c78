"""A null HTTP sink: answers every batch as a collector would, stores nothing, sums the counts.

It costs the agent what a real collector costs it (the request, the body, the answer) and costs
the machine as little as a receiver can, so that `once`'s own figures show. The counts are
summed (gunzip + JSON, per batch) only to check that the run was complete. It takes both body
formats and lists both in `Accept-Post`, as our collector does: an agent that sends to a sink
listing only format 1 rewrites every queued format 2 body first (agent/sink.py), a cost the
agent does not pay with a current collector (`NullSink(formats=1)` measures it).

    with NullSink() as sink: ... sink.url, sink.counts()
"""

from __future__ import annotations

import gzip
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

from remote_uploader.protocol import ACCEPT_POST, ACCEPTED_MEDIA, MEDIA_V1


class NullSink:
    def __init__(self, formats: int = 2) -> None:
        accept = ACCEPTED_MEDIA if formats >= 2 else MEDIA_V1
        totals: Counter[str] = Counter()
        seen: set[str] = set()
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _answer(self, payload: dict[str, object]) -> None:
                body = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header(ACCEPT_POST, accept)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._answer({"status": "ok", "agent": "bench"})

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    raw = gzip.decompress(raw)
                document = json.loads(raw)
                batch_id = document["batch_id"]
                with lock:
                    duplicate = batch_id in seen
                    if not duplicate:
                        seen.add(batch_id)
                        records = 0
                        if document.get("format") == 2:
                            for group in document["groups"]:
                                totals.update(dict(zip(group["ip"], group["count"], strict=True)))
                                records += len(group["ip"])
                        else:
                            for record in document["records"]:
                                totals[record["ip"]] += record["count"]
                            records = len(document["records"])
                self._answer({"batch_id": batch_id, "accepted": 0 if duplicate else records,
                              "duplicate": duplicate})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.token = "bench-null-sink-token"
        self._totals = totals
        self._lock = lock
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._totals)

    def __enter__(self) -> NullSink:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.server.shutdown()
        self.server.server_close()
