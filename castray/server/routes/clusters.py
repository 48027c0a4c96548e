"""External clusters, with the shapes of the user's manual (``success`` fields included)."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query

from castray.models import (
    ConnectRequest,
    ConnectResult,
    DisconnectResult,
    DiscoverExternalResult,
    DiscoveryResult,
    ExternalInfo,
    ExternalNodes,
    Node,
)
from castray.server.clusters import ClusterService
from castray.server.deps import ClustersDep

router = APIRouter(tags=["external clusters"])

NONE_RUNNING = (
    "no Ray cluster is running on this machine besides CastRay's own; start one with "
    "'ray start --head --dashboard-port=8265', then discover again"
)


def _nodes_of(clusters: ClusterService, name: str | None = None) -> dict[str, Node]:
    return {n.id: n for n in clusters.external_nodes() if name is None or n.cluster == name}


@router.get("/cluster/discover")
async def discover(clusters: ClustersDep) -> DiscoveryResult:
    """List the Ray clusters on this machine without connecting; cheap enough to poll."""
    started = time.perf_counter()
    found = await clusters.discover()
    return DiscoveryResult(clusters=found, seconds=round(time.perf_counter() - started, 4))


@router.post("/cluster/discover-external")
async def discover_external(clusters: ClustersDep) -> DiscoverExternalResult:
    """Find clusters started by other processes and connect the first one not connected."""
    found, connected = await clusters.discover_and_connect()
    any_connected = bool(clusters.external_clusters())
    if not found:
        message = NONE_RUNNING
    elif connected is not None:
        message = f"connected external cluster {connected.name}"
    elif any_connected:
        message = "every discovered cluster with an answering dashboard is connected already"
    else:
        message = (
            f"found {len(found)} cluster(s), none with an answering Ray dashboard; connect one "
            "by its GCS address with POST /api/cluster/connect-external"
        )
    success = connected is not None or any_connected
    return DiscoverExternalResult(
        success=success,
        message=message,
        discovered_clusters=found,
        connected_cluster=clusters.first_dashboard(),
        external_nodes=_nodes_of(clusters),
    )


@router.get("/cluster/external-info")
async def external_info(clusters: ClustersDep) -> ExternalInfo:
    connected = clusters.external_clusters()
    return ExternalInfo(
        is_connected=any(c.status.value == "connected" for c in connected),
        connected_cluster=clusters.first_dashboard(),
        external_nodes=_nodes_of(clusters),
        clusters=connected,
    )


@router.get("/nodes/external")
async def external_nodes(clusters: ClustersDep) -> ExternalNodes:
    """The alive endpoints of every connected external cluster."""
    alive = [n for n in clusters.external_nodes() if n.status.value == "alive"]
    return ExternalNodes(external_nodes=alive, count=len(alive))


@router.post("/cluster/connect-external")
async def connect_external(body: ConnectRequest, clusters: ClustersDep) -> ConnectResult:
    """Connect a cluster by dashboard URL or host:port, GCS host:port, or ray://host:port."""
    token = body.ray_token.get_secret_value() if body.ray_token else None
    cluster = await clusters.connect(body.cluster_address, token)
    return ConnectResult(
        message=f"connected to {body.cluster_address} as {cluster.name}",
        cluster=cluster,
        external_nodes=_nodes_of(clusters, cluster.name),
    )


@router.delete("/cluster/disconnect-external")
async def disconnect_external(
    clusters: ClustersDep,
    cluster: Annotated[str | None, Query(description="Name or address of one cluster.")] = None,
) -> DisconnectResult:
    """Disconnect every external cluster, or the one named; its endpoints go away."""
    names = await clusters.disconnect(cluster)
    return DisconnectResult(message=f"disconnected {', '.join(names)}", disconnected=names)
