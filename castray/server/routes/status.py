"""``/api/status`` and ``/api/health``: answered from memory, never by asking Ray."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response

from castray import __version__
from castray.models import Health, StatusResponse
from castray.server.deps import RegistryDep

router = APIRouter(tags=["status"])


@router.get("/status", response_model=StatusResponse)
async def get_status(request: Request, registry: RegistryDep) -> Response:
    """Clusters, endpoints and their counters, as the agents last reported them."""
    uptime = time.monotonic() - request.app.state.started_at
    return Response(registry.status_json(uptime), media_type="application/json")


@router.get("/health")
async def get_health() -> Health:
    """The server answers; says nothing about Ray."""
    return Health(version=__version__)
