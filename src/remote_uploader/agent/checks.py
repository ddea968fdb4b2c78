"""`test` (is everything in place?) and `status` (where is everything?), as data for the CLI to render.

`status` opens the queue read-only and never takes the agent's lock, so it can run beside a
running agent without blocking it. Nothing here prints or exits.
"""

from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import dataclass
from typing import Any

from remote_uploader.agent.batch import decode_queued, identity_of
from remote_uploader.agent.extractors import extractor_for
from remote_uploader.agent.sink import HttpSink
from remote_uploader.agent.source import BlockReader, expand_sources, fingerprint
from remote_uploader.agent.spool import DB_NAME, FileState, Spool, StateLock
from remote_uploader.agent.timestamps import TimedExtractor
from remote_uploader.config import Config
from remote_uploader.errors import AuthRefusedError, DeliveryError, RemoteUploaderError, StateError
from remote_uploader.i18n import _, translate_known

SAMPLE_BYTES = 64 * 1024
SAMPLE_IPS = 5
GONE = "gone"  # status of a record whose content can no longer be found on disk


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def run_checks(config: Config) -> list[Check]:
    """One check per line: config, each source, the state directory, the server."""
    origin = config.origin or _("built-in defaults")
    checks = [Check(_("config"), True, _("loaded from {origin}, profile {profile}").format(
        origin=origin, profile=config.agent.profile))]
    checks += check_sources(config)
    checks.append(check_state_dir(config))
    checks.append(check_server(config))
    return checks


def check_sources(config: Config) -> list[Check]:
    if not config.sources:
        return [Check(_("sources"), False, _("no [[sources]] configured"))]
    files, problems = expand_sources(config.sources, skip_compressed=config.read.skip_compressed)
    # One line per problem, a glob that matches nothing among them (not only when all globs do).
    checks = [Check(problem.path, False, translate_known(problem.reason)) for problem in problems]
    for found in files:
        assert found.source_index is not None  # a glob match: it has its source
        checks.append(_sample(found.path, config, found.source_index))
    return checks


def _sample(path: str, config: Config, source_index: int) -> Check:
    source = config.sources[source_index]
    extractor = extractor_for(source, config.agent.engine)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        return Check(path, False, _("cannot open: {reason}").format(reason=exc.strerror))
    try:
        size = os.fstat(fd).st_size
        reader = BlockReader(fd, 0, SAMPLE_BYTES, extractor.context)
        chunk = next(reader.chunks(partial=True), None)
        counts = extractor.scan(chunk.buf, chunk.start, chunk.end) if chunk and chunk.scan else {}
        lines = chunk.lines() if chunk else 0
        untimed = None
        if isinstance(extractor, TimedExtractor) and chunk and chunk.scan:
            untimed = extractor.scan_minutes(chunk.buf, chunk.start, chunk.end)[2]
    except OSError as exc:
        return Check(path, False, _("cannot read: {reason}").format(reason=exc.strerror))
    finally:
        os.close(fd)
    top = sorted(counts.items(), key=lambda item: -item[1])[:SAMPLE_IPS]
    found = ", ".join(f"{ip} x{n}" for ip, n in top) or _("none")
    text = _("readable, {size} bytes; first {lines} lines hold {n} addresses: {found}").format(
        size=size, lines=lines, n=len(counts), found=found)
    if untimed is None:
        return Check(path, True, text)
    # A pattern that finds no time in any line read is a mistake, not a quiet fallback to read times.
    timed = lines - untimed
    text += _("; times read by timestamp_pattern in {timed} of {lines} lines").format(timed=timed, lines=lines)
    return Check(path, timed > 0 or lines == 0, text)


def check_state_dir(config: Config) -> Check:
    state_dir = config.agent.state_dir
    name = _("state directory")
    if not state_dir.exists():
        parent = next((p for p in state_dir.parents if p.exists()), None)
        if parent is not None and os.access(parent, os.W_OK):
            return Check(name, True, _("{path} will be created").format(path=state_dir))
        return Check(name, False, _("{path} does not exist and cannot be created").format(path=state_dir))
    if not os.access(state_dir, os.W_OK | os.X_OK):
        return Check(name, False, _("{path} is not writable").format(path=state_dir))
    running = StateLock(state_dir).is_held_elsewhere()
    if not (state_dir / DB_NAME).exists():
        return Check(name, True, _("{path} writable, no queue yet").format(path=state_dir))
    try:
        spool = Spool(state_dir, readonly=True)
        stats = spool.stats()
        spool.close()
    except (StateError, OSError) as exc:
        return Check(name, False, exc.translated() if isinstance(exc, StateError) else str(exc))
    state = _("an agent is running") if running else _("lock free")
    return Check(name, True, _("{path} writable, {state}, queue readable: {records} records in {batches} batches")
                 .format(path=state_dir, state=state, records=stats.records, batches=stats.batches))


