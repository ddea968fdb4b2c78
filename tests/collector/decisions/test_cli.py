"""`collector decision add|delete|list` and `[[rules]]` errors in the config file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from remote_uploader.collector import cli


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def config(tmp_path: Path, extra: str = "") -> str:
    path = tmp_path / "collector.toml"
    path.write_text(f'[collector]\ndb = "sqlite://{tmp_path}/c.db"\nallowlist = ["192.0.2.0/25"]\n{extra}')
    return str(path)


def test_decisions_are_added_listed_and_deleted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = config(tmp_path)
    code, out, _ = run(capsys, "decision", "add", "198.51.100.7", "--duration", "1h30m", "--reason", "report", "-c", c)
    assert code == 0 and "198.51.100.7" in out
    assert run(capsys, "decision", "add", "192.0.2.0/24", "--duration", "1d", "-c", c)[0] == 0
    code, out, _ = run(capsys, "decision", "list", "--json", "-c", c)
    listed = json.loads(out)
    assert [(d["value"], d["origin"], d["scenario"]) for d in listed] == [
        ("198.51.100.7", "cscli", "manual"),
        ("192.0.2.128/25", "cscli", "manual"),  # the allowlisted half is cut out
    ]
    assert run(capsys, "decision", "delete", "198.51.100.7", "--db", f"sqlite://{tmp_path}/c.db")[0] == 0
    code, _, err = run(capsys, "decision", "delete", "198.51.100.7", "-c", c)
    assert code == 1 and "no active decision" in err
    code, out, _ = run(capsys, "decision", "list", "--all", "--json", "-c", c)
    assert [d["state"] for d in json.loads(out)] == ["deleted", "active"]


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["add", "198.51.100.7", "--duration", "10"], "--duration"),
        (["add", "198.51.100.7", "--duration", "4 hours"], "--duration"),
        (["add", "198.51.100.0/33", "--duration", "1h"], "VALUE"),
        (["add", "192.0.2.5", "--duration", "1h"], "VALUE"),  # allowlisted
        (["delete", "bogus"], "VALUE"),
    ],
)
def test_bad_arguments_are_named_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], named: str
) -> None:
    code, _, err = run(capsys, "decision", *argv, "-c", config(tmp_path))
    assert code == 2 and f"error: {named}:" in err


@pytest.mark.parametrize(
    ("rules", "key"),
    [
        ('[[rules]]\nname = "a"\nmin_count = 5\nwindow = "10m"\n', "rules[0].duration"),
        ('[[rules]]\nname = "a"\nmin_count = 0\nwindow = "10m"\nduration = "1h"\n', "rules[0].min_count"),
        ('[[rules]]\nname = "a b"\nmin_count = 5\nwindow = "10m"\nduration = "1h"\n', "rules[0].name"),
        (
            '[[rules]]\nname = "a"\nmin_count = 5\nwindow = "10m"\nduration = "1h"\nmin_addresses = 3\n',
            "rules[0].min_addresses",
        ),
        (
            '[[rules]]\nname = "a"\nmin_count = 5\nwindow = "10m"\nduration = "1h"\nprefix_v4 = 33\n',
            "rules[0].prefix_v4",
        ),
        ('[[rules]]\nname = "a"\nmin_count = 5\nwindow = "10m"\nduration = "1h"\nsources = "x"\n', "rules[0].sources"),
        (
            '[[rules]]\nname = "a"\nmin_count = 5\nwindow = "10m"\nduration = "1h"\nescalation = { factr = 2 }\n',
            "rules[0].escalation.factr",
        ),
        (
            2 * '[[rules]]\nname = "a"\nmin_count = 5\nwindow = "10m"\nduration = "1h"\n',
            "rules[1].name",
        ),
    ],
)
def test_bad_rules_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str], rules: str, key: str) -> None:
    code, _, err = run(capsys, "decision", "list", "-c", config(tmp_path, rules))
    assert code == 2 and f"config key {key} " in err
