"""A real ``castray serve`` process on a free port, as a user would run it."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.harness.waiting import free_port, wait_for

STARTUP_TIMEOUT = 120.0


@dataclass
class CastRayServer:
    process: subprocess.Popen[bytes]
    url: str
    data_dir: Path
    log: Path
    token: str | None = None
    ca_cert: Path | None = None
    """The CA of its certificate, when it serves https."""

    def client(self, token: str | None = None) -> httpx.Client:
        token = token or self.token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, verify=self._verify)

    @property
    def _verify(self) -> ssl.SSLContext | bool:
        return ssl.create_default_context(cafile=self.ca_cert) if self.ca_cert else True

    def cli(
        self, *args: str, timeout: float = 300, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``castray ARGS --server URL`` as a user would, capturing what it prints."""
        token = ("--token", self.token) if self.token else ()
        return subprocess.run(
            [sys.executable, "-m", "castray", *args, "--server", self.url, *token],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )

    def status(self) -> dict[str, Any]:
        with self.client() as client:
            response = client.get("/api/status")
            response.raise_for_status()
            return dict(response.json())

    def nodes(self) -> dict[str, dict[str, Any]]:
        return {n["id"]: n for n in self.status()["node_statuses"]}

    def wait_alive(self, count: int, timeout: float = STARTUP_TIMEOUT) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            self.check_running()
            state = self.status()
            return state if state["active_nodes"] >= count else None

        return wait_for(ready, timeout, f"{count} alive endpoints at {self.url}")

    def check_log_clean(self) -> None:
        """Whatever the tests did, the server never logged an unhandled exception."""
        log = self.log.read_text()
        if "Traceback (most recent call last)" in log:
            start = log.index("Traceback (most recent call last)")
            raise AssertionError(
                f"the server logged a traceback ({self.log}):\n{log[start:][:3000]}"
            )

    def check_running(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(f"castray serve exited:\n{self.log.read_text()[-4000:]}")

    def stop(self, grace: float = 20.0) -> int:
        """Ctrl+C as a user would; then the group is made sure to be gone."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.returncode


@contextmanager
def serving(
    data_dir: Path,
    *args: str,
    alive: int,
    env: dict[str, str] | None = None,
    token: str | None = None,
    token_file: Path | None = None,
    keep_files: bool = False,
) -> Iterator[CastRayServer]:
    """A started server with ``alive`` endpoints up, stopped whatever happens; its library
    and storage go with it unless ``keep_files`` (a restart over the same data dir)."""
    server = start_server(data_dir, *args, env=env, token=token, token_file=token_file)
    try:
        server.wait_alive(alive)
        yield server
    finally:
        server.stop()
        # Its files (generated gigabytes among them) go with it; its log stays, for a failure.
        for bulky in () if keep_files else ("library", "storage"):
            shutil.rmtree(data_dir / bulky, ignore_errors=True)
    server.check_log_clean()


def start_server(
    data_dir: Path,
    *args: str,
    env: dict[str, str] | None = None,
    token: str | None = None,
    token_file: Path | None = None,
    ca_cert: Path | None = None,
) -> CastRayServer:
    """Start ``castray serve`` and wait until its API answers; the token on the command line,
    or in ``token_file`` (the way that keeps it out of ``ps``). ``ca_cert``: it serves https
    (``args`` give its certificate), signed by that CA."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir.parent / f"{data_dir.name}-server.log"
    command = [
        sys.executable,
        "-m",
        "castray",
        "serve",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        *args,
    ]
    if token_file is not None:
        command += ["--token-file", str(token_file)]
        token = token_file.read_text().strip()
    elif token:
        command += ["--token", token]
    with log.open("ab") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    scheme = "https" if ca_cert else "http"
    server = CastRayServer(process, f"{scheme}://127.0.0.1:{port}", data_dir, log, token, ca_cert)

    def answering() -> bool:
        server.check_running()
        with server.client() as client:
            return client.get("/api/health", timeout=2).status_code in (200, 401, 503)

    wait_for(answering, STARTUP_TIMEOUT, f"castray serve on port {port}")
    return server
