"""Finding the Ray clusters running on this machine, and what their dashboards say of them.

Ray records each running cluster in the command line of its raylets: ``--gcs-address``,
``--webui`` (the dashboard), ``--session-name``, ``--temp_dir`` and the node's IP. Reading
those finds every live cluster whatever its ports or temp dir, and never a stale session
directory of one that has stopped. Each dashboard is then asked, in parallel and briefly,
for its Ray version, its authentication mode and its nodes.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field

import httpx
import psutil

from castray.models import DiscoveredCluster

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 0.35
"""Seconds a dashboard gets to answer; discovery as a whole stays under half a second."""


@dataclass
class LocalCluster:
    """A cluster as its raylets on this machine show it."""

    gcs_address: str
    dashboard: str | None = None
    session_name: str | None = None
    temp_dir: str | None = None
    node_ips: set[str] = field(default_factory=set)


def _flag(command: str, *names: str) -> str | None:
    """A ``--name=value`` anywhere in a raylet's command line, nested commands included
    (the dashboard address only appears inside the worker command the raylet is given)."""
    for name in names:
        match = re.search(rf"(?:^|\s){re.escape(name)}=(\S*)", command)
        if match:
            return match[1]
    return None


def scan_local_clusters() -> dict[str, LocalCluster]:
    """Live clusters on this machine, by GCS address (reads process command lines)."""
    found: dict[str, LocalCluster] = {}
    for process in psutil.process_iter(["name", "cmdline"]):
        args = process.info.get("cmdline") or []
        if not args or not (process.info.get("name") == "raylet" or args[0].endswith("/raylet")):
            continue
        command = " ".join(args)
        gcs = _flag(command, "--gcs-address", "--gcs_address")
        if not gcs:
            continue
        cluster = found.setdefault(gcs, LocalCluster(gcs))
        cluster.dashboard = cluster.dashboard or _flag(command, "--webui") or None
        cluster.session_name = cluster.session_name or _flag(command, "--session-name")
        cluster.temp_dir = cluster.temp_dir or _flag(command, "--temp_dir", "--temp-dir")
        ip = _flag(command, "--node_ip_address", "--node-ip-address")
        if ip:
            cluster.node_ips.add(ip)
    return found


async def probe(
    http: httpx.AsyncClient, cluster: LocalCluster, token: str | None, connected: bool
) -> DiscoveredCluster:
    """What the cluster's dashboard says; unreachable or refusing dashboards are reported."""
    url = f"http://{cluster.dashboard}" if cluster.dashboard else None
    result = DiscoveredCluster(
        gcs_address=cluster.gcs_address,
        dashboard_url=url,
        session_name=cluster.session_name,
        temp_dir=cluster.temp_dir,
        local_node_ips=sorted(cluster.node_ips),
        connected=connected,
    )
    if url is None:
        return result.model_copy(update={"detail": "started without a dashboard"})
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        mode, version, nodes = await asyncio.gather(
            http.get(f"{url}/api/authentication_mode"),
            http.get(f"{url}/api/version", headers=headers),
            http.get(f"{url}/api/v0/nodes", headers=headers),
        )
    except httpx.HTTPError as exc:
        return result.model_copy(update={"detail": f"dashboard {url} did not answer: {exc!r}"})
    update: dict[str, object] = {"reachable": True}
    if mode.is_success:
        update["auth_required"] = mode.json().get("authentication_mode") == "token"
    if version.status_code in (401, 403):
        update["detail"] = "needs a Ray token (RAY_AUTH_TOKEN, ~/.ray/auth_token or ray_token)"
        return result.model_copy(update=update)
    if version.is_success:
        body = version.json()
        update["ray_version"] = body.get("ray_version")
        update["session_name"] = body.get("session_name") or cluster.session_name
    if nodes.is_success:
        listed = nodes.json()["data"]["result"]["result"]
        alive = [n for n in listed if n.get("state") == "ALIVE"]
        resources: dict[str, float] = {}
        for node in alive:
            for name, amount in (node.get("resources_total") or {}).items():
                if not name.startswith("node:"):
                    resources[name] = resources.get(name, 0.0) + amount
        update["alive_nodes"] = len(alive)
        update["resources"] = resources
    return result.model_copy(update=update)


async def discover(
    exclude: set[str], connected: set[str], token: str | None
) -> list[DiscoveredCluster]:
    """Every cluster on this machine but those in ``exclude`` (by GCS address)."""
    local = await asyncio.to_thread(scan_local_clusters)
    candidates = [c for gcs, c in sorted(local.items()) if gcs not in exclude]
    async with httpx.AsyncClient(timeout=PROBE_TIMEOUT) as http:
        return list(
            await asyncio.gather(
                *(probe(http, c, token, c.gcs_address in connected) for c in candidates)
            )
        )
