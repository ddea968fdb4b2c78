"""`GET /metrics`: the app's Prometheus metrics (collector/metrics.py), without a token, like
health: scrapers do not carry one, and nothing here names an address or a token."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from remote_uploader.collector.metrics import CONTENT_TYPE_LATEST
from remote_uploader.collector.routers.deps import Service

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def get_metrics(collector: Service) -> Response:
    return Response(collector.metrics.render(), media_type=CONTENT_TYPE_LATEST)
