"""Collector settings: defaults, TOML, environment and flags, errors that name the key."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from remote_uploader.collector.settings import MIB, default_db_url, default_state_dir, load
from remote_uploader.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "collector.toml"
    path.write_text(text)
    return path


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("REMOTE_UPLOADER_STATE_DIR", str(tmp_path))
    config = load(environ={})
    assert (config.host, config.port, config.max_body, config.retention_days) == ("127.0.0.1", 8080, 16 * MIB, 30)
    assert config.db == "sqlite://" + str(tmp_path / "collector.db") == default_db_url()
    assert default_state_dir() == tmp_path


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[collector]\nport = 9000\nhost = "0.0.0.0"\nallowlist = ["10.0.0.0/8", "2001:db8::/32"]\n'
        'db = "sqlite:///x.db"\n',
    )
    config = load(path, {"host": "::1", "port": None}, environ={"REMOTE_UPLOADER_COLLECTOR_PORT": "9100"})
    assert (config.host, config.port, config.db) == ("::1", 9100, "sqlite:///x.db")
    assert config.allowlist == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"))


def test_other_tables_of_a_shared_file_are_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, '[agent]\nid = "web-1"\n[collector]\nport = 1234\n')
    assert load(path, environ={}).port == 1234


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[collector]\nprot = 1\n", "collector.prot"),
        ("[collector]\nport = 70000\n", "collector.port"),
        ('[collector]\nport = "80"\n', "collector.port"),
        ("[collector]\nmax_body = 10\n", "collector.max_body"),
        ('[collector]\nallowlist = ["10.0.0.0/33"]\n', "collector.allowlist"),
        ('[collector]\nlog_format = "xml"\n', "collector.log_format"),
        ("[collector]\nretention_days = -1\n", "collector.retention_days"),
        ("[collector]\naccess_log = 1\n", "collector.access_log"),
        ("[agent]\n", "collector"),
        ("not toml [", "collector"),
    ],
)
def test_bad_keys_are_rejected_by_name(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, text), environ={})
    assert caught.value.key == key
    assert key in str(caught.value)


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="REMOTE_UPLOADER_COLLECTOR_RETRY_AFTER"):
        load(environ={"REMOTE_UPLOADER_COLLECTOR_RETRY_AFTER": "soon"})


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "absent.toml", environ={})


def test_parse_workers_default_to_two_and_zero_turns_them_off(tmp_path: Path) -> None:
    assert load(environ={}).parse_workers == min(2, os.cpu_count() or 1)
    assert load(write(tmp_path, "[collector]\nparse_workers = 0\n"), environ={}).parse_workers == 0
    assert load(environ={"REMOTE_UPLOADER_COLLECTOR_PARSE_WORKERS": "3"}).parse_workers == 3
    with pytest.raises(ConfigError, match=r"collector\.parse_workers"):
        load(None, {"parse_workers": -1}, environ={})


def test_the_key_table_in_docs_collector_is_the_one_the_declarations_give() -> None:
    """Regenerate with `python scripts/configdocs.py` after changing a key's default or doc line."""
    from remote_uploader.collector.settings import TABLE
    from remote_uploader.settings import markdown_table, with_generated

    text = (Path(__file__).resolve().parents[2] / "docs" / "collector.md").read_text()
    assert with_generated(text, markdown_table(TABLE, short_names=True, flags=True)) == text


def test_a_file_that_is_not_toml_is_named_as_a_file(tmp_path: Path) -> None:
    path = write(tmp_path, "not toml [")
    with pytest.raises(ConfigError, match=f"config file {path}: not valid TOML") as caught:
        load(path, environ={})
    assert caught.value.key == "collector"


def test_config_show_prints_every_key_with_its_value_and_origin(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import tomllib

    from remote_uploader.collector.cli import main
    from remote_uploader.collector.settings import TABLE

    path = write(tmp_path, '[collector]\nport = 9000\nallowlist = ["10.0.0.0/8"]\n'
                 '[[rules]]\nname = "r"\nmin_count = 5\nwindow = "10m"\nduration = "1h"\n')
    monkeypatch.setenv("REMOTE_UPLOADER_COLLECTOR_RETRY_AFTER", "5")
    assert main(["config", "show", "-c", str(path), "--db", "sqlite:///x.db", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    keys = shown["keys"]
    assert set(keys) == set(TABLE.keys)
    assert keys["collector.port"] == {"value": 9000, "origin": str(path)}
    assert keys["collector.allowlist"] == {"value": ["10.0.0.0/8"], "origin": str(path)}
    assert keys["collector.retry_after"] == {"value": 5, "origin": "environment REMOTE_UPLOADER_COLLECTOR_RETRY_AFTER"}
    assert keys["collector.db"] == {"value": "sqlite:///x.db", "origin": "command line"}
    assert keys["collector.host"] == {"value": "127.0.0.1", "origin": "default"}
    assert shown["rules"] == [{"name": "r", "min_count": 5, "window": "10m", "duration": "1h",
                               "origin": str(path)}]
    assert main(["config", "show", "-c", str(path)]) == 0
    text = capsys.readouterr().out
    assert f"port = 9000  # {path}" in text
    again = write(tmp_path, text)  # what it prints, -c takes back (the unset tls_cert is a comment)
    assert load(again, environ={}).port == 9000
    assert tomllib.loads(text)["collector"]["retry_after"] == 5
