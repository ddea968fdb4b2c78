"""Meta-tests: every configuration key and every command is documented."""

from __future__ import annotations

from pathlib import Path

from remote_uploader.cli import build_parser
from remote_uploader.config import KNOWN_KEYS, SOURCE_KEYS

ROOT = Path(__file__).resolve().parents[2]


def test_every_config_key_is_in_docs_configuration() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    missing = [key for key in sorted(KNOWN_KEYS) if f"`{key}`" not in text]
    missing += [key for key in sorted(SOURCE_KEYS) if f"| `{key}` |" not in text]
    assert missing == []


def test_every_command_has_help_and_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name, sub in commands.items():
        assert sub.format_help(), name
        assert f"`{name}" in readme, f"command {name} is not in the README"


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
