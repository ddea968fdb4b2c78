"""An in-memory `Sink` (agent/sink.py's protocol): a collector's answers as the uploader sees them,
without HTTP.

For in-process agent tests that need somewhere to deliver, and for the Sink contract
(tests/agent/test_sink_contract.py), which runs the same assertions against this sink and against
the HTTP sink talking to the receiver in a thread. It judges a body with the receiver's own parser
and counts into the receiver's `MemoryStore` (idempotent by batch id), and it answers in the Sink
vocabulary written independently of `HttpSink._interpret`: the table at the top of agent/sink.py,
restated here, so the contract checks that the HTTP sink's reading of real answers matches it.

Faults are the receiver's words (`fail_next`, `reset_next`, `max_body`, `max_records`) so a
contract test can script both sinks alike; the first matching scripted fault is used up per send.
"""

from __future__ import annotations

import hmac
import threading
from dataclasses import dataclass

from remote_uploader.agent.sink import Delivered
from remote_uploader.errors import (
    AuthRefusedError,
    ConfigRefusedError,
    DeliveryError,
    PayloadTooLargeError,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from tests.helpers.receiver import HARD_BODY_CAP, BodyTooLarge, MemoryStore, decode_body, parse_batch, parse_batch_v2


@dataclass(frozen=True)
class _Fault:
    kind: str  # "status" (answered `status` before storing) or "reset" (no answer)
    status: int = 0
    retry_after: float | None = None
    after_store: bool = False


def refusal(status: int, why: str, retry_after: float | None = None) -> DeliveryError:
    """What a non-2xx answer means for the batch (agent/sink.py's table)."""
    message = f"collector answered {status}: {why}"
    if status in (401, 403):
        return AuthRefusedError(message, status)
    if status == 413:
        return PayloadTooLargeError(message, status)
    if status in (408, 429) or status >= 500:
        return RetryableDeliveryError(message, status, retry_after)
    if 300 <= status < 400 or status in (404, 405, 421):  # server.url is wrong: kept queued, like 401
        return ConfigRefusedError(message, status)
    return PermanentDeliveryError(message, status)


class MemorySink:
    """Delivers into a `MemoryStore`; `token` is what it accepts, `sends` what the agent presents."""

    def __init__(self, token: str = "t", *, sends: str | None = None, store: MemoryStore | None = None) -> None:
        self.token = token
        self.sends = token if sends is None else sends
        self.store = store if store is not None else MemoryStore()
        self.sent: list[str] = []  # batch ids, in the order send was called
        self._faults: list[_Fault] = []
        self._max_body: int | None = None
        self._max_records: int | None = None
        self._lock = threading.Lock()
        self.closed = False

    # -- faults, in the receiver's words ---------------------------------------------------------

    def fail_next(self, n: int, status: int, retry_after: float | None = None) -> None:
        with self._lock:
            self._faults += [_Fault("status", status, retry_after)] * n

    def reset_next(self, n: int, after_store: bool) -> None:
        with self._lock:
            self._faults += [_Fault("reset", after_store=after_store)] * n

    def max_body(self, nbytes: int | None) -> None:
        self._max_body = nbytes

    def max_records(self, k: int | None) -> None:
        self._max_records = k

    # -- the Sink protocol -----------------------------------------------------------------------

    def send(self, batch_id: str, body: bytes, encoding: str) -> Delivered:
        with self._lock:
            self.sent.append(batch_id)
            fault = self._faults.pop(0) if self._faults else None
        if fault is not None and fault.kind == "status":
            raise refusal(fault.status, "injected fault", fault.retry_after)
        if fault is not None and not fault.after_store:
            raise RetryableDeliveryError("connection reset before the batch was stored")
        if not hmac.compare_digest(self.sends.encode(), self.token.encode()):
            raise refusal(401, "missing or bad token")
        if self._max_body is not None and len(body) > self._max_body:
            raise refusal(413, f"body of {len(body)} bytes is over {self._max_body}")
        try:
            raw = decode_body(body, encoding, HARD_BODY_CAP)
            batch = (parse_batch_v2 if raw.startswith(b'{"format":2') else parse_batch)(raw)  # the body's own format
        except BodyTooLarge as exc:
            raise refusal(413, str(exc)) from exc
        except ValueError as exc:
            raise refusal(400, str(exc)) from exc
        if self._max_records is not None and len(batch.records) > self._max_records:
            raise refusal(413, f"{len(batch.records)} records is over {self._max_records}")
        new = self.store.apply(batch.batch_id, batch.records)
        if fault is not None:  # reset after store: stored, but the answer never arrives
            raise RetryableDeliveryError("connection reset after the batch was stored")
        return Delivered(len(batch.records) if new else 0, duplicate=not new)

    def health(self) -> dict[str, object]:
        return {"status": "ok"}

    def close(self) -> None:
        self.closed = True

    def counts(self) -> dict[str, int]:
        return self.store.counts()
