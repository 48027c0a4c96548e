"""API schemas shared by the server, the client SDK and the agent protocol.

Status objects are immutable snapshots (``frozen``): the server hands them out as they are,
and a change replaces the object rather than mutating it.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

_ENDPOINT_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _check_endpoint_id(value: str) -> str:
    if not _ENDPOINT_ID.fullmatch(value) or value in {".", ".."}:
        raise ValueError(
            "an endpoint id is 1 to 64 characters of letters, digits, '_', '.' or '-', "
            "and not '.' or '..'"
        )
    return value


EndpointId = Annotated[str, AfterValidator(_check_endpoint_id)]
"""A readable, stable endpoint id that is also safe as a directory name."""


def is_valid_endpoint_id(value: str) -> bool:
    """Whether ``value`` may name an endpoint."""
    try:
        _check_endpoint_id(value)
    except ValueError:
        return False
    return True


class Snapshot(BaseModel):
    """Base of the immutable state objects handed to users."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class NodeStatus(str, Enum):
    """Life cycle of an endpoint: deployed, answering, gone."""

    STARTING = "starting"
    ALIVE = "alive"
    DEAD = "dead"


class NodeKind(str, Enum):
    """``ray-node``: deployed automatically, one per Ray node; ``named``: created by a user."""

    RAY_NODE = "ray-node"
    NAMED = "named"


class ClusterStatus(str, Enum):
    """Life cycle of a connected cluster as the server sees it."""

    STARTING = "starting"
    CONNECTED = "connected"
    UNREACHABLE = "unreachable"
    LOST = "lost"


class NodeCounters(Snapshot):
    """What an endpoint has done; each number counts only completed, verified work."""

    bytes_sent: int = 0
    bytes_received: int = 0
    transfers_ok: int = 0
    transfers_failed: int = 0
    messages_sent: int = 0
    messages_received: int = 0


class EndpointState(Snapshot):
    """An endpoint as its cluster's agent reports it."""

    id: str
    ray_node_id: str
    address: str
    status: NodeStatus
    kind: NodeKind
    resources: dict[str, float] = Field(default_factory=dict)
    storage_dir: str
    counters: NodeCounters = Field(default_factory=NodeCounters)


class Node(EndpointState):
    """A CastRay endpoint ("node") as the API shows it."""

    cluster: str
    is_external: bool


class NodeCreate(BaseModel):
    """Body of ``POST /api/nodes``: a named endpoint, on a given Ray node or the head."""

    model_config = ConfigDict(extra="forbid")

    node_id: EndpointId
    ray_node_id: str | None = Field(
        default=None, description="Ray node to pin the endpoint to; the head node when omitted."
    )


class RayClusterState(Snapshot):
    """A Ray cluster as its agent last saw it."""

    address: str
    dashboard_url: str | None = None
    ray_version: str
    session_name: str | None = None
    node_count: int
    alive_nodes: int
    cluster_resources: dict[str, float] = Field(default_factory=dict)
    available_resources: dict[str, float] = Field(default_factory=dict)


class ClusterInfo(Snapshot):
    """A cluster connected to CastRay; the home cluster is the first."""

    name: str
    is_home: bool
    is_external: bool
    status: ClusterStatus
    detail: str | None = None
    ray: RayClusterState | None = None


class StatusResponse(Snapshot):
    """``GET /api/status``: the whole system in one answer, served from memory."""

    total_nodes: int
    active_nodes: int
    external_nodes_count: int
    node_statuses: list[Node]
    ray_cluster: RayClusterState | None
    clusters: list[ClusterInfo]
    uptime: float


class NodeList(Snapshot):
    """``GET /api/nodes``."""

    nodes: list[Node]
    count: int


class Health(Snapshot):
    """``GET /api/health``: the server answers; nothing about Ray."""

    status: str = "ok"
    version: str


class ErrorResponse(BaseModel):
    """Every error answer: one sentence that says what was wrong and how to fix it."""

    detail: str
