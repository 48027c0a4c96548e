"""A transfer whose source is a URL: which node fetches it, and how it is fed.

A stream to recipients of the fetching node's own cluster is fed as the object arrives
(cut-through: ``OriginFeed``, the transfer starts at once). Otherwise (recipients in other
clusters, the object-store transport, a hop that cannot stream) the object is fetched whole
first, after which the transfer runs as any other, from that node's verified copy.

The URL is judged by the policy here first (and again on the fetching node, whose view of
names may differ); it is shown only masked: a presigned URL's query never reaches a log, the
history, an event or an answer.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from castray.config import Settings
from castray.errors import InvalidRequest, NodeUnavailable
from castray.models import Node, NodeStatus, TransferCreate, TransferMode
from castray.protocol import FetchOrigin, ManifestRead, OriginFeed
from castray.server import origin_keep
from castray.server.gateway import AgentGateway
from castray.server.library import Library, check_file_name
from castray.server.registry import Registry
from castray.server.targets import resolve_recipients
from castray.server.transfer_plan import LocatedFile
from castray.sources import policy
from castray.sources.fetch import FETCH_TIMEOUT

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OriginRequest:
    """A URL-sourced request, checked: who fetches it, as which name."""

    request: TransferCreate
    """The request as it runs: from the fetching node's copy, to the others."""
    url: str
    """As given (it may carry a presigned query: never logged)."""
    shown: str
    name: str
    fetcher: Node

    @property
    def located(self) -> LocatedFile:
        """The file as known before a byte is fetched: its name, and where it came from."""
        return LocatedFile(path=self.name, name=self.name, origin=self.shown)

    def feed(self, settings: Settings) -> OriginFeed:
        """What the fetching node's agent needs to fetch it as the stream sends it."""
        return OriginFeed(
            fetch_id=uuid.uuid4().hex[:16],
            url=self.url,
            allowed_hosts=settings.origin_allowed_hosts,
        )


def choose_fetcher(
    request: TransferCreate,
    registry: Registry,
    groups: dict[str, list[str]],
    eligible: Callable[[Node], bool] = lambda _node: True,
) -> tuple[str, TransferCreate]:
    """The node that fetches, and the request without it among the recipients. Unless the
    request names one, it is the first alive ``eligible`` node not named as a recipient (it
    keeps a copy too); when every such node is one, the first of them fetches (its copy is
    the fetched one)."""
    if request.source_node is not None:
        return request.source_node, request
    named = list(request.recipients or [])
    if request.group is not None:
        named += [m for m in groups.get(request.group, []) if m not in named]
    alive = [n.id for n in registry.nodes() if n.status is NodeStatus.ALIVE and eligible(n)]
    if not alive:
        raise NodeUnavailable("no node is alive to fetch the URL")
    if request.mode is TransferMode.BROADCAST:
        return alive[0], request
    others = [n for n in alive if n not in named]
    if others:
        return others[0], request
    fetcher = next(n for n in named if n in alive)  # every alive one is named
    rest = [n for n in named if n != fetcher]
    if not rest:
        raise InvalidRequest(
            f"{fetcher!r} would fetch the URL and be its only recipient: name it as "
            "source_node (--from) to fetch it there, or name more recipients"
        )
    mode = TransferMode.UNICAST if len(rest) == 1 else TransferMode.MULTICAST
    return fetcher, request.model_copy(update={"recipients": rest, "group": None, "mode": mode})


async def prepare(
    request: TransferCreate,
    registry: Registry,
    groups: dict[str, list[str]],
    settings: Settings,
    library: Library,
) -> OriginRequest:
    """Check ``request.source_url`` against the policy, and the node that fetches it and the
    recipients against the registry (and, to keep the object in the library, the library),
    before a byte is fetched."""
    assert request.source_url is not None
    url = policy.parse(request.source_url)
    try:
        await asyncio.to_thread(policy.guard, url, settings.origin_allowed_hosts)
    except OSError as exc:
        raise InvalidRequest(
            f"{url.shown}: {url.host!r} does not resolve ({exc.strerror or exc})"
        ) from None
    name = check_file_name(request.file or url.name)
    if request.keep_in_library:
        await asyncio.to_thread(
            origin_keep.check_request, library, registry, name, request.source_node
        )
    eligible = origin_keep.can_keep if request.keep_in_library else (lambda _node: True)
    fetcher, request = choose_fetcher(request, registry, groups, eligible)
    node = registry.node(fetcher)
    if node.status is not NodeStatus.ALIVE:
        raise NodeUnavailable(f"{node.id!r}, which is to fetch the URL, is {node.status.value}")
    # Recipients that cannot be sent to are told before the fetch, not after it.
    resolve_recipients(registry, groups, request.mode, fetcher, request.recipients, request.group)
    request = request.model_copy(update={"source_node": node.id, "file": name})
    return OriginRequest(request, request.source_url or "", url.shown, name, node)


async def fetch_whole(
    origin: OriginRequest, agents: AgentGateway, settings: Settings
) -> LocatedFile:
    """Fetch the object whole onto the node that is to send it; the file as the transfer
    then sends it (its manifest known)."""
    node, name = origin.fetcher, origin.name
    log.info("fetching %s on %s as %s", origin.shown, node.id, name)
    read = await agents.request(
        node.cluster,
        FetchOrigin(
            endpoint_id=node.id,
            fetch_id=uuid.uuid4().hex[:16],
            url=origin.url,
            name=name,
            chunk_size=settings.chunk_size,
            allowed_hosts=settings.origin_allowed_hosts,
        ),
        ManifestRead,
        timeout=FETCH_TIMEOUT,
    )
    log.info(
        "fetched %s on %s: %d bytes in %.1f s, %s",
        origin.shown,
        node.id,
        read.size,
        read.seconds,
        f"matching the origin's {read.checked}" if read.checked else "the origin gave no checksum",
    )
    return LocatedFile(
        path=name,
        name=name,
        size=read.size,
        blake3=read.blake3,
        manifest=tuple(read.manifest),
        identity=read.identity,
        origin=origin.shown,
    )
