"""Pins against a real server over a ``ray start`` cluster of raylets on this machine (each
looks like its own host): a pinned file reaches every node of its set, a raylet that joins
later, a cluster connected later; a copy that goes or changes comes back; a new version rolls
out atomically; a Ray task finds its node's copy with ``castray.local_path``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import pytest

from tests.harness import transfers as tx
from tests.harness.raycluster import RayCluster, running_cluster
from tests.harness.server import CastRayServer, serving
from tests.harness.waiting import wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]

HEAD, WORKER, JOINER, OTHER = "127.0.0.90", "127.0.0.91", "127.0.0.92", "127.0.0.93"


def node(ip: str) -> str:
    return f"home-{ip}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    with running_cluster(tmp_path_factory.mktemp("pins-ray"), HEAD, WORKER) as ray:
        yield ray


@pytest.fixture(scope="module")
def server(
    cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CastRayServer]:
    root = tmp_path_factory.mktemp("pins-server")
    env = {"HOME": str(root), "CASTRAY_PIN_CHECK_INTERVAL": "1"}
    with serving(root / "data", "--ray-address", cluster.address, alive=2, env=env) as server:
        yield server


def _pin(server: CastRayServer, file: str, nodes: Any = "all") -> dict[str, Any]:
    made = tx.post(server, "/api/pins", {"file": file, "nodes": nodes})
    assert made.status_code in (200, 201), made.text
    return dict(made.json())


def _get(server: CastRayServer, pin_id: str) -> dict[str, Any]:
    with server.client() as client:
        response = client.get(f"/api/pins/{pin_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def _verified_on(
    server: CastRayServer, pin_id: str, nodes: list[str], blake3_hex: str, timeout: float = 120
) -> dict[str, Any]:
    """Wait until each of ``nodes`` holds a verified copy of that version; the pin then."""

    def covered() -> dict[str, Any] | None:
        pin = _get(server, pin_id)
        copies = pin["copies"]
        done = all(
            n in copies and copies[n]["status"] == "verified" and copies[n]["blake3"] == blake3_hex
            for n in nodes
        )
        return pin if done else None

    return wait_for(covered, timeout, f"pin {pin_id} verified on {', '.join(nodes)}", interval=0.3)


def _unpin(server: CastRayServer, pin_id: str) -> None:
    with server.client() as client:
        assert client.delete(f"/api/pins/{pin_id}").status_code == 204


def _hash(path: Path) -> str:
    return blake3.blake3(path.read_bytes()).hexdigest()


def test_a_pin_reaches_every_node_and_a_node_that_joins_later(
    server: CastRayServer, cluster: RayCluster
) -> None:
    made = tx.generate(server, "weights.bin", "8MiB", "random")
    printed = server.cli("pin", "weights.bin", "--all")
    assert printed.returncode == 0, printed.stderr
    pin_id = printed.stdout.split()[1].rstrip(":")
    again = tx.post(server, "/api/pins", {"file": "weights.bin", "nodes": "all"})
    assert again.status_code == 200 and again.json()["id"] == pin_id  # idempotent
    try:
        pin = _verified_on(server, pin_id, [node(HEAD), node(WORKER)], made["blake3"])
        for copy in pin["copies"].values():
            assert _hash(Path(copy["path"])) == made["blake3"]
        assert pin["coverage"]["verified"] == pin["coverage"]["nodes"] == 2

        cluster.add_worker(JOINER)
        pin = _verified_on(server, pin_id, [node(JOINER)], made["blake3"])
        joined = pin["copies"][node(JOINER)]
        assert _hash(Path(joined["path"])) == made["blake3"]
        brought = tx.get(server, joined["transfer_id"])
        assert brought["source_node"] in (node(HEAD), node(WORKER)), brought
        listed = server.cli("pins", pin_id)
        assert "3 of 3 nodes verified" in listed.stdout, listed.stdout
    finally:
        _unpin(server, pin_id)


def test_a_copy_that_goes_or_changes_is_restored(server: CastRayServer) -> None:
    made = tx.generate(server, "config.bin", "1MiB", "random")
    pin_id = _pin(server, "config.bin", {"endpoints": [node(WORKER)]})["id"]
    try:
        path = Path(
            _verified_on(server, pin_id, [node(WORKER)], made["blake3"])["copies"][node(WORKER)][
                "path"
            ]
        )
        path.unlink()
        wait_for(lambda: path.exists() or None, 60, "the removed copy to be back")
        assert _hash(path) == made["blake3"]

        with path.open("r+b") as file:  # same size, other bytes, a new mtime
            file.write(b"\0" * 4096)
        wait_for(lambda: _hash(path) == made["blake3"] or None, 60, "the changed copy restored")
    finally:
        _unpin(server, pin_id)


def test_a_new_version_rolls_out_and_readers_never_see_half_a_file(
    server: CastRayServer,
) -> None:
    old = tx.upload_bytes(server, "model.bin", os.urandom(6 * 1024 * 1024))
    nodes = [node(HEAD), node(WORKER)]
    pin_id = _pin(server, "model.bin", {"endpoints": nodes})["id"]
    try:
        pin = _verified_on(server, pin_id, nodes, old["blake3"])
        path = Path(pin["copies"][node(WORKER)]["path"])
        seen: set[str] = set()
        stop = threading.Event()

        def read() -> None:
            while not stop.is_set():
                seen.add(_hash(path))

        reader = threading.Thread(target=read)
        reader.start()
        try:
            new = tx.upload_bytes(server, "model.bin", os.urandom(6 * 1024 * 1024))
            pin = _verified_on(server, pin_id, nodes, new["blake3"])
        finally:
            stop.set()
            reader.join()
        assert pin["blake3"] == new["blake3"]
        assert seen <= {old["blake3"], new["blake3"]}, "a reader saw a file half-written"
        for copy in pin["copies"].values():
            assert _hash(Path(copy["path"])) == new["blake3"]
    finally:
        _unpin(server, pin_id)


def test_a_node_without_room_shows_why_and_holds_up_no_other(server: CastRayServer) -> None:
    made = tx.generate(server, "roomy.bin", "3MiB", "random")
    with tx.tiny_disk_node(server, "pin-tiny") as tiny:
        pin_id = _pin(server, "roomy.bin", {"endpoints": [tiny, node(WORKER)]})["id"]
        try:
            _verified_on(server, pin_id, [node(WORKER)], made["blake3"])
            failed = wait_for(
                lambda: (
                    (c := _get(server, pin_id)["copies"].get(tiny))
                    and c["status"] == "failed"
                    and c
                ),
                60,
                "the tiny node's copy to fail",
            )
            assert "not enough free space" in failed["error"], failed
            assert failed["retry_at"] is not None
        finally:
            _unpin(server, pin_id)


def test_a_task_on_a_worker_node_finds_its_verified_copy(
    server: CastRayServer, cluster: RayCluster, tmp_path: Path
) -> None:
    made = tx.generate(server, "tokenizer.bin", "2MiB", "random")
    pin_id = _pin(server, "tokenizer.bin", {"endpoints": [node(WORKER)]})["id"]
    script = tmp_path / "driver.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import blake3, ray, castray

            @ray.remote(num_cpus=0, resources={{"node:{WORKER}": 0.01}})
            def where(name, timeout):
                try:
                    path = castray.local_path(name, timeout=timeout)
                except castray.CopyNotFound as exc:
                    return "missing: " + str(exc)
                return str(path) + " " + blake3.blake3(path.read_bytes()).hexdigest()

            ray.init(address="{cluster.address}", log_to_driver=False)
            print(ray.get(where.remote("tokenizer.bin", 120)))
            print(ray.get(where.remote("never-sent.bin", 0)))
            """
        )
    )
    try:
        ran = subprocess.run(
            [sys.executable, str(script)],
            capture_output=True,
            text=True,
            timeout=300,
            env=cluster.env(),
        )
    finally:
        _unpin(server, pin_id)
    assert ran.returncode == 0, ran.stderr[-3000:]
    found, missing = ran.stdout.strip().splitlines()[-2:]
    path, digest = found.split()
    assert digest == made["blake3"]
    assert path.startswith(str(server.data_dir / "storage" / node(WORKER)))
    assert missing.startswith("missing: this node holds no verified copy of 'never-sent.bin'")


