"""Bad configuration and a bad environment: every invalid key is named; an unreachable server, a refused
TLS certificate and a wrong token each give one clear line in `test` and in the logs, and the data
stays queued until the problem is fixed, then arrives exactly."""

from __future__ import annotations

import ssl
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from remote_uploader.config import DEFAULTS, PARSERS, load
from remote_uploader.errors import ConfigError
from tests.helpers.agent import write_access_log, write_config
from tests.helpers.receiver import Receiver
from tests.reliability.harness import Row, TlsFront, record, run, status, tally

trustme = pytest.importorskip("trustme", reason="trustme (test extra) makes the throwaway TLS CA")

ENV_CANDIDATES = ("not-a-value", "-1", "0", "", "1.5.5", "http://")


def _env_invalid(key: str) -> str | None:
    """A string the key's parser rejects, or None for keys that take any string (paths, tokens)."""
    for candidate in ENV_CANDIDATES:
        try:
            PARSERS[key](candidate)
        except ValueError:
            return candidate
    return None


def _minimal(tmp_path: Path, **extra: dict[str, Any]) -> Path:
    document: dict[str, Any] = {"agent": {"id": "a", "state_dir": str(tmp_path / "state")},
                                "sources": [{"paths": [str(tmp_path / "x.log")]}]}
    for section, values in extra.items():
        document.setdefault(section, {}).update(values)
    path = tmp_path / "bad.toml"
    path.write_bytes(tomli_w.dumps(document).encode())
    return path


@pytest.mark.parametrize("key", sorted(k for k in PARSERS if k != "agent.profile"))
def test_every_invalid_key_in_the_file_and_the_environment_is_named(tmp_path: Path, key: str) -> None:
    section, name = key.split(".")
    with pytest.raises(ConfigError) as in_file:
        load(str(_minimal(tmp_path, **{section: {name: {"not": "a scalar"}}})), env={})
    assert in_file.value.key == key and key in str(in_file.value)
    bad = _env_invalid(key)
    if bad is not None:
        variable = "REMOTE_UPLOADER_" + key.replace(".", "_").upper()
        with pytest.raises(ConfigError) as in_env:
            load(str(_minimal(tmp_path)), env={variable: bad})
        assert in_env.value.key == key and variable in str(in_env.value)


CROSS_KEY = [
    ({"batching": {"max_memory_ips": 10, "force_upload_threshold": 20}}, "batching.force_upload_threshold"),
    ({"batching": {"force_upload_threshold": 10, "min_upload_batch": 20}}, "batching.min_upload_batch"),
    ({"read": {"block_size": 100}}, "read.block_size"),
    ({"server": {"ca_file": "/nonexistent/ca.pem"}}, "server.ca_file"),
    ({"server": {"token_file": "/nonexistent/token"}}, "server.token_file"),
    ({"server": {"token": "two words"}}, "server.token"),
    ({"agent": {"no_such_key": 1}}, "agent.no_such_key"),
    ({"nonsense": {"x": 1}}, "nonsense.x"),
]


@pytest.mark.parametrize(("tables", "key"), CROSS_KEY, ids=[key for _, key in CROSS_KEY])
def test_values_wrong_together_or_unknown_keys_are_named_by_the_cli_in_one_line(
        tmp_path: Path, tables: dict[str, dict[str, Any]], key: str) -> None:
    result = run(_minimal(tmp_path, **tables), "once")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and key in lines[0], result.stderr
    assert "two words" not in result.stderr  # a rejected token is not echoed either


def test_bad_sources_are_named_with_their_index(tmp_path: Path) -> None:
    for sources, key in (([{"paths": []}], "sources[0].paths"), ([{"paths": ["a"]}, {"regex": "("}], "sources[1]"),
                         ([{"paths": ["a"], "exclude": ["300.0.0.0/8"]}], "sources[0].exclude"),
                         ([{"paths": ["a"], "colour": "red"}], "sources[0].colour")):
        path = tmp_path / "s.toml"
        path.write_bytes(tomli_w.dumps({"sources": sources}).encode())
        with pytest.raises(ConfigError) as raised:
            load(str(path), env={})
        assert key in str(raised.value)
    assert set(DEFAULTS) <= set(PARSERS)  # every key with a default is checked


# --- the server side of the environment ---------------------------------------------------------------


@pytest.fixture
def ca(tmp_path: Path) -> Any:
    return trustme.CA()


@pytest.fixture
def tls_front(receiver: Receiver, ca: Any) -> Iterator[TlsFront]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    front = TlsFront(receiver.port, context)
    yield front
    front.close()


