"""Finding 1: the machine's Ray token goes only where it belongs.

The server runs with ``RAY_AUTH_TOKEN`` set (the user's own Ray token); fake Ray services
record what they are sent.
"""

from __future__ import annotations

import pytest

from castray.ray_address import parse_address
from castray.server.local_clusters import LocalCluster
from castray.server.ray_token import RayTokens
from tests.harness.server import CastRayServer
from tests.security.conftest import MACHINE_RAY_TOKEN, FakeDashboard, FakeGrpc

pytestmark = pytest.mark.ray


def _connect(server: CastRayServer, address: str) -> tuple[int, str]:
    with server.client() as client:
        response = client.post(
            "/api/cluster/connect-external", json={"cluster_address": address}, timeout=60
        )
    return response.status_code, str(response.json()["detail"])


def test_a_fake_dashboard_asking_for_a_token_is_not_sent_the_machines(
    server: CastRayServer, fake_dashboard: FakeDashboard
) -> None:
    status, detail = _connect(server, fake_dashboard.url)

    assert status == 401, detail
    assert "ray_token" in detail
    assert fake_dashboard.seen, "the fake dashboard was never asked"
    assert not [h for h in fake_dashboard.seen if "authorization" in {k.lower() for k in h}]


def test_a_fake_dashboard_without_auth_is_never_sent_a_token(
    server: CastRayServer, fake_dashboard: FakeDashboard
) -> None:
    fake_dashboard.auth_mode = "none"

    status, _ = _connect(server, fake_dashboard.url)

    assert status == 502  # a dashboard, but of no cluster on this machine
    assert fake_dashboard.seen
    assert all(MACHINE_RAY_TOKEN not in str(headers) for headers in fake_dashboard.seen)


def test_a_fake_ray_client_server_is_never_sent_the_machines_token(
    server: CastRayServer, fake_grpc: FakeGrpc
) -> None:
    status, detail = _connect(server, f"ray://127.0.0.1:{fake_grpc.port}")

    assert status in (502, 504), detail
    assert fake_grpc.metadata, "the fake gRPC server was never called"
    assert all(MACHINE_RAY_TOKEN not in str(metadata) for metadata in fake_grpc.metadata)
    assert all("authorization" not in dict(metadata) for metadata in fake_grpc.metadata)


def test_a_fake_gcs_is_never_sent_the_machines_token(
    server: CastRayServer, fake_grpc: FakeGrpc
) -> None:
    status, detail = _connect(server, f"127.0.0.1:{fake_grpc.port}")

    assert status in (502, 503, 504), detail
    assert all(MACHINE_RAY_TOKEN not in str(metadata) for metadata in fake_grpc.metadata)


def test_only_the_users_own_clusters_here_or_trusted_hosts_may_see_the_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    monkeypatch.setenv("RAY_AUTH_TOKEN", MACHINE_RAY_TOKEN)
    tokens = RayTokens(trusted_hosts=["ray-head.internal"])
    own = LocalCluster("127.0.0.2:6379", owner_uid=os.geteuid())
    theirs = LocalCluster("127.0.0.3:6379", owner_uid=os.geteuid() + 4242)

    assert tokens.for_cluster(own, None, None) == MACHINE_RAY_TOKEN
    assert tokens.for_cluster(theirs, None, None) is None
    assert tokens.for_cluster(None, parse_address("10.9.8.7:6379"), None) is None
    assert tokens.for_cluster(None, parse_address("ray-head.internal:6379"), None) == (
        MACHINE_RAY_TOKEN
    )
    assert tokens.for_cluster(theirs, None, "given-for-this-one") == "given-for-this-one"
