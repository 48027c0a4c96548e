"""The server's live picture of clusters and endpoints, kept fresh by agent messages.

Every API read is answered from here, never by asking Ray. A node's status as users see it
is derived: an endpoint of a cluster that is not connected is ``dead``, whatever its agent
last said, so losing a cluster needs no per-endpoint bookkeeping.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from castray.errors import ClusterUnavailable, NodeNotFound
from castray.models import (
    ClusterConnectedEvent,
    ClusterDisconnectedEvent,
    ClusterInfo,
    ClusterLostEvent,
    ClusterStatus,
    ClusterUnreachableEvent,
    EndpointState,
    Node,
    NodeAddedEvent,
    NodeCounters,
    NodeRemovedEvent,
    NodeStatus,
    NodeStatusEvent,
    NodeUpdatedEvent,
    RayClusterState,
    StatusResponse,
)
from castray.server.events import EventHub


@dataclass
class _Cluster:
    name: str
    is_home: bool
    is_external: bool
    status: ClusterStatus = ClusterStatus.STARTING
    detail: str | None = None
    ray: RayClusterState | None = None
    last_seen: float = field(default_factory=time.monotonic)
    connected_at: datetime | None = None
    endpoints: dict[str, EndpointState] = field(default_factory=dict)


class Registry:
    """Clusters (home first) and their endpoints; bumps ``version`` on every visible change."""

    def __init__(
        self, events: EventHub | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._events = events or EventHub()
        self._clock = clock
        self._clusters: dict[str, _Cluster] = {}
        self._owner: dict[str, str] = {}
        self._waiters: set[asyncio.Future[None]] = set()
        self._status_cache: tuple[tuple[int, int], bytes] | None = None
        self._reported: dict[str, NodeCounters] = {}
        """Each endpoint's counters as its agent last reported them."""
        self._carried: dict[str, NodeCounters] = {}
        """What earlier incarnations of each endpoint counted (an agent that started again,
        a cluster reconnected, starts from zero), and what the server counts itself: added
        to what its agent reports, so a node's counters never go down."""
        self.version = 0

    # ---- changes -------------------------------------------------------------------

    def add_cluster(self, name: str, *, is_home: bool, is_external: bool) -> None:
        self._clusters[name] = _Cluster(name=name, is_home=is_home, is_external=is_external)
        self._bump()

    def remove_cluster(self, name: str, reconnecting: bool = False) -> None:
        """Forget a cluster and its endpoints (after a disconnect; ``reconnecting``: to connect
        it again at once)."""
        cluster = self._clusters.pop(name, None)
        if cluster is None:
            return
        for endpoint_id in cluster.endpoints:
            self._owner.pop(endpoint_id, None)
            self._events.publish(NodeRemovedEvent(node_id=endpoint_id, cluster=name))
        self._events.publish(ClusterDisconnectedEvent(cluster=name, reconnecting=reconnecting))
        self._bump()

    def has_cluster(self, name: str) -> bool:
        return name in self._clusters

    def set_cluster_status(self, name: str, status: ClusterStatus, detail: str | None) -> None:
        cluster = self._clusters.get(name)
        if cluster is None:
            return
        if (cluster.status, cluster.detail) != (status, detail):
            cluster.status, cluster.detail = status, detail
            if status is ClusterStatus.LOST:
                self._events.publish(ClusterLostEvent(cluster=name, detail=detail))
            elif status is ClusterStatus.UNREACHABLE:
                self._events.publish(ClusterUnreachableEvent(cluster=name, detail=detail))
            self._bump()

    def cluster_seen(self, name: str, ray: RayClusterState) -> None:
        """A successful look at the cluster by its agent: its heartbeat."""
        cluster = self._clusters.get(name)
        if cluster is None:
            return
        cluster.last_seen = self._clock()
        newly = cluster.status is not ClusterStatus.CONNECTED
        changed = cluster.ray != ray or newly
        cluster.ray = ray
        cluster.status, cluster.detail = ClusterStatus.CONNECTED, None
        if newly:
            cluster.connected_at = datetime.now(timezone.utc)
            self._events.publish(ClusterConnectedEvent(cluster=name, address=ray.address))
        if changed:
            self._bump()

    def clusters_silent_for(self, seconds: float) -> list[str]:
        """Connected clusters whose agent has not reported a look for ``seconds``."""
        now = self._clock()
        return [
            c.name
            for c in self._clusters.values()
            if c.status is ClusterStatus.CONNECTED and now - c.last_seen > seconds
        ]

    def put_endpoint(self, cluster_name: str, endpoint: EndpointState) -> None:
        cluster = self._clusters.get(cluster_name)
        if cluster is None:
            return
        endpoint = endpoint.model_copy(update={"counters": self._carry(endpoint)})
        before = cluster.endpoints.get(endpoint.id)
        cluster.endpoints[endpoint.id] = endpoint
        self._owner[endpoint.id] = cluster_name
        node = _as_node(cluster, endpoint)
        if before is None:
            self._events.publish(NodeAddedEvent(node=node))
        elif before.status is not endpoint.status:
            self._events.publish(NodeStatusEvent(node=node))
        elif before != endpoint:
            self._events.publish(NodeUpdatedEvent(node=node))
        self._bump()

    def _carry(self, endpoint: EndpointState) -> NodeCounters:
        """The node's counters: what its agent reports, plus what earlier incarnations counted
        (a counter that went down means a new agent counting from zero)."""
        reported = endpoint.counters
        last = self._reported.get(endpoint.id)
        if last is not None and any(
            getattr(reported, name) < getattr(last, name) for name in NodeCounters.model_fields
        ):
            self._carried[endpoint.id] = self._carried.get(endpoint.id, NodeCounters()).plus(last)
        self._reported[endpoint.id] = reported
        return self._carried.get(endpoint.id, NodeCounters()).plus(reported)

    def count(self, endpoint_id: str, **increments: int) -> None:
        """Add to a node's counters what the server itself counts (a transfer it sent that
        ended, say)."""
        carried = self._carried.get(endpoint_id, NodeCounters())
        self._carried[endpoint_id] = carried.model_copy(
            update={k: getattr(carried, k) + v for k, v in increments.items()}
        )
        cluster_name = self._owner.get(endpoint_id)
        cluster = self._clusters.get(cluster_name) if cluster_name is not None else None
        if cluster is not None and endpoint_id in cluster.endpoints:
            reported = self._reported.get(endpoint_id, NodeCounters())
            self.put_endpoint(
                cluster_name,  # type: ignore[arg-type]
                cluster.endpoints[endpoint_id].model_copy(update={"counters": reported}),
            )

    def remove_endpoint(self, endpoint_id: str) -> None:
        cluster_name = self._owner.pop(endpoint_id, None)
        if cluster_name is not None and cluster_name in self._clusters:
            self._clusters[cluster_name].endpoints.pop(endpoint_id, None)
            self._events.publish(NodeRemovedEvent(node_id=endpoint_id, cluster=cluster_name))
            self._bump()

    def _bump(self) -> None:
        self.version += 1
        self._status_cache = None
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate`` holds, re-checking after each change; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.add(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                return predicate()
        return True

    # ---- reads ---------------------------------------------------------------------

    def has_node(self, endpoint_id: str) -> bool:
        return endpoint_id in self._owner

    def cluster_of(self, endpoint_id: str) -> str:
        try:
            return self._owner[endpoint_id]
        except KeyError:
            raise NodeNotFound(
                f"no node {endpoint_id!r}; GET /api/nodes lists the nodes there are"
            ) from None

    def cluster_status(self, name: str) -> ClusterStatus:
        return self._clusters[name].status

    def cluster(self, name: str) -> ClusterInfo:
        """``ClusterUnavailable`` for one no longer attached: a caller that awaited something
        meanwhile (a connect whose cluster was lost under it, say) gets an answer it handles,
        not a ``StopIteration``."""
        found = next((c for c in self.clusters() if c.name == name), None)
        if found is None:
            raise detached(name)
        return found

    def node(self, endpoint_id: str) -> Node:
        cluster = self._clusters[self.cluster_of(endpoint_id)]
        return _as_node(cluster, cluster.endpoints[endpoint_id])

    def nodes(self) -> list[Node]:
        return [_as_node(c, e) for c in self._clusters.values() for e in c.endpoints.values()]

    def clusters(self) -> list[ClusterInfo]:
        return [
            ClusterInfo(
                name=c.name,
                is_home=c.is_home,
                is_external=c.is_external,
                status=c.status,
                detail=c.detail,
                ray=c.ray,
                connected_at=c.connected_at,
            )
            for c in self._clusters.values()
        ]

    def status(self, uptime: float) -> StatusResponse:
        nodes = self.nodes()
        clusters = self.clusters()
        home = next((c for c in clusters if c.is_home), None)
        return StatusResponse(
            total_nodes=len(nodes),
            active_nodes=_count(nodes, lambda n: n.status is NodeStatus.ALIVE),
            external_nodes_count=_count(nodes, lambda n: n.is_external),
            node_statuses=nodes,
            ray_cluster=home.ray if home else None,
            clusters=clusters,
            uptime=uptime,
        )

    def status_json(self, uptime: float) -> bytes:
        """``status`` serialised, reused while nothing changed within the same second."""
        key = (self.version, int(uptime))
        if self._status_cache is None or self._status_cache[0] != key:
            body = self.status(float(int(uptime))).model_dump_json().encode()
            self._status_cache = (key, body)
        return self._status_cache[1]


def _as_node(cluster: _Cluster, endpoint: EndpointState) -> Node:
    status = endpoint.status if cluster.status is ClusterStatus.CONNECTED else NodeStatus.DEAD
    return Node(
        **endpoint.model_dump(exclude={"status"}),
        status=status,
        cluster=cluster.name,
        is_external=cluster.is_external,
    )


def _count(nodes: Iterable[Node], predicate: Callable[[Node], bool]) -> int:
    return sum(1 for n in nodes if predicate(n))


def detached(name: str) -> ClusterUnavailable:
    return ClusterUnavailable(
        f"cluster {name!r} is no longer attached; GET /api/status lists the clusters there are"
    )
