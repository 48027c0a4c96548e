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

from castray.models import (
    EndpointState,
    FaultInjection,
    RayClusterState,
    ReceivedMessage,
    SentMessage,
    Transport,
)


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AgentTunables(_Message):
    """The agent's knobs, set from the server's ``Settings`` (see README's configuration)."""

    transfer_threads: int = 256
    chunk_retries: int = 3
    progress_interval: float = 0.25
    stall_timeout: float = 120.0
    control_timeout: float = 60.0
    peer_timeout: float = 5.0
    orphan_timeout: float = 30.0
    partial_retention: float = 7 * 24 * 3600.0
    endpoint_probe_interval: float = 5.0
    messages_kept: int = 1000
    stream_timeout: float = 120.0
    data_ports: tuple[int, int] | None = None
    data_connect_timeout: float = 3.0
    endpoint_egress_limit: int = 0
    endpoint_ingress_limit: int = 0


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
    tunables: AgentTunables = Field(default_factory=AgentTunables)
    stay_on_loopback: bool = Field(
        default=False,
        description="The external cluster runs on 127.0.0.1: join it there, where Ray would "
        "otherwise put this machine's primary IP in place of 127.0.0.1.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="The server's log level: the agent logs at it too."
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


class StreamPlan(_Message):
    """What every part of a ``stream`` transfer shares: the file's manifest (each chunk's
    BLAKE3, hex), the per-transfer secret its data connections present, and where the last
    recipient of this part passes the stream on (the next cluster's first recipient)."""

    size: int
    manifest: list[str]
    secret: str
    downstream: str | None = None
    resume: bool = False
    """Each sink takes up what an earlier run of the transfer left (its resume journal)."""
    send_on: list[int] = Field(default_factory=list)
    """A resume's source part: chunks to stream straight to ``downstream`` (what recipients
    in other clusters lack, as their journals say)."""
    await_stream: bool = False
    """A resume's part in another cluster: its sinks wait for the stream from upstream
    before they count as ended (it brings what they lack)."""
    placed_last: list[str] = Field(default_factory=list)
    """Recipients the server put at the chain's end for the slow pace they took last time:
    the head is not tried at the end while they receive (it would go behind them)."""


class OriginFeed(_Message):
    """A stream's source fetches its file from an origin as it sends it (cut-through): the
    agent starts the fetch, and the manifest and BLAKE3 become known as the bytes arrive."""

    fetch_id: str
    url: str
    allowed_hosts: list[str]


class StartTransfer(_Message):
    """Send one file from ``source`` to ``recipients``, relayed along them in this order.

    The reply comes once the source has opened the file (its size, or the error) and, for a
    stream, every recipient's sink here is open; the transfer then runs on and reports with
    ``TransferProgress`` / ``RecipientFinished`` / ``TransferFinished``.
    """

    op: Literal["start_transfer"] = "start_transfer"
    transfer_id: str
    source: str
    path: str
    source_identity: tuple[int, int, int, int] | None = Field(
        None,
        description="The file as its hashes were made of it (size, mtime, inode, ctime): the "
        "source refuses another (SourceChanged), at its opening and at every chunk.",
    )
    file_name: str
    recipients: list[str]
    expected_blake3: str | None = None
    chunk_size: int
    window: int
    rate_limit: int = Field(
        0, description="Bytes per second the source sends at most; 0: no limit."
    )
    unpack_to: str | None = Field(
        None, description="A folder's bundle: each recipient unpacks it into this folder."
    )
    transport: Transport = Transport.OBJECT_STORE
    stream: StreamPlan | None = None
    origin: OriginFeed | None = Field(
        None,
        description="A stream whose source fetches the file from this origin as it sends it "
        "(``path`` is the name it is fetched as); the reply's size is the object's.",
    )
    exports: list[tuple[str, int, str]] = Field(
        default_factory=list,
        description="Agents of other clusters to stream each chunk to: host, port, and the "
        "secret (hex) that stream must open with.",
    )


class ImportTransfer(_Message):
    """Receive a transfer from another cluster: for ``object-store``, listen for its agent's
    stream (the reply is the address to stream to); for ``stream``, open the sinks of
    ``recipients`` (linked in this order) on their data ports. The run starts once the reply
    is sent."""

    op: Literal["import_transfer"] = "import_transfer"
    transfer_id: str
    source: str
    file_name: str
    size: int
    recipients: list[str]
    expected_blake3: str | None = None
    chunk_size: int
    window: int
    rate_limit: int = 0
    unpack_to: str | None = None
    transport: Transport = Transport.OBJECT_STORE
    stream: StreamPlan | None = None


class ReadMissing(_Message):
    """Which chunks each of ``endpoints`` lacks of a transfer it kept part of, as its resume
    journal says (every chunk, without a journal of that very file)."""

    op: Literal["read_missing"] = "read_missing"
    transfer_id: str
    file_name: str
    endpoints: list[str]
    size: int
    chunk_size: int
    blake3: str


class ReadManifest(_Message):
    """A file's size, chunks' BLAKE3 and whole BLAKE3 as its endpoint reads it (a file in the
    endpoint's storage, before a stream is planned)."""

    op: Literal["read_manifest"] = "read_manifest"
    endpoint_id: str
    path: str
    chunk_size: int


class FetchOrigin(_Message):
    """Fetch an origin's object (``url``: S3 or HTTP(S), allowed by the server's policy) into
    an endpoint's storage as ``name``; answered with ``ManifestRead`` once it is whole and
    checked. The URL may carry a presigned query: it is never logged."""

    op: Literal["fetch_origin"] = "fetch_origin"
    endpoint_id: str
    fetch_id: str
    url: str
    name: str
    chunk_size: int
    allowed_hosts: list[str]


class ProbeLinks(_Message):
    """Can each endpoint open a data connection to the address it is paired with?"""

    op: Literal["probe_links"] = "probe_links"
    links: list[tuple[str, str]]


class ProbeFile(_Message):
    """The size of a file on an endpoint (before a transfer between clusters is planned)."""

    op: Literal["probe_file"] = "probe_file"
    endpoint_id: str
    path: str


class CancelTransfer(_Message):
    op: Literal["cancel_transfer"] = "cancel_transfer"
    transfer_id: str


class DiscardPartials(_Message):
    """Remove what an ended transfer's recipients kept of it for a resume; the reply is a
    ``Discarded``."""

    op: Literal["discard_partials"] = "discard_partials"
    transfer_id: str
    endpoints: list[str]


class SweepStorage(_Message):
    """Each alive endpoint removes its received copies older than ``retention`` seconds, then
    its oldest ones past ``quota`` bytes (0: no such limit), and says what it keeps
    (``remove`` false: it only counts)."""

    op: Literal["sweep_storage"] = "sweep_storage"
    retention: float = 0.0
    quota: int = 0
    remove: bool = True
    keep: dict[str, list[str]] = {}
    """Per endpoint: pinned copies the sweep spares (names in its storage directory)."""


class TendCopies(_Message):
    """Pinned copies on each endpoint: ``check`` says each one's BLAKE3 if it is as it was
    verified (size and mtime unchanged), ``hash`` reads it from disk, ``remove`` deletes it;
    the reply is a ``CopiesTended``."""

    op: Literal["tend_copies"] = "tend_copies"
    action: Literal["check", "hash", "remove"]
    endpoints: dict[str, list[str]]


class DeliverMessage(_Message):
    """Hand a message to each recipient endpoint's actor; the reply says who got it."""

    op: Literal["deliver_message"] = "deliver_message"
    sender: str
    recipients: list[str]
    message: SentMessage


class ReadMessages(_Message):
    op: Literal["read_messages"] = "read_messages"
    endpoint_id: str
    count: int


class InjectFaults(_Message):
    """Fault injection for tests: what the endpoint is to get wrong (see the model)."""

    op: Literal["inject_faults"] = "inject_faults"
    endpoint_id: str
    faults: FaultInjection


Operation = Annotated[
    ReadManifest
    | FetchOrigin
    | ReadMissing
    | ProbeLinks
    | CreateEndpoint
    | RemoveEndpoint
    | Shutdown
    | StartTransfer
    | ImportTransfer
    | ProbeFile
    | CancelTransfer
    | DiscardPartials
    | SweepStorage
    | TendCopies
    | DeliverMessage
    | ReadMessages
    | InjectFaults,
    Field(discriminator="op"),
]


class Request(_Message):
    id: int
    body: Operation


# ---- replies: one model per operation ------------------------------------------------


class Discarded(_Message):
    removed: int
    """Partial files removed."""
    unreachable: list[str] = []
    """Endpoints that could not be asked (dead): their retention sweep removes them later."""


class Removal(_Message):
    """A received copy a storage sweep removed."""

    name: str
    """Its path relative to the endpoint's storage directory."""
    size: int
    reason: str


class StorageUsage(_Message):
    """What one endpoint keeps after a sweep, and what the sweep removed."""

    files: int
    bytes: int
    oldest: float | None = None
    """The oldest copy's modification time (Unix seconds)."""
    removed: list[Removal] = []


class StorageSwept(_Message):
    endpoints: dict[str, StorageUsage]
    unreachable: list[str] = []


class CopiesTended(_Message):
    """``TendCopies``: per endpoint, each copy's BLAKE3 (None: missing or changed); the
    copies removed; the endpoints that could not be asked (dead)."""

    copies: dict[str, dict[str, str | None]] = {}
    removed: int = 0
    unreachable: list[str] = []


class Done(_Message):
    """The reply of an operation that answers nothing but that it was done (remove, cancel,
    shutdown, inject)."""


class EndpointCreated(_Message):
    """``CreateEndpoint``: the new endpoint, starting."""

    endpoint: EndpointState


class TransferOpened(_Message):
    """``StartTransfer``: the source opened the file; its size."""

    size: int


class ImportListening(_Message):
    """``ImportTransfer``: where the source cluster's agent streams to, and the secret (hex)
    its stream must open with (any other connection is dropped)."""

    host: str
    port: int
    secret: str


class FileSize(_Message):
    """``ProbeFile``: the size of the file on the endpoint."""

    size: int


class MissingRead(_Message):
    """``ReadMissing``: chunk indices each endpoint lacks."""

    missing: dict[str, list[int]]


class ManifestRead(_Message):
    """``ReadManifest``: the file as its endpoint read it, and its identity (size, mtime,
    inode, ctime) then."""

    size: int
    manifest: list[str]
    blake3: str
    identity: tuple[int, int, int, int] | None = None
    checked: str | None = None
    """``FetchOrigin``: the origin's checksum the bytes matched, if it offered one."""
    resumed_reads: int = 0
    """``FetchOrigin``: reads cut and taken up again from where they stopped."""
    seconds: float = 0.0


class LinksProbed(_Message):
    """``ProbeLinks``: why each link that cannot be made cannot, by ``"from -> address"``."""

    failures: dict[str, str]


class Delivered(_Message):
    """``DeliverMessage``: who got the message, and why the others did not."""

    delivered: list[str]
    failed: dict[str, str]


class MessagesRead(_Message):
    """``ReadMessages``: the newest messages of the endpoint, newest first."""

    messages: list[ReceivedMessage]


# ---- agent -> server ------------------------------------------------------------------


class Reply(_Message):
    """Answer to the request with the same id: a result (the operation's reply model, as
    JSON), or an error code and message."""

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


class TransferProgress(_Message):
    """Verified bytes per recipient so far (sent at most a few times a second)."""

    kind: Literal["transfer_progress"] = "transfer_progress"
    transfer_id: str
    bytes_total: int
    bytes_done: dict[str, int]


class RecipientFinished(_Message):
    kind: Literal["recipient_finished"] = "recipient_finished"
    transfer_id: str
    recipient: str
    ok: bool
    path: str | None = None
    error: str | None = None
    transient: bool = False
    """It failed for a reason that passes (its host cut off, its actor or node died, the
    source died): ``auto_resume`` takes it up again once it answers."""
    kept_bytes: int = 0
    """Verified bytes it had from an earlier run (a resume): they did not move in this one."""
    refused: bool = False
    """It refused the transfer before a byte (no room, the file could not be created): a
    resume would be refused again, so nothing is kept for one."""


class TransferFinished(_Message):
    """Every recipient has finished (or the transfer was cancelled or failed at the source)."""

    kind: Literal["transfer_finished"] = "transfer_finished"
    transfer_id: str
    size: int
    blake3: str | None
    cancelled: bool = False
    error: str | None = None
    bytes_served: dict[str, int] = Field(default_factory=dict)
    chunks_resent: int = 0
    """Chunks sent again in this run: repairs (damaged, or lost when a stream broke)."""
    chunks_resumed: int = 0
    """Chunks a resume sent because an earlier run had not."""
    chunks_damaged: int = 0
    """Chunks that arrived damaged (failed their BLAKE3 check) at a recipient."""
    transient: bool = False
    """The recipients it ends failed for a reason that passes (their cluster went down)."""


TransferMessage = TransferProgress | RecipientFinished | TransferFinished
"""What an agent reports about a transfer."""


class Fatal(_Message):
    """The agent cannot go on; it exits after sending this."""

    kind: Literal["fatal"] = "fatal"
    error_code: str
    message: str


AgentMessage = Annotated[
    Reply
    | Ready
    | ClusterUpdate
    | EndpointUpdate
    | EndpointRemoved
    | TransferProgress
    | RecipientFinished
    | TransferFinished
    | Fatal,
    Field(discriminator="kind"),
]

AGENT_MESSAGE: TypeAdapter[AgentMessage] = TypeAdapter(AgentMessage)
"""Parses one line the agent wrote."""
