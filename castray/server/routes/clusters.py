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
from castray.server.discovery import Choice, NoChoice, others_note

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
    """Find the Ray clusters on this machine and connect the one Ray's own tools would use:
    the one ``RAY_ADDRESS`` names, else the one the last ``ray start`` recorded, else the only
    one CastRay can join. With several and nothing to tell them apart, nothing is connected
    (``success`` false) and ``candidates`` lists them. Other users' clusters are listed, never
    connected here."""
    found, choice, connected = await clusters.discover_and_connect()
    if isinstance(choice, Choice) and connected is not None:
        gcs = choice.cluster.gcs_address
        done = (
            "external cluster {} (GCS {}) was connected already"
            if choice.cluster.connected
            else "connected external cluster {} (GCS {})"
        )
        message = f"{done.format(connected.name, gcs)}: {choice.reason}"
        chosen, reason, candidates = gcs, choice.reason, []
    else:
        assert isinstance(choice, NoChoice)
        message = NONE_RUNNING if not found else choice.reason
        chosen, reason, candidates = None, None, [c.gcs_address for c in choice.candidates]
    message += others_note(found)
    return DiscoverExternalResult(
        success=connected is not None,
        message=message,
        discovered_clusters=found,
        chosen=chosen,
        cluster=connected.name if connected is not None else None,
        reason=reason,
        candidates=candidates,
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
