"""Findings (#22, data plane), on a real data port and real sockets (no Ray): a frame must
sit where its chunk is, the port's accept loop outlives whatever one connection does, and
refusals are logged with who and why."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from castray.agent import dataplane as streams
from castray.agent.dataplane import END, FRAME, DataPort, StreamSink, hello
from castray.agent.transports.feeds import Exporter, StreamFeed
from castray.chunks import plan_chunks
from tests.harness.sinks import open_sink
from tests.harness.waiting import wait_for

CHUNK = 64 * 1024
SECRET = os.urandom(32)
TID = "a" * 16


@pytest.fixture
def port() -> Iterator[DataPort]:
    data_port = DataPort("127.0.0.1", None, hello_timeout=1.0)
    yield data_port
    data_port.close()


def _sink(tmp_path: Path, data: bytes) -> StreamSink:
    return open_sink(tmp_path, data, CHUNK, TID, SECRET, stall_timeout=5.0, connect_timeout=1.0)


def _send(port: DataPort, frames: list[tuple[int, int, bytes]], end: bool = True) -> None:
    """One stream of ``frames``; the port may drop it half-way (that is what some tests want)."""
    with (
        contextlib.suppress(OSError),
        streams.connect(port.address, 2) as sock,
    ):
        sock.sendall(hello(TID, SECRET, 0))
        for index, offset, payload in frames:
            sock.sendall(FRAME.pack(index, offset, len(payload)) + payload)
        if end:
            sock.sendall(FRAME.pack(END, 0, 0))
        sock.shutdown(socket.SHUT_WR)
        with sock.makefile("rb") as closed:
            closed.read()  # until the port closes its end


def test_a_frame_far_from_its_chunk_is_refused_and_the_real_stream_commits_the_real_bytes(
    tmp_path: Path, port: DataPort
) -> None:
    """Chunk 0 with its right bytes, sent at offset 2^40 ahead of the real stream, must not
    be taken: before, it was committed as verified, the file 1 TiB with its first MiB zero."""
    data = os.urandom(3 * CHUNK + 100)
    sink = _sink(tmp_path, data)
    port.register(sink)
    try:
        _send(port, [(0, 2**40, data[:CHUNK])])
        status = sink.status(wait=5)
        assert status.broken is not None and "not where that chunk is" in status.broken
        assert status.missing == (0, 1, 2, 3)
        assert sink.temp.stat().st_size < 2**30

        _send(
            port,
            [
                (c.index, c.offset, data[c.offset : c.offset + c.length])
                for c in plan_chunks(len(data), CHUNK)
            ],
        )
        status = sink.status(wait=5)
        assert status.ended and status.missing == ()
        assert sink.whole_digest() == blake3.blake3(data).hexdigest()
        assert sink.temp.read_bytes() == data
    finally:
        port.unregister(TID)
        sink.close()


@pytest.mark.parametrize(
    ("index", "offset", "length"),
    [(1, 0, CHUNK), (0, 0, CHUNK - 1), (3, 3 * CHUNK, CHUNK), (7, 7 * CHUNK, 100)],
    ids=["wrong offset", "short chunk", "last chunk too long", "no such chunk"],
)
def test_a_frame_that_is_not_its_chunk_drops_the_stream(
    tmp_path: Path, port: DataPort, index: int, offset: int, length: int
) -> None:
    data = os.urandom(3 * CHUNK + 100)
    sink = _sink(tmp_path, data)
    port.register(sink)
    try:
        _send(port, [(index, offset, os.urandom(length))], end=False)
        status = sink.status(wait=5)
        assert status.broken is not None, status
        assert status.verified_bytes == 0
    finally:
        port.unregister(TID)
        sink.close()


def test_the_accept_loop_survives_a_thread_that_cannot_start(
    port: DataPort, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    original = threading.Thread.start
    failures = iter([True])

    def start(self: threading.Thread) -> None:
        if self.name == "data-conn" and next(failures, False):
            raise RuntimeError("can't start new thread")
        original(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    with caplog.at_level(logging.WARNING, logger="castray.agent.dataplane"):
        with socket.create_connection(("127.0.0.1", int(port.address.rsplit(":", 1)[1])), 2) as s:
            s.settimeout(2)
            assert s.recv(1) == b""  # closed at once
        streams.probe(port.address, 2)  # the port still answers
    assert "no thread to serve it" in caplog.text


def test_a_flood_of_silent_connections_is_capped_and_logged_and_others_still_get_in(
    port: DataPort, caplog: pytest.LogCaptureFixture
) -> None:
    """One host opens connections that never say hello: past its share they are closed at
    once, and an endpoint at another address still gets in."""
    host, _, number = port.address.rpartition(":")
    silent = []
    with caplog.at_level(logging.WARNING, logger="castray.agent.dataplane"):
        try:
            for _ in range(streams.MAX_GREETING_PER_PEER + 20):
                silent.append(socket.create_connection((host, int(number)), 2, ("127.0.0.5", 0)))
            wait_for(
                lambda: "too many connections waiting for their hello" in caplog.text,
                10,
                "the connections past the share to be refused",
            )
            streams.probe(port.address, 2)  # from 127.0.0.1: another host
            wait_for(
                lambda: all(_closed_by_peer(sock) for sock in silent),
                10,
                "the silent connections to be dropped after the hello timeout",
            )
        finally:
            for sock in silent:
                sock.close()
    refusals = [r for r in caplog.records if "refused a connection from 127.0.0.5:" in r.message]
    assert 0 < len(refusals) <= streams.REFUSALS_LOGGED


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_a_wrong_secret_is_refused_with_the_peers_address(
    tmp_path: Path, port: DataPort, caplog: pytest.LogCaptureFixture
) -> None:
    data = os.urandom(CHUNK)
    sink = _sink(tmp_path, data)
    port.register(sink)
    try:
        with (
            caplog.at_level(logging.WARNING, logger="castray.agent.dataplane"),
            streams.connect(port.address, 2) as sock,
        ):
            sock.sendall(hello(TID, bytes(32), 0))
            sock.settimeout(2)
            assert sock.recv(1) == b""
        assert f"{port.address} refused a connection from 127.0.0.1:" in caplog.text
        assert "did not present the secret" in caplog.text
        assert sink.status().received_bytes == 0
    finally:
        port.unregister(TID)
        sink.close()


def test_a_closed_port_says_it_is_dead(port: DataPort) -> None:
    port.close()
    wait_for(lambda: port.dead is not None, 5, "the port to know it is dead")
    with pytest.raises(streams.StreamError):
        streams.probe(port.address, 1)


def test_the_stream_between_clusters_takes_only_the_connection_with_its_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before, the importing agent took the first connection, whoever made it: a local user
    who connected first injected the digests and the bytes."""
    feed = StreamFeed.listen("127.0.0.1", TID, "source-endpoint", timeout=10)
    host, number = feed.address
    impostors = [socket.create_connection((host, number), 2) for _ in range(2)]
    impostors[0].sendall(hello(TID, bytes(32), 0))  # the right transfer, a wrong secret
    impostors[1].sendall(b"x" * 100)  # not even a hello
    exporter = Exporter(TID, host, number, feed.secret, 5)
    try:
        with caplog.at_level(logging.WARNING, logger="castray.agent.transports.feeds"):
            conn = feed._connection()
        exporter._sock.sendall(b"payload")
        assert conn.recv(7) == b"payload"
        assert caplog.text.count("did not open with this transfer's secret") == 2
    finally:
        exporter.abort()
        feed.abort()
        for sock in impostors:
            sock.close()
