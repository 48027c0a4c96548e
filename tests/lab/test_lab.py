"""Transfers between truly separate hosts: network namespaces on one switch, each link shaped
to 50 Mbit/s, a Ray node per host. Every outcome is checked on disk: the right copies, BLAKE3
verified, and nothing partial left anywhere."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import blake3
import pytest

from tests.harness import transfers as t
from tests.harness.lab import LabServer, lab_cli, leftovers_of, require_lab_powers
from tests.harness.waiting import wait_for
from tests.lab.conftest import lab_name, lab_subnet

pytestmark = [pytest.mark.lab, pytest.mark.ray, pytest.mark.slow]

SIZE = "32MiB"
CUT_DETECTED_WITHIN = 10.0
"""Seconds within which a cut host's failure must be reported (the issue's bound)."""


@pytest.fixture(scope="module")
def lab_file(lab: LabServer) -> dict[str, str]:
    return t.generate(lab, "lab-32m.bin", SIZE, "random")


def _assert_copies(lab: LabServer, transfer: dict, hosts: list[int], expected: str) -> None:
    """Each host has a whole copy whose BLAKE3 (read here, from disk) is the file's."""
    for host in hosts:
        state = transfer["recipients"][lab.node_id(host)]
        assert state["status"] == "completed", state
        assert blake3.blake3(Path(state["path"]).read_bytes()).hexdigest() == expected


def _no_partial_files(lab: LabServer, timeout: float = 60) -> None:
    """No host keeps a partial file or a resume journal."""
    wait_for(
        lambda: (
            all(not t.leftovers(lab.storage(h)) for h in (1, 2, 3) if lab.storage(h).exists())
            or None
        ),
        timeout,
        "every partial file to be gone",
    )


def test_unicast_multicast_and_broadcast_across_hosts(lab: LabServer, lab_file: dict) -> None:
    expected = lab_file["blake3"]
    source = lab.node_id(1)
    unicast = t.send(lab, source_node=source, file=lab_file["file"], recipients=[lab.node_id(3)])
    assert unicast["status"] == "completed", unicast
    _assert_copies(lab, unicast, [3], expected)

    with lab.client() as client:
        group = {"name": "lab-pair", "members": [lab.node_id(2), lab.node_id(3)]}
        assert client.post("/api/groups", json=group).status_code == 201
    multicast = t.send(
        lab, source_node=source, file=lab_file["file"], mode="multicast", group="lab-pair"
    )
    assert multicast["status"] == "completed", multicast
    _assert_copies(lab, multicast, [2, 3], expected)

    for transport in ("stream", "object-store"):
        broadcast = t.send(
            lab, source_node=source, file=lab_file["file"], mode="broadcast", transport=transport
        )
        assert broadcast["status"] == "completed", broadcast
        assert broadcast["transport"] == transport
        _assert_copies(lab, broadcast, [2, 3], expected)
    _no_partial_files(lab)


def test_a_host_cut_mid_broadcast_fails_alone_and_completes_by_itself_after_heal(
    lab: LabServer, lab_file: dict
) -> None:
    """Host 2, first in the chain after the source, is cut while the file streams through it:
    host 3 still gets its copy, host 2 fails with a reason within 10 s of the cut. After the
    heal, its endpoint is alive again (not killed for good) and auto_resume sends it what it
    lacks."""
    source = lab.node_id(1)
    tid = t.start(lab, source_node=source, file=lab_file["file"], mode="broadcast")
    wait_for(
        lambda: t.get(lab, tid)["recipients"][lab.node_id(2)]["bytes_done"] > 0 or None,
        60,
        "host 2 to receive its first chunk",
        interval=0.05,
    )
    cut = lab.cli("cut", "h2")
    assert cut.returncode == 0, cut.stderr
    cut_at = time.monotonic()
    try:
        failed = wait_for(
            lambda: (
                (r := t.get(lab, tid)["recipients"][lab.node_id(2)])["status"] == "failed" and r
            ),
            60,
            "the cut host to fail",
            interval=0.1,
        )
        detected_after = time.monotonic() - cut_at
        assert "cut off" in failed["error"], failed
        assert detected_after <= CUT_DETECTED_WITHIN, f"cut reported after {detected_after:.1f} s"
        first = t.wait_finished(lab, tid, timeout=120)
        assert first["status"] == "partially_failed", first
        assert first["resumable"], first
        _assert_copies(lab, first, [3], lab_file["blake3"])
    finally:
        assert lab.cli("heal", "h2").returncode == 0

    again = _completes_by_itself(lab, tid, 90)
    assert again["resumes"] >= 1, again
    assert again["source_bytes_sent"] < again["bytes_total"], "host 2 kept verified chunks"
    _assert_copies(lab, again, [2, 3], lab_file["blake3"])
    _no_partial_files(lab)


