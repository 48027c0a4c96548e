"""An S3 server inside a lab host, behind its shaped link, as the origin of a transfer to the
other hosts: the object is read from it once, and every copy is verified."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import blake3
import pytest

from tests.harness import transfers as tx
from tests.harness.lab import LabServer
from tests.harness.origins import UPLOAD, RangeLog
from tests.harness.waiting import wait_for
from tests.lab.conftest import S3_PORT, s3_env

pytestmark = [pytest.mark.lab, pytest.mark.slow]

SIZE = 24 * 1024 * 1024 + 5
BUCKET = "lab-models"


def _in_host(lab: LabServer, host: int, *command: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "castray",
        "lab",
        "exec",
        f"h{host}",
        "--name",
        lab.name,
        "--",
        *command,
    ]


def test_an_s3_store_in_a_lab_host_is_read_once_for_every_other_host(
    lab: LabServer,
) -> None:
    head = lab.state.hosts[0].address
    work = Path(tempfile.mkdtemp(prefix="castray-lab-origin-"))
    data = os.urandom(SIZE)
    (work / "model.bin").write_bytes(data)
    log = work / "ranges.log"
    env = os.environ | s3_env(lab)
    s3 = subprocess.Popen(
        _in_host(
            lab,
            1,
            sys.executable,
            "-m",
            "tests.harness.origins",
            head,
            str(S3_PORT),
            str(log),
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        upload = subprocess.run(
            _in_host(
                lab,
                1,
                sys.executable,
                "-c",
                UPLOAD,
                BUCKET,
                "m/model.bin",
                str(work / "model.bin"),
            ),
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert upload.returncode == 0, upload.stderr[-3000:]
        source, recipient = lab.node_id(2), lab.node_id(3)
        send = ("send", f"s3://{BUCKET}/m/model.bin", "--from", source, "--to", recipient)
        run = subprocess.run(
            [sys.executable, "-m", "castray", *send, "--json", "--server", lab.url],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        expected = blake3.blake3(data).hexdigest()
        for host in (2, 3):
            copy = lab.storage(host) / "model.bin"
            assert blake3.blake3(copy.read_bytes()).hexdigest() == expected
            assert tx.leftovers(lab.storage(host)) == []
        served = RangeLog.read(log)
        assert served.overlaps() == [] and served.bytes_served() == SIZE  # read once
    finally:
        os.killpg(s3.pid, signal.SIGTERM)
        wait_for(lambda: s3.poll() is not None, 20, "the lab's S3 server to stop")
        for child in work.iterdir():
            child.unlink()
        work.rmdir()
