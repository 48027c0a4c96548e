"""Whole folders as one transfer: a folder travels as one bundle (an uncompressed tar), so ten
thousand small files cost one stream, not ten thousand round trips; the bundle is verified
whole (BLAKE3) like any file, so every file in it is, and each recipient unpacks it with every
file committed atomically.

A bundle holds relative paths only: regular files, folders, and symbolic links that stay
inside the tree. Anything else (an absolute path, a ``..``, a link that leaves the tree, a
device) is refused, both where a bundle is made and where it is unpacked.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import os
import posixpath
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from castray.errors import BadUpload

BUNDLE_SUFFIX = ".castray-folder"
"""The name a bundle has on a recipient until it is unpacked (after a leading dot)."""
COPY_PIECE = 1024 * 1024
"""Bytes of a file copied out of a bundle at a time."""


@dataclass(frozen=True)
class FolderIndex:
    """What a bundle holds: its files, their bytes, and where each file's data ends in the
    bundle (for progress in files)."""

    files: int
    bytes: int
    ends: tuple[int, ...]

    def files_within(self, offset: int) -> int:
        """How many files lie wholly in the bundle's first ``offset`` bytes."""
        return bisect.bisect_right(self.ends, offset)


def check_folder_name(name: str) -> str:
    """A folder's own name is a plain name (no separator, no ``..``, not hidden)."""
    if not name or "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        raise BadUpload(f"invalid folder name {name!r}: use a plain name, as for a file")
    return name


def check_member(member: tarfile.TarInfo) -> None:
    """Refuse what must not be in a bundle; ``BadUpload`` (400) says what and how to fix it."""
    name = member.name
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("/"):
        raise BadUpload(f"{name!r} is an absolute path: a folder holds relative paths only")
    if ".." in path.parts:
        raise BadUpload(f"{name!r} climbs out of the folder with '..'")
    if member.issym():
        target = posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname))
        if member.linkname.startswith("/") or target == ".." or target.startswith("../"):
            raise BadUpload(
                f"{name!r} is a symbolic link to {member.linkname!r}, outside the folder: "
                "send what it points to, or leave it out"
            )
    elif not (member.isfile() or member.isdir()):
        raise BadUpload(
            f"{name!r} is neither a file, a folder nor a symbolic link inside the folder"
        )


def index(bundle: Path) -> FolderIndex:
    """Check every member of ``bundle`` and index its files; ``BadUpload`` if it is not a
    folder bundle."""
    ends: list[int] = []
    total = 0
    try:
        with tarfile.open(bundle, "r:") as tar:
            for member in tar:
                check_member(member)
                if member.isfile():
                    ends.append(member.offset_data + member.size)
                    total += member.size
    except tarfile.TarError as exc:
        raise BadUpload(f"the folder is not an uncompressed tar stream: {exc}") from None
    return FolderIndex(files=len(ends), bytes=total, ends=tuple(ends))


def pack(folder: Path, out: Path) -> None:
    """Bundle ``folder`` (its contents, as relative paths) into ``out``; symbolic links that
    leave it are refused."""
    # GNU format, whole-second times: one header per member (PAX would add an extended
    # header to every file for its fractional mtime, and double the unpacking work).
    with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as tar:
        for path in sorted(_walk(folder)):
            info = tar.gettarinfo(str(path), arcname=path.relative_to(folder).as_posix())
            info.mtime = int(info.mtime)
            info.uname = info.gname = ""
            check_member(info)
            if info.isfile():
                with path.open("rb") as data:
                    tar.addfile(info, data)
            else:
                tar.addfile(info)


def _walk(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            yield Path(root) / name


def unpack(bundle: Path, target: Path, staging: Path) -> int:
    """Unpack ``bundle`` into ``target`` through ``staging`` (a hidden folder next to it):
    every file written and synced there first, then renamed into place one by one, so no one
    sees a partial file. Re-checks every member. The number of files."""
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    placed: list[str] = []
    folders: list[str] = []
    files = 0
    made: set[Path] = {staging}
    try:
        with tarfile.open(bundle, "r:") as tar:
            for member in tar:
                check_member(member)
                _extract(tar, member, staging, made)
                (folders if member.isdir() else placed).append(member.name)
                files += member.isfile()
        _sync_filesystem(staging)
        if not target.exists():
            staging.replace(target)  # all of it appears at once
        else:  # files it holds already are replaced one by one; others stay
            for name in folders:  # empty ones too
                (target / name).mkdir(parents=True, exist_ok=True)
            for name in placed:
                final = target / name
                final.parent.mkdir(parents=True, exist_ok=True)
                (staging / name).replace(final)
        _fsync_dirs(target, placed)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return files


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, staging: Path, made: set[Path]) -> None:
    """One member into ``staging``; ``made`` remembers the folders made, so that ten thousand
    small files cost a system call or three each, not a dozen."""
    path = staging / member.name
    if member.isdir():
        path.mkdir(parents=True, exist_ok=True)
        made.add(path)
        return
    if path.parent not in made:
        path.parent.mkdir(parents=True, exist_ok=True)
        made.add(path.parent)
    if member.issym():
        path.symlink_to(member.linkname)
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, member.mode & 0o777)
    try:
        source = tar.fileobj
        assert source is not None
        source.seek(member.offset_data)
        left = member.size
        while left:
            data = source.read(min(left, COPY_PIECE))
            if not data:
                raise BadUpload(f"the bundle ends inside {member.name!r}")
            os.write(fd, data)
            left -= len(data)
    finally:
        os.close(fd)


def _sync_filesystem(anywhere: Path) -> None:
    """One ``syncfs`` of the file system under ``anywhere`` (Linux), instead of a ``fsync``
    per file: ten thousand small files are then on disk at the cost of one flush."""
    fd = os.open(anywhere, os.O_RDONLY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syncfs(fd) != 0:
            os.sync()
    except (AttributeError, OSError):
        os.sync()
    finally:
        os.close(fd)


def _fsync_dirs(target: Path, names: list[str]) -> None:
    """The renames are durable once their folders are synced."""
    folders = {target, *((target / n).parent for n in names)}
    for folder in folders:
        with contextlib.suppress(OSError):
            fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
