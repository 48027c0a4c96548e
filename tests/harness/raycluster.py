"""Ray clusters started with ``ray start --block``, as a user would, kept on loopback.

Every raylet gets its own process group, node IP (127.0.0.N, N >= 2), ports and temp dir,
so clusters of different tests never meet, and stopping a group leaves nothing behind.
Nothing here uses the global stop command of Ray's CLI: it would kill every Ray process on
the machine, other users' clusters included.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.harness.waiting import free_port, wait_for

RAY = str(Path(sys.executable).with_name("ray"))
START_TIMEOUT = 90.0


@dataclass
class Raylet:
    ip: str
    process: subprocess.Popen[bytes]
    log: Path
    metrics_port: int = 0
    """Where this node exports Ray's metrics (and CastRay's, from its endpoints) for
    Prometheus: ``http://IP:PORT/metrics``."""

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the raylet's process group, SIGKILL what is left after ``grace``, and every
        process it started (Ray may give a worker a process group of its own: an endpoint's
        actor must not outlive its node)."""
        if self.process.poll() is not None:
            return
        descendants = _descendants(self.process.pid)
        _signal_group(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            _signal_group(self.process.pid, signal.SIGKILL)
            self.process.wait()
        # Children may outlive the leader briefly; make sure the group is gone.
        _kill_all(self.process.pid, descendants)

    def crash(self) -> None:
        """SIGKILL every process of the node at once, as a crashed host loses them."""
        _kill_all(self.process.pid, _descendants(self.process.pid))
        self.process.wait()


@dataclass(frozen=True)
class RunAs:
    """Run a cluster's processes as another user (root only): ``ray`` is then the command
    line that starts Ray's CLI for that user, and ``env`` what it needs to find Ray."""

    user: str
    uid: int
    gid: int
    ray: list[str]
    env: dict[str, str]


