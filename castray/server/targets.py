"""Who a transfer or message goes to: recipients named, a group's members, or everyone."""

from __future__ import annotations

from castray.errors import GroupNotFound, InvalidRequest, NodeUnavailable
from castray.models import Node, NodeStatus, TransferMode
from castray.server.registry import Registry


def resolve_recipients(
    registry: Registry,
    groups: dict[str, list[str]],
    mode: TransferMode,
    source: str,
    recipients: list[str] | None,
    group: str | None,
    itself: bool = False,
) -> list[Node]:
    """The recipient nodes, checked: known, alive, not the source (unless ``itself``: a pin
    copies the library into its reader's own storage), at least one."""
    if mode is TransferMode.BROADCAST:
        chosen = [n for n in registry.nodes() if n.id != source and n.status is NodeStatus.ALIVE]
        if not chosen:
            raise InvalidRequest("broadcast has no recipients: no other node is alive")
        return chosen
    names = list(recipients or [])
    if group is not None:
        if group not in groups:
            raise GroupNotFound(f"no group {group!r}; GET /api/groups lists them")
        names += [m for m in groups[group] if m not in names]
    if not names:
        raise InvalidRequest(f"{mode.value} needs recipients or a group")
    if mode is TransferMode.UNICAST and len(names) != 1:
        raise InvalidRequest(f"unicast goes to exactly one recipient, not {len(names)}")
    if source in names and not itself:
        raise InvalidRequest(f"the source {source!r} cannot also be a recipient")
    if len(set(names)) != len(names):
        raise InvalidRequest("a recipient is named twice")
    nodes = [registry.node(name) for name in names]
    for node in nodes:
        if node.status is not NodeStatus.ALIVE:
            raise NodeUnavailable(f"recipient {node.id!r} is {node.status.value}")
    return nodes
