"""Room on a recipient's disk, taken when a transfer starts rather than found missing half-way.

A sink allocates every block its file will fill (``fallocate``) before a byte arrives, so two
transfers that each fit alone but not together cannot both start and both fail at 60 % with
the disk full: the second is refused at once, saying what it needs and what there is. Where
the file system cannot allocate ahead (some network and FUSE file systems), the endpoint keeps
a ledger of the bytes its open transfers will still write, and checks free space against it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import threading
from pathlib import Path

from castray.sizes import binary_size

_UNSUPPORTED = {errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class Room:
    """One endpoint's disk: allocation ahead where it can, a ledger where it cannot."""

    def __init__(self, storage_dir: Path) -> None:
        self._storage_dir = storage_dir
        self._promised: dict[str, int] = {}
        """Bytes promised to open transfers on a file system without ``fallocate``."""
        self._lock = threading.Lock()

    def take(self, key: str, fd: int, size: int, name: str) -> None:
        """Make sure the file open at ``fd`` (a transfer ``key``'s) can grow to ``size``
        bytes; ``OSError(ENOSPC)`` with what it needs and what there is, otherwise."""
        try:
            _fallocate(fd, size)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise no_room(self._storage_dir, name, size) from None
            if exc.errno not in _UNSUPPORTED:
                raise
        else:
            return
        with self._lock:
            others = sum(v for k, v in self._promised.items() if k != key)
            free = shutil.disk_usage(self._storage_dir).free - others
            if free < size:
                raise no_room(self._storage_dir, name, size, others)
            self._promised[key] = size

    def give_back(self, key: str) -> None:
        """The transfer ``key`` ended here: what it was promised is free again."""
        with self._lock:
            self._promised.pop(key, None)


def no_room(storage_dir: Path, name: str, size: int, promised: int = 0) -> OSError:
    free = shutil.disk_usage(storage_dir).free
    held = f", {binary_size(promised)} of it promised to other transfers" if promised else ""
    return OSError(
        errno.ENOSPC,
        f"not enough free space for {name}: it needs {binary_size(size)}, the disk has "
        f"{binary_size(free)} free{held}",
    )


def _fallocate(fd: int, size: int) -> None:
    """Allocate the blocks of ``fd`` up to ``size`` bytes (Linux ``fallocate``, mode 0)."""
    if size <= 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    function = getattr(libc, "fallocate64", None) or getattr(libc, "fallocate", None)
    if function is None:
        raise OSError(errno.ENOSYS, "fallocate is not available")
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if function(fd, 0, 0, size) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
