"""The endpoints of one cluster: deploys one per alive Ray node, tracks them, reports changes.

``refresh`` is called by the agent's main loop every poll interval; it is the only place that
looks at the cluster, so a join, a departure or an actor that stops answering shows up within
one interval. Requests (named endpoints) run on other threads, hence the lock.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import ray
from ray.exceptions import ActorDiedError, RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from castray.agent.connect import ClusterIdentity
from castray.agent.endpoint import EndpointActor, EndpointOptions
from castray.agent.reasons import reason
from castray.errors import NodeExists, NodeNotFound, NodeUnavailable, RayNodeNotFound
from castray.local import NAMESPACE, actor_name
from castray.models import EndpointState, NodeKind, NodeStatus, RayClusterState
from castray.protocol import AgentTunables, EndpointRemoved, EndpointUpdate

log = logging.getLogger(__name__)

HEAD_RESOURCE = "node:__internal_head__"
ABORT_GRACE = 0.5
"""Seconds endpoints get to drop their partial files when the agent stops (it must exit
within main.EXIT_GRACE)."""

PROBE_TRIES = 3
"""Probes in a row that fail, without proving the actor dead, before it is called dead (an
RPC reset right after a network heals is no death)."""
SILENT_REPLACE_AFTER = 120.0
"""Seconds an endpoint may stay silent on a node Ray calls alive before its actor is taken
for hung, killed and deployed again. Until then it is reported dead ("not answering") but
kept: a host cut off comes back with the same actor once its network heals, and Ray's own
connections to it may take half a minute after the heal to recover."""
PROBE_RETRY = 1.0
"""Seconds before a failed probe is tried again."""
PROBE_DEADLINE = 10.0
"""Seconds a probe may go unanswered before it counts as failed (a host cut off). Not for
the first probe of a starting endpoint: its answer waits for the actor's worker to start,
which takes longer than that when many nodes start at once on a busy machine; Ray itself
fails that probe if the actor cannot be made."""
RESTART_MAX_DELAY = 30.0
"""Seconds between redeployments of an endpoint whose actor keeps dying on a live node, at
most (it doubles from 1)."""
STABLE_AFTER = 60.0
"""An endpoint that lived this long before it died is redeployed at once, as after a first
fault."""

REJOIN_SETTLE_SECONDS = 60.0
"""How long a raylet that joins at the address of an endpoint not yet known dead waits for that
endpoint to be settled: dead (the host came back: it keeps the endpoint's id), or answering (a
second raylet on that host: an id of its own). Ray takes up to ~30 s to see a crashed node."""

Emit = Callable[[EndpointUpdate | EndpointRemoved], None]


class RayNode(TypedDict):
    """A node as ``ray.nodes()`` describes it (the keys read here)."""

    NodeID: str
    Alive: bool
    NodeManagerAddress: str
    Resources: dict[str, float]


@dataclass
class _Deployed:
    state: EndpointState
    handle: Any
    probe: Any = None
    probed_at: float = field(default_factory=time.monotonic)
    answered_sent_at: float = float("-inf")
    """When the last probe it answered was sent: it was alive after that moment."""
    died: str | None = None
    """Why it is dead, once it is."""
    failures: int = 0
    """Probes in a row that failed without proving it dead."""
    restarts: int = 0
    """Redeployments in a row on its live node (for the back-off)."""
    restart_at: float | None = None
    """When to deploy it again on its node, which lives (None: not to be)."""
    alive_since: float | None = None
    silent_since: float | None = None
    """Since when it has been reported dead for not answering, its actor kept (None: it
    answers, or Ray proved it dead)."""


class Fleet:
    """Endpoint actors of one cluster, keyed by endpoint id."""

    def __init__(
        self,
        cluster: str,
        identity: ClusterIdentity,
        storage_root: Path,
        tunables: AgentTunables,
        emit: Emit,
    ) -> None:
        self._cluster = cluster
        self._identity = identity
        self._storage_root = storage_root
        self._tunables = tunables
        self._endpoint_options = EndpointOptions(
            messages_kept=tunables.messages_kept,
            data_ports=tunables.data_ports,
            stall_timeout=tunables.stall_timeout,
            connect_timeout=tunables.data_connect_timeout,
            orphan_timeout=tunables.orphan_timeout,
            partial_retention=tunables.partial_retention,
            egress_limit=tunables.endpoint_egress_limit,
            cluster=cluster,
            ingress_limit=tunables.endpoint_ingress_limit,
        )
        self._emit = emit
        self._lock = threading.Lock()
        self._endpoints: dict[str, _Deployed] = {}
        self._alive_nodes: dict[str, RayNode] = {}
        self._seen_nodes: set[str] = set()
        self._rejoining: dict[str, float] = {}
        """New Ray nodes at an address whose endpoint is not settled yet: since when."""

    # ---- the main loop's look at the cluster ----------------------------------------

    def refresh(self) -> RayClusterState:
        """Look at the cluster once: deploy, retire and probe endpoints; return its state."""
        nodes = ray.nodes()
        available = ray.available_resources()
        alive = {n["NodeID"]: n for n in nodes if n.get("Alive")}
        with self._lock:
            self._alive_nodes = alive
            # Deaths first: a host that rejoined keeps its endpoint's id only if the endpoint
            # it had is known dead when its new raylet is deployed on.
            for deployed in list(self._endpoints.values()):
                kept = deployed.state.status is not NodeStatus.DEAD or deployed.silent_since
                if kept and deployed.state.ray_node_id not in alive:
                    deployed.silent_since = None
                    self._mark_dead(deployed, "its Ray node left the cluster")
            self._collect_probes()
            for node_id, node in alive.items():
                if node_id not in self._seen_nodes and self._settled(node):
                    self._seen_nodes.add(node_id)
                    self._rejoining.pop(node_id, None)
                    self._deploy_auto(node)
            self._restart_due(alive)
        return self._cluster_state(nodes, alive, available)

    def _restart_due(self, alive: dict[str, RayNode]) -> None:
        """An endpoint whose actor died (crashed, killed, taken for dead while its host was cut
        off) on a node that still lives is deployed there again, under its id, with what it
        verified (its storage and resume journals are where they were)."""
        now = time.monotonic()
        for deployed in list(self._endpoints.values()):
            if deployed.restart_at is None or now < deployed.restart_at:
                continue
            deployed.restart_at = None
            node = alive.get(deployed.state.ray_node_id)
            if deployed.state.status is NodeStatus.DEAD and node is not None:
                log.warning(
                    "endpoint %s: its node lives; deploying it again (%s)",
                    deployed.state.id,
                    deployed.died,
                )
                self._deploy(deployed.state.id, node, deployed.state.kind, deployed)

    def _settled(self, node: RayNode) -> bool:
        """Whether a new Ray node can get its endpoint now: nothing else claims its address,
        or what does is dead, or answered since (then the node is a second raylet on that
        host), or Ray had ``REJOIN_SETTLE_SECONDS`` to say. Meanwhile the endpoint is asked:
        a crashed actor's probe fails at once with a refused connection."""
        taken = self._endpoints.get(self._auto_id(node))
        if taken is None or (taken.state.status is NodeStatus.DEAD and taken.silent_since is None):
            return True
        now = time.monotonic()
        since = self._rejoining.setdefault(node["NodeID"], now)
        if taken.answered_sent_at >= since or now - since >= REJOIN_SETTLE_SECONDS:
            return True
        if taken.probe is None and taken.state.status is NodeStatus.ALIVE:
            taken.probe = taken.handle.describe.remote()
            taken.probed_at = now
        return False

    def _cluster_state(
        self,
        nodes: list[RayNode],
        alive: dict[str, RayNode],
        available: dict[str, float],
    ) -> RayClusterState:
        total: dict[str, float] = {}
        for node in alive.values():
            for name, amount in node.get("Resources", {}).items():
                if not name.startswith("node:"):
                    total[name] = total.get(name, 0.0) + amount
        return RayClusterState(
            address=self._identity.gcs_address,
            dashboard_url=self._identity.dashboard_url,
            ray_version=ray.__version__,
            session_name=self._identity.session_name,
            node_count=len(nodes),
            alive_nodes=len(alive),
            cluster_resources=total,
            available_resources={k: v for k, v in available.items() if not k.startswith("node:")},
        )

    def _collect_probes(self) -> None:
        """Turn answered probes into status changes; start due probes. Never blocks.

        A probe that fails proves death only when Ray says the actor died; any other failure
        (an RPC reset, no answer within ``PROBE_DEADLINE``) is tried again, and only
        ``PROBE_TRIES`` in a row make the endpoint dead."""
        now = time.monotonic()
        pending = {d.probe: d for d in self._endpoints.values() if d.probe is not None}
        if pending:
            done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
            for ref in done:
                deployed = pending.pop(ref)
                deployed.probe = None
                try:
                    facts = ray.get(ref)
                except RayError as exc:
                    self._probe_failed(deployed, f"its actor stopped answering: {reason(exc)}", exc)
                    continue
                self._answered(deployed, facts)
            for deployed in pending.values():
                starting = deployed.state.status is NodeStatus.STARTING
                if not starting and now - deployed.probed_at > PROBE_DEADLINE:
                    deployed.probe = None
                    self._probe_failed(
                        deployed, f"it did not answer for {PROBE_DEADLINE:g} s (its host cut off?)"
                    )
        interval = self._tunables.endpoint_probe_interval
        for deployed in self._endpoints.values():
            wait = PROBE_RETRY if deployed.failures else interval
            due = now - deployed.probed_at >= wait
            asked = deployed.state.status is NodeStatus.ALIVE or deployed.silent_since is not None
            if asked and deployed.probe is None and due:
                deployed.probe = deployed.handle.describe.remote()
                deployed.probed_at = now

    def _answered(self, deployed: _Deployed, facts: Any) -> None:
        deployed.answered_sent_at = deployed.probed_at
        deployed.failures = 0
        alive = deployed.state.status is NodeStatus.ALIVE
        if deployed.silent_since is not None or (alive and deployed.state.detail is not None):
            # silent (reported dead), or alive with a failed probe or a stalled stream
            log.info("endpoint %s answers again", deployed.state.id)
            deployed.silent_since = None
            deployed.died = None
            self._set(deployed, status=NodeStatus.ALIVE, detail=None, restarting=False)
        elif deployed.state.status is NodeStatus.STARTING:
            deployed.alive_since = time.monotonic()
            self._set(
                deployed,
                status=NodeStatus.ALIVE,
                address=facts.address,
                data_address=facts.data_address,
                detail=None,
                restarting=False,
                pid=facts.pid,
            )

    def _probe_failed(self, deployed: _Deployed, why: str, exc: Exception | None = None) -> None:
        """Ray proving the actor dead kills and redeploys it; probes that merely fail
        ``PROBE_TRIES`` times in a row report it dead but keep asking it (``silent``), for
        ``SILENT_REPLACE_AFTER`` at most."""
        deployed.failures += 1
        now = time.monotonic()
        if isinstance(exc, ActorDiedError):
            self._mark_dead(deployed, why)
        elif deployed.silent_since is not None:
            if now - deployed.silent_since >= SILENT_REPLACE_AFTER:
                deployed.silent_since = None
                self._mark_dead(deployed, f"{why}; silent for {SILENT_REPLACE_AFTER:g} s")
        elif deployed.failures >= PROBE_TRIES:
            log.warning("endpoint %s does not answer: %s; still asking it", deployed.state.id, why)
            deployed.silent_since = now
            deployed.died = why
            self._set(deployed, status=NodeStatus.DEAD, detail=f"{why}; still asking it")
        else:
            # Still alive, but said: a resume waits for an answer instead of streaming into
            # a host that may be cut off (it would wait a stall's length for nothing).
            log.info(
                "endpoint %s: probe %d of %d failed (%s); trying again",
                deployed.state.id,
                deployed.failures,
                PROBE_TRIES,
                why,
            )
            failed = f"probe {deployed.failures} of {PROBE_TRIES} failed: {why}; asking it again"
            self._set(deployed, detail=failed)

    # ---- requests ------------------------------------------------------------------

    def create_named(self, endpoint_id: str, ray_node_id: str | None) -> EndpointState:
        """Deploy a named endpoint on ``ray_node_id`` (the head node when None)."""
        with self._lock:
            if endpoint_id in self._endpoints:
                raise NodeExists(f"endpoint {endpoint_id!r} exists already; choose another id")
            node = self._find_node(ray_node_id)
            deployed = self._deploy(endpoint_id, node, NodeKind.NAMED)
            return deployed.state

    def remove(self, endpoint_id: str) -> None:
        """Stop an endpoint's actor and forget it; its stored files stay on disk."""
        with self._lock:
            deployed = self._endpoints.pop(endpoint_id, None)
            if deployed is None:
                raise NodeNotFound(f"no endpoint {endpoint_id!r} in cluster {self._cluster!r}")
            _kill(deployed.handle)
        self._emit(EndpointRemoved(endpoint_id=endpoint_id))

    def alive_handles(self) -> dict[str, Any]:
        """The actors of the endpoints that answer (not starting, not dead), by id."""
        with self._lock:
            return {
                e: d.handle
                for e, d in self._endpoints.items()
                if d.state.status is NodeStatus.ALIVE
            }

    def handle(self, endpoint_id: str) -> Any:
        """The actor of an alive endpoint of this cluster."""
        with self._lock:
            deployed = self._endpoints.get(endpoint_id)
            if deployed is None:
                raise NodeNotFound(f"no endpoint {endpoint_id!r} in cluster {self._cluster!r}")
            if deployed.state.status is NodeStatus.DEAD:
                raise NodeUnavailable(f"node {endpoint_id!r} is dead")
            return deployed.handle

    def death(self, endpoint_id: str) -> str | None:
        """Why the endpoint is dead (its node left, its actor stopped answering), or None:
        a transfer's run hears it at once, instead of from a call that fails later, or with
        the kill that follows as its reason."""
        with self._lock:
            deployed = self._endpoints.get(endpoint_id)
            return deployed.died if deployed is not None else None

    def suspect(self, endpoint_id: str, why: str) -> None:
        """A transfer lost touch with the endpoint (its stream stalled): say so and ask it at
        once. Until it answers, auto_resume waits, instead of streaming into a host that may
        be cut off (its own probes would say so only seconds later)."""
        with self._lock:
            deployed = self._endpoints.get(endpoint_id)
            if deployed is None or deployed.state.status is not NodeStatus.ALIVE:
                return
            if deployed.probe is None:
                deployed.probed_at = float("-inf")  # due now
            if deployed.state.detail is None:
                self._set(deployed, detail=f"{why}; asking it")

    def data_address(self, endpoint_id: str) -> str:
        """Where an alive endpoint of this cluster takes data streams."""
        with self._lock:
            deployed = self._endpoints.get(endpoint_id)
            address = deployed.state.data_address if deployed is not None else None
        if address is None:
            raise NodeUnavailable(f"node {endpoint_id!r} has no data port yet; try again shortly")
        return address

    def count(self, endpoint_id: str, **increments: int) -> None:
        """Add verified work to an endpoint's counters and report the new state."""
        with self._lock:
            deployed = self._endpoints.get(endpoint_id)
            if deployed is None:
                return
            counters = deployed.state.counters
            changed = {k: getattr(counters, k) + v for k, v in increments.items() if v}
            if changed:
                self._set(deployed, counters=counters.model_copy(update=changed))

    def abort_partials(self, grace: float = ABORT_GRACE) -> None:
        """Have every endpoint drop its partial files, waiting ``grace`` seconds at most (the
        agent is stopping: an actor killed while it receives would leave its ``.part``)."""
        if not ray.is_initialized():
            return
        aborts = [handle.abort_all.remote() for handle in self.alive_handles().values()]
        if aborts:
            ray.wait(aborts, num_returns=len(aborts), timeout=grace)

    def close(self) -> None:
        """Stop every endpoint actor (they would die with this driver anyway)."""
        with self._lock:
            if ray.is_initialized():
                for deployed in self._endpoints.values():
                    _kill(deployed.handle)
            self._endpoints.clear()

    # ---- helpers, called with the lock held -----------------------------------------

    def _find_node(self, ray_node_id: str | None) -> RayNode:
        if ray_node_id is None:
            for node in self._alive_nodes.values():
                if HEAD_RESOURCE in node.get("Resources", {}):
                    return node
            ray_node_id = ray.get_runtime_context().get_node_id()
        found = self._alive_nodes.get(ray_node_id or "")
        if found is None:
            raise RayNodeNotFound(
                f"no alive Ray node {ray_node_id!r} in cluster {self._cluster!r}; "
                "GET /api/status lists the nodes' ray_node_id"
            )
        return found

    def _auto_id(self, node: RayNode) -> str:
        return f"{self._cluster}-{node['NodeManagerAddress']}"

    def _deploy_auto(self, node: RayNode) -> None:
        endpoint_id = self._auto_id(node)
        taken = self._endpoints.get(endpoint_id)
        if taken is not None and taken.state.status is not NodeStatus.DEAD:
            # Two live raylets on one IP: keep ids distinct and still readable.
            endpoint_id = f"{endpoint_id}-{node['NodeID'][:8]}"
            taken = None
        elif taken is not None:
            # The same host rejoined under a new Ray node id: keep its stable endpoint id.
            _kill(taken.handle)
        self._deploy(endpoint_id, node, NodeKind.RAY_NODE, taken)

    def _deploy(
        self, endpoint_id: str, node: RayNode, kind: NodeKind, before: _Deployed | None = None
    ) -> _Deployed:
        """Deploy an endpoint actor on ``node``; ``before``: the endpoint it takes over (its
        counters and back-off carry on)."""
        storage_dir = self._storage_root / endpoint_id
        handle = EndpointActor.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
            # Named after its node: castray.local_path in a task finds its node's endpoints.
            name=actor_name(node["NodeID"], endpoint_id, uuid.uuid4().hex[:8]),
            namespace=NAMESPACE,
        ).remote(endpoint_id, str(storage_dir), self._endpoint_options)
        state = EndpointState(
            id=endpoint_id,
            ray_node_id=node["NodeID"],
            address=node["NodeManagerAddress"],
            status=NodeStatus.STARTING,
            kind=kind,
            resources={
                k: v for k, v in node.get("Resources", {}).items() if not k.startswith("node:")
            },
            storage_dir=str(storage_dir),
        )
        if before is not None:
            state = state.model_copy(
                update={
                    "counters": before.state.counters,
                    "detail": f"starting again: {before.died}" if before.died else None,
                    "restarting": before.restart_at is not None or before.state.restarting,
                }
            )
        deployed = _Deployed(state=state, handle=handle, probe=handle.describe.remote())
        if before is not None:
            deployed.restarts = before.restarts
        self._endpoints[endpoint_id] = deployed
        self._emit(EndpointUpdate(endpoint=state))
        log.info("deploying endpoint %s on Ray node %s", endpoint_id, node["NodeID"])
        return deployed

    def _mark_dead(self, deployed: _Deployed, why: str) -> None:
        """It is dead: its actor is killed (one that merely stopped answering must not come
        back beside its successor); if its node lives, it is deployed again after a back-off
        that doubles while it keeps dying young."""
        log.warning("endpoint %s is dead: %s", deployed.state.id, why)
        deployed.probe = None
        deployed.died = why
        _kill(deployed.handle)
        now = time.monotonic()
        if deployed.alive_since is not None and now - deployed.alive_since >= STABLE_AFTER:
            deployed.restarts = 0
        if deployed.state.ray_node_id in self._alive_nodes:
            delay = (
                0.0 if deployed.restarts == 0 else min(RESTART_MAX_DELAY, 2.0**deployed.restarts)
            )
            deployed.restarts += 1
            deployed.restart_at = now + delay
            why = f"{why}; deploying it again in {delay:g} s"
        restarting = deployed.restart_at is not None
        self._set(deployed, status=NodeStatus.DEAD, detail=why, restarting=restarting)

    def _set(self, deployed: _Deployed, **changes: object) -> None:
        deployed.state = deployed.state.model_copy(update=changes)
        self._emit(EndpointUpdate(endpoint=deployed.state))


def _kill(handle: Any) -> None:
    try:
        ray.kill(handle, no_restart=True)
    except (RayError, ValueError, RuntimeError) as exc:  # gone with its cluster already
        log.debug("kill of an endpoint actor failed: %s", exc)
