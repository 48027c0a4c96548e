"""External clusters that break: an agent killed, a cluster that dies and comes back, a server
that dies under its agents. CastRay heals what it can without the user, stops what cannot
work, and leaves no process behind.

Each test gets a ``ray start`` cluster of its own on a loopback address of its own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from castray.chunks import file_blake3
from tests.harness import clusters as ext
from tests.harness import transfers as tx
from tests.harness.raycluster import RayCluster, running_cluster
from tests.harness.server import CastRayServer, serving, start_server
from tests.harness.waiting import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.ray, pytest.mark.slow]

AGENT_KILLED, CLUSTER_KILLED, ORPHANED = "127.0.0.56", "127.0.0.57", "127.0.0.58"
HEAL_BOUND = 90.0
"""Seconds for a cluster to come back connected with its endpoint alive, without the user: a
fresh agent joins in 5 to 20 s on a loaded two-core machine, after at most 15 s of back-off."""
AGENT_STOP_BOUND = 20.0
"""Seconds from a cluster's death to its agent being gone: 8 s of silence make it unreachable
(``cluster_timeout``), then the agent gets 2 s to stop; the rest is margin."""
ORPHAN_BOUND = 3.0
"""Seconds an agent may outlive its server: it looks for its parent every 0.5 s and then gets
1.5 s to stop cleanly (the issue asks for 2); the rest is margin for a loaded machine."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CastRayServer]:
    with serving(
        tmp_path_factory.mktemp("ext-faults") / "data", "--demo-nodes", "1", alive=2
    ) as server:
        yield server


def _back_and_carrying(server: CastRayServer, cluster: RayCluster, since: float) -> float:
    """Wait until the cluster is connected again with its endpoint alive, without anyone
    asking; check a file reaches the endpoint; the seconds it took since ``since``."""
    name, endpoint = ext.name_of(cluster), ext.endpoint_of(cluster)
    wait_for(
        lambda: (
            (ext.info(server, name) or {}).get("status") == "connected"
            and server.nodes().get(endpoint, {}).get("status") == "alive"
        ),
        HEAL_BOUND,
        f"{name} to be connected again with {endpoint} alive",
        interval=0.25,
    )
    healed = time.monotonic() - since
    data = tx.random_bytes(300_000)
    tx.upload_bytes(server, f"to-{name}.bin", data)
    done = tx.send(server, source_node="node_1", file=f"to-{name}.bin", recipients=[endpoint])
    assert done["status"] == "completed", done
    assert Path(done["recipients"][endpoint]["path"]).read_bytes() == data
    return healed


def test_a_killed_external_agent_is_restarted_and_its_cluster_comes_back(
    server: CastRayServer, tmp_path: Path
) -> None:
    with running_cluster(tmp_path, AGENT_KILLED) as cluster:
        ext.connect(server, cluster)
        name = ext.name_of(cluster)
        (agent,) = ext.agents(server, name)
        agent.kill()
        killed_at = time.monotonic()
        wait_for(
            lambda: (ext.info(server, name) or {}).get("status") == "lost",
            15,
            f"{name} to be seen lost",
            interval=0.05,
        )
        healed = _back_and_carrying(server, cluster, killed_at)
        (successor,) = ext.agents(server, name)

    assert successor.pid != agent.pid
    assert healed < HEAL_BOUND
    server.check_log_clean()


