"""What a crash leaves: nothing but resumable state, a resume that sends only what is
missing, and a home that heals itself.

Each test runs a real ``castray serve`` over its embedded Ray, breaks it the way an operator
or the kernel would, and asserts the outcome, its time bound, and that
``find DATA -name '.*.part'`` finds nothing but the partial files a resume takes up.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import pytest

from castray.chunks import file_blake3 as blake3_of
from tests.harness import transfers as tx
from tests.harness.partials import journals, kept_bytes, partials
from tests.harness.server import CastRayServer, start_server
from tests.harness.waiting import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.ray, pytest.mark.slow]

BIG = "1GiB"
BIG_BYTES = 1 << 30
"""Big enough that a transfer between two endpoints of one machine is caught mid-way."""


def _mid_transfer(server: CastRayServer, at: float = 0.0) -> str:
    """A 1 GiB transfer node_1 -> node_2, returned once more than ``at`` of it (and at least
    one byte) has arrived verified, but not all."""
    tx.generate(server, "big.bin", BIG, "random")
    tid = tx.start(server, source_node="node_1", file="big.bin", recipients=["node_2"])
    tx.wait_under_way(server, tid, "node_2", at)
    return tid


def _stopped_mid_transfer(data: Path, sig: signal.Signals, at: float = 0.0) -> str:
    """A server over ``data``, stopped with ``sig`` once more than ``at`` of a 1 GiB transfer
    arrived; the transfer's id."""
    server = start_server(data, "--demo-nodes", "2")
    try:
        server.wait_alive(3)
        tid = _mid_transfer(server, at)
        server.process.send_signal(sig)
        server.process.wait(30)
    finally:
        server.stop()
    return tid


def _resume_and_check(server: CastRayServer, tid: str, data: Path, missing: int) -> dict:
    """Resume ``tid``; it completes with a copy whose BLAKE3 is the file's, the source sends
    at most 10 % more than the ``missing`` bytes, and nothing partial stays."""
    with server.client() as client:
        accepted = client.post(f"/api/transfers/{tid}/resume")
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["transfer_id"] == tid
    done = tx.wait_finished(server, tid, 300)
    assert done["status"] == "completed", done
    assert done["resumes"] == 1 and not done["resumable"]
    copy = Path(done["recipients"]["node_2"]["path"])
    assert blake3_of(copy) == done["file"]["blake3"]
    assert 0 < done["source_bytes_sent"] <= missing * 1.1, (done["source_bytes_sent"], missing)
    # The endpoints' own byte counters (they start at 0 with the restarted server) agree.
    assert server.nodes()["node_1"]["counters"]["bytes_sent"] == done["source_bytes_sent"]
    assert partials(data) == [] and journals(data) == []
    return done


def test_a_server_stopped_mid_transfer_keeps_what_was_verified_and_resume_sends_the_rest(
    tmp_path: Path,
) -> None:
    """SIGTERM half-way: the recipient keeps its verified chunks with their journal (and no
    other partial file stays); after a restart the history says interrupted and resumable,
    and a resume sends only what is missing."""
    data = tmp_path / "data"
    tid = _stopped_mid_transfer(data, signal.SIGTERM, 0.3)
    assert len(partials(data)) == 1 and len(journals(data)) == 1
    kept = kept_bytes(data)
    assert kept > 0
    again = start_server(data, "--demo-nodes", "2")
    try:
        again.wait_alive(3)
        interrupted = tx.get(again, tid)
        assert interrupted["status"] == "interrupted" and interrupted["resumable"], interrupted
        _resume_and_check(again, tid, data, interrupted["bytes_total"] - kept)
    finally:
        again.stop()
    again.check_log_clean()


