"""``/api/file-generator``: test files of any size and content, written into the library."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from fastapi import APIRouter, Request, status
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict

from castray.errors import CastRayError, Stopped
from castray.models import (
    ContentType,
    ErrorResponse,
    GeneratedFile,
    GenerateRequest,
    LibraryFile,
    TransferAccepted,
    TransferCreate,
    TransferMode,
)
from castray.server.deps import GeneratorDep, LibraryDep, TransfersDep
from castray.server.generator import PRESETS, Generator

router = APIRouter(prefix="/file-generator", tags=["file generator"])

DISCONNECT_CHECK_EVERY = 0.5
"""Seconds between looks at whether the client of a generation is still there."""


class GeneratorInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    content_types: list[ContentType]
    presets: dict[str, int]
    size_units: str
    library_files: int
    library_bytes: int


class CreateAndTransfer(GenerateRequest):
    """A file to generate, and where to send it from and to."""

    model_config = ConfigDict(extra="forbid")

    source_node: str
    mode: TransferMode = TransferMode.UNICAST
    recipients: list[str] | None = None
    group: str | None = None


class CreatedAndSent(BaseModel):
    model_config = ConfigDict(frozen=True)

    file: GeneratedFile
    transfer: TransferAccepted


@router.get("/presets")
async def presets() -> dict[str, int]:
    """Preset sizes in bytes: tiny 1 KB ... massive 100 MB."""
    return PRESETS


@router.get("/info")
async def info(library: LibraryDep) -> GeneratorInfo:
    files = await asyncio.to_thread(library.list)
    return GeneratorInfo(
        content_types=list(ContentType),
        presets=PRESETS,
        size_units="B, KB, MB, GB, TB (powers of 1024), e.g. 55.5MB",
        library_files=len(files),
        library_bytes=sum(f.size for f in files),
    )


@router.post(
    "/create",
    status_code=status.HTTP_201_CREATED,
    responses={code: {"model": ErrorResponse} for code in (400, 409, 422, 429, 503, 507)},
)
async def create(body: GenerateRequest, generator: GeneratorDep, request: Request) -> GeneratedFile:
    """Generate a file (streamed to disk: any size fits in little memory; bounded by
    CASTRAY_GENERATOR_MAX_BYTES and the disk's free space); stops if the client goes away.
    A library file of the same name is replaced only with ``overwrite`` (409 otherwise)."""
    return await _generate(generator, body, request)


@router.post(
    "/create-and-transfer",
    status_code=status.HTTP_202_ACCEPTED,
    responses={code: {"model": ErrorResponse} for code in (400, 404, 409, 422, 429, 503, 507)},
)
async def create_and_transfer(
    body: CreateAndTransfer, generator: GeneratorDep, transfers: TransfersDep, request: Request
) -> CreatedAndSent:
    made = await _generate(generator, body, request)
    started = await transfers.start(
        TransferCreate(
            source_node=body.source_node,
            file=made.file,
            mode=body.mode,
            recipients=body.recipients,
            group=body.group,
        )
    )
    return CreatedAndSent(
        file=made, transfer=TransferAccepted(transfer_id=started.id, status=started.status)
    )


@router.get("/files")
async def files(library: LibraryDep) -> list[LibraryFile]:
    return await asyncio.to_thread(library.list)


@router.get("/download/{name}", response_class=FileResponse)
async def download_generated(name: str, library: LibraryDep) -> FileResponse:
    path: Path = await asyncio.to_thread(library.path, name)
    return FileResponse(path, filename=name, media_type="application/octet-stream")


@router.delete("/files/{name}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_generated(name: str, library: LibraryDep) -> None:
    await asyncio.to_thread(library.delete, name)


async def _generate(generator: Generator, body: GenerateRequest, request: Request) -> GeneratedFile:
    """Generate, watching the client: one that goes away stops its generation."""
    work = asyncio.ensure_future(
        generator.create(body.size, body.content_type, body.name, body.overwrite)
    )
    while True:
        done, _ = await asyncio.wait({work}, timeout=DISCONNECT_CHECK_EVERY)
        if done:
            return work.result()
        stopping = request.app.state.stopping.is_set()
        if stopping or await request.is_disconnected():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError, CastRayError):
                await work
            why = "the server is stopping" if stopping else "the client went away"
            raise Stopped(f"{why}; the generation was stopped and nothing of it was kept")
