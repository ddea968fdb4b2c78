#!/usr/bin/env python3
"""Compatibility entry point: `python3 remote_uploader.py once|forever|test`, as the old script ran.

It runs the copy of the package in ./src next to this file. With a plain `python3` that lacks
the agent's few dependencies (h11, prometheus-client: see pyproject.toml), the first run sets
itself up: it makes ./.venv, installs those there (the agent only, never the collector's stack)
and runs again inside it; later runs go straight to ./.venv. Nothing is installed anywhere else.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

HERE = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(HERE, ".venv")
VENV_PYTHON = os.path.join(VENV, "bin", "python")
AGAIN = "REMOTE_UPLOADER_BOOTSTRAPPED"  # set for the re-run, so a failed setup cannot loop


def fail(line: str) -> NoReturn:
    print(f"remote_uploader.py: {line}", file=sys.stderr)
    raise SystemExit(1)


def agent_requirements() -> list[str]:
    """The agent's dependencies, as pyproject.toml lists them (the one place they are written)."""
    import tomllib

    with open(os.path.join(HERE, "pyproject.toml"), "rb") as handle:
        return list(tomllib.load(handle)["project"]["dependencies"])


def module_of(requirement: str) -> str:
    name = requirement
    for mark in "<>=!~[; ":
        name = name.split(mark)[0]
    return name.strip().replace("-", "_").lower()


def missing(python: str | None = None) -> list[str]:
    """The requirements whose module `python` (this interpreter when None) cannot import."""
    import importlib.util
    import subprocess

    wanted = agent_requirements()
    if python is None:
        return [r for r in wanted if importlib.util.find_spec(module_of(r)) is None]
    probe = ("import importlib.util, sys; "
             "print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))")
    result = subprocess.run([python, "-c", probe, *map(module_of, wanted)], capture_output=True, text=True)
    if result.returncode != 0:
        return wanted
    absent = set(result.stdout.split())
    return [r for r in wanted if module_of(r) in absent]


def set_up() -> None:
    """Make ./.venv (once) with the agent's dependencies; a lock keeps two first runs apart."""
    import fcntl
    import subprocess

    with open(os.path.join(HERE, ".venv.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(VENV_PYTHON):
            print("remote_uploader.py: first run: setting up ./.venv with the agent's dependencies "
                  "(once; nothing is installed outside this folder)", file=sys.stderr)
            made = subprocess.run([sys.executable, "-m", "venv", VENV], capture_output=True, text=True)
            if made.returncode != 0:
                fail("cannot create ./.venv (on Debian/Ubuntu: apt install python3-venv), then run this again; "
                     f"{(made.stderr.strip().splitlines() or ['python3 -m venv failed'])[-1]}")
        needed = missing(VENV_PYTHON)
        if needed:
            installed = subprocess.run([VENV_PYTHON, "-m", "pip", "install", "-q", *needed],
                                       capture_output=True, text=True)
            if installed.returncode != 0:
                errors = [line for line in installed.stderr.splitlines() if "ERROR" in line] or ["pip failed"]
                fail(f"cannot install {' '.join(needed)} into ./.venv ({errors[-1].strip()}); "
                     "check the network or the pip index, then run this again")


def main() -> int:
    if sys.version_info < (3, 11):  # noqa: UP036 - this file is what an older python3 meets first
        fail(f"needs Python 3.11 or newer, this is {sys.version.split()[0]}")
    if missing():
        if os.environ.get(AGAIN) or os.path.realpath(sys.prefix) == os.path.realpath(VENV):
            fail(f"./.venv lacks {' '.join(missing())}; remove ./.venv and run this again")
        set_up()
        os.environ[AGAIN] = "1"
        os.execv(VENV_PYTHON, [VENV_PYTHON, os.path.abspath(__file__), *sys.argv[1:]])
    sys.path.insert(0, os.path.join(HERE, "src"))
    # This file shares the package's name: drop it from the module table so the import below
    # finds the package in src/, not this script.
    sys.modules.pop("remote_uploader", None)
    from remote_uploader.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    raise SystemExit(main())
else:
    # Imported, not run: a tool put this folder on sys.path (pytest does, for tests/). This file
    # shares the package's name, so it steps aside: the import system takes what sys.modules holds
    # under the name once this file has run, and that is made the package in ./src.
    import importlib

    sys.path.insert(0, os.path.join(HERE, "src"))
    sys.modules.pop("remote_uploader", None)
    importlib.import_module("remote_uploader")
