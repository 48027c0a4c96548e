"""External clusters, with the shapes of the user's manual (``success`` fields included)."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query

from castray.models import (
    ClusterStatus,
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
from castray.server.discovery import others_note

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
    """Find the Ray clusters on this machine and connect the one the user most likely means:
    the one ``RAY_ADDRESS`` names, else the most recently started of the user's own clusters
    not yet connected. Other users' clusters are listed, never connected here."""
    found, choice, connected = await clusters.discover_and_connect()
    any_connected = any(c.status is ClusterStatus.CONNECTED for c in clusters.external_clusters())
    if not found:
        message = NONE_RUNNING
    elif choice is not None and connected is not None:
        gcs = choice.cluster.gcs_address
        message = f"connected external cluster {connected.name} (GCS {gcs}): {choice.reason}"
    elif any_connected and any(c.own and c.connected for c in found):
        message = "every Ray cluster of yours with an answering dashboard is connected already"
    elif not any(c.own for c in found):
        message = f"found {len(found)} Ray cluster(s), none run by you"
    else:
        message = (
            f"found {len(found)} cluster(s), none that CastRay can join without being told: "
            "see each cluster's detail, and connect one with POST /api/cluster/connect-external"
        )
    message += others_note(found)
    return DiscoverExternalResult(
        success=connected is not None or any_connected,
        message=message,
        discovered_clusters=found,
        chosen=choice.cluster.gcs_address if choice else None,
        reason=choice.reason if choice else None,
        connected_cluster=clusters.latest_dashboard(),
        external_nodes=_nodes_of(clusters),
    )


@router.get("/cluster/external-info")
async def external_info(clusters: ClustersDep) -> ExternalInfo:
    """The external clusters and their nodes; ``connected_cluster`` is the dashboard of the
    cluster connected most recently."""
    connected = clusters.external_clusters()
    return ExternalInfo(
        is_connected=any(c.status is ClusterStatus.CONNECTED for c in connected),
        connected_cluster=clusters.latest_dashboard(),
        external_nodes=_nodes_of(clusters),
        clusters=connected,
    )


@router.get("/nodes/external")
async def external_nodes(clusters: ClustersDep) -> ExternalNodes:
    """Every endpoint of the external clusters, with its status (``dead`` ones included)."""
    nodes = clusters.external_nodes()
    return ExternalNodes(external_nodes=nodes, count=len(nodes))


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
