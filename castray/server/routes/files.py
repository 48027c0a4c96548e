"""The file library: ``/api/upload`` and ``/api/files``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, status
from fastapi.responses import FileResponse
from python_multipart.multipart import MultipartParser, parse_options_header

from castray.errors import FileTooLarge, InvalidRequest
from castray.models import LibraryFile, UploadResult
from castray.server.deps import LibraryDep, SettingsDep
from castray.server.library import Library, LibraryWriter, check_file_name

router = APIRouter(tags=["files"])


@router.post("/upload", status_code=status.HTTP_201_CREATED)
async def upload(request: Request, library: LibraryDep, settings: SettingsDep) -> UploadResult:
    """Store a multipart upload (field ``file``) in the library, streamed to disk."""
    limit = settings.upload_limit_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise FileTooLarge(f"the upload is larger than the limit of {limit} bytes")
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise InvalidRequest("send the file as multipart/form-data in a field named 'file'")
    stream = _UploadStream(library, limit)
    parser = MultipartParser(boundary, stream.callbacks())
    try:
        async for body_chunk in request.stream():
            await asyncio.to_thread(parser.write, body_chunk)
        await asyncio.to_thread(parser.finalize)
        return await asyncio.to_thread(stream.finish)
    finally:
        await asyncio.to_thread(stream.abort)


@router.get("/files")
async def list_files(library: LibraryDep) -> list[LibraryFile]:
    return await asyncio.to_thread(library.list)


@router.get("/files/{name}", response_class=FileResponse)
async def download(name: str, library: LibraryDep) -> FileResponse:
    path: Path = await asyncio.to_thread(library.path, name)
    return FileResponse(path, filename=name, media_type="application/octet-stream")


@router.delete("/files/{name}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_file(name: str, library: LibraryDep) -> None:
    await asyncio.to_thread(library.delete, name)


class _UploadStream:
    """Multipart callbacks that write the ``file`` part straight into the library."""

    def __init__(self, library: Library, limit: int) -> None:
        self._library = library
        self._limit = limit
        self._headers: dict[bytes, bytes] = {}
        self._field = b""
        self._value = b""
        self._writer: LibraryWriter | None = None
        self._result: UploadResult | None = None

    def callbacks(self) -> Any:
        return {
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
        }

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field, self._value = b"", b""

    def _on_headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._headers = {}
        if params.get(b"name") != b"file" or self._writer is not None:
            return
        raw = params.get(b"filename")
        if not raw:
            raise InvalidRequest("the 'file' part has no filename")
        name = check_file_name(raw.decode("utf-8", "replace"))
        self._writer = self._library.create(name, self._limit)

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._writer is not None and self._result is None:
            self._writer.write(memoryview(data)[start:end])

    def _on_part_end(self) -> None:
        if self._writer is not None and self._result is None:
            writer = self._writer
            digest = writer.commit()
            self._result = UploadResult(file=writer.name, size=writer.size, blake3=digest)

    def finish(self) -> UploadResult:
        if self._result is None:
            raise InvalidRequest("no complete 'file' part in the upload")
        return self._result

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.discard()
