"""API schemas shared by the server, the client SDK and the agent protocol.

Status objects are immutable snapshots (``frozen``): the server hands them out as they are,
and a change replaces the object rather than mutating it.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import Enum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, model_validator

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
    """What an endpoint has done; each number counts only completed, verified work. They are
    the node's: they carry on across its actor's restarts and its cluster's reconnects."""

    bytes_sent: int = 0
    bytes_received: int = 0
    transfers_ok: int = Field(0, description="Transfers it received a verified copy of.")
    transfers_failed: int = Field(0, description="Transfers it failed to receive.")
    transfers_sent_ok: int = Field(0, description="Transfers it sent that completed.")
    transfers_sent_failed: int = Field(
        0, description="Transfers it sent that ended short of it (failed, partially failed)."
    )
    messages_sent: int = 0
    messages_received: int = 0

    def plus(self, other: NodeCounters) -> NodeCounters:
        return NodeCounters(
            **{
                name: getattr(self, name) + getattr(other, name)
                for name in NodeCounters.model_fields
            }
        )


class EndpointState(Snapshot):
    """An endpoint as its cluster's agent reports it."""

    id: str
    ray_node_id: str
    address: str
    status: NodeStatus
    kind: NodeKind
    resources: dict[str, float] = Field(default_factory=dict)
    storage_dir: str
    data_address: str | None = Field(
        None, description="Where the endpoint takes data streams (host:port on its node)."
    )
    counters: NodeCounters = Field(default_factory=NodeCounters)
    detail: str | None = Field(
        None,
        description="Why it is dead, or being started again (its actor died on a node that "
        "lives: it comes back by itself, under the same id, with what it verified); on an "
        "alive endpoint, that a probe of it failed or a transfer's stream to it stalled, and it "
        "is asked again (auto_resume waits for its answer).",
    )
    restarting: bool = Field(
        False, description="Its actor died on a node that lives; it is being deployed again."
    )
    pid: int | None = Field(None, description="Its actor's process on its node, once alive.")


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
    connected_at: datetime | None = Field(None, description="When it last became connected.")


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
    """``GET /api/health``: ``ok`` (200) when the home cluster is connected and all its
    endpoints are alive; else ``starting`` or ``degraded`` (503) with what is wrong, so a
    supervisor (systemd, Kubernetes) sees it. ``notes``: external clusters that are down
    (they do not fail health)."""

    status: str = "ok"
    version: str
    problems: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


class ErrorResponse(BaseModel):
    """Every error answer: one sentence that says what was wrong and how to fix it, and a
    stable ``code`` (``node_not_found``, ``invalid_request``, ...) for programs."""

    detail: str
    code: str


# ---- files ---------------------------------------------------------------------------


class LibraryFile(Snapshot):
    """A file in the library, ready to send; or a folder (its name ends with ``/``), sent
    as one transfer."""

    name: str
    size: int
    blake3: str
    modified: datetime
    files: int | None = Field(None, description="A folder's files; None for a file.")


class UploadResult(Snapshot):
    """``POST /api/upload``: the stored file; ``replaced`` when it took the place of a library
    file of the same name (as ``cp`` does; transfers already reading that one keep reading
    it whole)."""

    file: str
    size: int
    blake3: str
    replaced: bool = False


class ContentType(str, Enum):
    TEXT = "text"
    RANDOM = "random"
    PATTERN = "pattern"


class FaultInjection(BaseModel):
    """Test hook (``POST /api/nodes/{id}/faults``, only with ``enable_fault_injection``): what
    the endpoint is to get wrong from now on."""

    model_config = ConfigDict(extra="forbid")

    corrupt_chunks: int = Field(0, ge=0, le=1000, description="Flip a byte in the next N chunks.")
    refuse_data_connections: bool | None = Field(
        None, description="Drop every data connection (false: accept them again)."
    )
    close_data_port: bool = Field(False, description="Close the data port, as if it died.")
    fail_syncs: int = Field(
        0, ge=0, le=100, description="Fail the next N syncs of received files (EIO), as a disk."
    )
    wedge: bool | None = Field(
        None, description="Hang on every object-store chunk received (false: stop hanging)."
    )
    lost_commit_answers: int = Field(
        0,
        ge=0,
        le=100,
        description="Commit the next N copies as asked, then lose the answer as Ray does when "
        "it cannot reach an actor (ActorUnavailableError): the copy is in place, the agent "
        "does not know it.",
    )
    unavailable_statuses: int = Field(
        0,
        ge=0,
        le=100,
        description="Answer the next N stream status calls as Ray does when it cannot reach "
        "an actor for a moment (ActorUnavailableError), as on a busy host.",
    )


