"""Driving transfers through the REST API as a user would, and checking what arrived."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness.server import CastRayServer
from tests.harness.waiting import wait_for

FINISHED = {"completed", "partially_failed", "failed", "cancelled", "interrupted"}


def upload_bytes(
    server: CastRayServer, name: str, data: bytes, client: httpx.Client | None = None
) -> dict[str, Any]:
    """Upload ``data`` as library file ``name`` (over ``client``, when many are uploaded:
    each new client builds a TLS context, about 0.1 s of a core)."""
    with contextlib.nullcontext(client) if client else server.client() as http:
        response = http.post("/api/upload", files={"file": (name, data)})
    assert response.status_code == 201, response.text
    return dict(response.json())


def generate(server: CastRayServer, name: str, size: str, content_type: str) -> dict[str, Any]:
    """A new library file made by the server's generator (streamed: any size)."""
    with server.client() as client:
        response = client.post(
            "/api/file-generator/create",
            json={"size": size, "content_type": content_type, "name": name, "overwrite": True},
            timeout=600,
        )
    assert response.status_code == 201, response.text
    return dict(response.json())


def start(server: CastRayServer, **body: Any) -> str:
    with server.client() as client:
        response = client.post("/api/transfers", json=body)
    assert response.status_code == 202, response.text
    # A refusal before a byte (no room, say) can be final before the answer is written.
    assert response.json()["status"] in {"queued", "running"} | FINISHED, response.text
    return str(response.json()["transfer_id"])


def get(server: CastRayServer, transfer_id: str) -> dict[str, Any]:
    with server.client() as client:
        response = client.get(f"/api/transfers/{transfer_id}")
    response.raise_for_status()
    return dict(response.json())


def wait_finished(
    server: CastRayServer, transfer_id: str, timeout: float = 180, interval: float = 0.2
) -> dict[str, Any]:
    """The transfer once it ended, asked every ``interval`` s over one client (a client per
    look costs a TLS context each: a benchmark's CPU figures would count the waiting)."""

    def ended(client: httpx.Client) -> dict[str, Any] | None:
        response = client.get(f"/api/transfers/{transfer_id}")
        response.raise_for_status()
        transfer = dict(response.json())
        return transfer if transfer["status"] in FINISHED else None

    with server.client() as client:
        return wait_for(
            lambda: ended(client), timeout, f"transfer {transfer_id} to finish", interval
        )


def wait_under_way(
    server: CastRayServer, transfer_id: str, recipient: str, at: float = 0.0
) -> None:
    """Return once more than ``at`` of the file (and at least one byte) arrived verified at
    ``recipient``; fail if the transfer ended first (too soon to break it mid-way)."""
    wait_for(
        lambda: (
            (t := get(server, transfer_id))["recipients"][recipient]["bytes_done"]
            > at * t["bytes_total"]
            or t["status"] in FINISHED
            or None
        ),
        120,
        f"more than {at:.0%} of the file verified at {recipient}",
        interval=0.02,
    )
    assert get(server, transfer_id)["status"] == "running", "it ended before the fault"


def send(
    server: CastRayServer, timeout: float = 180, interval: float = 0.2, **body: Any
) -> dict[str, Any]:
    return wait_finished(server, start(server, **body), timeout, interval)


def leftovers(directory: Path) -> list[str]:
    """Partial files and resume journals a transfer left behind."""
    return sorted(p.name for p in directory.iterdir() if p.name.endswith((".part", ".resume")))


def post(server: CastRayServer, path: str, body: Any) -> httpx.Response:
    with server.client() as client:
        return client.post(path, json=body)


def random_bytes(size: int) -> bytes:
    return os.urandom(size)


@contextmanager
def tiny_disk_node(server: CastRayServer, name: str = "tiny", size: str = "1m") -> Iterator[str]:
    """A named endpoint whose storage is a small tmpfs (1 MiB unless ``size``; needs root to
    mount; skips otherwise)."""
    storage = server.data_dir / "storage" / name
    storage.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(storage)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        assert post(server, "/api/nodes", {"node_id": name}).status_code == 201
        yield name
    finally:
        with server.client() as client:
            client.delete(f"/api/nodes/{name}")
        subprocess.run(["umount", "-l", str(storage)], check=False)
