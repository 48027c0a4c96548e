"""Self-healing that heals (#23), against a real server over its embedded Ray: an endpoint
actor that dies on a node that lives comes back, health tells the truth meanwhile, the disk
is reserved, write errors fail their recipient, changed sources are seen, repairs do not
stall, a wedged receiver ends its transfer, and the history says what happened."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import httpx
import pytest

from tests.harness import transfers as tx
from tests.harness.clusters import agents
from tests.harness.server import CastRayServer, serving, start_server
from tests.harness.waiting import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.ray, pytest.mark.slow]

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CastRayServer]:
    root = tmp_path_factory.mktemp("healing")
    env = {
        "HOME": str(root),
        "CASTRAY_ENABLE_FAULT_INJECTION": "1",
        "CASTRAY_STALL_TIMEOUT": "15",
        "CASTRAY_CHUNK_SIZE": str(MIB),
        "CASTRAY_ENDPOINT_PROBE_INTERVAL": "1",
    }
    with serving(root / "data", "--demo-nodes", "2", alive=3, env=env) as server:
        yield server


def _faults(server: CastRayServer, node: str, **faults: Any) -> None:
    with server.client() as client:
        assert client.post(f"/api/nodes/{node}/faults", json=faults).status_code == 204


def _send_with_faults(
    server: CastRayServer, file: str, faults: dict[str, int], **body: Any
) -> dict[str, Any]:
    """Send ``file`` from node_1 to node_2 with these faults on node_2, cleared after."""
    _faults(server, "node_2", **faults)
    try:
        return tx.send(server, source_node="node_1", file=file, recipients=["node_2"], **body)
    finally:
        _faults(server, "node_2", **dict.fromkeys(faults, 0))


def _health(server: CastRayServer) -> tuple[int, dict[str, Any]]:
    answer = httpx.get(f"{server.url}/api/health", timeout=5)
    return answer.status_code, answer.json()


def test_a_killed_endpoint_actor_comes_back_under_its_id_and_health_says_so_meanwhile(
    server: CastRayServer,
) -> None:
    """kill -9 of an endpoint's worker (what the OOM killer does) left it dead for good on a
    node that lives, with health ok."""
    before = server.nodes()["node_2"]
    os.kill(before["pid"], signal.SIGKILL)

    seen = wait_for(
        lambda: (h := _health(server))[0] == 503 and h[1],
        30,
        "health to say the endpoint is down",
        interval=0.1,
    )
    assert seen["status"] == "degraded", seen
    assert any("node_2" in p for p in seen["problems"]), seen
    back = wait_for(
        lambda: (
            (n := server.nodes()["node_2"])["status"] == "alive" and n["pid"] != before["pid"] and n
        ),
        60,
        "node_2 to be alive again",
    )
    assert back["storage_dir"] == before["storage_dir"]
    assert back["counters"] == before["counters"]
    assert _health(server)[0] == 200
    tx.upload_bytes(server, "after-restart.bin", tx.random_bytes(300_000))
    done = tx.send(server, source_node="node_1", file="after-restart.bin", recipients=["node_2"])
    assert done["status"] == "completed", done


def test_health_is_not_ok_before_any_endpoint_is_alive(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", env={"HOME": str(tmp_path)})
    try:
        answers = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            code, body = _health(server)
            alive = server.status()["active_nodes"]
            answers.append((code, body["status"], alive))
            if code == 200:
                break
            time.sleep(0.05)
    finally:
        server.stop()
    assert answers[0][:2] == (503, "starting"), answers[:3]
    assert answers[-1][0] == 200, answers[-3:]
    assert all(alive >= 1 for code, _, alive in answers if code == 200), answers


def test_two_transfers_that_fit_one_at_a_time_are_not_both_started(
    server: CastRayServer,
) -> None:
    """A 50 MiB disk, two 40 MiB transfers at once: before, both passed the free-space check
    and both failed at 24 MiB with the disk full, leaving it 100 % full."""
    tx.generate(server, "forty.bin", "40MiB", "random")
    with tx.tiny_disk_node(server, "small", "50m") as small:
        # The first is under way (and 8 s from its end) when the second is asked for: the
        # second must find its room taken, not the first's finished copy.
        first = tx.start(
            server, source_node="node_1", file="forty.bin", recipients=[small], rate_limit="5MB/s"
        )
        tx.wait_under_way(server, first, small)
        second = tx.start(server, source_node="node_2", file="forty.bin", recipients=[small])
        results = [tx.wait_finished(server, first), tx.wait_finished(server, second)]
        storage = server.data_dir / "storage" / small
        leftovers = tx.leftovers(storage)
        copy = storage / "forty.bin"
        whole = copy.exists() and blake3.blake3(copy.read_bytes()).hexdigest()
    statuses = sorted(r["status"] for r in results)
    assert statuses == ["completed", "failed"], results
    refused = next(r for r in results if r["status"] == "failed")["recipients"][small]
    assert "not enough free space" in refused["error"], refused
    assert refused["bytes_done"] == 0
    assert whole == results[0]["file"]["blake3"]
    assert leftovers == []


def test_a_failed_sync_fails_its_recipient_stops_the_source_and_a_resume_completes(
    server: CastRayServer,
) -> None:
    """A write-back error reported once by the kernel was swallowed by the journal thread,
    and the commit's fsync then passed: a file with lost pages could be committed."""
    tx.generate(server, "synced.bin", "48MiB", "random")
    tid = tx.start(
        server, source_node="node_1", file="synced.bin", recipients=["node_2"], rate_limit="8MB/s"
    )
    tx.wait_under_way(server, tid, "node_2", at=0.2)
    _faults(server, "node_2", fail_syncs=1)

    failed = tx.wait_finished(server, tid, 60)
    assert failed["status"] == "failed", failed
    error = failed["recipients"]["node_2"]["error"]
    assert "could not write its file to disk" in error and "Input/output error" in error, error
    assert failed["recipients"]["node_2"]["transient"] is False
    assert 0 < failed["source_bytes_sent"] < failed["bytes_total"] * 0.8, failed
    assert failed["resumable"], failed

    with server.client() as client:
        assert client.post(f"/api/transfers/{tid}/resume").status_code == 202
    done = tx.wait_finished(server, tid, 60)
    assert done["status"] == "completed", done
    assert done["chunks_resumed"] > 0 and done["chunks_resent"] == failed["chunks_resent"]
    copy = Path(done["recipients"]["node_2"]["path"])
    assert blake3.blake3(copy.read_bytes()).hexdigest() == done["file"]["blake3"]


