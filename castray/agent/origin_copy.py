"""An endpoint's copy of an origin's object: fetched into a partial file in its storage,
checked, and renamed into place, so that it can be the source of a transfer (and is a
verified copy of its own). On any failure nothing stays."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from castray.agent.space import Room
from castray.agent.storage import fsync_dir
from castray.chunks import FileIdentity, identity_of
from castray.errors import OriginFailed
from castray.sources.fetch import fetch
from castray.sources.origins import OriginCut, open_origin
from castray.sources.policy import mask

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OriginCopy:
    """The copy as a stream needs it described, and how the fetch went."""

    path: str
    size: int
    chunks: list[bytes]
    whole: str
    identity: FileIdentity
    checked: str | None
    """The origin's checksum that the bytes matched (None: the origin offered none)."""
    resumed_reads: int
    seconds: float


def fetch_copy(
    storage_dir: Path,
    room: Room,
    fetch_id: str,
    url: str,
    name: str,
    chunk_size: int,
    allowed_hosts: Sequence[str],
    where: str,
    stopped: Callable[[], bool],
    clock: Callable[[], float],
) -> OriginCopy:
    """Fetch ``url`` into ``storage_dir/name``; its room is taken before a byte comes."""
    began = clock()
    origin = open_origin(url, allowed_hosts, where)
    final = storage_dir / name
    temp = storage_dir / f".{name}.{fetch_id}.part"
    fd = -1
    try:
        try:
            info = origin.info()
        except OriginCut as exc:  # nothing was fetched: say so at once, no retries
            raise OriginFailed(f"cannot reach the origin from {where}: {exc}") from exc
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        room.take(fetch_id, fd, info.size, name)
        os.ftruncate(fd, info.size)
        fetched = fetch(origin, info, fd, chunk_size, stopped)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        temp.replace(final)
        fsync_dir(storage_dir)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        temp.unlink(missing_ok=True)
        raise
    finally:
        room.give_back(fetch_id)
        origin.close()
    seconds = clock() - began
    log.info(
        "fetched %s into %s: %d bytes in %.1f s (%s; %d reads taken up again)",
        mask(url),
        final,
        fetched.size,
        seconds,
        f"checked against its {fetched.checked}" if fetched.checked else "no origin checksum",
        fetched.resumed_reads,
    )
    return OriginCopy(
        path=str(final),
        size=fetched.size,
        chunks=fetched.chunks,
        whole=fetched.whole,
        identity=identity_of(final.stat()),
        checked=fetched.checked,
        resumed_reads=fetched.resumed_reads,
        seconds=seconds,
    )
