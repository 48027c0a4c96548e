"""Planning a transfer: who receives it, in which order, through which clusters. Pure: it
reads the registry's picture (in memory) and what was found of the file, nothing else."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

from castray.chunks import FileIdentity
from castray.errors import InvalidRequest, NodeUnavailable
from castray.folders import BUNDLE_SUFFIX, FolderIndex
from castray.models import Node, NodeStatus, TransferCreate, TransferMode, Transport
from castray.protocol import OriginFeed
from castray.server.paces import PaceBook
from castray.server.registry import Registry
from castray.server.targets import resolve_recipients
from castray.sizes import parse_rate_limit


@dataclass(frozen=True)
class LocatedFile:
    """A file to send: where the source reads it, the name it gets at the recipients, and what
    is known of it beforehand (a library file's size and BLAKE3; nothing of a file in the
    source's storage until the source opens it)."""

    path: str
    name: str
    size: int | None = None
    blake3: str | None = None
    library_name: str | None = None
    """The file's name in the library, when it is a library file."""
    manifest: tuple[str, ...] | None = None
    """Each chunk's BLAKE3 (hex), once known: what stream receivers check against."""
    folder: FolderIndex | None = None
    """A library folder (``name`` is ``NAME/``): its bundle is sent, and unpacked by each
    recipient into ``NAME``."""
    identity: FileIdentity | None = None
    """The file as its hashes were made of it: the source refuses to send another."""
    origin: str | None = None
    """The URL the source fetched it from, masked (``policy.mask``)."""

    @property
    def received_as(self) -> str:
        """The name the recipients store it under: the file's, or the bundle's until it is
        unpacked."""
        folder = self.unpack_to
        return self.name if folder is None else f".{folder}{BUNDLE_SUFFIX}"

    @property
    def unpack_to(self) -> str | None:
        """The folder each recipient unpacks the bundle into; None for a file."""
        return self.name.rstrip("/") if self.folder is not None else None


@dataclass(frozen=True)
class TransferPlan:
    """Everything needed to launch a transfer."""

    transfer_id: str
    mode: TransferMode
    source: Node
    file: LocatedFile
    local: tuple[Node, ...]
    """Recipients in the source's cluster, in relay order."""
    remote: dict[str, tuple[Node, ...]] = field(default_factory=dict)
    """Recipients of every other cluster, each in relay order."""
    transport: Transport = Transport.STREAM
    transport_note: str | None = None
    resume: bool = False
    """Recipients take up what an earlier run of this transfer left them."""
    send_on: tuple[int, ...] = ()
    """A resume: chunks recipients in other clusters lack, streamed to them from the source."""
    rate_limit: int = 0
    """Bytes per second the source sends at most; 0: no limit."""
    origin: OriginFeed | None = None
    """The source fetches the file from this origin as the stream sends it (cut-through)."""
    keep_in_library: bool = False
    """The library keeps the source's fetched copy once the transfer ends (its first run)."""
    placed_last: frozenset[str] = frozenset()
    """Recipients put at their chain's end for the slow pace they took last time. The agent
    judges them against the recipients after them that were not placed (``pace.slow_one``);
    their order among themselves is ``PaceBook.behind``'s."""

    @property
    def clusters(self) -> list[str]:
        """The source's cluster first, then every other cluster with recipients: each runs
        a part of the transfer."""
        return [self.source.cluster, *self.remote]

    @property
    def recipients(self) -> list[Node]:
        return [*self.local, *(node for nodes in self.remote.values() for node in nodes)]

    @property
    def needs_size(self) -> bool:
        """Other clusters must know the size before the source opens the file."""
        return bool(self.remote) and self.file.size is None

    def sized(self, size: int) -> TransferPlan:
        return replace(self, file=replace(self.file, size=size))

    def described(
        self, size: int, manifest: list[str], blake3: str, identity: FileIdentity | None
    ) -> TransferPlan:
        """The file as a stream needs it known: size, chunks' and whole BLAKE3, and the
        identity of the file they were made of."""
        file = replace(
            self.file, size=size, manifest=tuple(manifest), blake3=blake3, identity=identity
        )
        return replace(self, file=file)

    def through_the_object_store(self, why: str) -> TransferPlan:
        return replace(self, transport=Transport.OBJECT_STORE, transport_note=why)

    @property
    def parts(self) -> list[tuple[str, tuple[Node, ...]]]:
        """Each cluster with its recipients in chain order, the source's cluster first: a
        stream passes through them in this order."""
        return [(self.source.cluster, self.local), *self.remote.items()]

    @property
    def links(self) -> list[tuple[Node, Node]]:
        """Every hop a stream takes: the source to the first recipient, each recipient to
        the next, across clusters too."""
        chain = [self.source, *(node for _, nodes in self.parts for node in nodes)]
        return list(itertools.pairwise(chain))


def plan_transfer(
    transfer_id: str,
    request: TransferCreate,
    registry: Registry,
    groups: dict[str, list[str]],
    file: LocatedFile,
    transport: Transport = Transport.STREAM,
    itself: bool = False,
    paces: PaceBook | None = None,
) -> TransferPlan:
    """Check the request against the nodes there are and lay out its chains; ``transport``
    unless the request names one; ``itself``: the source may be a recipient too; ``paces``:
    the recipients they know to be slow go at the end of their chain."""
    if request.source_node is None:
        raise InvalidRequest("a transfer needs its source_node")
    source = registry.node(request.source_node)
    if source.status is not NodeStatus.ALIVE:
        raise NodeUnavailable(f"source {source.id!r} is {source.status.value}")
    recipients = resolve_recipients(
        registry, groups, request.mode, source.id, request.recipients, request.group, itself
    )
    local = [r for r in recipients if r.cluster == source.cluster]
    remote: dict[str, list[Node]] = {}
    for node in recipients:
        if node.cluster != source.cluster:
            remote.setdefault(node.cluster, []).append(node)
    chains = [chain_order(local), *(chain_order(nodes) for nodes in remote.values())]
    # Only the last chain's end is nobody's feeder: a part before it passes the stream on
    # to the next cluster from its last recipient, which a slow one would then pace.
    last = paces.behind(chains[-1]) if paces is not None else []
    chains[-1] = (*(n for n in chains[-1] if n not in last), *last)
    return TransferPlan(
        transfer_id=transfer_id,
        mode=request.mode,
        source=source,
        file=file,
        local=chains[0],
        remote=dict(zip(remote, chains[1:], strict=True)),
        transport=request.transport or transport,
        rate_limit=(parse_rate_limit(request.rate_limit) if request.rate_limit is not None else 0),
        keep_in_library=request.keep_in_library,
        placed_last=frozenset(n.id for n in last),
    )


def chain_order(recipients: list[Node]) -> tuple[Node, ...]:
    """Relay order: recipients on the same Ray node next to each other, so each hop between
    hosts is crossed once."""
    return tuple(sorted(recipients, key=lambda n: (n.address, n.ray_node_id, n.id)))
