"""Finding the Ray clusters on this machine, what their dashboards say, and which one a user
most likely means.

The processes on this machine name every live cluster (``local_clusters``); each dashboard is
then asked, in parallel and briefly, for its Ray version, its authentication mode and its
nodes. When asked to connect one, discovery chooses like Ray's own tools do: the cluster
``RAY_ADDRESS`` names, then the most recently started of the clusters run by CastRay's own
user ("the latest cluster", as ``ray status`` puts it). A cluster run by another user is
listed, with its owner, but never chosen: it is connected only when a user asks by address.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from castray.models import DiscoveredCluster
from castray.ray_address import AGENT_RAY_VERSION, Answer, probe_dashboard
from castray.server.local_clusters import LocalCluster
from castray.server.ray_token import RayTokens

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Choice:
    """The cluster discovery would connect, and why, in words for the user."""

    cluster: DiscoveredCluster
    reason: str


async def probe(
    http: httpx.AsyncClient, cluster: LocalCluster, token: str | None, connected: bool
) -> DiscoveredCluster:
    """What the cluster's processes and its dashboard say; refusals are reported, not raised."""
    url = f"http://{cluster.dashboard}" if cluster.dashboard else None
    client = min(cluster.client_ports) if cluster.client_ports else None
    result = DiscoveredCluster(
        gcs_address=cluster.gcs_address,
        dashboard_url=url,
        ray_client_address=f"ray://{cluster.gcs_address.rpartition(':')[0]}:{client}"
        if client
        else None,
        ray_version=cluster.ray_version,
        session_name=cluster.session_name,
        temp_dir=cluster.temp_dir,
        local_node_ips=sorted(cluster.node_ips),
        owner=cluster.owner,
        own=cluster.is_own,
        started_at=cluster.started,
        connected=connected,
    )
    if url is None:
        return result.model_copy(update={"detail": "started without a dashboard"})
    facts = await probe_dashboard(http, url, token)
    if facts.answer is not Answer.RAY:
        return result.model_copy(update={"detail": f"its dashboard {url} did not answer"})
    update: dict[str, object] = {
        "reachable": True,
        "auth_required": facts.auth_required,
        "ray_version": facts.ray_version or cluster.ray_version,
        "session_name": facts.session_name or cluster.session_name,
    }
    if facts.needs_token or facts.token_refused:
        what = "refused the Ray token" if facts.token_refused else "needs a Ray token"
        update["detail"] = f"{what}: connect it with ray_token"
        return result.model_copy(update=update)
    if update["ray_version"] not in (None, AGENT_RAY_VERSION):
        update["detail"] = f"runs Ray {update['ray_version']}; CastRay runs Ray {AGENT_RAY_VERSION}"
    headers = {"Authorization": f"Bearer {token}"} if facts.auth_required and token else {}
    try:
        nodes = await http.get(f"{url}/api/v0/nodes", headers=headers)
        listed = nodes.json()["data"]["result"]["result"] if nodes.is_success else None
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        listed = None
    if isinstance(listed, list):
        alive = [n for n in listed if isinstance(n, dict) and n.get("state") == "ALIVE"]
        resources: dict[str, float] = {}
        for node in alive:
            for name, amount in (node.get("resources_total") or {}).items():
                if isinstance(amount, int | float) and not str(name).startswith("node:"):
                    resources[str(name)] = resources.get(str(name), 0.0) + float(amount)
        update["alive_nodes"] = len(alive)
        update["resources"] = resources
    return result.model_copy(update=update)


async def discover(
    local: dict[str, LocalCluster],
    exclude: Callable[[LocalCluster], bool],
    connected: Callable[[LocalCluster], bool],
    tokens: RayTokens,
    timeout: float,
) -> list[DiscoveredCluster]:
    """Every cluster in ``local`` but the excluded, probed in parallel, newest first."""
    candidates = [c for c in local.values() if not exclude(c)]
    candidates.sort(key=lambda c: c.started_at, reverse=True)
    async with httpx.AsyncClient(timeout=timeout) as http:
        return list(
            await asyncio.gather(
                *(
                    probe(http, c, tokens.for_cluster(c, None, None), connected(c))
                    for c in candidates
                )
            )
        )


def choose(found: list[DiscoveredCluster], named: LocalCluster | None) -> Choice | None:
    """The cluster to connect: ``RAY_ADDRESS``'s (``named``), else the newest of the user's
    own clusters that is not connected and can be joined; never another user's."""
    joinable = [c for c in found if c.own and not c.connected and _joinable(c)]
    if named is not None:
        for cluster in joinable:
            if cluster.gcs_address == named.gcs_address:
                return Choice(cluster, "it is the cluster RAY_ADDRESS names")
    if not joinable:
        return None
    newest = joinable[0]
    started = f" (started {newest.started_at:%H:%M:%S} UTC)" if newest.started_at else ""
    if newest is next(c for c in found if c.own):
        return Choice(newest, f"it is the most recently started of your Ray clusters{started}")
    return Choice(
        newest,
        "it is the most recently started of your Ray clusters that CastRay can join and has "
        f"not connected yet{started}",
    )


def _joinable(cluster: DiscoveredCluster) -> bool:
    """A dashboard answered, with CastRay's Ray version, and no token is missing."""
    return cluster.reachable and cluster.ray_version == AGENT_RAY_VERSION and cluster.detail is None


def others_note(found: list[DiscoveredCluster]) -> str:
    """A sentence about the clusters of other users, which discovery never connects."""
    others = [c for c in found if not c.own]
    if not others:
        return ""
    owners = ", ".join(sorted({c.owner or "?" for c in others}))
    return (
        f". {len(others)} cluster(s) of other users ({owners}) are listed but not connected: "
        "connect one by its address if it is meant"
    )
