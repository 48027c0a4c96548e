"""A stream sink on real sockets and a real file (no Ray): what it keeps when a stream breaks
in the middle of a chunk, and what it gives up."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import blake3

from castray.agent.streams import END, FRAME, StreamSink
from castray.chunks import plan_chunks

CHUNK = 64 * 1024


def _sink(tmp_path: Path, data: bytes) -> StreamSink:
    chunks = plan_chunks(len(data), CHUNK)
    sink = StreamSink(
        transfer_id="t" * 16,
        temp=tmp_path / "f.part",
        final=tmp_path / "f",
        size=len(data),
        chunk_size=CHUNK,
        manifest=[blake3.blake3(data[c.offset : c.offset + c.length]).digest() for c in chunks],
        secret=bytes(32),
        downstream=None,
        stall_timeout=5.0,
        connect_timeout=1.0,
    )
    sink.open()
    return sink


def _stream(sink: StreamSink, frames: list[tuple[int, int, bytes]], end: bool) -> None:
    """One incoming stream of ``frames`` (index, offset, bytes), cut short unless ``end``."""
    mine, theirs = socket.socketpair()
    receiver = threading.Thread(target=sink.receive, args=(theirs, False))
    receiver.start()
    with mine:
        for index, offset, payload in frames:
            mine.sendall(FRAME.pack(index, offset, CHUNK if not end else len(payload)))
            mine.sendall(payload)
        if end:
            mine.sendall(FRAME.pack(END, 0, 0))
    receiver.join(10)
    assert not receiver.is_alive()


def test_a_chunk_cut_off_mid_way_leaves_no_trace_in_the_whole_file_hash(tmp_path: Path) -> None:
    """The first stream brings chunk 0 and half of chunk 1, then breaks (its sender was cut
    off); a repair brings chunks 1 and 2 whole. The sink's whole-file BLAKE3, fed as bytes
    came in order, must be the file's: the half chunk must not count twice."""
    data = os.urandom(3 * CHUNK)
    sink = _sink(tmp_path, data)
    try:
        _stream(sink, [(0, 0, data[:CHUNK]), (1, CHUNK, data[CHUNK : CHUNK + CHUNK // 2])], False)
        status = sink.status(wait=5)
        assert status.broken is not None
        assert status.missing == (1, 2)
        _stream(
            sink, [(1, CHUNK, data[CHUNK : 2 * CHUNK]), (2, 2 * CHUNK, data[2 * CHUNK :])], True
        )
        status = sink.status(wait=5)
        assert status.ended and status.missing == ()
        assert sink.complete()
        assert sink.whole_digest() == blake3.blake3(data).hexdigest()
    finally:
        sink.close()


def test_severing_the_upstream_ends_a_stalled_stream_at_once(tmp_path: Path) -> None:
    """A sender that stops sending (cut off) holds the stream open; ``sever`` ends it now,
    not after the stall timeout, and the chunk buffers are all free again."""
    data = os.urandom(2 * CHUNK)
    sink = _sink(tmp_path, data)
    mine, theirs = socket.socketpair()
    receiver = threading.Thread(target=sink.receive, args=(theirs, False))
    receiver.start()
    try:
        mine.sendall(FRAME.pack(0, 0, CHUNK) + data[: CHUNK // 2])  # then nothing more
        sink.sever(upstream=True, downstream=False)
        receiver.join(3)
        assert not receiver.is_alive(), "the stalled stream did not end when severed"
        status = sink.status(wait=2)
        assert status.broken is not None and status.missing == (0, 1)
    finally:
        mine.close()
        sink.close()
