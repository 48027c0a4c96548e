"""Findings 2 and 7: no request can take the disk, the threads or the memory of the server."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.harness.server import CastRayServer, start_server
from tests.harness.waiting import wait_for
from tests.security.conftest import library_leftovers

pytestmark = pytest.mark.ray


def _generate(
    server: CastRayServer, size: object, name: str, timeout: float = 60
) -> httpx.Response:
    with server.client() as client:
        return client.post(
            "/api/file-generator/create",
            json={"size": size, "content_type": "pattern", "name": name},
            timeout=timeout,
        )


@pytest.mark.parametrize("size", ["99999TB", 10**30, "1" + "0" * 400, "16.1GiB", -5])
def test_a_generator_size_beyond_its_limit_is_refused_at_once(
    server: CastRayServer, size: object
) -> None:
    response = _generate(server, size, "too-big.bin")

    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_request"
    assert not (server.data_dir / "library" / "too-big.bin").exists()
    assert library_leftovers(server) == []


def test_a_generation_larger_than_the_free_disk_is_refused_with_507(tmp_path: Path) -> None:
    # More than is free whatever else frees meanwhile on a shared machine.
    size = os.statvfs(tmp_path).f_blocks * os.statvfs(tmp_path).f_frsize
    env = {"HOME": str(tmp_path), "CASTRAY_DISK_RESERVE_BYTES": str(size)}
    server = start_server(tmp_path / "data", env=env)
    try:
        response = _generate(server, "1MB", "no-room.bin")
    finally:
        server.stop()

    assert response.status_code == 507, response.text
    assert "needs" in response.json()["detail"] and "has" in response.json()["detail"]


def _generation_on_a_socket(server: CastRayServer, size: str, name: str) -> socket.socket:
    """A generation request whose client can go away at any moment (by closing its socket)."""
    body = json.dumps({"size": size, "content_type": "pattern", "name": name}).encode()
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        b"POST /api/file-generator/create HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    return sock


def test_a_generation_whose_client_goes_away_stops_and_leaves_nothing(
    server: CastRayServer,
) -> None:
    sock = _generation_on_a_socket(server, "12GB", "abandoned.bin")
    wait_for(lambda: library_leftovers(server), 30, "the generation to be writing")
    sock.close()

    wait_for(lambda: not library_leftovers(server), 15, "the abandoned generation to stop")
    assert not (server.data_dir / "library" / "abandoned.bin").exists()


def test_a_stop_ends_a_running_generation_within_10_s_and_leaves_nothing(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", env={"HOME": str(tmp_path)})
    client = httpx.Client(base_url=server.url, timeout=120)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(
            client.post,
            "/api/file-generator/create",
            json={"size": "12GB", "content_type": "pattern", "name": "endless.bin"},
        )
        wait_for(lambda: library_leftovers(server), 30, "the generation to be writing")
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(10)
        except subprocess.TimeoutExpired:
            pytest.fail("the server did not stop within 10 s of SIGTERM while generating")
        seconds = time.monotonic() - started
        if pending.exception() is None:  # answered before the server went: as stopped
            answer = pending.result()
            assert answer.status_code == 503, (answer.status_code, answer.text)
            assert answer.json()["code"] == "stopped"
    client.close()
    server.stop()

    assert seconds < 10
    assert library_leftovers(server) == []
    assert not (server.data_dir / "library" / "endless.bin").exists()


def test_writers_beyond_the_limit_get_429_and_the_library_still_answers(
    server: CastRayServer,
) -> None:
    busy = [_generation_on_a_socket(server, "12GB", f"busy-{n}.bin") for n in range(2)]
    try:
        wait_for(lambda: len(library_leftovers(server)) == 2, 30, "two generations writing")
        third = _generate(server, "1MB", "third.bin")
        with server.client() as client:
            listing = client.get("/api/files", timeout=10)
    finally:
        for sock in busy:
            sock.close()
    wait_for(lambda: not library_leftovers(server), 15, "the generations to stop")

    assert third.status_code == 429, third.text
    assert "CASTRAY_MAX_CONCURRENT_WRITES" in third.json()["detail"]
    assert listing.status_code == 200


def test_endpoints_beyond_the_limit_are_refused(server: CastRayServer) -> None:
    with server.client() as client:
        count = len(client.get("/api/nodes").json()["nodes"])
        created = [
            client.post("/api/nodes", json={"node_id": f"extra-{n}"}) for n in range(6 - count)
        ]
        for n in range(6 - count):
            client.delete(f"/api/nodes/extra-{n}")

    assert [r.status_code for r in created[:-1]] == [201] * (5 - count)
    assert created[-1].status_code == 409, created[-1].text
    assert "CASTRAY_MAX_ENDPOINTS" in created[-1].json()["detail"]


def test_a_json_body_over_the_limit_is_refused_before_it_is_parsed(server: CastRayServer) -> None:
    recipients = ["node_2"] * 200_000  # about 2 MB of JSON
    with server.client() as client:
        declared = client.post(
            "/api/transfers", json={"source_node": "node_1", "file": "x", "recipients": recipients}
        )

        def chunks() -> object:
            yield b'{"source_node": "node_1", "file": "x", "recipients": ['
            for _ in range(200_000):
                yield b'"node_2",'
            yield b'"node_2"]}'

        streamed = client.post(
            "/api/transfers", content=chunks(), headers={"content-type": "application/json"}
        )

    for response in (declared, streamed):
        assert response.status_code == 413, response.text
        assert "CASTRAY_MAX_JSON_BYTES" in response.json()["detail"]
