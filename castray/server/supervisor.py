"""Starts and watches one agent per cluster, and feeds what they say into the registry.

The home cluster is the first; it is started in the background so the API answers at once
(``GET /api/status`` shows the home cluster ``starting`` until its agent is ready).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from pathlib import Path

from castray.config import Settings
from castray.errors import (
    AgentTimeout,
    ClusterUnavailable,
    ClusterUnreachable,
    Conflict,
    NodeExists,
    error_from_code,
)
from castray.models import ClusterStatus, Node, NodeKind, NodeStatus
from castray.protocol import (
    AgentConfig,
    AgentMessage,
    AgentTunables,
    ClusterUpdate,
    CreateEndpoint,
    Done,
    EndpointCreated,
    EndpointRemoved,
    EndpointUpdate,
    Fatal,
    Operation,
    Ready,
    RecipientFinished,
    RemoveEndpoint,
    TransferFinished,
    TransferMessage,
    TransferProgress,
)
from castray.server import scratch
from castray.server.agent_link import AgentLink
from castray.server.gateway import AgentListener, R
from castray.server.logs import about
from castray.server.ray_token import local_ray_token
from castray.server.registry import Registry, detached

log = logging.getLogger(__name__)

HOME = "home"
RAY_CLIENT_ATTEMPTS = 3
"""Fresh agents a Ray Client join gets within the connect timeout (see ``connect``)."""
HOME_RESTART_MAX_DELAY = 30.0
"""Seconds between restarts of a home agent that keeps dying, at most (it doubles from 1)."""
HOME_STABLE_AFTER = 60.0
"""A home agent that ran this long before it died is restarted at once, as after a first fault."""


def agent_tunables(settings: Settings) -> AgentTunables:
    """The agent's share of the settings."""
    return AgentTunables(
        transfer_threads=settings.agent_transfer_threads,
        chunk_retries=settings.chunk_retries,
        progress_interval=settings.progress_interval,
        stall_timeout=settings.stall_timeout,
        control_timeout=settings.control_timeout,
        peer_timeout=settings.peer_timeout,
        orphan_timeout=settings.orphan_timeout,
        partial_retention=settings.partial_retention,
        endpoint_probe_interval=settings.endpoint_probe_interval,
        messages_kept=settings.messages_kept,
        stream_timeout=settings.stall_timeout,
        data_ports=settings.data_ports,
        data_connect_timeout=settings.data_connect_timeout,
        endpoint_egress_limit=settings.endpoint_egress_limit,
        endpoint_ingress_limit=settings.endpoint_ingress_limit,
    )


def ray_auth_env(token: str | None) -> dict[str, str]:
    """Ray's token settings for an agent: the token it may use, or token auth off, so that Ray
    never falls back to a token of its own finding (``~/.ray/auth_token``). The token goes in
    the environment, never on a command line others can read."""
    if token is None:
        return {"RAY_AUTH_MODE": "disabled"}
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}


