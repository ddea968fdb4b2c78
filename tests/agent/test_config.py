"""Configuration: defaults, profiles, precedence, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from remote_uploader.config import DEFAULTS, Secret, load
from remote_uploader.errors import ConfigError


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return str(path)


def test_every_key_has_a_default_and_the_guide_names_keep_their_values(tmp_path: Path) -> None:
    config = load(write(tmp_path, ""), env={})
    assert config.batching.max_memory_ips == 10_000 == DEFAULTS["batching.max_memory_ips"]
    assert config.batching.force_upload_threshold == 5_000
    assert config.batching.min_upload_batch == 100
    assert config.batching.max_batch_age == 1.0
    assert config.agent.id  # the host name
    assert not str(config.agent.state_dir).startswith("/tmp")


@pytest.mark.parametrize(("profile", "memory", "force", "minimum"), [
    ("large-memory", 20_000, 10_000, 100),
    ("small-memory", 5_000, 2_000, 100),
    ("unstable-network", 10_000, 5_000, 50),
])
def test_profiles_preset_the_guide_values(tmp_path: Path, profile: str, memory: int, force: int, minimum: int) -> None:
    config = load(write(tmp_path, ""), env={}, profile=profile)
    assert (config.batching.max_memory_ips, config.batching.force_upload_threshold,
            config.batching.min_upload_batch) == (memory, force, minimum)


def test_file_then_environment_then_flags_override(tmp_path: Path) -> None:
    path = write(tmp_path, "[batching]\nmin_upload_batch = 20\nforce_upload_threshold = 300\n")
    assert load(path, env={}).batching.min_upload_batch == 20
    env = {"REMOTE_UPLOADER_BATCHING_MIN_UPLOAD_BATCH": "30"}
    assert load(path, env=env).batching.min_upload_batch == 30
    assert load(path, env={"REMOTE_UPLOADER_MIN_UPLOAD_BATCH": "31"}).batching.min_upload_batch == 31
    assert load(path, env=env, overrides={"batching.min_upload_batch": "40"}).batching.min_upload_batch == 40


def test_token_from_environment_is_a_secret_that_never_prints(tmp_path: Path) -> None:
    config = load(write(tmp_path, ""), env={"REMOTE_UPLOADER_TOKEN": "s3cret-value"})
    assert config.server.token == "s3cret-value"
    assert isinstance(config.server.token, Secret)
    assert "s3cret-value" not in repr(config)


def test_token_file_is_read_and_stripped(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("abc123\n")
    config = load(write(tmp_path, f'[server]\ntoken_file = "{tmp_path / "token"}"\n'), env={})
    assert config.server.token == "abc123"


@pytest.mark.parametrize(("text", "key"), [
    ("[batching]\nmin_upload_batch = 0\n", "batching.min_upload_batch"),
    ("[batching]\nmax_memory_ips = \"lots\"\n", "batching.max_memory_ips"),
    ("[batching]\nforce_upload_threshold = 20000\n", "batching.force_upload_threshold"),
    ("[batching]\nmin_upload_batch = 6000\n", "batching.min_upload_batch"),
    ("[batching]\nmin_upload_bach = 5\n", "batching.min_upload_bach"),
    ("[server]\nurl = \"ftp://x\"\n", "server.url"),
    ("[server]\ntoken_file = \"/nonexistent/token\"\n", "server.token_file"),
    ("[server]\nca_file = \"/nonexistent/ca.pem\"\n", "server.ca_file"),
    ("[queue]\nmax_bytes = \"12 parsecs\"\n", "queue.max_bytes"),
    ("[agent]\nid = \"has space\"\n", "agent.id"),
    ("[[sources]]\npaths = []\n", "sources[0].paths"),
    ("[[sources]]\npaths = [\"/x\"]\nregex = \"(no group\"\n", "sources[0].regex"),
    ("[[sources]]\npaths = [\"/x\"]\nregex = \"client \\\\S+\"\n", "sources[0].regex"),
    ("[[sources]]\npaths = [\"/x\"]\nexclude = [\"10.0.0.0/33\"]\n", "sources[0].exclude"),
    ("[[sources]]\npaths = [\"/x\"]\nfollow = true\n", "sources[0].follow"),
    ("[agent\n", "config"),
])
def test_a_bad_config_is_rejected_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, text), env={})
    assert caught.value.key == key
    assert key in str(caught.value)


def test_a_bad_environment_value_names_the_key_and_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, ""), env={"REMOTE_UPLOADER_BATCHING_MAX_BATCH_AGE": "soon"})
    assert caught.value.key == "batching.max_batch_age"
    assert "REMOTE_UPLOADER_BATCHING_MAX_BATCH_AGE" in str(caught.value)


def test_sizes_accept_units(tmp_path: Path) -> None:
    config = load(write(tmp_path, '[queue]\nmax_bytes = "64MiB"\n[read]\nblock_size = "1M"\n'), env={})
    assert config.queue.max_bytes == 64 * 1024 * 1024
    assert config.read.block_size == 1024 * 1024


def test_a_profile_set_with_set_is_applied_and_a_key_set_anywhere_still_wins(tmp_path: Path) -> None:
    path = write(tmp_path, "[batching]\nforce_upload_threshold = 1000\n")
    config = load(path, env={}, overrides={"agent.profile": "small-memory"})
    assert (config.agent.profile, config.batching.max_memory_ips, config.agent.engine) == ("small-memory", 5000,
                                                                                             "stdlib")
    assert config.batching.force_upload_threshold == 1000


def test_the_agents_state_dir_key_comes_before_the_rule(tmp_path: Path) -> None:
    path = write(tmp_path, f'[agent]\nstate_dir = "{tmp_path / "file"}"\n')
    assert load(path, env={}).agent.state_dir == tmp_path / "file"
    environment = {"REMOTE_UPLOADER_STATE_DIR": str(tmp_path / "env")}
    assert load(path, env=environment).agent.state_dir == tmp_path / "env"
    assert load(path, env=environment, overrides={"agent.state_dir": str(tmp_path / "flag")}).agent.state_dir == (
        tmp_path / "flag")
