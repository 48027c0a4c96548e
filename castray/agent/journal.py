"""A receiving sink's resume journal: which chunks of its partial file are verified and on
disk, so that an interrupted transfer can be resumed without sending a verified byte again.

It lives next to the partial file, ``.<name>.<transfer>.part``, as ``.<name>.<transfer>.resume``
(small JSON: the file's size, chunk size and whole BLAKE3, which say what the partial file is a
part of, and a bitmap of its chunks). It is replaced atomically (written aside, fsync'd,
renamed), and only after the partial file's data was fsync'd: a chunk it lists is on disk,
whatever dies when. A partial file without a journal is not resumable, and is swept.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

PART = ".part"
JOURNAL = ".resume"
FORMAT = 1


def journal_path(part: Path) -> Path:
    """The journal of a partial file ``.<name>.<transfer>.part``."""
    return part.with_name(part.name.removesuffix(PART) + JOURNAL)


@dataclass(frozen=True)
class Journal:
    """What a partial file holds: ``verified[i]`` is 1 when chunk ``i`` is verified and on disk."""

    size: int
    chunk_size: int
    blake3: str
    verified: bytes

    def matches(self, size: int, chunk_size: int, blake3: str) -> bool:
        """Whether this journal is of the same file, cut the same way."""
        return (self.size, self.chunk_size, self.blake3) == (size, chunk_size, blake3)

    def write(self, path: Path) -> None:
        """Replace the journal at ``path`` atomically (the partial file is already fsync'd)."""
        bits = np.packbits(np.frombuffer(self.verified, dtype=np.uint8))
        text = json.dumps(
            {
                "format": FORMAT,
                "size": self.size,
                "chunk_size": self.chunk_size,
                "blake3": self.blake3,
                "chunks": len(self.verified),
                "verified": base64.b64encode(bits.tobytes()).decode("ascii"),
            }
        )
        aside = path.with_name(path.name + ".tmp")
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        aside.replace(path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)  # the rename itself is durable
        finally:
            os.close(folder)

    @classmethod
    def read(cls, path: Path) -> Journal | None:
        """The journal at ``path``, or None if there is none or it cannot be read."""
        try:
            raw = json.loads(path.read_text())
            if raw.get("format") != FORMAT:
                return None
            bits = np.frombuffer(base64.b64decode(raw["verified"]), dtype=np.uint8)
            verified = np.unpackbits(bits)[: int(raw["chunks"])].tobytes()
            return cls(int(raw["size"]), int(raw["chunk_size"]), str(raw["blake3"]), verified)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            if not isinstance(exc, FileNotFoundError):
                log.warning("ignoring the unreadable resume journal %s: %s", path, exc)
            return None


def remove(part: Path) -> None:
    """Remove a partial file and its journal."""
    journal = journal_path(part)
    for path in (part, journal, journal.with_name(journal.name + ".tmp")):
        path.unlink(missing_ok=True)


def sweep(storage_dir: Path, keep_for: float) -> tuple[int, int]:
    """At an endpoint's start: remove partial files nothing can resume (no journal, or older
    than ``keep_for`` seconds) and journals without their partial file. (kept, removed)."""
    kept = removed = 0
    now = time.time()
    for part in storage_dir.glob(f".*{PART}"):
        with contextlib.suppress(OSError):
            journal = journal_path(part)
            age = now - max(part.stat().st_mtime, _mtime(journal))
            if journal.exists() and age <= keep_for:
                kept += 1
                continue
            size = part.stat().st_size
            remove(part)
            removed += 1
            why = "not resumable" if not journal.exists() else f"{age / 3600:.0f} h old"
            log.warning(
                "removed %s, left by a transfer that did not end (%s, %d bytes)", part, why, size
            )
    for stray in [*storage_dir.glob(f".*{JOURNAL}"), *storage_dir.glob(f".*{JOURNAL}.tmp")]:
        part = stray.with_name(stray.name.removesuffix(".tmp").removesuffix(JOURNAL) + PART)
        if not part.exists():
            stray.unlink(missing_ok=True)
    return kept, removed


def discard(storage_dir: Path, transfer_id: str) -> int:
    """Remove what a transfer kept here for resuming (its resumable state is given up): the
    partial files removed."""
    parts = list(storage_dir.glob(f".*.{transfer_id}{PART}"))
    for part in parts:
        remove(part)
    return len(parts)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
