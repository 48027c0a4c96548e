"""``/api/file-generator``: test files of any size and content, written into the library."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, status
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict

from castray.models import (
    ContentType,
    GeneratedFile,
    GenerateRequest,
    LibraryFile,
    TransferAccepted,
    TransferCreate,
    TransferMode,
)
from castray.server.deps import LibraryDep, TransfersDep
from castray.server.generator import PRESETS, generate, parse_size
from castray.server.library import Library
from castray.server.routes.files import delete_file, download

router = APIRouter(prefix="/file-generator", tags=["file generator"])


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


@router.post("/create", status_code=status.HTTP_201_CREATED)
async def create(body: GenerateRequest, library: LibraryDep) -> GeneratedFile:
    """Generate a file (streamed to disk: any size fits in little memory)."""
    return await _generate(library, body)


@router.post("/create-and-transfer", status_code=status.HTTP_202_ACCEPTED)
async def create_and_transfer(
    body: CreateAndTransfer, library: LibraryDep, transfers: TransfersDep
) -> CreatedAndSent:
    made = await _generate(library, body)
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
    return await download(name, library)


@router.delete("/files/{name}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_generated(name: str, library: LibraryDep) -> None:
    await delete_file(name, library)


async def _generate(library: Library, body: GenerateRequest) -> GeneratedFile:
    size = parse_size(body.size)
    return await asyncio.to_thread(generate, library, size, body.content_type, body.name)
