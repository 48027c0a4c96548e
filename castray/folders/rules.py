"""What a folder bundle may hold: the one check that runs where a bundle is made, where it is
uploaded and where it is unpacked (the recipient trusts no earlier check).

A bundle holds relative paths of regular files, folders and symbolic links, each named once.
No member may lie under a link or a file of the bundle, and every link must resolve inside the
folder, through the bundle's other links too (``a -> .`` then ``b -> a/..`` climbs out, though
each link's own text stays in). Anything else (an absolute path, a ``..``, a hard link, a
device, a sparse file, a name with a control character) is refused with what was wrong.
"""

from __future__ import annotations

import posixpath
import tarfile
from dataclasses import dataclass, field
from enum import Enum

from castray.errors import BadUpload
from castray.names import printable

MAX_COMPONENT_BYTES = 255
"""Longest name of one file or folder in a bundle, as file systems allow."""
MAX_PATH_BYTES = 4000
"""Longest path in a bundle (Linux allows 4096 with the folder it lands in)."""
MAX_LINK_DEPTH = 40
"""Links followed through one another at most, as Linux itself does (ELOOP past it)."""


class Kind(str, Enum):
    FILE = "file"
    FOLDER = "folder"
    LINK = "symbolic link"


@dataclass(frozen=True)
class Entry:
    """One member of a bundle, checked: its clean relative path and what it is."""

    path: str
    kind: Kind
    member: tarfile.TarInfo


@dataclass
class BundleRules:
    """Checks a bundle's members one by one (``add``), then its links together (``finish``)."""

    _kinds: dict[str, Kind] = field(default_factory=dict)
    _explicit: set[str] = field(default_factory=set)
    _links: dict[str, str] = field(default_factory=dict)

    def add(self, member: tarfile.TarInfo) -> Entry | None:
        """Check one member; its entry (None for the folder itself, ``.``)."""
        path = clean_path(member.name)
        if not path:
            if not member.isdir():
                raise BadUpload(f"{member.name!r} names the folder itself but is not a folder")
            return None
        kind = _kind_of(member, path)
        self._check_parents(path)
        earlier = self._kinds.get(path)
        # A folder's own entry may follow a member inside it; nothing else may come twice.
        implied = earlier is Kind.FOLDER and kind is Kind.FOLDER and path not in self._explicit
        if earlier is not None and not implied:
            raise BadUpload(
                f"{path!r} appears twice in the folder (as a {earlier.value}, then as a "
                f"{kind.value}): a member may not replace another"
            )
        self._kinds[path] = kind
        self._explicit.add(path)
        if kind is Kind.LINK:
            target = member.linkname
            if not target or target.startswith("/") or "\0" in target:
                raise BadUpload(
                    f"{path!r} is a symbolic link to {target!r}, outside the folder: a link in a "
                    "folder must be a relative path to something inside it"
                )
            self._links[path] = target
        return Entry(path, kind, member)

    def finish(self) -> None:
        """Every link resolves inside the folder, through the bundle's other links."""
        known: dict[str, _Resolved | None] = {}
        for path, target in self._links.items():
            try:
                found = self._resolve(posixpath.dirname(path), target, 0, known)
            except _TooDeep:
                found = None
            if found is None:
                raise BadUpload(
                    f"{path!r} is a symbolic link to {target!r}, which leads outside the folder "
                    f"(or through more than {MAX_LINK_DEPTH} links): send what it points to, or "
                    "leave it out"
                )

    def _check_parents(self, path: str) -> None:
        """No member under a link or a file; the folders above it exist from now on."""
        parts = path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            kind = self._kinds.setdefault(parent, Kind.FOLDER)
            if kind is not Kind.FOLDER:
                raise BadUpload(
                    f"{path!r} lies under {parent!r}, a {kind.value} of the folder: a member "
                    "may only lie in folders"
                )

    def _resolve(
        self, at: str, target: str, depth: int, known: dict[str, _Resolved | None]
    ) -> _Resolved | None:
        """Where ``target``, read in folder ``at`` after ``depth`` links, leads through the
        bundle's links; None if it climbs out or loops; ``_TooDeep`` past ``MAX_LINK_DEPTH``
        links in all. ``known`` remembers each link's own answer (None while it is being
        resolved: meeting it again then is a loop)."""
        stack = at.split("/") if at else []
        followed = 0
        for part in target.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if not stack:
                    return None
                stack.pop()
                continue
            stack.append(part)
            key = "/".join(stack)
            if key not in self._links:
                continue
            if key not in known:
                known[key] = None
                known[key] = self._resolve(
                    posixpath.dirname(key), self._links[key], depth + followed + 1, known
                )
            found = known[key]
            if found is None:
                return None
            followed += 1 + found.followed
            if depth + followed > MAX_LINK_DEPTH:
                raise _TooDeep
            stack = list(found.parts)
        return _Resolved(tuple(stack), followed)


class _TooDeep(Exception):
    """A link leads through more than ``MAX_LINK_DEPTH`` links."""


@dataclass(frozen=True)
class _Resolved:
    """Where a link leads (components from the folder's root), and through how many links."""

    parts: tuple[str, ...]
    followed: int


def clean_path(name: str) -> str:
    """A member's name as a clean relative path (``./a//b/`` is ``a/b``; the folder itself is
    ``""``); ``BadUpload`` for an absolute path, a ``..`` or a name that is not printable."""
    if name.startswith("/"):
        raise BadUpload(f"{name!r} is an absolute path: a folder holds relative paths only")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BadUpload(f"{name!r} climbs out of the folder with '..'")
    for part in parts:
        if len(part.encode("utf-8", "surrogatepass")) > MAX_COMPONENT_BYTES:
            raise BadUpload(f"{name!r} has a name longer than {MAX_COMPONENT_BYTES} bytes")
        if not printable(part) or "\\" in part:
            raise BadUpload(
                f"{name!r} is not a printable path: names in a folder may not hold control, "
                "invisible or look-alike characters, a backslash, or leading or trailing spaces"
            )
    path = "/".join(parts)
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise BadUpload(f"a path in the folder is longer than {MAX_PATH_BYTES} bytes")
    return path


def _kind_of(member: tarfile.TarInfo, path: str) -> Kind:
    if member.issparse():
        raise BadUpload(f"{path!r} is a sparse file: send the folder as 'castray send' packs it")
    if member.isreg():
        return Kind.FILE
    if member.isdir():
        return Kind.FOLDER
    if member.issym():
        return Kind.LINK
    if member.islnk():
        raise BadUpload(
            f"{path!r} is a hard link: a folder may hold files, folders and symbolic links only "
            "('castray send' stores hard-linked files as copies)"
        )
    raise BadUpload(f"{path!r} is neither a file, a folder nor a symbolic link")
