"""Update docs/benchmarks.md with the tables of the last `scripts/bench` run.

    python -m bench.report [--doc docs/benchmarks.md]

The document is written by hand; what a benchmark of `scripts/bench` measures sits between a
`<!-- bench:NAME -->` line and a `<!-- /bench:NAME -->` line. Each such region gets the tables of
bench/out/NAME.md (lines starting with `|`, with their `**bold**` titles), or its text as a block
if it has no table; `machine` gets the machine line and today's date. A region whose output is
missing keeps what it holds, so a partial run updates what it measured and nothing else, and the
sections written by hand (most of the file: rounds measured side by side with a branch) are never
touched. (Until 3 December 2026 the file was rendered whole from a template, which had fallen a
thousand lines behind it: a run would have erased every later section.)
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from bench.common import ROOT, machine

OUT = ROOT / "bench" / "out"
REGION = re.compile(r"^<!-- bench:([a-z0-9_]+) -->\n.*?^<!-- /bench:\1 -->$", re.MULTILINE | re.DOTALL)


def table(name: str) -> str | None:
    """The tables (and their bold titles) of a benchmark's output; plain text output as a block;
    None if the benchmark did not run."""
    path = OUT / f"{name}.md"
    if not path.exists():
        return None
    lines = path.read_text().splitlines()
    kept = [line for line in lines if line.startswith(("|", "**"))]
    if not kept:
        return "```text\n" + "\n".join(lines).strip() + "\n```"
    out: list[str] = []
    for line in kept:
        if line.startswith("**") and out:
            out.append("")
        out.append(line)
        if line.startswith("**"):
            out.append("")
    return "\n".join(out)


def measured(name: str) -> str | None:
    if name == "machine":
        return f"**Machine:** {machine()}. **Run:** {time.strftime('%Y-%m-%d')}."
    return table(name)


def render(document: str) -> str:
    """`document` with every region whose benchmark ran replaced by its output."""

    def fill(match: re.Match[str]) -> str:
        body = measured(match.group(1))
        if body is None:
            return match.group(0)
        return f"<!-- bench:{match.group(1)} -->\n{body.strip()}\n<!-- /bench:{match.group(1)} -->"

    return REGION.sub(fill, document)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    args.doc.write_text(render(args.doc.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
