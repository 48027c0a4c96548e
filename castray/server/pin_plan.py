"""Who sends a pinned file to the nodes that lack it: pure, no I/O.

Nodes that lack the pinned version are served in one transfer per cluster, so late joiners
that arrive together share one stream. The source is a node that holds a verified copy of
that version, in the same cluster if one does (its link is the short one), the one that has
sent the least first (so the pin's first source, which sent the most, pays nothing more);
else a holder anywhere; else the library, read by an endpoint on
the server's machine. With no holder anywhere, that endpoint, if it lacks the file too, is
among the recipients of its own transfer: on a one-node cluster (an embedded Ray, a lone
``ray start --head``) it is the only node there is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Place:
    """A node as the plan sees it."""

    id: str
    cluster: str
    load: int = 0
    """Bytes it has sent so far: of two holders, the one that sent less serves."""


@dataclass(frozen=True)
class Delivery:
    """One transfer to make: from ``source`` (reading the library when ``from_library``,
    else its own verified copy) to ``recipients``."""

    source: str
    from_library: bool
    recipients: tuple[str, ...]


def deliveries(
    missing: Sequence[Place],
    holders: Sequence[Place],
    library_readers: Sequence[str],
    from_holders: bool = True,
) -> list[Delivery]:
    """The transfers that serve ``missing``: one per cluster of recipients and source.
    ``library_readers``: the endpoints that can read the library, best first.
    ``from_holders`` false (a folder pin: holders keep it unpacked) sends from the library."""
    plans: dict[tuple[str, bool], list[str]] = {}
    missing_ids = {m.id for m in missing}
    reader = next((r for r in library_readers if r not in missing_ids), None)
    if reader is None and library_readers:
        reader = library_readers[0]  # it lacks the file too: it is among its own recipients
    for node in missing:
        source, from_library = _source_for(
            node, holders if from_holders else (), reader, set(library_readers)
        )
        if source is None:
            continue
        plans.setdefault((source, from_library), []).append(node.id)
    return [
        Delivery(source, from_library, tuple(sorted(recipients)))
        for (source, from_library), recipients in sorted(plans.items())
    ]


def _source_for(
    node: Place, holders: Sequence[Place], reader: str | None, readers: set[str]
) -> tuple[str | None, bool]:
    """A holder in the node's cluster if any, else any holder, else the library. Among
    holders, those that read the library (the pin's first source, on CastRay's machine)
    come last, then the least loaded: once others hold the file it costs the first nothing."""

    def rank(h: Place) -> tuple[bool, int, str]:
        return (h.id in readers, h.load, h.id)

    near = [h for h in holders if h.cluster == node.cluster]
    if near:
        return min(near, key=rank).id, False
    if holders:
        return min(holders, key=rank).id, False
    return reader, True
