"""Fetching an object from its origin into a file: parallel ranged reads, in order on disk,
each chunk's BLAKE3 (the manifest a stream's receivers check) and the whole file's made as
the bytes arrive, and the origin's own checksum checked when it offers one.

Reads run ``parallel`` ranges at a time, each of ``part`` bytes, into a buffer of its own;
the bytes are written and hashed in order, the oldest range's as they arrive (a step at a
time, not once it is whole: a stream fed from the file follows the fetch closely), so memory
holds at most ``parallel`` parts, whatever the object's size. A read that is cut asks again
for the rest of its range, from where it stopped: nothing already fetched is fetched again.

The first ranges are staggered (a quarter of a part, a half, three quarters, then whole parts,
with four in flight): ranges started together share the origin's link and end together, so
the bytes would come in order only in bursts of ``parallel`` parts, and a stream fed as they
arrive (cut-through) would lag the fetch by a whole burst. Staggered, one range ends about
every part's time, at the start and the end of the fetch too.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import blake3

from castray.chunks import HASH_THREADS
from castray.errors import OriginFailed, SourceChanged, Stopped
from castray.sources.origins import Checksum, ObjectInfo, Origin, OriginCut
from castray.writeback import start_write_back

log = logging.getLogger(__name__)

PART = 8 * 1024 * 1024
PARALLEL = 4
STEP = 1024 * 1024
"""Bytes of the oldest range written, hashed and told (``on_part``) at a time."""
AHEAD = 2 * PART
"""Bytes the younger ranges may hold beyond the oldest one's before their reads wait. Where
the ranges share one link (the origin's, or the fetching node's), TCP shares it unevenly,
and an oldest range that gets a small share for seconds holds back every byte written after
it (and a stream fed from the file); younger reads that wait leave it the link. Where each
read is slow on its own (a distant origin), they run ahead as they please within this."""
TRIES = 6
"""Reads of one range before the fetch fails: each asks for what the last did not get."""
FIRST_BACKOFF = 0.5
STOP_CHECK = 0.5
"""Seconds between looks at whether the fetch was stopped, while a read is awaited."""
FETCH_TIMEOUT = 24 * 3600.0
"""What the server and the agent wait for a fetch at most: an object may be large and its
link slow, so a fetch is stopped (cancel, shutdown) rather than timed out."""


@dataclass(frozen=True)
class Fetched:
    size: int
    chunks: list[bytes]
    whole: str
    checked: str | None
    """What the origin's checksum was (``"sha256 (x-amz-checksum-sha256)"``), if it had one."""
    resumed_reads: int
    """Reads that were cut and taken up again from where they stopped."""


class _Digest:
    """The origin's checksum, computed over the bytes in order."""

    def __init__(self, checksum: Checksum) -> None:
        self.checksum = checksum
        self._crc = 0
        self._hash = None if checksum.algorithm == "crc32" else hashlib.new(checksum.algorithm)

    def update(self, data: memoryview) -> None:
        if self._hash is None:
            self._crc = zlib.crc32(data, self._crc)
        else:
            self._hash.update(data)

    def digest(self) -> bytes:
        return self._crc.to_bytes(4, "big") if self._hash is None else self._hash.digest()


def fetch(
    origin: Origin,
    info: ObjectInfo,
    fd: int,
    chunk_size: int,
    stopped: Callable[[], bool] = lambda: False,
    parallel: int = PARALLEL,
    on_part: Callable[[int, list[bytes]], None] = lambda _written, _digests: None,
) -> Fetched:
    """Read the whole object into ``fd`` (sized already) and check it. ``on_part`` hears
    of each step written: the bytes written so far from the start, and the BLAKE3 of each
    chunk the step completed (a stream fed as the bytes arrive sends up to there)."""
    ranges = plan_ranges(info.size, PART, parallel) if info.ranges else [(0, info.size)]
    if len(ranges) == 1:
        parallel = 1
    chunking = _Chunking(chunk_size, info.size)
    whole = blake3.blake3(max_threads=HASH_THREADS)
    origin_digest = _Digest(info.checksum) if info.checksum else None
    chunks: list[bytes] = []
    resumed = [0]
    pool = ThreadPoolExecutor(parallel, thread_name_prefix="fetch")
    window = _Window()
    waiting = window.ranges
    upcoming = iter(ranges)

    def read(start: int, end: int) -> None:
        reading = _Range(start, end, window)
        with window.changed:
            waiting.append(reading)
        pool.submit(reading.fill, origin, info, resumed)

    try:
        for start, end in upcoming:
            read(start, end)
            if len(waiting) >= parallel:
                break
        written = 0
        while waiting:
            oldest = waiting[0]
            view = oldest.next_step(stopped)
            os.pwrite(fd, view, written)
            start_write_back(fd, written, len(view))
            whole.update(view)
            if origin_digest is not None:
                origin_digest.update(view)
            digests = chunking.feed(view)
            chunks.extend(digests)
            written += len(view)
            on_part(written, digests)
            if oldest.consumed == len(oldest.data):
                with window.changed:
                    waiting.popleft()
                    window.changed.notify_all()  # a younger read may go on
                if (following := next(upcoming, None)) is not None:
                    read(*following)
    finally:
        # A stop does not wait for reads under way (an origin that stalls would hold it):
        # they end as the origin's client is closed, and what they bring is dropped.
        with window.changed:
            window.closed = True
            window.changed.notify_all()
        pool.shutdown(wait=False, cancel_futures=True)
    checked = _check(origin_digest, info)
    return Fetched(info.size, chunks, str(whole.hexdigest()), checked, resumed[0])


