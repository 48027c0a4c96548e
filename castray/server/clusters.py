"""External clusters: discover them, resolve what a user typed, connect and disconnect.

One Ray cluster is one CastRay cluster, whatever address the user typed: its identity is the
GCS address Ray reports (127.0.0.1 and this machine's own IPs being one host) and its session
name. Connecting checks the address before any agent starts, so a bogus or unreachable
address is answered within seconds, and a cluster already connected is answered at once. A
cluster shown ``lost`` or ``unreachable`` is reconnected with a fresh agent; one that came back
under a new session keeps its CastRay name and gets fresh endpoints. Probing an address holds
no lock; connecting holds only the lock of that one cluster.

A connected cluster stays wanted until the user disconnects it: when its agent dies or its
cluster stops answering, it is reconnected by itself, with back-off, as soon as its address
answers again (a look at a dead address costs a refused TCP connection, not an agent).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, replace

import httpx

from castray.config import Settings
from castray.errors import CastRayError, ClusterUnreachable, Conflict, InvalidRequest, NotFound
from castray.models import (
    ClusterDiscoveredEvent,
    ClusterInfo,
    ClusterStatus,
    DiscoveredCluster,
    Node,
)
from castray.protocol import TransferMessage
from castray.ray_address import (
    AGENT_RAY_VERSION,
    AddressKind,
    Answer,
    DashboardFacts,
    RayAddress,
    grpc_answers,
    parse_address,
    probe_dashboard,
    resolve_host,
    same_endpoint,
    split_host_port,
    token_missing,
    token_refused,
    unreachable,
    version_mismatch,
)
from castray.server import local_clusters
from castray.server.discovery import Choice, NoChoice, choose, discover, recorded_address
from castray.server.events import EventHub
from castray.server.history import History
from castray.server.local_clusters import LocalCluster
from castray.server.logs import about
from castray.server.ray_token import RayTokens
from castray.server.registry import Registry
from castray.server.supervisor import HOME, Supervisor

log = logging.getLogger(__name__)

HEAL_FIRST_DELAY = 1.0
"""Seconds before the first attempt to reconnect a cluster that went down; doubling after."""
HEAL_MAX_DELAY = 15.0
"""Seconds between attempts to reconnect a cluster that stays down, at most."""
UNREACHABLE_ANSWER_PROBES = 2
"""An unreachable address is answered no sooner than this many probe timeouts (a dashboard
probe and a gRPC probe): what a port that is open but not Ray's takes anyway."""


@dataclass(frozen=True)
class _Target:
    """Where a driver joins, and what is known of the cluster before it does."""

    name: str
    driver_address: str
    """A GCS ``host:port``, or ``ray://host:port`` to join through Ray Client."""
    gcs: str | None
    session: str | None
    token: str | None
    """The Ray token the agent may use (only ever one this cluster may see)."""
    on_loopback: bool = False
    """The cluster's raylets here record a 127.0.0.1 GCS: the driver must join it there."""


