"""Fetching an object from its origin into a file: parallel ranged reads, in order on disk,
each chunk's BLAKE3 (the manifest a stream's receivers check) and the whole file's made as
the bytes arrive, and the origin's own checksum checked when it offers one.

Reads run ``parallel`` ranges at a time, each of ``part`` bytes; the parts are written and
hashed in order, so memory holds at most ``parallel`` parts, whatever the object's size. A
read that is cut asks again for the rest of its range, from where it stopped: nothing already
fetched is fetched again.

The first ranges are staggered (a quarter of a part, a half, three quarters, then whole parts,
with four in flight): ranges started together share the origin's link and end together, so
the bytes would come in order only in bursts of ``parallel`` parts, and a stream fed as they
arrive (cut-through) would lag the fetch by a whole burst. Staggered, one range ends about
every part's time, at the start and the end of the fetch too.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import zlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import blake3

from castray.chunks import HASH_THREADS
from castray.errors import OriginFailed, SourceChanged, Stopped
from castray.sources.origins import Checksum, ObjectInfo, Origin, OriginCut

log = logging.getLogger(__name__)

PART = 8 * 1024 * 1024
PARALLEL = 4
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
    of each part once it is written: the bytes written so far from the start, and the BLAKE3
    of each chunk of the part (a stream fed as the bytes arrive sends up to there)."""
    ranges = plan_ranges(info.size, PART, parallel) if info.ranges else [(0, info.size)]
    if len(ranges) == 1:
        parallel = 1
    chunking = _Chunking(chunk_size, info.size)
    whole = blake3.blake3(max_threads=HASH_THREADS)
    origin_digest = _Digest(info.checksum) if info.checksum else None
    chunks: list[bytes] = []
    resumed = [0]
    pool = ThreadPoolExecutor(parallel, thread_name_prefix="fetch")
    waiting: deque[Future[bytearray]] = deque()
    upcoming = iter(ranges)
    try:
        for start, end in upcoming:
            waiting.append(pool.submit(_read_range, origin, start, end, info, resumed))
            if len(waiting) >= parallel:
                break
        written = 0
        while waiting:
            data = _result(waiting.popleft(), stopped)
            following = next(upcoming, None)
            if following is not None:
                waiting.append(pool.submit(_read_range, origin, *following, info, resumed))
            view = memoryview(data)
            os.pwrite(fd, view, written)
            whole.update(view)
            if origin_digest is not None:
                origin_digest.update(view)
            digests = chunking.feed(view)
            chunks.extend(digests)
            written += len(view)
            on_part(written, digests)
    finally:
        # A stop does not wait for reads under way (an origin that stalls would hold it):
        # they end as the origin's client is closed, and what they bring is dropped.
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
        self._filled = 0

    def feed(self, view: memoryview) -> list[bytes]:
        """The digests of the chunks ``view`` completes (the next bytes of the object)."""
        done, at = [], 0
        while at < len(view):
            take = min(self._chunk_size - self._filled, len(view) - at)
            self._hash.update(view[at : at + take])
            self._filled += take
            self._left -= take
            at += take
            if self._filled == self._chunk_size or self._left == 0:
                done.append(self._hash.digest())
                self._hash, self._filled = blake3.blake3(), 0
        return done


def _result(future: Future[bytearray], stopped: Callable[[], bool]) -> bytearray:
    """A range's bytes once read; ``Stopped`` as soon as ``stopped()`` says so."""
    while True:
        if stopped():
            raise Stopped("the fetch was stopped")
        try:
            return future.result(timeout=STOP_CHECK)
        except FutureTimeout:
            continue


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


def _read_range(
    origin: Origin, start: int, end: int, info: ObjectInfo, resumed: list[int]
) -> bytearray:
    """The bytes ``[start, end)``; a cut read is taken up from where it stopped."""
    data = bytearray()
    for attempt in range(TRIES):
        try:
            origin.read(start + len(data), end, data.extend)
        except OriginCut as exc:
            if not info.ranges or attempt + 1 == TRIES:
                raise OriginFailed(f"{exc} ({attempt + 1} tries)") from exc
            log.info("%s; reading again from byte %d", exc, start + len(data))
            resumed[0] += 1
            time.sleep(FIRST_BACKOFF * 2**attempt)  # back-off before asking the origin again
            continue
        if len(data) == end - start:
            return data
        if len(data) > end - start:
            raise SourceChanged(
                f"the origin sent {len(data)} bytes for a range of {end - start}: "
                "the object is not the one it was"
            )
        # Fewer bytes than asked, and no error: the connection ended early.
        resumed[0] += 1
        log.info("a read ended at byte %d of %d; reading again", start + len(data), end)
    raise OriginFailed(f"the origin kept ending reads early ({TRIES} tries)")
