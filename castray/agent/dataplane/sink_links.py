"""A sink's links: the forwarders that pass its streams on (``forwarding``), started with
each stream, moved to a new next receiver, stopped; and its streams ended from either side."""

from __future__ import annotations

import contextlib
import os
import socket
import time

from castray.agent.dataplane.forwarding import Forwarder, Incoming
from castray.agent.dataplane.sink_state import SinkState


class SinkLinks(SinkState):
    """A sink's links: its forwarders started, moved and stopped."""

    def _forward(self, incoming: Incoming, downstream: str, start: int, fd: int = -1) -> None:
        """Pass ``incoming`` on to ``downstream`` from frame ``start``, reading from ``fd``
        (the sink's own file descriptor if none)."""
        forwarder = Forwarder(
            self.transfer_id,
            self.secret,
            incoming,
            start,
            downstream,
            self.fd if fd < 0 else fd,
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
        with self._linking:
            self._relink(downstream)

    def _relink(self, downstream: str | None) -> None:
        self.last_contact = time.monotonic()
        self.downstream = downstream

    def redirect(self, downstream: str | None, from_chunk: int) -> bool:
        """A new next receiver now: every forwarder stops (an older stream not yet broken
        off would feed the old next receiver on), and a new one sends the latest stream's
        frames of chunks from ``from_chunk`` on to ``downstream`` (None: to no one); later
        streams go there too. A committed sink whose forwarder still sends
        redirects too, reading from that forwarder's descriptor (its own is closed). Whether
        a stream goes to ``downstream`` now or, when none has arrived yet, with the first
        (True for None); False once the sink is closed and passes nothing on."""
        with self._linking:  # a stream arriving meanwhile waits, then takes the new one
            return self._redirect(downstream, from_chunk)

    def _redirect(self, downstream: str | None, from_chunk: int) -> bool:
        self._relink(downstream)
        with self._lock:
            incoming = self._streams[-1] if self._streams else None
            old = incoming.forwarder if incoming is not None else None
            start = 0
            if incoming is not None:
                start = next(
                    (i for i, frame in enumerate(incoming.frames) if frame[0] >= from_chunk),
                    len(incoming.frames),
                )
            # A descriptor of our own, taken while the sink's is sure to be open: a commit
            # closes it right after ``close``, which marks the sink closed under this lock.
            closed = self._closed
            fd = os.dup(self.fd) if not closed and downstream is not None else None
            running = [f for f in self._forwarders if f.running]
        if closed and old is not None and downstream is not None:
            fd = old.dup_fd()
        for forwarder in running:
            forwarder.stop()
        if downstream is None:
            return True
        if fd is None:
            return False  # committed, and its last forwarder is done
        if incoming is None:
            os.close(fd)
            return True  # the first stream to arrive goes there (``relink``)
        try:
            self._forward(incoming, downstream, start, fd)
        finally:
            os.close(fd)
        return True

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
