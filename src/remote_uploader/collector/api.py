"""What every route shares: the error type and body, the documented error answers, and auth."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, cast

from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from remote_uploader.collector.auth import Principal
from remote_uploader.collector.models import ErrorOut
from remote_uploader.protocol import HEALTH_PATH

if TYPE_CHECKING:
    from remote_uploader.collector.app import Collector


class ApiError(Exception):
    """An answer other than 2xx, with the protocol's error body."""

    def __init__(self, status: int, field: str, error: str, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.field = field
        self.error = error
        self.headers = headers or {}
        super().__init__(f"{status} {field}: {error}")


def bad_request(field: str, error: str) -> ApiError:
    return ApiError(400, field, error)


def error_response(status: int, errors: list[dict[str, str]], headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": errors}, status_code=status, headers=dict(headers) if headers else None)


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
    collector = cast("Collector", request.app.state.collector)
    return collector.principal(request, credentials)


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
