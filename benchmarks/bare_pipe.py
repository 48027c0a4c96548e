"""The bare pipe: the floor a plain Python data path reaches on a link, with nothing else.

Two processes, each on its own loopback IP. The receiver listens, ``recv_into`` a reusable
8 MiB buffer, hashes with BLAKE3, ``pwrite``s at the offset, and fsyncs at the end; the
sender ``socket.sendfile``s the file. The receiver prints the seconds from the connection to
the fsync, then the hash. ``benchmarks/transfer.py`` runs it next to CastRay.

    python -m benchmarks.bare_pipe recv 127.0.0.21 OUT   # prints its port, then the result
    python -m benchmarks.bare_pipe send 127.0.0.20 127.0.0.21:PORT FILE
"""

from __future__ import annotations

import os
import socket
import sys
import time

import blake3

BUFFER = 8 * 1024 * 1024


def receive(host: str, out: str) -> None:
    listener = socket.create_server((host, 0))
    print(listener.getsockname()[1], flush=True)
    conn, _ = listener.accept()
    seconds, digest, size = take(conn, out)
    print(f"{seconds} {digest} {size}", flush=True)


def take(conn: socket.socket, out: str) -> tuple[float, str, int]:
    """Receive a whole stream into ``out`` as the bare pipe does: seconds from now to the
    fsync, the BLAKE3, the bytes."""
    started = time.perf_counter()
    buffer = bytearray(BUFFER)
    view = memoryview(buffer)
    hasher = blake3.blake3()
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    offset = 0
    while True:
        n = conn.recv_into(view)
        if n == 0:
            break
        hasher.update(view[:n])
        os.pwrite(fd, view[:n], offset)
        offset += n
    os.fsync(fd)
    os.close(fd)
    return time.perf_counter() - started, str(hasher.hexdigest()), offset


def send(source_host: str, target: str, path: str) -> None:
    host, port = target.rsplit(":", 1)
    address = (host, int(port))
    with (
        socket.create_connection(address, source_address=(source_host, 0)) as sock,
        open(path, "rb") as file,
    ):
        sock.sendfile(file)


def main() -> None:
    role, *args = sys.argv[1:]
    if role == "recv":
        receive(*args)
    elif role == "send":
        send(*args)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
