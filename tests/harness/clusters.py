"""External clusters as a test sees them through the API: connect one, find its entry, its
endpoint, and the agent process that serves it."""

from __future__ import annotations

from typing import Any

import psutil

from tests.harness.raycluster import RayCluster
from tests.harness.server import CastRayServer


def name_of(cluster: RayCluster) -> str:
    """CastRay's name for a cluster joined by its GCS address."""
    return f"ext-{cluster.address.replace(':', '-')}"


def endpoint_of(cluster: RayCluster) -> str:
    """The automatic endpoint of the cluster's head node."""
    return f"{name_of(cluster)}-{cluster.head_ip}"


def connect(server: CastRayServer, cluster: RayCluster) -> dict[str, Any]:
    """``POST /api/cluster/connect-external`` by the GCS address; the answer, checked 200."""
    with server.client() as client:
        response = client.post(
            "/api/cluster/connect-external", json={"cluster_address": cluster.address}
        )
    assert response.status_code == 200, response.text
    return dict(response.json())


def info(server: CastRayServer, name: str) -> dict[str, Any] | None:
    """The cluster's entry in ``GET /api/cluster/external-info``, if it is listed."""
    with server.client() as client:
        listed = client.get("/api/cluster/external-info").json()["clusters"]
    return next((c for c in listed if c["name"] == name), None)


def agents(server: CastRayServer, cluster: str | None = None) -> list[psutil.Process]:
    """The server's agent processes (of one cluster, if named), wherever they were reparented:
    an agent's command line names the server's data folder and its cluster."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        command = " ".join(process.info.get("cmdline") or [])
        if "castray.agent" not in command or str(server.data_dir) not in command:
            continue
        if cluster is None or f'"cluster":"{cluster}"' in command:
            found.append(process)
    return found
