"""Streams sent from an endpoint: a file, or chunks of it, to another endpoint's data port
with ``sendfile`` (the bytes never enter Python), and the stop that ends them at once."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from castray import ratelimit
from castray.agent.dataplane.wire import END, FORWARD, FRAME, StreamError, connect, hello, reason_of

FOLLOW_STEP = 1024 * 1024
"""Bytes of a file still being fetched sent at a time, each once the fetch has them (a
fetch writes and tells its bytes a mebibyte at a time: ``castray.sources.fetch.STEP``)."""


class Stopper:
    """Stops one transfer's outgoing streams at once, a stream blocked on a full socket too
    (its receiver is gone or cut off); or moves one of them to another receiver."""

    def __init__(self) -> None:
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._socks: dict[socket.socket, str] = {}
        """Each open stream's socket, and where it goes."""
        self._moves: dict[str, tuple[str, int]] = {}
        self.stopped_at: float | None = None
        self.sent = 0
        """Bytes the transfer's streams from here sent so far, whole chunks or not."""

    def count(self, sent: int) -> None:
        with self._lock:
            self.sent += sent

    def is_set(self) -> bool:
        return self._stopped.is_set()

    def set(self) -> None:
        with self._lock:
            self.stopped_at = self.stopped_at or time.monotonic()
            self._stopped.set()
            socks = list(self._socks)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cut(self, target: str) -> None:
        """End the streams going to ``target`` at once (its receiver is cut off or dead);
        the transfer's other streams from here go on, and later ones may start."""
        with self._lock:
            socks = [s for s, where in self._socks.items() if where == target]
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def move(self, target: str, to: str, from_chunk: int) -> bool:
        """Move the stream now going to ``target`` over to ``to``, from the chunk
        ``from_chunk`` of its list on: its socket is shut at once (what its receiver got of
        the chunk under way is lost to it). False when no stream goes to ``target``."""
        with self._lock:
            socks = [s for s, where in self._socks.items() if where == target]
            if socks:
                self._moves[target] = (to, from_chunk)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        return bool(socks)

    def moved(self, target: str) -> tuple[str, int] | None:
        with self._lock:
            return self._moves.pop(target, None)

    @contextlib.contextmanager
    def watching(self, sock: socket.socket, target: str = "") -> Iterator[None]:
        with self._lock:
            self._socks[sock] = target
        try:
            if self.is_set():
                raise StreamError("stopped")
            yield
        finally:
            with self._lock:
                self._socks.pop(sock, None)
                self._moves.pop(target, None)  # a move that came as the stream ended


class _Moved(Exception):
    def __init__(self, to: str, from_chunk: int, sent: int) -> None:
        self.to, self.from_chunk, self.sent = to, from_chunk, sent


def send(
    file: BinaryIO,
    target: str,
    transfer_id: str,
    secret: bytes,
    chunks: list[tuple[int, int, int]],
    forward: bool,
    connect_timeout: float,
    stall_timeout: float,
    stop: Stopper,
    limits: ratelimit.Buckets = (),
    check: Callable[[], None] | None = None,
    ready: Callable[[int], None] | None = None,
) -> int:
    """Stream ``chunks`` (index, offset, length) of ``file`` to ``target`` with ``sendfile``
    (the bytes never enter Python), within ``limits``; ``check`` runs after each chunk (the
    source file unchanged, say) and may raise; ``ready(end)`` before each ``FOLLOW_STEP`` of
    a chunk, returns once the file holds the bytes before ``end`` (a file still being
    fetched: its bytes are sent as they come, not once a whole chunk is in). A move
    (``Stopper.move``) carries on to another receiver from the chunk it names. The bytes
    sent, whole chunks."""
    stream = _Stream(
        file,
        transfer_id,
        secret,
        forward,
        connect_timeout,
        stall_timeout,
        stop,
        limits,
        check,
        ready,
    )
    sent_total = 0
    while True:
        try:
            return sent_total + stream.send_to(target, chunks)
        except _Moved as moved:
            sent_total += moved.sent
            target = moved.to
            chunks = [c for c in chunks if c[0] >= moved.from_chunk]


@dataclass(frozen=True)
class _Stream:
    """What every connection of one outgoing stream shares (a move opens another)."""

    file: BinaryIO
    transfer_id: str
    secret: bytes
    forward: bool
    connect_timeout: float
    stall_timeout: float
    stop: Stopper
    limits: ratelimit.Buckets
    check: Callable[[], None] | None
    ready: Callable[[int], None] | None

    def send_to(self, target: str, chunks: list[tuple[int, int, int]]) -> int:
        """One connection's part: ``chunks`` to ``target``; raises ``_Moved`` on a move."""
        stop = self.stop
        sent_total = 0
        with connect(target, self.connect_timeout) as sock, stop.watching(sock, target):
            sock.settimeout(self.stall_timeout)
            try:
                sock.sendall(hello(self.transfer_id, self.secret, FORWARD if self.forward else 0))
                for index, offset, length in chunks:
                    if stop.is_set():
                        raise StreamError("stopped")
                    sock.sendall(FRAME.pack(index, offset, length))
                    sent = 0
                    while sent < length:
                        piece = ratelimit.piece_size(self.limits, length - sent)
                        if self.ready is not None:
                            piece = min(piece, FOLLOW_STEP - sent % FOLLOW_STEP)
                            self.ready(offset + sent + piece)
                        ratelimit.take(self.limits, piece, stop.is_set)
                        n = sock.sendfile(self.file, offset + sent, piece)
                        if n == 0:
                            raise StreamError(f"the file ended before byte {offset + length}")
                        sent += n
                        stop.count(n)
                    if self.check is not None:
                        self.check()
                    sent_total += length
                sock.sendall(FRAME.pack(END, 0, 0))
            except OSError as exc:
                if stop.is_set():
                    raise StreamError("stopped") from exc
                if (move := stop.moved(target)) is not None:
                    raise _Moved(*move, sent_total) from exc
                raise StreamError(f"the stream to {target} broke: {reason_of(exc)}") from exc
        return sent_total
