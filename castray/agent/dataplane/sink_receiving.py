"""A sink's receiving side: one thread per incoming stream reads its frames into the sink's
few reusable buffers and hashes each piece at once, while it is in the CPU's cache, into its
chunk's BLAKE3 and (while bytes come in order) the whole file's; the writer takes the pieces
from there (``sink_writing``).

``SO_RCVLOWAT`` makes a receive wait for a few hundred KiB when bytes trickle in, so a slow
link costs a pass of the loop per quarter MiB, not per packet.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import time

import blake3

from castray.agent.dataplane.forwarding import Incoming
from castray.agent.dataplane.sink_state import ChunkEnd, Piece, SinkState
from castray.agent.dataplane.wire import END, FRAME, StreamError, reason_of, recv_exact

LOWAT = 256 * 1024
"""A receive waits for this many bytes (or the rest of its chunk): a trickle costs a pass of
the receiving loop per quarter MiB, not per packet."""
HAND_ON_AFTER = 0.02
"""Seconds a piece fills before what came of it goes to the writer, and so to the next
receiver's forwarder: a full 1 MiB buffer takes 84 ms on a 100 Mbit/s link, and every hop of
a chain added that to the bytes' way (the lab's 8 equal hosts took 1.35x a unicast). At
disk and loopback speed a buffer fills well before."""


class SinkReceiving(SinkState):
    """The receiving half of ``StreamSink`` (its state: ``SinkState``)."""

    def receive(self, conn: socket.socket, forward: bool) -> None:
        """Read one incoming stream to its end (runs on the connection's own thread); with
        ``forward``, a forwarder passes it on to this sink's downstream."""
        incoming = Incoming()
        with self._linking:  # the stream and its forwarder, with no redirect in between
            with self._lock:
                if self._closed:
                    conn.close()
                    return
                self._open_streams += 1
                self._stream_began = time.monotonic()
                self._conns.add(conn)
                self._streams.append(incoming)
                self.broken = None  # a new stream: what broke before is being made good
            if forward and self.downstream is not None:
                self._forward(incoming, self.downstream, 0)
        conn.settimeout(self.stall_timeout)
        clean = False
        try:
            header = memoryview(bytearray(FRAME.size))
            recv_exact(conn, header)
            # Only now: a first header that waited for LOWAT bytes came late on a slow link
            # (0.2 s at 10 Mbit/s), and so did the first byte a first pace runs from: the
            # lab's slow host had no pace at the first look.
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, LOWAT)
            while (frame := FRAME.unpack(header))[0] != END:
                if self._first_byte_at is None:
                    self._first_byte_at = time.monotonic()
                self._receive_chunk(conn, incoming, *frame)
                recv_exact(conn, header)
            clean = True
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
                began = time.monotonic()
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
                        if time.monotonic() - began >= HAND_ON_AFTER:
                            break  # bytes trickle: what came goes on now
                except BaseException:
                    if filled:
                        self._work.put(
                            Piece(incoming, position, index, offset + got, buffer, filled)
                        )
                    else:
                        self._free.put(buffer)
                    raise
                self._work.put(Piece(incoming, position, index, offset + got, buffer, filled))
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
        self._work.put(ChunkEnd(incoming, position, index, length, intact, pieces, digest))