class ClusterService:
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        supervisor: Supervisor,
        events: EventHub,
        tokens: RayTokens,
        history: History | None = None,
    ) -> None:
        self._history = history
        self._settings = settings
        self._registry = registry
        self._supervisor = supervisor
        self._events = events
        self._tokens = tokens
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._aliases: defaultdict[str, set[str]] = defaultdict(set)
        self._wanted: dict[str, tuple[str, str | None]] = {}
        """Connected clusters the user has not disconnected: the address and token given."""
        self._healing: dict[str, asyncio.Task[None]] = {}

    async def stop(self) -> None:
        """Stop reconnecting clusters (before the agents stop)."""
        self._wanted.clear()
        tasks = list(self._healing.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ---- reads ---------------------------------------------------------------------------

    def external_clusters(self) -> list[ClusterInfo]:
        return [c for c in self._registry.clusters() if c.is_external]

    def external_nodes(self) -> list[Node]:
        return [n for n in self._registry.nodes() if n.is_external]

    def latest_dashboard(self) -> str | None:
        """The manual's ``connected_cluster``: the dashboard (``host:port``) of the external
        cluster connected most recently, of those connected now."""
        connected = [
            c
            for c in self.external_clusters()
            if c.status is ClusterStatus.CONNECTED and c.ray is not None
        ]
        if not connected:
            return None
        latest = max(connected, key=lambda c: c.connected_at.timestamp() if c.connected_at else 0)
        assert latest.ray is not None
        return (latest.ray.dashboard_url or latest.ray.address).split("://", 1)[-1]

    async def discover(self) -> list[DiscoveredCluster]:
        """Clusters on this machine other than CastRay's home, newest first."""
        local = await asyncio.to_thread(local_clusters.scan)
        return await self._discover(local)

    async def _discover(self, local: dict[str, LocalCluster]) -> list[DiscoveredCluster]:
        found = await discover(
            local,
            exclude=self._is_home,
            connected=lambda c: _connected(self._known(c.gcs_address, c.session_name)),
            tokens=self._tokens,
            timeout=self._settings.probe_timeout,
        )
        for cluster in found:
            if not cluster.connected:
                self._events.publish(ClusterDiscoveredEvent(cluster=cluster))
        return found

    # ---- changes -------------------------------------------------------------------------

    async def discover_and_connect(
        self,
    ) -> tuple[list[DiscoveredCluster], Choice | NoChoice, ClusterInfo | None]:
        """Connect the cluster Ray's own rule names (see ``discovery.choose``), or nothing."""
        local = await asyncio.to_thread(local_clusters.scan)
        found = await self._discover(local)
        named, named_cluster = self._named_by_ray_address(local)
        recorded = await asyncio.to_thread(recorded_address)
        recorded_cluster = self._find_local(local, recorded) if recorded else None
        choice = choose(found, named, named_cluster, recorded_cluster)
        if isinstance(choice, NoChoice):
            log.info("discovery connected nothing: %s", choice.reason)
            return found, choice, None
        log.info("discovery chose %s: %s", choice.cluster.gcs_address, choice.reason)
        return found, choice, await self.connect(choice.cluster.gcs_address, None)

    async def connect(self, address: str, ray_token: str | None) -> ClusterInfo:
        """Connect an external cluster, or answer the one already connected; errors say what
        was tried. "Nothing answers as Ray there" takes as long whatever the port's state
        (refused, silent, or something else listening), so that connect is no port scanner."""
        parsed = parse_address(address)
        started = asyncio.get_running_loop().time()
        try:
            target = await self._resolve(parsed, ray_token)
        except ClusterUnreachable:
            floor = UNREACHABLE_ANSWER_PROBES * self._settings.probe_timeout
            await asyncio.sleep(max(0.0, started + floor - asyncio.get_running_loop().time()))
            raise
        async with self._locks[target.name]:
            try:
                connected = await self._connect(parsed, target)
            except CastRayError:
                self._wanted.pop(target.name, None)
                raise
            self._wanted[connected.name] = (str(parsed), ray_token)
            if self._history is not None:  # reconnected at the next start, until disconnected
                await asyncio.to_thread(
                    self._history.save_cluster, connected.name, str(parsed), ray_token
                )
            return connected

    async def _connect(self, parsed: RayAddress, target: _Target) -> ClusterInfo:
        """Connect ``target`` (reached by ``parsed``) under its lock."""
        existing = self._known(target.gcs, target.session) or self._by_name(target.name)
        if existing is not None and _connected(existing) and _same_session(existing, target):
            self._aliases[existing.name].add(str(parsed))
            return existing
        name = target.name
        if existing is not None:
            # Lost, unreachable, or restarted under a new session: a fresh agent, the
            # same name, fresh endpoints.
            log.info(
                "reconnecting cluster %s (%s)",
                existing.name,
                existing.status.value,
                extra=about(cluster=existing.name),
            )
            name = existing.name
            await self._supervisor.disconnect(existing.name, reconnecting=True)
        await self._supervisor.connect(
            name,
            target.driver_address,
            target.token,
            stay_on_loopback=target.on_loopback,
        )
        connected = self._registry.cluster(name)
        twin = self._twin_of(connected)
        if twin is not None:
            # Reached by an address that only told who it was once joined (ray:// elsewhere).
            await self._supervisor.disconnect(name)
            connected = twin
        self._aliases[connected.name].add(str(parsed))
        return connected

    async def disconnect(self, address: str | None) -> list[str]:
        """Disconnect one cluster (by name or any address that points at it) or all."""
        clusters = self.external_clusters()
        if address is not None:
            clusters = await self._matching(address, clusters)
        if not clusters:
            what = f"cluster {address!r}" if address else "external cluster"
            raise NotFound(f"no connected {what}; GET /api/cluster/external-info lists them")
        for cluster in clusters:
            self._wanted.pop(cluster.name, None)
            if self._history is not None:
                await asyncio.to_thread(self._history.forget_cluster, cluster.name)
            async with self._locks[cluster.name]:
                await self._supervisor.disconnect(cluster.name)
            self._aliases.pop(cluster.name, None)
        return [c.name for c in clusters]

    def restore(self) -> None:
        """At a start: the external clusters connected when CastRay last stopped (and not
        disconnected since) are listed ``lost`` and reconnected by themselves, as soon as
        they answer: their transfers can then be resumed."""
        if self._history is None:
            return
        for name, address, token in self._history.clusters():
            self._wanted[name] = (address, token)
            self._keep_listed(name, "it was connected when CastRay stopped; reconnecting it")
            self.on_cluster_down(name, "CastRay started again")

    # ---- healing -------------------------------------------------------------------------

    def on_transfer_message(self, message: TransferMessage) -> None:
        """Transfers are not this service's business."""

    def on_cluster_down(self, cluster: str, reason: str) -> None:
        """A wanted cluster went down (its agent died, or it stopped answering): reconnect it
        when it answers again."""
        if cluster in self._wanted and cluster not in self._healing:
            log.info(
                "cluster %s is down (%s); reconnecting it when it answers",
                cluster,
                reason,
                extra=about(cluster=cluster),
            )
            self._healing[cluster] = asyncio.create_task(
                self._heal(cluster), name=f"heal-{cluster}"
            )

    async def _heal(self, name: str) -> None:
        """Reconnect ``name`` with back-off until it is connected or no longer wanted."""
        delay = HEAL_FIRST_DELAY
        try:
            while True:
                await asyncio.sleep(delay)
                delay = min(2 * delay, HEAL_MAX_DELAY)
                if await self._healed(name):
                    return
        finally:
            self._healing.pop(name, None)

    async def _healed(self, name: str) -> bool:
        """One try at reconnecting ``name``: True once it is connected or no longer wanted."""
        wanted = self._wanted.get(name)
        if wanted is None or _connected(self._by_name(name)):
            return True
        address, token = wanted
        try:
            parsed = parse_address(address)
            target = await self._resolve(parsed, token)
        except CastRayError as exc:
            log.debug("cluster %s does not answer yet: %s", name, exc, extra=about(cluster=name))
            return False
        if target.name != name:
            return False  # the address leads elsewhere now; keep waiting for this cluster
        async with self._locks[name]:
            if self._wanted.get(name) != wanted or _connected(self._by_name(name)):
                return True
            try:
                await self._connect(parsed, target)
            except CastRayError as exc:
                self._keep_listed(name, f"could not reconnect: {exc}; trying again")
                return False
        log.info("cluster %s answers again: reconnected", name, extra=about(cluster=name))
        return True

    def _keep_listed(self, name: str, detail: str) -> None:
        """A wanted cluster stays listed, ``lost``, while it is being reconnected."""
        if not self._registry.has_cluster(name):
            self._registry.add_cluster(name, is_home=False, is_external=True)
        self._registry.set_cluster_status(name, ClusterStatus.LOST, detail)

    # ---- identity ------------------------------------------------------------------------

    def _known(self, gcs: str | None, session: str | None) -> ClusterInfo | None:
        """The external cluster that is this Ray cluster (same GCS, same session if known)."""
        if gcs is None:
            return None
        for cluster in self.external_clusters():
            ray = cluster.ray
            if ray is None or not same_endpoint(ray.address, gcs):
                continue
            if session is None or ray.session_name in (None, session):
                return cluster
        return None

    def _by_name(self, name: str) -> ClusterInfo | None:
        return self._registry.cluster(name) if self._registry.has_cluster(name) else None

    def _twin_of(self, cluster: ClusterInfo) -> ClusterInfo | None:
        """Another connected cluster with the same identity as ``cluster``."""
        ray = cluster.ray
        if ray is None:
            return None
        for other in self.external_clusters():
            if other.name == cluster.name or other.ray is None or not _connected(other):
                continue
            if ray.session_name is not None:
                if ray.session_name == other.ray.session_name:
                    return other
            elif same_endpoint(ray.address, other.ray.address):
                return other
        return None

    def _is_home(self, cluster: LocalCluster) -> bool:
        home = self._registry.cluster(HOME).ray
        if home is None:
            return False
        if home.session_name and cluster.session_name:
            return home.session_name == cluster.session_name
        return same_endpoint(home.address, cluster.gcs_address)

    def _named_by_ray_address(
        self, local: dict[str, LocalCluster]
    ) -> tuple[str | None, LocalCluster | None]:
        """``RAY_ADDRESS``, and the cluster on this machine it points at; ignored when unset,
        ``auto``, or when it names CastRay's own home (it was taken for that)."""
        named = os.environ.get("RAY_ADDRESS", "").strip()
        if not named or named in ("auto", "local"):
            return None, None
        cluster = self._find_local(local, named)
        if cluster is not None and self._is_home(cluster):
            return None, None
        return named, cluster

    @staticmethod
    def _find_local(local: dict[str, LocalCluster], address: str) -> LocalCluster | None:
        """The cluster on this machine at ``address`` (a GCS ``host:port`` as Ray records it,
        or what a user typed), if any."""
        if address in local:
            return local[address]
        try:
            return local_clusters.find(local, parse_address(address))
        except InvalidRequest:
            return None

    async def _matching(self, address: str, clusters: list[ClusterInfo]) -> list[ClusterInfo]:
        by_name = [c for c in clusters if c.name == address]
        if by_name:
            return by_name
        try:
            parsed = parse_address(address)
        except InvalidRequest:
            return []  # neither a name nor an address: nothing is connected by it
        local = await self._local_cluster(parsed)
        return [c for c in clusters if _points_at(c, parsed, local, self._aliases[c.name])]

    # ---- resolving an address ----------------------------------------------------------------

    async def _local_cluster(self, address: RayAddress) -> LocalCluster | None:
        """The cluster on this machine that ``address`` points at (a host name is resolved
        first, in a worker thread: a name of this machine points here too)."""
        local = await asyncio.to_thread(local_clusters.scan)
        ip = await resolve_host(address.host)
        return local_clusters.find(local, replace(address, host=ip if ":" not in ip else f"[{ip}]"))

    async def _resolve(self, address: RayAddress, given: str | None) -> _Target:
        """Where to join, checked: a Ray cluster of CastRay's Ray version, reachable, with the
        token it needs; raises the error a user can act on otherwise."""
        local = await self._local_cluster(address)
        token = self._tokens.for_cluster(local, address, given)
        if local is not None and local.ray_version not in (None, AGENT_RAY_VERSION):
            raise version_mismatch(address, local.ray_version)
        if local is not None and self._is_home(local):
            raise NotFound(f"{address} is CastRay's own home cluster, not an external one")
        timeout = self._settings.probe_timeout
        typed: DashboardFacts | None = None  # a Ray dashboard at the address typed
        facts: DashboardFacts | None = None  # what the cluster's dashboard said, wherever
        async with httpx.AsyncClient(timeout=timeout) as http:
            if address.kind is not AddressKind.CLIENT:
                typed = _ray_or_none(await probe_dashboard(http, address.http_url, token))
            facts = typed
            if facts is None and local is not None and local.dashboard:
                url = f"http://{local.dashboard}"
                facts = _ray_or_none(await probe_dashboard(http, url, token))
        if facts is not None:
            _check(address, facts, given is not None)
        if address.kind is AddressKind.CLIENT:
            return await self._client_target(address, local, facts, token)
        if typed is None and address.kind is AddressKind.DASHBOARD:
            raise unreachable(address)
        if typed is not None and local is None:
            raise unreachable(
                address,
                "it is a Ray dashboard, but its cluster does not run on this machine, so its "
                "GCS address is unknown: connect with the GCS address (host:6379) or "
                "ray://host:10001",
            )
        gcs = local.gcs_address if local is not None else address.host_port
        host, port = split_host_port(gcs)
        if not await grpc_answers(host, port, timeout):
            raise unreachable(address)
        return _Target(
            name=_name(host, port),
            driver_address=gcs,
            gcs=gcs,
            session=local.session_name if local else None,
            token=_agent_token(facts, token),
            on_loopback=host in {"127.0.0.1", "localhost", "::1"},
        )

    async def _client_target(
        self,
        address: RayAddress,
        local: LocalCluster | None,
        facts: DashboardFacts | None,
        token: str | None,
    ) -> _Target:
        if facts is not None and facts.auth_required:
            gcs = local.gcs_address if local else "its GCS address (host:6379)"
            raise Conflict(
                f"cannot join {address} through Ray Client: the cluster uses Ray token "
                f"authentication, and Ray {AGENT_RAY_VERSION}'s client server cannot start a "
                f"session with a token; connect with {gcs} instead"
            )
        if not await grpc_answers(address.bare_host, address.port, self._settings.probe_timeout):
            raise unreachable(address)
        if local is None:
            # A Ray Client server comes up seconds after its head: it may not have been
            # listening yet when the machine was looked at, only when it was asked.
            local = await self._local_cluster(address)
            if local is not None and self._is_home(local):
                raise NotFound(f"{address} is CastRay's own home cluster, not an external one")
        known_gcs = local.gcs_address if local is not None else None
        host, port = split_host_port(known_gcs) if known_gcs else (address.bare_host, address.port)
        return _Target(
            name=_name(host, port),
            driver_address=str(address),
            gcs=known_gcs,
            session=local.session_name if local else None,
            token=_agent_token(facts, token),
        )


def _check(address: RayAddress, facts: DashboardFacts, given: bool) -> None:
    """The dashboard's answer as the error it means, if it means one."""
    if facts.token_refused:
        raise token_refused(address, given)
    if facts.needs_token:
        raise token_missing(address)
    if facts.ray_version not in (None, "unknown", AGENT_RAY_VERSION):
        raise version_mismatch(address, facts.ray_version)


def _ray_or_none(facts: DashboardFacts) -> DashboardFacts | None:
    return facts if facts.answer is Answer.RAY else None


def _agent_token(facts: DashboardFacts | None, token: str | None) -> str | None:
    """A token for the agent only where the cluster asks for one (or cannot be asked)."""
    if facts is None:
        return token
    return token if facts.auth_required else None


def _same_session(cluster: ClusterInfo, target: _Target) -> bool:
    """False only when both sessions are known and differ (the cluster was restarted)."""
    known = cluster.ray.session_name if cluster.ray is not None else None
    return known is None or target.session is None or known == target.session


def _connected(cluster: ClusterInfo | None) -> bool:
    return cluster is not None and cluster.status is ClusterStatus.CONNECTED


def _points_at(
    cluster: ClusterInfo, address: RayAddress, local: LocalCluster | None, aliases: set[str]
) -> bool:
    if str(address) in aliases:
        return True
    ray = cluster.ray
    if ray is None:
        return False
    if local is not None and local.session_name and local.session_name == ray.session_name:
        return True
    dashboard = (ray.dashboard_url or "").split("://", 1)[-1]
    return same_endpoint(address.host_port, ray.address) or bool(
        dashboard and same_endpoint(address.host_port, dashboard)
    )


def _name(host: str, port: int) -> str:
    return f"ext-{host.strip('[]').replace(':', '.')}-{port}"
