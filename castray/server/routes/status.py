"""``/api/status`` and ``/api/health``: answered from memory, never by asking Ray."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response

from castray import __version__
from castray.models import ClusterStatus, Health, NodeStatus, StatusResponse
from castray.server.deps import RegistryDep
from castray.server.registry import Registry

router = APIRouter(tags=["status"])


@router.get("/status", response_model=StatusResponse)
async def get_status(request: Request, registry: RegistryDep) -> Response:
    """Clusters, endpoints and their counters, as the agents last reported them."""
    uptime = time.monotonic() - request.app.state.started_at
    return Response(registry.status_json(uptime), media_type="application/json")


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
async def get_health(registry: RegistryDep) -> Response:
    """200 ``ok`` only when the home cluster is connected and every one of its endpoints is
    alive: then any transfer between them can run. Otherwise 503 with what is wrong:
    ``starting`` while CastRay comes up, ``degraded`` while the home cluster is lost or
    unreachable (its agent is being restarted, or Ray does not answer) or an endpoint is dead
    or starting again. External clusters are in ``notes``: their state does not fail health
    (restarting CastRay would not bring another cluster back)."""
    health = assess(registry)
    return Response(
        health.model_dump_json(),
        status_code=200 if health.status == "ok" else 503,
        media_type="application/json",
    )


def assess(registry: Registry) -> Health:
    """The server's health from what the agents last reported: ok when the home cluster is
    connected and each of its endpoints is alive. One whose Ray node left is only a note
    (clusters shrink); one starting or being brought back after a death is a problem."""
    clusters = registry.clusters()
    home = next(c for c in clusters if c.is_home)
    endpoints = [n for n in registry.nodes() if n.cluster == home.name]
    problems: list[str] = []
    notes: list[str] = []
    starting = home.status is ClusterStatus.STARTING
    if home.status is not ClusterStatus.CONNECTED:
        problems.append(f"cluster {home.name} is {home.status.value}: {home.detail or 'no detail'}")
    else:
        if not any(n.status is NodeStatus.ALIVE for n in endpoints):
            problems.append(f"no endpoint of cluster {home.name} is alive yet")
        # Coming up (no endpoint yet, or new ones starting), not recovering from a death.
        starting = not any(n.restarting for n in endpoints) and (
            not endpoints or any(n.status is NodeStatus.STARTING for n in endpoints)
        )
        for node in endpoints:
            if node.status is NodeStatus.ALIVE:
                continue
            line = f"endpoint {node.id} is {node.status.value}"
            line += f": {node.detail}" if node.detail else ""
            gone = node.status is NodeStatus.DEAD and not node.restarting  # its node left
            (notes if gone else problems).append(line)
    notes += [
        f"external cluster {c.name} is {c.status.value}" + (f": {c.detail}" if c.detail else "")
        for c in clusters
        if c.is_external and c.status is not ClusterStatus.CONNECTED
    ]
    status = "ok" if not problems else "starting" if starting else "degraded"
    return Health(status=status, version=__version__, problems=problems, notes=notes)