def test_a_cluster_connected_later_gets_the_pinned_file(
    server: CastRayServer, tmp_path: Path
) -> None:
    made = tx.generate(server, "dataset.bin", "4MiB", "random")
    pin_id = _pin(server, "dataset.bin")["id"]
    try:
        with running_cluster(tmp_path / "other", OTHER) as other:
            connected = tx.post(
                server, "/api/cluster/connect-external", {"cluster_address": other.address}
            )
            assert connected.status_code == 200, connected.text
            endpoint = next(iter(connected.json()["external_nodes"]))
            try:
                pin = _verified_on(server, pin_id, [endpoint], made["blake3"])
                assert _hash(Path(pin["copies"][endpoint]["path"])) == made["blake3"]
            finally:
                with server.client() as client:
                    client.delete(
                        "/api/cluster/disconnect-external", params={"cluster": other.address}
                    )
    finally:
        _unpin(server, pin_id)


def test_unpin_with_remove_copies_removes_them(server: CastRayServer) -> None:
    made = tx.generate(server, "scratch.bin", "1MiB", "random")
    pin_id = _pin(server, "scratch.bin", {"endpoints": [node(WORKER)]})["id"]
    pin = _verified_on(server, pin_id, [node(WORKER)], made["blake3"])
    path = Path(pin["copies"][node(WORKER)]["path"])
    removed = server.cli("unpin", pin_id, "--remove-copies")
    assert removed.returncode == 0, removed.stderr
    assert not path.exists()
    with server.client() as client:
        assert client.get(f"/api/pins/{pin_id}").status_code == 404


