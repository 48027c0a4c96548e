"""Bandwidth limits: a token bucket that a sender (or a reader) takes bytes from before it
moves them, so a transfer, or everything an endpoint sends or receives, keeps to a rate.

A bucket is shared by threads (an endpoint's concurrent streams draw from one bucket, so they
share its rate); it holds a tenth of a second of bytes, so a limit is kept within that
burst whatever the chunk size.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

BURST_SECONDS = 0.1
"""Bytes a full bucket holds, in seconds of its rate."""
MIN_BURST = 64 * 1024
"""A bucket holds at least this many bytes, so a slow rate still moves whole pieces."""
PIECE = 256 * 1024
"""Most bytes a limited sender moves per take: small enough to keep the rate smooth."""


class TokenBucket:
    """``rate`` bytes per second, with a burst of ``BURST_SECONDS`` of it."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("a token bucket needs a positive rate")
        self.rate = rate
        self.burst = max(rate * BURST_SECONDS, MIN_BURST)
        self._clock = clock
        self._tokens = self.burst
        self._at = clock()
        self._lock = threading.Lock()

    def take(self, count: int, stopped: Callable[[], bool] = lambda: False) -> None:
        """Wait until ``count`` bytes may move, taking them a burst at a time; returns early
        if ``stopped`` says so."""
        while count > 0 and not stopped():
            piece = min(count, int(self.burst))
            self._take_piece(piece, stopped)
            count -= piece

    def _take_piece(self, count: int, stopped: Callable[[], bool]) -> None:
        while True:
            with self._lock:
                now = self._clock()
                self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
                self._at = now
                if self._tokens >= count:
                    self._tokens -= count
                    return
                wait = (count - self._tokens) / self.rate
            if stopped():
                return
            time.sleep(min(wait, BURST_SECONDS))


Buckets = tuple[TokenBucket, ...]
"""Every limit that applies to one movement of bytes: each is taken from in turn."""


def buckets(*limits: TokenBucket | None) -> Buckets:
    return tuple(b for b in limits if b is not None)


def bucket_for(rate: int | None) -> TokenBucket | None:
    """A bucket for ``rate`` bytes per second; None (no limit) for None or 0."""
    return TokenBucket(rate) if rate else None


def take(
    limits: Iterable[TokenBucket], count: int, stopped: Callable[[], bool] = lambda: False
) -> None:
    for bucket in limits:
        bucket.take(count, stopped)


def piece_size(limits: Buckets, wanted: int) -> int:
    """How many bytes to move next: all that is wanted without a limit, else a piece no
    bigger than any bucket's burst."""
    if not limits:
        return wanted
    return min(wanted, PIECE, *(int(b.burst) for b in limits))