class GenerateRequest(BaseModel):
    """``POST /api/file-generator/create``: a size like ``"55.5MB"`` or a byte count."""

    model_config = ConfigDict(extra="forbid")

    size: str | int = Field(description='Bytes, or a number with a unit: "10KB", "55.5MB", "1GiB".')
    content_type: ContentType = ContentType.RANDOM
    name: str | None = None
    overwrite: bool = Field(
        False, description="Replace a library file of that name (refused with 409 otherwise)."
    )


class GeneratedFile(Snapshot):
    file: str
    size: int
    blake3: str
    content_type: ContentType
    seconds: float


# ---- transfers -----------------------------------------------------------------------


class Transport(str, Enum):
    """How a transfer's bytes travel: ``stream`` (TCP between endpoints) or ``object-store``
    (chunks through Ray's object store)."""

    STREAM = "stream"
    OBJECT_STORE = "object-store"


class TransferMode(str, Enum):
    UNICAST = "unicast"
    MULTICAST = "multicast"
    BROADCAST = "broadcast"


class TransferStatus(str, Enum):
    """queued -> running -> completed | partially_failed | failed | cancelled | interrupted."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    PARTIALLY_FAILED = "partially_failed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def finished(self) -> bool:
        return self not in (TransferStatus.QUEUED, TransferStatus.RUNNING)


class RecipientStatus(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    """CastRay stopped before its copy was whole (what it verified stays for a resume)."""


class TransferCreate(BaseModel):
    """``POST /api/transfers``."""

    model_config = ConfigDict(extra="forbid")

    source_node: str | None = Field(
        None,
        description="The node that sends (required unless source_url is given; then the node "
        "that fetches the URL, one CastRay chooses when omitted).",
    )
    file: str | None = Field(
        None,
        description="A library file name, or a path inside the source's storage (required "
        "unless source_url is given; then the name the copies get, the URL's last path "
        "segment when omitted).",
    )
    source_url: str | None = Field(
        None,
        max_length=8192,
        description="Send what is at this URL: s3://bucket/key, https://host/path, or "
        "http://host/path to hosts in origin_allowed_hosts. The source node fetches it once, "
        "checked against the origin's checksum when it offers one, then sends it on.",
    )
    mode: TransferMode = TransferMode.UNICAST
    recipients: list[str] | None = None
    group: str | None = None
    transport: Transport | None = Field(
        None, description="stream or object-store; the server's setting when omitted."
    )
    rate_limit: str | int | None = Field(
        None,
        description='Bytes per second the source sends at most: "50MB/s", "10MiB/s" or a number '
        "(within the endpoints' own limits); none when omitted.",
    )
    keep_in_library: bool = Field(
        False,
        description="With source_url: the library keeps the fetched object too, under the "
        "file's name (a pin can then name it). The node that fetches it is then one on the "
        "server's machine, where the library is; the name must be free in the library.",
    )

    @model_validator(mode="after")
    def _a_source(self) -> TransferCreate:
        if self.source_url is None and (self.source_node is None or self.file is None):
            raise ValueError("give source_node and file, or source_url")
        if self.keep_in_library and self.source_url is None:
            raise ValueError(
                "keep_in_library keeps what a source_url fetched: a library file or a node's "
                "file is not fetched (upload a node's file to the library instead)"
            )
        return self


class TransferAccepted(Snapshot):
    transfer_id: str
    status: TransferStatus


class FileInfo(Snapshot):
    name: str
    size: int
    blake3: str | None


class RecipientState(Snapshot):
    status: RecipientStatus
    bytes_done: int = 0
    files_done: int | None = Field(None, description="Of a folder: its files arrived whole.")
    path: str | None = None
    error: str | None = None
    finished_at: datetime | None = Field(None, description="When its copy ended, either way.")
    throughput_bps: float | None = Field(
        None,
        description="Bytes that crossed the network to it in the last run, per second of it "
        "(what an earlier run left it is not counted).",
    )
    kept_bytes: int = Field(0, description="Verified bytes it took up from an earlier run.")
    transient: bool = Field(
        False,
        description="It failed for a reason that passes (cut off, its node or the source "
        "died): auto_resume takes it up again once it answers.",
    )
    refused: bool = Field(
        False, description="It refused the transfer before a byte (no room): nothing to resume."
    )


class Transfer(Snapshot):
    """A transfer and each recipient's progress; ``path`` is where the verified file is."""

    id: str
    status: TransferStatus
    mode: TransferMode
    source_node: str
    file: FileInfo
    recipients: dict[str, RecipientState]
    bytes_total: int
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    throughput_bps: float | None = None
    chunks_resent: int = Field(
        0, description="Chunks sent again in repairs (they arrived damaged, or a stream broke)."
    )
    chunks_resumed: int = Field(0, description="Chunks resumes sent that earlier runs had not.")
    chunks_damaged: int = Field(0, description="Chunks that failed their check on arrival.")
    transport: Transport = Transport.STREAM
    transport_note: str | None = Field(
        None, description="Why the transfer did not take the transport asked for."
    )
    placed_last: list[str] = Field(
        default_factory=list,
        description="Recipients a stream chain began with at its end, for the slow pace they "
        "took in an earlier broadcast: nobody after them waits on them.",
    )
    error: str | None = None
    source_file: str | None = Field(
        None, description="The file as it was asked for: a library name or a source path."
    )
    source_bytes_sent: int = Field(
        0,
        description="Bytes the source sent in the last run: a resume sends only the chunks "
        "its recipients lack.",
    )
    resumable: bool = Field(
        False,
        description="Recipients keep verified chunks of it: POST .../resume sends only the "
        "rest; DELETE removes them.",
    )
    resumes: int = Field(0, description="How many times it was resumed.")
    folder_files: int | None = Field(
        None, description="A folder (its file name ends with '/'): how many files it holds."
    )
    rate_limit: int | None = Field(
        None, description="Bytes per second the source sends at most, when limited."
    )
    origin: str | None = Field(
        None,
        description="The URL the source fetched the file from (without its query or "
        "credentials), when it came from one.",
    )
    library_file: str | None = Field(
        None,
        description="keep_in_library: the library file the fetched object was kept as, "
        "verified against its BLAKE3, once the transfer ended.",
    )
    library_note: str | None = Field(
        None, description="keep_in_library: why the fetched object was not kept in the library."
    )


