"""`collector serve --db` and `token add --db`: a typo in the path is refused, not a new empty
database (with which every agent would be refused, 401); the database file is private (issue 10)."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from remote_uploader.collector import cli


def test_serve_refuses_a_db_in_a_directory_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent" / "dir"
    result = subprocess.run([sys.executable, "-m", "remote_uploader", "collector", "serve", "--port", "0",
                             "--db", f"sqlite://{missing}/c.db"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 4, result.stderr
    assert str(missing) in result.stderr and "--create-dir" in result.stderr
    assert not missing.exists() and not (tmp_path / "nonexistent").exists()


def test_token_add_refuses_a_missing_directory_and_creates_it_when_asked(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "new" / "c.db"
    assert cli.main(["token", "add", "web-1", "--db", f"sqlite://{db}"]) == 4
    assert "does not exist" in capsys.readouterr().err and not db.parent.exists()
    assert cli.main(["token", "add", "web-1", "--db", f"sqlite://{db}", "--create-dir"]) == 0
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700


def test_the_database_file_is_private_whatever_the_umask(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "c.db"
    import os

    old = os.umask(0o022)
    try:
        assert cli.main(["token", "add", "web-1", "--db", f"sqlite://{db}"]) == 0
    finally:
        os.umask(old)
    for path in tmp_path.glob("c.db*"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
