"""``/ws``: a snapshot first, then numbered events as things happen."""

from __future__ import annotations

import json
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from tests.harness import transfers as tx
from tests.harness.server import CastRayServer

pytestmark = pytest.mark.ray


def _ws_url(server: CastRayServer) -> str:
    return server.url.replace("http://", "ws://") + "/ws"


def _receive_until(ws: ClientConnection, kind: str, limit: int = 50) -> dict[str, Any]:
    for _ in range(limit):
        message = json.loads(ws.recv(timeout=30))
        if message["type"] == kind:
            return dict(message)
    raise AssertionError(f"no {kind!r} event among {limit} messages")


def test_snapshot_then_ordered_events(embedded_server: CastRayServer) -> None:
    with connect(_ws_url(embedded_server)) as ws:
        snapshot = json.loads(ws.recv(timeout=30))
        with embedded_server.client() as client:
            created = client.post("/api/nodes", json={"node_id": "ws-watch"})
            assert created.status_code == 201
            client.delete("/api/nodes/ws-watch")
        added = _receive_until(ws, "node_added")
        removed = _receive_until(ws, "node_removed")

    assert snapshot["type"] == "snapshot"
    assert {n["id"] for n in snapshot["data"]["nodes"]} >= {"home-127.0.0.1", "node_1"}
    assert [c["name"] for c in snapshot["data"]["clusters"]] == ["home"]
    assert added["data"]["node"]["id"] == "ws-watch"
    assert removed["data"]["node_id"] == "ws-watch"
    assert snapshot["seq"] < added["seq"] < removed["seq"]


def test_events_reach_a_reading_client_while_another_reads_nothing(
    embedded_server: CastRayServer,
) -> None:
    with connect(_ws_url(embedded_server)) as stalled, connect(_ws_url(embedded_server)) as live:
        json.loads(stalled.recv(timeout=30))
        json.loads(live.recv(timeout=30))
        with embedded_server.client() as client:
            for n in range(5):
                assert client.post("/api/nodes", json={"node_id": f"burst-{n}"}).status_code == 201
            seen = {_receive_until(live, "node_added")["data"]["node"]["id"] for _ in range(5)}
            for n in range(5):
                client.delete(f"/api/nodes/burst-{n}")

    assert seen == {f"burst-{n}" for n in range(5)}


def test_a_transfer_is_told_from_start_to_finish_in_order(embedded_server: CastRayServer) -> None:
    tx.generate(embedded_server, "ws-watched.bin", "20MB", "random")
    with connect(_ws_url(embedded_server)) as ws:
        json.loads(ws.recv(timeout=30))
        transfer_id = tx.start(
            embedded_server, source_node="node_1", file="ws-watched.bin", recipients=["node_2"]
        )
        seen: list[dict[str, Any]] = []
        while not seen or seen[-1]["type"] != "transfer_finished":
            message = json.loads(ws.recv(timeout=60))
            data = message["data"]
            if transfer_id in (data.get("transfer_id"), data.get("transfer", {}).get("id")):
                seen.append(message)

    kinds = [m["type"] for m in seen]
    assert kinds[0] == "transfer_started"
    assert kinds[-1] == "transfer_finished"
    assert kinds.count("recipient_completed") == 1
    assert "transfer_progress" in kinds
    assert [m["seq"] for m in seen] == sorted(m["seq"] for m in seen)
    assert seen[-1]["data"]["transfer"]["status"] == "completed"
    done = [m["data"]["bytes_done"]["node_2"] for m in seen if m["type"] == "transfer_progress"]
    assert done == sorted(done)


def test_groups_are_in_the_snapshot_and_their_changes_are_events(
    embedded_server: CastRayServer,
) -> None:
    with embedded_server.client() as client:
        assert client.post("/api/groups", json={"name": "ws-g", "members": ["node_1"]}).is_success
    with connect(_ws_url(embedded_server)) as ws:
        snapshot = json.loads(ws.recv(timeout=30))
        with embedded_server.client() as client:
            client.put("/api/groups/ws-g", json={"members": ["node_1", "node_2"]})
            client.delete("/api/groups/ws-g")
        saved = _receive_until(ws, "group_saved")
        deleted = _receive_until(ws, "group_deleted")

    assert {"name": "ws-g", "members": ["node_1"]} in snapshot["data"]["groups"]
    assert saved["data"]["group"] == {"name": "ws-g", "members": ["node_1", "node_2"]}
    assert deleted["data"]["name"] == "ws-g"


def test_library_changes_are_events(embedded_server: CastRayServer) -> None:
    with connect(_ws_url(embedded_server)) as ws:
        json.loads(ws.recv(timeout=30))
        tx.upload_bytes(embedded_server, "ws-lib.txt", b"library event")
        with embedded_server.client() as client:
            assert client.delete("/api/files/ws-lib.txt").status_code == 204
        added = _receive_until(ws, "file_added")
        removed = _receive_until(ws, "file_removed")

    assert added["data"]["file"]["name"] == "ws-lib.txt"
    assert added["data"]["file"]["size"] == len(b"library event")
    assert removed["data"]["name"] == "ws-lib.txt"
    assert added["seq"] < removed["seq"]
