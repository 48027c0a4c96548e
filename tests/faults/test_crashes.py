"""What a crash leaves: nothing half-written, and a home that heals itself.

Each test runs a real ``castray serve`` over its embedded Ray, breaks it the way an operator
or the kernel would, and asserts the outcome, its time bound, and that
``find DATA -name '.*.part'`` finds nothing.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.harness import transfers as tx
from tests.harness.server import CastRayServer, start_server
from tests.harness.waiting import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.ray, pytest.mark.slow]

BIG = "1GiB"
"""Big enough that a transfer between two endpoints of one machine is caught mid-way."""


def partials(data: Path) -> list[Path]:
    """``find DATA -name '.*.part'``."""
    return sorted(data.rglob(".*.part"))


def _mid_transfer(server: CastRayServer) -> str:
    """A 1 GiB transfer node_1 -> node_2, returned once bytes have arrived (not all)."""
    tx.generate(server, "big.bin", BIG, "random")
    tid = tx.start(server, source_node="node_1", file="big.bin", recipients=["node_2"])
    wait_for(
        lambda: tx.get(server, tid)["recipients"]["node_2"]["bytes_done"] > 0 or None,
        120,
        "the first verified bytes at node_2",
        interval=0.02,
    )
    assert tx.get(server, tid)["status"] == "running", "it ended before the fault"
    return tid


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl+C"])
def test_a_server_stopped_mid_transfer_leaves_no_partial_file(
    tmp_path: Path, sig: signal.Signals
) -> None:
    data = tmp_path / "data"
    server = start_server(data, "--demo-nodes", "2")
    try:
        server.wait_alive(3)
        _mid_transfer(server)
        server.process.send_signal(sig)
        server.process.wait(30)
    finally:
        server.stop()
    assert partials(data) == []


def test_after_a_crash_of_everything_the_restarted_server_sweeps_partial_files(
    tmp_path: Path,
) -> None:
    """SIGKILL to the server, its agent and the embedded Ray at once (the OOM killer, a
    power cut): nobody is left to clean up, so the partial file stays; the endpoint that owns
    the directory removes it when it starts again, and the history says interrupted."""
    data = tmp_path / "data"
    server = start_server(data, "--demo-nodes", "2")
    try:
        server.wait_alive(3)
        tid = _mid_transfer(server)
        agent = _home_agent(server)
        os.killpg(agent.pid, signal.SIGKILL)  # the agent and its embedded Ray
        server.process.kill()
        server.process.wait(10)
    finally:
        server.stop()
    assert partials(data), "the crash should have left the partial file"
    again = start_server(data, "--demo-nodes", "2")
    try:
        again.wait_alive(3)
        wait_for(lambda: not partials(data) or None, 30, "the partial files to be swept")
        assert tx.get(again, tid)["status"] == "interrupted"
    finally:
        again.stop()
    again.check_log_clean()


def _home_agent(server: CastRayServer) -> psutil.Process:
    for child in psutil.Process(server.process.pid).children():
        if "castray.agent" in " ".join(child.cmdline()):
            return child
    raise AssertionError("the server runs no agent")


def test_a_killed_home_agent_is_restarted_and_health_says_so_meanwhile(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server(data, "--demo-nodes", "1")
    try:
        server.wait_alive(2)
        killed_at = time.monotonic()
        _home_agent(server).kill()

        health = wait_for(
            lambda: (
                (r := httpx.get(f"{server.url}/api/health", timeout=5)).status_code == 503
                and r.json()
            ),
            15,
            "/api/health to report the lost home",
            interval=0.1,
        )
        assert health["status"] == "degraded"
        assert any("home" in p and "restarting" in p for p in health["problems"]), health

        wait_for(
            lambda: httpx.get(f"{server.url}/api/health", timeout=5).status_code == 200 or None,
            120,
            "the home to come back",
        )
        server.wait_alive(2)  # the Ray node's endpoint and the demo endpoint node_1, again
        assert time.monotonic() - killed_at < 120
        assert server.nodes()["node_1"]["status"] == "alive"
        tx.upload_bytes(server, "after.bin", b"the home healed itself")
        done = tx.send(
            server, source_node="home-127.0.0.1", file="after.bin", recipients=["node_1"]
        )
        assert done["status"] == "completed", done
    finally:
        server.stop()
    server.check_log_clean()
