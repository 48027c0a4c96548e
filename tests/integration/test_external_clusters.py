"""External Ray clusters: the user's manual, step by step, against real ``ray start`` clusters."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import transfers as tx
from tests.harness.raycluster import RayCluster, running_cluster
from tests.harness.server import CastRayServer, serving, start_server
from tests.harness.waiting import wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]

A_HEAD, A_WORKER, B_HEAD, SECURE_HEAD = "127.0.0.50", "127.0.0.51", "127.0.0.52", "127.0.0.53"
RAY_TOKEN = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def cluster_a(tmp_path_factory: pytest.TempPathFactory, ray_tmpdir: Path) -> Iterator[RayCluster]:
    """The manual's cluster (``ray start --head``, Ray's own temp dir), with a worker."""
    root = tmp_path_factory.mktemp("ext-a")
    with running_cluster(root, A_HEAD, A_WORKER, ray_tmpdir=ray_tmpdir) as ray:
        yield ray


@pytest.fixture(scope="module")
def cluster_b(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    with running_cluster(tmp_path_factory.mktemp("ext-b"), B_HEAD) as ray:
        yield ray


@pytest.fixture(scope="module")
def server(
    cluster_a: RayCluster,
    cluster_b: RayCluster,
    ray_tmpdir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[CastRayServer]:
    """An embedded-home CastRay whose HOME holds no Ray token (so token tests are exact), that
    looks for Ray's record of the last ``ray start`` where the manual's cluster left it."""
    root = tmp_path_factory.mktemp("ext-server")
    (root / "home").mkdir()
    env = {"HOME": str(root / "home"), "RAY_TMPDIR": str(ray_tmpdir)}
    with serving(root / "data", "--demo-nodes", "1", alive=2, env=env) as server:
        yield server


def _call(server: CastRayServer, method: str, path: str, **kwargs: Any) -> httpx.Response:
    with server.client() as client:
        return client.request(method, path, **kwargs)


def _connect_single_node(server: CastRayServer, cluster: RayCluster) -> str:
    """Connect a one-node cluster; the id of its endpoint."""
    connected = _call(
        server, "POST", "/api/cluster/connect-external", json={"cluster_address": cluster.address}
    )
    assert connected.status_code == 200, connected.text
    (endpoint,) = connected.json()["external_nodes"]
    return str(endpoint)


def _connect(server: CastRayServer, cluster: RayCluster) -> dict[str, Any]:
    answer = _call(
        server, "POST", "/api/cluster/connect-external", json={"cluster_address": cluster.address}
    )
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


@pytest.fixture
def both(server: CastRayServer, cluster_a: RayCluster, cluster_b: RayCluster) -> None:
    """Both clusters connected (connecting is idempotent): a test needs no earlier one."""
    _connect(server, cluster_a)
    _connect(server, cluster_b)


def _alive_ray_nodes(cluster: RayCluster) -> int:
    return sum(1 for node in cluster.list_nodes() if node["state"] == "ALIVE")


def test_discovery_lists_other_clusters_and_never_home(
    server: CastRayServer, cluster_a: RayCluster, cluster_b: RayCluster
) -> None:
    found = _call(server, "GET", "/api/cluster/discover").json()["clusters"]

    by_gcs = {c["gcs_address"]: c for c in found}
    assert server.status()["ray_cluster"]["address"] not in by_gcs
    a = by_gcs[cluster_a.address]
    assert a["dashboard_url"] == cluster_a.dashboard_url
    assert a["ray_version"].startswith("2.")
    assert a["alive_nodes"] == 2
    assert a["local_node_ips"] == [A_HEAD, A_WORKER]
    assert a["resources"]["CPU"] == 2
    assert a["connected"] is False
    assert by_gcs[cluster_b.address]["alive_nodes"] == 1


def test_the_manuals_discover_then_inspect_steps(
    server: CastRayServer, cluster_a: RayCluster, cluster_b: RayCluster
) -> None:
    """Step 4 connects the cluster the manual started (the one Ray recorded for the last 'ray
    start'), not the other one started after it; again, it answers that one, connected; the
    other is connected by its address, as the manual's "manual connection" shows."""
    first = _call(server, "POST", "/api/cluster/discover-external")
    second = _call(server, "POST", "/api/cluster/discover-external")
    _connect(server, cluster_b)

    assert first.status_code == 200, first.text
    assert first.json()["success"] is True
    assert first.json()["chosen"] == cluster_a.address
    assert "last 'ray start'" in first.json()["reason"]
    assert second.json()["success"] is True
    assert second.json()["chosen"] == cluster_a.address
    assert "connected already" in second.json()["message"]
    assert second.json()["connected_cluster"] == f"{A_HEAD}:{cluster_a.dashboard_port}"
    info = _call(server, "GET", "/api/cluster/external-info").json()
    assert info["is_connected"] is True
    assert info["connected_cluster"] == f"{B_HEAD}:{cluster_b.dashboard_port}"
    assert {n["address"] for n in info["external_nodes"].values()} == {A_HEAD, A_WORKER, B_HEAD}
    listed = _call(server, "GET", "/api/nodes/external").json()
    assert listed["success"] is True
    assert listed["count"] == _alive_ray_nodes(cluster_a) + _alive_ray_nodes(cluster_b) == 3
    assert {n["status"] for n in listed["external_nodes"]} == {"alive"}
    status = server.status()
    assert status["external_nodes_count"] == 3
    assert status["total_nodes"] == 2 + 3
    external = [n for n in status["node_statuses"] if n["is_external"]]
    assert {n["cluster"] for n in external} == {
        f"ext-{cluster.address.replace(':', '-')}" for cluster in (cluster_a, cluster_b)
    }


def test_connect_by_any_address_form_is_idempotent(
    server: CastRayServer, cluster_b: RayCluster
) -> None:
    by_gcs = _call(
        server, "POST", "/api/cluster/connect-external", json={"cluster_address": cluster_b.address}
    )
    by_url = _call(
        server,
        "POST",
        "/api/cluster/connect-external",
        json={"cluster_address": cluster_b.dashboard_url},
    )
    by_host_port = _call(
        server,
        "POST",
        "/api/cluster/connect-external",
        json={"cluster_address": cluster_b.dashboard_url.removeprefix("http://")},
    )

    assert by_gcs.status_code == 200, by_gcs.text
    assert by_gcs.json()["success"] is True
    names = {r.json()["cluster"]["name"] for r in (by_gcs, by_url, by_host_port)}
    assert len(names) == 1
    assert [n["address"] for n in by_gcs.json()["external_nodes"].values()] == [B_HEAD]
    clusters = _call(server, "GET", "/api/cluster/external-info").json()["clusters"]
    assert [c["name"] for c in clusters].count(names.pop()) == 1


def test_external_endpoints_send_and_receive_within_their_cluster(
    server: CastRayServer, cluster_a: RayCluster, both: None
) -> None:
    name = f"ext-{cluster_a.address.replace(':', '-')}"
    data = tx.random_bytes(300_000)
    tx.upload_bytes(server, "ext.bin", data)

    done = tx.send(
        server, source_node=f"{name}-{A_HEAD}", file="ext.bin", recipients=[f"{name}-{A_WORKER}"]
    )

    assert done["status"] == "completed", done
    assert Path(done["recipients"][f"{name}-{A_WORKER}"]["path"]).read_bytes() == data


def test_each_nodes_ray_metrics_port_shows_its_endpoints_counters(
    server: CastRayServer, cluster_a: RayCluster
) -> None:
    """Prometheus scraping a Ray cluster finds CastRay's series next to Ray's own, on the node
    where each endpoint runs, agreeing with the server's counters."""
    name = f"ext-{cluster_a.address.replace(':', '-')}"
    worker = next(r for r in cluster_a.raylets if r.ip == A_WORKER)
    endpoint = f"{name}-{A_WORKER}"
    connected = _call(
        server, "POST", "/api/cluster/connect-external", json={"cluster_address": cluster_a.address}
    )
    assert connected.status_code == 200, connected.text
    tx.upload_bytes(server, "metered-ext.bin", tx.random_bytes(200_000))
    done = tx.send(
        server, source_node=f"{name}-{A_HEAD}", file="metered-ext.bin", recipients=[endpoint]
    )
    assert done["status"] == "completed", done

    def exported() -> float | None:
        text = httpx.get(f"http://{A_WORKER}:{worker.metrics_port}/metrics", timeout=5).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if (
                    sample.name == "ray_castray_endpoint_bytes_received_total"
                    and sample.labels.get("endpoint") == endpoint
                ):
                    return sample.value
        return None

    received = server.nodes()[endpoint]["counters"]["bytes_received"]
    assert received >= 200_000
    wait_for(
        lambda: exported() == received,
        60,
        f"the node's Ray metrics to show {endpoint} received {received} bytes",
        interval=1,
    )


@pytest.mark.parametrize(
    ("source", "targets"),
    [
        ("home", ["a-head"]),
        ("a-worker", ["home"]),
        ("a-head", ["b-head"]),
        ("home", ["a-head", "a-worker", "b-head", "node_1"]),
    ],
    ids=["home-to-external", "external-to-home", "external-a-to-b", "across-three-clusters"],
)
@pytest.mark.parametrize("transport", ["stream", "object-store"])
def test_transfers_cross_cluster_boundaries_byte_for_byte(
    both: None,
    server: CastRayServer,
    cluster_a: RayCluster,
    cluster_b: RayCluster,
    source: str,
    targets: list[str],
    transport: str,
) -> None:
    a = f"ext-{cluster_a.address.replace(':', '-')}"
    b = f"ext-{cluster_b.address.replace(':', '-')}"
    ids = {
        "home": "home-127.0.0.1",
        "node_1": "node_1",
        "a-head": f"{a}-{A_HEAD}",
        "a-worker": f"{a}-{A_WORKER}",
        "b-head": f"{b}-{B_HEAD}",
    }
    data = tx.random_bytes(700_000)
    name = f"cross-{source}-{len(targets)}-{transport}.bin"
    tx.upload_bytes(server, name, data)
    mode = "unicast" if len(targets) == 1 else "multicast"

    done = tx.send(
        server,
        source_node=ids[source],
        file=name,
        mode=mode,
        recipients=[ids[t] for t in targets],
        transport=transport,
    )

    assert done["status"] == "completed", done
    assert (done["transport"], done["transport_note"]) == (transport, None), done
    for target in targets:
        assert Path(done["recipients"][ids[target]]["path"]).read_bytes() == data


def test_a_file_received_in_one_cluster_can_be_sent_on_to_another(
    server: CastRayServer, cluster_a: RayCluster, cluster_b: RayCluster, both: None
) -> None:
    a = f"ext-{cluster_a.address.replace(':', '-')}-{A_WORKER}"
    b = f"ext-{cluster_b.address.replace(':', '-')}-{B_HEAD}"
    data = tx.random_bytes(300_001)
    tx.upload_bytes(server, "relay.bin", data)
    tx.send(server, source_node="home-127.0.0.1", file="relay.bin", recipients=[a])

    done = tx.send(server, source_node=a, file="relay.bin", recipients=[b])

    assert done["status"] == "completed", done
    assert Path(done["recipients"][b]["path"]).read_bytes() == data


def test_the_cli_lists_and_the_demo_sends_only_to_the_cluster_rays_rule_names(
    server: CastRayServer, cluster_a: RayCluster, cluster_b: RayCluster
) -> None:
    _connect(server, cluster_b)  # connected, but not the cluster Ray's rule names
    b_endpoint = f"ext-{cluster_b.address.replace(':', '-')}-{B_HEAD}"
    b_received = server.nodes()[b_endpoint]["counters"]["bytes_received"]
    connected = server.cli("clusters", "connect", cluster_a.address)  # idempotent
    discovered = server.cli("clusters", "discover", "--json")
    info = server.cli("clusters", "info")
    external = server.cli("nodes", "--external", "--json")
    demo = server.cli("demo", "--size", "1MB")

    assert connected.returncode == 0, connected.stderr
    assert discovered.returncode == 0, discovered.stderr
    gcs = {c["gcs_address"] for c in json.loads(discovered.stdout)["clusters"]}
    assert cluster_a.address in gcs
    assert info.returncode == 0 and "connected" in info.stdout
    nodes = json.loads(external.stdout)
    assert nodes and all(n["is_external"] for n in nodes)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "every copy BLAKE3-verified: True" in demo.stdout
    a_name = f"ext-{cluster_a.address.replace(':', '-')}"
    for node in nodes:
        assert (node["id"] in demo.stdout) is (node["cluster"] == a_name), demo.stdout
    assert server.nodes()[b_endpoint]["counters"]["bytes_received"] == b_received


def test_the_cli_reports_errors_in_one_line(server: CastRayServer) -> None:
    result = server.cli("clusters", "connect", "not an address")

    assert result.returncode == 1
    assert "cannot read the Ray address" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("address", "status", "says"),
    [
        ("not an address", 422, "cannot read the Ray address"),
        ("127.0.0.1:notaport", 422, "cannot read the Ray address"),
        ("ftp://127.0.0.1:21", 422, "cannot read the Ray address"),
        ("127.0.0.99:1", 502, "could not reach a Ray cluster at 127.0.0.99:1"),
        ("http://127.0.0.99:1", 502, "could not reach a Ray cluster at http://127.0.0.99:1"),
    ],
)
def test_bad_addresses_get_a_clear_error_quickly(
    server: CastRayServer, address: str, status: int, says: str
) -> None:
    with server.client() as client:
        response = client.post(
            "/api/cluster/connect-external", json={"cluster_address": address}, timeout=15
        )

    assert response.status_code == status, response.text
    assert says in response.json()["detail"]
    assert server.status()["clusters"][0]["status"] == "connected"


