"""The file generator: test files of any size, written straight into the library.

Content is produced in blocks, so a 10 GB file needs no 10 GB of memory. A generation is
bounded: at most ``generator_max_bytes``, never more than the library's disk has free beyond a
reserve, a few at once (they share the upload slots), each on the generator's own threads so
the server's other disk work never waits behind them; it stops when its caller goes away or
the server stops, and then leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from castray.config import Settings
from castray.errors import InsufficientStorage, InvalidRequest, Stopped
from castray.models import ContentType, GeneratedFile
from castray.server.library import Library, check_file_name
from castray.server.limits import WriteSlots
from castray.sizes import parse_size

BLOCK = 1024 * 1024
PRESETS = {
    "tiny": 1024,
    "small": 10 * 1024,
    "medium": 100 * 1024,
    "large": 1024**2,
    "huge": 10 * 1024**2,
    "massive": 100 * 1024**2,
}
_TEXT = (
    b"CastRay test data: the quick brown fox jumps over the lazy dog. "
    b"0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ\n"
)


def generate(
    library: Library,
    size: int,
    content_type: ContentType,
    name: str | None,
    stop: threading.Event | None = None,
    overwrite: bool = False,
) -> GeneratedFile:
    """Write a new library file of ``size`` bytes of ``content_type`` content; ``stop`` ends
    it early (``Stopped``), leaving nothing. A file of that name is replaced only with
    ``overwrite`` (``FileExists`` otherwise, before a byte is written and again at the end)."""
    name = name or f"generated_{content_type.value}_{size}_{int(time.time() * 1000)}.bin"
    started = time.perf_counter()
    blocks = _blocks(content_type)
    writer = library.create(name, replace=overwrite)
    try:
        remaining = size
        while remaining > 0:
            if stop is not None and stop.is_set():
                raise Stopped(f"the generation of {name} was stopped; nothing of it was kept")
            block = next(blocks)
            piece = block if remaining >= len(block) else block[:remaining]
            writer.write(piece)
            remaining -= len(piece)
        digest = writer.commit()
    finally:
        writer.discard()
    return GeneratedFile(
        file=name,
        size=size,
        blake3=digest,
        content_type=content_type,
        seconds=round(time.perf_counter() - started, 3),
    )


class Generator:
    """The generator as a service: checks, slots, its own threads, stoppable."""

    def __init__(self, library: Library, settings: Settings, slots: WriteSlots) -> None:
        self._library = library
        self._settings = settings
        self._slots = slots
        self._threads = ThreadPoolExecutor(
            settings.max_concurrent_writes, thread_name_prefix="generator"
        )
        self._running: set[threading.Event] = set()

    async def create(
        self, size: str | int, content_type: ContentType, name: str | None, overwrite: bool = False
    ) -> GeneratedFile:
        """Generate a library file (one of the same name is replaced only with ``overwrite``);
        cancelling the caller stops the generation."""
        count = parse_size(size)
        limit = self._settings.generator_max_bytes
        if count > limit:
            raise InvalidRequest(
                f"size {count} bytes is over the generator's limit of {limit} bytes "
                "(CASTRAY_GENERATOR_MAX_BYTES)"
            )
        if name is not None:
            check_file_name(name)
            if not overwrite:  # before a byte is written (the commit checks again)
                await asyncio.to_thread(self._library.check_name_free, name)
        async with self._slots.slot("generation"):
            await self._check_free_space(count)
            stop = threading.Event()
            self._running.add(stop)
            loop = asyncio.get_running_loop()
            try:
                return await loop.run_in_executor(
                    self._threads,
                    partial(generate, overwrite=overwrite),
                    self._library,
                    count,
                    content_type,
                    name,
                    stop,
                )
            finally:
                stop.set()  # a cancelled caller leaves a thread that must end too
                self._running.discard(stop)

    async def _check_free_space(self, count: int) -> None:
        free = (await asyncio.to_thread(shutil.disk_usage, self._library.root)).free
        reserve = self._settings.disk_reserve_bytes
        if count + reserve > free:
            raise InsufficientStorage(
                f"a file of {count} bytes needs {count + reserve} bytes free with the reserve "
                f"(CASTRAY_DISK_RESERVE_BYTES); the library's disk has {free}"
            )

    def close(self) -> None:
        """Stop every generation and wait for their threads (they end within a block)."""
        for stop in list(self._running):
            stop.set()
        self._threads.shutdown(wait=True)


def _blocks(content_type: ContentType) -> itertools.cycle[bytes] | _Random:
    if content_type is ContentType.RANDOM:
        return _Random()
    if content_type is ContentType.TEXT:
        text = (_TEXT * (BLOCK // len(_TEXT) + 1))[:BLOCK]
        return itertools.cycle([text])
    pattern = bytes(range(256)) * (BLOCK // 256)
    return itertools.cycle([pattern])


class _Random:
    """Endless blocks of random bytes."""

    def __iter__(self) -> _Random:
        return self

    def __next__(self) -> bytes:
        return os.urandom(BLOCK)
