"""Write docs/benchmarks.md: the template's prose with the tables of the last `scripts/bench` run.

    python -m bench.report --out docs/benchmarks.md

`{{machine}}` becomes the machine line; `{{NAME}}` becomes the tables of bench/out/NAME.md
(lines starting with `|`, with their `**bold**` titles), its text as a block if it has no
table, or a note that the benchmark was not run.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from bench.common import ROOT, machine

TEMPLATE = ROOT / "bench" / "benchmarks.template.md"
OUT = ROOT / "bench" / "out"


def table(name: str) -> str:
    """The tables (and their bold titles) of a benchmark's output; plain text output as a block."""
    path = OUT / f"{name}.md"
    if not path.exists():
        return f"_(not measured: bench/out/{name}.md is missing; run scripts/bench)_"
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


def render(template: str) -> str:
    text = template.replace("{{machine}}", machine()).replace("{{date}}", time.strftime("%Y-%m-%d"))
    return re.sub(r"\{\{([a-z_]+)\}\}", lambda match: table(match.group(1)), text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    args.out.write_text(render(TEMPLATE.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
