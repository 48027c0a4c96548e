"""What an endpoint keeps: its received copies, counted, and swept by age and by quota.

A received copy is a regular file in the endpoint's storage directory (or under a folder of
it), whose name does not start with a dot: partial files and resume journals (``.name.id.part``,
``.name.id.resume``) belong to transfers and are never counted or removed here, and neither
is a file the endpoint is sending right now.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from castray.protocol import Removal, StorageUsage


@dataclass(frozen=True)
class _Copy:
    path: Path
    size: int
    mtime: float


def _copies(root: Path) -> Iterator[_Copy]:
    """Received copies under ``root``; hidden names and whatever is under them are skipped."""
    if not root.is_dir():
        return
    for entry in root.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.is_symlink():
            continue
        if entry.is_dir():
            yield from _copies(entry)
        elif entry.is_file():
            stat = entry.stat()
            yield _Copy(entry, stat.st_size, stat.st_mtime)


def sweep(
    root: Path,
    retention: float,
    quota: int,
    in_use: set[Path],
    remove: bool = True,
    now: float | None = None,
    pinned: set[Path] | None = None,
) -> StorageUsage:
    """Remove the copies older than ``retention`` seconds, then the oldest ones until the
    rest fit in ``quota`` bytes (0: no such limit), sparing ``in_use`` and what is under
    ``pinned`` (pinned copies: files, or folders and all they hold); what is left, and what
    went. ``remove=False`` only counts."""
    now = time.time() if now is None else now
    root = root.resolve()  # the copies' paths then compare with ``in_use`` as they are
    in_use = {p.resolve() for p in in_use}
    kept_under = {p.resolve() for p in pinned or set()}
    copies = sorted(_copies(root), key=lambda c: c.mtime)
    total = sum(c.size for c in copies)
    kept: list[_Copy] = []
    removed: list[Removal] = []
    for copy in copies:
        why = _why_remove(copy, now, retention, quota, total) if remove else None
        spared = copy.path in in_use or any(copy.path.is_relative_to(p) for p in kept_under)
        if why is None or spared:
            kept.append(copy)
            continue
        with contextlib.suppress(FileNotFoundError):
            copy.path.unlink()
        total -= copy.size
        removed.append(Removal(name=str(copy.path.relative_to(root)), size=copy.size, reason=why))
    if removed:
        _prune_empty_folders(root)
    return StorageUsage(
        files=len(kept),
        bytes=sum(c.size for c in kept),
        oldest=min((c.mtime for c in kept), default=None),
        removed=removed,
    )


def _why_remove(copy: _Copy, now: float, retention: float, quota: int, total: int) -> str | None:
    """Why ``copy`` goes (the copies older than it are gone already), or None."""
    if retention > 0 and now - copy.mtime > retention:
        return f"older than received_retention ({retention:g} s)"
    if quota > 0 and total > quota:
        return f"the endpoint's copies were over storage_quota_bytes ({quota})"
    return None


def _prune_empty_folders(root: Path) -> None:
    """Folders a sweep emptied (of a directory transfer) go too; the root stays."""
    for folder in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
        if any(part.startswith(".") for part in folder.relative_to(root).parts):
            continue
        try:
            folder.rmdir()
        except OSError:
            continue  # not empty


def put_in_place(temp: Path, final: Path) -> None:
    """Rename a finished copy over ``final`` and make the rename durable.

    A copy that replaces an older one would otherwise pay for freeing the old one inside the
    rename: the kernel drops its cached pages and blocks there, 0.5 s for a 1 GiB file on
    this project's machine, before the new copy counts as committed. Holding the old one
    open across the rename leaves that to a thread that closes it after."""
    try:
        # Non-blocking: a FIFO left at that name must not hold the commit (for a file it
        # changes nothing).
        replaced: int | None = os.open(final, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        replaced = None  # none there (or not a file we could open): nothing to defer
    try:
        temp.replace(final)
        fsync_dir(final.parent)
    finally:
        if replaced is not None:
            threading.Thread(target=os.close, args=(replaced,), name="free-replaced").start()


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
