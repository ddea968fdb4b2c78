"""The one error tree (errors.py) and the one CLI boundary of both halves."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from remote_uploader import errors, i18n
from remote_uploader.cli import main
from remote_uploader.errors import (
    AgentMismatch,
    ApiError,
    BatchInvalid,
    BodyError,
    ClientGone,
    FieldError,
    RemoteUploaderError,
    RequestError,
    StorageError,
    StorageUnavailable,
)

TREE = [value for value in vars(errors).values()
        if inspect.isclass(value) and issubclass(value, RemoteUploaderError)]


def test_every_error_of_the_tree_is_drawn_in_the_module_docstring() -> None:
    doc = errors.__doc__ or ""
    assert len(TREE) >= 30
    assert [cls.__name__ for cls in TREE if f" {cls.__name__} " not in doc] == []


def test_every_error_maps_to_an_exit_code_and_the_collectors_to_an_http_status() -> None:
    assert {cls.__name__: cls.exit_code for cls in TREE if cls.exit_code not in (1, 2, 3, 4, 5)} == {}
    statuses = {cls.__name__: cls.status for cls in TREE if issubclass(cls, RequestError | StorageError)}
    assert statuses["RequestError"] == 400 and statuses["AgentMismatch"] == 403
    assert statuses["StorageError"] == 500 and statuses["StorageUnavailable"] == 503


def test_protocol_errors_carry_the_answer_body_and_the_storage_ones_hide_the_database_message() -> None:
    assert ApiError(404, "path.ip", "no counts").problems() == [{"field": "path.ip", "error": "no counts"}]
    assert BodyError(413, "body", "too big").status == 413
    invalid = BatchInvalid([FieldError("records[0].ip", "not an address"), FieldError("agent", "is required")])
    assert invalid.problems() == [{"field": "records[0].ip", "error": "not an address"},
                                  {"field": "agent", "error": "is required"}]
    assert AgentMismatch("web-2", "web-1").problems()[0]["field"] == "agent"
    assert ClientGone().problems() == []  # answered without a body: nobody is listening
    secret = StorageUnavailable("connection to db.internal:5432 refused")
    assert "db.internal" not in str(secret.problems())


def test_the_error_tree_loads_without_fastapi_or_the_collector() -> None:
    code = "import sys, remote_uploader.errors; print(sorted(m for m in sys.modules if m.startswith(('fastapi', " \
           "'starlette', 'remote_uploader.collector'))))"
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == "[]"


@pytest.fixture
def chinese(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("LANGUAGE", "zh_CN.UTF-8")
    try:
        yield
    finally:
        i18n.setup("en")


@pytest.mark.usefixtures("chinese")
def test_the_collector_commands_errors_are_translated_like_the_agents(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = f"sqlite:///{tmp_path / 'collector.db'}"
    assert main(["collector", "token", "revoke", "nobody", "--db", db]) == 1
    assert capsys.readouterr().err == "remote-uploader collector: 错误: no token named 'nobody'\n"
    assert main(["collector", "decision", "add", "192.0.2.1", "--duration", "soon", "--db", db]) == 2
    assert capsys.readouterr().err.startswith("remote-uploader collector: 错误: --duration: ")
    assert main(["status", "-c", str(tmp_path / "missing.toml")]) == 2
    assert capsys.readouterr().err.startswith("remote-uploader: 错误: 配置文件 ")


def test_a_reader_that_went_away_ends_a_collector_listing_quietly(tmp_path: Path) -> None:
    """`collector token list | head -1`: the boundary of both halves treats a closed pipe alike."""
    db = f"sqlite:///{tmp_path / 'collector.db'}"
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-m", "remote_uploader", "collector", "token", "add", name, "--db", db],
                       capture_output=True, check=True)
    listing = subprocess.Popen([sys.executable, "-m", "remote_uploader.collector.cli", "token", "list", "--db", db],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert listing.stdout is not None and listing.stderr is not None
    listing.stdout.close()  # the reader is gone before the first line
    assert listing.wait(timeout=60) == 0
    assert b"Traceback" not in listing.stderr.read()


def test_the_standalone_collector_command_line_is_translated_too(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'collector.db'}"
    environ = {**os.environ, "LANGUAGE": "zh_CN.UTF-8"}
    refused = subprocess.run([sys.executable, "-m", "remote_uploader.collector.cli", "token", "revoke", "nobody",
                              "--db", db], capture_output=True, text=True, env=environ)
    assert (refused.returncode, refused.stderr) == (1, "remote-uploader collector: 错误: no token named 'nobody'\n")
