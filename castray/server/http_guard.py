"""Bounds on connections that uvicorn leaves open: a request's headers must arrive within a
deadline, and past a number of open connections a new one is closed at once.

uvicorn times out an idle keep-alive connection, but not one that sent half a request: 2,000
such connections stayed open for minutes, and with 1,024 file descriptors the server then
answered nobody. So its HTTP protocol gets a header deadline (armed when a connection opens
and when a request begins, cleared once its headers are in), and a cap on connections kept
below the process's file descriptor limit.
"""

from __future__ import annotations

import asyncio
import resource
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

FD_RESERVE = 256
"""File descriptors kept for everything but HTTP connections (agents, files, the history)."""


def raise_fd_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def guarded_protocol(header_timeout: float, max_connections: int) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol with a header deadline and a cap on open connections."""

    class GuardedHttp(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                self.logger.warning(
                    "refused a connection: %d are open, the most this server keeps "
                    "(CASTRAY_HTTP_MAX_CONNECTIONS)",
                    len(self.connections) - 1,
                )
                transport.close()
                return
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def _arm(self) -> None:
            if self._deadline is None:
                self._deadline = self.loop.call_later(header_timeout, self._headers_late)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _headers_late(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.close()

    return GuardedHttp
