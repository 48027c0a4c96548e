"""The file generator: test files of any size, written straight into the library.

Content is produced in blocks, so a 10 GB file needs no 10 GB of memory. Runs on a worker
thread (disk and CPU bound).
"""

from __future__ import annotations

import itertools
import os
import re
import time

from castray.errors import InvalidRequest
from castray.models import ContentType, GeneratedFile
from castray.server.library import Library

BLOCK = 1024 * 1024
UNITS = {
    "": 1,
    "B": 1,
    "KB": 1024,
    "KIB": 1024,
    "MB": 1024**2,
    "MIB": 1024**2,
    "GB": 1024**3,
    "GIB": 1024**3,
    "TB": 1024**4,
    "TIB": 1024**4,
}
PRESETS = {
    "tiny": 1024,
    "small": 10 * 1024,
    "medium": 100 * 1024,
    "large": 1024**2,
    "huge": 10 * 1024**2,
    "massive": 100 * 1024**2,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")
_TEXT = (
    b"CastRay test data: the quick brown fox jumps over the lazy dog. "
    b"0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ\n"
)


def parse_size(size: str | int) -> int:
    """Bytes from ``1048576``, ``"10KB"``, ``"55.5MB"``, ``"1GiB"`` (units are powers of 1024)."""
    if isinstance(size, int):
        value = size
    else:
        match = _SIZE.fullmatch(size)
        unit = match[2].upper() if match else ""
        if match is None or unit not in UNITS:
            raise InvalidRequest(
                f"cannot read size {size!r}: use bytes or a number with B, KB, MB, GB or TB"
            )
        value = int(float(match[1]) * UNITS[unit])
    if value < 0:
        raise InvalidRequest("size must not be negative")
    return value


def generate(
    library: Library, size: int, content_type: ContentType, name: str | None
) -> GeneratedFile:
    """Write a new library file of ``size`` bytes of ``content_type`` content."""
    name = name or f"generated_{content_type.value}_{size}_{int(time.time() * 1000)}.bin"
    started = time.perf_counter()
    blocks = _blocks(content_type)
    writer = library.create(name)
    try:
        remaining = size
        while remaining > 0:
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
