"""The file library: files users uploaded or generated, ready to be sent from any endpoint.

Files are written under a temporary name and renamed into place only when complete and
synced, so a listed file is always whole. BLAKE3 digests are computed while writing, or on
first use for files put there by hand, and remembered while the file is unchanged. Every
method here does disk I/O: call it from a worker thread, never on the event loop.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import blake3

from castray import folders
from castray.chunks import HASH_THREADS, FileIdentity, file_blake3, identity_of
from castray.errors import BadFileName, FileExists, FileMissing, FileTooLarge, SourceChanged
from castray.models import EventData, FileAddedEvent, FileRemovedEvent, LibraryFile
from castray.names import printable

PART_SUFFIX = ".part"
FOLDERS = ".folders"
"""Where folders are kept, each as its bundle ``NAME.tar`` and index ``NAME.json``; a folder's
library name is ``NAME/``."""

OnChange = Callable[[EventData], None]
"""Told ``FileAddedEvent`` or ``FileRemovedEvent``; called from the worker thread that made
the change."""


MAX_NAME_BYTES = 216
"""Longest file name in UTF-8 bytes: its temporary form ``.NAME.<32 hex>.part`` must still fit
the 255 bytes a file system allows for a name."""


def check_file_name(name: str) -> str:
    """A plain, printable file name: no separator, no ``..``, not hidden, nothing invisible or
    look-alike (controls, bidirectional overrides, odd spaces, un-normalized letters), short
    enough for its temporary form."""
    bad = (
        not name
        or len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES
        or "/" in name
        or "\\" in name
        or ".." in name
        or name.startswith(".")
        or not printable(name)
    )
    if bad:
        raise BadFileName(
            f"invalid file name {name!r}: use a plain name without '/', '\\\\', '..', a leading "
            "'.', leading or trailing spaces, control, invisible or look-alike characters, "
            f"at most {MAX_NAME_BYTES} bytes in UTF-8"
        )
    return name


class Library:
    """Files in one directory, keyed by name."""

    def __init__(
        self, root: Path, on_change: OnChange | None = None, chunk_size: int = 8 * 1024 * 1024
    ) -> None:
        self.chunk_size = chunk_size
        self.root = root
        self._digests: dict[str, tuple[FileIdentity, str]] = {}
        self._manifests: dict[str, tuple[FileIdentity, list[str]]] = {}
        """Known hashes, by name, while the file is the one they were made of (its size,
        times and inode: a write in place that put the mtime back still moves the ctime)."""
        self._lock = threading.Lock()
        self._on_change = on_change or (lambda event: None)

    def _location(self, name: str) -> Path:
        """Where file ``name`` is, or the bundle of folder ``name`` (``NAME/``)."""
        if name.endswith("/"):
            return self.root / FOLDERS / f"{check_file_name(name[:-1])}.tar"
        return self.root / check_file_name(name)

    def path(self, name: str) -> Path:
        """Where a library file (or a folder's bundle) is; raises ``FileMissing`` when it is
        not there. Only regular files count: a symbolic link put in the library could point
        anywhere."""
        path = self._location(name)
        try:
            regular = stat.S_ISREG(path.lstat().st_mode)
        except OSError:
            regular = False
        if not regular:
            raise FileMissing(f"no file {name!r} in the library; GET /api/files lists them")
        return path

    def has(self, name: str) -> bool:
        try:
            self.path(name)
        except (FileMissing, BadFileName):
            return False
        return True

    def describe(self, name: str) -> LibraryFile:
        path = self.path(name)
        status = path.stat()
        return LibraryFile(
            name=name,
            size=status.st_size,
            blake3=self._digest(name, path, status),
            modified=datetime.fromtimestamp(status.st_mtime, timezone.utc),
            files=self.folder(name).files if name.endswith("/") else None,
        )

    def folder(self, name: str) -> folders.FolderIndex:
        """What folder ``name`` (``NAME/``) holds."""
        index = self.path(name).with_suffix(".json")
        try:
            known = json.loads(index.read_text())
        except (OSError, ValueError):
            raise FileMissing(f"folder {name!r} has no index; upload it again") from None
        return folders.FolderIndex(known["files"], known["bytes"], tuple(known["ends"]))

    def list(self) -> list[LibraryFile]:
        names = sorted(p.name for p in self.root.iterdir() if not p.name.startswith("."))
        kept = self.root / FOLDERS
        if kept.is_dir():
            names += sorted(f"{p.stem}/" for p in kept.glob("*.tar") if not p.name.startswith("."))
        files = []
        for name in names:
            with contextlib.suppress(FileMissing, BadFileName):
                files.append(self.describe(name))
        return files

    def delete(self, name: str) -> None:
        path = self.path(name)
        path.unlink()
        if name.endswith("/"):
            path.with_suffix(".json").unlink(missing_ok=True)
        with self._lock:
            self._digests.pop(name, None)
            self._manifests.pop(name, None)
        self._on_change(FileRemovedEvent(name=name))

    def create(self, name: str, limit: int | None = None, replace: bool = True) -> LibraryWriter:
        """Start a new library file, or a folder's bundle (``NAME/``); it appears under
        ``name`` only once committed (a bundle once every member is checked). Without
        ``replace``, a file of that name, there now or by the commit, is a ``FileExists``."""
        final = self._location(name)
        if not replace:
            self.check_name_free(name)
        final.parent.mkdir(parents=True, exist_ok=True)
        temp = final.parent / f".{final.name}.{uuid.uuid4().hex}{PART_SUFFIX}"
        return LibraryWriter(self, name, temp, limit, replace)

    def check_name_free(self, name: str) -> None:
        """``FileExists`` when the library has a file (or folder) of that name."""
        if os.path.lexists(self._location(name)):
            raise FileExists(
                f"the library has a file named {name!r} already: choose another name, or ask "
                "to replace it (overwrite: true; the CLI's --overwrite)"
            )

    def manifest(self, name: str) -> Manifest:
        """The file's chunks' BLAKE3 (at ``chunk_size``) and its whole BLAKE3: known since it
        was written here, or read once and remembered while the file is unchanged."""
        path = self.path(name)
        status = path.stat()
        identity = identity_of(status)
        with self._lock:
            known = self._manifests.get(name)
        if known is not None and known[0] == identity:
            return Manifest(status.st_size, known[1], self._digest(name, path, status), identity)
        chunks, whole = _hash_chunks(path, self.chunk_size)
        with self._lock:
            if identity_of(path.stat()) == identity:  # not changed while it was read
                self._manifests[name] = (identity, chunks)
                self._digests[name] = (identity, whole)
        return Manifest(status.st_size, chunks, whole, identity)

    def _committed(
        self, name: str, temp: Path, digest: str, chunks: Sequence[str], replace: bool
    ) -> bool:
        """Rename and remember the digests as one step, so that of two uploads of one name
        the one renamed last is the file and its digests the ones cached (the last to finish
        wins). Without ``replace``, the name is taken only if it is free (one atomic link).
        Whether a file of that name was replaced. A transfer reading the replaced file holds
        it open, so it keeps reading the old bytes whole."""
        final = self._location(name)
        if name.endswith("/"):
            indexed = folders.index(temp)  # refuses what must not be in a folder
            final.with_suffix(".json").write_text(
                json.dumps({"files": indexed.files, "bytes": indexed.bytes, "ends": indexed.ends})
            )
        with self._lock:
            replaced = os.path.lexists(final)
            if replace:
                temp.replace(final)
            else:
                try:
                    os.link(temp, final)
                except FileExistsError:
                    self.check_name_free(name)
                temp.unlink()
            identity = identity_of(final.stat())
            self._digests[name] = (identity, digest)
            self._manifests[name] = (identity, [*chunks])
        self._on_change(FileAddedEvent(file=self.describe(name)))
        return replaced

    def _digest(self, name: str, path: Path, status: os.stat_result) -> str:
        identity = identity_of(status)
        with self._lock:
            known = self._digests.get(name)
        if known and known[0] == identity:
            return known[1]
        digest = file_blake3(path)
        with self._lock:
            if identity_of(path.stat()) == identity:  # not changed while it was hashed
                self._digests[name] = (identity, digest)
        return digest


@dataclass(frozen=True)
class Manifest:
    """What a receiver checks a file against: its size, chunks' BLAKE3 (hex), whole BLAKE3;
    and the identity of the file they were made of (the source checks it is still that)."""

    size: int
    chunks: list[str]
    blake3: str
    identity: FileIdentity | None = None


def _hash_chunks(path: Path, chunk_size: int) -> tuple[list[str], str]:
    whole = blake3.blake3(max_threads=HASH_THREADS)
    chunks: list[str] = []
    buffer = bytearray(chunk_size)
    with path.open("rb", buffering=0) as file:
        while n := file.readinto(buffer):
            view = memoryview(buffer)[:n]
            whole.update(view)
            chunks.append(str(blake3.blake3(view).hexdigest()))
    return chunks, str(whole.hexdigest())


class LibraryWriter:
    """Appends to a temporary file, hashing as it goes, within a size limit."""

    def __init__(
        self, library: Library, name: str, temp: Path, limit: int | None, replace: bool = True
    ) -> None:
        self.name = name
        self.replaced = False
        self._replace = replace
        self._library = library
        self._temp = temp
        self._file = temp.open("wb")
        self._hasher = blake3.blake3(max_threads=HASH_THREADS)
        self._chunk_size = library.chunk_size
        self._chunk = blake3.blake3()
        self._chunk_filled = 0
        self._chunks: list[str] = []
        self._limit = limit
        self.size = 0
        self.digest = ""

    def write(self, data: bytes | memoryview) -> None:
        self.size += len(data)
        if self._limit is not None and self.size > self._limit:
            raise FileTooLarge(
                f"the file is larger than the limit of {self._limit} bytes "
                "(CASTRAY_UPLOAD_LIMIT_BYTES)"
            )
        self._hasher.update(data)
        self._hash_chunks(memoryview(data))
        self._file.write(data)

    def _hash_chunks(self, data: memoryview) -> None:
        """The manifest, as the bytes go by: each chunk's BLAKE3."""
        while len(data):
            take = min(len(data), self._chunk_size - self._chunk_filled)
            self._chunk.update(data[:take])
            self._chunk_filled += take
            data = data[take:]
            if self._chunk_filled == self._chunk_size:
                self._chunks.append(str(self._chunk.hexdigest()))
                self._chunk, self._chunk_filled = blake3.blake3(), 0

    def commit(self, expected: str | None = None) -> str:
        """Sync and move the file into place; returns its BLAKE3. With ``expected``, a file
        of another BLAKE3 is dropped instead (``SourceChanged``)."""
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self.digest = str(self._hasher.hexdigest())
            if expected is not None and self.digest != expected:
                raise SourceChanged(
                    f"{self.name!r} read {self.digest[:16]}..., not the {expected[:16]}... it "
                    "was to be: it changed while it was copied"
                )
            if self._chunk_filled:
                self._chunks.append(str(self._chunk.hexdigest()))
            self.replaced = self._library._committed(
                self.name, self._temp, self.digest, self._chunks, self._replace
            )
        finally:
            self.discard()
        return self.digest

    def discard(self) -> None:
        """Drop whatever was written (a no-op after a commit)."""
        self._file.close()
        self._temp.unlink(missing_ok=True)
