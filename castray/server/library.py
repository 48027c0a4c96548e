"""The file library: files users uploaded or generated, ready to be sent from any endpoint.

Files are written under a temporary name and renamed into place only when complete and
synced, so a listed file is always whole. BLAKE3 digests are computed while writing, or on
first use for files put there by hand, and remembered while the file is unchanged. Every
method here does disk I/O: call it from a worker thread, never on the event loop.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import unicodedata
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import blake3

from castray.chunks import HASH_THREADS, file_blake3
from castray.errors import BadFileName, FileMissing, FileTooLarge
from castray.models import EventData, FileAddedEvent, FileRemovedEvent, LibraryFile

PART_SUFFIX = ".part"

OnChange = Callable[[EventData], None]
"""Told ``FileAddedEvent`` or ``FileRemovedEvent``; called from the worker thread that made
the change."""


MAX_NAME_BYTES = 216
"""Longest file name in UTF-8 bytes: its temporary form ``.NAME.<32 hex>.part`` must still fit
the 255 bytes a file system allows for a name."""
_INVISIBLE = {"Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp"}
"""Unicode categories of controls, format characters (bidirectional overrides among them),
private, unassigned and line/paragraph separators: names that hide what they are."""


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
        or name != name.strip()
        or unicodedata.normalize("NFC", name) != name
        or any(_hidden(c) for c in name)
    )
    if bad:
        raise BadFileName(
            f"invalid file name {name!r}: use a plain name without '/', '\\\\', '..', a leading "
            "'.', leading or trailing spaces, control, invisible or look-alike characters, "
            f"at most {MAX_NAME_BYTES} bytes in UTF-8"
        )
    return name


def _hidden(char: str) -> bool:
    category = unicodedata.category(char)
    return category in _INVISIBLE or (category == "Zs" and char != " ")


class Library:
    """Files in one directory, keyed by name."""

    def __init__(self, root: Path, on_change: OnChange | None = None) -> None:
        self.root = root
        self._digests: dict[str, tuple[int, int, str]] = {}
        self._lock = threading.Lock()
        self._on_change = on_change or (lambda event: None)

    def path(self, name: str) -> Path:
        """Where a library file is; raises ``FileMissing`` when it is not there. Only regular
        files count: a symbolic link put in the library could point anywhere."""
        path = self.root / check_file_name(name)
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
        )

    def list(self) -> list[LibraryFile]:
        names = sorted(p.name for p in self.root.iterdir() if not p.name.startswith("."))
        files = []
        for name in names:
            with contextlib.suppress(FileMissing, BadFileName):
                files.append(self.describe(name))
        return files

    def delete(self, name: str) -> None:
        self.path(name).unlink()
        with self._lock:
            self._digests.pop(name, None)
        self._on_change(FileRemovedEvent(name=name))

    def create(self, name: str, limit: int | None = None) -> LibraryWriter:
        """Start a new library file; it appears under ``name`` only once committed."""
        check_file_name(name)
        self.root.mkdir(parents=True, exist_ok=True)
        temp = self.root / f".{name}.{uuid.uuid4().hex}{PART_SUFFIX}"
        return LibraryWriter(self, name, temp, limit)

    def _committed(self, name: str, temp: Path, digest: str) -> None:
        """Rename and remember the digest as one step, so that of two uploads of one name the
        one renamed last is the file and its digest the one cached (the last to finish wins)."""
        final = self.root / name
        with self._lock:
            temp.replace(final)
            status = final.stat()
            self._digests[name] = (status.st_size, status.st_mtime_ns, digest)
        self._on_change(FileAddedEvent(file=self.describe(name)))

    def _digest(self, name: str, path: Path, status: os.stat_result) -> str:
        with self._lock:
            known = self._digests.get(name)
        if known and known[:2] == (status.st_size, status.st_mtime_ns):
            return known[2]
        digest = file_blake3(path)
        with self._lock:
            now = path.stat()  # not replaced while it was hashed:
            if (now.st_ino, now.st_size, now.st_mtime_ns) == (
                status.st_ino,
                status.st_size,
                status.st_mtime_ns,
            ):
                self._digests[name] = (status.st_size, status.st_mtime_ns, digest)
        return digest


class LibraryWriter:
    """Appends to a temporary file, hashing as it goes, within a size limit."""

    def __init__(self, library: Library, name: str, temp: Path, limit: int | None) -> None:
        self.name = name
        self._library = library
        self._temp = temp
        self._file = temp.open("wb")
        self._hasher = blake3.blake3(max_threads=HASH_THREADS)
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
        self._file.write(data)

    def commit(self) -> str:
        """Sync and move the file into place; returns its BLAKE3."""
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self.digest = str(self._hasher.hexdigest())
            self._library._committed(self.name, self._temp, self.digest)
        finally:
            self.discard()
        return self.digest

    def discard(self) -> None:
        """Drop whatever was written (a no-op after a commit)."""
        self._file.close()
        self._temp.unlink(missing_ok=True)