def test_a_cut_that_heals_leaves_the_endpoint_alive_and_the_transfer_resumes_by_itself(
    lab: LabServer,
) -> None:
    """A 256 MiB unicast from host 1 to host 3; host 3 is cut 8 s in and healed 21 s later.
    Before, its endpoint was taken for dead after the heal and killed for good (Ray still had
    its node alive): resume answered 409 and auto_resume never fired."""
    made = t.generate(lab, "lab-256m.bin", "256MiB", "random")
    tid = t.start(lab, source_node=lab.node_id(1), file=made["file"], recipients=[lab.node_id(3)])
    eight_seconds = 8 * 50_000_000 // 8  # what 8 s at 50 Mbit/s bring
    wait_for(
        lambda: (
            t.get(lab, tid)["recipients"][lab.node_id(3)]["bytes_done"] > eight_seconds * 0.7
            or None
        ),
        60,
        "the transfer to be about 8 s in",
    )
    assert lab.cli("cut", "h3").returncode == 0
    try:
        failed = t.wait_finished(lab, tid, 60)
        assert failed["status"] == "failed" and failed["resumable"], failed
        failed_at = time.monotonic()
        # The lost touch is said at once, while the endpoint still counts as alive: before,
        # auto_resume took it for well and streamed into the cut host, which cost a run.
        silent = wait_for(
            lambda: (e := _endpoint(lab, 3))["detail"] is not None and e,
            20,
            "host 3's endpoint to say its probes fail",
        )
        assert "asking it" in silent["detail"], silent
        # The fault itself: the cut goes on 21 s after the failure, as the issue has it.
        time.sleep(max(0.0, 21 - (time.monotonic() - failed_at)))
    finally:
        assert lab.cli("heal", "h3").returncode == 0
    healed_at = time.monotonic()

    # auto_resume takes it up once host 3's endpoint answers again: after a cut this long,
    # TCP's back-off on Ray's connections to the host takes up to about half a minute to
    # notice the heal, and meanwhile the endpoint may well be reported dead ("still asking
    # it"). What must hold is that it comes back and the transfer then completes by itself.
    done = _completes_by_itself(lab, tid, 180)
    assert time.monotonic() - healed_at <= 180
    assert done["resumes"] == 1, "auto_resume ran while host 3 was still cut off"
    endpoint = wait_for(
        lambda: (e := _endpoint(lab, 3))["status"] == "alive" and e,
        30,
        "host 3's endpoint to be alive once its copy completed",
    )
    assert endpoint["detail"] is None, endpoint
    _assert_copies(lab, done, [3], made["blake3"])
    assert done["source_bytes_sent"] < done["bytes_total"], done
    with lab.client() as client:
        health = client.get("/api/health").json()
    assert health["status"] == "ok", health
    _no_partial_files(lab)


def _endpoint(lab: LabServer, host: int) -> dict:
    with lab.client() as client:
        nodes = client.get("/api/nodes").json()["nodes"]
    return next(n for n in nodes if n["id"] == lab.node_id(host))


def _completes_by_itself(lab: LabServer, tid: str, timeout: float) -> dict:
    return wait_for(
        lambda: (x := t.get(lab, tid))["status"] == "completed" and x,
        timeout,
        f"transfer {tid} to complete by itself (auto_resume)",
        interval=0.5,
    )


def test_five_percent_loss_on_a_link_still_delivers(lab: LabServer, lab_file: dict) -> None:
    assert lab.cli("shape", "h3", "--loss", "5%").returncode == 0
    try:
        state = lab.state.host("h3")
        assert state.loss_percent == 5.0
        sent = t.send(
            lab, source_node=lab.node_id(1), file=lab_file["file"], recipients=[lab.node_id(3)]
        )
        assert sent["status"] == "completed", sent
        _assert_copies(lab, sent, [3], lab_file["blake3"])
    finally:
        assert lab.cli("shape", "h3", "--loss", "0%").returncode == 0
    _no_partial_files(lab)


