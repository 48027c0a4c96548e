"""Where a transfer's chunks come from, and the stream that carries them between clusters.

Within a cluster the feed is the source endpoint: each chunk is read on its node into the
object store. Across clusters the source cluster's agent also sends each chunk, once, over a
TCP stream to the agent of every other cluster with recipients; there the chunk is put into
that cluster's object store and goes down the local chain as usual. The stream opens with the
data ports' hello: the transfer's id and a secret the importing agent made and handed out on
the control plane only; a connection that does not is dropped and logged, and the listener
waits on for the right one. A frame is the chunk's offset, length and BLAKE3, then its bytes;
a final frame carries the whole file's BLAKE3.
"""

from __future__ import annotations

import hmac
import logging
import os
import socket
import struct
import time
from typing import Any

import blake3
import numpy as np
import ray

from castray.agent.dataplane.wire import HELLO, MAGIC, VERSION, hello
from castray.chunks import Chunk

log = logging.getLogger(__name__)

FRAME = struct.Struct("!QQ32s")
END = 2**64 - 1
HELLO_TIMEOUT = 5.0
"""Seconds a connection to an importing agent gets to present its hello."""


class StreamBroken(Exception):
    """The stream between two clusters' agents ended early or carried a bad chunk."""


class EndpointFeed:
    """Chunks read by the source endpoint's actor on its own node."""

    def __init__(
        self,
        transfer_id: str,
        source_id: str,
        handle: Any,
        path: str,
        identity: tuple[int, int, int, int] | None = None,
    ) -> None:
        self.supplier = source_id
        self._transfer_id = transfer_id
        self._handle = handle
        self._path = path
        self._identity = identity

    def open(self, hash_whole: bool, timeout: float) -> int:
        ref = self._handle.open_source.remote(
            self._transfer_id, self._path, hash_whole, self._identity
        )
        try:
            return int(ray.get(ref, timeout=timeout))
        except ray.exceptions.RayTaskError as exc:
            raise exc.as_instanceof_cause() from None

    def chunk(self, chunk: Chunk, retry: bool) -> tuple[Any, Any]:
        """Object refs of the chunk's bytes and BLAKE3 (a retry is read again)."""
        data, digest = self._handle.read_chunk.options(num_returns=2).remote(
            self._transfer_id, chunk.offset, chunk.length
        )
        return data, digest

    def release(self, chunk: Chunk) -> None:
        """Nothing to keep: a retried chunk is read again from the file."""

    def close(self, timeout: float) -> str | None:
        digest: str | None = ray.get(
            self._handle.close_source.remote(self._transfer_id), timeout=timeout
        )
        return digest

    def abort(self) -> None:
        self._handle.close_source.remote(self._transfer_id)


class StreamFeed:
    """Chunks arriving from another cluster's agent, kept until every recipient has them."""

    def __init__(
        self, listener: socket.socket, transfer_id: str, supplier: str, timeout: float
    ) -> None:
        self.supplier = supplier
        self.secret = os.urandom(32)
        """What the source cluster's stream must open with (handed out on the control plane)."""
        self._transfer_id = transfer_id
        self._timeout = timeout
        self._listener = listener
        self._conn: socket.socket | None = None
        self._kept: dict[int, tuple[Any, str]] = {}
        self._whole: str | None = None

    @classmethod
    def listen(cls, host: str, transfer_id: str, supplier: str, timeout: float) -> StreamFeed:
        """Listen for the source cluster's agent; it gets ``timeout`` seconds to connect, and
        the stream as long to stay silent."""
        listener = socket.create_server((host, 0))
        return cls(listener, transfer_id, supplier, timeout)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    def chunk(self, chunk: Chunk, retry: bool) -> tuple[Any, Any]:
        if retry:
            return self._kept[chunk.index]
        offset, length, digest = self._frame()
        if offset != chunk.offset or length != chunk.length:
            raise StreamBroken(f"expected chunk at {chunk.offset}, got one at {offset}")
        data = np.empty(length, dtype=np.uint8)
        self._read_into(data)
        if blake3.blake3(data.data).hexdigest() != digest:
            raise StreamBroken(f"the chunk at {offset} was damaged between the clusters")
        kept = (ray.put(data), digest)
        self._kept[chunk.index] = kept
        return kept

    def release(self, chunk: Chunk) -> None:
        self._kept.pop(chunk.index, None)

    def close(self, timeout: float) -> str | None:
        if self._whole is None:
            offset, _, digest = self._frame()
            if offset != END:
                raise StreamBroken("the source cluster sent more than the file")
            self._whole = digest or None
        self.abort()
        return self._whole

    def abort(self) -> None:
        for sock in (self._conn, self._listener):
            if sock is not None:
                sock.close()

    def _connection(self) -> socket.socket:
        """The source cluster's stream: the first connection that opens with this transfer's
        hello and secret (others are dropped and logged), within the timeout."""
        deadline = time.monotonic() + self._timeout
        while self._conn is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise StreamBroken("the source cluster's agent never connected")
            self._listener.settimeout(left)
            try:
                conn, peer = self._listener.accept()
            except TimeoutError as exc:
                raise StreamBroken("the source cluster's agent never connected") from exc
            if self._greets(conn):
                conn.settimeout(self._timeout)
                self._conn = conn
            else:
                log.warning(
                    "transfer %s: dropped a connection from %s:%s to the stream between "
                    "clusters: it did not open with this transfer's secret",
                    self._transfer_id,
                    *peer[:2],
                )
                conn.close()
        return self._conn

    def _greets(self, conn: socket.socket) -> bool:
        conn.settimeout(HELLO_TIMEOUT)
        raw = bytearray(HELLO.size)
        view = memoryview(raw)
        got = 0
        try:
            while got < len(raw):
                n = conn.recv_into(view[got:])
                if not n:
                    return False
                got += n
        except OSError:
            return False
        magic, version, _, tid, secret = HELLO.unpack(raw)
        return (
            magic == MAGIC
            and version == VERSION
            and tid.decode("ascii", "replace").strip() == self._transfer_id[:16]
            and hmac.compare_digest(secret, self.secret)
        )

    def _frame(self) -> tuple[int, int, str]:
        header = bytearray(FRAME.size)
        self._read_into(memoryview(header))
        offset, length, raw = FRAME.unpack(header)
        digest = raw.hex() if any(raw) else ""
        return offset, length, digest

    def _read_into(self, buffer: Any) -> None:
        view = memoryview(buffer).cast("B")
        conn = self._connection()
        got = 0
        while got < len(view):
            try:
                n = conn.recv_into(view[got:])
            except OSError as exc:
                raise StreamBroken(f"the stream from the source cluster broke: {exc}") from exc
            if n == 0:
                raise StreamBroken("the source cluster stopped sending")
            got += n


class Exporter:
    """The sending end: pushes each chunk once to another cluster's agent, after the hello
    that agent's secret makes."""

    def __init__(
        self, transfer_id: str, host: str, port: int, secret: bytes, timeout: float
    ) -> None:
        self.address = f"{host}:{port}"
        self._sock = socket.create_connection((host, port), timeout=timeout)
        self._sock.sendall(hello(transfer_id, secret, 0))

    def send(self, offset: int, data: np.ndarray, digest: str) -> None:
        self._sock.sendall(FRAME.pack(offset, len(data), bytes.fromhex(digest)))
        self._sock.sendall(data.data)

    def finish(self, whole: str | None) -> None:
        self._sock.sendall(FRAME.pack(END, 0, bytes.fromhex(whole) if whole else bytes(32)))
        self._sock.close()

    def abort(self) -> None:
        self._sock.close()
