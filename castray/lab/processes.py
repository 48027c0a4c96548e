"""Processes a lab runs inside its hosts' namespaces: one Ray node per host (``ray start
--block`` in a process group of its own) and the CastRay server in host 1.

Stopping is by process group (SIGTERM, then SIGKILL), and, for whatever a crash left behind,
by namespace: every process still in a lab namespace is killed. Nothing here ever runs a
global Ray stop, which would kill every Ray process on the machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from castray.lab import network
from castray.lab.state import DASHBOARD_PORT, GCS_PORT, HostState, LabState

RAY_STARTED = b"Ray runtime started"
START_TIMEOUT = 120.0
"""Seconds a Ray node gets to start (a worker took about 20 s on a busy two-core machine)."""
STOP_GRACE = 5.0


class LabProcessError(RuntimeError):
    """A lab process did not start (the message points at its log)."""


def ray_command() -> str:
    """Ray's CLI from the Python CastRay runs in."""
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.exists() else "ray"


HEALTH_CHECK_FAILURES = 20
"""Failed health checks (3 s apart, 10 s each at most) before the lab's GCS calls a host's
node dead, against Ray's 5: a host cut off for a minute is a network fault to recover from,
and after a heal the GCS's connection to it takes up to half a minute to come back. With
Ray's 5, a 20 s cut could end in the raylet exiting on its own ("mistakenly marked dead")."""


def ray_env(lab: LabState) -> dict[str, str]:
    """Ray's environment in the lab: token auth with the lab's own token, and a GCS that
    waits longer before it calls a silent host's node dead."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        RAY_USAGE_STATS_ENABLED="0",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=lab_token(lab),
        RAY_health_check_failure_threshold=str(HEALTH_CHECK_FAILURES),
    )
    return env


def lab_token(lab: LabState) -> str:
    """The lab cluster's Ray token (made by ``up``, readable by root only)."""
    return (lab.directory / "ray_token").read_text(encoding="utf-8").strip()


def in_namespace(namespace: str, command: list[str]) -> list[str]:
    return ["ip", "netns", "exec", namespace, *command]


def start_ray(lab: LabState, host: HostState, tries: int = 2) -> None:
    """Start host's Ray node and wait for it to say it runs; a second try follows a first
    that did not make it (on a busy machine a joining raylet can time out)."""
    for attempt in range(1, tries + 1):
        process, log = _spawn_ray(lab, host, attempt)
        host.ray_pgid = process.pid
        lab.save()
        try:
            _wait_started(process, log)
        except LabProcessError:
            stop_group(process.pid)
            host.ray_pgid = None
            lab.save()
            if attempt == tries:
                raise
        else:
            return


def _spawn_ray(
    lab: LabState, host: HostState, attempt: int
) -> tuple[subprocess.Popen[bytes], Path]:
    home = lab.directory / f"h{host.index}"
    temp_dir = home / "ray"  # Ray's socket paths live under it: kept short
    temp_dir.mkdir(parents=True, exist_ok=True)
    role = (
        [
            "--head",
            f"--port={GCS_PORT}",
            f"--dashboard-host={host.address}",
            f"--dashboard-port={DASHBOARD_PORT}",
        ]
        if host.index == 1
        else [f"--address={lab.gcs_address}"]
    )
    command = [
        ray_command(),
        "start",
        "--block",
        "--disable-usage-stats",
        f"--node-ip-address={host.address}",
        f"--temp-dir={temp_dir}",
        "--num-cpus=1",
        f"--object-store-memory={lab.object_store_bytes}",
        *role,
    ]
    log = home / f"ray-{attempt}.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            in_namespace(host.namespace, command),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=ray_env(lab),
            cwd=home,
            start_new_session=True,
        )
    return process, log


def _wait_started(process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if RAY_STARTED in log.read_bytes():
            return
        if process.poll() is not None:
            raise LabProcessError(f"ray start exited with {process.returncode}; see {log}")
        time.sleep(0.5)
    raise LabProcessError(f"Ray did not start within {START_TIMEOUT:g} s; see {log}")


def start_server(lab: LabState) -> None:
    """CastRay in host 1, over the lab's cluster; it answers on 127.0.0.1:PORT here, on a
    listening socket made in this namespace and handed to the server (sockets stay in the
    namespace they were made in), so no route or interface of the machine changes."""
    listener = socket.create_server(("127.0.0.1", lab.port))
    lab.port = listener.getsockname()[1]  # --port 0: the one the system chose
    home = lab.directory / "castray"
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "CASTRAY_"))}
    env.update(
        RAY_USAGE_STATS_ENABLED="0",
        RAY_AUTH_TOKEN=lab_token(lab),
        CASTRAY_LISTEN_FD=str(listener.fileno()),
    )
    command = [
        sys.executable,
        "-m",
        "castray",
        "serve",
        "--ray-address",
        lab.gcs_address,
        "--data-dir",
        str(home),
        "--host",
        "127.0.0.1",
        "--port",
        str(lab.port),
    ]
    if lab.server_config is not None:
        command += ["--config", str(lab.server_config)]
    with listener, (home / "server.log").open("ab") as out:
        process = subprocess.Popen(
            in_namespace(lab.head.namespace, command),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=home,
            start_new_session=True,
            pass_fds=(listener.fileno(),),
        )
    lab.server_pgid = process.pid
    lab.save()


def stop_group(pgid: int | None, grace: float = STOP_GRACE) -> None:
    """SIGTERM a process group, SIGKILL what is left of it after ``grace`` seconds."""
    if pgid is None:
        return
    if not _signal_group(pgid, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _group_alive(pgid):
        time.sleep(0.1)
    _signal_group(pgid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pgid, os.WNOHANG)


def kill_namespace(namespace: str) -> None:
    """Kill every process still in ``namespace`` (what a crashed ``lab`` left running)."""
    for pid in network.pids_in(namespace):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _signal_group(pgid: int, sig: signal.Signals) -> bool:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _group_alive(pgid: int) -> bool:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pgid, os.WNOHANG)  # reap our own child so the group can vanish
    return _signal_group(pgid, 0)  # type: ignore[arg-type]
