"""The stream data plane, inside an endpoint actor: its data port, the sinks that receive a
transfer's chunks on it, and the senders that stream a file, or chunks of it, to another
endpoint. Ray only carries the control calls; file bytes travel on these TCP streams.

Wire format (integers big-endian):

    hello  b"CRAY" | version u8 | flags u8 | transfer id (16 ASCII) | secret (32 bytes)
           flags: FORWARD  pass what arrives on to this sink's downstream (cut-through)
                  PROBE    only asks "is a CastRay data port here?" (answered b"CRAY")
    frame  chunk index u32 | offset u64 | length u32, then ``length`` bytes
    end    a frame with index END and nothing after it

A connection that does not open with the hello of a sink open here, and that sink's secret,
is dropped and logged (at most a few lines a minute). The secret travels in the clear on the
control plane's and the data port's links: it stops a process that cannot see those from
injecting bytes into a transfer or reading one, not an observer on the network path (run the
data ports on a private network, or under WireGuard, where that matters). Every frame must
sit where its chunk index says, with its chunk's length, or the stream is dropped.

A sink receives into a few reusable chunk buffers (bounded memory whatever the file size),
forwards each piece downstream as it arrives, and hashes it at once, while it is still in the
CPU's cache: into the chunk's BLAKE3 (checked against the manifest when the chunk is whole)
and, while bytes come in order, the whole file's. Its writer thread writes each intact chunk
at its offset, so receiving and writing overlap. A chunk that fails its check, or never
came, is listed as missing for the agent to have it sent again.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import blake3

from castray import ratelimit
from castray.agent.journal import Journal, journal_path
from castray.chunks import file_blake3, plan_chunks

log = logging.getLogger(__name__)

MAGIC = b"CRAY"
VERSION = 1
HELLO = struct.Struct("!4sBB16s32s")
FRAME = struct.Struct("!IQI")
END = 0xFFFFFFFF
FORWARD = 1
PROBE = 2
HELLO_TIMEOUT = 5.0
"""Seconds a new connection gets to say hello."""
PIECE = 1024 * 1024
"""Bytes received before they are passed on downstream (the cut-through granularity)."""
BUFFERS = 4
"""Chunk buffers per sink: what a sink holds in memory, whatever the file's size."""
JOURNAL_INTERVAL = 1.0
"""Seconds between a sink's journal writes (each after an fdatasync of its partial file)."""
MAX_GREETING = 256
"""Connections a data port lets wait for their hello at once; more are closed at once."""
MAX_GREETING_PER_PEER = 32
"""Of those, from one IP address: one host's flood of silent connections cannot keep the
other endpoints out."""
REFUSALS_LOGGED = 10
"""Refused data connections logged one by one per minute; the rest are counted."""


class StreamError(Exception):
    """A data connection broke, or could not be made."""


def hello(transfer_id: str, secret: bytes, flags: int) -> bytes:
    return HELLO.pack(MAGIC, VERSION, flags, transfer_id.encode("ascii")[:16].ljust(16), secret)