def test_with_auto_resume_a_restarted_server_finishes_what_was_interrupted(
    tmp_path: Path,
) -> None:
    """``auto_resume``: the transfer a SIGTERM interrupted completes after the restart, under
    its id, with no request from anyone, and sends only what was missing."""
    data = tmp_path / "data"
    tid = _stopped_mid_transfer(data, signal.SIGTERM, 0.3)
    missing = BIG_BYTES - kept_bytes(data)
    again = start_server(data, "--demo-nodes", "2", env={"CASTRAY_AUTO_RESUME": "true"})
    try:
        done = wait_for(
            lambda: (t := tx.get(again, tid))["status"] == "completed" and t,
            180,
            "the interrupted transfer to complete by itself",
        )
        assert done["resumes"] == 1
        assert 0 < done["source_bytes_sent"] <= missing * 1.1, (done["source_bytes_sent"], missing)
        assert blake3_of(Path(done["recipients"]["node_2"]["path"])) == done["file"]["blake3"]
        assert partials(data) == [] and journals(data) == []
    finally:
        again.stop()
    again.check_log_clean()


def test_ctrl_c_keeps_the_partial_a_changed_source_is_refused_and_delete_discards_it(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    tid = _stopped_mid_transfer(data, signal.SIGINT)
    assert kept_bytes(data) > 0
    with (data / "library" / "big.bin").open("r+b") as source:  # the source file changes
        source.write(b"changed")
    again = start_server(data, "--demo-nodes", "2")
    try:
        again.wait_alive(3)
        with again.client() as client:
            refused = client.post(f"/api/transfers/{tid}/resume")
            assert refused.status_code == 409, refused.text
            assert "changed" in refused.json()["detail"], refused.json()
            assert tx.get(again, tid)["resumable"], "a refused resume must keep what was kept"

            discarded = client.delete(f"/api/transfers/{tid}")
            assert discarded.status_code == 200, discarded.text
            assert not discarded.json()["resumable"]
            assert "discarded" in discarded.json()["error"]
            assert partials(data) == [] and journals(data) == []
            again_refused = client.post(f"/api/transfers/{tid}/resume")
            assert again_refused.status_code == 409
    finally:
        again.stop()
    again.check_log_clean()


def test_after_a_crash_of_everything_a_resume_sends_only_what_is_missing(
    tmp_path: Path,
) -> None:
    """SIGKILL to the server, its agent and the embedded Ray at once (the OOM killer, a power
    cut) half-way through 1 GiB: nobody is left to clean up. The journal, written as chunks
    landed, is what the restarted endpoint keeps; the history says how far the recipient got;
    a resume sends at most 10 % more than the missing bytes."""
    data = tmp_path / "data"
    server = start_server(data, "--demo-nodes", "2")
    try:
        server.wait_alive(3)
        (private,) = _private_ray_dirs(server.process.pid)
        tid = _mid_transfer(server, at=0.4)
        agent = _home_agent(server)
        os.killpg(agent.pid, signal.SIGKILL)  # the agent and its embedded Ray
        server.process.kill()
        server.process.wait(10)
    finally:
        server.stop()
    kept = kept_bytes(data)
    assert kept > 0, "the journal should list the chunks that landed"
    assert private.exists(), "nobody was left to remove the killed server's Ray temp dir"
    others = [d for d in _private_ray_dirs() if d != private]
    again = start_server(data, "--demo-nodes", "2")
    try:
        again.wait_alive(3)
        assert not private.exists(), "the next start should sweep what the killed one left"
        assert _private_ray_dirs(again.process.pid), "a live server's own dir stays"
        assert all(d.exists() for d in others if _owner_alive(d)), "another's was touched"
        interrupted = tx.get(again, tid)
        assert interrupted["status"] == "interrupted" and interrupted["resumable"], interrupted
        assert interrupted["recipients"]["node_2"]["bytes_done"] > 0, interrupted
        _resume_and_check(again, tid, data, interrupted["bytes_total"] - kept)
    finally:
        again.stop()
    again.check_log_clean()


def _private_ray_dirs(pid: int | None = None) -> list[Path]:
    """The embedded clusters' private Ray temp dirs (of the server ``pid``, if given)."""
    found = []
    for path in Path(tempfile.gettempdir()).glob("castray-ray-*"):
        with contextlib.suppress(OSError, ValueError):
            owner = json.loads((path / "owner.json").read_text())
            if pid is None or owner["pid"] == pid:
                found.append(path)
    return found


def _owner_alive(path: Path) -> bool:
    with contextlib.suppress(OSError, ValueError, psutil.Error):
        return psutil.pid_exists(json.loads((path / "owner.json").read_text())["pid"])
    return False


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