def _multicast_with_host_2_slow(
    lab: LabServer, made: dict[str, str], recipients: list[str]
) -> dict[str, Any]:
    """Send ``made`` from host 1 to ``recipients`` over the stream while host 2's link is at
    5 Mbit/s (50 again after); every copy completes, and hosts 2 and 3 hold the file's
    BLAKE3. The finished transfer."""
    assert lab.cli("shape", "h2", "--rate", "5mbit").returncode == 0
    try:
        sent = t.send(
            lab,
            timeout=300,
            source_node=lab.node_id(1),
            file=made["file"],
            mode="multicast",
            recipients=recipients,
            transport="stream",
        )
    finally:
        assert lab.cli("shape", "h2", "--rate", "50mbit").returncode == 0
    assert sent["status"] == "completed", sent
    _assert_copies(lab, sent, [2, 3], made["blake3"])
    return sent


def _took(sent: dict[str, Any]) -> dict[str, float]:
    """Seconds from the transfer's start to each recipient's end."""
    start = datetime.fromisoformat(sent["created_at"])
    return {
        who: (datetime.fromisoformat(state["finished_at"]) - start).total_seconds()
        for who, state in sent["recipients"].items()
    }


# The 8 MiB test comes first: a smaller file teaches the server nothing of host 2's pace,
# and the 16 MiB test after it does (host 2 then starts its chains at the end).
def test_a_slow_host_behind_a_head_that_is_already_done_is_moved(lab: LabServer) -> None:
    """The chain's head is a named endpoint on the source's own host: it has its copy well
    before the first look at the paces (1 s in). Host 2, next in the chain, is slow, and
    host 3 after it would take its pace to the end. The finished head's pace is the one to
    compare with, and its committed copy, still feeding host 2, is redirected to host 3."""
    made = t.generate(lab, "lab-8m.bin", "8MiB", "random")
    with lab.client() as client:
        nodes = client.get("/api/nodes").json()["nodes"]
    ray_node = next(n["ray_node_id"] for n in nodes if n["id"] == lab.node_id(1))
    created = t.post(lab, "/api/nodes", {"node_id": "lab-head", "ray_node_id": ray_node})
    assert created.status_code == 201, created.text
    try:
        recipients = ["lab-head", lab.node_id(2), lab.node_id(3)]
        sent = _multicast_with_host_2_slow(lab, made, recipients)
    finally:
        with lab.client() as client:
            assert client.delete("/api/nodes/lab-head").status_code == 204
    assert sent["placed_last"] == [], "the server knew host 2 slow: nothing was moved"
    # 8 MiB: about 14 s at 5 Mbit/s, under 2 s at 50. Left behind host 2, host 3 ends with it.
    took = _took(sent)
    assert took[lab.node_id(3)] < took[lab.node_id(2)] / 2, took
    _no_partial_files(lab)


def test_a_slow_host_does_not_hold_back_the_fast_one_and_starts_the_next_at_the_end(
    lab: LabServer,
) -> None:
    """Host 2, the head of the natural chain (hosts in address order), on a link ten times
    slower than host 3's: host 3 is fed by the source once the chain adapts, and its copy
    completes well before host 2's, which completes too, verified. The server remembers the
    pace: the next broadcast starts with host 2 at the chain's end, and says so."""
    made = t.generate(lab, "lab-16m.bin", "16MiB", "random")
    recipients = [lab.node_id(2), lab.node_id(3)]
    first = _multicast_with_host_2_slow(lab, made, recipients)
    again = _multicast_with_host_2_slow(lab, made, recipients)
    # 16 MiB: about 27 s at 5 Mbit/s, under 3 s at 50, plus the few seconds the chain
    # takes to see the paces and adapt (the first time).
    for sent in (first, again):
        took = _took(sent)
        assert took[lab.node_id(3)] < took[lab.node_id(2)] / 2, took
    assert (first["placed_last"], again["placed_last"]) == ([], [lab.node_id(2)])
    _no_partial_files(lab)


