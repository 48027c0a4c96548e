"""What a sink holds: the state every part of ``StreamSink`` reads and writes, and the work
items its receiving threads hand the writer. Each part (``sink_receiving``, ``sink_writing``,
``sink_links``, ``sink_status``) is a subclass of ``SinkState``, and ``StreamSink`` is all of
them: a field is declared once, here."""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from castray import ratelimit
from castray.agent.dataplane.forwarding import Forwarder, Incoming


@dataclass(eq=False)
class Piece:
    """Bytes to write at ``offset`` (of the stream's frame ``position``)."""

    incoming: Incoming
    position: int
    index: int
    offset: int
    buffer: bytearray
    length: int


@dataclass(eq=False)
class ChunkEnd:
    """A frame's chunk is whole: mark it verified once its pieces are written, if intact and
    if no other stream's piece of the chunk was written among them."""

    incoming: Incoming
    position: int
    index: int
    length: int
    intact: bool
    pieces: int
    digest: bytes = b""
    """The BLAKE3 it arrived with: checked once its manifest entry is known, if not yet."""


@dataclass(frozen=True)
class Learn:
    """Manifest entries from chunk ``start`` on, become known (a file still being fetched)."""

    start: int
    digests: list[bytes]


@dataclass(eq=False)
class SinkState:
    """One transfer being received here: its file, its checks, its streams, its links."""

    transfer_id: str
    temp: Path
    final: Path
    size: int
    chunk_size: int
    manifest: list[bytes]
    """Each chunk's BLAKE3; ``b""`` where not known yet (``learn`` brings it)."""
    secret: bytes
    downstream: str | None
    stall_timeout: float
    connect_timeout: float
    blake3: str
    """The whole file's: with size and chunk size, what the resume journal is of."""
    corrupt_next: Callable[[], bool] = field(default=lambda: False)
    """Fault injection: the next chunk counts as damaged (its bytes are passed on intact)."""
    sync_fails: Callable[[], bool] = field(default=lambda: False)
    """Fault injection: the next sync of the file fails as a disk's write-back error would."""
    ingress: ratelimit.TokenBucket | None = None
    """The endpoint's ingress limit, shared with its other sinks: TCP's flow control then
    slows the sender to it."""
    fd: int = -1
    resumed_bytes: int = 0
    """Verified bytes found in the journal of an earlier run, when resumed."""
    verified_bytes: int = 0
    corrupt_chunks: int = 0
    received_bytes: int = 0
    error: str | None = None
    broken: str | None = None
    last_contact: float = field(default_factory=time.monotonic)
    """When the agent last asked about this sink (an orphan is one nobody asks about)."""
    _verified: bytearray = field(default_factory=bytearray)
    _synced: bytes = b""
    """The verified chunks as of the last successful sync: on disk for sure."""
    _damaged: dict[int, int] = field(default_factory=dict)
    _unchecked: dict[int, bytes] = field(default_factory=dict)
    """Chunks written whole whose manifest entry is not known yet: the BLAKE3 they came with."""
    _journaled_at: float = 0.0
    _journal_due: threading.Event = field(default_factory=threading.Event)
    """Set by the writer when the journal is due: a thread of its own syncs and writes it,
    so the writer never waits on the disk's flush."""
    _open_streams: int = 0
    _stream_began: float = 0.0
    """When the latest incoming stream began (monotonic)."""
    _first_byte_at: float | None = None
    """When the first frame of bytes of any stream arrived (monotonic)."""
    _ended_streams: int = 0
    _finished_streams: int = 0
    _whole: object = None
    _whole_upto: int = 0
    _whole_valid: bool = True
    _whole_owner: Incoming | None = None
    """The stream feeding the whole-file hash with the chunk under way: two streams may
    bring the same chunk at once (a chain re-linked), and only one feeds it."""
    _writes: dict[int, int] = field(default_factory=dict)
    """Pieces written so far, per chunk (the writer's own count)."""
    _first_write: dict[tuple[int, int], int] = field(default_factory=dict)
    """Per stream frame: the chunk's write count before its first piece was written."""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _changed: threading.Condition = field(init=False)
    """Notified whenever something moved: a stream ended, a piece was written, the writer
    went idle (the agent's status call and the forwarders wait on it)."""
    _free: queue.Queue[bytearray] = field(default_factory=queue.Queue)
    _buffers: int = 0
    _work: queue.Queue[Piece | ChunkEnd | Learn | None] = field(default_factory=queue.Queue)
    _writer: threading.Thread | None = None
    _journaler: threading.Thread | None = None
    _closed: bool = False
    _conns: set[socket.socket] = field(default_factory=set)
    _streams: list[Incoming] = field(default_factory=list)
    """The streams that arrived, in order; the latest is the one a redirect moves."""
    _linking: threading.Lock = field(default_factory=threading.Lock)
    """Held while a stream that arrives takes its next receiver and its forwarder, and while a
    redirect or a re-link changes them: a redirect that came between the two found no
    forwarder to stop, and the stream went on to the receiver it was moved away from. A
    slow host moved to the chain's end then still fed the one after it, which fed on down
    to the end and back to it: a loop at the slow pace (the lab: fast hosts 11x a unicast)."""
    _forwarders: list[Forwarder] = field(default_factory=list)
    _forward_error: str | None = None

    def __post_init__(self) -> None:
        self._changed = threading.Condition(self._lock)

    if TYPE_CHECKING:  # one part's, called by another

        def sever(self, upstream: bool, downstream: bool) -> None: ...

        def _forward(self, incoming: Incoming, downstream: str, start: int) -> None: ...

        @property
        def forwarded_bytes(self) -> int: ...

        @property
        def forward_error(self) -> str | None: ...