def test_an_http_server_that_is_not_ray_is_refused_like_any_address_without_ray(
    server: CastRayServer,
) -> None:
    response = _call(
        server, "POST", "/api/cluster/connect-external", json={"cluster_address": server.url}
    )

    assert response.status_code == 502
    assert response.json()["detail"].startswith(f"could not reach a Ray cluster at {server.url}")


def test_disconnect_one_then_all_then_rediscover(
    server: CastRayServer, cluster_a: RayCluster, cluster_b: RayCluster
) -> None:
    _connect(server, cluster_a)
    _connect(server, cluster_b)
    before = len(_call(server, "GET", "/api/cluster/external-info").json()["clusters"])
    one = _call(
        server, "DELETE", "/api/cluster/disconnect-external", params={"cluster": cluster_b.address}
    )
    assert one.status_code == 200, one.text
    after = _call(server, "GET", "/api/cluster/external-info").json()["clusters"]
    assert len(after) == before - 1
    assert f"ext-{cluster_b.address.replace(':', '-')}" not in {c["name"] for c in after}

    everything = _call(server, "DELETE", "/api/cluster/disconnect-external")
    nothing = _call(server, "DELETE", "/api/cluster/disconnect-external")

    assert everything.json()["success"] is True
    assert nothing.status_code == 404
    info = _call(server, "GET", "/api/cluster/external-info").json()
    assert info == {
        "is_connected": False,
        "connected_cluster": None,
        "external_nodes": {},
        "clusters": [],
    }
    assert server.status()["external_nodes_count"] == 0
    again = _call(server, "POST", "/api/cluster/discover-external").json()
    assert again["success"] is True, again["message"]
    assert again["chosen"] == cluster_a.address
    assert {n["cluster"] for n in again["external_nodes"].values()} == {again["cluster"]}


