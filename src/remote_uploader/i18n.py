"""One translation function for user-facing text: English by default, Simplified Chinese on request.

Log files stay English (they are for grep); only what a person reads at the terminal goes
through `_`. The language comes from `--lang`, `agent.lang`, or the locale (LANGUAGE, LC_ALL,
LC_MESSAGES, LANG); catalogs are shipped in the package under locale/.
"""

from __future__ import annotations

import argparse
import gettext
import os
from pathlib import Path
from typing import Any

DOMAIN = "remote_uploader"
LOCALE_DIR = Path(__file__).parent / "locale"

_translation: gettext.NullTranslations = gettext.NullTranslations()


def detect_language(explicit: str = "") -> str:
    if explicit:
        return explicit
    for variable in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG"):
        value = os.environ.get(variable, "")
        if value:
            return "zh" if value.lower().startswith("zh") else "en"
    return "en"


def setup(lang: str = "") -> str:
    """Choose the catalog for this process; returns the language in effect."""
    global _translation
    language = detect_language(lang)
    if language == "zh":
        _translation = gettext.translation(DOMAIN, LOCALE_DIR, languages=["zh_CN"], fallback=True)
    else:
        _translation = gettext.NullTranslations()
    return language


def _(message: str) -> str:
    return _translation.gettext(message)


def translate_known(text: str) -> str:
    """A fixed English phrase chosen at run time (an OS error's text, a source problem, a status
    word), in the user's language when the catalog has it, else as it is.

    These phrases stay plain strings where they are made, because they are also log values and
    dictionary keys; they are translated only where a person reads them.
    """
    return _translation.gettext(text) if text else text


class Message:
    """An English template and its values, kept apart until the text is shown.

    `str()` gives the English text (log files, `--json` output); `translated()` looks the
    template up in the catalog first and then fills it in, so an error raised deep in the code
    reads in the user's language at the terminal and stays English in the logs. A value that is
    itself a Message is translated with it.
    """

    __slots__ = ("template", "values")

    def __init__(self, template: str, **values: object) -> None:
        self.template = template
        self.values = values

    def __str__(self) -> str:
        return self.template.format(**{k: str(v) if isinstance(v, Message) else v for k, v in self.values.items()})

    def __repr__(self) -> str:
        return repr(str(self))

    def translated(self) -> str:
        values = {k: v.translated() if isinstance(v, Message) else v for k, v in self.values.items()}
        return _(self.template).format(**values)


class HelpFormatter(argparse.HelpFormatter):
    """argparse's own words ("usage:") in the chosen language, like the rest of the help."""

    def add_usage(self, usage: Any, actions: Any, groups: Any, prefix: str | None = None) -> None:
        super().add_usage(usage, actions, groups, _("usage: ") if prefix is None else prefix)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose section titles and -h/--help line are translated (subcommands too:
    `add_parser` makes parsers of the parent's class). The agent's and the collector's command
    lines both use it, so every `--help` reads in the language `setup` chose."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self._positionals.title = _("positional arguments")
        self._optionals.title = _("options")
        for action in self._actions:
            if isinstance(action, argparse._HelpAction):
                action.help = _("show this help message and exit")
