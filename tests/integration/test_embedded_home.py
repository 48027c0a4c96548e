"""``castray serve`` with no cluster given: its own embedded, private Ray, and the node API."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DEMO_NODES
from tests.harness.server import CastRayServer
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.ray


def test_status_reports_embedded_home_with_live_endpoints(embedded_server: CastRayServer) -> None:
    status = embedded_server.status()

    assert status["total_nodes"] == 1 + DEMO_NODES
    assert status["active_nodes"] == 1 + DEMO_NODES
    assert status["external_nodes_count"] == 0
    ray_cluster = status["ray_cluster"]
    assert ray_cluster["alive_nodes"] == 1
    assert ray_cluster["ray_version"].startswith("2.")
    assert ray_cluster["address"].startswith("127.0.0.1:")
    assert ray_cluster["cluster_resources"]["CPU"] > 0
    assert [c["name"] for c in status["clusters"]] == ["home"]
    assert status["clusters"][0]["status"] == "connected"
    assert status["uptime"] >= 0


def test_embedded_ray_stays_on_loopback(embedded_server: CastRayServer) -> None:
    nodes = embedded_server.nodes()

    assert nodes["home-127.0.0.1"]["kind"] == "ray-node"
    assert {n["address"] for n in nodes.values()} == {"127.0.0.1"}


def test_demo_nodes_are_named_endpoints_on_the_head(embedded_server: CastRayServer) -> None:
    nodes = embedded_server.nodes()
    head = nodes["home-127.0.0.1"]

    for n in range(1, DEMO_NODES + 1):
        node = nodes[f"node_{n}"]
        assert node["kind"] == "named"
        assert node["status"] == "alive"
        assert node["ray_node_id"] == head["ray_node_id"]
        assert node["cluster"] == "home"
        assert node["is_external"] is False


def test_a_new_endpoint_starts_with_zero_counters(embedded_server: CastRayServer) -> None:
    with embedded_server.client() as client:
        created = client.post("/api/nodes", json={"node_id": "fresh-counters"})
        client.delete("/api/nodes/fresh-counters")

    assert created.status_code == 201, created.text
    assert created.json()["counters"] == {
        "bytes_sent": 0,
        "bytes_received": 0,
        "transfers_ok": 0,
        "transfers_failed": 0,
        "transfers_sent_ok": 0,
        "transfers_sent_failed": 0,
        "messages_sent": 0,
        "messages_received": 0,
    }


def test_every_endpoint_has_its_own_storage_directory(embedded_server: CastRayServer) -> None:
    nodes = embedded_server.nodes()

    dirs = {Path(n["storage_dir"]) for n in nodes.values()}
    assert len(dirs) == len(nodes)
    for directory in dirs:
        assert directory.is_dir()
        assert directory.parent == embedded_server.data_dir / "storage"


def test_embedded_home_leaves_the_users_ray_token_alone(embedded_server: CastRayServer) -> None:
    home = embedded_server.data_dir.parent / "home"

    assert not (home / ".ray" / "auth_token").exists()


def test_embedded_home_refuses_drivers_without_its_token(embedded_server: CastRayServer) -> None:
    address = embedded_server.status()["ray_cluster"]["address"]
    script = (
        "import ray, sys\n"
        f"ray.init(address={address!r}, log_to_driver=False)\n"
        "print(len(ray.nodes()))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(embedded_server.data_dir), "RAY_AUTH_MODE": "token"}

    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )

    assert result.returncode != 0
    assert "token" in (result.stdout + result.stderr).lower()


def test_create_get_and_delete_a_named_node(embedded_server: CastRayServer) -> None:
    with embedded_server.client() as client:
        created = client.post("/api/nodes", json={"node_id": "scratch.1"})
        assert created.status_code == 201, created.text
        assert created.json()["status"] == "alive"
        assert created.json()["kind"] == "named"
        assert client.get("/api/nodes/scratch.1").json()["id"] == "scratch.1"
        assert "scratch.1" in {n["id"] for n in client.get("/api/nodes").json()["nodes"]}

        deleted = client.delete("/api/nodes/scratch.1")
        assert deleted.status_code == 204

        assert client.get("/api/nodes/scratch.1").status_code == 404
    assert "scratch.1" not in embedded_server.nodes()


def test_create_node_with_existing_id_is_a_conflict(embedded_server: CastRayServer) -> None:
    with embedded_server.client() as client:
        response = client.post("/api/nodes", json={"node_id": "node_1"})

    assert response.status_code == 409
    assert "exists" in response.json()["detail"]


@pytest.mark.parametrize("bad_id", ["", ".", "..", "a/b", "a b", "x" * 65, "ünï", "a\x00b"])
def test_create_node_with_invalid_id_is_rejected(
    embedded_server: CastRayServer, bad_id: str
) -> None:
    with embedded_server.client() as client:
        response = client.post("/api/nodes", json={"node_id": bad_id})

    assert response.status_code == 422
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    assert "node_id" in detail


def test_create_node_on_unknown_ray_node_is_not_found(embedded_server: CastRayServer) -> None:
    with embedded_server.client() as client:
        response = client.post("/api/nodes", json={"node_id": "lost", "ray_node_id": "ff" * 28})

    assert response.status_code == 404
    assert "Ray node" in response.json()["detail"]
    assert "lost" not in embedded_server.nodes()


def test_unknown_node_is_not_found(embedded_server: CastRayServer) -> None:
    with embedded_server.client() as client:
        assert client.get("/api/nodes/nope").status_code == 404
        response = client.delete("/api/nodes/nope")

    assert response.status_code == 404
    assert response.json() == {
        "detail": "no node 'nope'; GET /api/nodes lists the nodes there are",
        "code": "node_not_found",
    }


def test_automatic_endpoint_of_a_live_ray_node_cannot_be_deleted(
    embedded_server: CastRayServer,
) -> None:
    with embedded_server.client() as client:
        response = client.delete("/api/nodes/home-127.0.0.1")

    assert response.status_code == 409
    assert embedded_server.nodes()["home-127.0.0.1"]["status"] == "alive"


def test_malformed_json_gets_a_readable_422(embedded_server: CastRayServer) -> None:
    with embedded_server.client() as client:
        response = client.post(
            "/api/nodes", content=b"{not json", headers={"content-type": "application/json"}
        )

    assert response.status_code == 422
    assert isinstance(response.json()["detail"], str)


def test_root_redirects_to_ui_and_docs_are_served(embedded_server: CastRayServer) -> None:
    with embedded_server.client() as client:
        root = client.get("/", follow_redirects=False)
        ui = client.get("/ui")
        docs = client.get("/docs")
        schema = client.get("/openapi.json").json()

    assert root.status_code == 307
    assert root.headers["location"] == "/ui"
    assert ui.status_code == 200
    assert "<title>CastRay</title>" in ui.text
    assert docs.status_code == 200
    assert "/api/status" in schema["paths"]
    assert "/api/nodes" in schema["paths"]


def test_unknown_route_is_a_json_404(embedded_server: CastRayServer) -> None:
    with embedded_server.client() as client:
        response = client.get("/api/nothing-here")

    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found", "code": "not_found"}


def test_server_stops_cleanly_on_ctrl_c_and_leaves_no_ray_behind(
    tmp_path: Path,
) -> None:
    from tests.harness.server import start_server

    server = start_server(tmp_path / "data")
    server.wait_alive(1)
    gcs_port = int(server.status()["ray_cluster"]["address"].rsplit(":", 1)[1])

    assert server.stop() == 0

    wait_for(lambda: not _port_listening(gcs_port), 30, "the embedded GCS to be gone")
    assert "Traceback" not in server.log.read_text()


def _port_listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0
