"""Transfer history and groups outlive the server process."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import transfers as tx
from tests.harness.server import start_server

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_history_and_groups_survive_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server(data, "--demo-nodes", "1")
    try:
        server.wait_alive(2)
        tx.upload_bytes(server, "keep.bin", b"kept across restarts")
        done = tx.send(server, source_node="home-127.0.0.1", file="keep.bin", recipients=["node_1"])
        assert (
            tx.post(server, "/api/groups", {"name": "g", "members": ["node_1"]}).status_code == 201
        )
    finally:
        server.stop()

    again = start_server(data, "--demo-nodes", "1")
    try:
        assert tx.get(again, done["id"]) == done
        with again.client() as client:
            assert client.get("/api/groups").json() == [{"name": "g", "members": ["node_1"]}]
            assert client.get("/api/files/keep.bin").content == b"kept across restarts"
    finally:
        again.stop()
