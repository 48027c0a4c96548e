"""``/api/status`` and ``/api/health``: answered from memory, never by asking Ray."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response

from castray import __version__
from castray.models import ClusterStatus, Health, StatusResponse
from castray.server.deps import RegistryDep

router = APIRouter(tags=["status"])


@router.get("/status", response_model=StatusResponse)
async def get_status(request: Request, registry: RegistryDep) -> Response:
    """Clusters, endpoints and their counters, as the agents last reported them."""
    uptime = time.monotonic() - request.app.state.started_at
    return Response(registry.status_json(uptime), media_type="application/json")


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
async def get_health(registry: RegistryDep) -> Response:
    """200 when the server and its home cluster are fine (or the home is still starting);
    503 with the problems when the home cluster is lost or unreachable (an agent that died is
    being restarted, or Ray does not answer)."""
    problems = [
        f"cluster {c.name} is {c.status.value}: {c.detail or 'no detail'}"
        for c in registry.clusters()
        if c.is_home and c.status in (ClusterStatus.LOST, ClusterStatus.UNREACHABLE)
    ]
    health = Health(status="degraded" if problems else "ok", version=__version__, problems=problems)
    return Response(
        health.model_dump_json(),
        status_code=503 if problems else 200,
        media_type="application/json",
    )
