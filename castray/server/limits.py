"""Bounds on what one request may cost the server: body sizes and writers at once.

A JSON body is read whole before it is validated, so its size is bounded before it is read
(``Content-Length``) and while it is read (a chunked body). Uploads and generations write
whole files to disk; a few at once keep the disk and the worker threads free for everything
else, and each further one is refused (429) rather than queued without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from castray.errors import FileTooLarge, TooManyRequests

_BODIES_WITH_OWN_LIMIT = ("multipart/form-data",)
_PATHS_WITH_OWN_LIMIT = frozenset({"/api/upload-folder"})
"""A folder's tar stream: ``upload_limit_bytes`` bounds it, as it does a file upload."""


class JsonBodyLimit:
    """ASGI middleware: request bodies other than uploads are at most ``limit`` bytes (413)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self._app = app
        self._limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        content_type = headers.get(b"content-type", b"").decode("latin-1").lower()
        if (
            content_type.startswith(_BODIES_WITH_OWN_LIMIT)
            or scope["path"] in _PATHS_WITH_OWN_LIMIT
        ):
            await self._app(scope, receive, send)
            return
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self._limit:
            await self._refuse(send)
            return
        seen = 0
        refused = False

        async def counted() -> Message:
            # Past the limit, the 413 is sent at once and the app is told the client left.
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self._limit:
                    refused = True
                    await self._refuse(send)
                    return {"type": "http.disconnect"}
            return message

        async def unless_refused(message: Message) -> None:
            if not refused:
                await send(message)

        await self._app(scope, counted, unless_refused)

    def _message(self) -> str:
        return (
            f"the request body is larger than {self._limit} bytes, the most this server takes "
            "(CASTRAY_MAX_JSON_BYTES); send files with POST /api/upload, folders with POST "
            "/api/upload-folder"
        )

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"detail": self._message(), "code": FileTooLarge.code}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": FileTooLarge.status_code,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


class WriteSlots:
    """At most ``count`` uploads and generations at once; one more is refused at once."""

    def __init__(self, count: int) -> None:
        self._count = count
        self._free = asyncio.Semaphore(count)

    @contextlib.asynccontextmanager
    async def slot(self, what: str) -> AsyncIterator[None]:
        if self._free.locked():
            raise TooManyRequests(
                f"{self._count} uploads or generations are running, the most this server runs "
                f"at once (CASTRAY_MAX_CONCURRENT_WRITES); try the {what} again when one ends"
            )
        async with self._free:
            yield
