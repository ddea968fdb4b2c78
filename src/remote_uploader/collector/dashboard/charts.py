"""Charts as server-side SVG: numbers in, coordinates out; the templates draw them.

No chart library and no script: a page must render with `script-src 'none'`, offline, and a
chart must be readable without colour, so series differ by line style (solid, dashed) and are
named in a legend made of text. Coordinates are computed here, so the templates hold no
arithmetic; every value shown as text goes through the template's autoescaping.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

WIDTH = 720
HEIGHT = 220
LEFT = 56  # room for the y axis labels
RIGHT = 8
TOP = 12
BOTTOM = 28  # room for the x axis labels


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    points: str  # "x,y x,y ..." for <polyline points>
    dashed: bool
    last: int


@dataclass(frozen=True, slots=True)
class Tick:
    position: float
    label: str


@dataclass(frozen=True, slots=True)
class Chart:
    title: str
    width: int
    height: int
    series: list[Series]
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    plot: tuple[int, int, int, int]  # left, top, right, bottom of the plot area
    empty: bool


def nice_max(value: float) -> int:
    """The smallest 1, 2 or 5 times a power of ten that is at least `value` (at least 1)."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= value:
                return step * factor
        step *= 10


def resample(
    points: Sequence[tuple[datetime, int, float]], start: datetime, end: datetime, steps: int
) -> list[float]:
    """Per-minute averages over `steps` equal steps of [start, end).

    `points` are (start, length in seconds, value): minute buckets, and the hour and day rows that
    older buckets were rolled up into. A point is shared among the steps it overlaps in
    proportion to the overlap, so a rolled-up hour draws as a flat stretch at its average, not a
    spike, and the sum over the chart stays the sum of the points inside it.
    """
    span = (end - start).total_seconds()
    step = span / steps
    sums = [0.0] * steps
    for moment, seconds, value in points:
        begin = (moment - start).total_seconds()
        finish = begin + max(1, seconds)
        if finish <= 0 or begin >= span:
            continue
        first = max(0, int(begin // step))
        last = min(steps - 1, int((finish - 1e-9) // step))
        length = finish - begin
        for index in range(first, last + 1):
            overlap = min(finish, (index + 1) * step) - max(begin, index * step)
            if overlap > 0:
                sums[index] += value * overlap / length
    minutes = step / 60
    return [total / minutes for total in sums]


def line_chart(
    title: str,
    start: datetime,
    end: datetime,
    series: Sequence[tuple[str, Sequence[float]]],
    *,
    time_format: str = "%H:%M",
) -> Chart:
    """A time chart of one or more equally spaced series covering [start, end)."""
    left, top, right, bottom = LEFT, TOP, WIDTH - RIGHT, HEIGHT - BOTTOM
    peak = max((max(values, default=0) for _, values in series), default=0)
    top_value = nice_max(peak)
    drawn: list[Series] = []
    for index, (name, values) in enumerate(series):
        count = max(1, len(values) - 1)
        coordinates = []
        for i, value in enumerate(values):
            x = left + (right - left) * i / count
            y = bottom - (bottom - top) * value / top_value
            coordinates.append(f"{x:.1f},{y:.1f}")
        drawn.append(Series(name, " ".join(coordinates), index % 2 == 1, round(values[-1]) if values else 0))
    y_ticks = [
        Tick(bottom - (bottom - top) * fraction, _short(top_value * fraction)) for fraction in (0, 0.25, 0.5, 0.75, 1)
    ]
    x_ticks = []
    for fraction in (0, 0.25, 0.5, 0.75, 1):
        moment = start + (end - start) * fraction
        x_ticks.append(Tick(left + (right - left) * fraction, moment.strftime(time_format)))
    return Chart(title, WIDTH, HEIGHT, drawn, y_ticks, x_ticks, (left, top, right, bottom), peak == 0)


def sparkline(values: Sequence[float], width: int = 80, height: int = 18) -> str:
    """The `points` of a small trend line (empty when there is nothing to draw)."""
    if not values:
        return ""
    peak = max(values) or 1
    count = max(1, len(values) - 1)
    return " ".join(
        f"{width * i / count:.1f},{height - 1 - (height - 2) * value / peak:.1f}" for i, value in enumerate(values)
    )


def _short(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:g}M"
    if value >= 1_000:
        return f"{value / 1_000:g}k"
    return f"{value:g}"
