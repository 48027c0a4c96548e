"""Finding 6: clients that stall or vanish cost the server nothing for long."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.harness.server import CastRayServer, start_server
from tests.harness.waiting import wait_for
from tests.security.conftest import library_leftovers

pytestmark = pytest.mark.ray


def _open(server: CastRayServer) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def _stalled_websocket(server: CastRayServer) -> socket.socket:
    """A WebSocket that completes its handshake and then never reads again."""
    sock = _open(server)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    assert b"101" in sock.recv(200)
    return sock


def _stalled_upload(server: CastRayServer, name: str, sent: bytes = b"abc") -> socket.socket:
    """A multipart upload that announces 5,000,000 bytes and sends only the first few."""
    sock = _open(server)
    head = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="' + name.encode() + b'"'
        b"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    sock.sendall(
        b"POST /api/upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b"
        b"\r\nContent-Length: 5000000\r\n\r\n" + head + sent
    )
    return sock


def _read_until_closed(sock: socket.socket, deadline: float) -> bytes:
    received = b""
    sock.settimeout(1)
    while time.monotonic() < deadline:
        try:
            piece = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return received
        if not piece:
            return received
        received += piece
    raise AssertionError("the server kept the connection open")


def test_a_websocket_client_that_stops_reading_is_disconnected(server: CastRayServer) -> None:
    sock = _stalled_websocket(server)

    received = _read_until_closed(sock, time.monotonic() + 30)

    sock.close()
    assert received  # what it was sent (snapshot, pings) before the server gave up on it


def test_an_upload_that_stalls_is_answered_408_and_leaves_nothing(server: CastRayServer) -> None:
    sock = _stalled_upload(server, "stalled.bin")

    answer = _read_until_closed(sock, time.monotonic() + 30)

    sock.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    # A stalled upload trips both guards in the same window (nothing came for the idle
    # timeout, and its average fell under the minimum rate over that window): whichever
    # looks first answers, and its message names its setting (CI under load saw either).
    assert b"CASTRAY_UPLOAD_IDLE_TIMEOUT" in answer or b"CASTRAY_UPLOAD_MIN_RATE" in answer
    assert library_leftovers(server) == []
    assert not (server.data_dir / "library" / "stalled.bin").exists()


def test_aborted_uploads_leave_no_file_and_no_traceback(server: CastRayServer) -> None:
    for n in range(20):
        _stalled_upload(server, f"aborted-{n}.bin", sent=os.urandom(50_000)).close()

    wait_for(lambda: not library_leftovers(server), 15, "the aborted uploads to be discarded")
    assert "Traceback" not in server.log.read_text()


def test_stalled_clients_do_not_hold_up_a_stop(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "CASTRAY_UPLOAD_IDLE_TIMEOUT": "600"}
    server = start_server(tmp_path / "data", env=env)
    stalled = [_stalled_websocket(server), _stalled_upload(server, "held.bin")]
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(10)
    except subprocess.TimeoutExpired:
        pytest.fail("stalled clients held the server more than 10 s after SIGTERM")
    finally:
        seconds = time.monotonic() - started
        for sock in stalled:
            sock.close()
        server.stop()

    assert seconds < 10
    assert library_leftovers(server) == []
    server.check_log_clean()
