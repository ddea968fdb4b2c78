"""The deployment examples in deploy/ stay usable: the config loads, the unit has what the docs promise."""

from __future__ import annotations

import configparser
from pathlib import Path

from remote_uploader.config import load
from tests.helpers.agent import ROOT

DEPLOY = ROOT / "deploy"


def test_example_config_loads(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("secret-token\n")
    config = load(str(DEPLOY / "config.toml"), env={"REMOTE_UPLOADER_STATE_DIR": str(tmp_path / "state")},
                  overrides={"server.token_file": str(token)})
    assert config.sources[0].paths == ("/var/log/nginx/*.log",)
    assert config.shutdown.drain_timeout < 30  # below the unit's TimeoutStopSec


def test_systemd_unit_restarts_on_failure_runs_as_its_own_user_with_a_state_directory() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(DEPLOY / "remote-uploader.service")
    service = unit["Service"]
    assert service["Restart"] == "on-failure"
    assert service["User"] == "remote-uploader"
    assert service["StateDirectory"] == "remote-uploader"
    assert "forever" in service["ExecStart"]
    assert "HUP" in service["ExecReload"]
    assert int(service["TimeoutStopSec"]) > 5  # the default drain period fits
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_logrotate_example_keeps_the_newest_rotation_uncompressed() -> None:
    text = (DEPLOY / "logrotate-nginx.conf").read_text()
    assert "delaycompress" in text and "\n    create " in text
