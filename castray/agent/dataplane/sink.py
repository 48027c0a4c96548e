"""A transfer being received on an endpoint's data port: each piece written into the file as
it arrives, every chunk checked against the manifest, and the stream passed on to the next
receiver at that receiver's own pace.

The receiving thread reads each piece (``SO_RCVLOWAT``: a piece is at least a few hundred KiB
when bytes trickle in, not one packet) into one of a few reusable buffers and hashes it at
once, while it is in the CPU's cache: into its chunk's BLAKE3 and, while bytes come in order,
the whole file's. A writer thread writes each piece at its offset (so receiving and writing
overlap), and a chunk whose hash matched is marked verified once all of it is written. What
is written is what a forwarder (``forwarding``) sends on, from the file: the next receiver is
fed cut-through while it keeps up and from the page cache when it falls behind, and never
holds this one back. A chunk that fails its check, or never came, is listed as missing for
the agent to have it sent again.

A file sent while its source still fetches it from an origin has a manifest that grows: a
chunk whose BLAKE3 is not known yet when it arrives is written and passed on, and kept
"unchecked" with the BLAKE3 it arrived with until ``learn`` brings the one it must have.

``StreamSink`` holds a sink's state, and opens and closes it; each of its parts has a module:
``sink_receiving`` (a stream's frames read and hashed), ``sink_writing`` (the writer, the
checks, the resume journal), ``forwarding`` (streams passed on: a sink's links),
``sink_status`` (what the agent is told).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import blake3

from castray import ratelimit
from castray.agent.dataplane.forwarding import Forwarder, Incoming, SinkForwarding
from castray.agent.dataplane.sink_receiving import SinkReceiving
from castray.agent.dataplane.sink_status import SinkReporting, SinkStatus
from castray.agent.dataplane.sink_writing import PIECE, ChunkEnd, Learn, Piece, SinkWriting
from castray.agent.dataplane.wire import all_chunks
from castray.agent.journal import Journal, journal_path

log = logging.getLogger(__name__)

__all__ = ["PIECE", "SinkStatus", "StreamSink"]

BUFFERS = 8
"""Piece buffers per sink: what a sink holds in memory, whatever the file's size."""


@dataclass(eq=False)
class StreamSink(SinkReceiving, SinkWriting, SinkForwarding, SinkReporting):
    """One transfer being received here: written as it comes, verified, passed on."""

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
    _forwarders: list[Forwarder] = field(default_factory=list)
    _forward_error: str | None = None

    def __post_init__(self) -> None:
        self._changed = threading.Condition(self._lock)

    def open(self, resume: bool = False, await_stream: bool = False) -> None:
        """Create the temporary file and start the writer (the file is filled by offset).

        ``resume``: take up what an earlier run of the transfer left, as its journal lists it
        (nothing if there is no journal of this very file), and count as a sink whose stream
        has ended: every chunk it lacks is missing, and the agent has them sent; with
        ``await_stream``, not before a stream from upstream brought what it could.
        """
        self._verified = bytearray(len(self.manifest))
        journal = Journal.read(journal_path(self.temp)) if resume else None
        if journal is not None and not journal.matches(self.size, self.chunk_size, self.blake3):
            journal = None
        if journal is not None and self.temp.exists():
            self.fd = os.open(self.temp, os.O_RDWR)
            self._verified[:] = journal.verified
            self.verified_bytes = self.resumed_bytes = sum(
                length
                for index, _, length in all_chunks(self.size, self.chunk_size)
                if self._verified[index]
            )
        else:
            # Read too: forwarders send from it.
            self.fd = os.open(self.temp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            journal_path(self.temp).unlink(missing_ok=True)
        if resume and not await_stream:
            self._ended_streams = self._finished_streams = 1
        self._synced = bytes(self._verified)
        self._whole = blake3.blake3()  # fed on the receiving thread, from the CPU's cache
        self._buffers = min(BUFFERS, max(1, -(-self.size // PIECE)))
        for _ in range(self._buffers):
            self._free.put(bytearray(min(PIECE, max(self.size, 1))))  # small files, small
        self._writer = threading.Thread(
            target=self._write_loop, name=f"sink-{self.transfer_id}", daemon=True
        )
        self._writer.start()

    # ---- closing ------------------------------------------------------------------

    def close(self, keep_fd: bool = False, journal: bool = False, forwarding: bool = False) -> None:
        """Stop the writer (what is queued is written first) and close the file, unless
        ``keep_fd`` (a commit fsyncs and closes it); with ``journal``, record what the file
        holds for a resume first. Forwarders stop too, unless ``forwarding`` (a commit: a
        slower next receiver is still fed, from the forwarder's own descriptor)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for conn in self._conns:  # streams still arriving end now
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        if not forwarding:
            self.sever(upstream=False, downstream=True)
        self._work.put(None)
        if self._writer is not None:
            self._writer.join(timeout=self.stall_timeout)
        self._journal_due.set()
        if self._journaler is not None:
            self._journaler.join(timeout=self.stall_timeout)
        stuck = any(t is not None and t.is_alive() for t in (self._writer, self._journaler))
        if stuck:  # a write hangs on the disk: its descriptor must not be reused under it
            self.error = self.error or "its disk stopped taking writes"
            log.warning("transfer %s: %s; its file is left open", self.transfer_id, self.error)
            return
        if journal and self.error is None:
            self.write_journal()
        if not keep_fd:
            with contextlib.suppress(OSError):
                os.close(self.fd)
