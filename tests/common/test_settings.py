"""The settings machinery both halves share (settings.py): one file for both, one state-directory rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from remote_uploader.collector.settings import load as load_collector
from remote_uploader.config import load
from remote_uploader.errors import ConfigError


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return str(path)


def test_one_file_serves_both_halves_and_an_unknown_table_is_still_refused(tmp_path: Path) -> None:
    shared = ('[agent]\nid = "web-1"\n[collector]\nport = 9000\n'
              '[[rules]]\nname = "r"\nmin_count = 5\nwindow = "10m"\nduration = "1h"\n'
              '[[sources]]\npaths = ["/var/log/x.log"]\n')
    assert load(write(tmp_path, shared), env={}).agent.id == "web-1"
    assert load_collector(tmp_path / "agent.toml", environ={}).port == 9000
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, shared + "[colector]\nport = 1\n"), env={})
    assert caught.value.key == "colector.port"


@pytest.mark.parametrize(("environment", "root", "expected"), [
    ({"REMOTE_UPLOADER_STATE_DIR": "/srv/ru", "XDG_STATE_HOME": "/xdg"}, True, "/srv/ru"),
    ({"XDG_STATE_HOME": "/xdg"}, True, "/var/lib/remote-uploader"),
    ({"XDG_STATE_HOME": "/xdg"}, False, "/xdg/remote-uploader"),
    ({"HOME": "/home/u"}, False, "/home/u/.local/state/remote-uploader"),
])
def test_both_halves_find_their_state_directory_by_one_rule(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, environment: dict[str, str], root: bool,
        expected: str) -> None:
    for name in ("REMOTE_UPLOADER_STATE_DIR", "XDG_STATE_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr("os.geteuid", lambda: 0 if root else 1000)
    assert load(write(tmp_path, ""), env=environment).agent.state_dir == Path(expected)
    assert load_collector(environ={}).db == f"sqlite://{expected}/collector.db"


def test_no_environment_variable_sets_a_key_of_both_halves_and_every_key_has_a_doc_line() -> None:
    from remote_uploader.collector.settings import TABLE as COLLECTOR
    from remote_uploader.config import TABLE as AGENT

    assert set(AGENT.by_env) & set(COLLECTOR.by_env) == set()
    assert AGENT.by_env["REMOTE_UPLOADER_TOKEN"] == "server.token"
    assert COLLECTOR.by_env["REMOTE_UPLOADER_COLLECTOR_PORT"] == "collector.port"
    assert [key.name for table in (AGENT, COLLECTOR) for key in table.keys.values() if not key.doc] == []
