"""The file library: ``/api/upload`` and ``/api/files``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import APIRouter, Request, status
from fastapi.responses import FileResponse
from starlette.requests import ClientDisconnect

from castray.config import Settings
from castray.errors import BadUpload, FileTooLarge, RequestTimeout, Stopped
from castray.models import ErrorResponse, LibraryFile, UploadResult
from castray.server.deps import LibraryDep, SettingsDep, WriteSlotsDep
from castray.server.uploads import MultipartUpload, boundary_of
from castray.sizes import binary_size

router = APIRouter(tags=["files"])
log = logging.getLogger(__name__)


@router.post(
    "/upload",
    status_code=status.HTTP_201_CREATED,
    responses={code: {"model": ErrorResponse} for code in (400, 408, 413, 429)},
)
async def upload(
    request: Request, library: LibraryDep, settings: SettingsDep, slots: WriteSlotsDep
) -> UploadResult:
    """Store a multipart upload (field ``file``) in the library, streamed to disk. A file of
    the same name is replaced, as ``cp`` replaces one (``replaced`` says so; transfers reading
    the old one read it whole); of two uploads of one name, the one that finishes last is
    the file."""
    limit = settings.upload_limit_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise FileTooLarge(f"the upload is larger than the limit of {limit} bytes")
    boundary = boundary_of(request.headers.get("content-type", ""))
    async with slots.slot("upload"):
        stored = MultipartUpload(library, boundary, limit)
        try:
            stopping: asyncio.Event = request.app.state.stopping
            async for piece in _arriving(request, settings, stopping):
                await asyncio.to_thread(stored.write, piece)
            return await asyncio.to_thread(stored.finish)
        except ClientDisconnect:
            log.info("an upload was cut off by its client; nothing of it was kept")
            raise BadUpload("the upload was cut off before its end") from None
        finally:
            await asyncio.to_thread(stored.abort)


@router.post(
    "/upload-folder",
    status_code=status.HTTP_201_CREATED,
    responses={code: {"model": ErrorResponse} for code in (400, 408, 413, 429)},
)
async def upload_folder(
    request: Request,
    name: str,
    library: LibraryDep,
    settings: SettingsDep,
    slots: WriteSlotsDep,
) -> UploadResult:
    """Store a folder: the body is an uncompressed tar stream of its contents (relative
    paths; ``castray send ./DIR`` makes one). It is listed as ``NAME/`` and sent as one
    transfer. Absolute paths, ``..`` and symbolic links that leave the folder are refused
    (400), and then nothing is kept."""
    limit = settings.upload_limit_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise FileTooLarge(f"the upload is larger than the limit of {limit} bytes")
    async with slots.slot("upload"):
        writer = await asyncio.to_thread(library.create, f"{name}/", limit)
        try:
            stopping: asyncio.Event = request.app.state.stopping
            async for piece in _arriving(request, settings, stopping):
                await asyncio.to_thread(writer.write, piece)
            digest = await asyncio.to_thread(writer.commit)
            return UploadResult(
                file=writer.name, size=writer.size, blake3=digest, replaced=writer.replaced
            )
        except ClientDisconnect:
            log.info("a folder upload was cut off by its client; nothing of it was kept")
            raise BadUpload("the upload was cut off before its end") from None
        finally:
            await asyncio.to_thread(writer.discard)


async def _arriving(
    request: Request, settings: Settings, stopping: asyncio.Event
) -> AsyncIterator[bytes]:
    """The request body as it arrives. It is dropped (408) when nothing arrives for
    ``upload_idle_timeout``, or when less than ``upload_min_rate`` arrives on average over a
    window that long (a byte now and then would otherwise hold a writer slot for ever); a stop
    of the server ends it too."""
    idle, floor = settings.upload_idle_timeout, settings.upload_min_rate
    loop = asyncio.get_running_loop()
    pieces = request.stream().__aiter__()
    stop: asyncio.Future[object] = asyncio.ensure_future(stopping.wait())
    next_piece: asyncio.Future[object] | None = None
    last = window_start = loop.time()
    window_bytes = 0
    try:
        while True:
            piece = next_piece or asyncio.ensure_future(pieces.__anext__())
            next_piece = piece
            now = loop.time()
            timeout = max(0.0, min(last + idle, window_start + idle) - now)
            done, _ = await asyncio.wait(
                {piece, stop}, timeout=timeout, return_when="FIRST_COMPLETED"
            )
            now = loop.time()
            if stop in done:
                raise Stopped("the server is stopping; the upload was dropped")
            if piece in done:
                try:
                    data = piece.result()
                except StopAsyncIteration:
                    return
                assert isinstance(data, bytes)
                next_piece, last = None, now
                window_bytes += len(data)
                yield data
            elif now - last >= idle:
                raise RequestTimeout(
                    f"the upload sent nothing for {idle:g} s and was dropped "
                    "(CASTRAY_UPLOAD_IDLE_TIMEOUT)"
                )
            if now - window_start >= idle:
                if window_bytes < floor * idle:
                    raise RequestTimeout(
                        f"the upload sent {window_bytes} bytes in {now - window_start:.0f} s, "
                        f"less than {binary_size(floor)}/s, and was dropped "
                        "(CASTRAY_UPLOAD_MIN_RATE)"
                    )
                window_start, window_bytes = now, 0
    finally:
        stop.cancel()
        if next_piece is not None:
            next_piece.cancel()


@router.get("/files")
async def list_files(library: LibraryDep) -> list[LibraryFile]:
    return await asyncio.to_thread(library.list)


@router.get("/files/{name:path}", response_class=FileResponse)
async def download(name: str, library: LibraryDep) -> FileResponse:
    path: Path = await asyncio.to_thread(library.path, name)
    filename = f"{name[:-1]}.tar" if name.endswith("/") else name  # a folder: its bundle
    return FileResponse(path, filename=filename, media_type="application/octet-stream")


@router.delete("/files/{name:path}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_file(name: str, library: LibraryDep) -> None:
    await asyncio.to_thread(library.delete, name)