def test_bad_pins_get_clear_errors(server: CastRayServer) -> None:
    tx.generate(server, "known.bin", "64KiB", "random")
    cases = [
        ({"file": "nope.bin"}, 404, "no file 'nope.bin' in the library"),
        ({"file": "known.bin", "nodes": {"group": "nobody"}}, 404, "no group 'nobody'"),
        ({"file": "known.bin", "nodes": {"endpoints": []}}, 422, "endpoints"),
        ({"file": "known.bin", "nodes": {"endpoints": ["ghost"]}}, 404, "ghost"),
        ({"file": "known.bin", "nodes": {"clusters": ["mars"]}}, 404, "no connected cluster"),
        ({"file": "known.bin", "nodes": "some"}, 422, "nodes"),
    ]
    for body, status, words in cases:
        answer = tx.post(server, "/api/pins", body)
        assert answer.status_code == status, (body, answer.text)
        assert words in answer.json()["detail"], (body, answer.text)
        assert "Traceback" not in answer.text
    with server.client() as client:
        for method in ("GET", "DELETE"):
            answer = client.request(method, "/api/pins/0123456789ab")
            assert answer.status_code == 404 and "no pin" in answer.json()["detail"]
        assert client.get("/api/pins").json()["pins"] == [] or all(
            p["file"] != "nope.bin" for p in client.get("/api/pins").json()["pins"]
        )


def test_pins_survive_a_restart_and_are_kept(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {"HOME": str(tmp_path), "CASTRAY_PIN_CHECK_INTERVAL": "1"}
    with serving(data, "--demo-nodes", "2", alive=3, env=env, keep_files=True) as first:
        made = tx.generate(first, "kept.bin", "2MiB", "random")
        pin_id = _pin(first, "kept.bin", {"endpoints": ["node_1", "node_2"]})["id"]
        _verified_on(first, pin_id, ["node_1", "node_2"], made["blake3"])
    with serving(data, "--demo-nodes", "2", alive=3, env=env) as second:
        pin = _get(second, pin_id)
        assert pin["file"] == "kept.bin"
        path = data / "storage" / "node_2" / "kept.bin"
        path.unlink()
        wait_for(lambda: path.exists() or None, 60, "the copy removed after a restart back")
        assert _hash(path) == made["blake3"]


def test_a_node_back_with_its_copy_gone_gets_it_without_waiting_for_the_check(
    tmp_path: Path,
) -> None:
    """A host crashes and comes back with a wiped disk (a new instance at the same address):
    while it is down its copy is ``waiting``, not ``verified``; once back it is asked at once,
    and gets the file again long before the periodic check (an hour here) would notice."""
    head, worker = "127.0.0.94", "127.0.0.95"
    with running_cluster(tmp_path / "ray", head, worker) as ray:
        env = {"HOME": str(tmp_path), "CASTRAY_PIN_CHECK_INTERVAL": "3600"}
        with serving(tmp_path / "data", "--ray-address", ray.address, alive=2, env=env) as server:
            made = tx.generate(server, "wiped.bin", "4MiB", "random")
            pin_id = _pin(server, "wiped.bin")["id"]
            copy = _verified_on(server, pin_id, [node(head), node(worker)], made["blake3"])
            path = Path(copy["copies"][node(worker)]["path"])

            (crashed,) = [r for r in ray.raylets if r.ip == worker]
            crashed.crash()
            ray.raylets.remove(crashed)
            wait_for(
                lambda: _get(server, pin_id)["copies"][node(worker)]["status"] == "waiting",
                120,
                "the crashed node's copy to be waiting",
            )
            for item in path.parent.iterdir():  # the new instance's empty disk
                if item.is_dir():
                    shutil.rmtree(item)
                else:
                    item.unlink()
            ray.add_worker(worker)
            _verified_on(server, pin_id, [node(worker)], made["blake3"], timeout=180)
            assert _hash(path) == made["blake3"]


def test_a_local_file_pinned_on_a_one_node_cluster_reaches_its_only_node(tmp_path: Path) -> None:
    """An embedded Ray of one node: that node is the library's only reader, and a recipient of
    its own transfer. Before, the pin waited for ever for a holder to serve it, saying "no
    endpoint on CastRay's machine can read the library". The CLI uploads a file named by its
    path on this machine first, as ``send`` does."""
    local = tmp_path / "weights.bin"
    local.write_bytes(tx.random_bytes(3 * 1024 * 1024))
    with serving(tmp_path / "data", alive=1, env={"HOME": str(tmp_path)}) as server:
        (only,) = server.nodes()
        missing = server.cli("pin", str(tmp_path / "nope.bin"), "--all")
        assert missing.returncode == 1, missing
        assert "nope.bin' on this machine, nor of that name in the server's library" in (
            missing.stderr
        )
        assert "Traceback" not in missing.stderr
        printed = server.cli("pin", str(local), "--all")
        assert printed.returncode == 0, printed.stderr
        pin_id = printed.stdout.split()[1].rstrip(":")
        pin = _verified_on(server, pin_id, [only], _hash(local), timeout=60)
        assert _hash(Path(pin["copies"][only]["path"])) == _hash(local)
        assert pin["problem"] is None, pin
        listed = server.cli("pins", pin_id)
        assert "1 of 1 nodes verified" in listed.stdout, listed.stdout