def test_a_dead_cluster_loses_its_agent_and_is_reconnected_when_it_returns(
    server: CastRayServer, tmp_path: Path
) -> None:
    with running_cluster(tmp_path, CLUSTER_KILLED) as cluster:
        first = ext.connect(server, cluster)["cluster"]
        name = ext.name_of(cluster)
        cluster.kill()
        died_at = time.monotonic()
        wait_for(
            lambda: not ext.agents(server, name),
            AGENT_STOP_BOUND,
            f"the agent of the dead {name} to be gone",
            interval=0.1,
        )
        stopped = time.monotonic() - died_at
        down = ext.info(server, name)
        cluster.start_head()  # the same address, a new Ray session
        restarted_at = time.monotonic()
        healed = _back_and_carrying(server, cluster, restarted_at)
        again = ext.info(server, name)

    assert stopped <= AGENT_STOP_BOUND
    assert down is not None and down["status"] in ("unreachable", "lost"), down
    assert again is not None and again["ray"]["session_name"] != first["ray"]["session_name"]
    assert healed < HEAL_BOUND


def test_agents_exit_within_2_s_of_their_servers_death_even_with_their_cluster_dead(
    tmp_path: Path,
) -> None:
    server = start_server(tmp_path / "data", "--demo-nodes", "0")
    groups: list[int] = []
    try:
        server.wait_alive(1)
        with running_cluster(tmp_path / "ray", ORPHANED) as cluster:
            ext.connect(server, cluster)
            agents = ext.agents(server)
            assert len(agents) == 2, agents  # the home's and the external cluster's
            groups = [os.getpgid(a.pid) for a in agents]
            cluster.kill()
            server.process.kill()
            killed_at = time.monotonic()
            wait_for(
                lambda: not any(_running(a) for a in agents),
                30,
                "the agents of the killed server to exit",
                interval=0.05,
            )
            outlived = time.monotonic() - killed_at
    finally:
        server.stop()
        for group in groups:  # the embedded home's Ray processes, which had no one to stop them
            _kill_group(group)

    assert outlived <= ORPHAN_BOUND, f"the agents outlived their server by {outlived:.1f} s"


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _kill_group(group: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)


RESUMED_ELSEWHERE = "127.0.0.59"


def test_a_transfer_to_another_cluster_is_resumed_after_a_restart_that_remembers_it(
    tmp_path: Path,
) -> None:
    """Before, a resume answered 409 for a recipient in an external cluster (while its partial
    file was kept for 7 days), and after a restart the external cluster was forgotten (404).
    Now the cluster is reconnected by itself at the start, and the resume sends only what its
    endpoint's journal lacks, across the clusters."""
    env = {"HOME": str(tmp_path)}
    with running_cluster(tmp_path / "elsewhere", RESUMED_ELSEWHERE) as cluster:
        server = start_server(tmp_path / "data", "--demo-nodes", "1", env=env)
        try:
            server.wait_alive(2)
            ext.connect(server, cluster)
            endpoint = ext.endpoint_of(cluster)
            tx.generate(server, "across.bin", "96MiB", "random")
            tid = tx.start(
                server,
                source_node="node_1",
                file="across.bin",
                recipients=[endpoint],
                rate_limit="16MB/s",
            )
            tx.wait_under_way(server, tid, endpoint, at=0.3)
            server.process.send_signal(signal.SIGTERM)
            server.process.wait(30)

            server = start_server(tmp_path / "data", "--demo-nodes", "1", env=env)
            interrupted = tx.get(server, tid)
            wait_for(
                lambda: all(
                    server.nodes().get(n, {}).get("status") == "alive" for n in (endpoint, "node_1")
                ),
                HEAL_BOUND,
                "the external cluster to be reconnected by itself after the restart (and the "
                "source's node to be up)",
            )
            with server.client() as client:
                resumed = client.post(f"/api/transfers/{tid}/resume")
            done = tx.wait_finished(server, tid, 120)
        finally:
            server.stop()

    assert interrupted["status"] == "interrupted" and interrupted["resumable"], interrupted
    assert resumed.status_code == 202, resumed.text
    assert done["status"] == "completed", done
    assert done["chunks_resumed"] > 0
    assert 0 < done["source_bytes_sent"] < done["bytes_total"] * 0.8, done
    copy = Path(done["recipients"][endpoint]["path"])
    assert file_blake3(copy) == done["file"]["blake3"]
