"""The template environment and the headers every page carries.

Autoescaping is on for every template (not only `.html` ones) and undefined names are errors:
agent names, source labels and addresses come from the network and from log files, so nothing
reaches the page unescaped, and a misspelt variable fails a test instead of rendering empty.
"""

from __future__ import annotations

from datetime import UTC, datetime
from importlib import resources
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from starlette.responses import HTMLResponse, Response

# No script at all, styles and images from our own origin only, forms post only to us, never
# framed. `default-src 'none'` makes everything not listed here (fonts, connections, media,
# workers) refused, so a page cannot call out even if a value slipped through unescaped.
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Not "no-referrer": with it, browsers send `Origin: null` on our own form posts, and the
    # sign-in's origin check (login CSRF) could not tell them from a sandboxed attacker's.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "–"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(moment: datetime | None, now: datetime | None = None) -> str:
    if moment is None:
        return "never"
    seconds = ((now or datetime.now(UTC)) - moment).total_seconds()
    return duration(seconds) + (" ago" if seconds >= 0 else " ahead")


def duration(seconds: float) -> str:
    """`42 s`, `5 min`, `3 h 20 min`, `2 d 4 h`: short, for tables."""
    seconds = abs(seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = int(seconds // 60)
    if minutes < 90:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def _num(value: float) -> str:
    return f"{value:,.0f}" if isinstance(value, float) else f"{value:,}"


def _size(value: int) -> str:
    """Bytes, short: `512 B`, `3.4 MiB`."""
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{value} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def make_environment() -> Environment:
    env = Environment(
        loader=PackageLoader("remote_uploader.collector.dashboard", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["ago"] = _ago
    env.filters["num"] = _num
    env.filters["duration"] = duration
    env.filters["size"] = _size
    return env


def static_file(name: str) -> bytes:
    return resources.files("remote_uploader.collector.dashboard").joinpath("static", name).read_bytes()


class Pages:
    """Renders templates into responses with the security headers."""

    def __init__(self) -> None:
        self.env = make_environment()

    def render(
        self, template: str, status: int = 200, headers: dict[str, str] | None = None, **context: Any
    ) -> Response:
        html = self.env.get_template(template).render(**context)
        return HTMLResponse(html, status_code=status, headers={**SECURITY_HEADERS, **(headers or {})})
