"""What TLS would cost the data plane: the bare pipe beside the same pipe under TLS.

The question (#22): offer TLS on the data ports if it costs less than 20 % of a unicast's
speed. Both contenders are the bare pipe's path (``benchmarks/bare_pipe.py``): a receiver
that ``recv_into``s a reusable 8 MiB buffer, hashes it with BLAKE3, ``pwrite``s it and fsyncs
at the end, in a process of its own. The plain sender ``sendfile``s; the TLS sender must read
the file into a buffer and encrypt it (``sendfile`` cannot go through Python's ``ssl``), the
receiver decrypts (TLS 1.3, AES-GCM, the fastest suite on CPUs with AES instructions). The
contenders alternate; the table shows medians.

    .venv/bin/python -m benchmarks.data_tls [--size-mib 512] [--reps 5]
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.bare_pipe import BUFFER, take
from tests.harness.certs import make_certs


def _context(server: bool, cert: str, key: str) -> ssl.SSLContext:
    if server:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
    else:  # the certificate is the harness's, signed by a CA made for the run
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    return context


def receive(out: str, cert: str, key: str) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    raw, _ = listener.accept()
    conn = _context(True, cert, key).wrap_socket(raw, server_side=True) if cert else raw
    seconds, _, size = take(conn, out)
    print(f"{seconds} {size}", flush=True)


def send(port: int, path: str, cert: str) -> None:
    raw = socket.create_connection(("127.0.0.1", port))
    with open(path, "rb", buffering=0) as file:
        if not cert:
            raw.sendfile(file)
        else:
            conn = _context(False, "", "").wrap_socket(raw)
            buffer = bytearray(BUFFER)
            view = memoryview(buffer)
            while n := file.readinto(buffer):
                conn.sendall(view[:n])
            # Half-close, then wait for the receiver to finish: closing with its unread session
            # tickets in our queue would reset the connection and lose the tail.
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(65536):
                pass
    raw.close()


def _run(source: Path, out: Path, cert: str, key: str) -> float:
    me = [sys.executable, "-m", "benchmarks.data_tls"]
    receiver = subprocess.Popen(
        [*me, "--recv", str(out), cert, key], stdout=subprocess.PIPE, text=True
    )
    assert receiver.stdout is not None
    port = receiver.stdout.readline().strip()
    subprocess.run([*me, "--send", port, str(source), cert], check=True)
    seconds, size = receiver.stdout.readline().split()
    receiver.wait()
    assert int(size) == source.stat().st_size
    return float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--recv", nargs=3)
    parser.add_argument("--send", nargs=3)
    args = parser.parse_args()
    if args.recv:
        receive(*args.recv)
        return
    if args.send:
        send(int(args.send[0]), args.send[1], args.send[2])
        return
    with tempfile.TemporaryDirectory(prefix="castray-bench-tls-") as scratch:
        folder = Path(scratch)
        certs = make_certs(folder / "certs")
        cert, key = str(certs.cert), str(certs.key)
        source = folder / "source.bin"
        with source.open("wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(1024 * 1024))
        times: dict[str, list[float]] = {"plain": [], "tls": []}
        for _ in range(args.reps):
            for name, (c, k) in (("plain", ("", "")), ("tls", (cert, key))):
                os.sync()
                times[name].append(_run(source, folder / f"out-{name}.bin", c, k))
                (folder / f"out-{name}.bin").unlink()
        size = args.size_mib * 1024 * 1024
        plain, tls = statistics.median(times["plain"]), statistics.median(times["tls"])
        print(f"\n{args.size_mib} MiB over loopback, medians of {args.reps} (alternated)\n")
        print("| contender | median s | MB/s | range s |")
        print("|---|---|---|---|")
        for name, median in (("bare pipe", plain), ("bare pipe under TLS 1.3", tls)):
            spread = times["plain" if name == "bare pipe" else "tls"]
            print(
                f"| {name} | {median:.2f} | {size / median / 1e6:.0f} | "
                f"{min(spread):.2f}-{max(spread):.2f} |"
            )
        print(f"\nTLS costs {100 * (tls - plain) / tls:.0f} % of the plain speed (target < 20 %)")


if __name__ == "__main__":
    main()
