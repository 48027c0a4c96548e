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
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import blake3

from castray import ratelimit
from castray.agent.dataplane.forwarding import Forwarder, Incoming
from castray.agent.dataplane.wire import (
    END,
    FRAME,
    StreamError,
    all_chunks,
    reason_of,
    recv_exact,
)
from castray.agent.journal import Journal, journal_path
from castray.chunks import file_blake3
from castray.writeback import start_write_back

log = logging.getLogger(__name__)

PIECE = 1024 * 1024
"""Bytes received at a time, at most: what a buffer holds."""
LOWAT = 256 * 1024
"""A receive waits for this many bytes (or the rest of its chunk): a trickle costs a pass of
the receiving loop per quarter MiB, not per packet."""
BUFFERS = 8
"""Piece buffers per sink: what a sink holds in memory, whatever the file's size."""
JOURNAL_INTERVAL = 1.0
"""Seconds between a sink's journal writes (each after an fdatasync of its partial file)."""


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
    at: float = 0.0
    """When the sink said so, on its host's monotonic clock: a pace is measured between two
    of its own answers, not between the agent's looks (an answer can arrive just before one
    look or just after it, and the look then sees two answers' bytes, or none)."""


@dataclass(eq=False)
class _Piece:
    """Bytes to write at ``offset`` (of the stream's frame ``position``)."""

    incoming: Incoming
    position: int
    index: int
    offset: int
    buffer: bytearray
    length: int


@dataclass(eq=False)
class _ChunkEnd:
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
class _Learn:
    """Manifest entries from chunk ``start`` on, become known (a file still being fetched)."""

    start: int
    digests: list[bytes]


