"""Finding 4: pages on other sites can neither change state nor listen in."""

from __future__ import annotations

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.harness.server import CastRayServer, serving

pytestmark = pytest.mark.ray

EVIL = "http://evil.example"


def _upload(server: CastRayServer, origin: str | None, name: str) -> int:
    headers = {"Origin": origin} if origin else {}
    with server.client() as client:
        response = client.post("/api/upload", files={"file": (name, b"x" * 100)}, headers=headers)
    return response.status_code


def test_a_form_post_from_another_site_is_refused_and_stores_nothing(
    server: CastRayServer,
) -> None:
    assert _upload(server, EVIL, "planted.txt") == 403
    assert not (server.data_dir / "library" / "planted.txt").exists()
    # The page of the server itself, and clients without an Origin (CLI, curl), may.
    assert _upload(server, server.url, "own-page.txt") == 201
    assert _upload(server, None, "from-curl.txt") == 201


def test_a_rebinding_host_name_is_not_the_servers_own_origin(server: CastRayServer) -> None:
    port = server.url.rsplit(":", 1)[1]
    with server.client() as client:
        response = client.post(
            "/api/groups",
            json={"name": "rebound", "members": ["node_1"]},
            headers={
                "Origin": f"http://attacker.example:{port}",
                "Host": f"attacker.example:{port}",
            },
        )

    assert response.status_code == 403


def test_a_websocket_from_another_site_is_refused(server: CastRayServer) -> None:
    url = server.url.replace("http", "ws") + "/ws"

    with pytest.raises(InvalidStatus) as refused, connect(url, origin=EVIL, open_timeout=10):  # type: ignore[arg-type]
        pass
    with connect(url, origin=server.url, open_timeout=10) as own:  # type: ignore[arg-type]
        assert '"snapshot"' in own.recv(timeout=10)

    assert refused.value.response.status_code == 403


def test_allowed_origins_are_let_in(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("origins")
    env = {"HOME": str(root), "CASTRAY_ALLOWED_ORIGINS": '["https://ops.example.org"]'}
    with serving(root / "data", alive=1, env=env) as server:
        allowed = _upload(server, "https://ops.example.org", "ops.txt")
        other = _upload(server, EVIL, "evil.txt")

    assert allowed == 201
    assert other == 403