@pytest.fixture(scope="module")
def secure_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    """A cluster with Ray token authentication on."""
    root = tmp_path_factory.mktemp("ext-secure")
    with running_cluster(root, SECURE_HEAD, auth_token=RAY_TOKEN) as ray:
        yield ray


def test_token_protected_cluster_needs_the_right_token(
    server: CastRayServer, secure_cluster: RayCluster
) -> None:
    address = secure_cluster.dashboard_url
    missing = _call(
        server, "POST", "/api/cluster/connect-external", json={"cluster_address": address}
    )
    wrong = _call(
        server,
        "POST",
        "/api/cluster/connect-external",
        json={"cluster_address": address, "ray_token": "not-the-token"},
    )
    right = _call(
        server,
        "POST",
        "/api/cluster/connect-external",
        json={"cluster_address": secure_cluster.address, "ray_token": RAY_TOKEN},
    )

    assert missing.status_code == 401
    assert "ray_token" in missing.json()["detail"]
    assert wrong.status_code == 403
    assert "refused" in wrong.json()["detail"]
    assert right.status_code == 200, right.text
    nodes = right.json()["external_nodes"]
    assert [n["status"] for n in nodes.values()] == ["alive"]
    assert RAY_TOKEN not in server.log.read_text()


def test_discovery_reports_a_token_protected_cluster(
    server: CastRayServer, secure_cluster: RayCluster
) -> None:
    found = _call(server, "GET", "/api/cluster/discover").json()["clusters"]

    secure = next(c for c in found if c["gcs_address"] == secure_cluster.address)
    assert secure["auth_required"] is True
    assert secure["connected"] is True