class TransferPage(Snapshot):
    transfers: list[Transfer]
    total: int
    limit: int
    offset: int


# ---- pins ---------------------------------------------------------------------------------


class PinGroup(BaseModel):
    """The members of a group, as the group is now and later."""

    model_config = ConfigDict(extra="forbid")

    group: str


class PinEndpoints(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoints: list[str] = Field(min_length=1)


class PinClusters(BaseModel):
    """Every endpoint of these clusters, those that join later too."""

    model_config = ConfigDict(extra="forbid")

    clusters: list[str] = Field(min_length=1)


PinNodes = Literal["all"] | PinGroup | PinEndpoints | PinClusters
"""Which nodes a pin keeps a copy on: ``"all"``, ``{"group"}``, ``{"endpoints"}`` or
``{"clusters"}``; read anew at every look, so nodes that join the set get the file."""


def describe_pin_nodes(nodes: PinNodes) -> str:
    """The nodes of a pin in words, as logs and the CLI say them."""
    if nodes == "all":
        return "all nodes"
    if isinstance(nodes, PinGroup):
        return f"group {nodes.group}"
    if isinstance(nodes, PinEndpoints):
        return ", ".join(nodes.endpoints)
    return "clusters " + ", ".join(nodes.clusters)


class PinCreate(BaseModel):
    """``POST /api/pins``."""

    model_config = ConfigDict(extra="forbid")

    file: str = Field(description="A library file (or folder, ``NAME/``).")
    nodes: PinNodes = "all"


class CopyStatus(str, Enum):
    """A pinned copy on one node."""

    VERIFIED = "verified"
    """Present, of the pinned version, as it was when verified (size and mtime unchanged)."""
    PENDING = "pending"
    """Missing or outdated; a transfer will bring it (joiners are batched for a moment)."""
    RECEIVING = "receiving"
    FAILED = "failed"
    """The last try failed (``error`` says why); tried again at ``retry_at``."""
    WAITING = "waiting"
    """The node is not alive now: it gets the file when it is."""


class PinnedCopy(Snapshot):
    status: CopyStatus
    blake3: str | None = Field(None, description="The version this node holds, once verified.")
    path: str | None = None
    error: str | None = None
    transfer_id: str | None = Field(None, description="The transfer bringing or that brought it.")
    since: datetime = Field(description="When it entered this status.")
    retry_at: datetime | None = None
    tries: int = 0


class PinCoverage(Snapshot):
    """How many of the pin's nodes hold a verified copy of its current version."""

    nodes: int
    verified: int
    receiving: int
    pending: int
    failed: int
    waiting: int


class Pin(Snapshot):
    """A library file kept present and verified on a set of nodes, present and future."""

    id: str
    file: str
    nodes: PinNodes
    created_at: datetime
    blake3: str | None = Field(None, description="The pinned version: the library file's now.")
    size: int | None = None
    copies: dict[str, PinnedCopy] = Field(default_factory=dict)
    coverage: PinCoverage
    problem: str | None = Field(
        None, description="Why the pin cannot be kept now (its file left the library, say)."
    )


class PinList(Snapshot):
    pins: list[Pin]


# ---- groups and messages ----------------------------------------------------------------


class Group(BaseModel):
    """A named set of endpoints to multicast to."""

    model_config = ConfigDict(extra="forbid")

    name: EndpointId
    members: list[str] = Field(min_length=1)


class GroupMembers(BaseModel):
    model_config = ConfigDict(extra="forbid")

    members: list[str] = Field(min_length=1)


class MessageType(str, Enum):
    TEXT = "text"
    JSON = "json"


MAX_MESSAGE_DEPTH = 32
"""Deepest nesting of a JSON message's content."""


def _check_depth(value: Any) -> Any:
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if depth > MAX_MESSAGE_DEPTH:
            raise ValueError(f"the content is nested more than {MAX_MESSAGE_DEPTH} levels deep")
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        )
        pending.extend((child, depth + 1) for child in children)
    return value