def check_server(config: Config) -> Check:
    """Reachable (GET /v1/health), the token accepted, and what `once` will send accepted too.

    GET /v1/whoami names the token: batches with a producer (every batch this agent seals) are
    counted under that name, whatever agent they name, so the line says so for the queued ones.
    A collector without /v1/whoami (older than this agent) refuses any batch whose agent is not
    the token's name; then each agent name found in the queue is probed with a POST of
    `{"agent": name}` and nothing else: 403 is a mismatch, 400 "token accepted for this agent",
    and nothing is ever stored by the check.
    """
    sink = HttpSink(config.server)
    name = _("server {url}").format(url=config.server.url)
    try:
        health = sink.health()
        if not config.server.token:
            return Check(name, False, _("reachable, but no token configured (server.token or token_file)"))
        reachable = _("reachable (health: {status})").format(status=health.get("status", health.get("http_status")))
        queued = _queued_agents(config)
        status, answer, payload = sink.whoami()
        if status == 200 and isinstance(answer.get("name"), str):
            return _check_named(name, reachable, str(answer["name"]), answer.get("role"), queued, config)
        if status in (401, 403):
            return Check(name, False, _("reachable, but the token was refused: {reason}").format(
                reason=payload[:200].decode("utf-8", "replace").strip()))
        return _check_by_probe(sink, name, reachable, queued, config)
    except DeliveryError as exc:
        return Check(name, False, exc.translated())
    finally:
        sink.close()


def _check_named(name: str, reachable: str, token_name: str, role: object, queued: dict[tuple[str, bool], int],
                 config: Config) -> Check:
    if role != "agent":
        return Check(name, False, _("{reachable}, but the token {token} may only read").format(
            reachable=reachable, token=token_name))
    stranded = {agent: n for (agent, identified), n in queued.items() if not identified and agent != token_name}
    if stranded:
        return Check(name, False, _(
            "{reachable}; {n} queued batches from an older agent name agent {agents}, which this token ({token}) "
            "may not send: use a token named so until they are delivered").format(
            reachable=reachable, n=sum(stranded.values()), agents=", ".join(sorted(stranded)), token=token_name))
    detail = _("{reachable}, token accepted: batches are counted under {token}").format(
        reachable=reachable, token=token_name)
    renamed = {agent: n for (agent, identified), n in queued.items() if identified and agent != token_name}
    if renamed:
        detail += _("; {n} queued batches sealed as {agents} will be counted under {token}").format(
            n=sum(renamed.values()), agents=", ".join(sorted(renamed)), token=token_name)
    if config.agent.id != token_name:  # delivered all the same, but surely not what was meant
        return Check(name, False, _(
            "{reachable}, but the token is not for agent {agent}: its name is {token}, and batches are counted "
            "under it; agent.id must match the token's name").format(
            reachable=reachable, agent=config.agent.id, token=token_name))
    return Check(name, True, detail)


def _check_by_probe(sink: HttpSink, name: str, reachable: str, queued: dict[tuple[str, bool], int],
                    config: Config) -> Check:
    """An older collector: every agent name that `once` will send must be the token's name."""
    agents = sorted({config.agent.id} | {agent for agent, _identified in queued})
    for agent in agents:
        try:
            sink.send("remote-uploader-test", json.dumps({"agent": agent}).encode(), "identity")
        except AuthRefusedError as exc:
            if exc.status == 403:
                return Check(name, False, _("reachable, but the token is not for agent {agent} (HTTP 403); "
                                            "agent.id must match the token's name").format(agent=agent))
            return Check(name, False, _("reachable, but the token was refused"))
        except DeliveryError as exc:
            if exc.status not in (400, 422):
                return Check(name, False, exc.translated())
    return Check(name, True, _("{reachable}, token accepted").format(reachable=reachable))


def _queued_agents(config: Config) -> dict[tuple[str, bool], int]:
    """(agent named, has a producer) -> queued batches: what `once` will send, by name."""
    found: dict[tuple[str, bool], int] = {}
    if not (config.agent.state_dir / DB_NAME).exists():
        return found
    try:
        spool = Spool(config.agent.state_dir, readonly=True)
    except StateError:
        return found  # check_state_dir says what is wrong with the queue
    try:
        bodies = spool.queued_bodies()
    finally:
        spool.close()
    for body, encoding in bodies:
        try:
            document = decode_queued(body, encoding)
        except (OSError, ValueError, EOFError):
            continue
        key = (str(document.get("agent")), identity_of(document) is not None)
        found[key] = found.get(key, 0) + 1
    return found


