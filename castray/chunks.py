"""Chunking and hashing: how a file is cut for the wire and how its bytes are verified."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import blake3

HASH_THREADS = 2
"""BLAKE3 threads for whole-file hashes; it is memory-bound beyond a couple of cores."""


@dataclass(frozen=True)
class Chunk:
    index: int
    offset: int
    length: int


def plan_chunks(size: int, chunk_size: int) -> list[Chunk]:
    """Cut ``size`` bytes into chunks of ``chunk_size`` (the last may be shorter)."""
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    return [
        Chunk(index, offset, min(chunk_size, size - offset))
        for index, offset in enumerate(range(0, size, chunk_size))
    ]


FileIdentity = tuple[int, int, int, int]
"""What says a file is still the one it was: size, mtime and ctime (ns), inode. A write in
place changes the ctime even when the mtime is put back; a replacement changes the inode."""


def identity_of(status: os.stat_result) -> FileIdentity:
    return (status.st_size, status.st_mtime_ns, status.st_ino, status.st_ctime_ns)


def file_blake3(path: Path) -> str:
    """BLAKE3 of a whole file, read through a memory map."""
    hasher = blake3.blake3(max_threads=HASH_THREADS)
    if path.stat().st_size:
        hasher.update_mmap(path)
    return str(hasher.hexdigest())
