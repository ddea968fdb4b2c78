"""Messages in English and Simplified Chinese: every message has a translation, the shipped
catalog is the compiled .po, the CLI follows --lang and the locale, and log files stay English."""

from __future__ import annotations

import argparse
import ast
import gettext
import io
import re
import string
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.agent import ROOT, run_agent, write_access_log, write_config

babel_mofile = pytest.importorskip("babel.messages.mofile")
babel_pofile = pytest.importorskip("babel.messages.pofile")

SRC = ROOT / "src" / "remote_uploader"
CATALOG = SRC / "locale" / "zh_CN" / "LC_MESSAGES" / "remote_uploader"
CJK = re.compile(r"[\u4e00-\u9fff]")


# `_()` translates at once; `Message()` (and config's `_invalid()`, which makes one) keeps the
# English template to translate when an error is shown (i18n.Message).
TRANSLATED_CALLS = {"_", "Message", "_invalid"}


def messages_in_source() -> dict[str, str]:
    """Every template passed to `_()` or `Message()` in src/, with where it is first used."""
    found: dict[str, str] = {}
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "i18n.py":
            continue  # the machinery: it translates templates given to it, it has none of its own
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in TRANSLATED_CALLS
                    and node.args):
                argument = node.args[0]
                if isinstance(argument, ast.Name) and argument.id == "template":
                    continue  # a helper handing on its caller's literal (config._invalid)
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                assert isinstance(argument, ast.Constant) and isinstance(argument.value, str), (
                    f"{where}: _() needs a literal string (format it after translating)")
                found.setdefault(argument.value, where)
    return found


def po_catalog() -> dict[str, str]:
    with (CATALOG.with_suffix(".po")).open("rb") as handle:
        catalog = babel_pofile.read_po(handle)
    return {str(message.id): str(message.string) for message in catalog if message.id}


def fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}


def test_every_message_used_in_src_has_a_chinese_translation_with_the_same_placeholders() -> None:
    translations = po_catalog()
    missing = [f"{where}: {message!r}" for message, where in messages_in_source().items()
               if not translations.get(message)]
    assert not missing, "no zh_CN translation (add it to the .po, run scripts/compile-translations):\n" + "\n".join(
        missing)
    for message, translated in translations.items():
        assert fields(message) == fields(translated), (message, translated)
        assert CJK.search(translated) or message == "ok", (message, translated)


def test_the_shipped_mo_is_the_compiled_po() -> None:
    with (CATALOG.with_suffix(".po")).open("rb") as handle:
        catalog = babel_pofile.read_po(handle)
    compiled = io.BytesIO()
    babel_mofile.write_mo(compiled, catalog)
    compiled.seek(0)
    expected = gettext.GNUTranslations(compiled)
    with (CATALOG.with_suffix(".mo")).open("rb") as handle:
        shipped = gettext.GNUTranslations(handle)
    messages = {key: value for key, value in shipped._catalog.items() if key}  # type: ignore[attr-defined]
    wanted = {key: value for key, value in expected._catalog.items() if key}  # type: ignore[attr-defined]
    assert messages == wanted, "run scripts/compile-translations"  # the header ('') holds dates


def test_setup_chooses_chinese_from_lang_or_locale_and_english_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    from remote_uploader import i18n

    try:
        for name in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG"):
            monkeypatch.delenv(name, raising=False)
        assert i18n.setup("zh") == "zh" and i18n._("All data delivered") == "所有数据已上传"
        assert i18n.setup("en") == "en" and i18n._("All data delivered") == "All data delivered"
        monkeypatch.setenv("LANG", "zh_CN.UTF-8")
        assert i18n.setup() == "zh" and i18n._("error") == "错误"
        monkeypatch.setenv("LANG", "de_DE.UTF-8")
        assert i18n.setup() == "en"
    finally:
        i18n.setup("en")


@pytest.mark.parametrize(("args", "env"), [(["--lang", "zh"], {}), ([], {"LANG": "zh_CN.UTF-8"})],
                         ids=["--lang", "locale"])