def test_a_library_file_written_in_place_with_its_mtime_put_back_is_hashed_again(
    server: CastRayServer,
) -> None:
    """The digest cache went by size and mtime only: a byte changed in place, its mtime then
    restored, kept the old manifest, and the transfer failed 'still missing after retries'."""
    data = bytearray(tx.random_bytes(3 * MIB))
    tx.upload_bytes(server, "edited.bin", bytes(data))
    first = tx.send(server, source_node="node_1", file="edited.bin", recipients=["node_2"])
    assert first["status"] == "completed", first
    path = server.data_dir / "library" / "edited.bin"
    times = path.stat()
    data[MIB + 5] ^= 0xFF
    with path.open("r+b") as f:
        f.seek(MIB + 5)
        f.write(bytes([data[MIB + 5]]))
    os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns))

    again = tx.send(server, source_node="node_1", file="edited.bin", recipients=["node_2"])

    assert again["status"] == "completed", again
    assert again["file"]["blake3"] == blake3.blake3(bytes(data)).hexdigest()
    assert Path(again["recipients"]["node_2"]["path"]).read_bytes() == bytes(data)


@pytest.mark.parametrize("transport", ["stream", "object-store"])
def test_a_source_file_written_during_its_transfer_fails_it_as_changed(
    server: CastRayServer, transport: str
) -> None:
    """Before, an object-store transfer of a file outside the library that changed mid-way
    committed a torn copy everywhere, as a success."""
    tx.generate(server, f"moving-{transport}.bin", "24MiB", "random")
    hop = tx.send(
        server, source_node="node_1", file=f"moving-{transport}.bin", recipients=["node_2"]
    )
    local = Path(hop["recipients"]["node_2"]["path"])
    tid = tx.start(
        server,
        source_node="node_2",
        file=f"./{local.name}",  # node_2's copy, not the library's file of that name
        recipients=["node_1"],
        transport=transport,
        rate_limit="4MB/s",
    )
    tx.wait_under_way(server, tid, "node_1")
    with local.open("r+b") as f:
        f.seek(20 * MIB)
        f.write(b"written while it was being sent")

    done = tx.wait_finished(server, tid, 60)
    assert done["status"] == "failed", done
    assert "changed" in done["error"], done
    assert not (server.data_dir / "storage" / "node_1" / local.name).exists()


