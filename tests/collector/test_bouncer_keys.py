"""Bouncer keys: made once, stored hashed, found in constant time, listed, replaced, revoked;
on SQLite and PostgreSQL alike (the `storage` fixture), and through the command line."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from remote_uploader.collector import cli
from remote_uploader.collector.auth import authenticate, authenticate_bouncer, create_bouncer_key, create_token
from remote_uploader.collector.storage import open_storage
from remote_uploader.collector.storage.base import Storage
from remote_uploader.errors import BouncerError

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def test_bouncers_are_stored_found_replaced_and_revoked(storage: Storage) -> None:
    storage.add_bouncer("fw-1", "h1")
    storage.add_bouncer("nginx", "h2")
    with pytest.raises(BouncerError, match="--replace"):
        storage.add_bouncer("fw-1", "h3")
    found = storage.find_bouncer("h1")
    assert found is not None and found[0].name == "fw-1" and found[1] == "h1"
    assert found[0].last_seq is None and found[0].last_pull_at is None  # never pulled: a full first pull
    storage.add_bouncer("fw-1", "h3", replace=True)
    assert storage.find_bouncer("h1") is None
    assert [b.name for b in storage.list_bouncers()] == ["fw-1", "nginx"]
    assert storage.revoke_bouncer("fw-1") is True
    assert storage.revoke_bouncer("fw-1") is False
    assert storage.find_bouncer("h3") is None


def test_a_pull_is_recorded_and_the_mark_never_moves_back(storage: Storage) -> None:
    storage.add_bouncer("fw-1", "h1")
    storage.record_pull("fw-1", 7, T0, "crowdsec-firewall-bouncer/v0.0.25")
    storage.record_pull("fw-1", 5, T0 + timedelta(seconds=1), "late pull")  # a slower, older pull ending last
    bouncer = storage.list_bouncers()[0]
    assert (bouncer.last_seq, bouncer.last_pull_at, bouncer.user_agent) == (7, T0, "crowdsec-firewall-bouncer/v0.0.25")
    storage.record_pull("fw-1", 9, T0 + timedelta(seconds=2), None)
    assert storage.list_bouncers()[0].last_seq == 9


def test_replacing_a_key_forgets_where_its_delta_stood(storage: Storage) -> None:
    storage.add_bouncer("fw-1", "h1")
    storage.record_pull("fw-1", 7, T0, None)
    storage.add_bouncer("fw-1", "h2", replace=True)
    assert storage.list_bouncers()[0].last_seq is None


def test_keys_and_tokens_are_separate_kinds(storage: Storage) -> None:
    key = create_bouncer_key(storage, "fw-1")
    token = create_token(storage, "web-1")
    assert re.fullmatch(r"rub_[A-Za-z0-9_-]{43}", key)
    bouncer = authenticate_bouncer(storage, key)
    assert bouncer is not None and bouncer.name == "fw-1"
    assert authenticate(storage, key) is None  # a bouncer key is not a token: it cannot send batches
    assert authenticate_bouncer(storage, token) is None  # nor is a token a bouncer key
    assert authenticate_bouncer(storage, "") is None
    assert authenticate_bouncer(storage, key + "x") is None
    assert authenticate_bouncer(storage, "x" * 10_000) is None


@pytest.mark.parametrize("name", ["", "has space", "slash/name", "x" * 129])
def test_bad_bouncer_names_are_refused_naming_the_name(storage: Storage, name: str) -> None:
    with pytest.raises(BouncerError, match="name"):
        create_bouncer_key(storage, name)


# -- the command line -------------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_bouncer_add_prints_the_key_alone_on_the_last_line_and_stores_its_hash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = f"sqlite://{tmp_path}/c.db"
    code, out, _ = run(capsys, "bouncer", "add", "fw-1", "--db", db)
    assert code == 0
    key = out.splitlines()[-1]
    assert re.fullmatch(r"rub_[A-Za-z0-9_-]{43}", key)
    assert key not in (tmp_path / "c.db").read_bytes().decode("latin-1")
    storage = open_storage(db)
    try:
        found = authenticate_bouncer(storage, key)
        assert found is not None and found.name == "fw-1"
    finally:
        storage.close()


def test_bouncer_list_shows_names_never_keys_and_revoke_removes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "collector.toml"
    config.write_text(f'[collector]\ndb = "sqlite://{tmp_path}/c.db"\n')
    key = run(capsys, "bouncer", "add", "fw-1", "-c", str(config))[1].splitlines()[-1]
    code, out, _ = run(capsys, "bouncer", "list", "-c", str(config))
    assert code == 0 and re.search(r"^fw-1\s", out, re.M) and key not in out and "rub_" not in out
    assert '"name": "fw-1"' in run(capsys, "bouncer", "list", "--json", "-c", str(config))[1]
    code, _, err = run(capsys, "bouncer", "add", "fw-1", "-c", str(config))
    assert code == 1 and "bouncer 'fw-1'" in err and "--replace" in err
    assert run(capsys, "bouncer", "revoke", "fw-1", "-c", str(config))[0] == 0
    code, _, err = run(capsys, "bouncer", "revoke", "fw-1", "-c", str(config))
    assert code == 1 and "no bouncer named 'fw-1'" in err
    assert "No bouncers" in run(capsys, "bouncer", "list", "-c", str(config))[1]
