"""The import graph check (scripts/importgraph.py): it passes on the tree, its allowlist of known
violations holds only violations that still occur, and it catches what it is for."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from scripts import importgraph

from tests.helpers.agent import ROOT


def test_the_package_has_no_cycle_or_uphill_import_beyond_the_allowlist() -> None:
    done = subprocess.run([sys.executable, "-m", "scripts.importgraph", "--quiet"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_allowlist_entry_is_a_violation_that_still_occurs() -> None:
    """Each entry goes in the change that removes its edge, so the list can only shrink to empty."""
    report = importgraph.check()
    assert report.stale == []
    assert report.new_uphill == {}
    assert report.new_cycles == []


def write_package(root: Path, files: dict[str, str]) -> Path:
    package = root / "remote_uploader"
    for name, text in files.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for directory in [package, *(p for p in package.rglob("*") if p.is_dir())]:
        (directory / "__init__.py").touch()
    return package


def test_an_import_inside_a_function_that_closes_a_cycle_is_found(tmp_path: Path) -> None:
    package = write_package(tmp_path, {
        "agent/a.py": "from remote_uploader.agent import b\n",
        "agent/b.py": "def late():\n    from . import a\n    return a\n",
    })
    report = importgraph.check(package, allowed={})
    assert report.new_cycles == [["remote_uploader.agent.a", "remote_uploader.agent.b", "remote_uploader.agent.a"]]


def test_an_import_only_for_type_checking_closes_no_cycle(tmp_path: Path) -> None:
    package = write_package(tmp_path, {
        "agent/a.py": "from remote_uploader.agent import b\n",
        "agent/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from remote_uploader.agent import a\n",
    })
    assert importgraph.check(package, allowed={}).cycles == []


def test_uphill_edges_are_named_with_the_rule_they_break(tmp_path: Path) -> None:
    package = write_package(tmp_path, {
        "protocol.py": "import remote_uploader.agent.extract\n",
        "agent/extract.py": "",
        "agent/runner.py": "def f():\n    from remote_uploader.collector import app\n",
        "collector/app.py": "",
        "collector/batch.py": "",
        "collector/storage/base.py": "from ..batch import MAX_COUNT\n",
    })
    report = importgraph.check(package, allowed={})
    assert set(report.new_uphill) == {
        ("remote_uploader.protocol", "remote_uploader.agent.extract"),
        ("remote_uploader.agent.runner", "remote_uploader.collector.app"),
        ("remote_uploader.collector.storage.base", "remote_uploader.collector.batch"),
    }
    assert "never imports the collector" in report.new_uphill["remote_uploader.agent.runner",
                                                              "remote_uploader.collector.app"].why


def test_an_allowlist_entry_whose_edge_is_gone_is_reported_stale(tmp_path: Path) -> None:
    package = write_package(tmp_path, {"protocol.py": "", "agent/extract.py": "from remote_uploader import protocol\n"})
    allowed = {("remote_uploader.protocol", "remote_uploader.agent.extract"): "someone"}
    assert importgraph.check(package, allowed=allowed).stale == [("remote_uploader.protocol",
                                                                  "remote_uploader.agent.extract")]
