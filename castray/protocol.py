"""Messages between the server and its agent processes (one agent per Ray cluster).

The wire is JSON lines: the server writes ``Request`` lines to the agent's stdin; the agent
writes ``AgentMessage`` lines (replies and events) to its stdout, which it keeps for this
protocol alone (Ray's own output goes to the agent's stderr). Both sides import this module
and nothing of each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from castray.models import EndpointState, RayClusterState


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AgentConfig(_Message):
    """How an agent is started: passed as JSON on its command line."""

    cluster: str
    address: str | None = Field(
        default=None, description="Ray address to join; None starts an embedded private cluster."
    )
    storage_root: Path
    temp_dir: Path
    poll_interval: float
    embedded_num_cpus: int | None = None
    embedded_object_store_bytes: int | None = None
    ray_token_file: Path | None = Field(
        default=None, description="Token file for the embedded cluster's Ray token auth."
    )


# ---- server -> agent ------------------------------------------------------------------


class CreateEndpoint(_Message):
    op: Literal["create_endpoint"] = "create_endpoint"
    endpoint_id: str
    ray_node_id: str | None = None


class RemoveEndpoint(_Message):
    op: Literal["remove_endpoint"] = "remove_endpoint"
    endpoint_id: str


class Shutdown(_Message):
    op: Literal["shutdown"] = "shutdown"


Operation = Annotated[CreateEndpoint | RemoveEndpoint | Shutdown, Field(discriminator="op")]


class Request(_Message):
    id: int
    body: Operation


# ---- agent -> server ------------------------------------------------------------------


class Reply(_Message):
    """Answer to the request with the same id: a result, or an error code and message."""

    kind: Literal["reply"] = "reply"
    id: int
    result: dict[str, Any] | None = None
    error_code: str | None = None
    error_message: str | None = None


class Ready(_Message):
    """The agent is connected to its cluster and takes requests."""

    kind: Literal["ready"] = "ready"
    ray: RayClusterState


class ClusterUpdate(_Message):
    """The cluster as of the agent's last successful look; also its heartbeat."""

    kind: Literal["cluster"] = "cluster"
    ray: RayClusterState


class EndpointUpdate(_Message):
    kind: Literal["endpoint"] = "endpoint"
    endpoint: EndpointState


class EndpointRemoved(_Message):
    kind: Literal["endpoint_removed"] = "endpoint_removed"
    endpoint_id: str


class Fatal(_Message):
    """The agent cannot go on; it exits after sending this."""

    kind: Literal["fatal"] = "fatal"
    error_code: str
    message: str


AgentMessage = Annotated[
    Reply | Ready | ClusterUpdate | EndpointUpdate | EndpointRemoved | Fatal,
    Field(discriminator="kind"),
]

AGENT_MESSAGE: TypeAdapter[AgentMessage] = TypeAdapter(AgentMessage)
"""Parses one line the agent wrote."""