class MessageSend(BaseModel):
    """``POST /api/send``: a short text or JSON message to nodes, a group, or everyone."""

    model_config = ConfigDict(extra="forbid")

    cast_type: TransferMode = TransferMode.UNICAST
    message_type: MessageType = MessageType.TEXT
    content: Annotated[Any, AfterValidator(_check_depth)]
    sender: str
    recipients: list[str] | None = None
    group_id: str | None = None


class MessageResult(Snapshot):
    success: bool
    message_id: str
    delivered: list[str]
    failed: dict[str, str]


class SentMessage(BaseModel):
    """A message as its sender sent it."""

    message_id: str
    sender: str
    message_type: MessageType
    content: Any
    sent_at: float


class ReceivedMessage(SentMessage):
    """A message as an endpoint keeps it."""

    received_at: float


# ---- external clusters -----------------------------------------------------------------


class DiscoveredCluster(Snapshot):
    """A Ray cluster found on this machine."""

    gcs_address: str
    dashboard_url: str | None
    ray_client_address: str | None = None
    ray_version: str | None = None
    session_name: str | None = None
    temp_dir: str | None = None
    local_node_ips: list[str] = Field(default_factory=list)
    owner: str | None = Field(None, description="The user its raylets run as.")
    own: bool = Field(False, description="Run by the user CastRay runs as.")
    started_at: datetime | None = Field(None, description="When its oldest raylet here started.")
    alive_nodes: int | None = None
    resources: dict[str, float] = Field(default_factory=dict)
    auth_required: bool | None = None
    reachable: bool = False
    connected: bool = False
    detail: str | None = None


class ConnectRequest(BaseModel):
    """``POST /api/cluster/connect-external``: a dashboard URL or host:port, a GCS host:port,
    or ray://host:port; ``ray_token`` for a cluster with Ray token authentication."""

    model_config = ConfigDict(extra="forbid")

    cluster_address: str
    ray_token: SecretStr | None = None


class ConnectResult(Snapshot):
    success: bool = True
    message: str
    cluster: ClusterInfo
    external_nodes: dict[str, Node]