def test_a_killed_and_restarted_host_comes_back_as_an_alive_endpoint(
    lab: LabServer, lab_file: dict
) -> None:
    killed = lab.cli("kill", "h3")
    assert killed.returncode == 0, killed.stderr
    wait_for(lambda: lab.nodes().get(lab.node_id(3)) != "alive" or None, 90, "host 3 gone")
    status = lab.cli("status")
    assert "stopped" in status.stdout, status.stdout

    started = lab.cli("start", "h3", timeout=300)
    assert started.returncode == 0, started.stdout + started.stderr
    wait_for(lambda: lab.nodes().get(lab.node_id(3)) == "alive" or None, 120, "host 3 back")
    sent = t.send(
        lab, source_node=lab.node_id(1), file=lab_file["file"], recipients=[lab.node_id(3)]
    )
    assert sent["status"] == "completed", sent
    _assert_copies(lab, sent, [3], lab_file["blake3"])


def _sent(lab: LabServer) -> dict[int, int]:
    with lab.client() as client:
        nodes = {n["id"]: n for n in client.get("/api/nodes").json()["nodes"]}
    return {h: nodes[lab.node_id(h)]["counters"]["bytes_sent"] for h in (1, 2, 3)}


def test_a_pinned_file_reaches_a_host_whose_node_starts_later_from_a_holder(
    lab: LabServer, lab_file: dict
) -> None:
    """Pinned to all with host 3's Ray node stopped: hosts 1 and 2 get it; host 3, started
    later, gets it by itself, verified, from a holder that is not the pin's first source."""
    assert lab.cli("kill", "h3").returncode == 0
    wait_for(lambda: lab.nodes().get(lab.node_id(3)) != "alive" or None, 90, "host 3 gone")
    made = t.post(lab, "/api/pins", {"file": lab_file["file"], "nodes": "all"})
    assert made.status_code == 201, made.text
    pin_id = made.json()["id"]

    def copy_on(host: int) -> dict | None:
        with lab.client() as client:
            copy = client.get(f"/api/pins/{pin_id}").json()["copies"].get(lab.node_id(host))
        return copy if copy and copy["status"] == "verified" else None

    try:
        for host in (1, 2):
            wait_for(lambda h=host: copy_on(h), 120, f"host {host}'s pinned copy")
        before = _sent(lab)
        started = lab.cli("start", "h3", timeout=300)
        assert started.returncode == 0, started.stdout + started.stderr
        arrived = wait_for(lambda: copy_on(3), 240, "host 3's pinned copy, by itself")
        after = _sent(lab)
        assert blake3.blake3(Path(arrived["path"]).read_bytes()).hexdigest() == lab_file["blake3"]
        size = lab_file["size"]
        assert after[2] - before[2] >= size, (before, after)  # host 2, a holder, sent it
        assert after[1] - before[1] < size, (before, after)  # the first source did not
    finally:
        with lab.client() as client:
            assert client.delete(f"/api/pins/{pin_id}").status_code == 204
    _no_partial_files(lab)


def test_lab_down_after_a_crashed_up_leaves_nothing_and_is_idempotent() -> None:
    """``up`` killed with SIGKILL half-way (a Ray node running, the rest not made yet):
    ``down`` still finds and removes it all, and a second ``down`` has nothing to do."""
    require_lab_powers()
    name = lab_name("crash")
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "castray",
            "lab",
            "up",
            "--name",
            name,
            "--hosts",
            "2",
            "--subnet",
            lab_subnet(77),
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert up.stdout is not None
        for line in up.stdout:
            if "Ray node up" in line:
                break
        else:
            raise AssertionError(f"castray lab up ended before a Ray node was up ({up.wait()})")
        up.send_signal(signal.SIGKILL)
        up.wait()
        assert leftovers_of(name), "the crashed lab should have left something to clean up"
    finally:
        down = lab_cli("down", "--name", name)
    assert down.returncode == 0, down.stderr
    assert "is down" in down.stdout
    assert leftovers_of(name) == []
    again = lab_cli("down", "--name", name)
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stdout


def test_lab_commands_say_what_is_wrong() -> None:
    require_lab_powers()
    missing = lab_cli("status", "--name", lab_name("none"))
    assert missing.returncode == 1
    assert "no lab" in missing.stderr and "castray lab up" in missing.stderr
    bad_rate = lab_cli("up", "--name", lab_name("bad"), "--rate", "fast")
    assert bad_rate.returncode == 1
    assert "100mbit" in bad_rate.stderr
    outside = lab_cli("up", "--name", lab_name("bad"), "--subnet", "10.0.0.0/24")
    assert outside.returncode == 1
    assert "198.18.0.0/15" in outside.stderr
    assert leftovers_of(lab_name("bad")) == []
