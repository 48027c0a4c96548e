"""Finding the Ray clusters on this machine, what their dashboards say, and which one a user
most likely means.

The processes on this machine name every live cluster (``local_clusters``); each dashboard is
then asked, in parallel and briefly, for its Ray version, its authentication mode and its
nodes. When asked to connect one, discovery chooses exactly as Ray's own tools do
(``canonicalize_bootstrap_address_or_die`` in ``ray/_private/services.py``): the cluster
``RAY_ADDRESS`` names; else the cluster the last ``ray start`` recorded (``ray_current_cluster``
in Ray's temp dir), when it is alive and CastRay can join it; else the only cluster CastRay can
join, if there is exactly one. Otherwise it connects nothing and says which clusters there are
and how to pick one: on a machine where several clusters of one user run (a shared account, a
CI runner), guessing would join someone else's. A cluster run by another user is listed, with
its owner, but never chosen: it is connected only when a user asks by address.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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


@dataclass(frozen=True)
class NoChoice:
    """Why discovery connects nothing, with the clusters a user may pick from."""

    reason: str
    candidates: list[DiscoveredCluster]


HOW_TO_PICK = (
    'pick one: POST /api/cluster/connect-external {"cluster_address": "<GCS or dashboard>"} '
    "('castray clusters connect ADDRESS'), or start CastRay with RAY_ADDRESS=<GCS address>"
)


def recorded_address() -> str | None:
    """The GCS address Ray recorded for the cluster the last ``ray start`` on this machine
    started (``<temp>/ray/ray_current_cluster``, found as Ray finds its default temp dir)."""
    if "RAY_TMPDIR" in os.environ:
        base = os.environ["RAY_TMPDIR"]
    elif sys.platform.startswith("linux") and "TMPDIR" in os.environ:
        base = os.environ["TMPDIR"]
    elif sys.platform.startswith(("linux", "darwin")):
        base = "/tmp"  # noqa: S108 - where Ray itself looks, whatever tempfile says
    else:
        base = tempfile.gettempdir()
    try:
        text = (Path(base) / "ray" / "ray_current_cluster").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return text or None


def choose(
    found: list[DiscoveredCluster],
    named: str | None,
    named_cluster: LocalCluster | None,
    recorded: LocalCluster | None,
) -> Choice | NoChoice:
    """The cluster to connect, by Ray's own rule (see the module docstring): ``named`` is
    ``RAY_ADDRESS`` (and ``named_cluster`` the cluster it points at), ``recorded`` the cluster
    of the last ``ray start``. Clusters already connected count: the answer may be one."""
    joinable = [c for c in found if c.own and _joinable(c)]
    if named is not None:
        return _named(found, joinable, named, named_cluster)
    if recorded is not None:
        for cluster in joinable:
            if cluster.gcs_address == recorded.gcs_address:
                return Choice(
                    cluster,
                    "it is the cluster the last 'ray start' on this machine started, as Ray "
                    f"recorded it (the one 'ray status' uses){_started(cluster)}",
                )
    if len(joinable) == 1:
        return Choice(
            joinable[0],
            f"it is the only Ray cluster of yours CastRay can join{_started(joinable[0])}",
        )
    if not joinable:
        return NoChoice(
            f"found {len(found)} Ray cluster(s), none of yours that CastRay can join without "
            "being told (see each cluster's detail); connect one with POST "
            "/api/cluster/connect-external",
            [],
        )
    listed = "; ".join(_describe(c) for c in joinable)
    return NoChoice(
        f"found {len(joinable)} Ray clusters of yours that CastRay can join ({listed}), and "
        "neither RAY_ADDRESS nor Ray's record of the last 'ray start' says which is meant; "
        "nothing was connected: " + HOW_TO_PICK,
        joinable,
    )


def _named(
    found: list[DiscoveredCluster],
    joinable: list[DiscoveredCluster],
    named: str,
    cluster: LocalCluster | None,
) -> Choice | NoChoice:
    """``RAY_ADDRESS`` decides alone, as it does for Ray: no other cluster is guessed."""
    match = next((c for c in found if cluster and c.gcs_address == cluster.gcs_address), None)
    if match is None:
        why = f"RAY_ADDRESS is {named!r}, which names no Ray cluster running on this machine"
    elif match not in joinable:
        owner = "" if match.own else f" (run by {match.owner or 'another user'})"
        detail = match.detail or "CastRay cannot join it"
        why = f"RAY_ADDRESS names the cluster at {match.gcs_address}{owner}: {detail}"
    else:
        return Choice(match, "it is the cluster RAY_ADDRESS names")
    return NoChoice(f"{why}; nothing was connected: " + HOW_TO_PICK, joinable)


def _started(cluster: DiscoveredCluster) -> str:
    return f" (started {cluster.started_at:%H:%M:%S} UTC)" if cluster.started_at else ""


def _describe(cluster: DiscoveredCluster) -> str:
    started = f", started {cluster.started_at:%Y-%m-%d %H:%M:%S} UTC" if cluster.started_at else ""
    dashboard = f", dashboard {cluster.dashboard_url}" if cluster.dashboard_url else ""
    return f"GCS {cluster.gcs_address}{dashboard}, run by {cluster.owner or '?'}{started}"


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
