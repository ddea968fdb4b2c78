"""The dashboard's router: sign-in, the five pages, the static files (included when `dashboard`
is on; `create_app` puts a `Dashboard` in `app.state.dashboard`).

Pages read the storage the API reads, through the same `Storage` methods, in FastAPI's thread
pool (plain `def` handlers). Every page needs a session (see session.py) unless the operator set
`dashboard_anonymous = true` for a trusted network; without one, `/` shows the sign-in form and
every other page sends the browser there. Filters come as query parameters of GET forms, so
every view is a link that can be bookmarked and no page needs a script.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated, Any, cast
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse, Response

from remote_uploader import __version__
from remote_uploader.collector import blocklist
from remote_uploader.collector.auth import Principal
from remote_uploader.collector.dashboard import session, views
from remote_uploader.collector.dashboard.cache import TtlCache
from remote_uploader.collector.dashboard.render import SECURITY_HEADERS, Pages, static_file
from remote_uploader.collector.service import Collector
from remote_uploader.logs import fields
from remote_uploader.protocol import canonical_ip

logger = logging.getLogger(__name__)

router = APIRouter()

MAX_FORM = 4096  # the sign-in form holds one token
STATIC = {
    "dashboard.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
NAV = (("/", "Overview"), ("/ips", "Top addresses"), ("/agents", "Agents"), ("/decisions", "Decisions"))


class Dashboard:
    """The dashboard's state in one app: its templates, static files and page cache."""

    def __init__(self, collector: Collector) -> None:
        self.collector = collector
        self.settings = collector.settings
        self.storage = collector.storage
        self.pages = Pages()
        self.assets = {name: static_file(name) for name in STATIC}
        self.max_age = self.settings.session_hours * 3600
        self.cache = TtlCache()

    def viewer(self, request: Request) -> Principal | None:
        if self.settings.dashboard_anonymous:
            return Principal("anonymous", "read")
        return session.check(self.storage, request.cookies.get(session.COOKIE), self.max_age)

    def page(self, request: Request, who: Principal, template: str, status: int = 200, **context: Any) -> Response:
        request.state.principal = who.name
        return self.pages.render(
            template,
            status,
            nav=NAV,
            path=request.url.path,
            who=who.name,
            anonymous=self.settings.dashboard_anonymous,
            version=__version__,
            now=datetime.now(UTC),
            **context,
        )

    def bad_filter(self, request: Request, who: Principal, exc: views.FilterError) -> Response:
        return self.page(request, who, "error.html", 400, title="Bad filter", field=exc.field, message=exc.message)


async def dashboard_of(request: Request) -> Dashboard:
    return cast(Dashboard, request.app.state.dashboard)


Board = Annotated[Dashboard, Depends(dashboard_of)]


def to_sign_in() -> Response:
    return RedirectResponse("/", status_code=303, headers=SECURITY_HEADERS)


@router.get("/", include_in_schema=False)
def overview(request: Request, board: Board) -> Response:
    who = board.viewer(request)
    if who is None:
        refused = "refused" in request.query_params
        return board.pages.render("signin.html", error=refused, version=__version__)
    try:
        context = views.overview(board.storage, board.settings, request.query_params.get("window", "1h"), board.cache)
    except views.FilterError as exc:
        return board.bad_filter(request, who, exc)
    return board.page(request, who, "overview.html", title="Overview", **context)

