"""Serving the app with uvicorn, and telling long requests at once when the server stops.

uvicorn, asked to stop, first waits for the requests in flight (up to
``shutdown_timeout``), then cancels them, and only then runs the app's shutdown. A generation
or an upload could hold it all that time, and a cancelled one answers a bare 500. So the
moment a stop is asked for, ``app.state.stopping`` is set: long requests end on their own,
with a proper answer, and leave nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
from types import FrameType

import uvicorn
from fastapi import FastAPI

from castray.config import Settings
from castray.server.http_guard import FD_RESERVE, guarded_protocol, raise_fd_limit

TLS_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
"""TLS 1.2 suites offered: forward secret and authenticated only (no CBC, no RSA key
exchange); TLS 1.3 chooses its own, all modern."""


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, stopping: asyncio.Event) -> None:
        super().__init__(config)
        self._stopping = stopping

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._stopping.set()  # uvicorn's signal handlers run on the event loop


def serve(app: FastAPI, settings: Settings) -> None:
    """Run until stopped (Ctrl+C or SIGTERM)."""
    files = raise_fd_limit()
    max_connections = min(settings.http_max_connections, max(16, files - FD_RESERVE))
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=guarded_protocol(settings.http_header_timeout, max_connections),
        timeout_keep_alive=math.ceil(settings.http_header_timeout),
        log_level=settings.log_level,
        log_config=None,
        ssl_certfile=settings.tls_cert,
        ssl_keyfile=settings.tls_key,
        ssl_ciphers=TLS_CIPHERS,
        # One log line per request costs more than answering /api/status; debug shows them.
        access_log=settings.log_level == "debug",
        # Connections that will not close delay a stop by this much at most.
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout),
        # A /ws client that stops reading stops answering pings and is dropped.
        ws_ping_interval=settings.ws_send_timeout / 2,
        ws_ping_timeout=settings.ws_send_timeout / 2,
    )
    # uvicorn re-raises the signal that stopped it once it has shut down; Ctrl+C is a normal end.
    # A listening socket handed down (``castray lab``: made in another network namespace).
    sockets = None if settings.listen_fd is None else [socket.socket(fileno=settings.listen_fd)]
    with contextlib.suppress(KeyboardInterrupt):
        _Server(config, app.state.stopping).run(sockets=sockets)