def test_a_repair_that_cannot_reach_its_recipient_is_tried_again(server: CastRayServer) -> None:
    """A repair stream that failed before its recipient saw it was never tried again: the
    recipient waited for the stall timeout, and failed."""
    tx.generate(server, "repaired.bin", "16MiB", "random")
    _faults(server, "node_2", corrupt_chunks=1)
    tid = tx.start(
        server, source_node="node_1", file="repaired.bin", recipients=["node_2"], rate_limit="8MB/s"
    )
    tx.wait_under_way(server, tid, "node_2")
    _faults(server, "node_2", refuse_data_connections=True)  # the stream under way goes on
    wait_for(
        lambda: tx.get(server, tid)["recipients"]["node_2"]["bytes_done"] >= 15 * MIB or None,
        30,
        "all but the damaged chunk to arrive",
    )
    time.sleep(3)  # the fault itself: repairs are refused for 3 s
    _faults(server, "node_2", refuse_data_connections=False)
    unrefused = time.monotonic()

    done = tx.wait_finished(server, tid, 30)
    assert done["status"] == "completed", done
    assert time.monotonic() - unrefused < 12, "the repair waited for the stall timeout"
    assert done["chunks_damaged"] == 1 and done["chunks_resent"] >= 1, done


def test_a_recipient_ray_cannot_reach_for_a_moment_is_asked_again_not_failed(
    server: CastRayServer,
) -> None:
    """On a busy host Ray may fail a call with ActorUnavailableError while the actor lives
    (the 16-host lab on two cores failed a host mid-broadcast so): that is no answer, not a
    death. Its copy completes; only a silence of ``peer_timeout`` would cut it off."""
    tx.generate(server, "reached.bin", "8MiB", "random")
    done = _send_with_faults(server, "reached.bin", {"unavailable_statuses": 3}, rate_limit="2MB/s")
    assert done["status"] == "completed", done
    assert done["recipients"]["node_2"]["error"] is None, done
    copy = server.data_dir / "storage" / "node_2" / "reached.bin"
    assert blake3.blake3(copy.read_bytes()).hexdigest() == done["file"]["blake3"]


def test_a_recipient_ray_never_reaches_is_cut_off_after_the_peer_timeout(
    server: CastRayServer,
) -> None:
    """Each call failing at once must not keep it waiting forever: the silence is counted
    from the first unanswered call, and after ``peer_timeout`` (5 s) it is cut off, saying
    why (a node killed under a transfer is answered for so until Ray learns of it)."""
    tx.generate(server, "unreached.bin", "8MiB", "random")
    done = _send_with_faults(
        server, "unreached.bin", {"unavailable_statuses": 100}, rate_limit="512KB/s"
    )
    assert done["status"] == "failed", done
    assert "could not reach its actor for 5 s" in done["recipients"]["node_2"]["error"], done
    assert done["recipients"]["node_2"]["transient"], "a resume takes it up once it answers"


@pytest.mark.parametrize("transport", ["stream", "object-store"])
def test_a_commit_whose_answer_is_lost_is_asked_again_and_its_copy_completes(
    server: CastRayServer, transport: str
) -> None:
    """Ray may lose the answer to a call its actor ran (ActorUnavailableError): a commit so
    answered failed its recipient for good ("could not commit the file"), though its copy
    was in place. Asked again, the endpoint answers what the first call did."""
    tx.generate(server, "lost-answer.bin", "4MiB", "random")
    done = _send_with_faults(
        server, "lost-answer.bin", {"lost_commit_answers": 2}, transport=transport
    )
    assert done["status"] == "completed", done
    assert done["recipients"]["node_2"]["error"] is None, done
    storage = server.data_dir / "storage" / "node_2"
    copy = storage / "lost-answer.bin"
    assert blake3.blake3(copy.read_bytes()).hexdigest() == done["file"]["blake3"]
    assert not list(storage.glob(".lost-answer.bin.*")), "no partial file or journal left"


