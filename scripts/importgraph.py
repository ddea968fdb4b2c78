"""The import graph of src/remote_uploader, checked for cycles and uphill edges.

Run from the repository root: `python -m scripts.importgraph` (or `python scripts/importgraph.py`).
It prints every module with the modules it imports, then the violations, and exits 1 when there is
one that the allowlist below does not name (each violation printed as `importer -> imported`).
`--quiet` prints only the summary and the violations. tests/common/test_importgraph.py runs it.

Why a script and not a linter plugin: the rules are ours (the layers below), the graph is small, and
the ast module reads every import, including those inside functions, which a module-level reading
misses and which is exactly where cycles hide ("imported late to avoid a cycle" is still a cycle:
the two modules cannot be understood, tested or moved one without the other).

What counts as an edge: `import a.b` and `from a import b` (to module `a.b` when it is a module,
else to `a`), anywhere in the file, relative imports resolved; only modules of the package. Imports
under `if TYPE_CHECKING:` never run, so they close no cycle, but they still count for the layers (a
type from a higher layer is still a dependency on it). A parent package's `__init__` is not counted
as imported by its submodules' importers (Python runs it, but it holds no code here that matters).
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "remote_uploader"
SOURCE = ROOT / "src" / PACKAGE

# The layers, as module name patterns (fnmatch; `*` also matches dots). A module belongs to every
# layer whose pattern it matches.
LAYERS: dict[str, tuple[str, ...]] = {
    # What both halves build on: the wire format, the error tree, translation, log formats, the settings machinery.
    "bottom": (
        "remote_uploader.protocol",
        "remote_uploader.errors",
        "remote_uploader.i18n",
        "remote_uploader.logs",
        "remote_uploader.settings",
        "remote_uploader.settings.*",
        "remote_uploader.config",
        "remote_uploader.timepatterns",
        "remote_uploader.collector.settings",
        # what the settings read values with: the source filters (engine names, regex, CIDRs), durations,
        # and the collector's `[[rules]]` tables (its config file's, as config.py's `[[sources]]` are the agent's)
        "remote_uploader.filters",
        "remote_uploader.durations",
        "remote_uploader.collector.decisions.rules",
    ),
    "agent": ("remote_uploader.agent", "remote_uploader.agent.*"),
    # The agent's source side (issue 11): it produces reads and events, given narrow parts (tail.Collaborators).
    "agent-source": ("remote_uploader.agent.tail", "remote_uploader.agent.source", "remote_uploader.agent.watch"),
    # What drives the pipeline: the runner and the loops of `once` and `forever`.
    "agent-run": ("remote_uploader.agent.runner", "remote_uploader.agent.forever"),
    "collector": ("remote_uploader.collector", "remote_uploader.collector.*"),
    # The collector's storage and the models it stores: below every way in (HTTP, validation, CLI).
    "collector-storage": (
        "remote_uploader.collector.storage",
        "remote_uploader.collector.storage.*",
        "remote_uploader.collector.models",
    ),
    # The ways into the collector: the app and its routers, request validation, the server, the CLI.
    "collector-http": (
        "remote_uploader.collector.app",
        "remote_uploader.collector.routers",
        "remote_uploader.collector.routers.*",
        "remote_uploader.collector.service",
        "remote_uploader.collector.server",
        "remote_uploader.collector.cli",
    ),
    # Ingest validation (the batch format): the ingest router's, not the read side's.
    "collector-ingest": (
        "remote_uploader.collector.batch",
        "remote_uploader.collector.parsing",
        "remote_uploader.collector.ingest",
        "remote_uploader.collector.ingest.*",
    ),
    # The read side: routers and helpers that serve what is stored.
    "collector-reads": (
        "remote_uploader.collector.dashboard.*",
        "remote_uploader.collector.routers.reads",
        "remote_uploader.collector.routers.blocklists",
        "remote_uploader.collector.routers.decisions",
        "remote_uploader.collector.routers.lapi",
        "remote_uploader.collector.routers.dashboard",
        "remote_uploader.collector.routers.metrics",
    ),
}


@dataclass(frozen=True)
class Rule:
    """No module of layer `importer` imports one of layer `imported` (unless it is in both)."""

    importer: str
    imported: str
    why: str


RULES: tuple[Rule, ...] = (
    Rule("bottom", "above-bottom", "the bottom (protocol, errors, i18n, settings) imports only the bottom: "
                                   "both halves build on it"),
    Rule("agent", "collector", "the agent never imports the collector (it runs without the collector extra)"),
    Rule("collector", "agent", "the collector never imports the agent's stages"),
    Rule("agent-source", "agent-run", "the follower produces and the runner consumes: the source side is given "
                                      "narrow parts, never the agent, and never calls into the runner"),
    Rule("collector-storage", "collector-http", "storage is below the ways in: it never imports routers or the app"),
    Rule("collector-storage", "collector-ingest", "storage is below validation: what both need is protocol"),
    Rule("collector-reads", "collector-ingest", "the read side needs nothing of ingest validation: shared checks "
                                                "(times, limits) are protocol"),
)

# Today's known violations, each with the engineer removing it. An edge here is not reported; the
# test fails when an entry no longer occurs (as a violation), so this list can only shrink: delete
# the entry in the same change that removes the edge. A cycle is allowed by naming the edge that
# closes it (the import that was written late, inside a function, to get around it).
ALLOWED: dict[tuple[str, str], str] = {
    # (none left: the last, extract <-> its engines, went when the factory moved to agent/extractors.py)
}


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    line: int
    in_function: bool
    type_only: bool


def module_name(path: Path, source: Path = SOURCE) -> str:
    parts = list(path.relative_to(source.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(source: Path = SOURCE) -> dict[str, Path]:
    return {module_name(path, source): path for path in sorted(source.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Imports(ast.NodeVisitor):
    """Every import statement of one module, with whether it runs only in a function or never."""

    def __init__(self, name: str, is_package: bool, known: set[str]) -> None:
        self.name, self.is_package, self.known = name, is_package, known
        self.depth = 0
        self.type_only = 0
        self.found: list[Edge] = []

    def _add(self, target: str, node: ast.stmt) -> None:
        if target in self.known and target != self.name:
            self.found.append(Edge(self.name, target, node.lineno, self.depth > 0, self.type_only > 0))

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self.type_only += 1
            for child in node.body:
                self.visit(child)
            self.type_only -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            name = alias.name
            while name and name not in self.known:  # `import a.b.c` of a non-module attribute path
                name = name.rpartition(".")[0]
            self._add(name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.name.split(".") if self.is_package else self.name.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            package = ".".join(base + ([node.module] if node.module else []))
        else:
            package = node.module or ""
        for alias in node.names:
            candidate = f"{package}.{alias.name}"
            self._add(candidate if candidate in self.known else package, node)


def edges(source: Path = SOURCE) -> tuple[dict[str, Path], list[Edge]]:
    found = modules(source)
    known = set(found)
    result: list[Edge] = []
    for name, path in found.items():
        visitor = _Imports(name, path.name == "__init__.py", known)
        visitor.visit(ast.parse(path.read_text(), filename=str(path)))
        result.extend(visitor.found)
    return found, result


def layers_of(module: str) -> set[str]:
    """The layers a module is in; "above-bottom" is every module not in the bottom."""
    found = {layer for layer, patterns in LAYERS.items() if any(fnmatchcase(module, p) for p in patterns)}
    return found if "bottom" in found else found | {"above-bottom"}


def uphill(graph: Iterable[Edge]) -> dict[tuple[str, str], Rule]:
    """Each edge that breaks a rule, with the first rule it breaks."""
    broken: dict[tuple[str, str], Rule] = {}
    for edge in graph:
        source, target = layers_of(edge.importer), layers_of(edge.imported)
        for rule in RULES:
            if rule.importer in source and rule.imported in target and rule.imported not in source:
                broken.setdefault((edge.importer, edge.imported), rule)
                break
    return broken


def cycles(graph: Iterable[Edge], ignore: Iterable[tuple[str, str]] = ()) -> list[list[str]]:
    """Every elementary cycle (no module twice), each starting at its smallest module name; imports
    under TYPE_CHECKING never run and are left out. A plain search from each module through larger
    names only: the graph is a few hundred edges, so nothing cleverer is needed."""
    skip = set(ignore)
    succ: dict[str, set[str]] = {}
    for edge in graph:
        if not edge.type_only and (edge.importer, edge.imported) not in skip:
            succ.setdefault(edge.importer, set()).add(edge.imported)
    found: list[list[str]] = []

    def walk(start: str, path: list[str]) -> None:
        for nxt in sorted(succ.get(path[-1], ())):
            if nxt == start:
                found.append([*path, start])
            elif nxt > start and nxt not in path:
                walk(start, [*path, nxt])

    for start in sorted(succ):
        walk(start, [start])
    return found


@dataclass(frozen=True)
class Report:
    modules: dict[str, Path]
    edges: list[Edge]
    uphill: dict[tuple[str, str], Rule]
    cycles: list[list[str]]  # every elementary cycle, the allowlist ignored
    new_uphill: dict[tuple[str, str], Rule]
    new_cycles: list[list[str]]  # left when the allowlisted edges are taken out
    stale: list[tuple[str, str]]  # allowlisted, but no longer a violation
    allowed: dict[tuple[str, str], str]


def check(source: Path = SOURCE, allowed: dict[tuple[str, str], str] = ALLOWED) -> Report:
    found, graph = edges(source)
    broken = uphill(graph)
    loops = cycles(graph)
    in_cycles = {(a, b) for loop in loops for a, b in pairwise(loop)}
    remaining = cycles(graph, ignore=allowed)
    # An allowlisted edge is stale once it is neither uphill nor on a cycle.
    stale = sorted(pair for pair in allowed if pair not in broken and pair not in in_cycles)
    return Report(
        modules=found,
        edges=graph,
        uphill=broken,
        cycles=loops,
        new_uphill={pair: rule for pair, rule in broken.items() if pair not in allowed},
        new_cycles=remaining,
        stale=stale,
        allowed=dict(allowed),
    )


def render(report: Report, quiet: bool = False) -> list[str]:
    lines: list[str] = []
    if not quiet:
        targets: dict[str, dict[str, str]] = {name: {} for name in report.modules}
        rank = {"": 0, " (in function)": 1, " (type)": 2}  # the import that runs earliest names the edge
        for edge in report.edges:
            mark = " (type)" if edge.type_only else " (in function)" if edge.in_function else ""
            previous = targets[edge.importer].get(edge.imported)
            if previous is None or rank[mark] < rank[previous]:
                targets[edge.importer][edge.imported] = mark
        for name in sorted(targets):
            lines.append(name)
            lines.extend(f"    -> {target}{mark}" for target, mark in sorted(targets[name].items()))
    pairs = {(e.importer, e.imported) for e in report.edges}
    lines.append(f"{len(report.modules)} modules, {len(pairs)} edges "
                 f"({sum(1 for e in report.edges if e.in_function)} imports inside functions), "
                 f"{len(report.uphill)} uphill, {len(report.cycles)} cycles")
    for (importer, imported), rule in sorted(report.uphill.items()):
        owner = report.allowed.get((importer, imported))
        state = f"allowed for now ({owner} removes it)" if owner else "NOT ALLOWED"
        lines.append(f"uphill: {importer} -> {imported}: {rule.why} [{state}]")
    for loop in report.cycles:
        pairs_on = [(a, b) for a, b in pairwise(loop) if (a, b) in report.allowed]
        owners = ", ".join(f"{a} -> {b} ({report.allowed[a, b]})" for a, b in pairs_on)
        state = f"allowed for now: {owners}" if pairs_on else "NOT ALLOWED"
        lines.append("cycle: " + " -> ".join(loop) + f" [{state}]")
    for loop in report.new_cycles:
        lines.append("cycle NOT ALLOWED (no allowlisted edge on it): " + " -> ".join(loop))
    for importer, imported in report.stale:
        lines.append(f"stale allowlist entry: {importer} -> {imported} is no longer a violation: delete it")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.importgraph", description=__doc__.splitlines()[0])
    parser.add_argument("--quiet", action="store_true", help="only the summary and the violations")
    args = parser.parse_args(argv)
    report = check()
    print("\n".join(render(report, quiet=args.quiet)))
    return 1 if report.new_uphill or report.new_cycles or report.stale else 0


if __name__ == "__main__":
    sys.exit(main())