class DiscoverExternalResult(Snapshot):
    """The manual's ``POST /api/cluster/discover-external`` answer; ``chosen`` is the GCS
    address of the cluster this call connected (or found connected), ``reason`` why it was
    that one. ``success`` is false when nothing was chosen; then ``candidates`` lists the GCS
    addresses of the clusters to pick from, and ``message`` says how."""

    success: bool
    message: str
    discovered_clusters: list[DiscoveredCluster]
    chosen: str | None = None
    cluster: str | None = Field(None, description="CastRay's name of the chosen cluster.")
    reason: str | None = None
    candidates: list[str] = Field(default_factory=list)
    connected_cluster: str | None
    external_nodes: dict[str, Node]


class ExternalInfo(Snapshot):
    """The manual's ``GET /api/cluster/external-info`` answer."""

    is_connected: bool
    connected_cluster: str | None
    external_nodes: dict[str, Node]
    clusters: list[ClusterInfo]


class ExternalNodes(Snapshot):
    """The manual's ``GET /api/nodes/external`` answer."""

    success: bool = True
    external_nodes: list[Node]
    count: int


class DisconnectResult(Snapshot):
    success: bool = True
    message: str
    disconnected: list[str]


class DiscoveryResult(Snapshot):
    """``GET /api/cluster/discover``: clusters on this machine, nothing connected."""

    clusters: list[DiscoveredCluster]
    seconds: float


# ---- the event catalogue (``/ws``) ------------------------------------------------------


class CopyRemoval(Snapshot):
    """A received copy a storage sweep removed (``received_retention``,
    ``storage_quota_bytes``)."""

    endpoint: str
    cluster: str
    name: str = Field(description="Its path relative to the endpoint's storage directory.")
    size: int
    reason: str
    at: datetime


class EndpointStorage(Snapshot):
    """What one endpoint keeps of what it received."""

    endpoint: str
    cluster: str
    files: int
    bytes: int
    oldest: datetime | None = None


class StorageReport(Snapshot):
    """``GET /api/storage``: usage per endpoint, the limits, the latest removals."""

    endpoints: list[EndpointStorage]
    unreachable: list[str] = Field(
        default_factory=list, description="Endpoints (or clusters) that could not be asked."
    )
    received_retention: float | None = Field(None, description="Seconds; none: kept forever.")
    storage_quota_bytes: int | None = Field(None, description="Per endpoint; none: no quota.")
    removals: list[CopyRemoval] = Field(default_factory=list, description="Newest first.")


class EventType(str, Enum):
    """Every kind of message ``/ws`` sends; each has its payload model below."""

    SNAPSHOT = "snapshot"
    HEARTBEAT = "heartbeat"
    EVENTS_DROPPED = "events_dropped"
    NODE_ADDED = "node_added"
    NODE_STATUS = "node_status"
    NODE_UPDATED = "node_updated"
    NODE_REMOVED = "node_removed"
    CLUSTER_DISCOVERED = "cluster_discovered"
    CLUSTER_CONNECTED = "cluster_connected"
    CLUSTER_DISCONNECTED = "cluster_disconnected"
    CLUSTER_UNREACHABLE = "cluster_unreachable"
    CLUSTER_LOST = "cluster_lost"
    TRANSFER_STARTED = "transfer_started"
    TRANSFER_PROGRESS = "transfer_progress"
    RECIPIENT_COMPLETED = "recipient_completed"
    RECIPIENT_FAILED = "recipient_failed"
    TRANSFER_FINISHED = "transfer_finished"
    MESSAGE_RECEIVED = "message_received"
    GROUP_SAVED = "group_saved"
    GROUP_DELETED = "group_deleted"
    FILE_ADDED = "file_added"
    FILE_REMOVED = "file_removed"
    COPY_REMOVED = "copy_removed"
    PIN_SAVED = "pin_saved"
    PIN_REMOVED = "pin_removed"
    PIN_COVERAGE = "pin_coverage"


class EventData(Snapshot):
    """The payload of one ``/ws`` message; ``kind`` is its ``type``."""

    kind: ClassVar[EventType]


class SnapshotEvent(EventData):
    """The first message: everything as it is now."""

    kind = EventType.SNAPSHOT
    clusters: list[ClusterInfo]
    nodes: list[Node]
    transfers: list[Transfer]
    groups: list[Group]


class HeartbeatEvent(EventData):
    """Nothing happened for a while; the stream is alive."""

    kind = EventType.HEARTBEAT


