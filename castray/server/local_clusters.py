"""The Ray clusters running on this machine, as their processes show them.

Ray records each running cluster in the command lines of its processes: a raylet carries
``--gcs-address``, ``--webui`` (the dashboard, inside the worker command it is given),
``--session-name``, ``--temp_dir`` and its node IP; a Ray Client server carries the GCS it
serves and its port. Reading those finds every live cluster whatever its ports or temp dir,
never a stale session of one that has stopped, and tells who runs it (the processes' user),
since when (its oldest raylet's start) and with which Ray (the install the raylet runs from).
Which addresses reach a cluster is read from the sockets its processes listen on (the GCS,
the dashboard, the Ray Client server): an address a user types points at a cluster only if it
reaches one of those exactly (the same IP, or a socket listening on all of this machine's
addresses), never "the same port on some local address" (another local user may listen on
127.0.0.81 at the port a dashboard has on 127.0.0.80, and must not be taken for it).
Reading process tables blocks: call ``scan`` from a worker thread.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil

from castray.ray_address import (
    AddressKind,
    RayAddress,
    clean_version,
    is_this_machine,
    split_host_port,
)

_VERSION_LINE = re.compile(r'^version = "([^"]+)"', re.MULTILINE)


@dataclass
class LocalCluster:
    """A cluster as its processes on this machine show it."""

    gcs_address: str
    dashboard: str | None = None
    session_name: str | None = None
    temp_dir: str | None = None
    node_ips: set[str] = field(default_factory=set)
    client_ports: set[int] = field(default_factory=set)
    owner_uid: int | None = None
    started_at: float = float("inf")
    ray_version: str | None = None
    pids: set[int] = field(default_factory=set)
    """Its processes on this machine: raylets, GCS, dashboard, Ray Client servers."""
    listening: set[tuple[str, int]] = field(default_factory=set)
    """The (IP, port) its processes listen on; ``0.0.0.0`` or ``::`` for all addresses."""
    unreadable: bool = False
    """The sockets of some of its processes could not be read (another user's, or a
    container without the right to look): what its command lines record counts too."""

    @property
    def owner(self) -> str | None:
        """The user name its raylets run as."""
        if self.owner_uid is None:
            return None
        try:
            return pwd.getpwuid(self.owner_uid).pw_name
        except KeyError:
            return str(self.owner_uid)

    @property
    def is_own(self) -> bool:
        """Run by the user CastRay runs as."""
        return self.owner_uid == os.geteuid()

    @property
    def started(self) -> datetime | None:
        if self.started_at == float("inf"):
            return None
        return datetime.fromtimestamp(self.started_at, timezone.utc)

    def serves(self, address: RayAddress) -> bool:
        """Whether the address a user typed (its host resolved to an IP) reaches this
        cluster's dashboard, GCS or Ray Client server: a socket of the cluster listens at that
        very address, or on all addresses of this machine. Without its sockets (they could not
        be read), only the addresses its command lines record count, exactly."""
        ports = self._ports_for(address.kind)
        if address.port not in ports:
            return False
        ip = address.bare_host
        if any(
            port == address.port
            and (host == ip or (host in ("0.0.0.0", "::") and is_this_machine(ip)))
            for host, port in self.listening
        ):
            return True
        if self.listening and not self.unreadable:
            return False
        return (ip, address.port) in self._recorded()

    def _recorded(self) -> set[tuple[str, int]]:
        """The addresses its command lines name: the dashboard's, the GCS's, and the Ray
        Client servers' (they run on the head, at the GCS's IP)."""
        head = split_host_port(self.gcs_address)[0]
        recorded = {split_host_port(self.gcs_address)} | {(head, p) for p in self.client_ports}
        if self.dashboard:
            recorded.add(split_host_port(self.dashboard))
        return recorded

    def _ports_for(self, kind: AddressKind) -> set[int]:
        if kind is AddressKind.CLIENT:
            return set(self.client_ports)
        ports = {split_host_port(self.dashboard)[1]} if self.dashboard else set()
        if kind is AddressKind.HOST_PORT:
            ports.add(split_host_port(self.gcs_address)[1])
        return ports


def _flag(command: str, *names: str) -> str | None:
    """A ``--name=value`` anywhere in a command line, nested commands included (the dashboard
    address only appears inside the worker command a raylet is given)."""
    for name in names:
        match = re.search(rf"(?:^|\s){re.escape(name)}=(\S*)", command)
        if match:
            return match[1]
    return None


def scan() -> dict[str, LocalCluster]:
    """Live clusters on this machine, by GCS address (reads process command lines, and the
    sockets of the user's own processes)."""
    found: dict[str, LocalCluster] = {}
    clients: list[tuple[str, int, int]] = []
    by_session: dict[str, set[int]] = {}
    attrs = ["pid", "name", "cmdline", "uids", "create_time"]
    for process in psutil.process_iter(attrs):
        args = process.info.get("cmdline") or []
        if not args:
            continue
        command = " ".join(args)
        if process.info.get("name") == "raylet" or args[0].endswith("/raylet"):
            _add_raylet(found, command, args[0], process.info)
        elif "ray.util.client.server" in args:
            gcs, client_port = _flag(command, "--address"), _flag(command, "--port")
            if gcs and client_port and client_port.isdigit():
                clients.append((gcs, int(client_port), process.info["pid"]))
        elif args[0].endswith("/gcs_server") or "dashboard/dashboard.py" in command:
            session = _flag(command, "--session-name") or _session_of(
                _flag(command, "--session-dir")
            )
            if session:
                by_session.setdefault(session, set()).add(process.info["pid"])
    for gcs, port, pid in clients:
        if gcs in found:
            found[gcs].client_ports.add(port)
            found[gcs].pids.add(pid)
    for cluster in found.values():
        cluster.pids |= by_session.get(cluster.session_name or "", set())
        cluster.listening, cluster.unreadable = _listening(cluster.pids)
    return found


def _session_of(session_dir: str | None) -> str | None:
    return Path(session_dir).name if session_dir else None


def _listening(pids: set[int]) -> tuple[set[tuple[str, int]], bool]:
    """The TCP addresses these processes listen on, and whether the sockets of any could not
    be read (those of other users, or all of them where /proc hides them)."""
    listening: set[tuple[str, int]] = set()
    unreadable = False
    for pid in pids:
        try:
            connections = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        except psutil.Error:
            unreadable = True
            continue
        for conn in connections:
            if conn.status == psutil.CONN_LISTEN and conn.laddr:
                listening.add((_unmapped(str(conn.laddr.ip)), int(conn.laddr.port)))
    return listening, unreadable


def _unmapped(ip: str) -> str:
    """An IPv4 address as a dual-stack socket shows it (``::ffff:127.0.0.83``), as IPv4."""
    return ip.removeprefix("::ffff:") if ip.startswith("::ffff:") and "." in ip else ip


def _add_raylet(
    found: dict[str, LocalCluster], command: str, binary: str, info: dict[str, Any]
) -> None:
    gcs = _flag(command, "--gcs-address", "--gcs_address")
    if not gcs:
        return
    with contextlib.suppress(ValueError):
        split_host_port(gcs)
        cluster = found.setdefault(gcs, LocalCluster(gcs))
        cluster.dashboard = cluster.dashboard or _flag(command, "--webui") or None
        cluster.session_name = cluster.session_name or _flag(command, "--session-name")
        cluster.temp_dir = cluster.temp_dir or _flag(command, "--temp_dir", "--temp-dir")
        ip = _flag(command, "--node_ip_address", "--node-ip-address")
        if ip:
            cluster.node_ips.add(ip)
        cluster.pids.add(info["pid"])
        created = info.get("create_time")
        if isinstance(created, float) and created < cluster.started_at:
            cluster.started_at = created
            uids = info.get("uids")
            cluster.owner_uid = uids.real if uids is not None else None
        cluster.ray_version = cluster.ray_version or _installed_ray_version(binary)


@functools.lru_cache(maxsize=32)
def _installed_ray_version(raylet_binary: str) -> str | None:
    """The version of the Ray install a raylet runs from (``.../ray/core/src/ray/raylet/raylet``):
    known even when its dashboard is off or cannot tell."""
    try:
        text = (Path(raylet_binary).parents[4] / "_version.py").read_text(encoding="utf-8")
    except (OSError, IndexError):
        return None
    match = _VERSION_LINE.search(text)
    return clean_version(match[1]) if match else None


def find(clusters: dict[str, LocalCluster], address: RayAddress) -> LocalCluster | None:
    """The cluster on this machine that ``address`` points at, if any."""
    return next((c for c in clusters.values() if c.serves(address)), None)
