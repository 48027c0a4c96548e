"""Files between endpoints on a real 3-node Ray cluster: every mode, verified byte for byte."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import pytest

from castray.agent import dataplane as streams
from castray.agent.transports import inline
from tests.conftest import THREE_NODES
from tests.harness import transfers as tx
from tests.harness.raycluster import RayCluster
from tests.harness.server import CastRayServer, serving
from tests.harness.waiting import wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SRC, DST_A, DST_B = (f"home-{ip}" for ip in THREE_NODES)
CHUNK = 128 * 1024
UPLOAD_LIMIT = 1024 * 1024


@pytest.fixture(scope="module")
def server(
    three_nodes: RayCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CastRayServer]:
    data = tmp_path_factory.mktemp("transfer-server") / "data"
    env = {
        "CASTRAY_CHUNK_SIZE": str(CHUNK),
        "CASTRAY_UPLOAD_LIMIT_BYTES": str(UPLOAD_LIMIT),
        "CASTRAY_ENABLE_FAULT_INJECTION": "1",
    }
    with serving(data, "--ray-address", three_nodes.address, alive=3, env=env) as server:
        worker = server.nodes()[DST_A]["ray_node_id"]
        created = tx.post(server, "/api/nodes", {"node_id": "side", "ray_node_id": worker})
        assert created.status_code == 201, created.text
        yield server


def _path(server: CastRayServer, node: str, name: str) -> Path:
    return Path(server.nodes()[node]["storage_dir"]) / name


@pytest.fixture(params=["stream", "object-store"])
def transport(request: pytest.FixtureRequest) -> str:
    """Every transfer test runs on both transports."""
    return str(request.param)


def _send(server: CastRayServer, transport: str, **body: Any) -> dict[str, Any]:
    """A transfer on ``transport``, which it must have kept (no silent fallback)."""
    done = tx.send(server, transport=transport, **body)
    assert (done["transport"], done["transport_note"]) == (transport, None), done
    return done


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5])
def test_unicast_between_nodes_is_byte_identical(
    server: CastRayServer, transport: str, size: int
) -> None:
    data = tx.random_bytes(size)
    name = f"uni-{transport}-{size}.bin"
    uploaded = tx.upload_bytes(server, name, data)

    done = _send(server, transport, source_node=SRC, file=name, mode="unicast", recipients=[DST_A])

    assert done["status"] == "completed", done
    recipient = done["recipients"][DST_A]
    assert recipient["status"] == "completed"
    assert recipient["bytes_done"] == size
    assert Path(recipient["path"]).read_bytes() == data
    assert done["file"] == {"name": name, "size": size, "blake3": uploaded["blake3"]}
    assert done["bytes_total"] == size
    assert done["finished_at"] >= done["started_at"]
    assert tx.leftovers(Path(recipient["path"]).parent) == []


def test_broadcast_reaches_every_other_endpoint_and_the_source_sends_once(
    server: CastRayServer, transport: str
) -> None:
    data = tx.random_bytes(5 * CHUNK + 3)
    tx.upload_bytes(server, "bcast.bin", data)
    sent_before = server.nodes()[SRC]["counters"]["bytes_sent"]

    done = _send(server, transport, source_node=SRC, file="bcast.bin", mode="broadcast")

    assert done["status"] == "completed", done
    assert set(done["recipients"]) == {DST_A, DST_B, "side"}
    for state in done["recipients"].values():
        assert Path(state["path"]).read_bytes() == data
    egress = wait_for(
        lambda: server.nodes()[SRC]["counters"]["bytes_sent"] - sent_before,
        10,
        "the source's counter",
    )
    assert egress == len(data)


def test_multicast_to_a_group_and_counters_count_verified_bytes(
    server: CastRayServer, transport: str
) -> None:
    data = tx.random_bytes(2 * CHUNK)
    tx.upload_bytes(server, "group.bin", data)
    assert tx.post(
        server, "/api/groups", {"name": "pair", "members": [DST_A, DST_B]}
    ).status_code in {201, 409}
    before = {n: server.nodes()[n]["counters"]["bytes_received"] for n in (DST_A, DST_B)}

    done = _send(
        server, transport, source_node=SRC, file="group.bin", mode="multicast", group="pair"
    )

    assert done["status"] == "completed", done
    assert set(done["recipients"]) == {DST_A, DST_B}
    for node in (DST_A, DST_B):
        assert _path(server, node, "group.bin").read_bytes() == data
        wait_for(
            lambda node=node: (
                server.nodes()[node]["counters"]["bytes_received"] == before[node] + len(data)
            ),
            10,
            f"{node}'s received counter",
        )


def test_a_few_hundred_megabytes_arrive_intact(server: CastRayServer, transport: str) -> None:
    made = tx.generate(server, "big.bin", "200MB", "random")

    done = _send(
        server, transport, source_node=SRC, file="big.bin", recipients=[DST_B], timeout=600
    )

    assert done["status"] == "completed", done
    arrived = Path(done["recipients"][DST_B]["path"])
    assert arrived.stat().st_size == 200 * 1024 * 1024
    assert blake3.blake3(arrived.read_bytes()).hexdigest() == made["blake3"]
    assert done["throughput_bps"] > 0


def test_a_chunk_corrupted_in_flight_is_detected_and_sent_again(
    server: CastRayServer, transport: str
) -> None:
    data = tx.random_bytes(4 * CHUNK)
    tx.upload_bytes(server, "flaky.bin", data)
    with server.client() as client:
        assert (
            client.post(f"/api/nodes/{DST_B}/faults", json={"corrupt_chunks": 2}).status_code == 204
        )

    done = _send(server, transport, source_node=SRC, file="flaky.bin", recipients=[DST_B])

    assert done["status"] == "completed", done
    assert done["chunks_resent"] == 2
    assert _path(server, DST_B, "flaky.bin").read_bytes() == data


def test_a_small_file_travels_inline_verified_and_sent_again_when_damaged(
    server: CastRayServer,
) -> None:
    """A small file to a few recipients travels inside Ray's calls, not down a chain of TCP
    streams (``transports.inline``): each copy is checked before it is written, one that
    arrives damaged is sent again, and the source reads the file once."""
    data = tx.random_bytes(64 * 1024)
    assert len(data) <= inline.INLINE_BYTES
    tx.upload_bytes(server, "inline.bin", data)
    assert tx.post(server, f"/api/nodes/{DST_B}/faults", {"corrupt_chunks": 1}).status_code == 204
    sent_before = server.nodes()[SRC]["counters"]["bytes_sent"]

    done = _send(
        server,
        "stream",
        source_node=SRC,
        file="inline.bin",
        mode="multicast",
        recipients=[DST_A, DST_B],
    )

    assert done["status"] == "completed", done
    assert (done["chunks_damaged"], done["chunks_resent"]) == (1, 1), done
    for node in (DST_A, DST_B):
        copy = Path(done["recipients"][node]["path"])
        assert copy.read_bytes() == data
        assert tx.leftovers(copy.parent) == []
        assert done["recipients"][node]["bytes_done"] == len(data)
    assert done["source_bytes_sent"] == len(data)
    egress = wait_for(
        lambda: server.nodes()[SRC]["counters"]["bytes_sent"] - sent_before,
        10,
        "the source's counter",
    )
    assert egress == len(data)


def test_a_small_file_whose_copy_cannot_be_synced_fails_there_only(server: CastRayServer) -> None:
    data = tx.random_bytes(3000)
    tx.upload_bytes(server, "inline-sync.bin", data)
    assert tx.post(server, f"/api/nodes/{DST_B}/faults", {"fail_syncs": 1}).status_code == 204

    done = tx.send(
        server, source_node=SRC, file="inline-sync.bin", mode="multicast", recipients=[DST_A, DST_B]
    )

    assert done["status"] == "partially_failed", done
    assert Path(done["recipients"][DST_A]["path"]).read_bytes() == data
    failed = done["recipients"][DST_B]
    assert failed["status"] == "failed" and "Input/output error" in failed["error"], failed
    assert not _path(server, DST_B, "inline-sync.bin").exists()
    assert tx.leftovers(_path(server, DST_B, "inline-sync.bin").parent) == []


def test_a_library_file_replaced_mid_transfer_is_never_seen_by_that_transfer(
    server: CastRayServer, transport: str
) -> None:
    """An upload of the same name lands while a transfer reads the file, and the recipient
    needs a chunk again afterwards (it arrived damaged): the transfer reads the file it
    began with, to the end, and the recipient gets that one, verified."""
    old, new = tx.random_bytes(4 * CHUNK), tx.random_bytes(4 * CHUNK)
    tx.upload_bytes(server, "swapped.bin", old)
    with server.client() as client:
        faulty = client.post(f"/api/nodes/{DST_B}/faults", json={"corrupt_chunks": 1})
    assert faulty.status_code == 204
    transfer_id = tx.start(
        server,
        source_node=SRC,
        file="swapped.bin",
        recipients=[DST_B],
        transport=transport,
        rate_limit="64KB/s",
    )
    # Accepted: the source has opened the file; at 64 KiB/s it takes 8 s to send it.
    replaced = tx.upload_bytes(server, "swapped.bin", new)
    assert tx.get(server, transfer_id)["status"] in ("queued", "running")
    done = tx.wait_finished(server, transfer_id)

    assert replaced["replaced"] is True
    assert done["status"] == "completed", done
    assert done["chunks_resent"] == 1
    assert done["file"]["blake3"] == blake3.blake3(old).hexdigest()
    assert _path(server, DST_B, "swapped.bin").read_bytes() == old


def test_a_file_in_the_source_storage_can_be_sent_on(server: CastRayServer, transport: str) -> None:
    data = tx.random_bytes(CHUNK + 7)
    tx.upload_bytes(server, "hop.bin", data)
    _send(server, transport, source_node=SRC, file="hop.bin", recipients=[DST_A])

    done = _send(server, transport, source_node=DST_A, file="hop.bin", recipients=[DST_B])

    assert done["status"] == "completed", done
    assert done["file"]["blake3"] == blake3.blake3(data).hexdigest()
    assert _path(server, DST_B, "hop.bin").read_bytes() == data


def test_cancel_stops_the_transfer_and_leaves_no_partial_file(
    server: CastRayServer, transport: str
) -> None:
    tx.generate(server, "slow.bin", "300MB", "pattern")
    transfer_id = tx.start(
        server, source_node=SRC, file="slow.bin", recipients=[DST_A], transport=transport
    )

    with server.client() as client:
        cancelled = client.delete(f"/api/transfers/{transfer_id}")

    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["recipients"][DST_A]["status"] == "cancelled"
    storage = _path(server, DST_A, "slow.bin").parent
    wait_for(lambda: tx.leftovers(storage) == [], 30, "partial files to be removed")
    assert not (storage / "slow.bin").exists()


def test_prototype_endpoints_keep_working(server: CastRayServer) -> None:
    tx.upload_bytes(server, "manual.bin", b"manual transfer")

    accepted = tx.post(
        server,
        "/api/file-transfers/manual",
        {"sender_id": SRC, "file_name": "manual.bin", "recipients": [DST_A, DST_B]},
    )

    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["success"] is True
    done = tx.wait_finished(server, accepted.json()["transfer_id"])
    assert done["mode"] == "multicast"
    assert done["status"] == "completed"
    with server.client() as client:
        status = client.get("/api/file-transfers/status").json()
        toggled = client.post(
            "/api/file-transfers/auto/toggle", json={"node_id": DST_A, "enabled": True}
        )
        assert toggled.json() == {"success": True, "node_id": DST_A, "enabled": True}
        assert client.get("/api/file-transfers/status").json()["auto_transfer"][DST_A] is True
        client.post("/api/file-transfers/auto/toggle", json={"node_id": DST_A, "enabled": False})
    assert done["id"] in {t["id"] for t in status["recent_transfers"]}


def test_history_lists_newest_first_with_pagination(server: CastRayServer) -> None:
    with server.client() as client:
        first = client.get("/api/transfers", params={"limit": 2}).json()
        second = client.get("/api/transfers", params={"limit": 2, "offset": 2}).json()

    assert first["total"] >= 4
    assert len(first["transfers"]) == 2
    stamps = [t["created_at"] for t in first["transfers"] + second["transfers"]]
    assert stamps == sorted(stamps, reverse=True)


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"source_node": "ghost", "file": "uni-1.bin", "recipients": [DST_A]}, 404, "ghost"),
        ({"source_node": SRC, "file": "uni-1.bin", "recipients": ["ghost"]}, 404, "ghost"),
        ({"source_node": SRC, "file": "missing.bin", "recipients": [DST_A]}, 404, "missing.bin"),
        (
            {"source_node": SRC, "file": "uni-1.bin", "mode": "multicast", "recipients": []},
            422,
            "recipients",
        ),
        ({"source_node": SRC, "file": "uni-1.bin", "recipients": [SRC]}, 422, "source"),
        (
            {"source_node": SRC, "file": "uni-1.bin", "mode": "multicast", "group": "nope"},
            404,
            "group",
        ),
        ({"source_node": SRC, "file": "../etc/passwd", "recipients": [DST_A]}, 404, "'..'"),
        ({"source_node": SRC, "file": "uni-1.bin", "mode": "sideways"}, 422, "mode"),
    ],
)
def test_bad_transfer_requests_get_clear_errors(
    server: CastRayServer, body: dict[str, object], status: int, says: str
) -> None:
    before = server.status()["total_nodes"]

    response = tx.post(server, "/api/transfers", body)

    assert response.status_code == status, response.text
    assert says in response.json()["detail"]
    assert server.status()["total_nodes"] == before


@pytest.mark.parametrize("name", ["../up.bin", "a/b.bin", "a\\b.bin", ".hidden", "..", "x..y"])
def test_upload_with_a_bad_name_is_rejected_and_stores_nothing(
    server: CastRayServer, name: str
) -> None:
    with server.client() as client:
        before = client.get("/api/files").json()
        response = client.post("/api/upload", files={"file": (name, b"x")})
        after = client.get("/api/files").json()

    assert response.status_code == 400, response.text
    assert "file name" in response.json()["detail"]
    assert after == before


def test_upload_over_the_limit_is_413_and_stores_nothing(server: CastRayServer) -> None:
    with server.client() as client:
        response = client.post(
            "/api/upload", files={"file": ("huge.bin", b"x" * (UPLOAD_LIMIT + 1))}
        )
        names = {f["name"] for f in client.get("/api/files").json()}

    assert response.status_code == 413
    assert "huge.bin" not in names
    assert not [p for p in (server.data_dir / "library").iterdir() if p.name.endswith(".part")]


def test_library_lists_downloads_and_deletes(server: CastRayServer) -> None:
    tx.upload_bytes(server, "lib.txt", b"library content")
    with server.client() as client:
        listed = {f["name"]: f for f in client.get("/api/files").json()}
        downloaded = client.get("/api/files/lib.txt")
        deleted = client.delete("/api/files/lib.txt")
        gone = client.get("/api/files/lib.txt")

    assert listed["lib.txt"]["size"] == len(b"library content")
    assert downloaded.content == b"library content"
    assert deleted.status_code == 204
    assert gone.status_code == 404


def test_generator_makes_files_of_the_asked_size_and_kind(server: CastRayServer) -> None:
    with server.client() as client:
        presets = client.get("/api/file-generator/presets").json()
        text = client.post(
            "/api/file-generator/create",
            json={"size": "1.5KB", "content_type": "text", "name": "t.txt"},
        )
        pattern = client.post(
            "/api/file-generator/create", json={"size": 1000, "content_type": "pattern"}
        )
        bad = client.post("/api/file-generator/create", json={"size": "12 parsecs"})
        body = client.get("/api/file-generator/download/t.txt").content
        info = client.get("/api/file-generator/info").json()

    assert presets["tiny"] == 1024 and presets["massive"] == 100 * 1024 * 1024
    assert text.status_code == 201 and text.json()["size"] == 1536
    assert body.startswith(b"CastRay test data") and len(body) == 1536
    assert pattern.json()["size"] == 1000
    assert bad.status_code == 422 and "size" in bad.json()["detail"]
    assert info["library_files"] >= 2


def test_create_and_transfer_sends_the_new_file(server: CastRayServer) -> None:
    response = tx.post(
        server,
        "/api/file-generator/create-and-transfer",
        {
            "size": "300KB",
            "content_type": "random",
            "name": "made.bin",
            "source_node": SRC,
            "recipients": [DST_B],
        },
    )

    assert response.status_code == 202, response.text
    done = tx.wait_finished(server, response.json()["transfer"]["transfer_id"])
    assert done["status"] == "completed"
    assert (
        blake3.blake3(_path(server, DST_B, "made.bin").read_bytes()).hexdigest()
        == response.json()["file"]["blake3"]
    )


def test_messages_reach_every_recipient_through_their_actors(server: CastRayServer) -> None:
    unicast = tx.post(
        server,
        "/api/send",
        {"cast_type": "unicast", "content": "hi", "sender": SRC, "recipients": [DST_A]},
    )
    group = tx.post(
        server,
        "/api/send",
        {
            "cast_type": "multicast",
            "message_type": "json",
            "content": {"k": [1, 2]},
            "sender": SRC,
            "group_id": "pair",
        },
    )
    everyone = tx.post(
        server, "/api/send", {"cast_type": "broadcast", "content": "all", "sender": DST_B}
    )

    assert unicast.json()["delivered"] == [DST_A]
    assert sorted(group.json()["delivered"]) == sorted([DST_A, DST_B])
    assert sorted(everyone.json()["delivered"]) == sorted([SRC, DST_A, "side"])
    with server.client() as client:
        inbox = client.get(f"/api/nodes/{DST_A}/messages", params={"count": 3}).json()
    assert [m["content"] for m in inbox] == ["all", {"k": [1, 2]}, "hi"]
    assert inbox[0]["sender"] == DST_B


def test_a_recipient_whose_node_dies_fails_while_the_others_complete(
    server: CastRayServer, three_nodes: RayCluster, transport: str
) -> None:
    made = tx.generate(server, "doomed.bin", "400MB", "pattern")
    transfer_id = tx.start(
        server,
        source_node=SRC,
        file="doomed.bin",
        mode="multicast",
        recipients=[DST_A, DST_B],
        transport=transport,
    )
    wait_for(
        lambda: tx.get(server, transfer_id)["recipients"][DST_B]["bytes_done"] > 0,
        60,
        "the transfer to be under way",
        interval=0.05,
    )

    worker_b = THREE_NODES[2]
    doomed = next(r for r in three_nodes.raylets if r.ip == worker_b)
    doomed.stop()
    three_nodes.raylets.remove(doomed)
    try:
        done = tx.wait_finished(server, transfer_id, timeout=300)
        wait_for(lambda: server.nodes()[DST_B]["status"] == "dead", 30, f"{DST_B} to be dead")
    finally:
        three_nodes.add_worker(worker_b)  # the cluster is shared: whole again for the next
        wait_for(lambda: server.nodes()[DST_B]["status"] == "alive", 120, f"{DST_B} to be back")
    assert done["status"] == "partially_failed", done
    assert done["transport"] == transport
    assert done["recipients"][DST_B]["status"] == "failed"
    assert done["recipients"][DST_B]["error"]
    assert done["recipients"][DST_A]["status"] == "completed"
    arrived = Path(done["recipients"][DST_A]["path"])
    assert blake3.blake3(arrived.read_bytes()).hexdigest() == made["blake3"]


@pytest.fixture
def tiny_disk_node(server: CastRayServer) -> Iterator[str]:
    with tx.tiny_disk_node(server) as node:
        yield node


def test_a_recipient_whose_disk_fills_fails_while_the_others_complete(
    server: CastRayServer, tiny_disk_node: str, transport: str
) -> None:
    tx.generate(server, "fat.bin", "3MB", "random")

    done = tx.send(
        server,
        transport=transport,
        source_node=SRC,
        file="fat.bin",
        mode="multicast",
        recipients=[DST_A, tiny_disk_node],
    )

    assert done["status"] == "partially_failed", done
    failed = done["recipients"][tiny_disk_node]
    assert failed["status"] == "failed"
    # Refused before a byte was written, saying what it needs and what the disk has.
    assert "not enough free space" in failed["error"], failed
    assert "needs" in failed["error"] and "free" in failed["error"]
    assert done["error"] and tiny_disk_node in done["error"], done
    assert done["recipients"][DST_A]["status"] == "completed"
    storage = server.data_dir / "storage" / tiny_disk_node
    assert sorted(p.name for p in storage.iterdir()) == []


def test_a_small_file_a_recipient_has_no_room_for_is_refused_there_only(
    server: CastRayServer,
) -> None:
    """Inline (``transports.inline``) as in a chain: refused before a byte, saying why,
    nothing left there, and nothing for a resume to take up."""
    data = tx.random_bytes(90 * 1024)
    tx.upload_bytes(server, "inline-fat.bin", data)
    with tx.tiny_disk_node(server, "tiny-inline", "64k") as tiny:
        done = tx.send(
            server,
            source_node=SRC,
            file="inline-fat.bin",
            mode="multicast",
            recipients=[DST_A, tiny],
        )
        assert sorted(p.name for p in (server.data_dir / "storage" / tiny).iterdir()) == []

    assert done["status"] == "partially_failed", done
    assert Path(done["recipients"][DST_A]["path"]).read_bytes() == data
    failed = done["recipients"][tiny]
    assert "not enough free space for inline-fat.bin" in failed["error"], failed
    assert done["resumable"] is False, "the only recipient without its copy refused it"


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether the other end closed the connection without a word (within 10 s)."""
    sock.settimeout(10)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_a_data_connection_without_the_transfer_secret_is_dropped(
    server: CastRayServer, three_nodes: RayCluster
) -> None:
    made = tx.generate(server, "guarded.bin", "300MB", "random")
    transfer_id = tx.start(
        server, source_node=SRC, file="guarded.bin", recipients=[DST_A], transport="stream"
    )
    wait_for(
        lambda: tx.get(server, transfer_id)["recipients"][DST_A]["bytes_done"] > 0,
        60,
        "the stream to be under way",
        interval=0.05,
    )
    host, port = server.nodes()[DST_A]["data_address"].rsplit(":", 1)
    intruders = [
        streams.hello(transfer_id, bytes(32), 0) + b"\0" * 4096,  # the right id, no secret
        streams.hello(transfer_id, b"x" * 32, streams.FORWARD),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"\0" * 100,  # not CastRay at all
    ]

    for hello in intruders:
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            with contextlib.suppress(OSError):
                sock.sendall(hello)
            assert _closed_by_peer(sock)

    done = tx.wait_finished(server, transfer_id, timeout=300)
    assert done["status"] == "completed", done
    assert done["transport"] == "stream"
    arrived = Path(done["recipients"][DST_A]["path"])
    assert blake3.blake3(arrived.read_bytes()).hexdigest() == made["blake3"]
    assert done["chunks_resent"] == 0
    wait_for(
        lambda: three_nodes.worker_logs().count("refused a connection from") >= len(intruders),
        30,
        "the endpoint to log every dropped connection",
    )


def test_a_recipient_whose_data_port_cannot_be_reached_gets_the_file_through_the_object_store(
    server: CastRayServer,
) -> None:
    data = tx.random_bytes(3 * CHUNK + 1)
    tx.upload_bytes(server, "walled.bin", data)
    worker = server.nodes()[DST_B]["ray_node_id"]
    assert (
        tx.post(server, "/api/nodes", {"node_id": "walled", "ray_node_id": worker}).status_code
        == 201
    )
    try:
        refused = tx.post(server, "/api/nodes/walled/faults", {"refuse_data_connections": True})
        assert refused.status_code == 204, refused.text

        done = tx.send(server, source_node=SRC, file="walled.bin", recipients=["walled"])

        assert done["status"] == "completed", done
        assert done["transport"] == "object-store"
        assert "data connection" in done["transport_note"]
        assert server.nodes()["walled"]["data_address"] in done["transport_note"]
        assert _path(server, "walled", "walled.bin").read_bytes() == data
    finally:
        with server.client() as client:
            client.delete("/api/nodes/walled")
