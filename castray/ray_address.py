"""Ray at an address: what users type, where it points, and what answers there.

Users name a Ray cluster by its dashboard (``http://host:8265`` or ``host:8265``), its GCS
(``host:6379``) or its Ray Client server (``ray://host:10001``). This module parses those,
resolves host names (in a thread: DNS can block), tells whether a host is this machine, and
probes what answers at an address: a Ray dashboard (its Ray version, session and
authentication mode, whatever endpoints its Ray version lacks) or a gRPC server (a GCS or a
Ray Client server). Discovery and connect both build on it; nothing here decides what to
connect, and nothing here sends a token it was not handed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from dataclasses import dataclass
from enum import Enum
from importlib.metadata import version
from urllib.parse import urlsplit

import grpc
import httpx
import psutil

from castray.errors import (
    ClusterUnreachable,
    Forbidden,
    InvalidRequest,
    Unauthorized,
    VersionMismatch,
)

AGENT_RAY_VERSION = version("ray")
"""The Ray version CastRay's agents run (the server itself never imports Ray)."""

_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")
_VERSION = re.compile(r"\d{1,3}\.\d{1,3}(\.\d{1,4})?([a-z]+\d{0,4})?(\.dev\d{0,6})?")


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
    def bare_host(self) -> str:
        """The host without IPv6 brackets, as sockets and resolvers take it."""
        return self.host.strip("[]")

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
    if not raw or len(raw) > 300 or any(c.isspace() for c in raw):
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


