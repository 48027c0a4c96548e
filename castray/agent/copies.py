"""The verified copies an endpoint holds: what it committed, with the BLAKE3 it checked and
the size and mtime the file had then. A copy still counts as verified while its size and
mtime are unchanged; one that changed, or went, no longer does (a pin restores it).

Kept in ``.castray-copies.json`` in the storage directory (a hidden name: storage sweeps and
listings skip it), so an endpoint deployed again on the node knows them. Code running in a
Ray task finds a copy through ``Endpoint.local_copy`` (see ``castray.local``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

INDEX = ".castray-copies.json"


@dataclass(frozen=True)
class Verified:
    """A committed copy as it was verified."""

    name: str
    """Its path relative to the storage directory."""
    blake3: str
    size: int
    mtime_ns: int


class CopyIndex:
    """The verified copies of one storage directory; thread-safe."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._lock = threading.Lock()
        self._added = threading.Condition(self._lock)
        self._copies: dict[str, Verified] = {}
        with contextlib.suppress(OSError, ValueError, TypeError):
            for entry in json.loads((root / INDEX).read_text(encoding="utf-8")):
                copy = Verified(**entry)
                self._copies[copy.name] = copy

    def record(self, path: Path, blake3: str) -> None:
        """A copy was committed at ``path`` with this BLAKE3 (checked by the commit)."""
        try:
            name = str(path.resolve().relative_to(self._root.resolve()))
            stat = path.stat()
        except (OSError, ValueError):
            return
        with self._lock:
            self._copies[name] = Verified(name, blake3, stat.st_size, stat.st_mtime_ns)
            self._save()
            self._added.notify_all()

    def current(self, name: str) -> Verified | None:
        """The copy called ``name`` if it is as it was verified (same size and mtime)."""
        with self._lock:
            copy = self._copies.get(name)
        if copy is None:
            return None
        try:
            stat = (self._root / name).stat()
        except OSError:
            return None
        if stat.st_size != copy.size or stat.st_mtime_ns != copy.mtime_ns:
            return None
        return copy

    def wait(self, name: str, timeout: float) -> Verified | None:
        """``current(name)``, waiting up to ``timeout`` seconds for a commit of it."""
        found = self.current(name)
        if found is not None or timeout <= 0:
            return found
        with self._lock:
            self._added.wait_for(lambda: name in self._copies, timeout)
        return self.current(name)

    def forget(self, names: list[str]) -> int:
        """Remove these copies from disk and from the index; how many files went."""
        removed = 0
        with self._lock:
            for name in names:
                target = (self._root / name).resolve()
                if not target.is_relative_to(self._root.resolve()) or target == self._root:
                    continue
                self._copies.pop(name, None)
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target, ignore_errors=True)
                    removed += 1
                    continue
                with contextlib.suppress(FileNotFoundError):
                    target.unlink()
                    removed += 1
            self._save()
        return removed

    def _save(self) -> None:
        """Write the index atomically (a crash leaves the old one or the new one)."""
        temp = self._root / f"{INDEX}.tmp"
        try:
            # vars(), not asdict(): this runs at every commit, over every copy held.
            temp.write_text(json.dumps([vars(c) for c in self._copies.values()]), encoding="utf-8")
            temp.replace(self._root / INDEX)
        except OSError as exc:
            log.warning("could not save the index of verified copies: %s", exc)
