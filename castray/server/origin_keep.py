"""The library keeps what a URL-sourced transfer fetched (``keep_in_library``).

The library is a directory on the server's disk, which only endpoints on the server's
machine can read (as they do for pins): such an endpoint fetches the object, and once the
transfer has ended the server copies that endpoint's verified copy into the library,
hashing as it goes, and keeps it only if its BLAKE3 is the one the fetch checked. A copy
rather than a link, so that the library's file stays whole whatever becomes of the node's
(a storage sweep, an unpin that removes copies, a later transfer of the same name).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from castray.errors import CastRayError, FileExists, InvalidRequest, NodeUnavailable
from castray.models import Node, NodeStatus
from castray.protocol import CopiesTended, TendCopies, TransferFinished
from castray.ray_address import is_this_machine
from castray.server.gateway import AgentGateway
from castray.server.library import Library
from castray.server.registry import Registry

log = logging.getLogger(__name__)

COPY_WAIT = 30.0
"""Seconds the fetching endpoint's copy may take to be committed after its transfer ended
(the recipients commit once the fetch is checked; the fetcher's own fsync may end later)."""
LOOK_EVERY = 0.25
BLOCK = 1024 * 1024


def can_keep(node: Node) -> bool:
    """Whether the library can take ``node``'s copies: it is on the server's machine."""
    return is_this_machine(node.address)


def check_request(library: Library, registry: Registry, name: str, source: str | None) -> None:
    """Before a byte is fetched: the library's name is free, and the node that fetches (named,
    or one CastRay can choose) is on the server's machine."""
    try:
        library.check_name_free(name)
    except FileExists:
        raise FileExists(
            f"the library has a file named {name!r} already: give the copies another name "
            "(\"file\" in the request, the CLI's --as), or delete the library's file first"
        ) from None
    if source is not None:
        node = registry.node(source)
        if not can_keep(node):
            raise InvalidRequest(
                f"{source!r} is on {node.address}, not on the server's machine, and only a node "
                "there can hand its copy to the library: leave source_node out (CastRay picks "
                "one) or name a node on this machine"
            )
    elif not any(n.status is NodeStatus.ALIVE and can_keep(n) for n in registry.nodes()):
        raise NodeUnavailable(
            "keep_in_library needs an alive node on the server's machine to fetch the URL "
            "(the library is on its disk), and there is none"
        )


async def keep(
    agents: AgentGateway,
    library: Library,
    fetcher: Node,
    name: str,
    outcome: TransferFinished,
    limit: int | None,
) -> dict[str, str]:
    """The transfer's ``library_file`` once the library holds the fetched copy, else its
    ``library_note`` saying why not."""
    if outcome.cancelled:
        return {"library_note": "not kept: the transfer was cancelled"}
    if outcome.blake3 is None:
        return {"library_note": "not kept: the object was not fetched whole"}
    try:
        await _committed(agents, fetcher, name, outcome.blake3)
        await asyncio.to_thread(
            _copy, library, Path(fetcher.storage_dir) / name, name, outcome.blake3, limit
        )
    except (CastRayError, OSError) as exc:
        if isinstance(exc, FileExists):  # its own words suggest an upload's overwrite
            said = f"the library got a file named {name!r} while the transfer ran"
        else:
            said = exc.message if isinstance(exc, CastRayError) else f"{exc.strerror or exc}"
        log.info("%s was not kept in the library: %s", name, said)
        return {"library_note": f"not kept: {said}"}
    log.info("%s kept in the library, from %s's copy", name, fetcher.id)
    return {"library_file": name}


async def _committed(agents: AgentGateway, fetcher: Node, name: str, blake3: str) -> None:
    """Until the fetcher's copy is committed and verified as ``blake3``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + COPY_WAIT
    while True:
        answer = await agents.request(
            fetcher.cluster,
            TendCopies(action="check", endpoints={fetcher.id: [name]}),
            CopiesTended,
        )
        found = answer.copies.get(fetcher.id, {}).get(name)
        if found == blake3:
            return
        if fetcher.id in answer.unreachable:
            raise NodeUnavailable(f"{fetcher.id}, which holds the fetched copy, did not answer")
        if loop.time() >= deadline:
            raise NodeUnavailable(
                f"{fetcher.id} holds no verified copy of {name!r} as fetched "
                f"({COPY_WAIT:.0f} s after the transfer ended)"
            )
        await asyncio.sleep(LOOK_EVERY)


def _copy(library: Library, path: Path, name: str, blake3: str, limit: int | None) -> None:
    writer = library.create(name, limit, replace=False)
    try:
        block = bytearray(BLOCK)
        view = memoryview(block)
        with path.open("rb", buffering=0) as file:
            while n := file.readinto(block):
                writer.write(view[:n])
        writer.commit(expected=blake3)
    finally:
        writer.discard()
