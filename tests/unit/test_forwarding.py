"""Passing a stream on at the next receiver's own pace (no Ray: real data ports, sockets and
files): a slow next receiver does not slow the one before it, and a stream can be redirected
to another receiver mid-way, from the chunk it lacks."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from castray import ratelimit
from castray.agent.dataplane import DataPort, Stopper, StreamSink, send
from castray.chunks import plan_chunks
from tests.harness.sinks import open_sink
from tests.harness.waiting import wait_for

CHUNK = 256 * 1024
SECRET = os.urandom(32)
TID = "f" * 16


@pytest.fixture
def ports() -> Iterator[list[DataPort]]:
    made = [DataPort("127.0.0.1", None, hello_timeout=2.0) for _ in range(3)]
    yield made
    for port in made:
        port.close()


def _sink(folder: Path, data: bytes, downstream: str | None, ingress: int = 0) -> StreamSink:
    folder.mkdir()
    bucket = ratelimit.bucket_for(ingress)
    return open_sink(folder, data, CHUNK, TID, SECRET, downstream=downstream, ingress=bucket)


def _register(ports: list[DataPort], *sinks: StreamSink) -> None:
    """Each sink on its own port, in order: the first on the first port, and so on."""
    for port, sink in zip(ports, sinks, strict=False):
        port.register(sink)


def _send_file(tmp_path: Path, data: bytes, target: str) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    chunks = [(c.index, c.offset, c.length) for c in plan_chunks(len(data), CHUNK)]
    with source.open("rb") as file:
        send(file, target, TID, SECRET, chunks, True, 2.0, 20.0, Stopper())


def test_a_slow_next_receiver_does_not_slow_the_one_before_it(
    tmp_path: Path, ports: list[DataPort]
) -> None:
    # 16 MiB at 2 MiB/s: loopback's socket buffers hold up to about 10 MiB of it, so the
    # slow one takes 3 s at the least, and the fast one a fraction of a second.
    data = os.urandom(64 * CHUNK)
    slow = _sink(tmp_path / "slow", data, None, ingress=2 * 1024 * 1024)
    fast = _sink(tmp_path / "fast", data, ports[1].address)
    _register(ports, fast, slow)
    try:
        started = time.monotonic()
        _send_file(tmp_path, data, ports[0].address)
        wait_for(lambda: fast.status().ended, 10, "the first receiver to have it all")
        fast_seconds = time.monotonic() - started
        assert fast.complete() and fast.whole_digest() == blake3.blake3(data).hexdigest()
        wait_for(lambda: slow.status().ended, 30, "the slow one to have it all")
        slow_seconds = time.monotonic() - started
    finally:
        fast.close()
        slow.close()
    assert slow.complete() and slow.whole_digest() == blake3.blake3(data).hexdigest()
    assert fast_seconds < slow_seconds / 2, (fast_seconds, slow_seconds)
    assert fast.forwarded_bytes == len(data)


def test_a_stream_redirected_mid_way_sends_the_new_receiver_what_it_lacks(
    tmp_path: Path, ports: list[DataPort]
) -> None:
    data = os.urandom(16 * CHUNK)
    first = _sink(tmp_path / "first", data, ports[1].address, ingress=2 * 1024 * 1024)
    second = _sink(tmp_path / "second", data, None)
    third = _sink(tmp_path / "third", data, None)
    _register(ports, first, second, third)
    try:
        sender = threading.Thread(target=_send_file, args=(tmp_path, data, ports[0].address))
        sender.start()
        wait_for(lambda: second.status().verified_bytes >= 4 * CHUNK, 10, "a few chunks on")
        from_chunk = second.status().verified_bytes // CHUNK
        first.redirect(ports[2].address, 0)  # the third lacks everything
        sender.join(30)
        wait_for(lambda: third.status().ended, 30, "the third to have the stream's end")
        wait_for(lambda: second.status().ended or second.status().broken, 10, "second settled")
    finally:
        for sink in (first, second, third):
            sink.close()
    assert third.complete() and third.whole_digest() == blake3.blake3(data).hexdigest()
    assert from_chunk >= 4
    assert not second.complete(), "the second was cut off by the redirect"


def test_a_committed_sink_still_passing_a_stream_on_can_redirect_it(
    tmp_path: Path, ports: list[DataPort]
) -> None:
    """The chain's head had it all and committed while a slow next one was still fed from
    its file: that slow one is moved to the end, and the head's stream redirected to the one
    after it. The head's own descriptor is closed; the redirect reads from its forwarder's.
    Once it passes nothing on, a redirect says it could not."""
    data = os.urandom(32 * CHUNK)
    head = _sink(tmp_path / "head", data, ports[1].address)
    slow = _sink(tmp_path / "slow", data, None, ingress=1024 * 1024)
    after = _sink(tmp_path / "after", data, None)
    _register(ports, head, slow, after)
    try:
        _send_file(tmp_path, data, ports[0].address)
        wait_for(lambda: head.status().ended, 10, "the head to have it all")
        assert head.complete()
        head.close(forwarding=True)  # a commit: the sink's descriptor closes, its forwarder not
        assert head.forwarding, "the slow one is still being fed"
        assert head.redirect(ports[2].address, 0)
        wait_for(lambda: after.status().ended, 30, "the one after to have it all")
        assert after.complete() and after.whole_digest() == blake3.blake3(data).hexdigest()
        wait_for(lambda: not head.forwarding, 30, "the head to pass nothing on")
        assert not head.redirect(ports[1].address, 0), "nothing is passed on to redirect"
        assert head.redirect(None, 0), "passing on to no one is always done"
    finally:
        for sink in (head, slow, after):
            sink.close()
    assert not slow.complete(), "the slow one's stream was moved away from it"


def test_the_sources_stream_moved_mid_way_goes_on_to_the_new_receiver(
    tmp_path: Path, ports: list[DataPort]
) -> None:
    """The chain's head moved to the end: the source's stream carries on to the next one
    from the chunk it names, and nothing is sent twice before it."""
    # 8 MiB sent at 2 MiB/s: the stream is still under way when the move comes (unlimited,
    # loopback's socket buffers took it all at once and the stream had ended).
    data = os.urandom(32 * CHUNK)
    limits = ratelimit.buckets(ratelimit.bucket_for(2 * 1024 * 1024))
    head = _sink(tmp_path / "head", data, None, ingress=1024 * 1024)
    after = _sink(tmp_path / "after", data, None)
    _register(ports, head, after)
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    chunks = [(c.index, c.offset, c.length) for c in plan_chunks(len(data), CHUNK)]
    stop = Stopper()
    sent: list[int] = []

    def run() -> None:
        with source.open("rb") as file:
            target = ports[0].address
            sent.append(send(file, target, TID, SECRET, chunks, True, 2.0, 20.0, stop, limits))

    try:
        sender = threading.Thread(target=run)
        sender.start()
        wait_for(lambda: head.status().verified_bytes >= 2 * CHUNK, 10, "a few chunks at the head")
        assert stop.move(ports[0].address, ports[1].address, 0)
        sender.join(30)
        wait_for(lambda: after.status().ended, 30, "the moved stream to end")
    finally:
        head.close()
        after.close()
    assert after.complete() and after.whole_digest() == blake3.blake3(data).hexdigest()
    assert not head.complete(), "the head's stream was cut by the move"
    assert not stop.move(ports[0].address, ports[1].address, 0), "no stream goes there now"
    assert sent and sent[0] >= len(data), sent


def test_two_streams_bringing_the_same_chunks_at_once_leave_no_wrong_byte(
    tmp_path: Path, ports: list[DataPort]
) -> None:
    """A chain re-linked mid-way can bring a chunk by two streams at once; one of them here
    carries damaged bytes in every chunk. A chunk counts as verified only if its bytes on
    disk are the right ones, and the file commits with the right BLAKE3 once what is missing
    came again."""
    data = os.urandom(16 * CHUNK)
    damaged = bytearray(data)
    for chunk in plan_chunks(len(data), CHUNK):
        damaged[chunk.offset + 100] ^= 0xFF
    sink = _sink(tmp_path / "both", data, None)
    ports[0].register(sink)
    right, wrong = tmp_path / "right.bin", tmp_path / "wrong.bin"
    right.write_bytes(data)
    wrong.write_bytes(bytes(damaged))
    chunks = [(c.index, c.offset, c.length) for c in plan_chunks(len(data), CHUNK)]

    def stream(path: Path, wanted: list[tuple[int, int, int]]) -> None:
        with path.open("rb") as file:
            send(file, ports[0].address, TID, SECRET, wanted, False, 2.0, 20.0, Stopper())

    try:
        both = [threading.Thread(target=stream, args=(p, chunks)) for p in (right, wrong)]
        for thread in both:
            thread.start()
        for thread in both:
            thread.join(30)
        settled = wait_for(lambda: (s := sink.status(1.0)).ended and s, 10, "both streams in")
        on_disk = sink.temp.read_bytes()
        for index, offset, length in chunks:
            if index not in settled.missing:
                assert on_disk[offset : offset + length] == data[offset : offset + length], index
        stream(right, [c for c in chunks if c[0] in settled.missing])
        wait_for(lambda: sink.complete() or None, 10, "the missing chunks to come again")
        assert sink.whole_digest() == blake3.blake3(data).hexdigest()
        assert sink.temp.read_bytes() == data
    finally:
        sink.close()


def test_two_streams_bringing_the_same_right_chunks_at_once_need_no_repair(
    tmp_path: Path, ports: list[DataPort]
) -> None:
    """A chain re-linked mid-way brings the chunk in flight by the old stream and the new at
    once, their pieces written among each other's. When both bring the right bytes, the
    chunk is verified as it is (read back), not left missing for a repair from the source.
    Two streams of the same file, at the same pace, a moment apart: every chunk of 2 MiB
    (two pieces) is written by both in turn."""
    chunk = 2 * 1024 * 1024
    data = os.urandom(4 * chunk)
    (tmp_path / "both").mkdir()
    sink = open_sink(tmp_path / "both", data, chunk, TID, SECRET)
    ports[0].register(sink)
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    chunks = [(c.index, c.offset, c.length) for c in plan_chunks(len(data), chunk)]

    def stream() -> None:
        limits = ratelimit.buckets(ratelimit.bucket_for(4 * 1024 * 1024))
        with source.open("rb") as file:
            send(file, ports[0].address, TID, SECRET, chunks, False, 2.0, 20.0, Stopper(), limits)

    try:
        first, second = threading.Thread(target=stream), threading.Thread(target=stream)
        first.start()
        wait_for(lambda: sink.status().received_bytes >= 512 * 1024, 10, "the first stream")
        second.start()
        first.join(30)
        second.join(30)
        settled = wait_for(lambda: (s := sink.status(1.0)).ended and s, 10, "both streams in")
        assert settled.missing == (), "every chunk came right, by either stream"
        assert sink.complete() and sink.whole_digest() == blake3.blake3(data).hexdigest()
    finally:
        sink.close()


def test_a_redirect_before_any_stream_arrived_sends_the_first_one_there(
    tmp_path: Path, ports: list[DataPort]
) -> None:
    """A move can reach a sink between two streams (its feeder was moved a moment ago): it is
    done, so it says so, and the stream that arrives next goes to the new receiver. Had it
    said no, the agent would leave the slow one where it is while this passes everything on
    past it."""
    data = os.urandom(8 * CHUNK)
    first = _sink(tmp_path / "first", data, ports[1].address)
    skipped = _sink(tmp_path / "skipped", data, None)
    after = _sink(tmp_path / "after", data, None)
    _register(ports, first, skipped, after)
    try:
        assert first.redirect(ports[2].address, 0), "the first stream to arrive goes there"
        _send_file(tmp_path, data, ports[0].address)
        wait_for(lambda: after.status().ended, 10, "the one after to have the stream")
        assert after.complete() and after.whole_digest() == blake3.blake3(data).hexdigest()
        assert skipped.status().received_bytes == 0, "nothing went to the one moved away"
    finally:
        for sink in (first, skipped, after):
            sink.close()


def test_a_redirect_stops_an_older_stream_passed_on_too(
    tmp_path: Path, ports: list[DataPort]
) -> None:
    """A sink can have two streams coming in at once (its feeder changed, and the old stream
    has not broken off yet): a redirect stops both forwarders. Before, the older one fed the
    old next receiver on, and in the lab a slow host moved to the chain's end kept feeding
    the one after it."""
    data = os.urandom(16 * CHUNK)
    middle = _sink(tmp_path / "middle", data, ports[1].address)
    old_next = _sink(tmp_path / "old-next", data, None)
    _register(ports, middle, old_next)
    chunks = [(c.index, c.offset, c.length) for c in plan_chunks(len(data), CHUNK)]
    source = tmp_path / "source.bin"
    source.write_bytes(data)

    def trickle(part: list[tuple[int, int, int]]) -> None:
        bucket = ratelimit.bucket_for(1024 * 1024)
        assert bucket is not None
        with source.open("rb") as file:
            send(file, ports[0].address, TID, SECRET, part, True, 2.0, 20.0, Stopper(), (bucket,))

    senders = [threading.Thread(target=trickle, args=(part,)) for part in (chunks[:8], chunks[8:])]
    try:
        senders[0].start()
        wait_for(lambda: middle.status().received_bytes >= 2 * CHUNK, 10, "the first stream on")
        first_began = middle.status().stream_began
        senders[1].start()
        wait_for(lambda: middle.status().stream_began != first_began, 10, "a second stream")
        assert middle.redirect(None, 0)
        for sender in senders:
            sender.join(30)
        wait_for(lambda: middle.status().ended and not middle.forwarding, 30, "both streams in")
        assert middle.complete(), "the sink's own copy goes on"
        passed_on = old_next.status().received_bytes
    finally:
        for sink in (middle, old_next):
            sink.close()
    assert passed_on < 8 * CHUNK, f"the older stream went on to the old next one: {passed_on}"
