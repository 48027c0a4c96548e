"""A stream sink on real sockets and a real file (no Ray): what it keeps when a stream breaks
in the middle of a chunk, what it gives up, and what its resume journal lets a later run take
up."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import blake3

from castray.agent import journal
from castray.agent.dataplane import END, FRAME, StreamSink
from castray.chunks import plan_chunks
from tests.harness.waiting import wait_for

CHUNK = 64 * 1024


def _digests(data: bytes) -> list[bytes]:
    chunks = plan_chunks(len(data), CHUNK)
    return [blake3.blake3(data[c.offset : c.offset + c.length]).digest() for c in chunks]


def _sink(
    tmp_path: Path,
    data: bytes,
    resume: bool = False,
    whole: str | None = None,
    fetched: bool = False,
) -> StreamSink:
    """``fetched``: the file is still being fetched at its source, nothing of its manifest
    is known yet."""
    digests = _digests(data)
    sink = StreamSink(
        transfer_id="t" * 16,
        temp=tmp_path / "f.part",
        final=tmp_path / "f",
        size=len(data),
        chunk_size=CHUNK,
        manifest=[b""] * len(digests) if fetched else digests,
        secret=bytes(32),
        downstream=None,
        stall_timeout=5.0,
        connect_timeout=1.0,
        blake3="" if fetched else whole or blake3.blake3(data).hexdigest(),
    )
    sink.open(resume)
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


def test_a_resumed_sink_takes_up_the_journaled_chunks_and_lacks_only_the_rest(
    tmp_path: Path,
) -> None:
    """A run receives chunks 0 and 2 of 4, then is stopped (its chunks journaled); a resumed
    sink of the same transfer has them, lacks 1 and 3 only, and completes with just those."""
    data = os.urandom(4 * CHUNK)
    first = _sink(tmp_path, data)
    _stream(first, [(0, 0, data[:CHUNK]), (2, 2 * CHUNK, data[2 * CHUNK : 3 * CHUNK])], True)
    first.close(journal=True)
    assert journal.journal_path(first.temp).exists()

    resumed = _sink(tmp_path, data, resume=True)
    try:
        assert resumed.resumed_bytes == 2 * CHUNK
        status = resumed.status(wait=5)
        assert status.ended and status.missing == (1, 3), "a resumed sink starts ended"
        _stream(
            resumed,
            [(1, CHUNK, data[CHUNK : 2 * CHUNK]), (3, 3 * CHUNK, data[3 * CHUNK :])],
            True,
        )
        assert resumed.status(wait=5).missing == ()
        assert resumed.complete()
        assert resumed.whole_digest() == blake3.blake3(data).hexdigest()
    finally:
        resumed.close()


def test_a_file_that_arrives_whole_is_not_journaled_and_one_still_coming_is(
    tmp_path: Path,
) -> None:
    """Once every chunk is verified the commit syncs the file itself: a small file's sink
    writes no journal and starts no journal thread. A sink with chunks still to come
    journals its first verified chunk at once (a resume then takes it up)."""
    data = os.urandom(CHUNK)
    (tmp_path / "whole").mkdir()
    whole = _sink(tmp_path / "whole", data)
    try:
        _stream(whole, [(0, 0, data)], True)
        assert whole.status(wait=5).ended and whole.complete()
        assert not journal.journal_path(whole.temp).exists()
        assert not [t for t in threading.enumerate() if t.name == f"journal-{whole.transfer_id}"]
    finally:
        whole.close()

    data = os.urandom(2 * CHUNK)
    partial = _sink(tmp_path, data)
    try:
        _stream(partial, [(0, 0, data[:CHUNK])], False)
        path = journal.journal_path(partial.temp)
        wait_for(path.exists, 5, "the journal of the first verified chunk")
        kept = journal.Journal.read(path)
        assert kept is not None and list(kept.verified) == [1, 0]
    finally:
        partial.close()


def test_a_journal_of_another_file_is_not_taken_up(tmp_path: Path) -> None:
    """The source changed between the runs (another BLAKE3): nothing of the old partial file
    counts, every chunk is missing, and the stale journal is gone."""
    data = os.urandom(2 * CHUNK)
    first = _sink(tmp_path, data)
    _stream(first, [(0, 0, data[:CHUNK])], True)
    first.close(journal=True)

    resumed = _sink(tmp_path, data, resume=True, whole="0" * 64)
    try:
        assert resumed.resumed_bytes == 0
        assert resumed.status(wait=5).missing == (0, 1)
        assert not journal.journal_path(resumed.temp).exists()
    finally:
        resumed.close()


def test_the_start_sweep_keeps_journaled_partials_and_removes_the_rest(tmp_path: Path) -> None:
    """What an endpoint keeps when it starts: a partial file with a journal (resumable), not
    one without, not one past the retention, not a journal without its partial file."""
    data = os.urandom(CHUNK)

    def partial(name: str, journaled: bool, age: float = 0.0) -> Path:
        part = tmp_path / f".{name}.{'a' * 16}.part"
        part.write_bytes(data)
        if journaled:
            journal.Journal(len(data), CHUNK, "x", b"\x01").write(journal.journal_path(part))
        stamp = time.time() - age
        for path in (part, journal.journal_path(part)):
            if path.exists():
                os.utime(path, (stamp, stamp))
        return part

    kept = partial("kept", journaled=True)
    bare = partial("bare", journaled=False)
    old = partial("old", journaled=True, age=3600)
    stray = journal.journal_path(partial("stray", journaled=True))
    stray.with_name(stray.name.removesuffix(".resume") + ".part").unlink()

    assert journal.sweep(tmp_path, keep_for=600) == (1, 2)

    assert kept.exists() and journal.journal_path(kept).exists()
    assert not bare.exists()
    assert not old.exists() and not journal.journal_path(old).exists()
    assert not stray.exists()


def test_chunks_that_come_before_their_manifest_entries_are_checked_when_these_come(
    tmp_path: Path,
) -> None:
    """A file sent as its source fetches it: chunks arrive before their BLAKE3 is known. They
    are written and count as unchecked (not verified, not missing yet); once the entries come,
    the intact ones are verified and the damaged one is missing, to be sent again."""
    data = bytearray(os.urandom(3 * CHUNK))
    sink = _sink(tmp_path, bytes(data), fetched=True)
    digests = _digests(bytes(data))
    damaged = bytes(data[:CHUNK]) + bytes(CHUNK) + bytes(data[2 * CHUNK :])
    try:
        frames = [(i, i * CHUNK, damaged[i * CHUNK : (i + 1) * CHUNK]) for i in range(3)]
        _stream(sink, frames, True)
        status = sink.status(wait=5)
        assert status.ended and status.verified_bytes == 0 and status.corrupt_chunks == 0
        sink.learn(0, digests[:2], None)
        status = sink.status(wait=5)
        assert status.verified_bytes == CHUNK and status.missing == (1, 2)
        assert status.corrupt_chunks == 1 and status.damaged == ((1, 1),)
        sink.learn(2, digests[2:], blake3.blake3(bytes(data)).hexdigest())
        status = sink.status(wait=5)
        assert status.verified_bytes == 2 * CHUNK and status.missing == (1,)
        _stream(sink, [(1, CHUNK, bytes(data[CHUNK : 2 * CHUNK]))], True)
        assert sink.status(wait=5).missing == ()
        assert sink.complete()
        # The whole-file hash fed in order saw the damaged chunk: it is read back instead.
        assert sink.whole_digest() == blake3.blake3(bytes(data)).hexdigest()
    finally:
        sink.close()


def test_a_sink_says_when_its_open_stream_began(tmp_path: Path) -> None:
    """The run judges a pace only over a span one stream covered whole (a move's ripple
    starts new ones): the sink tells when the stream open now began, and none when none is."""
    sink = _sink(tmp_path, os.urandom(2 * CHUNK))
    assert sink.status().stream_began is None
    mine, theirs = socket.socketpair()
    before = time.monotonic()
    receiver = threading.Thread(target=sink.receive, args=(theirs, False))
    receiver.start()
    try:
        began = wait_for(lambda: sink.status().stream_began, 5, "the stream to open")
        assert before <= began <= time.monotonic()
        sink.sever(upstream=True, downstream=False)
        receiver.join(3)
        assert not receiver.is_alive()
        assert sink.status().stream_began is None
    finally:
        mine.close()
        sink.close()


def test_a_sink_says_when_its_first_byte_came(tmp_path: Path) -> None:
    """A first pace is taken from the sink's first byte, on its own clock: none before a
    byte came, and the first one's time ever after (a later stream does not move it)."""
    data = os.urandom(2 * CHUNK)
    sink = _sink(tmp_path, data)
    try:
        assert sink.status().first_byte_at is None
        before = time.monotonic()
        _stream(sink, [(0, 0, data[:CHUNK])], False)
        first = sink.status().first_byte_at
        assert first is not None and before <= first <= time.monotonic()
        _stream(sink, [(1, CHUNK, data[CHUNK:])], True)
        assert sink.status(wait=5).first_byte_at == first
    finally:
        sink.close()
