"""The table generator: rows merge by (key, long), non-zero figures stand out, the prose is kept."""

from __future__ import annotations

from typing import Any

from tests.reliability.report import BEGIN, END, merge, previous_rows, render, update


def _row(key: str, lost: int | None = 0, doubled: int | None = 0, *, long: bool = False,
         recovery: float | None = 1.0, note: str = "") -> dict[str, Any]:
    return {"key": key, "scenario": key.split("/")[1], "done": "did it | twice", "times": 3, "lost": lost,
            "doubled": doubled, "recovery_s": recovery, "note": note, "long": long}


def test_a_fast_run_replaces_fast_rows_and_keeps_the_last_long_figures() -> None:
    old = [_row("crash/a"), _row("crash/a", long=True, lost=7), _row("disk/full")]
    new = [_row("crash/a", doubled=2), _row("outage/long")]
    merged = merge(old, new)
    assert [(r["key"], r["long"], r["lost"], r["doubled"]) for r in merged] == [
        ("crash/a", False, 0, 2), ("crash/a", True, 7, 0), ("outage/long", False, 0, 0), ("disk/full", False, 0, 0)]


def test_non_zero_and_missing_figures_are_visible() -> None:
    table = render([_row("crash/a", lost=5, recovery=None), _row("security/x", None, None, recovery=None)])
    assert "| **5** | 0 | **did not recover** |" in table
    assert "| – | – | – |" in table
    assert "did it \\| twice" in table  # a pipe in the text does not break the table
    assert "1 with losses or double counts" in table


def test_update_replaces_only_the_generated_block_and_round_trips_the_rows() -> None:
    document = f"# Title\n\nprose before\n\n{BEGIN}\nold table\n{END}\n\nprose after\n"
    rows = [_row("crash/a", note="a --> b")]
    once = update(document, rows)
    assert once.startswith("# Title\n\nprose before\n\n") and once.endswith("\n\nprose after\n")
    assert "old table" not in once
    assert previous_rows(once) == rows
    assert update(once, rows).count(BEGIN) == 1
