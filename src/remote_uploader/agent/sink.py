"""Delivery: POST queued batches to the collector, retry what may be retried, never drop.

What each answer means for a batch:

    2xx naming the batch         stored (or a duplicate of one stored): acknowledge, delete from queue
    any other 2xx                not a collector (a welcome page, a captive portal): retried, said loudly
    network error, timeout,
    408, 429, 5xx                try again later, with backoff (Retry-After wins, capped)
    401, 403                     the token is wrong: keep everything queued, retry slowly, say so loudly
    3xx, 404, 405, 421           server.url is wrong (a redirect, a proxy's page): as 401, never dead-lettered
    413                          split the batch in halves (each keeps a derived, stable id); a
                                 batch of one record refused is kept and retried as a
                                 configuration fault (a limit below one record's body)
    any other 4xx                the collector will never take it: dead-letter table (`requeue` resends)

Only an answer that names the batch is an acknowledgement: the acknowledgement deletes the only
copy of the batch, so "some server said 200" must never be enough (issue 9, hole 3).

Body formats (docs/protocol.md, "Body formats"): batches are queued in format 2; they are sent
so only to a collector whose last answer listed format 2 in `Accept-Post`, and rewritten in
format 1 for any other (an older collector, or before the first answer). A 415 to a format 2
body (a collector downgraded since its last answer) is answered by sending the format 1 body
at once: nothing is dead-lettered for its format.

Keep-alive HTTP/1.1 connections (`transport.py`: h11, and `ssl` only for an https:// collector),
one per upload in flight (`server.upload_concurrency`, 2 by default).
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from remote_uploader import __version__
from remote_uploader.agent.batch import as_format_1, body_format, split_queued
from remote_uploader.agent.faults import crash_point
from remote_uploader.agent.report import Reporter
from remote_uploader.agent.spool import QueuedBatch, Spool
from remote_uploader.agent.stats import Stats
from remote_uploader.agent.transport import Connection, tls_context
from remote_uploader.config import ServerConfig
from remote_uploader.errors import (
    AuthRefusedError,
    ConfigRefusedError,
    DeliveryError,
    DiskFullError,
    NotACollectorError,
    PayloadTooLargeError,
    PermanentDeliveryError,
    RetryableDeliveryError,
    StateError,
)
from remote_uploader.i18n import Message
from remote_uploader.protocol import (
    ACCEPT_POST,
    BATCHES_PATH,
    HEALTH_PATH,
    MEDIA_V1,
    MEDIA_V2,
    STATUS_HEADER,
    STATUS_PATH,
    STREAMS_PATH,
    WHOAMI_PATH,
)

log = logging.getLogger(__name__)

MAX_ANSWER_BYTES = 1024 * 1024  # the collector's answers are small JSON documents
DISK_FULL_SAY_EVERY = 60.0  # seconds between two disk_full errors of the uploader
# An idle uploader waits for `wake` (set by every seal, stop and close of this process); it looks at
# the queue unasked only this often, for batches queued by another process (`requeue` while the
# agent runs). Twice a second was a tenth of an idle agent's CPU.
IDLE_RECHECK = 5.0


ANSWER_HEAD = 120  # bytes of a wrong answer shown in the message
CONFIG_STATUSES = frozenset({404, 405, 421})


@dataclass(frozen=True)
class Delivered:
    accepted: int
    duplicate: bool


class Sink(Protocol):
    def send(self, batch_id: str, body: bytes, encoding: str) -> Delivered: ...
    def health(self) -> dict[str, object]: ...
    def close(self) -> None: ...


class Backoff:
    """Exponential backoff with full jitter and a cap; a server's Retry-After wins (capped).

    Full jitter (a uniform draw in [0, min(cap, base * 2**n)]) spreads a fleet of agents that
    all saw the same outage, so they do not return in lock-step.
    """

    def __init__(self, base: float, cap: float, retry_after_cap: float,
                 rng: Callable[[], float] = random.random) -> None:
        self.base = base
        self.cap = cap
        self.retry_after_cap = retry_after_cap
        self.rng = rng
        self.failures = 0

    def next_delay(self, retry_after: float | None = None) -> float:
        self.failures += 1
        if retry_after is not None:
            return float(max(0.0, min(retry_after, self.retry_after_cap)))
        ceiling: float = min(self.cap, self.base * 2.0 ** min(self.failures - 1, 62))
        return self.rng() * ceiling

    def reset(self) -> None:
        self.failures = 0


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date. None if absent or garbled."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    # Imported here: the email package is 6 ms of every start-up, and a collector that answers
    # with an HTTP date is rare (ours sends seconds).
    from email.utils import parsedate_to_datetime

    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


class HttpSink:
    """Protocol v1 over one keep-alive HTTP(S) connection."""

    def __init__(self, server: ServerConfig, reporter: Reporter | None = None) -> None:
        parts = urlsplit(server.url)
        self.reporter = reporter  # its latest report goes with every batch (the Agent-Status header)
        self.scheme = parts.scheme
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self.timeout = server.timeout
        self.token = server.token
        self.tls = tls_context(server.ca_file, server.verify_tls) if parts.scheme == "https" else None
        self._conns: list[Connection] = []  # one per request that was ever in flight at once
        self._idle: list[Connection] = []
        self._lock = threading.Lock()
        # Whether the collector's last answer listed format 2 (its Accept-Post header).
        self.format_2 = False
        # Whether the collector answered 404/405 to a status report alone (it predates them).
        self.status_refused = False

    @property
    def where(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def _request(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        conn = self._take()
        try:
            conn.send_request(method, self.prefix + path, headers, body)
            crash_point("after_post")
            response = conn.read_response(max_body=MAX_ANSWER_BYTES)
        except OSError as exc:
            if self.tls is not None and isinstance(exc, self.tls.refused):
                raise RetryableDeliveryError(Message("TLS certificate of {where} refused: {reason}",
                                                     where=self.where, reason=exc.verify_message)) from exc
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise RetryableDeliveryError(Message("cannot reach the collector at {where}: {reason}",
                                                 where=self.where, reason=reason)) from exc
        finally:
            with self._lock:
                self._idle.append(conn)
        return response.status, response.headers, response.body

    def _take(self) -> Connection:
        """An idle keep-alive connection, or a new one (uploads in flight each need their own)."""
        with self._lock:
            if self._idle:
                return self._idle.pop()
            conn = Connection(self.host, self.port, self.timeout, self.tls)
            self._conns.append(conn)
            return conn

    def send(self, batch_id: str, body: bytes, encoding: str) -> Delivered:
        second = body_format(body, encoding) == 2
        if second and not self.format_2:
            body, second = as_format_1(body, encoding), False
        status, response_headers, payload = self._post(body, encoding, second)
        if status == 415 and second:
            # Format 2 was listed by the last answer but not taken now (a downgrade): format 1.
            self.format_2 = False
            status, response_headers, payload = self._post(as_format_1(body, encoding), encoding, False)
        return _interpret(status, response_headers, payload, batch_id)

    def _post(self, body: bytes, encoding: str, second: bool) -> tuple[int, dict[str, str], bytes]:
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Content-Type": MEDIA_V2 if second else MEDIA_V1,
            "User-Agent": f"remote-uploader/{__version__}",
        }
        if encoding == "gzip":
            headers["Content-Encoding"] = "gzip"
        if self.reporter is not None and (report := self.reporter.text()):
            # A header, not a body field: the queued body stays byte-identical on every retry, and
            # every collector, old or new, on every parsing path, ignores a header it does not know.
            headers[STATUS_HEADER] = report
        answer = self._request("POST", BATCHES_PATH, body, headers)
        self._learn(answer[1])
        return answer

    def _learn(self, headers: dict[str, str]) -> None:
        """Note whether the collector takes format 2, from any of its answers."""
        listed = headers.get(ACCEPT_POST.lower(), "")
        self.format_2 = MEDIA_V2 in (part.split(";", 1)[0].strip().lower() for part in listed.split(","))

    def health(self) -> dict[str, object]:
        status, headers, payload = self._request("GET", HEALTH_PATH, None,
                                                 {"User-Agent": f"remote-uploader/{__version__}"})
        self._learn(headers)
        try:
            answer = json.loads(payload) if payload else {}
        except ValueError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        answer["http_status"] = status
        return answer

    def send_status(self, report: str) -> int:
        """POST the report alone (a heartbeat: nothing was sent for a while); the answer's status.
        404 or 405: a collector from before "Agent status" (the caller stops asking it). Raises
        RetryableDeliveryError when the collector cannot be reached."""
        status, _, _ = self._request("POST", STATUS_PATH, report.encode(), {
            "Authorization": f"Bearer {self.token}", "Content-Type": MEDIA_V1,
            "User-Agent": f"remote-uploader/{__version__}"})
        if status in (404, 405):
            self.status_refused = True
        return status

    def whoami(self) -> tuple[int, dict[str, object], bytes]:
        """GET /v1/whoami with the token: (status, the JSON answer or {}, the raw answer)."""
        status, _, payload = self._request("GET", WHOAMI_PATH, None, {
            "Authorization": f"Bearer {self.token}", "User-Agent": f"remote-uploader/{__version__}"})
        try:
            answer = json.loads(payload) if payload else {}
        except ValueError:
            answer = {}
        return status, answer if isinstance(answer, dict) else {}, payload

    def producer_streams(self, producer: str) -> dict[str, list[tuple[int, int]]]:
        """GET /v1/producers/PRODUCER/streams: per stream, the byte ranges the collector stored
        (`reset-state` after a destroyed queue). Raises DeliveryError saying why not (unreachable,
        refused, a collector from before the field: 404)."""
        status, _, payload = self._request("GET", STREAMS_PATH.format(producer=producer), None, {
            "Authorization": f"Bearer {self.token}", "User-Agent": f"remote-uploader/{__version__}"})
        try:
            if status != 200:
                raise ValueError(status)
            streams = json.loads(payload)["streams"]
            return {str(sid): [(int(lo), int(hi)) for lo, hi in ranges] for sid, ranges in streams.items()}
        except (ValueError, TypeError, KeyError, AttributeError):
            raise DeliveryError(Message("the collector at {where} answered {status} for the stream ranges: {body}",
                                        where=self.where, status=status, body=_head(payload)), status) from None

    def close(self) -> None:
        """Close every connection (each opens again on its next request)."""
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            conn.close()

    def abort(self) -> None:
        """Cut the requests in flight (from another thread): their batches stay queued."""
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            conn.abort()


def _interpret(status: int, headers: dict[str, str], payload: bytes, batch_id: str) -> Delivered:
    """Turn an answer into Delivered or the DeliveryError subclass that says what to do next."""
    if 200 <= status < 300:
        return _acknowledgement(status, payload, batch_id)
    detail = payload[:300].decode("utf-8", "replace").strip()
    message = (Message("collector answered {status} for batch {batch_id}: {detail}", status=status, batch_id=batch_id,
                       detail=detail) if detail else
               Message("collector answered {status} for batch {batch_id}", status=status, batch_id=batch_id))
    retry_after = parse_retry_after(headers.get("retry-after"))
    if status in (401, 403):
        raise AuthRefusedError(Message("collector refused the token (HTTP {status}: {reason}); check server.token "
                                       "and agent.id", status=status, reason=_reason(payload)), status)
    if 300 <= status < 400:
        raise ConfigRefusedError(Message(
            "HTTP {status} from the server: a redirect to {location}, which the agent does not follow; set "
            "server.url to the collector's own address", status=status,
            location=headers.get("location", "?")[:200]), status)
    if status in CONFIG_STATUSES:
        raise ConfigRefusedError(Message(
            "HTTP {status} for POST {path}: no remote-uploader collector answers there; check server.url "
            "(the collector's base URL); the answer begins {head}", status=status, path=BATCHES_PATH,
            head=_head(payload)), status)
    if status == 413:
        raise PayloadTooLargeError(message, status)
    if status in (408, 429) or status >= 500:
        raise RetryableDeliveryError(message, status, retry_after)
    raise PermanentDeliveryError(message, status)


def _acknowledgement(status: int, payload: bytes, batch_id: str) -> Delivered:
    """A 2xx is an acknowledgement only when it is the collector's answer about this very batch.

    Deleting a batch on a bare 2xx would let any web server at a wrong URL (a welcome page, a
    captive portal, a load balancer's default answer) swallow every batch. So the answer must
    parse as JSON, name the batch id that was sent, and say `accepted` and `duplicate`: what
    docs/protocol.md promises every collector answers. Anything else is retried and reported.
    """
    try:
        answer = json.loads(payload)
        if (isinstance(answer, dict) and answer.get("batch_id") == batch_id
                and type(answer.get("accepted")) is int and type(answer.get("duplicate")) is bool):
            return Delivered(answer["accepted"], answer["duplicate"])
    except ValueError:
        pass
    raise NotACollectorError(Message(
        "this server is not a remote-uploader collector: it answered HTTP {status} without naming batch "
        "{batch_id}; the answer begins {head}; check server.url", status=status, batch_id=batch_id,
        head=_head(payload)), status)


def _head(payload: bytes) -> str:
    """The first bytes of an answer, quoted, for a message: enough to recognise a page."""
    text = payload[:ANSWER_HEAD].decode("utf-8", "replace")
    return repr(text + ("..." if len(payload) > ANSWER_HEAD else "")) if payload else "(empty)"


def _reason(payload: bytes) -> str:
    """The collector's own words for a refusal (the first `detail` error), else the first bytes."""
    try:
        detail = json.loads(payload)["detail"][0]
        return f"{detail['field']}: {detail['error']}"[:300]
    except (ValueError, KeyError, IndexError, TypeError):
        return _head(payload)


# The uploader's requests in flight: each one's answer-to-be, its batch and when it was sent.
InFlight = dict[Future[Delivered], tuple[QueuedBatch, float]]
# A batch whose upload is to be tried again, and why.
Failure = tuple[QueuedBatch, DeliveryError]


class Uploader(threading.Thread):
    """Sends queued batches oldest first, `concurrency` at a time, for as long as the agent runs;
    never drops one.

    Several requests in flight let the collector parse one batch while it stores another; the
    order of acknowledgements does not matter for correctness (offsets became durable when each
    batch was sealed, and batch ids make a resend harmless). This thread alone touches the queue:
    the sender threads only call `sink.send`. Waits on events, never sleeps in a loop: `wake` is
    set when a batch is sealed, `stop` ends it after the requests in flight are answered.
    """

    def __init__(self, spool: Spool, sink: Sink, backoff: Backoff, stats: Stats, agent_id: str,
                 wake: threading.Event, stop: threading.Event, concurrency: int = 1, *,
                 on_idle: threading.Event | None = None, reporter: Reporter | None = None,
                 status_every: float = 0.0) -> None:
        super().__init__(name="uploader", daemon=True)
        # The agent's status report (agent/report.py): refreshed before each batch is sent, and
        # sent alone after `status_every` seconds without a request (0: never).
        self.reporter = reporter
        self.status_every = status_every
        self.last_request = time.monotonic()
        self.spool = spool
        self.sink = sink
        self.backoff = backoff
        self.stats = stats
        self.agent_id = agent_id
        self.wake = wake
        self.stop_event = stop
        self.concurrency = concurrency
        self.idle = threading.Event()  # set while the queue is empty
        self.on_idle = on_idle  # set each time it falls idle: the reader seals what accumulated meanwhile
        self.failing_since: float | None = None
        self.last_error = ""
        self.fatal: BaseException | None = None
        self.disk_full = False
        self.disk_full_said = -DISK_FULL_SAY_EVERY  # monotonic time it was last said
        # `once`: seconds of failing after which the run gives up (None: never). A retry that would
        # come later is not announced as one; the log says when the run gives up instead.
        self.give_up_after: float | None = None

    def run(self) -> None:
        try:
            with ThreadPoolExecutor(self.concurrency, thread_name_prefix="sender") as senders:
                self._loop(senders)
        except StateError as exc:  # the queue database failed under us: stop sending, say why
            self.fatal = exc
            log.error("event=uploader_stopped reason=%r", str(exc))
        finally:
            self.idle.set()
            self.sink.close()

    def _loop(self, senders: ThreadPoolExecutor) -> None:
        in_flight: InFlight = {}
        while True:
            if not self.stop_event.is_set():
                self._fill(senders, in_flight)
            if not in_flight:
                if self.stop_event.is_set():
                    return
                if not self.idle.is_set():
                    self.idle.set()
                    if self.on_idle is not None:
                        self.on_idle.set()
                self.failing_since = None
                self.wake.wait(self._heartbeat())
                self.wake.clear()
                continue
            self.idle.clear()
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            failures = self._settle_all(done, in_flight)
            if failures:  # let the others be answered too, so that one backoff covers them all
                failures += self._settle_all(list(in_flight), in_flight)
                self._retry_later(failures)

    def _heartbeat(self) -> float:
        """Send the status report alone if no request went out for `status_every` seconds (so an
        agent with nothing to send is not taken for a silent one); how long to wait before the
        next look. A collector without the endpoint (404, 405) is not asked again by this sink."""
        sink = self.sink  # read once: a reload may swap it meanwhile (`use`)
        if self.reporter is None or not self.status_every or not isinstance(sink, HttpSink):
            return IDLE_RECHECK
        due = self.last_request + self.status_every - time.monotonic()
        if due > 0:
            return min(IDLE_RECHECK, due)
        self.last_request = time.monotonic()
        if sink.status_refused:
            return IDLE_RECHECK
        try:
            status = sink.send_status(self.reporter.refresh(self.spool, 0.0, force=True))
        except DeliveryError as exc:
            log.debug("event=status_not_sent reason=%r", str(exc))
            return min(IDLE_RECHECK, self.status_every)
        if status in (404, 405):
            log.info("event=status_not_taken status=%d reason=collector_before_agent_status", status)
        elif status != 200:
            log.debug("event=status_not_sent status=%d", status)
        return min(IDLE_RECHECK, self.status_every)

    def _settle_all(self, futures: Iterable[Future[Delivered]], in_flight: InFlight) -> list[Failure]:
        """Settle each of `futures` (waiting for its answer), taking it out of `in_flight`; the failures to retry."""
        return [failure for future in futures if (failure := self._settle(future, *in_flight.pop(future)))]

    def _fill(self, senders: ThreadPoolExecutor, in_flight: InFlight) -> None:
        """Start requests for the oldest batches not in flight, up to `concurrency` of them."""
        while len(in_flight) < self.concurrency:
            queued = self.spool.next_batch(exclude=[q.seq for q, _ in in_flight.values()])
            if queued is None:
                return
            if self.reporter is not None:
                self.reporter.refresh(self.spool, self.failing_for())
            self.last_request = time.monotonic()
            future = senders.submit(self.sink.send, queued.batch_id, queued.body, queued.encoding)
            in_flight[future] = (queued, time.monotonic())

    def _settle(self, future: Future[Delivered], queued: QueuedBatch, started: float) -> Failure | None:
        """Act on one answer; a failure to retry is returned (the batch stays queued as it is)."""
        try:
            self._act_on(future, queued, started)
        except RetryableDeliveryError as exc:
            return queued, exc
        except DiskFullError as exc:
            self._wait_for_disk_space(exc)
        else:
            if self.disk_full:
                self.disk_full = False
                log.info("event=disk_space_back component=uploader")
        return None

    def _wait_for_disk_space(self, exc: DiskFullError) -> None:
        """A full disk is passing trouble, not a reason to stop sending for the rest of the run.

        The transaction that hit it (an ack, a split, a dead letter) rolled back, so the batch is
        still queued and is sent again later; a batch the collector already stored is then answered
        as a duplicate and counts nothing twice. Said once, then retried with the backoff.
        """
        self.disk_full = True
        now = time.monotonic()
        if self.failing_since is None:  # `once` gives up after its budget here too (a disk that stays full)
            self.failing_since = now
        # Said once per DISK_FULL_SAY_EVERY, not once per episode: on a nearly full disk some
        # writes pass (an acknowledgement) and others fail (delivered.json), and each passing one
        # would otherwise start a new episode and a new error line.
        if now - self.disk_full_said >= DISK_FULL_SAY_EVERY:
            self.disk_full_said = now
            log.error("event=disk_full component=uploader reason=%r action=retrying batch_kept=true", str(exc))
        self.stop_event.wait(self.backoff.next_delay())

    def _act_on(self, future: Future[Delivered], queued: QueuedBatch, started: float) -> None:
        try:
            result = future.result()
        except PayloadTooLargeError as exc:
            self._split(queued, exc)
        except PermanentDeliveryError as exc:
            self.spool.dead_letter(queued.seq, exc.status, str(exc))
            self.stats.batches_dead += 1
            log.error("event=dead_letter batch_id=%s records=%d status=%s reason=%r",
                      queued.batch_id, queued.records, exc.status, str(exc))
        else:
            crash_point("before_ack")
            self.spool.ack(queued.seq)
            crash_point("after_ack")
            self.backoff.reset()
            self.failing_since = None
            self.stats.note_sent(queued, time.monotonic() - started, duplicate=result.duplicate)
            with contextlib.suppress(DiskFullError):  # bookkeeping for `status`; the ack is what mattered
                self.spool.set_kv("last_upload", json.dumps({"at": time.time(), "ok": True,
                                                             "batch_id": queued.batch_id}))
            log.debug("event=batch_sent batch_id=%s records=%d duplicate=%s", queued.batch_id,
                      queued.records, result.duplicate)

    def _split(self, queued: QueuedBatch, exc: DeliveryError) -> None:
        """Replace a batch refused as too large by its halves; a batch of one record stays as it is.

        One record's body is a few hundred bytes and our collector refuses a `max_body` below
        1,024, so a 413 to it says that something is misconfigured (a proxy's
        `client_max_body_size`, a limit being changed) or that the answer was not about this body:
        the record is kept and retried with the backoff, as for a wrong token, never dead-lettered
        (finding F5, docs/generative-findings.md: a refusal that passed had cost the record).
        """
        parts = split_queued(queued, self.agent_id)
        if len(parts) < 2:
            raise ConfigRefusedError(Message(
                "HTTP 413 for batch {batch_id} of {records} record(s), {size} bytes: the collector or a proxy "
                "before it refuses a body this small; raise its size limit (the collector's max_body, a "
                "proxy's client_max_body_size); the batch stays queued", batch_id=queued.batch_id,
                records=queued.records, size=len(queued.body)), exc.status)
        self.spool.split(queued.seq, parts)
        self.stats.batches_split += 1
        log.info("event=batch_split batch_id=%s records=%d parts=%d", queued.batch_id, queued.records, len(parts))

    def _retry_later(self, failures: list[Failure]) -> None:
        """Note each failure, then wait one backoff step (the longest Retry-After asked wins)."""
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
        retry_after = [exc.retry_after for _, exc in failures if exc.retry_after is not None]
        delay = self.backoff.next_delay(max(retry_after) if retry_after else None)
        remaining = None if self.give_up_after is None else max(0.0, self.give_up_after - (now - self.failing_since))
        for queued, exc in failures:
            self.stats.batches_failed += 1
            self.last_error = str(exc)
            level = logging.ERROR if isinstance(exc, ConfigRefusedError | NotACollectorError) else logging.WARNING
            if remaining is not None and delay >= remaining:
                log.log(level, "event=upload_failed batch_id=%s status=%s retry_in=none giving_up_in=%.2fs "
                        "reason=%r", queued.batch_id, exc.status, remaining, str(exc))
            else:
                log.log(level, "event=upload_failed batch_id=%s status=%s retry_in=%.2fs reason=%r",
                        queued.batch_id, exc.status, delay, str(exc))
            try:
                self.spool.note_failure(queued.seq, str(exc))
                self.spool.set_kv("last_upload", json.dumps({"at": time.time(), "ok": False, "error": str(exc)}))
            except StateError as state_exc:  # e.g. a full disk: bookkeeping only, the batch is safe
                log.warning("event=bookkeeping_failed reason=%r", str(state_exc))
        self.stop_event.wait(delay)

    def use(self, sink: Sink, backoff: Backoff) -> None:
        """A new sink and backoff (a reload changed the server settings), from the next request on.
        A request in flight finishes on the old sink (not closed here: closing would cut it; its
        connections go with it)."""
        self.sink, self.backoff = sink, backoff

    def failing_for(self) -> float:
        return 0.0 if self.failing_since is None else time.monotonic() - self.failing_since