class Supervisor:
    """Owns the agents; the only code that talks to them."""

    def __init__(self, settings: Settings, registry: Registry) -> None:
        self._settings = settings
        self._registry = registry
        self._links: dict[str, AgentLink] = {}
        self._retiring: set[asyncio.Future[None]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._scratch: list[Path] = []
        self._stopping = False
        self._listeners: list[AgentListener] = []
        self._fatal: dict[str, tuple[str, str]] = {}
        self._home_failures = 0
        self._home_started = 0.0
        self._creating: set[str] = set()
        """Named endpoints being created: they count against ``max_endpoints`` already."""

    def subscribe(self, listener: AgentListener) -> None:
        """Tell ``listener`` what agents report about transfers and when a cluster goes down."""
        self._listeners.append(listener)

    def _transfer_message(self, message: TransferMessage) -> None:
        for listener in self._listeners:
            listener.on_transfer_message(message)

    def _cluster_down(self, cluster: str, reason: str) -> None:
        for listener in self._listeners:
            listener.on_cluster_down(cluster, reason)

    # ---- life cycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Start the home cluster's agent; returns before it is ready. Private Ray temp dirs
        that killed servers left behind go first."""
        if self._settings.ray_address is None:
            await asyncio.to_thread(scratch.sweep)
        self._registry.add_cluster(HOME, is_home=True, is_external=False)
        self._spawn(self._start_home(), "home")
        self._spawn(self._watch_heartbeats(), "heartbeats")

    async def stop(self) -> None:
        """Stop every agent at once: one that hangs on a dead cluster delays no other."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        grace = self._settings.agent_stop_timeout
        await asyncio.gather(
            *(link.stop(grace) for link in self._links.values()), *list(self._retiring)
        )
        for path in self._scratch:
            await asyncio.to_thread(scratch.remove, path)

    async def wait_home_ready(self, timeout: float) -> bool:
        return await self._registry.wait_until(
            lambda: self._registry.cluster_status(HOME) is not ClusterStatus.STARTING, timeout
        )

    async def _start_home(self, named: tuple[str, ...] = ()) -> None:
        """Start the home agent; once it is connected, deploy the demo endpoints and the named
        endpoints given (those of an agent that died)."""
        settings = self._settings
        self._home_started = asyncio.get_running_loop().time()
        address = settings.ray_address
        token_file = None
        if address is None:
            temp_dir = scratch.make()
            self._scratch.append(temp_dir)
            token_file = temp_dir / "auth_token"
            token_file.touch(mode=0o600)
            token_file.write_text(secrets.token_hex(32))
        else:
            temp_dir = settings.run_dir
        config = AgentConfig(
            cluster=HOME,
            address=address,
            storage_root=settings.storage_root,
            temp_dir=temp_dir,
            poll_interval=settings.node_poll_interval,
            tunables=agent_tunables(settings),
            log_level=settings.log_level,
            embedded_num_cpus=settings.embedded_num_cpus,
            embedded_object_store_bytes=settings.embedded_object_store_bytes,
            ray_token_file=token_file,
        )
        where = address or "an embedded private Ray cluster"
        log.info("starting the home cluster agent (%s)", where)
        # A home the user named is theirs: it gets the token Ray would use on this machine.
        await self._launch(config, ray_auth_env(local_ray_token() if address else None))
        if not await self.wait_home_ready(settings.agent_start_timeout):
            self._registry.set_cluster_status(
                HOME,
                ClusterStatus.LOST,
                f"agent did not connect in {settings.agent_start_timeout:g} s",
            )
            log.error("the home cluster agent did not connect; see %s", self._links[HOME].log_file)
            return
        if self._registry.cluster_status(HOME) is not ClusterStatus.CONNECTED:
            return
        log.info("home cluster ready: %s", where)
        demo = [f"node_{n}" for n in range(1, settings.demo_nodes + 1)]
        for node_id in dict.fromkeys([*demo, *named]):
            with contextlib.suppress(NodeExists):
                await self.create_node(node_id, None)

    async def _restart_home(self, old: AgentLink, code: int | None) -> None:
        """The home agent died (killed, crashed): whatever it left running goes, and a new one
        starts after a back-off that doubles while it keeps dying young."""
        old.kill_group()
        loop = asyncio.get_running_loop()
        if loop.time() - self._home_started >= HOME_STABLE_AFTER:
            self._home_failures = 0
        delay = min(HOME_RESTART_MAX_DELAY, 2.0**self._home_failures)
        self._home_failures += 1
        detail = f"its agent exited (code {code}); restarting it in {delay:g} s"
        log.error("home cluster lost: %s; see %s", detail, old.log_file)
        self._registry.set_cluster_status(HOME, ClusterStatus.LOST, detail)
        await asyncio.sleep(delay)
        if self._stopping:
            return
        registry = self._registry
        named = tuple(
            n.id for n in registry.nodes() if n.cluster == HOME and n.kind is NodeKind.NAMED
        )
        for node_id in named:  # deployed again by the new agent, under the same ids
            registry.remove_endpoint(node_id)
        registry.set_cluster_status(HOME, ClusterStatus.STARTING, "restarting its agent")
        await self._start_home(named)

    async def _launch(self, config: AgentConfig, env: dict[str, str] | None = None) -> AgentLink:
        name = config.cluster
        link = AgentLink(
            config,
            self._settings.log_dir / f"agent-{name}.log",
            on_message=lambda message: self._on_message(name, message),
            on_exit=lambda code: self._on_exit(name, code),
        )
        self._links[name] = link
        await link.start(env or {})
        return link

    # ---- external clusters ---------------------------------------------------------------

    async def connect(
        self, name: str, address: str, ray_token: str | None, stay_on_loopback: bool = False
    ) -> None:
        """Start an agent for an external cluster; return once it is connected, else raise.

        Ray Client (``ray://``) sessions fail to start now and then on Ray's side (its proxy
        forks a server that can die at birth, ray-project/ray#63202, and then makes the client
        wait half a minute); so a Ray Client join gets a few attempts with fresh agents within
        the connect timeout, a GCS join one.
        """
        settings = self._settings
        attempts = RAY_CLIENT_ATTEMPTS if address.startswith("ray://") else 1
        for attempt in range(1, attempts + 1):
            if await self._join(name, address, ray_token, stay_on_loopback, attempts):
                return
            if name in self._fatal or attempt == attempts:
                break
            log.warning(
                "cluster %s: Ray Client attempt %d of %d did not connect; trying again",
                name,
                attempt,
                attempts,
                extra=about(cluster=name),
            )
            await self.disconnect(name)
        fatal = self._fatal.pop(name, None)
        detail = self._registry.cluster(name).detail
        status = self._registry.cluster_status(name)
        await self.disconnect(name)
        if fatal is not None:
            raise error_from_code(*fatal)
        if status is ClusterStatus.STARTING:
            hint = (
                " (Ray Client cannot join a cluster that uses Ray token authentication: connect "
                "with its GCS address then)"
                if address.startswith("ray://")
                else ""
            )
            raise AgentTimeout(
                f"Ray at {address} did not accept a driver within {settings.connect_timeout:g} s: "
                f"is it reachable from this machine, and is it a Ray cluster?{hint}"
            )
        raise ClusterUnreachable(f"could not connect to Ray at {address}: {detail}")

    async def _join(
        self, name: str, address: str, ray_token: str | None, stay_on_loopback: bool, share: int
    ) -> bool:
        """One agent's attempt to join, within ``1/share`` of the connect timeout."""
        settings = self._settings
        self._registry.add_cluster(name, is_home=False, is_external=True)
        config = AgentConfig(
            cluster=name,
            address=address,
            storage_root=settings.storage_root,
            temp_dir=settings.run_dir,
            poll_interval=settings.node_poll_interval,
            tunables=agent_tunables(settings),
            log_level=settings.log_level,
            stay_on_loopback=stay_on_loopback,
        )
        log.info("connecting external cluster %s at %s", name, address, extra=about(cluster=name))
        await self._launch(config, ray_auth_env(ray_token))
        await self._registry.wait_until(
            lambda: self._registry.cluster_status(name) is not ClusterStatus.STARTING,
            settings.connect_timeout / share,
        )
        if self._registry.cluster_status(name) is not ClusterStatus.CONNECTED:
            return False
        # Answer with its endpoints up, so the user sees them alive straight away.
        await self._registry.wait_until(
            lambda: all(
                n.status is not NodeStatus.STARTING
                for n in self._registry.nodes()
                if n.cluster == name
            ),
            self._settings.node_ready_timeout,
        )
        return True

    async def disconnect(self, name: str, reconnecting: bool = False) -> None:
        """Stop a cluster's agent and forget the cluster and its endpoints (``reconnecting``:
        to connect it again at once, which is no user's disconnect)."""
        await self._retire(name)
        self._registry.remove_cluster(name, reconnecting)
        self._cluster_down(name, "its cluster was disconnected")

    async def _retire(self, name: str) -> None:
        """Stop a cluster's agent; the cluster stays listed as it is (unreachable, lost)."""
        link = self._links.pop(name, None)
        if link is None:
            return
        # Shielded, and awaited by ``stop``: a stop never leaves an agent half stopped.
        stopping = asyncio.ensure_future(link.stop(self._settings.agent_stop_timeout))
        self._retiring.add(stopping)
        stopping.add_done_callback(self._retiring.discard)
        await asyncio.shield(stopping)

    def _spawn(self, coroutine: object, name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coroutine, name=name)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- what agents say ----------------------------------------------------------------

    def _on_message(self, cluster: str, message: AgentMessage) -> None:
        registry = self._registry
        if isinstance(message, Ready | ClusterUpdate):
            registry.cluster_seen(cluster, message.ray)
        elif isinstance(message, EndpointUpdate):
            registry.put_endpoint(cluster, message.endpoint)
        elif isinstance(message, EndpointRemoved):
            registry.remove_endpoint(message.endpoint_id)
        elif isinstance(message, TransferProgress | RecipientFinished | TransferFinished):
            self._transfer_message(message)
        elif isinstance(message, Fatal):
            log.error("cluster %s: %s", cluster, message.message, extra=about(cluster=cluster))
            self._fatal[cluster] = (message.error_code, message.message)
            registry.set_cluster_status(cluster, ClusterStatus.LOST, message.message)

    def _on_exit(self, cluster: str, code: int | None) -> None:
        link = self._links.get(cluster)
        if link is None or not self._registry.has_cluster(cluster):
            return  # disconnected on purpose
        if self._stopping:
            log.info("cluster %s: agent stopped", cluster, extra=about(cluster=cluster))
            self._registry.set_cluster_status(cluster, ClusterStatus.LOST, "CastRay is stopping")
        elif cluster == HOME:
            self._spawn(self._restart_home(link, code), "home-restart")
        elif self._registry.cluster_status(cluster) is not ClusterStatus.LOST:
            detail = f"its agent exited (code {code}); see {link.log_file}"
            log.error("cluster %s lost: %s", cluster, detail, extra=about(cluster=cluster))
            self._registry.set_cluster_status(cluster, ClusterStatus.LOST, detail)
        self._cluster_down(cluster, self._registry.cluster(cluster).detail or "cluster lost")

    async def _watch_heartbeats(self) -> None:
        timeout = self._settings.cluster_timeout
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            for name in self._registry.clusters_silent_for(timeout):
                log.warning(
                    "cluster %s has not answered for %g s", name, timeout, extra=about(cluster=name)
                )
                reason = f"no answer from Ray for {timeout:g} s"
                self._registry.set_cluster_status(name, ClusterStatus.UNREACHABLE, reason)
                if name != HOME:
                    # Its agent would spin on a GCS that is gone (Ray retries it for a minute):
                    # it stops, and the cluster's owner reconnects it when it answers again.
                    self._spawn(self._retire(name), f"retire-{name}")
                self._cluster_down(name, reason)

    # ---- requests ------------------------------------------------------------------------

    async def create_node(self, node_id: str, ray_node_id: str | None) -> Node:
        """Deploy a named endpoint in the home cluster and wait briefly for it to answer.

        The limit is checked and a place reserved in one step (no await between them), so
        creations at once cannot all pass the check."""
        if self._registry.has_node(node_id) or node_id in self._creating:
            raise NodeExists(f"node {node_id!r} exists already; choose another id")
        limit = self._settings.max_endpoints
        if len({n.id for n in self._registry.nodes()} | self._creating) >= limit:
            raise Conflict(
                f"this server runs {limit} endpoints, the most it deploys "
                "(CASTRAY_MAX_ENDPOINTS; each is a Ray worker process); delete one first"
            )
        self._creating.add(node_id)
        try:
            return await self._create_node(node_id, ray_node_id)
        finally:
            self._creating.discard(node_id)

    async def _create_node(self, node_id: str, ray_node_id: str | None) -> Node:
        created = (
            await self.request(
                HOME, CreateEndpoint(endpoint_id=node_id, ray_node_id=ray_node_id), EndpointCreated
            )
        ).endpoint
        if not self._registry.has_node(created.id):
            self._registry.put_endpoint(HOME, created)
        await self._registry.wait_until(
            lambda: self._registry.node(node_id).status is not NodeStatus.STARTING,
            self._settings.node_ready_timeout,
        )
        return self._registry.node(node_id)

    async def delete_node(self, node_id: str) -> None:
        """Remove a named endpoint, or forget a dead automatic one."""
        node = self._registry.node(node_id)
        if node.kind is NodeKind.RAY_NODE and node.status is not NodeStatus.DEAD:
            raise Conflict(
                f"node {node_id!r} is the automatic endpoint of Ray node {node.ray_node_id}; "
                "it goes away when that Ray node leaves its cluster"
            )
        link = self._links.get(node.cluster)
        if link is not None and link.running:
            with contextlib.suppress(ClusterUnavailable):
                await link.request(
                    RemoveEndpoint(endpoint_id=node_id), Done, self._settings.agent_request_timeout
                )
        self._registry.remove_endpoint(node_id)

    async def request(
        self, cluster: str, body: Operation, reply: type[R], timeout: float | None = None
    ) -> R:
        """Send one operation to a connected cluster's agent and return its reply."""
        wait = self._settings.agent_request_timeout if timeout is None else timeout
        return await self._link(cluster).request(body, reply, wait)

    def _link(self, cluster: str) -> AgentLink:
        if not self._registry.has_cluster(cluster):
            # Detached while the caller awaited something else: a pin's round over several
            # clusters, say. The caller handles it like any cluster it cannot reach now.
            raise detached(cluster)
        link = self._links.get(cluster)
        status = self._registry.cluster_status(cluster)
        if link is None or not link.running or status is not ClusterStatus.CONNECTED:
            raise ClusterUnavailable(
                f"cluster {cluster!r} is {status.value}; try again when GET /api/status shows "
                "it connected"
            )
        return link
