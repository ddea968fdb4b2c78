"""The dashboard's routes: sign-in, the five pages, the static files.

Pages read the storage the API reads, through the same `Storage` methods, in FastAPI's thread
pool (plain `def` handlers). Every page needs a session (see session.py) unless the operator set
`dashboard_anonymous = true` for a trusted network; without one, `/` shows the sign-in form and
every other page sends the browser there. Filters come as query parameters of GET forms, so
every view is a link that can be bookmarked and no page needs a script.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse, Response

from remote_uploader import __version__
from remote_uploader.collector import blocklist
from remote_uploader.collector.auth import Principal
from remote_uploader.collector.dashboard import session, views
from remote_uploader.collector.dashboard.cache import TtlCache
from remote_uploader.collector.dashboard.render import SECURITY_HEADERS, Pages, static_file
from remote_uploader.collector.logs import fields
from remote_uploader.protocol import canonical_ip

if TYPE_CHECKING:
    from remote_uploader.collector.app import Collector

logger = logging.getLogger(__name__)

MAX_FORM = 4096  # the sign-in form holds one token
STATIC = {
    "dashboard.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
NAV = (("/", "Overview"), ("/ips", "Top addresses"), ("/agents", "Agents"), ("/decisions", "Decisions"))


def add_dashboard(app: FastAPI, collector: Collector) -> None:
    settings = collector.settings
    storage = collector.storage
    pages = Pages()
    assets = {name: static_file(name) for name in STATIC}
    max_age = settings.session_hours * 3600
    cache = TtlCache()

    def viewer(request: Request) -> Principal | None:
        if settings.dashboard_anonymous:
            return Principal("anonymous", "read")
        return session.check(storage, request.cookies.get(session.COOKIE), max_age)

    def page(request: Request, who: Principal, template: str, status: int = 200, **context: Any) -> Response:
        request.state.principal = who.name
        return pages.render(
            template,
            status,
            nav=NAV,
            path=request.url.path,
            who=who.name,
            anonymous=settings.dashboard_anonymous,
            version=__version__,
            now=datetime.now(UTC),
            **context,
        )

    def to_sign_in() -> Response:
        return RedirectResponse("/", status_code=303, headers=SECURITY_HEADERS)

    def bad_filter(request: Request, who: Principal, exc: views.FilterError) -> Response:
        return page(request, who, "error.html", 400, title="Bad filter", field=exc.field, message=exc.message)

    @app.get("/", include_in_schema=False)
    def overview(request: Request) -> Response:
        who = viewer(request)
        if who is None:
            refused = "refused" in request.query_params
            return pages.render("signin.html", error=refused, version=__version__)
        try:
            context = views.overview(storage, settings, request.query_params.get("window", "1h"), cache)
        except views.FilterError as exc:
            return bad_filter(request, who, exc)
        return page(request, who, "overview.html", title="Overview", **context)

    @app.post("/signin", include_in_schema=False)
    async def sign_in(request: Request) -> Response:
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
        cookie = await run_in_threadpool(session.sign_in, storage, token)
        if cookie is None:
            logger.info("dashboard sign-in refused", extra=fields(client=_client(request)))
            # One answer for every failure (unknown, revoked, agent token, malformed): no hint.
            return refused
        response = RedirectResponse("/", status_code=303, headers=SECURITY_HEADERS)
        response.set_cookie(
            session.COOKIE,
            cookie,
            max_age=int(max_age),
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @app.post("/signout", include_in_schema=False)
    def sign_out(request: Request) -> Response:
        response = to_sign_in()
        if not _same_origin(request):  # another site cannot sign a user out either
            return response
        response.delete_cookie(session.COOKIE, path="/", httponly=True, samesite="strict")
        return response

    @app.get("/ips", include_in_schema=False)
    def top_addresses(request: Request) -> Response:
        who = viewer(request)
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
            context = views.top_addresses(storage, query, cache)
        except views.FilterError as exc:
            return bad_filter(request, who, exc)
        return page(request, who, "ips.html", title="Top addresses", **context)

    @app.get("/ips/{ip}", include_in_schema=False)
    def address(request: Request, ip: str) -> Response:
        who = viewer(request)
        if who is None:
            return to_sign_in()
        canonical = canonical_ip(ip) if len(ip) <= 64 else None
        if canonical is None:
            return bad_filter(request, who, views.FilterError("address", "not an IP address"))
        try:
            context = views.address(storage, settings, canonical, request.query_params.get("window", "24h"))
        except views.FilterError as exc:
            return bad_filter(request, who, exc)
        status = 200 if context["detail"] is not None or context["decisions"] else 404
        return page(request, who, "ip.html", status, title=canonical, **context)

    @app.get("/agents", include_in_schema=False)
    def agents(request: Request) -> Response:
        who = viewer(request)
        if who is None:
            return to_sign_in()
        context = views.agents(storage, settings, collector.agent_versions, cache)
        return page(request, who, "agents.html", title="Agents", **context)

    @app.get("/decisions", include_in_schema=False)
    def decisions(request: Request) -> Response:
        who = viewer(request)
        if who is None:
            return to_sign_in()
        try:
            context = views.decisions(storage, settings, dict(request.query_params))
        except views.FilterError as exc:
            return bad_filter(request, who, exc)
        return page(request, who, "decisions.html", title="Decisions", **context)

    @app.get("/decisions/{decision_id}", include_in_schema=False)
    def decision(request: Request, decision_id: str) -> Response:
        who = viewer(request)
        if who is None:
            return to_sign_in()
        if not decision_id.isdigit() or len(decision_id) > 18:
            return bad_filter(request, who, views.FilterError("decision", "not a decision number"))
        context = views.decision(storage, int(decision_id))
        status = 200 if context["found"] is not None else 404
        return page(request, who, "decision.html", status, title=f"Decision #{decision_id}", **context)

    @app.get("/download/blocklist.{fmt}", include_in_schema=False)
    def download(request: Request, fmt: str) -> Response:
        """The API's blocklist (default filters) for a signed-in browser, which has no bearer token."""
        who = viewer(request)
        if who is None:
            return to_sign_in()
        if fmt not in views.BLOCKLIST_FORMATS:
            return bad_filter(request, who, views.FilterError("format", "txt, json, nft or ipset"))
        request.state.principal = who.name
        rows = storage.blocklist_rows(1, None, None)
        chosen = blocklist.select(rows, settings.allowlist, False)
        filters = {"min_count": "1", "since": "-", "family": "any", "include_private": "false"}
        document = blocklist.Blocklist(datetime.now(UTC), filters, chosen)
        media = "application/json" if fmt == "json" else "text/plain; charset=utf-8"
        headers = {**SECURITY_HEADERS, "Content-Disposition": f'attachment; filename="blocklist.{fmt}"'}
        text = blocklist.render(document, cast("blocklist.Format", fmt), "remote_uploader")
        return Response(text, media_type=media, headers=headers)

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in assets:
            return Response("not found", status_code=404, media_type="text/plain", headers=SECURITY_HEADERS)
        headers = {**SECURITY_HEADERS, "Cache-Control": "public, max-age=3600"}
        return Response(assets[name], media_type=STATIC[name], headers=headers)


def _same_origin(request: Request) -> bool:
    """A form post from another site (login CSRF) carries its Origin; browsers send one on POST."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    host = request.headers.get("host", "")
    return origin in (f"http://{host}", f"https://{host}")


def _client(request: Request) -> str:
    return request.client.host if request.client else "-"