def plan_ranges(size: int, part: int, parallel: int) -> list[tuple[int, int]]:
    """The ranges ``[start, end)`` a fetch reads: the first ``parallel - 1`` staggered (1/n,
    2/n, ... of a part), then whole parts."""
    lengths = [part * k // parallel for k in range(1, parallel)]
    ranges, start = [], 0
    while start < size:
        length = lengths.pop(0) if lengths else part
        ranges.append((start, min(start + max(length, 1), size)))
        start = ranges[-1][1]
    return ranges


class _Chunking:
    """Each chunk's BLAKE3, over parts that need not start or end where chunks do."""

    def __init__(self, chunk_size: int, size: int) -> None:
        self._chunk_size = chunk_size
        self._left = size
        self._hash = blake3.blake3()
        self.filled = 0

    def feed(self, view: memoryview) -> list[bytes]:
        """The digests of the chunks ``view`` completes (the next bytes of the object)."""
        done, at = [], 0
        while at < len(view):
            take = min(self._chunk_size - self.filled, len(view) - at)
            self._hash.update(view[at : at + take])
            self.filled += take
            self._left -= take
            at += take
            if self.filled == self._chunk_size or self._left == 0:
                done.append(self._hash.digest())
                self._hash, self.filled = blake3.blake3(), 0
        return done


def _check(digest: _Digest | None, info: ObjectInfo) -> str | None:
    if digest is None:
        return None
    expected = digest.checksum
    if digest.digest() != expected.digest:
        raise OriginFailed(
            f"the object's {expected.algorithm} is not the one the origin gave in "
            f"{expected.said_by}: it arrived damaged, or the origin keeps a wrong checksum"
        )
    return f"{expected.algorithm} ({expected.said_by})"


class _Window:
    """The ranges being read, oldest first, under one lock: younger reads wait while they
    hold ``AHEAD`` bytes (see there)."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.ranges: deque[_Range] = deque()
        self.closed = False

    def ahead(self) -> int:
        return sum(r.filled for r in itertools.islice(self.ranges, 1, None))


class _Range:
    """The bytes ``[start, end)`` of the object, landing in a buffer of their own as they
    arrive (read on a pool thread, taken in steps by the fetch, oldest range first)."""

    def __init__(self, start: int, end: int, window: _Window) -> None:
        self.start = start
        self.data = bytearray(end - start)
        self.consumed = 0
        self.filled = 0
        self._told = 0
        self._read_whole = False
        self._failure: BaseException | None = None
        self._window = window
        self._changed = window.changed

    def fill(self, origin: Origin, info: ObjectInfo, resumed: list[int]) -> None:
        """Read the range (on a pool thread); a cut read is taken up from where it stopped."""
        try:
            self._read(origin, info, resumed)
        except BaseException as exc:  # noqa: BLE001 (handed to the fetch, which raises it)
            with self._changed:
                self._failure = exc
                self._changed.notify_all()
            return
        with self._changed:  # an empty range has brought no piece to say so
            self._read_whole = True
            self._changed.notify_all()

    def _read(self, origin: Origin, info: ObjectInfo, resumed: list[int]) -> None:
        size = len(self.data)
        for attempt in range(TRIES):
            try:
                origin.read(self.start + self.filled, self.start + size, self._take)
            except OriginCut as exc:
                if not info.ranges or attempt + 1 == TRIES:
                    raise OriginFailed(f"{exc} ({attempt + 1} tries)") from exc
                log.info("%s; reading again from byte %d", exc, self.start + self.filled)
                resumed[0] += 1
                time.sleep(FIRST_BACKOFF * 2**attempt)  # back-off before asking again
                continue
            if self.filled == size:
                return
            # Fewer bytes than asked, and no error: the connection ended early.
            resumed[0] += 1
            log.info(
                "a read ended at byte %d of %d; reading again",
                self.start + self.filled,
                self.start + size,
            )
        raise OriginFailed(f"the origin kept ending reads early ({TRIES} tries)")

    def _take(self, piece: bytes) -> None:
        at, size = self.filled, len(self.data)
        if at + len(piece) > size:
            raise SourceChanged(
                f"the origin sent more than the {size} bytes of a range: the object is not "
                "the one it was"
            )
        window = self._window
        with self._changed:
            while window.ranges[0] is not self and window.ahead() >= AHEAD:
                if window.closed:
                    raise Stopped("the fetch ended")
                self._changed.wait(STOP_CHECK)
        self.data[at : at + len(piece)] = piece  # in place: the buffer is never resized
        with self._changed:
            self.filled = at + len(piece)
            if self.filled - self._told >= STEP or self.filled == size:
                self._told = self.filled
                self._changed.notify_all()

    def next_step(self, stopped: Callable[[], bool]) -> memoryview:
        """The next bytes to write: a step, or what ends the range, once they are here;
        raises the read's failure, or ``Stopped`` as soon as ``stopped()`` says so."""
        size = len(self.data)
        with self._changed:
            while True:
                if self._failure is not None:
                    raise self._failure
                if stopped():
                    raise Stopped("the fetch was stopped")
                ready = self.filled - self.consumed
                if ready >= STEP or (ready and self.filled == size) or self._read_whole:
                    break
                self._changed.wait(STOP_CHECK)
            start, self.consumed = self.consumed, self.filled
        return memoryview(self.data)[start : self.consumed]
