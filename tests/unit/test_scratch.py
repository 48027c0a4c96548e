"""The embedded cluster's private temp dir goes with everything that runs from it (real
processes: one in a session of its own keeps writing into the dir, as Ray's may)."""

from __future__ import annotations

import subprocess
import sys

from castray.server import scratch
from tests.harness.waiting import wait_for

WRITER = """
import os, sys, time
while True:
    os.makedirs(os.path.join(sys.argv[1], "session_latest", "logs"), exist_ok=True)
    time.sleep(0.01)
"""


def test_a_removed_dir_takes_what_runs_from_it_along() -> None:
    path = scratch.make()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], start_new_session=True)
    try:
        wait_for(lambda: (path / "session_latest").exists() or None, 10, "the writer to start")
        scratch.remove(path)
        assert writer.wait(timeout=10) is not None, "what ran from the dir is gone"
        assert not path.exists(), "nothing wrote the dir back"
    finally:
        writer.kill()
        writer.wait()
        scratch.remove(path)


def test_a_dir_is_removed_when_nothing_runs_from_it() -> None:
    path = scratch.make()
    scratch.remove(path)
    assert not path.exists()
