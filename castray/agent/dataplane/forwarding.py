"""Passing a stream on to the next receiver, at that receiver's own pace.

A sink writes what arrives into its file (the page cache) as it comes, and each stream it
passes on is sent by a forwarder thread of its own, with ``sendfile`` from that file: while
the next receiver keeps up, bytes go on as soon as they are written (cut-through); when it
falls behind, the forwarder sends from the file at the pace the next receiver takes
(store-and-forward), and the sink goes on receiving at its own. So a slow receiver never
slows the one before it, and memory stays what it was: the page cache holds what waits.

A forwarder sends the frames of one incoming stream, in the order they came, from a given
one on (a receiver put later in the chain is sent what it lacks); frames that broke off
upstream end the stream downstream as broken, so the next receiver has what is missing sent
again, as it would have with a stream that broke anywhere.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from dataclasses import dataclass, field

from castray.agent.dataplane.wire import (
    END,
    FORWARD,
    FRAME,
    StreamError,
    connect,
    hello,
    reason_of,
)

log = logging.getLogger(__name__)

SEND_PIECE = 4 * 1024 * 1024
"""Bytes a forwarder hands ``sendfile`` at a time, at most."""


@dataclass
class Incoming:
    """One stream arriving at a sink: its frames in arrival order (index, offset, length),
    how many bytes of each arrived and how many are written to the sink's file (what a
    forwarder may send), and how it ended."""

    frames: list[tuple[int, int, int]] = field(default_factory=list)
    received: list[int] = field(default_factory=list)
    written: list[int] = field(default_factory=list)
    ended: bool = False
    """Its end frame came: nothing more will."""
    broken: bool = False
    """It broke off: what it did not bring will not come on it."""
    forwarder: Forwarder | None = None


class Forwarder:
    """Sends one incoming stream's frames, from frame ``start`` on, to ``downstream``, reading
    the bytes from the sink's file as they are written there."""

    def __init__(
        self,
        transfer_id: str,
        secret: bytes,
        incoming: Incoming,
        start: int,
        downstream: str,
        fd: int,
        changed: threading.Condition,
        timeout: float,
        connect_timeout: float,
    ) -> None:
        self.downstream = downstream
        self.sent = 0
        self.error: str | None = None
        self._transfer_id = transfer_id
        self._secret = secret
        self._incoming = incoming
        self._position = start
        self._fd = os.dup(fd)  # its own: the sink's may close (a commit) while this sends
        self._fd_lock = threading.Lock()
        self._changed = changed
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._stopped = False
        self._sock: socket.socket | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"forward-{transfer_id}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """End the stream downstream now, as broken (the next receiver repairs what it
        lacks); returns at once."""
        with self._changed:
            self._stopped = True
            self._changed.notify_all()
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def dup_fd(self) -> int | None:
        """A descriptor of its own for the file this sends from, None once this ended: a
        committed sink closed its own, and a redirect of what it still passes on needs one."""
        with self._fd_lock:
            return os.dup(self._fd) if self._fd >= 0 else None

    def _run(self) -> None:
        try:
            self._sock = connect(self.downstream, self._connect_timeout)
            self._sock.settimeout(self._timeout)
            self._sock.sendall(hello(self._transfer_id, self._secret, FORWARD))
            if self._stopped:
                return
            self._pass_on(self._sock)
        except (OSError, StreamError) as exc:
            if not self._stopped:
                self.error = f"the next receiver stopped taking data: {reason_of(exc)}"
                log.info("transfer %s: %s", self._transfer_id, self.error)
        finally:
            if self._sock is not None:
                self._sock.close()
            with self._fd_lock:
                os.close(self._fd)
                self._fd = -1

    def _pass_on(self, sock: socket.socket) -> None:
        """Every frame from the start one, then the end frame once the stream ended cleanly;
        a stream that broke (or a stop) ends here without one."""
        incoming = self._incoming
        while True:
            with self._changed:
                self._changed.wait_for(
                    lambda: (
                        self._stopped
                        or self._position < len(incoming.frames)
                        or incoming.ended
                        or incoming.broken
                    )
                )
                if self._stopped:
                    return
                if self._position == len(incoming.frames):
                    if incoming.ended:
                        sock.sendall(FRAME.pack(END, 0, 0))
                    return  # broken upstream: the next receiver sees it broken too
                index, offset, length = incoming.frames[self._position]
            sock.sendall(FRAME.pack(index, offset, length))
            if not self._send_frame(sock, offset, length):
                return
            self._position += 1

    def _send_frame(self, sock: socket.socket, offset: int, length: int) -> bool:
        """The frame's bytes as they are written; False when they never will be."""
        done = 0
        while done < length:
            ready = self._ready(done)
            if ready <= 0:
                return False  # stopped, or the frame broke off upstream
            while ready > 0:
                n = sock.sendfile(_File(self._fd), offset + done, min(ready, SEND_PIECE))
                if n == 0:
                    raise StreamError("the file ended before the frame did")
                done += n
                ready -= n
                self.sent += n
        return True

    def _ready(self, done: int) -> int:
        """Bytes of the current frame written past ``done``, once there are some; 0 if none
        will come (a stop, or a stream that broke off before them, once what came of it is
        written)."""
        incoming, position = self._incoming, self._position

        def moved() -> bool:
            exhausted = (
                incoming.broken and incoming.written[position] == incoming.received[position]
            )
            return self._stopped or incoming.written[position] > done or exhausted

        with self._changed:
            self._changed.wait_for(moved)
            return 0 if self._stopped else incoming.written[position] - done


class _File:
    """A raw descriptor as ``socket.sendfile`` takes a file (it only asks ``fileno``; the
    offset it is given is the one read from, the descriptor's own is never moved)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def seek(self, offset: int) -> int:
        return offset

    def read(self, size: int = -1) -> bytes:  # never called: sendfile is used
        raise NotImplementedError
