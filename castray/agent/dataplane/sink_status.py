"""What a sink tells the agent: ``SinkStatus``, asked a few times a second, and whether the
sink has settled (every stream ended and every chunk it brought checked)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from castray.agent.dataplane.sink_state import SinkState
from castray.chunks import file_blake3


@dataclass(frozen=True)
class SinkStatus:
    """What a sink has so far (read by the agent a few times a second)."""

    verified_bytes: int
    missing: tuple[int, ...]
    """Chunks not verified yet; given only once ``ended`` (or ``broken``), else empty: a
    status polled a few times a second carries no list that grows with the file."""
    ended: bool
    """A stream ended cleanly and no stream is open: what is missing will not come by itself."""
    broken: str | None
    """Why the last stream broke, if it did (its sender or upstream went away)."""
    error: str | None
    """This sink cannot go on (a write failed): it is failed, it still forwards."""
    forwarded_bytes: int
    received_bytes: int
    """Every byte that arrived, whole chunks or not: a stream that moves at all is not stalled."""
    forward_error: str | None
    corrupt_chunks: int
    streams_seen: int
    """Incoming streams that have ended, cleanly or not (a repair's shows as one more)."""
    damaged: tuple[tuple[int, int], ...] = ()
    """Of the chunks still missing: those that arrived damaged, and how many times."""
    stream_began: float | None = None
    """When the incoming stream open now began, on the sink's clock (None: none is open). A
    pace taken over a span that began before it says little of the host: the start of a new
    stream (a move's ripple) is in it."""
    first_byte_at: float | None = None
    """When its first frame of bytes arrived, on the sink's clock (None: none yet). The first
    pace is taken from it: each hop of a chain gets its first byte a little after the one
    before, and a pace since the transfer began read the hosts down a chain of 16 slower and
    slower (8.0 MB/s to 2.2 at the first look, against 11-12 for all of them a look later)."""
    at: float = 0.0
    """When the sink said so, on its host's monotonic clock: a pace is measured between two
    of its own answers, not between the agent's looks (an answer can arrive just before one
    look or just after it, and the look then sees two answers' bytes, or none)."""


class SinkReporting(SinkState):
    """A sink's reports (its state: ``SinkState``)."""

    def status(self, wait: float = 0.0) -> SinkStatus:
        """What the sink has; with ``wait``, first up to that many seconds for it to settle
        (every stream ended and every chunk checked), so a watcher hears of it at once."""
        self.last_contact = time.monotonic()
        with self._lock:
            if wait > 0:
                self._changed.wait_for(self._settled, wait)
            settled = self._open_streams == 0 and self._writer_idle()
            ended = settled and self._ended_streams > 0
        missing = (
            tuple(i for i, ok in enumerate(self._verified) if not ok)
            if settled or self.error
            else ()
        )
        return SinkStatus(
            verified_bytes=self.verified_bytes,
            missing=missing,
            damaged=tuple((i, n) for i, n in self._damaged.items() if not self._verified[i]),
            ended=ended,
            broken=self.broken if settled else None,
            error=self.error,
            forwarded_bytes=self.forwarded_bytes,
            received_bytes=self.received_bytes,
            forward_error=self.forward_error,
            corrupt_chunks=self.corrupt_chunks,
            streams_seen=self._finished_streams,
            stream_began=self._stream_began if self._open_streams else None,
            first_byte_at=self._first_byte_at,
            at=time.monotonic(),
        )

    def _settled(self) -> bool:
        """A stream came and went and all it brought is checked (or the sink is closed)."""
        if self._closed:
            return True
        return self._finished_streams > 0 and self._open_streams == 0 and self._writer_idle()

    def _writer_idle(self) -> bool:
        """Everything received was checked (and written, or found damaged)."""
        return self._work.empty() and self._free.qsize() == self._buffers

    def complete(self) -> bool:
        return self.verified_bytes == self.size and all(self._verified)

    def whole_digest(self) -> str:
        """The file's BLAKE3: as fed while bytes came in order, else read back from disk."""
        if self._whole_valid and self._whole_upto == self.size:
            return str(self._whole.hexdigest())  # type: ignore[attr-defined]
        return file_blake3(self.temp)
