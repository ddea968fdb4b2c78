"""What every router shares: the dependencies (the app's `Collector`, the bearer token's
principal, the check of query parameters) and the documented error answers.

Routers are module-level `APIRouter`s; a handler reaches the app's state through the `Service`
dependency (never a closure over it), so a router can be read, and tested, on its own.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, cast

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from remote_uploader.collector.auth import Principal, authenticate, authenticate_bouncer
from remote_uploader.collector.models import ErrorOut
from remote_uploader.collector.service import Collector
from remote_uploader.collector.timeparse import DurationError, parse_moment
from remote_uploader.errors import ApiError
from remote_uploader.protocol import HEALTH_PATH


async def collector_of(request: Request) -> Collector:
    """The app's collaborators (settings, storage, metrics...), made by `create_app`.

    `async` so that FastAPI calls it in the event loop, not in its thread pool."""
    return cast(Collector, request.app.state.collector)


Service = Annotated[Collector, Depends(collector_of)]


def bad_request(field: str, error: str) -> ApiError:
    return ApiError(400, field, error)


# -- query parameters shared by several routers --------------------------------------------

MAX_QUERY_COUNT = 2**62  # any larger min_count matches nothing anyway, and fits every database

Since = Annotated[
    str | None,
    Query(
        max_length=64,
        description="only addresses last seen at or after this RFC 3339 time, or this long ago (15m, 1h, 7d)",
    ),
]
MinCount = Annotated[int, Query(ge=1, le=MAX_QUERY_COUNT, description="only addresses counted at least this often")]


def moment(field: str, text: str | None) -> datetime | None:
    """A query time: RFC 3339, or a duration meaning that long before now (`since=1h`)."""
    if text is None:
        return None
    try:
        return parse_moment(text)
    except DurationError as exc:
        raise bad_request(field, str(exc)) from None


_MEANING = {
    400: "invalid request: every bad field is listed; do not send it again unchanged",
    401: "missing, unknown or revoked bearer token",
    403: "the token may not do this (read-only token, or the batch's agent is not the token's name)",
    404: "no such address",
    413: "body (or decompressed body) larger than the limit: split the batch",
    415: "unsupported Content-Type or Content-Encoding",
    429: "too many batches in flight: retry after Retry-After seconds",
    503: "database unavailable or busy: retry after Retry-After seconds",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for these error statuses."""
    return {code: {"model": ErrorOut, "description": _MEANING[code]} for code in codes}


bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="A token from `remote-uploader collector token add NAME`. Agent tokens send batches "
    "(as the agent NAME) and read; read tokens (`--read-only`) only read.",
)


def current_principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    """The bearer token's name and role (401 without a known token, 403 for a bouncer key).

    A plain `def`: it reads the database, so FastAPI runs it in its thread pool."""
    storage = cast(Collector, request.app.state.collector).storage
    if credentials is None or not credentials.credentials:
        raise ApiError(401, "authorization", "missing bearer token", {"WWW-Authenticate": "Bearer"})
    found = authenticate(storage, credentials.credentials)
    if found is None:
        if authenticate_bouncer(storage, credentials.credentials) is not None:
            raise ApiError(403, "authorization", "a bouncer key may only pull decisions (GET /v1/decisions/stream)")
        raise ApiError(401, "authorization", "unknown or revoked token", {"WWW-Authenticate": "Bearer"})
    request.state.principal = found.name
    return found


Who = Annotated[Principal, Depends(current_principal)]


# A route whose openapi_extra holds this ignores query parameters it does not know: the CrowdSec
# routes, because CrowdSec does and bouncers newer than this collector may send more.
IGNORES_UNKNOWN_QUERY = {"x-unknown-query-parameters": "ignored"}


def reject_unknown_query(request: Request) -> None:
    """Read endpoints refuse query parameters they do not know.

    A misspelt filter (`min_cout=100`) would otherwise be ignored silently, and a blocklist
    meant to hold the worst offenders would hold every address. Ingest is exempt: an agent
    newer than this collector may add parameters, and a 400 would dead-letter its batches.
    """
    if request.method != "GET" or request.url.path == HEALTH_PATH or not request.url.path.startswith("/v1/"):
        return  # probes (health, metrics) must not fail on a load balancer's cache-buster
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None or (getattr(route, "openapi_extra", None) or {}).get("x-unknown-query-parameters"):
        return
    known = {field.alias for field in dependant.query_params}
    for name in request.query_params:
        if name not in known:
            raise ApiError(400, f"query.{name}", "unknown parameter")
