"""Start writing received bytes to disk while more are still arriving.

A receiver that only ``pwrite``s leaves the whole file dirty in the page cache, and its
closing ``fsync`` then waits for all of it at disk speed, after the last byte came in: a 1 GiB
copy on this project's machine spent 1.1 s receiving and 1.6 s more in its commit.
``sync_file_range(SYNC_FILE_RANGE_WRITE)`` asks the kernel to begin writing a range now
without waiting for it, so the disk works beside the network and the ``fsync`` waits for the
last pieces only. Durability still comes from that ``fsync``: this is only earlier, never
instead. Linux only; elsewhere (or if the call is refused) nothing happens.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable

_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start write-out of dirty pages, do not wait


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range  # as space.fallocate
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_call = _sync_file_range()


def start_write_back(fd: int, offset: int, length: int) -> None:
    """Have the kernel begin writing ``length`` bytes at ``offset`` of ``fd`` to disk.

    It may block for a moment when the disk's queue is full: that is the disk's pace, felt
    by the thread that writes, as a later ``fsync`` would feel it. A refusal (a file system
    without it) is ignored: the ``fsync`` at the end writes whatever is left."""
    if _call is not None and length > 0:
        _call(fd, offset, length, _SYNC_FILE_RANGE_WRITE)
