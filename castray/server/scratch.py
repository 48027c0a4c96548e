"""The embedded cluster's private Ray temp dirs: made with an owner record, and those a
killed server left behind swept at the next start.

Each holds a Ray session and the embedded cluster's token. A server stopped the usual way
removes its own; one killed with SIGKILL cannot. At its start a server removes such dirs of
its user's, but only when their owner is gone for sure: the record names the server process
(pid and start time, so a reused pid is not taken for it) and no live process still runs from
the dir (a Ray process names its temp dir in its command line). Another server's is never
touched.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

PREFIX = "castray-ray-"
OWNER = "owner.json"


def make() -> Path:
    """A new private dir, recording this process as its owner (a short path: Ray's socket
    paths under it must stay below 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix=PREFIX))
    me = psutil.Process()
    (path / OWNER).write_text(json.dumps({"pid": me.pid, "started": me.create_time()}))
    return path


def remove(path: Path, grace: float = 5.0) -> None:
    """Remove this server's dir once nothing runs from it. The agent's process group is
    killed before, but Ray starts some of its processes in groups of their own, and one that
    outlived the group wrote its session into the dir again after it was removed: a dir with
    no owner record, which no sweep may judge (seen after a server stopped during its
    embedded Ray's start)."""
    running = _running_from(path)
    for process in running:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(running, timeout=grace)
    shutil.rmtree(path, ignore_errors=True)


def sweep() -> list[Path]:
    """Remove the private dirs of this user's servers that are gone; the dirs removed."""
    removed = []
    for path in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        with contextlib.suppress(OSError):
            if path.is_dir() and path.stat().st_uid == os.geteuid() and _abandoned(path):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
                log.info("removed %s, left by a CastRay server that was killed", path)
    return removed


def _abandoned(path: Path) -> bool:
    try:
        owner = json.loads((path / OWNER).read_text())
        pid, started = int(owner["pid"]), float(owner["started"])
    except (OSError, ValueError, KeyError, TypeError):
        return False  # no record of whose it is: not ours to judge
    with contextlib.suppress(psutil.Error):
        if abs(psutil.Process(pid).create_time() - started) < 1.0:
            return False  # its server still runs
    return not _running_from(path)  # nothing still runs from it


def _running_from(path: Path) -> list[psutil.Process]:
    """This user's processes that name ``path`` in their command line (Ray's processes name
    their temp dir)."""
    text, me = str(path), os.geteuid()
    found = []
    for process in psutil.process_iter(["cmdline", "uids"]):
        with contextlib.suppress(psutil.Error, TypeError):
            mine = process.info["uids"] is not None and process.info["uids"].real == me
            if mine and any(text in arg for arg in process.info["cmdline"] or ()):
                found.append(process)
    return found
