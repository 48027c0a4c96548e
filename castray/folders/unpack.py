"""Unpacking a verified bundle on a recipient, where nothing in it can write outside the folder.

Every member is checked again first (``rules``: the recipient trusts no earlier check). Then
files and folders are made in a hidden staging folder through open folder descriptors, one
path component at a time, never following a link (``O_NOFOLLOW``), and each file is created
new (``O_EXCL``); the bundle's symbolic links are made last, once nothing else will be
created, so no write can pass through one. One ``syncfs`` makes it durable, and it is put in
place: a new folder appears with one rename; into an existing copy each file is renamed in,
the copy's folders walked the same way (a link or a file in the way is an error, not a road).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import stat
import tarfile
from collections import OrderedDict
from pathlib import Path

from castray.errors import BadUpload
from castray.folders.bundle import read_entries
from castray.folders.rules import Entry, Kind

COPY_PIECE = 1024 * 1024
"""Bytes of a file copied out of a bundle at a time, where the kernel cannot copy it itself."""
OPEN_FOLDERS = 64
"""Folder descriptors kept open while unpacking (the most recently used)."""
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def unpack(bundle: Path, target: Path, staging: Path) -> int:
    """Unpack ``bundle`` into ``target`` through ``staging`` (a hidden folder next to it):
    every file written and synced there first, then put in place, so no one sees a partial
    file. Re-checks every member. The number of files."""
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        with tarfile.open(bundle, "r:") as tar:
            entries = read_entries(tar)
        with _Folders(staging) as made, bundle.open("rb", buffering=0) as source:
            for entry in entries:
                if entry.kind is Kind.FOLDER:
                    made.folder(entry.path)
                elif entry.kind is Kind.FILE:
                    _write_file(made, entry, source.fileno())
            for entry in entries:  # last: no file or folder is made through a link
                if entry.kind is Kind.LINK:
                    parent, name = made.parent_of(entry.path)
                    os.symlink(entry.member.linkname, name, dir_fd=parent)
            _sync_filesystem(made.root)
            if _is_real_folder(target):
                _merge(made, entries, target)
            elif os.path.lexists(target):
                raise OSError(
                    errno.EEXIST,
                    f"{target.name} exists at the recipient and is not a folder: remove it, "
                    "or send the folder under another name",
                )
            else:
                staging.replace(target)  # all of it appears at once
        _fsync_dir(target.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sum(1 for e in entries if e.kind is Kind.FILE)


def _write_file(made: _Folders, entry: Entry, source: int) -> None:
    member = entry.member
    parent, name = made.parent_of(entry.path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(name, flags, member.mode & 0o777, dir_fd=parent)
    try:
        _copy(source, fd, member.offset_data, member.size, entry.path)
    finally:
        os.close(fd)


def _copy(source: int, fd: int, offset: int, size: int, path: str) -> None:
    """``size`` bytes of the bundle from ``offset`` into ``fd``: copied by the kernel where it
    can, else through a buffer."""
    done = 0
    with contextlib.suppress(OSError):
        while done < size:
            n = os.copy_file_range(source, fd, size - done, offset + done)
            if n == 0:
                break
            done += n
    while done < size:
        data = os.pread(source, min(COPY_PIECE, size - done), offset + done)
        if not data:
            raise BadUpload(f"the bundle ends inside {path!r}")
        os.pwrite(fd, data, done)
        done += len(data)


def _merge(made: _Folders, entries: list[Entry], target: Path) -> None:
    """Put each file, link and folder of ``made`` into the existing copy at ``target``: files
    it holds already are replaced, others stay."""
    with _Folders(target) as existing:
        for entry in entries:
            if entry.kind is Kind.FOLDER:
                existing.folder(entry.path)
                continue
            source, name = made.parent_of(entry.path)
            destination, _ = existing.parent_of(entry.path, create=True)
            try:
                os.rename(name, name, src_dir_fd=source, dst_dir_fd=destination)
            except OSError as exc:
                raise OSError(
                    exc.errno,
                    f"cannot put {entry.path} into the existing copy {target.name}: "
                    f"{exc.strerror} (a folder is in the way?)",
                ) from exc
        for fd in existing.open_fds():
            with contextlib.suppress(OSError):
                os.fsync(fd)


class _Folders:
    """Folders under one root, opened one component at a time without following links."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._root_fd = os.open(root, _DIR_FLAGS)
        self._open: OrderedDict[str, int] = OrderedDict()

    def __enter__(self) -> _Folders:
        return self

    def __exit__(self, *_: object) -> None:
        for fd in self._open.values():
            os.close(fd)
        self._open.clear()
        os.close(self._root_fd)

    def open_fds(self) -> list[int]:
        return [self._root_fd, *self._open.values()]

    def parent_of(self, path: str, create: bool = True) -> tuple[int, str]:
        """The open folder ``path`` lies in (made if missing), and its own name."""
        folder, _, name = path.rpartition("/")
        return self.folder(folder, create), name

    def folder(self, path: str, create: bool = True) -> int:
        """An open descriptor of folder ``path`` (made if missing); a link or a file in the
        way is an error."""
        if not path:
            return self._root_fd
        fd = self._open.get(path)
        if fd is not None:
            self._open.move_to_end(path)
            return fd
        parent_path, _, name = path.rpartition("/")
        parent = self.folder(parent_path, create)
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o755, dir_fd=parent)
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                raise OSError(
                    exc.errno, f"{path} in {self.root.name} is not a folder (a file or a link)"
                ) from exc
            raise
        self._open[path] = fd
        if len(self._open) > OPEN_FOLDERS:
            _, oldest = self._open.popitem(last=False)
            os.close(oldest)
        return fd


def _is_real_folder(path: Path) -> bool:
    try:
        return stat.S_ISDIR(path.lstat().st_mode)
    except OSError:
        return False


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


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
