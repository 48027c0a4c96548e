"""What the security tests run against: real servers with small limits, and fake Ray services
that record what CastRay sends them."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.harness.server import CastRayServer, serving

TOKEN = "api-token-0123456789"
MACHINE_RAY_TOKEN = "machine-ray-token-abcdef0123456789"
"""The Ray token of the machine's user (RAY_AUTH_TOKEN): it must never reach a stranger."""

LIMITS = {
    "CASTRAY_MAX_CONCURRENT_WRITES": "2",
    "CASTRAY_MAX_ENDPOINTS": "5",
    "CASTRAY_UPLOAD_IDLE_TIMEOUT": "2",
    "CASTRAY_WS_SEND_TIMEOUT": "4",
    "CASTRAY_CONNECT_TIMEOUT": "6",
    "CASTRAY_HTTP_HEADER_TIMEOUT": "2",
    "CASTRAY_HTTP_MAX_CONNECTIONS": "150",
    "RAY_AUTH_TOKEN": MACHINE_RAY_TOKEN,
}


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CastRayServer]:
    """The default setup (no API token, loopback) with small limits, and a machine Ray token."""
    root = tmp_path_factory.mktemp("security")
    env = {"HOME": str(root), **LIMITS}
    with serving(root / "data", "--demo-nodes", "2", alive=3, env=env) as server:
        yield server


@pytest.fixture(scope="package")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CastRayServer]:
    """A server whose API token comes from a file."""
    root = tmp_path_factory.mktemp("security-token")
    token_file = root / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    with serving(root / "data", alive=1, env={"HOME": str(root)}, token_file=token_file) as server:
        yield server


@dataclass
class FakeDashboard:
    """An HTTP server that looks like a Ray dashboard and records every request's headers."""

    auth_mode: str = "token"
    version: str = "2.60.0"
    seen: list[dict[str, str]] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def fake_dashboard() -> Iterator[FakeDashboard]:
    fake = FakeDashboard()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fake.seen.append(dict(self.headers.items()))
            if self.path == "/api/authentication_mode":
                self._answer(200, {"authentication_mode": fake.auth_mode})
            elif self.path == "/api/version":
                authorized = "authorization" in {k.lower() for k in self.headers}
                if fake.auth_mode == "token" and not authorized:
                    self._answer(401, {"error": "Missing authentication token"})
                else:
                    self._answer(200, {"ray_version": fake.version, "session_name": "session_x"})
            else:
                self._answer(404, {})

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.port = http.server_address[1]
    threading.Thread(target=http.serve_forever, daemon=True).start()
    try:
        yield fake
    finally:
        http.shutdown()
        http.server_close()


@dataclass
class FakeGrpc:
    """A gRPC server that implements nothing and records the metadata of every call."""

    port: int
    metadata: list[tuple[tuple[str, Any], ...]]


@pytest.fixture
def fake_grpc() -> Iterator[FakeGrpc]:
    seen: list[tuple[tuple[str, Any], ...]] = []

    class Recorder(grpc.GenericRpcHandler):
        def service(self, details: grpc.HandlerCallDetails) -> None:
            seen.append(tuple(details.invocation_metadata or ()))

    server = grpc.server(ThreadPoolExecutor(4), handlers=[Recorder()])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield FakeGrpc(port, seen)
    finally:
        server.stop(grace=None)


@dataclass
class SilentPort:
    """A TCP port that accepts connections and never says a word."""

    port: int
    accepted: list[socket.socket] = field(default_factory=list)


@pytest.fixture
def silent_port() -> Iterator[SilentPort]:
    listener = socket.create_server(("127.0.0.1", 0))
    silent = SilentPort(int(listener.getsockname()[1]))
    accepted = silent.accepted
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield silent
    finally:
        stop.set()
        for conn in accepted:
            conn.close()
        listener.close()


def library_leftovers(server: CastRayServer) -> list[str]:
    """Temporary files the library holds (none may outlive a request)."""
    library = server.data_dir / "library"
    return sorted(p.name for p in library.iterdir() if p.name.endswith(".part"))


def storage_of(server: CastRayServer, node: str) -> Path:
    return server.data_dir / "storage" / node
