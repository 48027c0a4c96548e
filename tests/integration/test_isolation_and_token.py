"""The embedded home never mixes with a user's cluster; the API token guards every call."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness.raycluster import RayCluster
from tests.harness.server import CastRayServer, start_server

pytestmark = [pytest.mark.ray, pytest.mark.slow]

FOREIGN_IP = "127.0.0.5"


@pytest.fixture(scope="module")
def foreign_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    """A user's own ``ray start --head`` on Ray's default ports 6379 and 8265."""
    ray = RayCluster(FOREIGN_IP, tmp_path_factory.mktemp("foreign"), port=6379, dashboard_port=8265)
    try:
        ray.start_head()
        yield ray
    finally:
        ray.stop()


def test_embedded_home_does_not_join_a_running_default_cluster(
    foreign_cluster: RayCluster, tmp_path: Path
) -> None:
    server = start_server(tmp_path / "data")
    try:
        status = server.wait_alive(1)
        assert status["ray_cluster"]["alive_nodes"] == 1
        assert status["ray_cluster"]["address"] != foreign_cluster.address
        assert [n["address"] for n in status["node_statuses"]] == ["127.0.0.1"]
        foreign_nodes = [n for n in foreign_cluster.list_nodes() if n["state"] == "ALIVE"]
        assert [n["node_ip"] for n in foreign_nodes] == [FOREIGN_IP]
    finally:
        server.stop()
    assert foreign_cluster.alive_nodes() == 1


@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CastRayServer]:
    server = start_server(tmp_path_factory.mktemp("guarded") / "data", token="s3cret-token")
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("path", ["/api/status", "/api/nodes", "/api/health", "/api/nodes/x"])
def test_api_without_token_is_unauthorized(guarded_server: CastRayServer, path: str) -> None:
    response = httpx.get(guarded_server.url + path)

    assert response.status_code == 401
    assert "token" in response.json()["detail"]


def test_api_with_wrong_token_is_unauthorized(guarded_server: CastRayServer) -> None:
    with guarded_server.client(token="wrong") as client:
        response = client.post("/api/nodes", json={"node_id": "intruder"})

    assert response.status_code == 401


def test_api_with_the_token_answers(guarded_server: CastRayServer) -> None:
    with guarded_server.client() as client:
        assert client.get("/api/status").status_code == 200
        assert client.get("/api/nodes").status_code == 200


def test_ui_page_and_its_scripts_load_without_token(guarded_server: CastRayServer) -> None:
    page = httpx.get(guarded_server.url + "/ui")
    script = httpx.get(guarded_server.url + "/ui/assets/api.js")

    assert page.status_code == 200
    assert script.status_code == 200
    assert "Authorization" in script.text  # it asks for the token and sends it (tests/browser)


def test_open_api_on_a_public_interface_is_warned_about(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", "--host", "0.0.0.0")
    try:
        log = server.log.read_text()
    finally:
        server.stop()

    assert "binding 0.0.0.0 without a token" in log


def test_websocket_needs_the_token_too(guarded_server: CastRayServer) -> None:
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect

    url = guarded_server.url.replace("http://", "ws://") + "/ws"
    with pytest.raises(InvalidStatus) as refused:
        connect(f"{url}?token=wrong", open_timeout=30)
    with connect(url, open_timeout=30) as anonymous, pytest.raises(ConnectionClosed) as closed:
        anonymous.recv(timeout=30)  # nothing but the close: no snapshot without the token
    with connect(f"{url}?token=s3cret-token", open_timeout=30) as ws:
        first = ws.recv(timeout=30)

    assert refused.value.response.status_code == 403
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    assert '"snapshot"' in first