@router.post("/signin", include_in_schema=False)
async def sign_in(request: Request, board: Board) -> Response:
    # Every failure is answered alike, by a redirect to the form with a generic note (a 4xx
    # page would be the same to a person, and browsers log it as a console error).
    refused = RedirectResponse("/?refused=1", status_code=303, headers=SECURITY_HEADERS)
    if not _same_origin(request):
        return refused
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            return refused
    token = parse_qs(body.decode("utf-8", "replace")).get("token", [""])[0]
    # The database is called from a thread: this handler is async only to read the body.
    cookie = await run_in_threadpool(session.sign_in, board.storage, token)
    if cookie is None:
        logger.info("dashboard sign-in refused", extra=fields(client=_client(request)))
        # One answer for every failure (unknown, revoked, agent token, malformed): no hint.
        return refused
    response = RedirectResponse("/", status_code=303, headers=SECURITY_HEADERS)
    response.set_cookie(
        session.COOKIE,
        cookie,
        max_age=int(board.max_age),
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response

@router.post("/signout", include_in_schema=False)
def sign_out(request: Request) -> Response:
    response = to_sign_in()
    if not _same_origin(request):  # another site cannot sign a user out either
        return response
    response.delete_cookie(session.COOKIE, path="/", httponly=True, samesite="strict")
    return response

@router.get("/ips", include_in_schema=False)
def top_addresses(request: Request, board: Board) -> Response:
    who = board.viewer(request)
    if who is None:
        return to_sign_in()
    query = dict(request.query_params)
    search = query.get("q", "").strip()
    if search:
        single = canonical_ip(search)
        if single is not None:
            return RedirectResponse(f"/ips/{single}", status_code=303, headers=SECURITY_HEADERS)
        query.pop("q")
        query["cidr"] = search
    try:
        context = views.top_addresses(board.storage, query, board.cache)
    except views.FilterError as exc:
        return board.bad_filter(request, who, exc)
    return board.page(request, who, "ips.html", title="Top addresses", **context)

@router.get("/ips/{ip}", include_in_schema=False)
def address(request: Request, board: Board, ip: str) -> Response:
    who = board.viewer(request)
    if who is None:
        return to_sign_in()
    canonical = canonical_ip(ip) if len(ip) <= 64 else None
    if canonical is None:
        return board.bad_filter(request, who, views.FilterError("address", "not an IP address"))
    try:
        context = views.address(board.storage, board.settings, canonical, request.query_params.get("window", "24h"))
    except views.FilterError as exc:
        return board.bad_filter(request, who, exc)
    status = 200 if context["detail"] is not None or context["decisions"] else 404
    return board.page(request, who, "ip.html", status, title=canonical, **context)

@router.get("/agents", include_in_schema=False)
def agents(request: Request, board: Board) -> Response:
    who = board.viewer(request)
    if who is None:
        return to_sign_in()
    context = views.agents(board.storage, board.settings, board.collector.agent_versions, board.cache)
    return board.page(request, who, "agents.html", title="Agents", **context)

@router.get("/decisions", include_in_schema=False)
def decisions(request: Request, board: Board) -> Response:
    who = board.viewer(request)
    if who is None:
        return to_sign_in()
    try:
        context = views.decisions(board.storage, board.settings, dict(request.query_params))
    except views.FilterError as exc:
        return board.bad_filter(request, who, exc)
    return board.page(request, who, "decisions.html", title="Decisions", **context)

@router.get("/decisions/{decision_id}", include_in_schema=False)
def decision(request: Request, board: Board, decision_id: str) -> Response:
    who = board.viewer(request)
    if who is None:
        return to_sign_in()
    if not decision_id.isdigit() or len(decision_id) > 18:
        return board.bad_filter(request, who, views.FilterError("decision", "not a decision number"))
    context = views.decision(board.storage, int(decision_id))
    status = 200 if context["found"] is not None else 404
    return board.page(request, who, "decision.html", status, title=f"Decision #{decision_id}", **context)

@router.get("/download/blocklist.{fmt}", include_in_schema=False)
def download(request: Request, board: Board, fmt: str) -> Response:
    """The API's blocklist (default filters) for a signed-in browser, which has no bearer token."""
    who = board.viewer(request)
    if who is None:
        return to_sign_in()
    if fmt not in views.BLOCKLIST_FORMATS:
        return board.bad_filter(request, who, views.FilterError("format", "txt, json, nft or ipset"))
    request.state.principal = who.name
    rows = board.storage.blocklist_rows(1, None, None)
    chosen = blocklist.select(rows, board.settings.allowlist, False)
    filters = {"min_count": "1", "since": "-", "family": "any", "include_private": "false"}
    document = blocklist.Blocklist(datetime.now(UTC), filters, chosen)
    media = "application/json" if fmt == "json" else "text/plain; charset=utf-8"
    headers = {**SECURITY_HEADERS, "Content-Disposition": f'attachment; filename="blocklist.{fmt}"'}
    text = blocklist.render(document, cast("blocklist.Format", fmt), "remote_uploader")
    return Response(text, media_type=media, headers=headers)

@router.get("/static/{name}", include_in_schema=False)
def static(board: Board, name: str) -> Response:
    if name not in board.assets:
        return Response("not found", status_code=404, media_type="text/plain", headers=SECURITY_HEADERS)
    headers = {**SECURITY_HEADERS, "Cache-Control": "public, max-age=3600"}
    return Response(board.assets[name], media_type=STATIC[name], headers=headers)


def _same_origin(request: Request) -> bool:
    """A form post from another site (login CSRF) carries its Origin; browsers send one on POST."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    host = request.headers.get("host", "")
    return origin in (f"http://{host}", f"https://{host}")


def _client(request: Request) -> str:
    return request.client.host if request.client else "-"

