"""What a running lab is, written to ``<lab dir>/lab.json`` so every ``castray lab`` command
(and ``down`` after a crash) finds it again."""

from __future__ import annotations

import ipaddress
import json
import tempfile
import threading
from pathlib import Path

from pydantic import BaseModel, Field

from castray.lab.shaping import LinkShape

STATE_FILE = "lab.json"
DEFAULT_SUBNET = "198.18.0.0/24"
LAB_NETWORK = ipaddress.ip_network("198.18.0.0/15")
"""RFC 2544's range for benchmark networks: no lab address is anyone's real address."""
GCS_PORT = 6379
DASHBOARD_PORT = 8265


_SAVING = threading.Lock()


class HostState(BaseModel):
    index: int
    namespace: str
    address: str
    rate_bits: int
    delay_s: float = 0.0
    loss_percent: float = 0.0
    cut: bool = False
    ray_pgid: int | None = None
    """The process group of the host's ``ray start --block`` (None: not running)."""

    @property
    def shape(self) -> LinkShape:
        return LinkShape(self.rate_bits, self.delay_s, self.loss_percent)

    def set_shape(self, shape: LinkShape) -> None:
        self.rate_bits, self.delay_s, self.loss_percent = (
            shape.rate_bits,
            shape.delay_s,
            shape.loss_percent,
        )


class LabState(BaseModel):
    name: str
    subnet: str
    directory: Path
    port: int
    """The CastRay server's port on 127.0.0.1 in this machine's own namespace."""
    object_store_bytes: int
    hosts: list[HostState] = Field(default_factory=list)
    server_pgid: int | None = None
    server_config: Path | None = None
    """A TOML settings file for the lab's CastRay (``castray serve --config``)."""

    @property
    def head(self) -> HostState:
        return self.hosts[0]

    @property
    def gcs_address(self) -> str:
        return f"{self.head.address}:{GCS_PORT}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def host(self, which: str | int) -> HostState:
        """A host by number (``2``), name (``h2``) or address (``198.18.0.2``)."""
        text = str(which).strip()
        for host in self.hosts:
            if text in (str(host.index), f"h{host.index}", host.address, host.namespace):
                return host
        names = ", ".join(f"h{h.index}" for h in self.hosts)
        raise LookupError(f"lab {self.name!r} has no host {text!r}; its hosts are {names}")

    def save(self) -> None:
        """Write the state atomically; threads that start hosts at once save one at a time."""
        path = self.directory / STATE_FILE
        with _SAVING:
            temp = path.with_suffix(".tmp")
            temp.write_text(self.model_dump_json(indent=2), encoding="utf-8")
            temp.replace(path)


def lab_directory(name: str) -> Path:
    return Path(tempfile.gettempdir()) / f"castray-lab-{name}"


def load(name: str) -> LabState | None:
    """The lab's state, or None when there is no lab of that name (or its file is gone)."""
    path = lab_directory(name) / STATE_FILE
    try:
        return LabState.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def host_addresses(subnet: str, count: int) -> tuple[list[str], int]:
    """``count`` host addresses in ``subnet`` (.1, .2, ...), and the prefix length."""
    try:
        network = ipaddress.ip_network(subnet)
    except ValueError as exc:
        raise ValueError(f"subnet {subnet!r} is not a network like 198.18.0.0/24: {exc}") from None
    if not network.subnet_of(LAB_NETWORK):  # type: ignore[arg-type]
        raise ValueError(
            f"subnet {subnet} is outside 198.18.0.0/15, the range set aside for benchmark "
            "networks: lab addresses must never be somebody's real ones"
        )
    hosts = list(network.hosts())
    if count > len(hosts):
        raise ValueError(f"subnet {subnet} has room for {len(hosts)} hosts, not {count}")
    return [str(a) for a in hosts[:count]], network.prefixlen
