"""``castray serve --ray-address``: a 3-node ``ray start`` cluster on this machine is home."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.raycluster import RayCluster, running_cluster
from tests.harness.server import CastRayServer, serving
from tests.harness.waiting import wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]

HEAD, WORKER_A, WORKER_B, LATE = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.6"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    root = tmp_path_factory.mktemp("home-cluster")
    with running_cluster(root, HEAD, WORKER_A, WORKER_B) as ray:
        yield ray


@pytest.fixture(scope="module")
def server(
    cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CastRayServer]:
    data = tmp_path_factory.mktemp("home-cluster-server") / "data"
    with serving(data, "--ray-address", cluster.address, alive=3) as server:
        yield server


def test_each_ray_node_gets_one_endpoint(server: CastRayServer, cluster: RayCluster) -> None:
    status = server.status()

    endpoints = {n["address"]: n for n in status["node_statuses"] if n["kind"] == "ray-node"}
    assert sorted(endpoints) == [HEAD, WORKER_A, WORKER_B]
    assert {n["id"] for n in endpoints.values()} == {f"home-{ip}" for ip in endpoints}
    ray_ids = {n["node_id"]: n["node_ip"] for n in cluster.list_nodes() if n["state"] == "ALIVE"}
    assert {n["ray_node_id"]: ip for ip, n in endpoints.items()} == ray_ids
    assert status["ray_cluster"]["address"] == cluster.address
    assert status["ray_cluster"]["alive_nodes"] == 3
    assert status["ray_cluster"]["dashboard_url"] == cluster.dashboard_url


def test_named_endpoint_is_placed_on_the_requested_ray_node(server: CastRayServer) -> None:
    worker = server.nodes()[f"home-{WORKER_A}"]

    with server.client() as client:
        response = client.post(
            "/api/nodes", json={"node_id": "on-worker", "ray_node_id": worker["ray_node_id"]}
        )

    assert response.status_code == 201, response.text
    created = response.json()
    assert created["status"] == "alive"
    assert created["address"] == WORKER_A
    assert Path(created["storage_dir"]).is_dir()


def test_joining_node_gets_an_endpoint_and_leaving_node_is_marked_dead(
    server: CastRayServer, cluster: RayCluster
) -> None:
    late = cluster.add_worker(LATE)
    joined = wait_for(
        lambda: server.nodes().get(f"home-{LATE}", {}).get("status") == "alive",
        30,
        "the joining node's endpoint to be alive",
    )
    assert joined

    late.stop()

    wait_for(
        lambda: server.nodes()[f"home-{LATE}"]["status"] == "dead",
        30,
        "the leaving node's endpoint to be dead",
    )
    others = server.nodes()
    assert others[f"home-{HEAD}"]["status"] == "alive"
    assert others[f"home-{WORKER_A}"]["status"] == "alive"
    assert server.status()["ray_cluster"]["alive_nodes"] == 3


def test_dead_automatic_endpoint_can_be_forgotten(
    server: CastRayServer, cluster: RayCluster
) -> None:
    dead = wait_for(
        lambda: [n for n in server.nodes().values() if n["status"] == "dead"],
        30,
        "a dead endpoint (left by the previous test)",
    )

    with server.client() as client:
        response = client.delete(f"/api/nodes/{dead[0]['id']}")

    assert response.status_code == 204
    assert dead[0]["id"] not in server.nodes()
