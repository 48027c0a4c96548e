"""``GET /metrics``: Prometheus' text format, for a scraper (behind the API token when one is
set, unless ``metrics_public``)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

router = APIRouter(tags=["status"])


@router.get("/metrics", response_class=Response)
async def get_metrics(request: Request) -> Response:
    """CastRay's series: bytes per endpoint, transfers by outcome, durations, throughputs,
    chunks sent again, endpoints and clusters by state, WebSocket clients, dropped events,
    agent restarts."""
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
