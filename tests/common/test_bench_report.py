"""`scripts/bench` updates the measured regions of docs/benchmarks.md and nothing else: the file's
hand-written sections (most of it) survive a run, and a benchmark that did not run keeps its table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from bench import report

ROOT = Path(__file__).resolve().parents[2]
DOC = """# Benchmarks

<!-- bench:machine -->
**Machine:** old. **Run:** 2026-01-01.
<!-- /bench:machine -->

## once

Prose written by hand, kept.

<!-- bench:once -->
| old | table |
<!-- /bench:once -->

### A round measured by hand

| hand | table |

<!-- bench:collector -->
old text
<!-- /bench:collector -->
"""


@pytest.fixture
def out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(report, "OUT", tmp_path)
    return tmp_path


def test_a_run_replaces_the_regions_it_measured_and_keeps_everything_else(out: Path) -> None:
    (out / "once.md").write_text("noise line\n**Title**\n| new | table |\n")
    rendered = report.render(DOC)
    assert "| new | table |" in rendered and "| old | table |" not in rendered
    assert "**Title**" in rendered and "noise line" not in rendered
    assert "Prose written by hand, kept." in rendered
    assert "### A round measured by hand\n\n| hand | table |" in rendered
    assert "<!-- bench:collector -->\nold text\n<!-- /bench:collector -->" in rendered, "collector did not run"
    assert "**Machine:** old" not in rendered and "<!-- /bench:machine -->" in rendered


def test_a_benchmark_with_text_output_becomes_a_text_block(out: Path) -> None:
    (out / "collector.md").write_text("10 batches\n  storage  1 records/s\n")
    rendered = report.render(DOC)
    block = "```text\n10 batches\n  storage  1 records/s\n```"
    assert f"<!-- bench:collector -->\n{block}\n<!-- /bench:collector -->" in rendered


def test_with_no_output_only_the_machine_line_changes(out: Path) -> None:
    rendered = report.render(DOC)
    assert rendered.replace(rendered.split("\n")[3], "**Machine:** old. **Run:** 2026-01-01.") == DOC


def test_the_documents_regions_are_the_outputs_scripts_bench_writes() -> None:
    doc = (ROOT / "docs" / "benchmarks.md").read_text()
    opened = re.findall(r"^<!-- bench:([a-z0-9_]+) -->$", doc, re.MULTILINE)
    closed = re.findall(r"^<!-- /bench:([a-z0-9_]+) -->$", doc, re.MULTILINE)
    assert opened == closed and len(set(opened)) == len(opened)
    written = set(re.findall(r'"\$out/([a-z0-9_]+)\.md"', (ROOT / "scripts" / "bench").read_text()))
    assert set(opened) == written | {"machine"}
    assert len(report.REGION.findall(doc)) == len(opened)