def test_a_cluster_on_127_0_0_1_is_joined_there(server: CastRayServer, tmp_path: Path) -> None:
    """Started in Ray's single-machine mode (as the manual can be run on a laptop), a cluster
    records 127.0.0.1; Ray's driver would swap that for the primary IP unless told not to."""
    loopback_only = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    with running_cluster(tmp_path, "127.0.0.1", ray_env=loopback_only) as laptop:
        found = _call(server, "GET", "/api/cluster/discover").json()["clusters"]
        connected = _call(
            server,
            "POST",
            "/api/cluster/connect-external",
            json={"cluster_address": laptop.dashboard_url},
            timeout=60,
        )
        assert connected.status_code == 200, connected.text
        (endpoint,) = connected.json()["external_nodes"]
        tx.upload_bytes(server, "to-the-laptop.bin", tx.random_bytes(3_000_000))
        sent = tx.send(
            server, source_node="node_1", file="to-the-laptop.bin", recipients=[endpoint]
        )
        gone = _call(
            server, "DELETE", "/api/cluster/disconnect-external", params={"cluster": laptop.address}
        )

    assert laptop.address in {c["gcs_address"] for c in found}
    assert endpoint.endswith("-127.0.0.1")
    assert sent["status"] == "completed", sent
    assert gone.status_code == 200, gone.text