def collect_status(config: Config) -> dict[str, Any]:
    """Per file (offset, size, bytes behind), the queue, dead letters, the last upload."""
    state_dir = config.agent.state_dir
    try:
        spool = Spool(state_dir, readonly=True)
    except RemoteUploaderError as exc:
        return {"state_dir": str(state_dir), "error": str(exc)}
    try:
        files = []
        for state in spool.files():
            path, size = where_now(state)
            if size is None:
                # Its content is nowhere on disk any more (compressed into a .gz, deleted after a
                # rotation): nothing is left to read, so nothing is behind. The agent forgets such
                # records after a day (a file system may only have been unmounted).
                item = {"path": path, "offset": state.offset, "size": None, "behind": 0, "status": GONE}
            else:
                item = {"path": path, "offset": state.offset, "size": size, "behind": max(0, size - state.offset),
                        "status": state.status}
            if path != state.path:
                item["recorded_path"] = state.path
            files.append(item)
        queue = spool.stats()
        kv = spool.get_kv()
        dead = spool.dead_letters()
    finally:
        spool.close()
    return {
        "state_dir": str(state_dir),
        "agent_running": StateLock(state_dir).is_held_elsewhere(),
        "files": files,
        "queue": {"batches": queue.batches, "records": queue.records, "occurrences": queue.occurrences,
                  "bytes_on_disk": queue.disk_bytes, "body_bytes": queue.body_bytes,
                  "oldest_age_seconds": None if queue.oldest_created is None
                  else round(time.time() - queue.oldest_created, 3)},
        "dead_letters": [{"batch_id": b, "records": r, "status": s, "reason": why, "dead_at": at}
                         for b, r, s, why, at in dead],
        "last_upload": json.loads(kv["last_upload"]) if "last_upload" in kv else None,
    }


def where_now(state: FileState) -> tuple[str, int | None]:
    """Where a record's content is now, and its size: (path, None) if it cannot be found.

    The recorded path is where the agent last saw the file; after a rotation it may hold another
    file (a new log) while the record's content sits under the rotated name. Sizing the new file
    against the old offset would report 0 bytes behind for a file that is behind, so the content is
    matched by identity (device, inode and the fingerprint of its first bytes), at the recorded
    path first, then among the files of the same directory.
    """
    if _holds(state.path, state):
        return state.path, os.stat(state.path).st_size
    directory = os.path.dirname(state.path) or "."
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.path != state.path and _holds(entry.path, state):
                    return entry.path, entry.stat().st_size
    except OSError:
        pass
    return state.path, None


def _holds(path: str, state: FileState) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (state.identity.dev, state.identity.ino):
            return False
        return fingerprint(fd, state.identity.fp_len) == (state.identity.fp_len, state.identity.fp_hash)
    finally:
        os.close(fd)


def render_status(report: dict[str, Any]) -> list[str]:
    if "error" in report:
        return [report["error"]]
    lines = [_("State directory: {path} ({running})").format(
        path=report["state_dir"], running=_("agent running") if report["agent_running"] else _("agent not running"))]
    for item in report["files"]:
        if item["status"] == GONE:
            lines.append(_("  {path}: offset {offset}; no longer on disk (compressed or deleted after a rotation), "
                           "nothing left to read").format(path=item["path"], offset=item["offset"]))
            continue
        lines.append(_("  {path}: offset {offset} of {size} bytes, {behind} bytes behind ({status})").format(
            path=item["path"], offset=item["offset"], size=item["size"], behind=item["behind"],
            status=translate_known(item["status"])))
    queue = report["queue"]
    age = queue["oldest_age_seconds"]
    lines.append(_("Queue: {batches} batches, {records} records, {mb:.2f} MB on disk, oldest {age}").format(
        batches=queue["batches"], records=queue["records"], mb=queue["bytes_on_disk"] / 1e6,
        age="-" if age is None else f"{age:.0f}s"))
    lines.append(_("Dead letters: {n} batches ({records} records)").format(
        n=len(report["dead_letters"]), records=sum(d["records"] for d in report["dead_letters"])))
    last = report["last_upload"]
    if last:
        result = _("ok") if last.get("ok") else last.get("error", "")
        lines.append(_("Last upload: {when} {result}").format(
            when=time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last["at"])), result=result))
    return lines
