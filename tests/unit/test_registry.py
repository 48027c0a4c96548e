"""The registry's derived view: what users see when clusters come and go."""

from __future__ import annotations

import asyncio
import json

import pytest

from castray.errors import ClusterUnavailable
from castray.models import ClusterStatus, EndpointState, NodeKind, NodeStatus, RayClusterState
from castray.server.registry import Registry


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


RAY = RayClusterState(address="127.0.0.2:6379", ray_version="2.60.0", node_count=1, alive_nodes=1)


def _endpoint(endpoint_id: str, status: NodeStatus = NodeStatus.ALIVE) -> EndpointState:
    return EndpointState(
        id=endpoint_id,
        ray_node_id="n1",
        address="127.0.0.2",
        status=status,
        kind=NodeKind.RAY_NODE,
        storage_dir=f"/data/{endpoint_id}",
    )


def _registry(clock: Clock | None = None) -> Registry:
    registry = Registry(clock=clock or Clock())
    registry.add_cluster("home", is_home=True, is_external=False)
    registry.cluster_seen("home", RAY)
    registry.put_endpoint("home", _endpoint("home-127.0.0.2"))
    return registry


def test_status_counts_alive_and_external_nodes() -> None:
    registry = _registry()
    registry.add_cluster("ext", is_home=False, is_external=True)
    registry.cluster_seen("ext", RAY)
    registry.put_endpoint("ext", _endpoint("ext-a"))
    registry.put_endpoint("ext", _endpoint("ext-b", NodeStatus.DEAD))

    status = registry.status(uptime=3.0)

    assert (status.total_nodes, status.active_nodes, status.external_nodes_count) == (3, 2, 2)
    assert [c.name for c in status.clusters] == ["home", "ext"]
    assert status.ray_cluster == RAY


def test_endpoints_of_a_silent_cluster_are_shown_dead() -> None:
    clock = Clock()
    registry = _registry(clock)
    clock.now = 10.0

    silent = registry.clusters_silent_for(8.0)
    for name in silent:
        registry.set_cluster_status(name, ClusterStatus.UNREACHABLE, "no answer")

    assert silent == ["home"]
    assert registry.node("home-127.0.0.2").status is NodeStatus.DEAD
    assert registry.status(0).active_nodes == 0


def test_a_heartbeat_brings_the_cluster_and_its_endpoints_back() -> None:
    registry = _registry()
    registry.set_cluster_status("home", ClusterStatus.UNREACHABLE, "no answer")

    registry.cluster_seen("home", RAY)

    assert registry.node("home-127.0.0.2").status is NodeStatus.ALIVE


def test_cached_status_json_changes_with_state() -> None:
    registry = _registry()
    before = registry.status_json(5.2)

    registry.put_endpoint("home", _endpoint("node_1"))

    after = json.loads(registry.status_json(5.7))
    assert before != registry.status_json(5.7)
    assert after["total_nodes"] == 2
    assert after["uptime"] == 5.0


def test_unchanged_heartbeat_does_not_invalidate_the_cache() -> None:
    registry = _registry()
    version = registry.version

    registry.cluster_seen("home", RAY)

    assert registry.version == version


def test_wait_until_wakes_on_a_change() -> None:
    async def scenario() -> bool:
        registry = _registry()
        waiter = asyncio.create_task(
            registry.wait_until(lambda: registry.has_node("late"), timeout=5)
        )
        await asyncio.sleep(0)
        registry.put_endpoint("home", _endpoint("late"))
        return await waiter

    assert asyncio.run(scenario()) is True


def test_wait_until_gives_up_at_the_deadline() -> None:
    async def scenario() -> bool:
        registry = _registry()
        return await registry.wait_until(lambda: registry.has_node("never"), timeout=0.05)

    assert asyncio.run(scenario()) is False


def test_a_cluster_no_longer_attached_is_unavailable_not_a_stop_iteration() -> None:
    """A connect read its cluster back from the registry after awaiting the agent: a cluster
    lost and removed meanwhile raised ``StopIteration`` (a 500 with a traceback)."""
    registry = Registry(clock=Clock())
    with pytest.raises(ClusterUnavailable, match="'gone' is no longer attached"):
        registry.cluster("gone")