def _server_line(output: str, url: str) -> list[str]:
    return [line for line in output.splitlines() if url in line]


def _fail_then_fix(tmp_path: Path, receiver: Receiver, *, broken: dict[str, Any], fixed: dict[str, Any],
                   token: str | None = None, before_fix: Any = None) -> tuple[Any, Any, Any, Any, str, float]:
    log = tmp_path / "access.log"
    expected = write_access_log(log, 2000, seed=1)
    common = {"max_retry_time": 1.5, "backoff_cap": 0.2}
    bad = write_config(tmp_path / "bad.toml", url=broken.pop("url", receiver.url), token=token or receiver.token,
                       state_dir=tmp_path / "state", sources=[str(log)], server={**common, **broken})
    checked = run(bad, "test")
    failed = run(bad, "once")
    queued = status(bad)["queue"]
    agent_log = (tmp_path / "state" / "agent.log").read_text()
    if before_fix is not None:
        before_fix()
    good = write_config(tmp_path / "good.toml", url=fixed.pop("url", receiver.url), token=receiver.token,
                        state_dir=tmp_path / "state", sources=[str(log)], server={**common, **fixed})
    back = time.monotonic()
    final = run(good, "once")
    recovery = time.monotonic() - back
    assert final.returncode == 0, final.stderr
    assert queued["occurrences"] == sum(expected.values()), "everything read must have stayed queued"
    assert Counter(receiver.counts()) == expected
    return checked, failed, expected, queued, agent_log, recovery


def _record(key: str, scenario: str, done: str, receiver: Receiver, expected: Counter[str], recovery: float) -> None:
    lost, doubled = tally(expected, receiver.counts())
    record(Row(key, scenario, done, 1, lost, doubled, recovery))


def test_unreachable_server(tmp_path: Path, receiver: Receiver) -> None:
    url = receiver.url
    receiver.stop()
    checked, failed, expected, _, agent_log, recovery = _fail_then_fix(
        tmp_path, receiver, broken={}, fixed={}, before_fix=receiver.start)
    line = _server_line(checked.stdout, url)
    assert len(line) == 1 and line[0].startswith("[FAIL]") and "Connection refused" in line[0], checked.stdout
    assert checked.returncode == 1
    assert failed.returncode == 3 and "safely queued" in failed.stdout + failed.stderr
    assert "Connection refused" in agent_log and "Traceback" not in agent_log + failed.stderr
    _record("env/unreachable", "collector unreachable",
            "`test` and `once` against a closed port: one FAIL line, exit 3 with everything queued; then the "
            "collector starts; recovery = next `once`", receiver, expected, recovery)


def test_refused_tls_certificate_then_ca_file(tmp_path: Path, receiver: Receiver, tls_front: TlsFront,
                                              ca: Any) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    checked, failed, expected, _, agent_log, recovery = _fail_then_fix(
        tmp_path, receiver, broken={"url": tls_front.url}, fixed={"url": tls_front.url, "ca_file": str(ca_file)})
    line = _server_line(checked.stdout, tls_front.url)
    assert len(line) == 1 and line[0].startswith("[FAIL]") and "certificate" in line[0], checked.stdout
    assert failed.returncode == 3
    assert "certificate" in agent_log and "refused" in agent_log
    assert tls_front.handshake_failures >= 2  # verification is on by default: the agent hung up
    _record("env/tls-refused", "TLS certificate refused",
            "collector behind TLS with a certificate from an unknown CA (trustme): `test` FAIL, `once` exit 3, "
            "data queued; then server.ca_file names the CA; recovery = next `once`", receiver, expected, recovery)


def test_wrong_token(tmp_path: Path, receiver: Receiver) -> None:
    wrong = "wrong-token-0123456789"
    checked, failed, expected, _, agent_log, recovery = _fail_then_fix(
        tmp_path, receiver, broken={}, fixed={}, token=wrong)
    line = _server_line(checked.stdout, receiver.url)
    assert len(line) == 1 and line[0].startswith("[FAIL]") and "token" in line[0], checked.stdout
    assert failed.returncode == 3
    assert "refused the token" in agent_log
    for text in (checked.stdout, checked.stderr, failed.stdout, failed.stderr, agent_log):
        assert wrong not in text and receiver.token not in text
    _record("env/wrong-token", "wrong token",
            "agent token refused (401): `test` FAIL, `once` exit 3, nothing dead-lettered, data queued; then the "
            "right token; recovery = next `once`", receiver, expected, recovery)
