"""External clusters: discover them, resolve what a user typed, connect and disconnect.

Connecting checks the address before any agent starts, so a bogus or unreachable address
is answered within seconds with what was tried: is a Ray dashboard there (its version and
authentication mode), is a GCS there. A dashboard is mapped to its GCS through the raylets
on this machine; for a cluster elsewhere, give its GCS ``host:port`` or ``ray://`` address.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass
from importlib.metadata import version

import httpx

from castray.addresses import AddressKind, RayAddress, parse_address
from castray.config import Settings
from castray.errors import (
    ClusterUnreachable,
    Forbidden,
    NotFound,
    Unauthorized,
    VersionMismatch,
)
from castray.models import ClusterInfo, ClusterStatus, DiscoveredCluster, Node
from castray.server.discovery import LocalCluster, discover, scan_local_clusters
from castray.server.events import EventHub
from castray.server.ray_token import local_ray_token
from castray.server.registry import Registry
from castray.server.supervisor import HOME, Supervisor

RAY_VERSION = version("ray")
"""The Ray version CastRay's agents run (the server itself never imports Ray)."""

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 3.0
"""Seconds for each check of an address given to connect."""


@dataclass(frozen=True)
class _Target:
    """Where a driver joins (``driver_address``) and what the dashboard said, if any."""

    driver_address: str
    name: str
    dashboard: str | None
    auth_required: bool
    on_loopback: bool = False
    """The cluster's raylets here record a 127.0.0.1 GCS: the driver must join it there."""


