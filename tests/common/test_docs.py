"""Meta-tests: every configuration key and every command of both halves is documented, and every
command the docs show exists.

The commands are read from the real parsers: the agent's (`remote_uploader.cli.build_parser`) and,
under `collector`, the collector's own (`collector.cli.add_commands`, which the agent's parser hands
the rest of the line to). The docs are README.md and docs/*.md; a command counts as shown where a
line of a code block, or an inline code span, starts with `remote-uploader ...` (after an optional
prompt, `sudo -u USER` or environment assignments), so prose such as "a remote-uploader collector"
is not taken for a command.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from remote_uploader import cli
from remote_uploader.collector import cli as collector_cli
from remote_uploader.config import KNOWN_KEYS, SOURCE_KEYS

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# What may stand before the command on its line: a prompt, sudo, environment assignments.
PREFIX = r"^\s*(?:\$\s+)?(?:sudo(?:\s+-u\s+\S+)?\s+)?(?:[A-Z_][A-Z0-9_]*=\S*\s+)*"
SHOWN = re.compile(PREFIX + r"remote-uploader((?:\s+[a-z][a-z0-9-]*(?=\s|$))+)")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommands of `parser`, with the agent's `collector` stub replaced by the collector's parser."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    if "collector" in found and parser.prog.split()[-1] != "collector":
        collector = argparse.ArgumentParser(prog="remote-uploader collector")
        collector_cli.add_commands(collector)
        found["collector"] = collector
    return found


def _helps(parser: argparse.ArgumentParser) -> dict[str, str]:
    """The one-line help each subcommand shows in its parent's listing."""
    return {action.dest: action.help or "" for sub in parser._actions if isinstance(sub, argparse._SubParsersAction)
            for action in sub._choices_actions}


def command_tree() -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every command and command group, by its path of words after `remote-uploader`."""
    tree: dict[tuple[str, ...], argparse.ArgumentParser] = {}

    def walk(path: tuple[str, ...], parser: argparse.ArgumentParser) -> None:
        for name, sub in _subcommands(parser).items():
            tree[(*path, name)] = sub
            walk((*path, name), sub)

    walk((), cli.build_parser())
    return tree


TREE = command_tree()
LEAVES = sorted(path for path in TREE if not _subcommands(TREE[path]))


def shown_in_docs() -> dict[tuple[str, ...], set[str]]:
    """Each command line the docs show (its words, arguments included), with the files showing it."""
    shown: dict[tuple[str, ...], set[str]] = {}
    for doc in DOCS:
        text = doc.read_text()
        blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
        lines = [line for block in blocks for line in block.splitlines()]
        prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
        lines += [" ".join(span.split()) for span in re.findall(r"`((?:[^`\n]|\n(?!\n))+)`", prose)]  # may wrap
        for line in lines:
            match = SHOWN.match(line)
            if match:
                shown.setdefault(tuple(match.group(1).split()), set()).add(doc.name)
    return shown


def resolve(words: tuple[str, ...]) -> tuple[str, ...] | None:
    """The command a shown line runs (its words up to the command; the rest are its arguments),
    or None when it names none: an unknown command, or a group followed by no subcommand of it."""
    path: tuple[str, ...] = ()
    for word in words:
        if (*path, word) in TREE:
            path = (*path, word)
        elif path and not _subcommands(TREE[path]):
            return path  # a command; the rest are its arguments
        else:
            return None
    return path or None


def test_every_config_key_is_in_docs_configuration() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    missing = [key for key in sorted(KNOWN_KEYS) if f"`{key}`" not in text]
    missing += [key for key in sorted(SOURCE_KEYS) if f"| `{key}` |" not in text]
    assert missing == []


def test_the_key_table_in_docs_configuration_is_the_one_the_declarations_give() -> None:
    """Regenerate with `python scripts/configdocs.py` after changing a key's default or doc line."""
    from remote_uploader.config import TABLE
    from remote_uploader.settings import markdown_table, with_generated

    text = (ROOT / "docs" / "configuration.md").read_text()
    assert with_generated(text, markdown_table(TABLE)) == text


def test_every_environment_alias_is_in_docs_configuration() -> None:
    from remote_uploader.config import TABLE

    text = (ROOT / "docs" / "configuration.md").read_text()
    aliases = [alias for key in TABLE.keys.values() for alias in key.aliases]
    assert "REMOTE_UPLOADER_TOKEN" in aliases
    assert [alias for alias in aliases if f"`{alias}`" not in text] == []


def test_the_tree_holds_both_halves() -> None:
    """A guard for the walk itself: if it lost the collector's parser, the tests below would pass empty."""
    assert {("once",), ("ips",), ("decisions",), ("config", "show"), ("collector", "serve"),
            ("collector", "token", "add"), ("collector", "decision", "list")} <= set(LEAVES)
    assert resolve(("collector", "token", "add", "web-1")) == ("collector", "token", "add")  # then its arguments
    assert resolve(("collector", "tokens", "add")) is None
    assert resolve(("frobnicate",)) is None


@pytest.mark.parametrize("command", LEAVES, ids=" ".join)
def test_every_command_has_help_and_is_shown_in_the_docs(command: tuple[str, ...],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    parent = TREE[command[:-1]] if len(command) > 1 else cli.build_parser()
    assert _helps(parent).get(command[-1]), f"`{' '.join(command)}` has no one-line help in its parent's listing"
    with pytest.raises(SystemExit) as caught:
        cli.main([*command, "--help"])
    assert caught.value.code == 0
    assert "usage:" in capsys.readouterr().out
    shown = {resolve(words) for words in shown_in_docs()}
    assert command in shown, f"`remote-uploader {' '.join(command)}` is in no code line of README.md or docs/"


def test_every_command_the_docs_show_exists() -> None:
    unknown = {" ".join(words): sorted(files) for words, files in shown_in_docs().items() if resolve(words) is None}
    assert unknown == {}
