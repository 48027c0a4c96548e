"""``castray serve --demo-traffic``: endpoints send each other files on their own."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.server import start_server
from tests.harness.waiting import wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_demo_traffic_moves_verified_files_and_cleans_up(tmp_path: Path) -> None:
    server = start_server(
        tmp_path / "data",
        "--demo-nodes",
        "2",
        "--demo-traffic",
        env={"CASTRAY_AUTO_TRANSFER_INTERVAL": "1"},
    )
    try:
        server.wait_alive(3)

        def completed() -> list[dict[str, object]]:
            with server.client() as client:
                page = client.get("/api/transfers", params={"limit": 100}).json()
            return [t for t in page["transfers"] if t["status"] == "completed"]

        done = wait_for(completed, 60, "an autonomous transfer to complete")
        transfer = done[0]
        assert str(transfer["file"]["name"]).startswith("auto_")
        (recipient,) = transfer["recipients"].values()
        assert Path(recipient["path"]).stat().st_size == transfer["file"]["size"]
        with server.client() as client:
            toggled = client.post(
                "/api/file-transfers/auto/toggle", json={"node_id": "node_1", "enabled": False}
            )
            status = client.get("/api/file-transfers/status").json()
        assert toggled.status_code == 200
        assert status["auto_transfer"]["node_1"] is False
        assert status["auto_transfer"]["node_2"] is True
    finally:
        server.stop()