def test_a_killed_external_cluster_goes_dead_and_the_rest_keeps_working(
    server: CastRayServer, tmp_path: Path
) -> None:
    tx.upload_bytes(server, "after-the-loss.bin", tx.random_bytes(100_000))
    with running_cluster(tmp_path, "127.0.0.54") as doomed:
        endpoint = _connect_single_node(server, doomed)
        for raylet in doomed.raylets:
            raylet.stop(grace=0)

    wait_for(
        lambda: server.nodes()[endpoint]["status"] == "dead", 15, "the lost cluster's endpoint"
    )
    refused = _call(
        server,
        "POST",
        "/api/transfers",
        json={"source_node": "node_1", "file": "after-the-loss.bin", "recipients": [endpoint]},
    )
    assert refused.status_code == 409
    assert "dead" in refused.json()["detail"]
    home = tx.send(
        server, source_node="home-127.0.0.1", file="after-the-loss.bin", recipients=["node_1"]
    )
    assert home["status"] == "completed"


def test_the_token_ray_keeps_on_this_machine_is_used_when_none_is_given(
    secure_cluster: RayCluster, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(RAY_TOKEN + "\n")
    server = start_server(tmp_path / "data", env={"HOME": str(home)})
    try:
        found = _call(server, "GET", "/api/cluster/discover").json()["clusters"]
        connected = _call(
            server,
            "POST",
            "/api/cluster/connect-external",
            json={"cluster_address": secure_cluster.dashboard_url},
        )
    finally:
        server.stop()

    secure = next(c for c in found if c["gcs_address"] == secure_cluster.address)
    assert secure["alive_nodes"] == 1
    assert connected.status_code == 200, connected.text
    assert [n["status"] for n in connected.json()["external_nodes"].values()] == ["alive"]


def test_a_transfer_into_a_cluster_that_dies_fails_with_the_reason(
    server: CastRayServer, tmp_path: Path
) -> None:
    tx.generate(server, "into-the-void.bin", "400MB", "pattern")
    with running_cluster(tmp_path, "127.0.0.55") as doomed:
        endpoint = _connect_single_node(server, doomed)
        transfer_id = tx.start(
            server, source_node="home-127.0.0.1", file="into-the-void.bin", recipients=[endpoint]
        )
        wait_for(
            lambda: tx.get(server, transfer_id)["recipients"][endpoint]["bytes_done"] > 0,
            60,
            "the transfer to be under way",
            interval=0.05,
        )
        for raylet in doomed.raylets:
            raylet.stop(grace=0)

    done = tx.wait_finished(server, transfer_id, timeout=60)
    assert done["status"] == "failed", done
    assert done["recipients"][endpoint]["status"] == "failed"
    reasons = f"{done['error']} {done['recipients'][endpoint]['error']}"
    assert "down" in reasons or "died" in reasons, done