class EventsDroppedEvent(EventData):
    """The client fell behind and lost events: reconnect for a fresh snapshot."""

    kind = EventType.EVENTS_DROPPED
    reason: str


class NodeAddedEvent(EventData):
    kind = EventType.NODE_ADDED
    node: Node


class NodeStatusEvent(EventData):
    """A node's status changed (starting, alive, dead)."""

    kind = EventType.NODE_STATUS
    node: Node


class NodeUpdatedEvent(EventData):
    """A node's counters or resources changed."""

    kind = EventType.NODE_UPDATED
    node: Node


class NodeRemovedEvent(EventData):
    kind = EventType.NODE_REMOVED
    node_id: str
    cluster: str


class ClusterDiscoveredEvent(EventData):
    kind = EventType.CLUSTER_DISCOVERED
    cluster: DiscoveredCluster


class ClusterConnectedEvent(EventData):
    kind = EventType.CLUSTER_CONNECTED
    cluster: str
    address: str


class ClusterDisconnectedEvent(EventData):
    kind = EventType.CLUSTER_DISCONNECTED
    cluster: str
    reconnecting: bool = Field(
        False, description="Its agent was stopped to connect it again at once (not by a user)."
    )


class ClusterUnreachableEvent(EventData):
    """The cluster's agent has not reported for a while."""

    kind = EventType.CLUSTER_UNREACHABLE
    cluster: str
    detail: str | None


class ClusterLostEvent(EventData):
    """The cluster's agent is gone."""

    kind = EventType.CLUSTER_LOST
    cluster: str
    detail: str | None


class TransferStartedEvent(EventData):
    kind = EventType.TRANSFER_STARTED
    transfer: Transfer


class TransferProgressEvent(EventData):
    """Verified bytes per recipient (at most a few times a second per transfer)."""

    kind = EventType.TRANSFER_PROGRESS
    transfer_id: str
    bytes_total: int
    bytes_done: dict[str, int]


class RecipientCompletedEvent(EventData):
    kind = EventType.RECIPIENT_COMPLETED
    transfer_id: str
    recipient: str
    recipient_state: RecipientState


class RecipientFailedEvent(EventData):
    kind = EventType.RECIPIENT_FAILED
    transfer_id: str
    recipient: str
    recipient_state: RecipientState


class TransferFinishedEvent(EventData):
    """The transfer ended; its full final state."""

    kind = EventType.TRANSFER_FINISHED
    transfer: Transfer


class MessageReceivedEvent(EventData):
    kind = EventType.MESSAGE_RECEIVED
    recipient: str
    message: SentMessage


class GroupSavedEvent(EventData):
    kind = EventType.GROUP_SAVED
    group: Group


class GroupDeletedEvent(EventData):
    kind = EventType.GROUP_DELETED
    name: str


class FileAddedEvent(EventData):
    """A file is in the library (uploaded, generated)."""

    kind = EventType.FILE_ADDED
    file: LibraryFile


class FileRemovedEvent(EventData):
    kind = EventType.FILE_REMOVED
    name: str


class CopyRemovedEvent(EventData):
    """A storage sweep removed an endpoint's received copy (retention or quota)."""

    kind = EventType.COPY_REMOVED
    removal: CopyRemoval


class PinSavedEvent(EventData):
    """A pin was made (or its file's new version is pinned)."""

    kind = EventType.PIN_SAVED
    pin: Pin


class PinRemovedEvent(EventData):
    kind = EventType.PIN_REMOVED
    pin_id: str


class PinCoverageEvent(EventData):
    """A pinned copy changed status: the pin as it is now."""

    kind = EventType.PIN_COVERAGE
    pin: Pin


EVENT_PAYLOADS: dict[EventType, type[EventData]] = {
    cls.kind: cls for cls in EventData.__subclasses__()
}
"""The payload model of each event type."""


class LiveEvent(BaseModel):
    """One ``/ws`` message as a client reads it: ``data`` parsed into its payload model."""

    model_config = ConfigDict(frozen=True)

    type: EventType
    seq: int
    at: float
    data: EventData

    @classmethod
    def parse(cls, message: dict[str, Any]) -> LiveEvent:
        kind = EventType(message["type"])
        data = EVENT_PAYLOADS[kind].model_validate(message.get("data") or {})
        return cls(type=kind, seq=message["seq"], at=message["at"], data=data)
