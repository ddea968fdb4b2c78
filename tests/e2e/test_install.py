"""The installs a new user meets (issue 10), done for real in temporary directories:

- `pip install .` into a fresh venv is the agent alone: no FastAPI, uvicorn or msgspec; the agent
  runs from it, `collector serve` names the extra to install, and the systemd unit's paths exist
  in such a venv;
- on a fresh checkout, `python3 remote_uploader.py test|once` works with the plain system python3
  (no venv activated, nothing installed by hand): the script sets up ./.venv itself.

Both use pip (its cache and the configured index), so each takes tens of seconds.
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.agent import ROOT, write_access_log, write_config

COLLECTOR_STACK = {"fastapi", "uvicorn", "msgspec", "starlette", "pydantic"}
UNIT_PREFIX = "/opt/remote-uploader"


def _plain_python() -> str:
    """The system's python3 (Debian's own where there is one), never this test run's venv."""
    for candidate in ("/usr/bin/python3", os.path.join(sys.base_prefix, "bin", "python3")):
        if os.path.exists(candidate):
            version = subprocess.run([candidate, "-c", "import sys; print(sys.version_info >= (3, 11))"],
                                     capture_output=True, text=True)
            if version.stdout.strip() == "True":
                return candidate
    pytest.skip("no system python3 of version 3.11 or newer")


def _plain_env() -> dict[str, str]:
    """The environment of a shell with no venv activated (pip's own settings kept: index, cache)."""
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items()
           if k not in {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"} and not k.startswith("REMOTE_UPLOADER_")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "/usr/bin:/bin").split(os.pathsep) if p != venv_bin)
    env["LANG"] = "C.UTF-8"
    return env


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A fresh checkout: the tracked files as they are now, and nothing else (no .venv, no build)."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    target = tmp_path / "checkout"
    for name in filter(None, tracked.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def test_an_agent_only_install_has_no_collector_stack_and_runs_the_agent(
        tmp_path: Path, checkout: Path, receiver) -> None:  # type: ignore[no-untyped-def]
    venv = tmp_path / "venv"
    env = _plain_env()
    subprocess.run([_plain_python(), "-m", "venv", str(venv)], check=True, env=env, timeout=300)
    installed = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(checkout)], capture_output=True,
                               text=True, env=env, timeout=600)
    assert installed.returncode == 0, installed.stderr[-3000:]
    listed = subprocess.run([str(venv / "bin" / "pip"), "list", "--format", "json"], capture_output=True,
                            text=True, env=env, check=True)
    names = {item["name"].lower().replace("_", "-") for item in json.loads(listed.stdout)}
    assert {"remote-uploader", "h11"} <= names
    assert not names & COLLECTOR_STACK, names & COLLECTOR_STACK

    log = tmp_path / "access.log"
    expected = write_access_log(log, 200, seed=4)
    config = write_config(tmp_path / "agent.toml", url=receiver.url, token=receiver.token,
                          state_dir=tmp_path / "state", sources=[str(log)])
    once = subprocess.run([str(venv / "bin" / "remote-uploader"), "once", "-c", str(config)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert once.returncode == 0, once.stderr
    assert receiver.counts() == dict(expected)

    serve = subprocess.run([str(venv / "bin" / "remote-uploader"), "collector", "serve"], capture_output=True,
                           text=True, env=env, timeout=60)
    assert serve.returncode == 1 and "Traceback" not in serve.stderr
    assert "pip install 'remote-uploader[collector]'" in serve.stderr, serve.stderr

    # The systemd unit matches this install when the venv is /opt/remote-uploader (as the README makes it).
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(ROOT / "deploy" / "remote-uploader.service")
    program = unit["Service"]["ExecStart"].split()[0]
    documentation = unit["Unit"]["Documentation"].removeprefix("file://")
    for path in (program, documentation):
        assert path.startswith(UNIT_PREFIX + "/"), path
        assert (venv / path.removeprefix(UNIT_PREFIX + "/")).is_file(), f"{path} is not in such an install"
    assert f"python3 -m venv {UNIT_PREFIX}" in (ROOT / "README.md").read_text()


def test_the_old_invocation_sets_itself_up_on_a_fresh_checkout_with_plain_python3(
        tmp_path: Path, checkout: Path, receiver) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "access.log"
    expected = write_access_log(log, 200, seed=5)
    # The old guide ran the script from its folder: the config is found there (./remote-uploader.toml).
    write_config(checkout / "remote-uploader.toml", url=receiver.url, token=receiver.token,
                 state_dir=tmp_path / "state", sources=[str(log)])
    python, env = _plain_python(), _plain_env()
    test = subprocess.run([python, "remote_uploader.py", "test"], cwd=checkout, capture_output=True, text=True,
                          env=env, timeout=600)
    assert test.returncode == 0, test.stdout + test.stderr
    assert "ModuleNotFoundError" not in test.stderr and "[OK  ] server" in test.stdout
    assert "setting up ./.venv" in test.stderr
    once = subprocess.run([python, "remote_uploader.py", "once"], cwd=checkout, capture_output=True, text=True,
                          env=env, timeout=300)
    assert once.returncode == 0, once.stdout + once.stderr
    assert "setting up" not in once.stderr  # set up once, used since
    assert receiver.counts() == dict(expected)
    probe = "import importlib.util, sys; print([m for m in sys.argv[1:] if importlib.util.find_spec(m)])"
    stack = subprocess.run([str(checkout / ".venv" / "bin" / "python"), "-c", probe, *sorted(COLLECTOR_STACK)],
                           capture_output=True, text=True, check=True)
    assert stack.stdout.strip() == "[]"


def test_the_agent_never_imports_the_collector_or_its_stack(tmp_path: Path) -> None:
    """What `once`, `forever`, `test`, `status` and `import-legacy` load: nothing of the collector."""
    probe = ("import sys; import remote_uploader.cli, remote_uploader.agent.runner, remote_uploader.agent.forever, "
             "remote_uploader.agent.checks, remote_uploader.agent.legacy, remote_uploader.agent.metrics, "
             "remote_uploader.config_show; stack = set(sys.argv[1:]); print(sorted(m for m in sys.modules "
             "if m.startswith('remote_uploader.collector') or m.split('.')[0] in stack))")
    loaded = subprocess.run([sys.executable, "-c", probe, *COLLECTOR_STACK], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, cwd=tmp_path)
    assert loaded.stdout.strip() == "[]", loaded.stdout
