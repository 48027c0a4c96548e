"""A lab made with ``castray lab up`` as a user would (subprocesses of the real CLI), and the
checks that it left nothing behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from castray.lab import network
from castray.lab.state import LabState, lab_directory, load
from tests.harness.waiting import free_port

UP_TIMEOUT = 600
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def lab_cli(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``castray lab ARGS``, as a user types it (into a pipe: with the environment Python
    knows, not the C-level one a library such as readline may have added ``COLUMNS`` to),
    with ``env`` added (the lab's Ray nodes inherit it)."""
    return subprocess.run(
        [sys.executable, "-m", "castray", "lab", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ) | (env or {}),
    )


def require_lab_powers() -> None:
    """The lab needs root on Linux, with iproute2 and nftables (CI has them: it runs as root
    and scripts/setup installs them)."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("the lab tests make network namespaces: they need root on Linux")


@dataclass
class LabServer:
    """The lab's CastRay, as the transfer helpers use a server."""

    name: str
    url: str
    data_dir: Path
    token: str | None = None

    def client(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)

    @property
    def state(self) -> LabState:
        lab = load(self.name)
        assert lab is not None, f"lab {self.name} has no state file"
        return lab

    def node_id(self, host: int) -> str:
        return f"home-{self.state.hosts[host - 1].address}"

    def storage(self, host: int) -> Path:
        return self.data_dir / "storage" / self.node_id(host)

    def nodes(self) -> dict[str, str]:
        with self.client() as client:
            nodes = client.get("/api/nodes").json()["nodes"]
        return {n["id"]: n["status"] for n in nodes}

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return lab_cli(*args, "--name", self.name, timeout=timeout)


def leftovers_of(name: str) -> list[str]:
    """Whatever of lab ``name`` still exists: namespaces, processes in them, its directory."""
    found = []
    for namespace in network.namespaces(name):
        found.append(f"namespace {namespace} (pids {network.pids_in(namespace)})")
    if lab_directory(name).exists():
        found.append(f"directory {lab_directory(name)}")
    return found


@contextmanager
def running_lab(
    name: str, hosts: int, rate: str, subnet: str, *extra: str, env: dict[str, str] | None = None
) -> Iterator[LabServer]:
    """``castray lab up`` (with ``env`` added to its environment), then ``castray lab down``
    whatever happens; nothing may be left."""
    port = free_port()
    try:
        up = lab_cli(
            "up",
            "--name",
            name,
            "--hosts",
            str(hosts),
            "--rate",
            rate,
            "--subnet",
            subnet,
            "--port",
            str(port),
            "--object-store-mb",
            "128",
            *extra,
            timeout=UP_TIMEOUT,
            env=env,
        )
        assert up.returncode == 0, f"castray lab up failed:\n{up.stdout}\n{up.stderr}"
        server = LabServer(name, f"http://127.0.0.1:{port}", lab_directory(name) / "castray")
        yield server
        log = (server.data_dir / "server.log").read_text(errors="replace")
        assert "Traceback (most recent call last)" not in log, log[-4000:]
    finally:
        _keep_logs(name)
        down = lab_cli("down", "--name", name)
        assert down.returncode == 0, down.stderr
        assert leftovers_of(name) == []


def _keep_logs(name: str) -> None:
    """The lab's CastRay logs (server, agents) into ``test-artifacts/``: ``down`` removes the
    lab's directory, and a failure is read from them."""
    source = lab_directory(name) / "castray"
    target = ARTIFACTS / f"lab-{name}"
    shutil.rmtree(target, ignore_errors=True)
    for log in [source / "server.log", *sorted((source / "logs").glob("*.log"))]:
        if log.is_file():
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log, target / log.name)
