"""The data plane's wire: how a data connection opens, how chunks travel on it, and how an
endpoint reaches another's data port.

Wire format (integers big-endian):

    hello  b"CRAY" | version u8 | flags u8 | transfer id (16 ASCII) | secret (32 bytes)
           flags: FORWARD  pass what arrives on to this sink's downstream (cut-through)
                  PROBE    only asks "is a CastRay data port here?" (answered b"CRAY")
    frame  chunk index u32 | offset u64 | length u32, then ``length`` bytes
    end    a frame with index END and nothing after it

Every frame must sit where its chunk index says (``offset == index * chunk_size``), with that
chunk's length, or the receiver drops the stream.
"""

from __future__ import annotations

import queue
import socket
import struct
from typing import Any

from castray.chunks import plan_chunks

MAGIC = b"CRAY"
VERSION = 1
HELLO = struct.Struct("!4sBB16s32s")
FRAME = struct.Struct("!IQI")
END = 0xFFFFFFFF
FORWARD = 1
PROBE = 2
HELLO_TIMEOUT = 5.0
"""Seconds a new connection gets to say hello."""


class StreamError(Exception):
    """A data connection broke, or could not be made."""


def hello(transfer_id: str, secret: bytes, flags: int) -> bytes:
    return HELLO.pack(MAGIC, VERSION, flags, transfer_id.encode("ascii")[:16].ljust(16), secret)


def recv_exact(conn: socket.socket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = conn.recv_into(view[got:])
        if n == 0:
            raise StreamError("the sender closed the stream early")
        got += n


def split_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def connect(address: str, timeout: float) -> socket.socket:
    """A data connection to another endpoint's port, within ``timeout`` seconds."""
    try:
        sock = socket.create_connection(split_address(address), timeout=timeout)
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
            recv_exact(sock, memoryview(answer))
        except (OSError, StreamError) as exc:
            raise StreamError(f"{address} does not answer as a CastRay data port") from exc
        if bytes(answer) != MAGIC:
            raise StreamError(f"{address} does not answer as a CastRay data port")


def all_chunks(size: int, chunk_size: int) -> list[tuple[int, int, int]]:
    return [(c.index, c.offset, c.length) for c in plan_chunks(size, chunk_size)]


def peer_text(peer: tuple[str, int] | Any) -> str:
    try:
        return f"{peer[0]}:{peer[1]}"
    except (IndexError, TypeError):
        return str(peer)


def reason_of(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, queue.Empty):
        return "no chunk could be written for too long"
    return str(exc) or type(exc).__name__
