"""The manual on a machine where other Ray clusters run too: discovery picks the cluster Ray's
own rule names or nothing, a restarted cluster reconnects, ``ray://`` works, one cluster has
one name."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.harness import transfers as tx
from tests.harness.other_ray import another_user, ray_release
from tests.harness.raycluster import RayCluster, running_cluster
from tests.harness.server import CastRayServer, serving, start_server
from tests.harness.waiting import wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]

OLDER, NEWER, RESTARTED, CLIENT, OTHER_USER, OTHER_RELEASE, SAME, DOOMED = (
    f"127.0.0.{n}" for n in range(80, 88)
)
OTHER_RAY_RELEASE = "2.40.0"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, ray_tmpdir: Path) -> Iterator[CastRayServer]:
    """CastRay over its embedded home, with a private HOME (so ``~/.ray`` can be checked),
    reading Ray's record of the last ``ray start`` in the module's own temp dir."""
    root = tmp_path_factory.mktemp("busy-server")
    (root / "home").mkdir()
    env = {"HOME": str(root / "home"), "RAY_TMPDIR": str(ray_tmpdir)}
    with serving(root / "data", "--demo-nodes", "1", alive=2, env=env) as server:
        yield server


def _call(server: CastRayServer, method: str, path: str, **kwargs: Any) -> httpx.Response:
    with server.client() as client:
        return client.request(method, path, **kwargs)


def _connect(server: CastRayServer, address: str) -> httpx.Response:
    return _call(server, "POST", "/api/cluster/connect-external", json={"cluster_address": address})


def _discover_external(server: CastRayServer) -> dict[str, Any]:
    response = _call(server, "POST", "/api/cluster/discover-external")
    assert response.status_code == 200, response.text
    return dict(response.json())


def _disconnect_all(server: CastRayServer) -> None:
    _call(server, "DELETE", "/api/cluster/disconnect-external")


def _name(cluster: RayCluster) -> str:
    return f"ext-{cluster.address.replace(':', '-')}"


def _endpoint(cluster: RayCluster) -> str:
    return f"{_name(cluster)}-{cluster.head_ip}"


def _cluster_info(server: CastRayServer, name: str) -> dict[str, Any] | None:
    info = _call(server, "GET", "/api/cluster/external-info").json()
    return next((c for c in info["clusters"] if c["name"] == name), None)


def _kill_and_see_it_dead(server: CastRayServer, cluster: RayCluster) -> None:
    cluster.kill()
    wait_for(
        lambda: server.nodes()[_endpoint(cluster)]["status"] == "dead",
        30,
        "the killed cluster's endpoint to be dead",
    )


def _send_and_check(server: CastRayServer, source: str, recipient: str, name: str) -> None:
    data = tx.random_bytes(1_500_000)
    tx.upload_bytes(server, name, data)
    done = tx.send(server, source_node=source, file=name, recipients=[recipient])
    assert done["status"] == "completed", done
    assert Path(done["recipients"][recipient]["path"]).read_bytes() == data


def test_discovery_connects_the_manuals_cluster_not_the_one_started_after_it(
    server: CastRayServer, tmp_path: Path, ray_tmpdir: Path
) -> None:
    """The manual's ``ray start --head --dashboard-port=...``, then another cluster of the same
    user with its own ports and temp dir: discovery connects the manual's, the one Ray recorded
    for the last ``ray start`` (as ``ray status`` and ``ray.init()`` would use it)."""
    _disconnect_all(server)
    with (
        running_cluster(tmp_path / "manual", OLDER, ray_tmpdir=ray_tmpdir) as manual,
        running_cluster(tmp_path / "newer", NEWER) as newer,
    ):
        first = _discover_external(server)
        info = _call(server, "GET", "/api/cluster/external-info").json()
        _disconnect_all(server)

    assert first["success"] is True, first["message"]
    assert first["chosen"] == manual.address
    assert first["cluster"] == _name(manual)
    assert "last 'ray start'" in first["reason"]
    assert manual.address in first["message"] and first["reason"] in first["message"]
    assert first["connected_cluster"] == f"{OLDER}:{manual.dashboard_port}"
    assert [c["name"] for c in info["clusters"]] == [_name(manual)]
    listed = {c["gcs_address"]: c for c in first["discovered_clusters"]}
    assert listed[newer.address]["own"] is True
    assert listed[newer.address]["connected"] is False
    assert listed[newer.address]["owner"] == "root" or os.geteuid() != 0
    assert listed[newer.address]["started_at"] > listed[manual.address]["started_at"]


def test_with_several_clusters_and_no_record_discovery_connects_nothing_and_lists_them(
    server: CastRayServer, tmp_path: Path
) -> None:
    _disconnect_all(server)
    with (
        running_cluster(tmp_path / "one", OLDER) as one,
        running_cluster(tmp_path / "two", NEWER) as two,
    ):
        answer = _discover_external(server)
        info = _call(server, "GET", "/api/cluster/external-info").json()
        picked = _connect(server, two.address)
        _disconnect_all(server)

    assert answer["success"] is False
    assert answer["chosen"] is None and answer["cluster"] is None
    assert {one.address, two.address} <= set(answer["candidates"])
    message = answer["message"]
    assert "nothing was connected" in message
    assert "connect-external" in message and "RAY_ADDRESS" in message
    assert one.address in message and two.address in message
    assert info["clusters"] == [] and info["is_connected"] is False
    assert picked.status_code == 200, picked.text


def test_a_cluster_of_another_user_is_listed_and_never_connected_by_discovery(
    server: CastRayServer, tmp_path: Path
) -> None:
    _disconnect_all(server)
    with (
        another_user() as stranger,
        running_cluster(tmp_path / "theirs", OTHER_USER, run_as=stranger) as theirs,
    ):
        found = _call(server, "GET", "/api/cluster/discover").json()["clusters"]
        discovered = _discover_external(server)
        info = _call(server, "GET", "/api/cluster/external-info").json()

    listed = next(c for c in found if c["gcs_address"] == theirs.address)
    assert listed["owner"] == stranger.user
    assert listed["own"] is False
    assert listed["reachable"] is True
    assert discovered["chosen"] != theirs.address
    assert stranger.user in discovered["message"]
    assert "not connected" in discovered["message"]
    assert _name(theirs) not in {c["name"] for c in info["clusters"]}


def test_a_restarted_cluster_reconnects_with_fresh_endpoints_and_carries_files(
    server: CastRayServer, tmp_path: Path
) -> None:
    _disconnect_all(server)
    with running_cluster(tmp_path, RESTARTED) as cluster:
        assert _connect(server, cluster.address).status_code == 200
        session = _cluster_info(server, _name(cluster))["ray"]["session_name"]  # type: ignore[index]
        _kill_and_see_it_dead(server, cluster)
        cluster.start_head()  # the manual: "restart the Ray cluster and retry"

        rediscovered = _connect(server, cluster.address)
        after_discover = _cluster_info(server, _name(cluster))
        _send_and_check(server, "node_1", _endpoint(cluster), "after-restart.bin")
        cluster.kill()
        wait_for(
            lambda: _cluster_info(server, _name(cluster))["status"] != "connected",  # type: ignore[index]
            30,
            "the cluster to be seen down again",
        )
        cluster.start_head()
        reconnected = _connect(server, cluster.dashboard_url)
        _send_and_check(server, _endpoint(cluster), "node_1", "after-second-restart.bin")

    # Connecting again reconnects it, unless CastRay did so by itself first (it retries a
    # cluster that went down until it answers again): either way it is back, new session.
    assert rediscovered.status_code == 200, rediscovered.text
    assert rediscovered.json()["cluster"]["name"] == _name(cluster)
    assert after_discover is not None and after_discover["status"] == "connected"
    assert after_discover["ray"]["session_name"] != session
    assert reconnected.status_code == 200, reconnected.text
    assert reconnected.json()["cluster"]["status"] == "connected"
    assert reconnected.json()["cluster"]["name"] == _name(cluster)
    assert [n["status"] for n in reconnected.json()["external_nodes"].values()] == ["alive"]


def test_ray_client_connects_carries_transfers_and_disconnects(
    server: CastRayServer, tmp_path: Path
) -> None:
    _disconnect_all(server)
    with running_cluster(tmp_path, CLIENT) as cluster:
        connected = _connect(server, cluster.client_address)
        assert connected.status_code == 200, connected.text
        endpoint = next(iter(connected.json()["external_nodes"]))
        _send_and_check(server, "node_1", endpoint, "through-ray-client.bin")
        _send_and_check(server, endpoint, "home-127.0.0.1", "back-from-ray-client.bin")
        gone = _call(
            server,
            "DELETE",
            "/api/cluster/disconnect-external",
            params={"cluster": cluster.client_address},
        )

    assert connected.json()["cluster"]["name"] == _name(cluster)
    assert connected.json()["cluster"]["ray"]["address"] == cluster.address
    assert gone.status_code == 200, gone.text
    assert gone.json()["disconnected"] == [_name(cluster)]
    assert not (server.data_dir.parent / "home" / ".ray").exists()


def test_a_ray_client_address_that_answers_nothing_fails_fast(server: CastRayServer) -> None:
    response = _connect(server, "ray://127.0.0.99:1")

    assert response.status_code == 502
    assert "could not reach a Ray cluster at ray://127.0.0.99:1" in response.json()["detail"]


@pytest.fixture(scope="module")
def other_release(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    """A cluster of another Ray release, from its own virtualenv."""
    ray = ray_release(OTHER_RAY_RELEASE)
    root = tmp_path_factory.mktemp("other-release")
    with running_cluster(root, OTHER_RELEASE, ray=ray) as cluster:
        yield cluster


@pytest.mark.parametrize("form", ["dashboard", "dashboard host:port", "gcs", "ray client"])
def test_a_cluster_of_another_ray_release_is_refused_naming_both_versions(
    server: CastRayServer, other_release: RayCluster, form: str
) -> None:
    address = {
        "dashboard": other_release.dashboard_url,
        "dashboard host:port": other_release.dashboard_url.removeprefix("http://"),
        "gcs": other_release.address,
        "ray client": other_release.client_address,
    }[form]
    ours = _call(server, "GET", "/api/status").json()["ray_cluster"]["ray_version"]

    with server.client() as client:
        response = client.post(
            "/api/cluster/connect-external", json={"cluster_address": address}, timeout=10
        )

    assert response.status_code == 409, response.text
    assert response.json()["code"] == "version_mismatch"
    detail = response.json()["detail"]
    assert f"Ray {OTHER_RAY_RELEASE}" in detail and f"Ray {ours}" in detail


def test_discovery_lists_another_release_as_ray_and_leaves_it_alone(
    server: CastRayServer, other_release: RayCluster
) -> None:
    found = _call(server, "GET", "/api/cluster/discover").json()["clusters"]

    listed = next(c for c in found if c["gcs_address"] == other_release.address)
    assert listed["reachable"] is True
    assert listed["ray_version"] == OTHER_RAY_RELEASE
    assert OTHER_RAY_RELEASE in listed["detail"]


def test_one_cluster_by_dashboard_gcs_and_ray_client_is_one_cluster(
    server: CastRayServer, tmp_path: Path
) -> None:
    _disconnect_all(server)
    with running_cluster(tmp_path, SAME) as cluster:
        answers = [
            _connect(server, address)
            for address in (
                cluster.client_address,
                cluster.address,
                cluster.dashboard_url,
                cluster.dashboard_url.removeprefix("http://"),
            )
        ]
        info = _call(server, "GET", "/api/cluster/external-info").json()
        gone = _call(
            server,
            "DELETE",
            "/api/cluster/disconnect-external",
            params={"cluster": cluster.address},
        )

    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert answer.json()["cluster"]["name"] == _name(cluster)
    assert [c["name"] for c in info["clusters"]] == [_name(cluster)]
    assert list(info["external_nodes"]) == [_endpoint(cluster)]
    assert gone.json()["disconnected"] == [_name(cluster)]


def test_dead_external_nodes_are_listed_by_both_endpoints(
    server: CastRayServer, tmp_path: Path
) -> None:
    _disconnect_all(server)
    with running_cluster(tmp_path, DOOMED) as cluster:
        assert _connect(server, cluster.address).status_code == 200
        _kill_and_see_it_dead(server, cluster)
        listed = _call(server, "GET", "/api/nodes/external").json()
        info = _call(server, "GET", "/api/cluster/external-info").json()
        _disconnect_all(server)

    assert listed["count"] == 1
    assert [(n["id"], n["status"]) for n in listed["external_nodes"]] == [
        (_endpoint(cluster), "dead")
    ]
    assert info["external_nodes"][_endpoint(cluster)]["status"] == "dead"
    assert info["is_connected"] is False


def test_the_cli_prints_ids_and_addresses_whole_in_80_columns(
    server: CastRayServer, tmp_path: Path
) -> None:
    _disconnect_all(server)
    with running_cluster(tmp_path, NEWER) as cluster:
        assert _connect(server, cluster.address).status_code == 200
        env = {"COLUMNS": "80"}
        nodes = server.cli("nodes", env=env)
        found = server.cli("clusters", "discover", env=env)
        info = server.cli("clusters", "info", env=env)
        _disconnect_all(server)

    for result in (nodes, found, info):
        assert result.returncode == 0, result.stderr
    for whole in (_endpoint(cluster), "home-127.0.0.1", "node_1"):
        assert re.search(rf"(^|\s){re.escape(whole)}(\s|$)", nodes.stdout, re.M), nodes.stdout
    for whole in (cluster.address, cluster.dashboard_url, cluster.client_address):
        assert re.search(rf"(^|\s){re.escape(whole)}(,|\s|$)", found.stdout, re.M), found.stdout
    assert re.search(rf"(^|\s){re.escape(_name(cluster))}(\s|$)", info.stdout, re.M)


def test_stopping_with_an_unreachable_cluster_takes_at_most_3_s(tmp_path: Path) -> None:
    """Ctrl+C must not wait on a cluster that stopped answering (its agent may hang in Ray)."""
    with running_cluster(tmp_path / "frozen", DOOMED) as frozen:
        server = start_server(tmp_path / "data", env={"HOME": str(tmp_path)})
        try:
            assert _connect(server, frozen.address).status_code == 200
            for raylet in frozen.raylets:
                os.killpg(raylet.process.pid, signal.SIGSTOP)
            wait_for(
                lambda: _cluster_info(server, _name(frozen))["status"] == "unreachable",  # type: ignore[index]
                30,
                "the frozen cluster to be unreachable",
            )
            started = time.monotonic()
            server.stop()
            seconds = time.monotonic() - started
        finally:
            server.stop()
            for raylet in frozen.raylets:
                os.killpg(raylet.process.pid, signal.SIGCONT)

    assert seconds <= 3.0, f"stopping took {seconds:.1f} s"
    assert not [p for p in psutil.process_iter(["cmdline"]) if _agent_of(p, server)]
    server.check_log_clean()


def _agent_of(process: psutil.Process, server: CastRayServer) -> bool:
    command = " ".join(process.info.get("cmdline") or [])
    return "castray.agent" in command and str(server.data_dir) in command