class ClusterService:
    def __init__(
        self, settings: Settings, registry: Registry, supervisor: Supervisor, events: EventHub
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._supervisor = supervisor
        self._events = events
        self._lock = asyncio.Lock()

    # ---- reads ---------------------------------------------------------------------------

    def external_clusters(self) -> list[ClusterInfo]:
        return [c for c in self._registry.clusters() if c.is_external]

    def external_nodes(self) -> list[Node]:
        return [n for n in self._registry.nodes() if n.is_external]

    def first_dashboard(self) -> str | None:
        """The manual's ``connected_cluster``: the first connected cluster's dashboard."""
        for cluster in self.external_clusters():
            if cluster.status is ClusterStatus.CONNECTED and cluster.ray is not None:
                url = cluster.ray.dashboard_url or cluster.ray.address
                return url.split("://", 1)[-1]
        return None

    async def discover(self) -> list[DiscoveredCluster]:
        """Clusters on this machine other than CastRay's home, connected ones marked."""
        home = self._registry.cluster(HOME).ray
        exclude = {home.address} if home else set()
        connected = {c.ray.address for c in self.external_clusters() if c.ray is not None}
        found = await discover(exclude, connected, local_ray_token())
        for cluster in found:
            if not cluster.connected:
                self._events.publish("cluster_discovered", cluster=cluster.model_dump(mode="json"))
        return found

    # ---- changes -------------------------------------------------------------------------

    async def discover_and_connect(self) -> tuple[list[DiscoveredCluster], ClusterInfo | None]:
        """Connect the first discovered cluster not yet connected whose dashboard answered.

        A cluster without an answering dashboard (such as another CastRay's private embedded
        cluster) is listed but left alone: connect it by its GCS address if it is meant.
        """
        found = await self.discover()
        candidates = [c for c in found if c.reachable and not c.connected]
        if not candidates:
            return found, None
        return found, await self.connect(candidates[0].gcs_address, None)

    async def connect(self, address: str, ray_token: str | None) -> ClusterInfo:
        """Connect an external cluster (idempotent); errors say what was tried."""
        parsed = parse_address(address)
        token = ray_token or local_ray_token()
        async with self._lock:
            target = await self._resolve(parsed, token, explicit=ray_token is not None)
            if self._supervisor.is_connected(target.name):
                return self._registry.cluster(target.name)
            home = self._registry.cluster(HOME).ray
            if home is not None and home.address == target.driver_address:
                raise NotFound(f"{address} is CastRay's own home cluster, not an external one")
            await self._supervisor.connect(
                target.name,
                target.driver_address,
                token if target.auth_required else None,
                stay_on_loopback=target.on_loopback,
            )
            return self._registry.cluster(target.name)

    async def disconnect(self, address: str | None) -> list[str]:
        """Disconnect one cluster (by name, GCS or dashboard address) or all; their names."""
        clusters = self.external_clusters()
        if address is not None:
            clusters = [c for c in clusters if _matches(c, address)]
        if not clusters:
            what = f"cluster {address!r}" if address else "external cluster"
            raise NotFound(f"no connected {what}; GET /api/cluster/external-info lists them")
        for cluster in clusters:
            await self._supervisor.disconnect(cluster.name)
        return [c.name for c in clusters]

    # ---- resolving an address -------------------------------------------------------------

    async def _resolve(self, address: RayAddress, token: str | None, explicit: bool) -> _Target:
        if address.kind is AddressKind.CLIENT:
            return _Target(str(address), _name(address.host, address.port), None, token is not None)
        local = await asyncio.to_thread(scan_local_clusters)
        tried: list[str] = []
        async with httpx.AsyncClient(timeout=PROBE_TIMEOUT) as http:
            dashboard = await self._dashboard(http, address.http_url, token, explicit, tried)
            if dashboard is not None:
                gcs = _gcs_of_dashboard(local, address)
                if gcs is None:
                    raise ClusterUnreachable(
                        f"{address.http_url} is a Ray dashboard, but its cluster does not run "
                        "on this machine, so its GCS address is unknown: connect with the GCS "
                        "address (host:6379) or ray://host:10001"
                    )
                return _Target(gcs, _gcs_name(gcs), address.http_url, dashboard, _is_loopback(gcs))
            if address.kind is AddressKind.DASHBOARD:
                raise ClusterUnreachable(f"no Ray dashboard answers at {address}: {tried[-1]}")
            gcs = address.host_port
            cluster = local.get(gcs) or local.get(f"{_ip(address.host)}:{address.port}")
            if cluster is not None and cluster.dashboard:
                url = f"http://{cluster.dashboard}"
                auth = await self._dashboard(http, url, token, explicit, tried)
                gcs = cluster.gcs_address
                return _Target(gcs, _gcs_name(gcs), url, bool(auth), _is_loopback(gcs))
        if not await _port_open(address.host, address.port):
            tried.append(f"GCS {gcs}: nothing listens there")
            raise ClusterUnreachable(f"cannot connect to {address}: tried " + "; ".join(tried))
        return _Target(gcs, _gcs_name(gcs), None, token is not None)

    async def _dashboard(
        self,
        http: httpx.AsyncClient,
        url: str,
        token: str | None,
        explicit: bool,
        tried: list[str],
    ) -> bool | None:
        """Whether the Ray dashboard at ``url`` needs a token; None when none answers there."""
        try:
            mode = await http.get(f"{url}/api/authentication_mode")
        except httpx.HTTPError as exc:
            tried.append(f"dashboard {url}: {type(exc).__name__}")
            return None
        if not mode.is_success or "authentication_mode" not in _json(mode):
            # Whatever serves plain HTTP there is neither a Ray dashboard nor a GCS (gRPC).
            raise ClusterUnreachable(
                f"{url} answers HTTP, but not as a Ray dashboard (GET /api/authentication_mode: "
                f"{mode.status_code}); give the cluster's dashboard or GCS address"
            )
        auth = _json(mode)["authentication_mode"] == "token"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        version = await http.get(f"{url}/api/version", headers=headers)
        if version.status_code == 401 or (version.status_code == 403 and not token):
            raise Unauthorized(
                f'the Ray cluster at {url} requires a Ray token: pass "ray_token", or set '
                "RAY_AUTH_TOKEN (or ~/.ray/auth_token) for CastRay"
            )
        if version.status_code == 403:
            where = "given" if explicit else "found on this machine"
            raise Forbidden(f"the Ray cluster at {url} refused the Ray token {where}")
        theirs = _json(version).get("ray_version")
        if theirs and theirs != RAY_VERSION:
            raise VersionMismatch(
                f"the cluster at {url} runs Ray {theirs}, CastRay runs Ray {RAY_VERSION}: "
                "a driver can only join a cluster of its own Ray version"
            )
        return auth


def _gcs_of_dashboard(local: dict[str, LocalCluster], address: RayAddress) -> str | None:
    wanted = {address.host_port, f"{_ip(address.host)}:{address.port}"}
    for cluster in local.values():
        dashboard = cluster.dashboard or ""
        host, _, port = dashboard.rpartition(":")
        if dashboard in wanted or (host == "0.0.0.0" and port == str(address.port)):
            return cluster.gcs_address
    return None


def _ip(host: str) -> str:
    try:
        return socket.gethostbyname(host.strip("[]"))
    except OSError:
        return host


async def _port_open(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host.strip("[]"), port), PROBE_TIMEOUT
        )
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


def _json(response: httpx.Response) -> dict[str, object]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _is_loopback(gcs: str) -> bool:
    """The hosts Ray replaces by the primary IP when joining (127.0.0.N, N >= 2, it keeps)."""
    return gcs.rpartition(":")[0].strip("[]") in {"127.0.0.1", "localhost", "::1"}


def _name(host: str, port: int) -> str:
    return f"ext-{host.strip('[]').replace(':', '.')}-{port}"


def _gcs_name(gcs: str) -> str:
    host, _, port = gcs.rpartition(":")
    return _name(host, int(port))


def _matches(cluster: ClusterInfo, address: str) -> bool:
    if address == cluster.name:
        return True
    if cluster.ray is None:
        return False
    given = address.split("://", 1)[-1].rstrip("/")
    dashboard = (cluster.ray.dashboard_url or "").split("://", 1)[-1]
    return given in {cluster.ray.address, dashboard}
