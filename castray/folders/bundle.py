"""Making and indexing a folder's bundle: an uncompressed tar of its contents, as relative
paths, every member checked by ``rules``."""

from __future__ import annotations

import bisect
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from castray.errors import BadUpload
from castray.folders.rules import BundleRules, Entry, Kind


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


def read_entries(tar: tarfile.TarFile) -> list[Entry]:
    """Every member of an open bundle, checked alone and together (``BadUpload`` if one
    must not be there)."""
    rules = BundleRules()
    entries: list[Entry] = []
    try:
        for member in tar:
            entry = rules.add(member)
            if entry is not None:
                entries.append(entry)
    except tarfile.TarError as exc:
        raise BadUpload(f"the folder is not an uncompressed tar stream: {exc}") from None
    rules.finish()
    return entries


def index(bundle: Path) -> FolderIndex:
    """Check every member of ``bundle`` and index its files; ``BadUpload`` if it is not a
    folder bundle."""
    try:
        with tarfile.open(bundle, "r:") as tar:
            entries = read_entries(tar)
    except tarfile.TarError as exc:
        raise BadUpload(f"the folder is not an uncompressed tar stream: {exc}") from None
    files = [e.member for e in entries if e.kind is Kind.FILE]
    return FolderIndex(
        files=len(files),
        bytes=sum(m.size for m in files),
        ends=tuple(m.offset_data + m.size for m in files),
    )


def pack(folder: Path, out: Path) -> None:
    """Bundle ``folder`` (its contents, as relative paths); what the rules refuse (a link out
    of it, a device) is refused here, before anything is uploaded. Hard-linked files are
    stored as copies."""
    rules = BundleRules()
    # GNU format, whole-second times: one header per member (PAX would add an extended
    # header to every file for its fractional mtime, and double the unpacking work).
    with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as tar:
        for path in sorted(_walk(folder)):
            info = tar.gettarinfo(str(path), arcname=path.relative_to(folder).as_posix())
            if info.islnk():  # a second name of a file already in: a copy of its own
                info.type, info.linkname, info.size = tarfile.REGTYPE, "", path.stat().st_size
            info.mtime = int(info.mtime)
            info.uname = info.gname = ""
            rules.add(info)
            if info.isfile():
                with path.open("rb") as data:
                    tar.addfile(info, data)
            else:
                tar.addfile(info)
        rules.finish()


def _walk(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            yield Path(root) / name
