"""The collector command line: token management, registration in a parent parser, help.

(That every command of both halves has help and is documented: tests/common/test_docs.py.)"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from remote_uploader.collector import cli
from remote_uploader.collector.auth import authenticate
from remote_uploader.collector.storage import open_storage


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_token_add_prints_the_token_alone_on_the_last_line_and_stores_its_hash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = f"sqlite://{tmp_path}/c.db"
    code, out, _ = run(capsys, "token", "add", "web-1", "--db", db)
    assert code == 0
    token = out.splitlines()[-1]
    assert re.fullmatch(r"ru_[A-Za-z0-9_-]{43}", token)
    storage = open_storage(db)
    try:
        principal = authenticate(storage, token)
        assert principal is not None and (principal.name, principal.role) == ("web-1", "agent")
        assert token not in (tmp_path / "c.db").read_bytes().decode("latin-1")
    finally:
        storage.close()


def test_token_list_and_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = f"sqlite://{tmp_path}/c.db"
    run(capsys, "token", "add", "web-1", "--db", db)
    run(capsys, "token", "add", "dashboard", "--read-only", "--db", db)
    code, out, _ = run(capsys, "token", "list", "--db", db)
    assert code == 0
    assert re.search(r"dashboard\s+read", out) and re.search(r"web-1\s+agent", out)
    assert "ru_" not in out
    assert run(capsys, "token", "revoke", "web-1", "--db", db)[0] == 0
    code, _, err = run(capsys, "token", "revoke", "web-1", "--db", db)
    assert code == 1 and "no token named 'web-1'" in err
    assert '"name": "dashboard"' in run(capsys, "token", "list", "--json", "--db", db)[1]


def test_adding_an_existing_name_needs_replace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = f"sqlite://{tmp_path}/c.db"
    first = run(capsys, "token", "add", "web-1", "--db", db)[1].splitlines()[-1]
    code, _, err = run(capsys, "token", "add", "web-1", "--db", db)
    assert code == 1 and "--replace" in err
    second = run(capsys, "token", "add", "web-1", "--replace", "--db", db)[1].splitlines()[-1]
    storage = open_storage(db)
    try:
        assert authenticate(storage, first) is None
        assert authenticate(storage, second) is not None
    finally:
        storage.close()


@pytest.mark.parametrize("name", ["", "has space", "slash/name", ".leading", "x" * 129])
def test_bad_token_names_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    code, _, err = run(capsys, "token", "add", name, "--db", f"sqlite://{tmp_path}/c.db")
    assert code == 1 and "name" in err


def test_the_database_can_come_from_a_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "collector.toml"
    config.write_text(f'[collector]\ndb = "sqlite://{tmp_path}/from-config.db"\n')
    assert run(capsys, "token", "add", "web-1", "-c", str(config))[0] == 0
    assert (tmp_path / "from-config.db").exists()


def test_a_bad_config_key_is_named_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "collector.toml"
    config.write_text("[collector]\nbogus = 1\n")
    code, _, err = run(capsys, "token", "list", "-c", str(config))
    assert code == 2 and "collector.bogus" in err


def test_a_bad_database_url_is_one_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "token", "list", "--db", "mysql://x")
    assert code == 2 and "sqlite:///PATH or postgresql://" in err


def test_register_adds_collector_to_a_parent_parser(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="remote-uploader")
    parser.add_argument("-c", "--config")  # the main command line's own option must survive
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["-c", "agent.toml", "collector", "token", "add", "n1", "--db", f"{tmp_path}/c.db"])
    assert args.config == "agent.toml"
    assert args.func(args) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("ru_")
    serve = parser.parse_args(["collector", "serve", "--port", "0", "--max-body", "1024"])
    assert (serve.func, serve.port, serve.max_body) == (cli.cmd_serve, 0, 1024)


def test_serve_reports_a_port_in_use_as_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = run(capsys, "serve", "--db", f"{tmp_path}/c.db", "--port", str(port))
    assert code == 2 and "cannot listen" in err


def test_standalone_module_runs(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "remote_uploader.collector.cli", "token", "add", "x1", "--db", f"{tmp_path}/c.db"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith("ru_")
