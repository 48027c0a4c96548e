"""An endpoint's copy of an origin's object: fetched into a partial file in its storage on a
thread of its own, checked, and renamed into place, so that it can be the source of a
transfer (and is a verified copy of its own). On any failure nothing stays.

While the fetch runs, the bytes fetched so far are known (a stream sends up to there: the
broadcast is fed as the object arrives) and so are their chunks' BLAKE3 (what the stream's
receivers check each chunk against); the whole file's BLAKE3 is given only once the fetch is
whole and matched the origin's checksum, so no receiver commits a copy before that.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from castray.agent.space import Room
from castray.agent.storage import fsync_dir
from castray.chunks import FileIdentity, identity_of
from castray.errors import OriginFailed, Stopped
from castray.sources.fetch import fetch
from castray.sources.origins import ObjectInfo, OriginCut, open_origin
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


@dataclass(frozen=True)
class FetchState:
    """What a fetch has made known since a stream run last asked (``LiveFetch.state``)."""

    digests: list[bytes]
    """The BLAKE3 of each chunk fetched, from the one asked for on."""
    whole: str | None
    """The whole file's BLAKE3, once every byte is fetched and matched the origin's
    checksum (this copy's own fsync and rename may still be under way)."""
    error: str | None


class LiveFetch:
    """One origin's object on its way into ``storage_dir/name``."""

    def __init__(
        self,
        storage_dir: Path,
        room: Room,
        fetch_id: str,
        url: str,
        name: str,
        chunk_size: int,
        allowed_hosts: Sequence[str],
        where: str,
        clock: Callable[[], float],
        record: Callable[[OriginCopy], None] = lambda _copy: None,
    ) -> None:
        self.fetch_id = fetch_id
        self.url = url
        self.chunk_size = chunk_size
        self.final = storage_dir / name
        self.temp = storage_dir / f".{name}.{fetch_id}.part"
        self.size = 0
        self._storage_dir = storage_dir
        self._room = room
        self._name = name
        self._where = where
        self._clock = clock
        self._record = record
        self._began = clock()
        self._origin = open_origin(url, allowed_hosts, where)
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._fetched = 0
        self._digests: list[bytes] = []
        self._copy: OriginCopy | None = None
        self._whole: str | None = None
        self._failure: Exception | None = None
        self._fd = -1
        self._info: ObjectInfo | None = None

    def open(self) -> int:
        """Ask the origin what the object is, make its partial file and take its room (before
        a byte comes); the object's size. Raises what the origin answered, in words."""
        try:
            try:
                info = self._origin.info()
            except OriginCut as exc:  # nothing was fetched: say so at once, no retries
                raise OriginFailed(f"cannot reach the origin from {self._where}: {exc}") from exc
            self._fd = os.open(self.temp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            self._room.take(self.fetch_id, self._fd, info.size, self._name)
            os.ftruncate(self._fd, info.size)
        except BaseException:
            self._clean_up()
            raise
        self.size = info.size
        self._info = info
        return info.size

    def start(self) -> None:
        """Fetch on a thread of its own (``open`` first)."""
        threading.Thread(target=self._run, name=f"fetch-{self.fetch_id}", daemon=True).start()

    def stop(self) -> None:
        """Stop the fetch; its partial file goes."""
        self._stop.set()

    @property
    def done(self) -> bool:
        with self._changed:
            return self._copy is not None or self._failure is not None

    def _run(self) -> None:
        try:
            assert self._info is not None, "open() first"
            fetched = fetch(
                self._origin,
                self._info,
                self._fd,
                self.chunk_size,
                self._stop.is_set,
                on_part=self._arrived,
            )
            with self._changed:  # every byte is here and checked: recipients may commit
                self._whole = fetched.whole
                self._changed.notify_all()
            os.fsync(self._fd)  # this copy's own durability, while they do
            with self._changed:  # a reader opens the partial file or the final one, never none
                self.temp.replace(self.final)
            fsync_dir(self._storage_dir)
            seconds = self._clock() - self._began
            copy = OriginCopy(
                path=str(self.final),
                size=fetched.size,
                chunks=fetched.chunks,
                whole=fetched.whole,
                identity=identity_of(self.final.stat()),
                checked=fetched.checked,
                resumed_reads=fetched.resumed_reads,
                seconds=seconds,
            )
            log.info(
                "fetched %s into %s: %d bytes in %.1f s (%s; %d reads taken up again)",
                mask(self.url),
                self.final,
                fetched.size,
                seconds,
                f"checked against its {fetched.checked}" if fetched.checked else "no checksum",
                fetched.resumed_reads,
            )
        except Exception as exc:  # noqa: BLE001 (kept, and raised to whoever waits for the copy)
            log.info("fetching %s failed: %s", mask(self.url), exc)
            self._clean_up()
            with self._changed:
                self._failure = exc
                self._changed.notify_all()
            return
        self._clean_up(keep=True)
        self._record(copy)
        with self._changed:
            self._copy = copy
            self._changed.notify_all()

    def reader(self) -> BinaryIO:
        """The file being fetched, open for reading (a stream sends from it as it grows)."""
        with self._changed:
            if self._failure is not None:
                raise OriginFailed(_said(self._failure))
            return (self.final if self._copy is not None else self.temp).open("rb")

    def _arrived(self, written: int, digests: list[bytes]) -> None:
        with self._changed:
            self._fetched = written
            self._digests.extend(digests)
            self._changed.notify_all()

    def _clean_up(self, keep: bool = False) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
        if not keep:
            self.temp.unlink(missing_ok=True)
        self._room.give_back(self.fetch_id)
        self._origin.close()

    def wait_for(self, end: int, stopped: Callable[[], bool]) -> None:
        """Until the bytes before ``end`` are fetched (a stream sends them then); raises the
        fetch's failure, or ``Stopped`` once ``stopped()`` says so."""
        with self._changed:
            while self._fetched < end and self._copy is None:
                if self._failure is not None:
                    raise OriginFailed(f"the fetch from the origin failed: {self._failure}")
                if stopped():
                    raise Stopped("the transfer was stopped")
                self._changed.wait(0.5)

    def state(self, since: int) -> FetchState:
        """The chunks' BLAKE3 from chunk ``since`` on, and how far the fetch is."""
        with self._changed:
            failure = self._failure
            return FetchState(
                digests=self._digests[since:],
                whole=self._whole,
                error=None if failure is None else _said(failure),
            )

    def result(self, timeout: float | None = None) -> OriginCopy:
        """The copy once the fetch is whole; raises its failure as it was raised."""
        with self._changed:
            self._changed.wait_for(
                lambda: self._copy is not None or self._failure is not None, timeout
            )
            if self._failure is not None:
                raise self._failure
            if self._copy is None:
                raise TimeoutError("the fetch is still under way")
            return self._copy


def _said(failure: Exception) -> str:
    if isinstance(failure, Stopped):
        return "the fetch from the origin was stopped"
    return f"the fetch from the origin failed: {failure}"