def test_cli_output_is_chinese_when_asked_and_the_log_file_stays_english(tmp_path: Path, receiver, args,  # type: ignore[no-untyped-def]
                                                                        env) -> None:
    log = tmp_path / "access.log"
    write_access_log(log, 200, seed=1)
    config = write_config(tmp_path / "agent.toml", url=receiver.url, token=receiver.token,
                          state_dir=tmp_path / "state", sources=[str(log)])
    result = run_agent("once", "-c", str(config), *args, env=env)
    assert result.returncode == 0, result.stderr
    assert "所有数据已上传" in result.stdout
    assert "待上传 IP" in result.stdout and "持久化队列大小" in result.stdout
    status = run_agent("status", "-c", str(config), *args, env=env)
    assert "状态目录" in status.stdout and "队列" in status.stdout
    broken = run_agent("once", "-c", str(tmp_path / "missing.toml"), *args, env=env)
    assert "错误" in broken.stderr
    assert not CJK.search((tmp_path / "state" / "agent.log").read_text(encoding="utf-8"))


def test_errors_are_told_in_chinese_at_the_terminal_in_english_otherwise(tmp_path: Path, receiver) -> None:  # type: ignore[no-untyped-def]
    from remote_uploader.agent.spool import StateLock, prepare_state_dir

    log = tmp_path / "access.log"
    write_access_log(log, 20, seed=1)
    config = write_config(tmp_path / "agent.toml", url=receiver.url, token=receiver.token,
                          state_dir=tmp_path / "state", sources=[str(log)])
    bad = ["--set", "batching.min_upload_batch=0"]
    english = run_agent("once", "-c", str(config), *bad)
    chinese = run_agent("once", "-c", str(config), *bad, "--lang", "zh")
    assert (english.returncode, chinese.returncode) == (2, 2)
    assert ("config key batching.min_upload_batch (from command line): must be greater than zero, got 0"
            in english.stderr)
    assert "配置项 batching.min_upload_batch" in chinese.stderr and "必须大于零，实际为 0" in chinese.stderr
    # An error raised deep in the agent: another process holds the state directory's lock.
    prepare_state_dir(tmp_path / "state")
    lock = StateLock(tmp_path / "state")
    lock.acquire()
    try:
        held = run_agent("once", "-c", str(config), "--lang", "zh")
    finally:
        lock.release()
    assert held.returncode == 4 and "另一个代理" in held.stderr and "agent.state_dir" in held.stderr, held.stderr


def test_a_translated_message_formats_its_values_and_nested_messages() -> None:
    from remote_uploader import i18n
    from remote_uploader.i18n import Message

    hint = Message("unknown key")
    message = Message("config key {key}: {reason}", key="agent.idd", reason=hint)
    try:
        i18n.setup("zh")
        assert message.translated() == "配置项 agent.idd：未知的配置项"
        assert str(message) == "config key agent.idd: unknown key"  # what logs get, whatever the language
    finally:
        i18n.setup("en")


def _parsers(parser: argparse.ArgumentParser, path: str = "") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, f"{path} {name}".strip())


def test_the_help_of_the_query_and_collector_commands_is_translated_like_the_old_ones() -> None:
    """Every sentence of `ips`, `decisions` and every `collector ...` help reads in Chinese
    (option names and bare setting keys such as `agent.id` stay as they are)."""
    from remote_uploader import i18n
    from remote_uploader.cli import build_parser
    from remote_uploader.collector.cli import add_commands

    try:
        i18n.setup("zh")
        collector = i18n.Parser(prog="remote-uploader collector")
        add_commands(collector)
        agent = {path: p for path, p in _parsers(build_parser()) if path.split(" ")[0] in ("ips", "decisions")}
        parsers = {**agent, **{f"collector {path}".strip(): p for path, p in _parsers(collector)}}
        wanted = {"ips", "decisions", "collector bouncer add", "collector decision add", "collector serve"}
        assert wanted <= set(parsers)
        english = []
        for path, parser in parsers.items():
            texts = [parser.description or "", *(group.title or "" for group in parser._action_groups)]
            texts += [action.help or "" for action in parser._actions]
            english += [f"{path}: {text!r}" for text in texts if " " in text and not CJK.search(text)]
        assert not english, "\n".join(english)
    finally:
        i18n.setup("en")


def test_new_commands_print_their_help_in_chinese_when_asked() -> None:
    ips = run_agent("ips", "--help", "--lang", "zh")
    assert ips.returncode == 0 and "只列出计数至少为 N 的地址" in ips.stdout and "选项" in ips.stdout
    bouncer = run_agent("collector", "bouncer", "add", "--help", env={"LANG": "zh_CN.UTF-8"})
    assert bouncer.returncode == 0 and "为 bouncer NAME 创建密钥" in bouncer.stdout, bouncer.stdout
    assert "用法" in bouncer.stdout
    english = run_agent("collector", "decision", "add", "--help")
    assert "Add a decision by hand" in english.stdout and not CJK.search(english.stdout)
