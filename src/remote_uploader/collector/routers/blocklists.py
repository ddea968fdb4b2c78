"""`GET /v1/blocklist`: the counted addresses as a list for firewalls (blocklist.py renders it).

Any valid token may read. Filters choose the addresses (min_count, since, family, private
ones or not), the allowlist always takes out what it holds, and a long list can be capped
(`max_entries`, ranked) or cut in parts for loaders with a size limit.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response

from remote_uploader.collector import blocklist
from remote_uploader.collector.models import ErrorOut
from remote_uploader.collector.routers.deps import MinCount, Service, Since, Who, bad_request, errors, moment
from remote_uploader.errors import ApiError

router = APIRouter()


@router.get(
    "/v1/blocklist",
    summary="A blocklist for firewalls",
    response_class=Response,
    responses={
        200: {
            "description": "txt (default), nft and ipset are text/plain; json is application/json",
            "content": {"text/plain": {"schema": {"type": "string"}}, "application/json": {"schema": {}}},
        },
        **errors(400, 401, 503),
        404: {"model": ErrorOut, "description": "`part` is past the last part"},
    },
)
def get_blocklist(
    _: Who,
    collector: Service,
    format: Annotated[Literal["txt", "json", "nft", "ipset"], Query()] = "txt",
    min_count: MinCount = 1,
    since: Since = None,
    family: Annotated[Literal["4", "6"] | None, Query(description="only IPv4 or only IPv6")] = None,
    include_private: Annotated[
        bool, Query(description="include non-global addresses (private, loopback, documentation...)")
    ] = False,
    name: Annotated[
        str, Query(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,23}$", description="nftables table / ipset set prefix")
    ] = "remote_uploader",
    max_entries: Annotated[
        int | None, Query(ge=1, le=2**31, description="at most this many entries, ranked by `rank`")
    ] = None,
    rank: Annotated[
        Literal["count", "last_seen"], Query(description="what max_entries keeps: most counted or most recent")
    ] = "count",
    part_size: Annotated[int | None, Query(ge=1, le=2**31, description="parts of this size")] = None,
    part: Annotated[int | None, Query(ge=1, le=2**31, description="which part (1-based) of part_size")] = None,
) -> Response:
    start = moment("query.since", since)
    version = int(family) if family else None
    rows = collector.storage.blocklist_rows(min_count, start, version)
    filters = {
        "min_count": str(min_count),
        "since": since or "-",
        "family": family or "any",
        "include_private": str(include_private).lower(),
    }
    chosen = blocklist.select(rows, collector.settings.allowlist, include_private)
    if max_entries is not None:
        filters["max_entries"] = str(max_entries)
        filters["rank"] = rank
        chosen = blocklist.cap(chosen, max_entries, rank)
    if part is not None and part_size is None:
        raise bad_request("query.part", "needs part_size")
    if part_size is not None:
        if format in ("nft", "ipset"):
            raise bad_request("query.part_size", "parts are for txt and json lists; nft and ipset load any size")
        chosen, parts = blocklist.split(chosen, part_size, part or 1)
        if (part or 1) > parts:
            raise ApiError(404, "query.part", f"there are {parts} parts")
        filters["part"] = f"{part or 1}/{parts}"
    document = blocklist.Blocklist(datetime.now(UTC), filters, chosen)
    media = "application/json" if format == "json" else "text/plain; charset=utf-8"
    return Response(blocklist.render(document, format, name), media_type=media)
