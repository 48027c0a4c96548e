"""An endpoint's data port: the TCP listener its sinks receive on, on its node's IP.

A connection that does not open with the hello of a sink open here, and that sink's secret,
is dropped and logged (at most a few lines a minute). The secret travels in the clear on the
control plane's and the data port's links: it stops a process that cannot see those from
injecting bytes into a transfer or reading one, not an observer on the network path (run the
data ports on a private network, or under WireGuard, where that matters).
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import socket
import threading
import time

from castray.agent.dataplane.sink import StreamSink
from castray.agent.dataplane.wire import (
    FORWARD,
    HELLO,
    MAGIC,
    PROBE,
    VERSION,
    StreamError,
    peer_text,
    recv_exact,
)

log = logging.getLogger(__name__)

MAX_GREETING = 256
"""Connections a data port lets wait for their hello at once; more are closed at once."""
MAX_GREETING_PER_PEER = 32
"""Of those, from one IP address: one host's flood of silent connections cannot keep the
other endpoints out."""
REFUSALS_LOGGED = 10
"""Refused data connections logged one by one per minute; the rest are counted."""


class DataPort:
    """This endpoint's TCP listener for data connections, on its node's IP."""

    def __init__(self, host: str, ports: tuple[int, int] | None, hello_timeout: float) -> None:
        self._listener = _bind(host, ports)
        bound, port = self._listener.getsockname()[:2]
        self.address = f"[{bound}]:{port}" if ":" in bound else f"{bound}:{port}"
        self._sinks: dict[str, StreamSink] = {}
        self._draining: dict[str, StreamSink] = {}
        """Sinks taken off the port whose forwarders still feed a slower receiver."""
        self._lock = threading.Lock()
        self._hello_timeout = hello_timeout
        self._waiting: dict[str, int] = {}
        """Connections waiting for their hello, by peer IP."""
        self._refusals_since = time.monotonic()
        self._refusals_shown = self._refusals_hidden = 0
        self.refusing = False
        """Fault injection: drop every connection, as a firewall between the nodes would."""
        self._closing = False
        self.dead: str | None = None
        """Why the port no longer accepts (its listener closed): the endpoint then fails its
        probes, and transfers go elsewhere instead of hanging."""
        threading.Thread(target=self._accept_loop, name="data-port", daemon=True).start()

    def close(self) -> None:
        """Stop accepting (fault injection: a data port that died)."""
        self._closing = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()

    def register(self, sink: StreamSink) -> None:
        with self._lock:
            self._sinks[sink.transfer_id] = sink

    def unregister(self, transfer_id: str) -> StreamSink | None:
        """Take a sink off the port (no stream comes to it any more); one still passing a
        stream on to a slower receiver stays reachable for ``passing_on`` until it is done."""
        with self._lock:
            sink = self._sinks.pop(transfer_id, None)
            if sink is not None:
                self._draining[transfer_id] = sink
            return sink

    def passing_on(self, transfer_id: str) -> StreamSink | None:
        """The transfer's sink here, receiving or still passing a stream on (a re-link or a
        stop reaches it either way)."""
        with self._lock:
            for tid, sink in list(self._draining.items()):
                if not sink.forwarding:
                    del self._draining[tid]
            return self._sinks.get(transfer_id) or self._draining.get(transfer_id)

    def sinks(self) -> list[tuple[str, StreamSink]]:
        with self._lock:
            return list(self._sinks.items())

    def sink(self, transfer_id: str) -> StreamSink | None:
        with self._lock:
            return self._sinks.get(transfer_id)

    def _accept_loop(self) -> None:
        """Accept until the listener is closed; nothing else ends it (a thread that cannot
        start, a full file table). A connection past ``MAX_GREETING`` waiting for its hello
        is closed at once."""
        while True:
            try:
                conn, peer = self._listener.accept()
            except OSError as exc:
                if self._closing or self._listener.fileno() == -1:
                    self.dead = "its data port was closed"
                    return
                log.warning("the data port could not accept a connection: %s", exc)
                time.sleep(0.1)  # a full file table: let connections end
                continue
            if not self._admit(peer[0]):
                self._refused(peer, "too many connections waiting for their hello")
                conn.close()
                continue
            try:
                threading.Thread(
                    target=self._greet, args=(conn, peer), name="data-conn", daemon=True
                ).start()
            except RuntimeError as exc:  # no thread to be had
                self._greeted(peer[0])
                self._refused(peer, f"no thread to serve it ({exc})")
                conn.close()
            except Exception:  # the loop must outlive anything one connection does
                self._greeted(peer[0])
                log.exception("the data port dropped a connection from %s", peer_text(peer))
                conn.close()

    def _admit(self, ip: str) -> bool:
        """Room for one more connection waiting for its hello, in all and from ``ip``."""
        with self._lock:
            waiting = self._waiting.get(ip, 0)
            if sum(self._waiting.values()) >= MAX_GREETING or waiting >= MAX_GREETING_PER_PEER:
                return False
            self._waiting[ip] = waiting + 1
            return True

    def _greeted(self, ip: str) -> None:
        with self._lock:
            self._waiting[ip] -= 1
            if not self._waiting[ip]:
                del self._waiting[ip]

    def _greet(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        """Read the connection's hello, then hand it to its sink (on this thread)."""
        try:
            greeted = self._hello(conn, peer)
        finally:
            self._greeted(peer[0])
        if greeted is not None:
            sink, flags = greeted
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sink.receive(conn, forward=bool(flags & FORWARD))

    def _hello(self, conn: socket.socket, peer: tuple[str, int]) -> tuple[StreamSink, int] | None:
        """The sink a connection's hello names, with its flags; None (the connection closed,
        and logged) when it names none, or not with that sink's secret."""
        if self.refusing:
            conn.close()
            return None
        conn.settimeout(self._hello_timeout)
        raw = bytearray(HELLO.size)
        try:
            recv_exact(conn, memoryview(raw))
        except (OSError, StreamError) as exc:
            why = "it closed before its hello" if isinstance(exc, StreamError) else "no hello"
            self._refused(peer, f"{why} (within {self._hello_timeout:g} s)")
            conn.close()
            return None
        magic, version, flags, tid, secret = HELLO.unpack(raw)
        if magic != MAGIC or version != VERSION:
            self._refused(peer, "not CastRay's stream protocol (or another version of it)")
            conn.close()
            return None
        if flags & PROBE:
            with contextlib.suppress(OSError):
                conn.sendall(MAGIC)
            conn.close()
            return None
        sink = self.sink(tid.decode("ascii", "replace").strip())
        if sink is None or not hmac.compare_digest(secret, sink.secret):
            self._refused(peer, "it did not present the secret of a transfer open here")
            conn.close()
            return None
        return sink, flags

    def _refused(self, peer: tuple[str, int], why: str) -> None:
        """Log a refused connection, with its address and why: a few a minute one by one,
        then how many more, so that a flood cannot fill the log."""
        now = time.monotonic()
        with self._lock:
            if now - self._refusals_since > 60:
                if self._refusals_hidden:
                    log.warning(
                        "the data port refused %d more connections in the last minute",
                        self._refusals_hidden,
                    )
                self._refusals_since, self._refusals_shown, self._refusals_hidden = now, 0, 0
            show = self._refusals_shown < REFUSALS_LOGGED
            if show:
                self._refusals_shown += 1
            else:
                self._refusals_hidden += 1
        if show:
            log.warning(
                "data port %s refused a connection from %s: %s", self.address, peer_text(peer), why
            )


def _bind(host: str, ports: tuple[int, int] | None) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    candidates = range(ports[0], ports[1] + 1) if ports else [0]
    last: OSError | None = None
    for port in candidates:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            last = exc
            continue
        sock.listen(128)
        return sock
    raise OSError(f"no free data port on {host} in {ports}: {last}")
