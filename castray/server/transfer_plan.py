"""Planning a transfer: who receives it, in which order, through which clusters. Pure: it
reads the registry's picture (in memory) and what was found of the file, nothing else."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from castray.errors import NodeUnavailable
from castray.models import Node, NodeStatus, TransferCreate, TransferMode
from castray.server.registry import Registry
from castray.server.targets import resolve_recipients


@dataclass(frozen=True)
class LocatedFile:
    """A file to send: where the source reads it, the name it gets at the recipients, and what
    is known of it beforehand (a library file's size and BLAKE3; nothing of a file in the
    source's storage until the source opens it)."""

    path: str
    name: str
    size: int | None = None
    blake3: str | None = None


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


def plan_transfer(
    transfer_id: str,
    request: TransferCreate,
    registry: Registry,
    groups: dict[str, list[str]],
    file: LocatedFile,
) -> TransferPlan:
    """Check the request against the nodes there are and lay out its chains."""
    source = registry.node(request.source_node)
    if source.status is not NodeStatus.ALIVE:
        raise NodeUnavailable(f"source {source.id!r} is {source.status.value}")
    recipients = resolve_recipients(
        registry, groups, request.mode, source.id, request.recipients, request.group
    )
    local = [r for r in recipients if r.cluster == source.cluster]
    remote: dict[str, list[Node]] = {}
    for node in recipients:
        if node.cluster != source.cluster:
            remote.setdefault(node.cluster, []).append(node)
    return TransferPlan(
        transfer_id=transfer_id,
        mode=request.mode,
        source=source,
        file=file,
        local=chain_order(local),
        remote={cluster: chain_order(nodes) for cluster, nodes in remote.items()},
    )


def chain_order(recipients: list[Node]) -> tuple[Node, ...]:
    """Relay order: recipients on the same Ray node next to each other, so each hop between
    hosts is crossed once."""
    return tuple(sorted(recipients, key=lambda n: (n.address, n.ray_node_id, n.id)))
