"""Parsing the Ray addresses users type: a dashboard URL, a GCS ``host:port``, ``ray://``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from urllib.parse import urlsplit

from castray.errors import InvalidRequest

_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")


class AddressKind(str, Enum):
    DASHBOARD = "dashboard"
    """An ``http(s)://`` URL: the cluster's dashboard."""
    CLIENT = "client"
    """A ``ray://`` URL: the cluster's Ray Client server."""
    HOST_PORT = "host_port"
    """A bare ``host:port``: a dashboard or a GCS; probing tells which."""


@dataclass(frozen=True)
class RayAddress:
    kind: AddressKind
    host: str
    port: int
    scheme: str = "http"

    @property
    def host_port(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def http_url(self) -> str:
        return f"{self.scheme if self.kind is AddressKind.DASHBOARD else 'http'}://{self.host_port}"

    def __str__(self) -> str:
        if self.kind is AddressKind.CLIENT:
            return f"ray://{self.host_port}"
        if self.kind is AddressKind.DASHBOARD:
            return self.http_url
        return self.host_port


def parse_address(text: str) -> RayAddress:
    """Read ``http://host:port``, ``ray://host:port`` or ``host:port``; 422 for anything else."""
    raw = text.strip()
    hint = (
        f"cannot read the Ray address {text!r}: give a dashboard URL (http://127.0.0.1:8265), "
        "a GCS address (127.0.0.1:6379) or a Ray Client URL (ray://127.0.0.1:10001)"
    )
    if not raw or any(c.isspace() for c in raw):
        raise InvalidRequest(hint)
    scheme = "tcp"
    if "://" in raw:
        scheme = raw.split("://", 1)[0].lower()
        if scheme not in ("http", "https", "ray"):
            raise InvalidRequest(hint)
    try:
        parts = urlsplit(raw if "://" in raw else f"tcp://{raw}")
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise InvalidRequest(f"{hint} ({exc})") from None
    if not host or port is None or parts.path.strip("/") or parts.query:
        raise InvalidRequest(hint)
    shown = f"[{host}]" if ":" in host else host
    if not _HOST.fullmatch(shown) or port == 0:
        raise InvalidRequest(hint)
    if scheme in ("http", "https"):
        return RayAddress(AddressKind.DASHBOARD, shown, port, scheme)
    if scheme == "ray":
        return RayAddress(AddressKind.CLIENT, shown, port)
    return RayAddress(AddressKind.HOST_PORT, shown, port)
