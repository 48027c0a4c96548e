"""``castray lab``'s operations: bring a lab up, take it down (idempotent, and after a crash
too), look at it, and break it on purpose (cut, heal, shape, kill, start)."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from castray.lab import network, processes
from castray.lab.shaping import LinkShape
from castray.lab.state import HostState, LabState, host_addresses, lab_directory, load

SERVER_TIMEOUT = 180.0
"""Seconds the lab's CastRay gets to list every host as an alive endpoint."""


class LabError(RuntimeError):
    """Something the user can fix (the message says how)."""


def check_can_run() -> None:
    """The lab needs Linux network namespaces, which only root may make."""
    if not sys.platform.startswith("linux"):
        raise LabError("castray lab needs Linux (network namespaces)")
    if os.geteuid() != 0:
        raise LabError("castray lab makes network namespaces, which needs root: run it with sudo")
    for tool in ("ip", "tc", "nft"):
        if shutil.which(tool) is None:
            raise LabError(
                f"{tool} is not installed; the lab needs iproute2 and nftables "
                "(apt-get install iproute2 nftables)"
            )


def up(
    name: str,
    hosts: int,
    shape: LinkShape,
    subnet: str,
    port: int,
    object_store_bytes: int,
    say: Callable[[str], None] = lambda _: None,
    server_config: Path | None = None,
) -> LabState:
    """Make the lab and start Ray and CastRay in it (with ``server_config``'s settings, a
    TOML file as ``castray serve --config`` reads); on any failure, undo everything."""
    check_can_run()
    if server_config is not None and not server_config.is_file():
        raise LabError(f"the server config {server_config} is not a file")
    if hosts < 2:
        raise LabError("a lab needs at least 2 hosts")
    if load(name) is not None or network.namespaces(name):
        raise LabError(f"lab {name!r} is already up: 'castray lab down --name {name}' first")
    try:
        addresses, prefix_len = host_addresses(subnet, hosts)
    except ValueError as exc:
        raise LabError(str(exc)) from None
    _check_port_free(port)
    directory = lab_directory(name)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(mode=0o700, parents=True)
    token = directory / "ray_token"
    token.write_text(secrets.token_hex(32), encoding="utf-8")
    token.chmod(0o600)
    lab = LabState(
        name=name,
        subnet=subnet,
        directory=directory,
        port=port,
        object_store_bytes=object_store_bytes,
        server_config=server_config.resolve() if server_config is not None else None,
        hosts=[
            HostState(index=i, namespace=network.host_ns(name, i), address=address, rate_bits=0)
            for i, address in enumerate(addresses, start=1)
        ],
    )
    for host in lab.hosts:
        host.set_shape(shape)
    lab.save()
    try:
        say(f"network: {hosts} hosts on {subnet}, each link {shape.describe()} each way")
        network.create_switch(name)
        for host in lab.hosts:
            network.add_host(name, host.index, host.address, prefix_len, shape)
        for host in lab.hosts:
            started = time.monotonic()
            processes.start_ray(lab, host)
            say(f"h{host.index} {host.address}: Ray node up ({time.monotonic() - started:.0f} s)")
        processes.start_server(lab)
        wait_for_endpoints(lab, hosts)
        say(f"CastRay: {lab.url}/ui, every host an alive endpoint")
    except BaseException:
        down(name)
        raise
    return lab


def down(name: str) -> bool:
    """Stop and remove everything lab ``name`` made; True if there was anything. Safe to
    run again, and after a crash: what the state file forgot, the namespace names find."""
    lab = load(name)
    found = lab is not None
    if lab is not None:
        processes.stop_group(lab.server_pgid)
        for host in reversed(lab.hosts):
            processes.stop_group(host.ray_pgid)
    for namespace in network.namespaces(name):
        found = True
        processes.kill_namespace(namespace)
    _wait_namespaces_empty(name)
    for namespace in network.namespaces(name):
        network.delete(namespace)
    directory = lab_directory(name)
    if directory.exists():
        found = True
        shutil.rmtree(directory, ignore_errors=True)
    return found


def require(name: str) -> LabState:
    check_can_run()
    lab = load(name)
    if lab is None:
        raise LabError(f"no lab {name!r} is up: 'castray lab up --name {name}' makes one")
    return lab


def set_link(lab: LabState, which: str, up: bool) -> HostState:
    """Cut (``up=False``) or heal a host's link, and remember which it is."""
    host = _host(lab, which)
    network.set_link(lab.name, host.index, up=up)
    host.cut = not up
    lab.save()
    return host


def reshape(lab: LabState, which: str, shape: LinkShape) -> HostState:
    host = _host(lab, which)
    network.shape_host(lab.name, host.index, shape)
    host.set_shape(shape)
    lab.save()
    return host


def kill(lab: LabState, which: str) -> HostState:
    """Kill the host's Ray node (its whole process group), as a crash of that host would."""
    host = _host(lab, which)
    processes.stop_group(host.ray_pgid, grace=0)
    host.ray_pgid = None
    lab.save()
    return host


def start(lab: LabState, which: str) -> HostState:
    """Start a host's Ray node again (after ``kill``); it joins the lab's cluster anew."""
    host = _host(lab, which)
    if host.ray_pgid is not None and _running(host.ray_pgid):
        raise LabError(f"h{host.index}'s Ray node is running; 'castray lab kill' it first")
    processes.start_ray(lab, host)
    return host


def host_running(host: HostState) -> bool:
    return host.ray_pgid is not None and _running(host.ray_pgid)


def exec_argv(lab: LabState, which: str, command: list[str]) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that run ``command`` inside a host, with Ray's
    address and the lab's token set, so ``ray.init()`` there joins the lab's cluster."""
    host = _host(lab, which)
    env = processes.ray_env(lab) | {"RAY_ADDRESS": lab.gcs_address}
    return processes.in_namespace(host.namespace, command), env


def wait_for_endpoints(lab: LabState, count: int, timeout: float = SERVER_TIMEOUT) -> None:
    """Until the lab's CastRay lists ``count`` alive endpoints (its Ray nodes)."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if not _running(lab.server_pgid):
            raise LabError(f"the lab's CastRay server exited; see {server_log(lab)}")
        try:
            status = httpx.get(f"{lab.url}/api/status", timeout=5).json()
            alive = [n for n in status["node_statuses"] if n["status"] == "alive"]
            if len(alive) >= count:
                return
            last = f"{len(alive)} of {count} endpoints alive"
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            last = str(exc)
        time.sleep(1)
    raise LabError(
        f"the lab's CastRay did not list {count} alive endpoints ({last}); see {server_log(lab)}"
    )


def server_log(lab: LabState) -> Path:
    return lab.directory / "castray" / "server.log"


def _host(lab: LabState, which: str) -> HostState:
    try:
        return lab.host(which)
    except LookupError as exc:
        raise LabError(str(exc)) from None


def _running(pgid: int | None) -> bool:
    if pgid is None:
        return False
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _check_port_free(port: int) -> None:
    try:
        with socket.create_server(("127.0.0.1", port)):
            pass
    except OSError:
        raise LabError(
            f"port {port} on 127.0.0.1 is taken (a CastRay already serving?): "
            "choose the lab's with --port"
        ) from None


def _wait_namespaces_empty(name: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(network.pids_in(ns) for ns in network.namespaces(name)):
            return
        time.sleep(0.2)
