"""The verified copies an endpoint holds: what it committed, with the BLAKE3 it checked and
the size and mtime the file had then. A copy still counts as verified while its size and
mtime are unchanged; one that changed, or went, no longer does (a pin restores it).

Kept in ``.castray-copies.json`` in the storage directory (a hidden name: storage sweeps and
listings skip it), so an endpoint deployed again on the node knows them. Code running in a
Ray task finds a copy through ``Endpoint.local_copy`` (see ``castray.local``).

The file is a journal, one JSON object per line: a commit appends its copy, a removal a
``{"forget": name}`` line, and the journal is rewritten with the live copies only once it
holds twice as many lines as copies. It used to be rewritten whole at every commit: an
endpoint holding 3,000 copies spent a third of each small file's commit encoding them.
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
COMPACT_SLACK = 64
"""Lines beyond twice the live copies a journal may hold before it is rewritten."""


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
        self._lines = 0
        """Lines in the journal on disk (live copies, replaced ones and removals)."""
        with contextlib.suppress(OSError):
            self._load((root / INDEX).read_text(encoding="utf-8"))

    def record(self, path: Path, blake3: str) -> None:
        """A copy was committed at ``path`` with this BLAKE3 (checked by the commit)."""
        try:
            name = str(path.resolve().relative_to(self._root.resolve()))
            stat = path.stat()
        except (OSError, ValueError):
            return
        with self._lock:
            copy = Verified(name, blake3, stat.st_size, stat.st_mtime_ns)
            self._copies[name] = copy
            self._append([vars(copy)])
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
            gone: list[dict[str, object]] = []
            for name in names:
                target = (self._root / name).resolve()
                if not target.is_relative_to(self._root.resolve()) or target == self._root:
                    continue
                if self._copies.pop(name, None) is not None:
                    gone.append({"forget": name})
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target, ignore_errors=True)
                    removed += 1
                    continue
                with contextlib.suppress(FileNotFoundError):
                    target.unlink()
                    removed += 1
            if gone:
                self._append(gone)
        return removed

    def _load(self, text: str) -> None:
        """Replay the journal. A line a crash cut short is skipped, and an index written
        before the journal (one JSON list) is read too: either way the journal is rewritten
        at once, so that the next line appended starts a line of its own."""
        if text.lstrip().startswith("["):
            with contextlib.suppress(ValueError):
                for entry in json.loads(text):
                    self._replay(entry)
            self._compact()
            return
        lines = text.splitlines()
        whole = True
        for line in lines:
            try:
                self._replay(json.loads(line))
            except ValueError:
                whole = False
        self._lines = len(lines)
        if not whole or (text and not text.endswith("\n")):
            self._compact()

    def _replay(self, entry: object) -> None:
        with contextlib.suppress(TypeError):
            if isinstance(entry, dict) and set(entry) == {"forget"}:
                self._copies.pop(str(entry["forget"]), None)
                return
            copy = Verified(**entry)  # type: ignore[arg-type]
            self._copies[copy.name] = copy

    def _append(self, entries: list[dict[str, object]]) -> None:
        """Add lines to the journal (under the lock), or rewrite it once it holds more than
        twice the live copies."""
        if self._lines + len(entries) > 2 * len(self._copies) + COMPACT_SLACK:
            self._compact()
            return
        try:
            with (self._root / INDEX).open("a", encoding="utf-8") as journal:
                journal.write("".join(json.dumps(e) + "\n" for e in entries))
            self._lines += len(entries)
        except OSError as exc:
            log.warning("could not save the index of verified copies: %s", exc)

    def _compact(self) -> None:
        """Rewrite the journal with the live copies only, atomically (a crash leaves the
        old journal or the new one)."""
        temp = self._root / f"{INDEX}.tmp"
        try:
            # vars(), not asdict(): this runs over every copy held.
            temp.write_text(
                "".join(json.dumps(vars(c)) + "\n" for c in self._copies.values()),
                encoding="utf-8",
            )
            temp.replace(self._root / INDEX)
            self._lines = len(self._copies)
        except OSError as exc:
            log.warning("could not save the index of verified copies: %s", exc)