def split_host_port(text: str) -> tuple[str, int]:
    """``("127.0.0.2", 6379)`` from ``127.0.0.2:6379`` (as Ray records addresses)."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


# ---- this machine ----------------------------------------------------------------------


async def resolve_host(host: str) -> str:
    """The IP address of ``host`` (itself when it is one, or when it does not resolve).

    DNS may block for seconds, so it runs in a worker thread, never on the event loop.
    """
    bare = host.strip("[]")
    try:
        ipaddress.ip_address(bare)
    except ValueError:
        pass
    else:
        return bare
    try:
        return await asyncio.to_thread(socket.gethostbyname, bare)
    except OSError:
        return bare


def is_this_machine(ip: str) -> bool:
    """Whether ``ip`` reaches this machine: loopback, a wildcard, or one of its interfaces."""
    try:
        parsed = ipaddress.ip_address(ip.strip("[]"))
    except ValueError:
        return ip == "localhost"
    if parsed.is_loopback or parsed.is_unspecified:
        return True
    return any(
        address.address.split("%", 1)[0] == str(parsed)
        for addresses in psutil.net_if_addrs().values()
        for address in addresses
    )


def same_endpoint(a: str, b: str) -> bool:
    """Whether two ``host:port`` strings name the same listener on this machine or elsewhere.

    Ray rewrites 127.0.0.1 to the machine's primary IP, so ``127.0.0.1:6379`` and
    ``192.0.2.2:6379`` are the same GCS when both hosts are this machine.
    """
    if a == b:
        return True
    try:
        (host_a, port_a), (host_b, port_b) = split_host_port(a), split_host_port(b)
    except ValueError:
        return False
    return port_a == port_b and is_this_machine(host_a) and is_this_machine(host_b)


def clean_version(text: object) -> str | None:
    """A Ray version as a peer reported it, if it looks like one (never reflected verbatim)."""
    if isinstance(text, str) and _VERSION.fullmatch(text.strip()):
        return text.strip()
    return None


# ---- what answers at an address ------------------------------------------------------------


class Answer(str, Enum):
    NOTHING = "nothing"
    """Nothing answered HTTP there (refused, timed out, not HTTP)."""
    NOT_RAY = "not_ray"
    """Something answered HTTP, but not as a Ray dashboard."""
    RAY = "ray"


@dataclass(frozen=True)
class DashboardFacts:
    """What a Ray dashboard said of its cluster; ``ray_version`` is None when it needs a token
    that was not given (or refused it)."""

    answer: Answer
    ray_version: str | None = None
    session_name: str | None = None
    auth_required: bool = False
    token_refused: bool = False

    @property
    def needs_token(self) -> bool:
        return self.answer is Answer.RAY and self.auth_required and self.ray_version is None


async def probe_dashboard(http: httpx.AsyncClient, url: str, token: str | None) -> DashboardFacts:
    """Ask the dashboard at ``url`` who it is.

    ``/api/version`` answers in every Ray release that has a dashboard; only when it asks for
    authentication is ``/api/authentication_mode`` (Ray >= 2.52) consulted, and only then is
    ``token`` sent, so a dashboard that does not ask never sees it.
    """
    try:
        version = await http.get(f"{url}/api/version")
    except httpx.HTTPError:
        return DashboardFacts(Answer.NOTHING)
    if version.status_code not in (401, 403):
        return _version_facts(version, auth_required=False)
    try:
        mode = await http.get(f"{url}/api/authentication_mode")
    except httpx.HTTPError:
        return DashboardFacts(Answer.NOTHING)
    if not mode.is_success or _json(mode).get("authentication_mode") != "token":
        return DashboardFacts(Answer.NOT_RAY)
    if token is None:
        return DashboardFacts(Answer.RAY, auth_required=True)
    try:
        version = await http.get(f"{url}/api/version", headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError:
        return DashboardFacts(Answer.NOTHING)
    if version.status_code in (401, 403):
        return DashboardFacts(Answer.RAY, auth_required=True, token_refused=True)
    return _version_facts(version, auth_required=True)


def _version_facts(response: httpx.Response, auth_required: bool) -> DashboardFacts:
    body = _json(response)
    if not response.is_success or "ray_version" not in body:
        return DashboardFacts(Answer.NOT_RAY)
    session = body.get("session_name")
    return DashboardFacts(
        Answer.RAY,
        ray_version=clean_version(body.get("ray_version")) or "unknown",
        session_name=session if isinstance(session, str) and len(session) < 100 else None,
        auth_required=auth_required,
    )


def _json(response: httpx.Response) -> dict[str, object]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


async def grpc_answers(host: str, port: int, timeout: float) -> bool:
    """Whether a gRPC server (a GCS or a Ray Client server) completes a handshake there.

    A TCP port that accepts but speaks something else fails this within ``timeout``, so
    nothing waits on a driver that could never join. gRPC's blocking API runs in a thread
    (its asyncio flavour does not run on every event loop uvicorn may pick).
    """
    bare = host.strip("[]")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(bare, port), timeout)
    except (OSError, TimeoutError):
        return False  # refused or unroutable: no need to wait on gRPC's retries
    writer.close()
    target = f"[{bare}]:{port}" if ":" in bare else f"{bare}:{port}"
    return await asyncio.to_thread(_grpc_ready, target, timeout)


def _grpc_ready(target: str, timeout: float) -> bool:
    channel = grpc.insecure_channel(target)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        return False
    finally:
        channel.close()
    return True


# ---- errors users can act on -----------------------------------------------------------------


def unreachable(address: RayAddress | str, why: str | None = None) -> ClusterUnreachable:
    """One message for every way an address fails to be a Ray cluster: a user needs to know
    that it is not one, not which of its ports are open."""
    return ClusterUnreachable(
        f"could not reach a Ray cluster at {address}: "
        + (
            why
            or "nothing there answered as a Ray dashboard, GCS or Ray Client server; check the "
            "host and port (a dashboard is usually :8265, a GCS :6379, Ray Client :10001) and "
            "that the cluster runs ('ray status' on its head)"
        )
    )


def version_mismatch(address: RayAddress | str, theirs: str) -> VersionMismatch:
    return VersionMismatch(
        f"the Ray cluster at {address} runs Ray {theirs}, CastRay runs Ray "
        f"{AGENT_RAY_VERSION}: a driver can only join a cluster of its own Ray version; "
        f"start the cluster with Ray {AGENT_RAY_VERSION} (pip install 'ray[default]=="
        f"{AGENT_RAY_VERSION}')"
    )


def token_missing(address: RayAddress | str) -> Unauthorized:
    return Unauthorized(
        f'the Ray cluster at {address} requires a Ray token: pass "ray_token" (the CLI\'s '
        "--ray-token), or run CastRay as the user whose Ray token it is"
    )


def token_refused(address: RayAddress | str, given: bool) -> Forbidden:
    which = "given" if given else "of this machine"
    return Forbidden(f"the Ray cluster at {address} refused the Ray token {which}")
