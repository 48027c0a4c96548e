"""The Ray clusters running on this machine, as their processes show them.

Ray records each running cluster in the command lines of its processes: a raylet carries
``--gcs-address``, ``--webui`` (the dashboard, inside the worker command it is given),
``--session-name``, ``--temp_dir`` and its node IP; a Ray Client server carries the GCS it
serves and its port. Reading those finds every live cluster whatever its ports or temp dir,
never a stale session of one that has stopped, and tells who runs it (the processes' user),
since when (its oldest raylet's start) and with which Ray (the install the raylet runs from).
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
    same_endpoint,
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
        """Whether the address a user typed points at this cluster."""
        if address.kind is AddressKind.CLIENT:
            return address.port in self.client_ports and is_this_machine(address.bare_host)
        if self.dashboard and same_endpoint(address.host_port, self.dashboard):
            return True
        return address.kind is AddressKind.HOST_PORT and same_endpoint(
            address.host_port, self.gcs_address
        )


def _flag(command: str, *names: str) -> str | None:
    """A ``--name=value`` anywhere in a command line, nested commands included (the dashboard
    address only appears inside the worker command a raylet is given)."""
    for name in names:
        match = re.search(rf"(?:^|\s){re.escape(name)}=(\S*)", command)
        if match:
            return match[1]
    return None


def scan() -> dict[str, LocalCluster]:
    """Live clusters on this machine, by GCS address (reads process command lines)."""
    found: dict[str, LocalCluster] = {}
    clients: list[tuple[str, int]] = []
    attrs = ["name", "cmdline", "uids", "create_time"]
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
                clients.append((gcs, int(client_port)))
    for gcs, port in clients:
        if gcs in found:
            found[gcs].client_ports.add(port)
    return found


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