def _recv_exact(conn: socket.socket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = conn.recv_into(view[got:])
        if n == 0:
            raise StreamError("the sender closed the stream early")
        got += n


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def connect(address: str, timeout: float) -> socket.socket:
    """A data connection to another endpoint's port, within ``timeout`` seconds."""
    try:
        sock = socket.create_connection(_address(address), timeout=timeout)
    except OSError as exc:
        raise StreamError(f"cannot reach the data port {address}: {exc.strerror or exc}") from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def probe(address: str, timeout: float) -> None:
    """Check that a CastRay data port answers at ``address``; raises ``StreamError``."""
    with connect(address, timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(hello("", bytes(32), PROBE))
        answer = bytearray(len(MAGIC))
        try:
            _recv_exact(sock, memoryview(answer))
        except (OSError, StreamError) as exc:
            raise StreamError(f"{address} does not answer as a CastRay data port") from exc
        if bytes(answer) != MAGIC:
            raise StreamError(f"{address} does not answer as a CastRay data port")


# ---- receiving ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SinkStatus:
    """What a sink has so far (read by the agent a few times a second)."""

    verified_bytes: int
    missing: tuple[int, ...]
    """Chunks not verified yet; only meaningful once ``ended`` (or ``broken``)."""
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


@dataclass
class StreamSink:
    """One transfer being received here: verified, written, passed on."""

    transfer_id: str
    temp: Path
    final: Path
    size: int
    chunk_size: int
    manifest: list[bytes]
    secret: bytes
    downstream: str | None
    stall_timeout: float
    connect_timeout: float
    blake3: str
    """The whole file's: with size and chunk size, what the resume journal is of."""
    corrupt_next: Callable[[], bool] = field(default=lambda: False)
    ingress: ratelimit.TokenBucket | None = None
    """The endpoint's ingress limit, shared with its other sinks: TCP's flow control then
    slows the sender to it."""
    fd: int = -1
    resumed_bytes: int = 0
    """Verified bytes found in the journal of an earlier run, when resumed."""
    _journaled_at: float = 0.0
    _journal_due: threading.Event = field(default_factory=threading.Event)
    """Set by the writer when the journal is due: a thread of its own syncs and writes it,
    so the writer never waits on the disk's flush."""
    _verified: bytearray = field(default_factory=bytearray)
    verified_bytes: int = 0
    corrupt_chunks: int = 0
    forwarded_bytes: int = 0
    received_bytes: int = 0
    error: str | None = None
    forward_error: str | None = None
    broken: str | None = None
    _open_streams: int = 0
    _ended_streams: int = 0
    _finished_streams: int = 0
    _whole: object = None
    _whole_upto: int = 0
    _whole_valid: bool = True
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _settling: threading.Condition = field(init=False)
    """Notified whenever the sink may have settled: a stream ended, the writer went idle."""
    _free: queue.Queue[bytearray] = field(default_factory=queue.Queue)
    _work: queue.Queue[tuple[int, int, int, bytearray, bool] | None] = field(
        default_factory=queue.Queue
    )
    """Chunks to write: index, offset, length, buffer, and whether it was found intact."""
    _writer: threading.Thread | None = None
    _journaler: threading.Thread | None = None
    _closed: bool = False
    _conns: set[socket.socket] = field(default_factory=set)
    _downs: set[socket.socket] = field(default_factory=set)
    """Connections passing streams on downstream."""
    last_contact: float = field(default_factory=time.monotonic)
    """When the agent last asked about this sink (an orphan is one nobody asks about)."""

    def __post_init__(self) -> None:
        self._settling = threading.Condition(self._lock)

    def open(self, resume: bool = False) -> None:
        """Create the temporary file and start the writer (the file is filled by offset).

        ``resume``: take up what an earlier run of the transfer left, as its journal lists it
        (nothing if there is no journal of this very file), and count as a sink whose stream
        has ended: every chunk it lacks is missing, and the agent has them sent.
        """
        self._verified = bytearray(len(self.manifest))
        journal = Journal.read(journal_path(self.temp)) if resume else None
        if journal is not None and not journal.matches(self.size, self.chunk_size, self.blake3):
            journal = None
        if journal is not None and self.temp.exists():
            self.fd = os.open(self.temp, os.O_WRONLY)
            self._verified[:] = journal.verified
            self.verified_bytes = self.resumed_bytes = sum(
                length
                for index, _, length in all_chunks(self.size, self.chunk_size)
                if self._verified[index]
            )
        else:
            self.fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            journal_path(self.temp).unlink(missing_ok=True)
        if resume:
            self._ended_streams = self._finished_streams = 1
        self._whole = blake3.blake3()  # fed on the receiving thread, from the CPU's cache
        for _ in range(self._buffers):
            # No chunk is longer than the file: a small file gets small buffers.
            self._free.put(bytearray(min(self.chunk_size, max(self.size, 1))))
        self._writer = threading.Thread(
            target=self._write_loop, name=f"sink-{self.transfer_id}", daemon=True
        )
        self._writer.start()
        self._journaler = threading.Thread(
            target=self._journal_loop, name=f"journal-{self.transfer_id}", daemon=True
        )
        self._journaler.start()

    # ---- streams arriving -----------------------------------------------------------

    def receive(self, conn: socket.socket, forward: bool) -> None:
        """Read one incoming stream to its end (runs on the connection's own thread)."""
        with self._lock:
            if self._closed:
                conn.close()
                return
            self._open_streams += 1
            self._conns.add(conn)
        conn.settimeout(self.stall_timeout)
        down = opened = self._open_downstream() if forward else None
        if opened is not None:
            with self._lock:
                self._downs.add(opened)
        clean = False
        try:
            header = bytearray(FRAME.size)
            while True:
                _recv_exact(conn, memoryview(header))
                down = self._forward(down, header, payload=False)
                index, offset, length = FRAME.unpack(header)
                if index == END:
                    clean = True
                    return
                self._receive_chunk(conn, down, index, offset, length)
        except (OSError, StreamError, queue.Empty) as exc:
            if not self._closed:
                self.broken = f"the stream from upstream broke: {_reason(exc)}"
        finally:
            conn.close()
            if down is not None:
                down.close()
            with self._lock:
                self._conns.discard(conn)
                if opened is not None:
                    self._downs.discard(opened)
                self._open_streams -= 1
                self._ended_streams += 1 if clean else 0
                self._finished_streams += 1
                self._settling.notify_all()

    def _receive_chunk(
        self, conn: socket.socket, down: socket.socket | None, index: int, offset: int, length: int
    ) -> None:
        expected = min(self.chunk_size, self.size - index * self.chunk_size)
        if index >= len(self.manifest) or offset != index * self.chunk_size or length != expected:
            raise StreamError(
                f"a frame for chunk {index} at byte {offset} of {length} bytes is not where "
                "that chunk is in this file"
            )
        buffer = self._free.get(timeout=self.stall_timeout)
        view = memoryview(buffer)[:length]
        in_order = offset == self._whole_upto
        # The whole-file hash as it was before this chunk: a chunk that never arrives whole
        # must leave no trace in it (it comes again, whole, from a repair).
        whole_before = self._whole.copy() if in_order else None  # type: ignore[attr-defined]
        corrupt = self.corrupt_next()
        chunk_hash = blake3.blake3()
        got = 0
        try:
            while got < length:
                n = conn.recv_into(view[got:], min(PIECE, length - got))
                if self.ingress is not None:
                    self.ingress.take(n)  # what came: a read may bring less than it asks
                if n == 0:
                    raise StreamError("the sender closed the stream in the middle of a chunk")
                piece = view[got : got + n]
                self.received_bytes += n
                down = self._forward(down, piece, payload=True)
                if corrupt:  # fault injection: damaged here, after it was passed on intact
                    piece[n // 2] ^= 0xFF
                    corrupt = False
                # Hashed while the piece is still in the CPU's cache: no second pass over memory.
                chunk_hash.update(piece)
                if in_order:
                    self._whole.update(piece)  # type: ignore[attr-defined]
                got += n
        except BaseException:
            self._free.put(buffer)
            if whole_before is not None:
                self._whole = whole_before
            raise
        intact = chunk_hash.digest() == self.manifest[index]
        if in_order:
            self._whole_upto += length
            if not intact:
                self._whole_valid = False
        self._work.put((index, offset, length, buffer, intact))

    def _forward(
        self, down: socket.socket | None, data: bytearray | memoryview, payload: bool
    ) -> socket.socket | None:
        """Pass bytes on; a downstream that breaks is noted and no longer fed (this sink's
        own copy goes on: the agent re-links the chain around it)."""
        if down is None:
            return None
        try:
            down.sendall(data)
        except OSError as exc:
            self.forward_error = f"the next receiver stopped taking data: {_reason(exc)}"
            down.close()
            return None
        if payload:
            self.forwarded_bytes += len(data)
        return down

    def _open_downstream(self) -> socket.socket | None:
        if self.downstream is None:
            return None
        try:
            down = connect(self.downstream, self.connect_timeout)
            down.settimeout(self.stall_timeout)
            down.sendall(hello(self.transfer_id, self.secret, FORWARD))
        except (OSError, StreamError) as exc:
            self.forward_error = f"cannot pass on to {self.downstream}: {_reason(exc)}"
            return None
        return down

    # ---- writing ------------------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            index, offset, length, buffer, intact = item
            try:
                self._write_chunk(index, offset, memoryview(buffer)[:length], intact)
            finally:
                self._free.put(buffer)
                if self._work.empty():
                    with self._lock:
                        self._settling.notify_all()

    def _write_chunk(self, index: int, offset: int, data: memoryview, intact: bool) -> None:
        """Write a chunk the receiving thread found intact (it checked it as it arrived)."""
        if not intact:
            self.corrupt_chunks += 1
            log.info("transfer %s: chunk %d arrived damaged", self.transfer_id, index)
            return
        if self._verified[index] or self.error is not None:
            return
        try:
            written = 0
            while written < len(data):
                written += os.pwrite(self.fd, data[written:], offset + written)
        except OSError as exc:
            self.error = f"write failed: {exc.strerror or exc}"
            return
        self._verified[index] = 1
        self.verified_bytes += len(data)
        if time.monotonic() - self._journaled_at >= JOURNAL_INTERVAL:
            self._journaled_at = time.monotonic()
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
        at the close): a resume takes them as they are."""
        verified = bytes(self._verified)  # chunks written before the sync below: on disk
        try:
            os.fdatasync(self.fd)
            Journal(self.size, self.chunk_size, self.blake3, verified).write(
                journal_path(self.temp)
            )
        except OSError as exc:
            log.warning(
                "transfer %s: could not write its resume journal: %s", self.transfer_id, exc
            )

    # ---- status, commit, abort ----------------------------------------------------------

    def status(self, wait: float = 0.0) -> SinkStatus:
        """What the sink has; with ``wait``, first up to that many seconds for it to settle
        (every stream ended and every chunk checked), so a watcher hears of it at once."""
        self.last_contact = time.monotonic()
        with self._lock:
            if wait > 0:
                self._settling.wait_for(self._settled, wait)
            settled = self._open_streams == 0 and self._writer_idle()
            ended = settled and self._ended_streams > 0
        return SinkStatus(
            verified_bytes=self.verified_bytes,
            missing=tuple(i for i, ok in enumerate(self._verified) if not ok),
            ended=ended,
            broken=self.broken if settled else None,
            error=self.error,
            forwarded_bytes=self.forwarded_bytes,
            received_bytes=self.received_bytes,
            forward_error=self.forward_error,
            corrupt_chunks=self.corrupt_chunks,
            streams_seen=self._finished_streams,
        )

    def _settled(self) -> bool:
        """A stream came and went and all it brought is checked (or the sink is closed)."""
        if self._closed:
            return True
        return self._finished_streams > 0 and self._open_streams == 0 and self._writer_idle()

    def _writer_idle(self) -> bool:
        """Everything received was checked (and written, or found damaged)."""
        return self._work.empty() and self._free.qsize() == self._buffers

    @property
    def _buffers(self) -> int:
        return min(BUFFERS, max(len(self.manifest), 1))

    def complete(self) -> bool:
        return self.verified_bytes == self.size and all(self._verified)

    def whole_digest(self) -> str:
        """The file's BLAKE3: as fed while bytes came in order, else read back from disk."""
        if self._whole_valid and self._whole_upto == self.size:
            return str(self._whole.hexdigest())  # type: ignore[attr-defined]
        return file_blake3(self.temp)

    def relink(self, downstream: str | None) -> None:
        """A new next receiver, for streams that start from now on."""
        self.last_contact = time.monotonic()
        self.downstream = downstream
        self.forward_error = None

    def sever(self, upstream: bool, downstream: bool) -> None:
        """End the streams arriving here (``upstream``: their sender is gone, so they would
        only stall; what they did not bring gets repaired) or stop passing them on
        (``downstream``: the next receiver is gone; this sink's own copy goes on)."""
        with self._lock:
            doomed = [*(self._conns if upstream else ()), *(self._downs if downstream else ())]
        for conn in doomed:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def close(self, keep_fd: bool = False, journal: bool = False) -> None:
        """Stop the writer (what is queued is written first) and close the file, unless
        ``keep_fd`` (a commit fsyncs and closes it); with ``journal``, record what the file
        holds for a resume first."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for conn in self._conns:  # streams still arriving end now
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        self._work.put(None)
        if self._writer is not None:
            self._writer.join(timeout=self.stall_timeout)
        self._journal_due.set()
        if self._journaler is not None:
            self._journaler.join(timeout=self.stall_timeout)
        if journal and self.error is None:
            self.write_journal()
        if not keep_fd:
            with contextlib.suppress(OSError):
                os.close(self.fd)


# ---- the data port -------------------------------------------------------------------------


class DataPort:
    """This endpoint's TCP listener for data connections, on its node's IP."""

    def __init__(self, host: str, ports: tuple[int, int] | None, hello_timeout: float) -> None:
        self._listener = _bind(host, ports)
        bound, port = self._listener.getsockname()[:2]
        self.address = f"[{bound}]:{port}" if ":" in bound else f"{bound}:{port}"
        self._sinks: dict[str, StreamSink] = {}
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
        with self._lock:
            return self._sinks.pop(transfer_id, None)

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
                log.exception("the data port dropped a connection from %s", _peer(peer))
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
            _recv_exact(conn, memoryview(raw))
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
                "data port %s refused a connection from %s: %s", self.address, _peer(peer), why
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


# ---- sending ---------------------------------------------------------------------------


class Stopper:
    """Stops one transfer's outgoing streams at once, a stream blocked on a full socket too
    (its receiver is gone or cut off)."""

    def __init__(self) -> None:
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self.stopped_at: float | None = None

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

    @contextlib.contextmanager
    def watching(self, sock: socket.socket) -> Iterator[None]:
        with self._lock:
            self._socks.add(sock)
        try:
            if self.is_set():
                raise StreamError("stopped")
            yield
        finally:
            with self._lock:
                self._socks.discard(sock)


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
) -> int:
    """Stream ``chunks`` (index, offset, length) of ``file`` to ``target`` with ``sendfile``
    (the bytes never enter Python), within ``limits``; the bytes sent."""
    sent_total = 0
    with connect(target, connect_timeout) as sock, stop.watching(sock):
        sock.settimeout(stall_timeout)
        try:
            sock.sendall(hello(transfer_id, secret, FORWARD if forward else 0))
            for index, offset, length in chunks:
                if stop.is_set():
                    raise StreamError("stopped")
                sock.sendall(FRAME.pack(index, offset, length))
                sent = 0
                while sent < length:
                    piece = ratelimit.piece_size(limits, length - sent)
                    ratelimit.take(limits, piece, stop.is_set)
                    n = sock.sendfile(file, offset + sent, piece)
                    if n == 0:
                        raise StreamError(f"the file ended before byte {offset + length}")
                    sent += n
                sent_total += length
            sock.sendall(FRAME.pack(END, 0, 0))
        except OSError as exc:
            if stop.is_set():
                raise StreamError("stopped") from exc
            raise StreamError(f"the stream to {target} broke: {_reason(exc)}") from exc
    return sent_total


def all_chunks(size: int, chunk_size: int) -> list[tuple[int, int, int]]:
    return [(c.index, c.offset, c.length) for c in plan_chunks(size, chunk_size)]


def _peer(peer: tuple[str, int] | Any) -> str:
    try:
        return f"{peer[0]}:{peer[1]}"
    except (IndexError, TypeError):
        return str(peer)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, queue.Empty):
        return "no chunk could be written for too long"
    return str(exc) or type(exc).__name__