@dataclass
class RayCluster:
    """A head and any number of workers on this machine."""

    head_ip: str
    root: Path
    port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    client_port: int = field(default_factory=free_port)
    auth_token: str | None = None
    object_store_bytes: int = 200 * 1024 * 1024
    ray_env: dict[str, str] = field(default_factory=dict)
    ray: list[str] = field(default_factory=lambda: [RAY])
    """The command that runs Ray's CLI (another release's, for instance)."""
    run_as: RunAs | None = None
    ray_tmpdir: Path | None = None
    """Start the head as the manual's ``ray start --head`` does, with no ``--temp-dir``: Ray
    then uses its default temp dir (``RAY_TMPDIR/ray``, private to the test) and records the
    cluster there as the last one started, where Ray's tools and CastRay's discovery look
    (give the server the same ``RAY_TMPDIR``)."""
    raylets: list[Raylet] = field(default_factory=list)
    _temp_dirs: list[Path] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{self.head_ip}:{self.port}"

    @property
    def client_address(self) -> str:
        return f"ray://{self.head_ip}:{self.client_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.head_ip}:{self.dashboard_port}"

    def worker_logs(self) -> str:
        """What the cluster's workers (our endpoint actors among them) wrote to their logs."""
        parts = []
        for temp_dir in self._temp_dirs:
            for path in sorted(temp_dir.glob("session_*/logs/worker-*")):
                with contextlib.suppress(OSError):
                    parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        if self.auth_token is None:
            env["RAY_AUTH_MODE"] = "disabled"
        else:
            env["RAY_AUTH_MODE"] = "token"
            env["RAY_AUTH_TOKEN"] = self.auth_token
        if self.ray_tmpdir is not None:
            env["RAY_TMPDIR"] = str(self.ray_tmpdir)
        return env | self.ray_env

    def start_head(self, num_cpus: int = 1) -> RayCluster:
        """Start the head (again, after ``kill``: the same command, the same ports). On a busy
        machine a head's own processes can time out registering (Ray then gives up on the
        whole node), so more tries follow one that did not come up."""
        attempts = 3
        for attempt in range(1, attempts + 1):
            head = self._start(
                self.head_ip,
                [
                    "--head",
                    f"--port={self.port}",
                    f"--dashboard-port={self.dashboard_port}",
                    f"--dashboard-host={self.head_ip}",
                    f"--ray-client-server-port={self.client_port}",
                ],
                num_cpus,
            )
            try:
                wait_for(
                    functools.partial(self._head_up, head),
                    START_TIMEOUT,
                    f"the Ray head at {self.address}",
                )
            except AssertionError:
                head.stop()
                self.raylets.remove(head)
                if attempt == attempts:
                    raise
            else:
                return self
        raise AssertionError("unreachable")

    def add_worker(self, ip: str, num_cpus: int = 1) -> Raylet:
        """Join a worker and wait for it; on a busy machine a raylet can time out joining,
        so a second try follows a first that did not make it. (It waits for a new alive node
        at ``ip``, not for one more alive node: one that crashed a moment ago may still count
        as alive, until Ray marks it dead as the new one joins.)"""
        before = self._alive_ids()
        for attempt in (1, 2):
            raylet = self._start(ip, [f"--address={self.address}"], num_cpus)
            try:
                wait_for(
                    lambda: any(
                        n["node_ip"] == ip and n["node_id"] not in before
                        for n in self.list_nodes()
                        if n["state"] == "ALIVE"
                    ),
                    START_TIMEOUT,
                    f"worker {ip} to join {self.address}",
                )
            except AssertionError:
                raylet.stop()
                self.raylets.remove(raylet)
                if attempt == 2:
                    raise
            else:
                return raylet
        raise AssertionError("unreachable")

    def alive_nodes(self) -> int:
        """Alive nodes as Ray's State API (what ``ray list nodes`` uses) reports them."""
        return sum(1 for node in self.list_nodes() if node["state"] == "ALIVE")

    def _alive_ids(self) -> set[str]:
        return {n["node_id"] for n in self.list_nodes() if n["state"] == "ALIVE"}

    def list_nodes(self) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.dashboard_url}/api/v0/nodes", headers=self._auth(), timeout=5)
        response.raise_for_status()
        return list(response.json()["data"]["result"]["result"])

    def kill(self) -> None:
        """Every raylet gone at once, as when the machine's cluster dies."""
        for raylet in reversed(self.raylets):
            raylet.stop(grace=0)
        self.raylets.clear()

    def stop(self) -> None:
        for raylet in reversed(self.raylets):
            raylet.stop()
        for temp_dir in self._temp_dirs:
            shutil.rmtree(temp_dir, ignore_errors=True)

    def _start(self, ip: str, extra: list[str], num_cpus: int) -> Raylet:
        # Ray's socket paths live under the temp dir and must stay below 108 bytes.
        recorded = self.ray_tmpdir is not None and "--head" in extra
        if recorded:
            assert self.ray_tmpdir is not None
            temp_dir = self.ray_tmpdir / "ray"
            temp_dir.mkdir(parents=True, exist_ok=True)
        else:
            temp_dir = Path(tempfile.mkdtemp(prefix=f"castray-test-{ip}-"))
        self._temp_dirs.append(temp_dir)
        if self.run_as is not None:
            os.chown(temp_dir, self.run_as.uid, self.run_as.gid)
        log = self.root / f"raylet-{ip}.log"
        metrics_port = free_port()
        command = [
            *(self.run_as.ray if self.run_as is not None else self.ray),
            "start",
            "--block",
            "--disable-usage-stats",
            f"--node-ip-address={ip}",
            *([] if recorded else [f"--temp-dir={temp_dir}"]),
            f"--num-cpus={num_cpus}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--metrics-export-port={metrics_port}",
            f"--object-store-memory={self.object_store_bytes}",
            *extra,
        ]
        if self.run_as is not None:
            exported = [f"{k}={v}" for k, v in self.run_as.env.items()]
            command = ["runuser", "-u", self.run_as.user, "--", "env", *exported, *command]
        with log.open("ab") as out:
            process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env(),
                start_new_session=True,
                # Another user's Ray must not start in a directory it cannot enter (a fresh
                # clone made by mktemp is 0700): the dashboard's subprocesses failed there.
                cwd=temp_dir if self.run_as is not None else None,
            )
        raylet = Raylet(ip=ip, process=process, log=log, metrics_port=metrics_port)
        self.raylets.append(raylet)
        return raylet

    def _head_up(self, head: Raylet) -> bool:
        """The dashboard lists the head alive, and the Ray Client server (started last)
        takes connections."""
        if head.process.poll() is not None:
            raise AssertionError(
                f"ray start exited; see {head.log}:\n{head.log.read_text()[-3000:]}"
                f"{self._session_log_tails()}"
            )
        if self.alive_nodes() < 1:
            return False
        with socket.create_connection((self.head_ip, self.client_port), timeout=1):
            return True

    def _session_log_tails(self) -> str:
        """The ends of the newest session's GCS and raylet logs: why a node did not register."""
        tails = []
        for temp_dir in self._temp_dirs[-1:]:
            for name in ("gcs_server.out", "raylet.out"):
                for path in temp_dir.glob(f"session_2*/logs/{name}"):
                    with contextlib.suppress(OSError):
                        lines = path.read_text(errors="replace").splitlines()
                        notable = [ln for ln in lines if " W " in ln or " E " in ln][-20:]
                        text = "\n".join([*lines[:25], "...", *notable, "...", *lines[-5:]])
                        tails.append(f"\n--- {path} ---\n{text}")
        return "".join(tails)

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.auth_token}"} if self.auth_token else {}


@contextmanager
def running_cluster(
    root: Path, head_ip: str, *worker_ips: str, **options: Any
) -> Iterator[RayCluster]:
    """A head and workers, started in order and stopped whatever happens."""
    root.mkdir(parents=True, exist_ok=True)
    cluster = RayCluster(head_ip, root, **options)
    try:
        cluster.start_head()
        for ip in worker_ips:
            cluster.add_worker(ip)
        yield cluster
    finally:
        cluster.stop()


def _kill_all(group: int, processes: list[psutil.Process]) -> None:
    _signal_group(group, signal.SIGKILL)
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return []


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