@dataclass(eq=False)
class StreamSink:
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
    _work: queue.Queue[_Piece | _ChunkEnd | _Learn | None] = field(default_factory=queue.Queue)
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

    # ---- streams arriving -----------------------------------------------------------

    def receive(self, conn: socket.socket, forward: bool) -> None:
        """Read one incoming stream to its end (runs on the connection's own thread); with
        ``forward``, a forwarder passes it on to this sink's downstream."""
        incoming = Incoming()
        with self._lock:
            if self._closed:
                conn.close()
                return
            self._open_streams += 1
            self._conns.add(conn)
            self._streams.append(incoming)
            self.broken = None  # a new stream: what broke before is being made good
        conn.settimeout(self.stall_timeout)
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, LOWAT)
        if forward and self.downstream is not None:
            self._forward(incoming, self.downstream, 0)
        clean = False
        try:
            header = bytearray(FRAME.size)
            while True:
                recv_exact(conn, memoryview(header))
                index, offset, length = FRAME.unpack(header)
                if index == END:
                    clean = True
                    return
                self._receive_chunk(conn, incoming, index, offset, length)
        except (OSError, StreamError, queue.Empty) as exc:
            if not self._closed:
                self.broken = f"the stream from upstream broke: {reason_of(exc)}"
        finally:
            conn.close()
            with self._lock:
                self._conns.discard(conn)
                if clean:
                    incoming.ended = True
                else:
                    incoming.broken = True
                self._open_streams -= 1
                self._ended_streams += 1 if clean else 0
                self._finished_streams += 1
                self._changed.notify_all()

    def _receive_chunk(
        self, conn: socket.socket, incoming: Incoming, index: int, offset: int, length: int
    ) -> None:
        expected = min(self.chunk_size, self.size - index * self.chunk_size)
        if index >= len(self.manifest) or offset != index * self.chunk_size or length != expected:
            raise StreamError(
                f"a frame for chunk {index} at byte {offset} of {length} bytes is not where "
                "that chunk is in this file"
            )
        with self._lock:
            incoming.frames.append((index, offset, length))
            incoming.received.append(0)
            incoming.written.append(0)
            position = len(incoming.frames) - 1
        with self._lock:
            in_order = offset == self._whole_upto and self._whole_owner is None
            if in_order:
                self._whole_owner = incoming
        # The whole-file hash as it was before this chunk: a chunk that never arrives whole
        # must leave no trace in it (it comes again, whole, from a repair).
        whole_before = self._whole.copy() if in_order else None  # type: ignore[attr-defined]
        damaged = self.corrupt_next()
        chunk_hash = blake3.blake3()
        got = 0
        pieces = 0
        try:
            while got < length:
                buffer = self._free.get(timeout=self.stall_timeout)
                view = memoryview(buffer)
                want = min(len(buffer), length - got)
                filled = 0
                try:
                    while filled < want:
                        n = conn.recv_into(view[filled:want])
                        if n == 0:
                            raise StreamError(
                                "the sender closed the stream in the middle of a chunk"
                            )
                        if self.ingress is not None:
                            self.ingress.take(n)  # what came: a read may bring less than asked
                        piece = view[filled : filled + n]
                        # Hashed while the piece is still in the CPU's cache.
                        chunk_hash.update(piece)
                        if in_order:
                            self._whole.update(piece)  # type: ignore[attr-defined]
                        filled += n
                        self.received_bytes += n
                        with self._lock:
                            incoming.received[position] += n
                except BaseException:
                    if filled:
                        self._work.put(
                            _Piece(incoming, position, index, offset + got, buffer, filled)
                        )
                    else:
                        self._free.put(buffer)
                    raise
                self._work.put(_Piece(incoming, position, index, offset + got, buffer, filled))
                got += filled
                pieces += 1
        except BaseException:
            if whole_before is not None:
                with self._lock:
                    self._whole = whole_before
                    self._whole_owner = None
            raise
        digest = chunk_hash.digest()
        known = self.manifest[index]  # checked again on the writer if not known yet
        intact = not damaged and (not known or digest == known)
        if in_order:
            with self._lock:
                self._whole_upto += length
                self._whole_valid = self._whole_valid and intact
                self._whole_owner = None
        self._work.put(_ChunkEnd(incoming, position, index, length, intact, pieces, digest))

    # ---- passing on ---------------------------------------------------------------------

    def _forward(self, incoming: Incoming, downstream: str, start: int) -> None:
        forwarder = Forwarder(
            self.transfer_id,
            self.secret,
            incoming,
            start,
            downstream,
            self.fd,
            self._changed,
            self.stall_timeout,
            self.connect_timeout,
        )
        with self._lock:
            incoming.forwarder = forwarder
            self._forwarders.append(forwarder)
            self._forward_error = None
        forwarder.start()

    @property
    def forwarded_bytes(self) -> int:
        with self._lock:
            return sum(f.sent for f in self._forwarders)

    @property
    def forward_error(self) -> str | None:
        with self._lock:
            errors = [f.error for f in self._forwarders if f.error]
        return errors[-1] if errors else self._forward_error

    @property
    def forwarding(self) -> bool:
        """A forwarder still sends (a slower next receiver is still being fed)."""
        with self._lock:
            return any(f.running for f in self._forwarders)

    def relink(self, downstream: str | None) -> None:
        """A new next receiver, for streams that start from now on."""
        self.last_contact = time.monotonic()
        self.downstream = downstream

    def redirect(self, downstream: str | None, from_chunk: int) -> None:
        """A new next receiver now: the latest stream's forwarder stops, and a new one sends
        that stream's frames of chunks from ``from_chunk`` on to ``downstream`` (None: to no
        one); later streams go there too."""
        self.relink(downstream)
        with self._lock:
            incoming = self._streams[-1] if self._streams else None
            old = incoming.forwarder if incoming is not None else None
            start = 0
            if incoming is not None:
                start = next(
                    (i for i, frame in enumerate(incoming.frames) if frame[0] >= from_chunk),
                    len(incoming.frames),
                )
        if old is not None:
            old.stop()
        if incoming is not None and downstream is not None and not self._closed:
            self._forward(incoming, downstream, start)

    def sever(self, upstream: bool, downstream: bool) -> None:
        """End the streams arriving here (``upstream``: their sender is gone, so they would
        only stall; what they did not bring gets repaired) or stop passing them on
        (``downstream``: the next receiver is gone; this sink's own copy goes on)."""
        with self._lock:
            conns = list(self._conns) if upstream else []
            forwarders = list(self._forwarders) if downstream else []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for forwarder in forwarders:
            forwarder.stop()

    # ---- writing ------------------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            if isinstance(item, _ChunkEnd):
                self._chunk_ended(item)
            elif isinstance(item, _Learn):
                self._learned(item)
            else:
                try:
                    self._write_piece(item)
                finally:
                    self._free.put(item.buffer)
            if self._work.empty():
                with self._lock:
                    self._changed.notify_all()

    def _write_piece(self, piece: _Piece) -> None:
        """Write a piece at its offset, unless its chunk is verified already (the file holds
        it: what a forwarder sends of it is the same); then it may be passed on."""
        if not self._verified[piece.index] and self.error is None:
            self._unchecked.pop(piece.index, None)  # its bytes change: what it came with goes
            view = memoryview(piece.buffer)[: piece.length]
            count = self._writes.get(piece.index, 0)
            self._first_write.setdefault((id(piece.incoming), piece.position), count)
            self._writes[piece.index] = count + 1
            try:
                written = 0
                while written < piece.length:
                    written += os.pwrite(self.fd, view[written:], piece.offset + written)
                start_write_back(self.fd, piece.offset, piece.length)
            except OSError as exc:
                self.error = f"could not write its file to disk: {exc.strerror or exc}"
                self.sever(upstream=False, downstream=True)  # nothing to pass on from here
                return
        with self._lock:
            piece.incoming.written[piece.position] += piece.length
            self._changed.notify_all()

    def _chunk_ended(self, end: _ChunkEnd) -> None:
        """Mark a chunk verified: it arrived intact, and its pieces were the last ones
        written of it, one after the other, or else the file holds the right bytes of it when
        read back (a piece of the same chunk from another stream, written among them, may
        have left other bytes; the chunk then comes again)."""
        first = self._first_write.pop((id(end.incoming), end.position), None)
        alone = first is not None and self._writes.get(end.index, 0) - first == end.pieces
        known = self.manifest[end.index]
        if end.intact and known and end.digest != known:
            end = replace(end, intact=False)  # its entry came while it arrived: it differs
        if not end.intact:
            self._damage(end.index)
            return
        if self._verified[end.index] or self.error is not None:
            return
        if not alone and not self._holds(end.index, known or end.digest):
            log.info(
                "transfer %s: chunk %d arrived by two streams at once and the file holds "
                "other bytes of it; it comes again",
                self.transfer_id,
                end.index,
            )
            return
        if not known:
            self._unchecked[end.index] = end.digest
            return
        self._mark_verified(end.index, end.length)

    def _holds(self, index: int, digest: bytes) -> bool:
        """Whether the file holds chunk ``index`` with this BLAKE3, read back (on the writer
        thread: nothing writes to it meanwhile). A chain re-linked mid-way brings the chunk
        in flight by the old stream and the new at once: when both bring the right bytes,
        it needs no repair (the lab repaired it from the source, for every host after a
        moved one). Read a piece at a time: a chunk may be 256 MiB, a sink holds 8 MiB."""
        at = index * self.chunk_size
        end = min(at + self.chunk_size, self.size)
        hasher = blake3.blake3()
        try:
            while at < end:
                data = os.pread(self.fd, min(PIECE, end - at), at)
                if not data:
                    return False  # the file ends before the chunk does
                hasher.update(data)
                at += len(data)
        except OSError:
            return False
        return hasher.digest() == digest

    def _learned(self, learn: _Learn) -> None:
        """Manifest entries became known: chunks that came before them are checked now."""
        for index, digest in enumerate(learn.digests, learn.start):
            if index >= len(self.manifest) or self.manifest[index]:
                continue
            self.manifest[index] = digest
            came_with = self._unchecked.pop(index, None)
            if came_with is None or self._verified[index] or self.error is not None:
                continue
            if came_with == digest:
                length = min(self.chunk_size, self.size - index * self.chunk_size)
                self._mark_verified(index, length)
                continue
            self._damage(index)

    def _damage(self, index: int) -> None:
        self.corrupt_chunks += 1
        self._damaged[index] = self._damaged.get(index, 0) + 1
        with self._lock:
            self._whole_valid = False  # the file is read back and hashed at its commit
        log.info("transfer %s: chunk %d arrived damaged", self.transfer_id, index)

    def learn(self, start: int, digests: list[bytes], blake3: str | None) -> None:
        """The manifest entries from chunk ``start`` on, and (once known) the file's BLAKE3:
        checked in turn with what the writer has (status waits for it)."""
        if blake3:
            self.blake3 = blake3
        if digests:
            self._work.put(_Learn(start, list(digests)))

    def _mark_verified(self, index: int, length: int) -> None:
        self._verified[index] = 1
        self.verified_bytes += length
        # Once every chunk is here the commit comes next and syncs the file itself: a
        # journal then would only cost a small file's transfer two syncs and a thread.
        whole = self.verified_bytes >= self.size
        if not whole and time.monotonic() - self._journaled_at >= JOURNAL_INTERVAL:
            self._journaled_at = time.monotonic()
            self._journal_soon()

    def _journal_soon(self) -> None:
        """Have the journal thread sync the file and write the journal; the thread starts
        with the first one (runs on the writer thread, which ``close`` joins first)."""
        with self._lock:
            if self._closed:
                return
            if self._journaler is None:
                self._journaler = threading.Thread(
                    target=self._journal_loop, name=f"journal-{self.transfer_id}", daemon=True
                )
                self._journaler.start()
        self._journal_due.set()

    def _journal_loop(self) -> None:
        while True:
            self._journal_due.wait()
            self._journal_due.clear()
            if self._closed:
                return
            self.write_journal()

    def write_journal(self) -> None:
        """Record the chunks verified so far, once they are on disk (on the journal thread, or
        at the close): a resume takes them as they are.

        A failed sync fails the sink with its reason: Linux reports a write-back error once
        per open file, so a later fsync would succeed and a file with lost pages would be
        committed. Every chunk not known synced before is then missing again."""
        verified = bytes(self._verified)  # chunks written before the sync below: on disk
        try:
            if self.sync_fails():
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            os.fdatasync(self.fd)
        except OSError as exc:
            self._sync_failed(exc)
            return
        self._synced = verified
        try:
            Journal(self.size, self.chunk_size, self.blake3, verified).write(
                journal_path(self.temp)
            )
        except OSError as exc:
            log.warning(
                "transfer %s: could not write its resume journal: %s", self.transfer_id, exc
            )

    def _sync_failed(self, exc: OSError) -> None:
        self.error = f"could not write its file to disk: {exc.strerror or exc}"
        log.warning("transfer %s: %s", self.transfer_id, self.error)
        with self._lock:
            unsynced = [i for i, ok in enumerate(self._verified) if ok and not self._synced[i]]
            for index in unsynced:
                self._verified[index] = 0
            self.verified_bytes = sum(
                length
                for index, _, length in all_chunks(self.size, self.chunk_size)
                if self._verified[index]
            )

    # ---- status, commit, abort ----------------------------------------------------------

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