def test_a_commit_whose_answer_never_comes_is_cut_off_after_the_peer_timeout(
    server: CastRayServer,
) -> None:
    """Asking again must not go on for ever: after ``peer_timeout`` (5 s) without an answer
    the recipient is cut off, saying why, and a resume may take it up."""
    tx.generate(server, "never-answered.bin", "4MiB", "random")
    done = _send_with_faults(
        server, "never-answered.bin", {"lost_commit_answers": 100}, transport="stream"
    )
    assert done["status"] == "failed", done
    error = done["recipients"]["node_2"]["error"]
    assert "could not reach its actor for 5 s to commit its copy" in error, done
    assert done["recipients"]["node_2"]["transient"], "a resume takes it up once it answers"


def test_a_small_file_carried_inline_is_asked_again_when_its_answer_is_lost(
    server: CastRayServer,
) -> None:
    """A small file travels inside its calls (``transports.inline``): the call that writes
    and commits it may lose its answer as a commit's may. Asked again, it answers what it did
    the first time (the copy is in place, written once); never answered, the recipient is
    cut off after ``peer_timeout`` (5 s), resumable."""
    made = tx.upload_bytes(server, "small-lost.bin", tx.random_bytes(64 * 1024))
    storage = server.data_dir / "storage" / "node_2"

    done = _send_with_faults(server, "small-lost.bin", {"lost_commit_answers": 2})

    assert done["status"] == "completed", done
    assert blake3.blake3((storage / "small-lost.bin").read_bytes()).hexdigest() == made["blake3"]
    assert not list(storage.glob(".small-lost.bin.*")), "no partial file left"

    (storage / "small-lost.bin").unlink()
    done = _send_with_faults(server, "small-lost.bin", {"lost_commit_answers": 100})

    assert done["status"] == "failed", done
    error = done["recipients"]["node_2"]["error"]
    assert "could not reach its actor for 5 s to commit its copy" in error, done
    assert done["recipients"]["node_2"]["transient"], "a resume takes it up once it answers"


def test_a_wedged_receiver_ends_its_object_store_transfer_and_the_agent_goes_idle(
    server: CastRayServer,
) -> None:
    """A stalled object-store run cleared its chunks in flight but not its window, then
    waited on nothing at 100 % CPU for ever, and never ended."""
    tx.generate(server, "wedged.bin", "32MiB", "random")
    _faults(server, "node_2", wedge=True)
    try:
        done = tx.send(
            server,
            timeout=60,
            source_node="node_1",
            file="wedged.bin",
            recipients=["node_2"],
            transport="object-store",
        )
    finally:
        _faults(server, "node_2", wedge=False)
    assert done["status"] == "failed", done
    assert "no chunk arrived" in done["recipients"]["node_2"]["error"], done
    (agent,) = agents(server, "home")
    agent.cpu_percent()
    time.sleep(3)  # a measurement window, not a wait
    assert agent.cpu_percent() < 50, "the agent keeps spinning after the transfer ended"


def test_an_interrupted_transfer_gives_each_recipient_a_final_state(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    server = start_server(tmp_path / "data", "--demo-nodes", "2", env=env)
    try:
        server.wait_alive(3)
        tx.generate(server, "cut-short.bin", "64MiB", "random")
        tid = tx.start(
            server,
            source_node="node_1",
            file="cut-short.bin",
            recipients=["node_2"],
            rate_limit="8MB/s",
        )
        tx.wait_under_way(server, tid, "node_2")
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(30)
        server = start_server(tmp_path / "data", "--demo-nodes", "2", env=env)
        interrupted = tx.get(server, tid)
    finally:
        server.stop()
    assert interrupted["status"] == "interrupted", interrupted
    recipient = interrupted["recipients"]["node_2"]
    assert recipient["status"] == "interrupted" and "stopped" in recipient["error"], recipient
    assert recipient["finished_at"] is not None


def test_a_recipient_that_refused_before_a_byte_leaves_nothing_to_resume(
    server: CastRayServer,
) -> None:
    """Before, such a transfer said resumable: true, and its Resume button then failed."""
    tx.upload_bytes(server, "too-big.bin", tx.random_bytes(2 * MIB))
    with tx.tiny_disk_node(server, "cramped") as cramped:
        done = tx.send(server, source_node="node_1", file="too-big.bin", recipients=[cramped])
        storage = server.data_dir / "storage" / cramped
        leftovers = tx.leftovers(storage)
    assert done["status"] == "failed", done
    assert "not enough free space" in done["recipients"][cramped]["error"]
    assert done["resumable"] is False
    assert leftovers == []
