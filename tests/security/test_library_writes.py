"""Finding 3: concurrent uploads of one name leave a file whose cached hash is its own."""

from __future__ import annotations

import concurrent.futures
import os
from pathlib import Path

import blake3
import pytest

from tests.harness import transfers as tx
from tests.harness.server import CastRayServer
from tests.security.conftest import library_leftovers

pytestmark = pytest.mark.ray


def test_racing_uploads_of_one_name_leave_a_file_that_matches_its_hash(
    server: CastRayServer,
) -> None:
    contents = [os.urandom(300_000 + n) for n in range(24)]

    def upload(data: bytes) -> int:
        with server.client() as client:
            return client.post("/api/upload", files={"file": ("raced.bin", data)}).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(upload, contents))

    assert set(statuses) <= {201, 429}
    assert 201 in statuses
    on_disk = (server.data_dir / "library" / "raced.bin").read_bytes()
    assert on_disk in contents  # whole: one of the uploads, not a mix
    with server.client() as client:
        listed = {f["name"]: f for f in client.get("/api/files").json()}
    assert listed["raced.bin"]["blake3"] == blake3.blake3(on_disk).hexdigest()
    assert library_leftovers(server) == []
    done = tx.send(server, source_node="node_1", file="raced.bin", recipients=["node_2"])
    assert done["status"] == "completed", done
    assert Path(done["recipients"]["node_2"]["path"]).read_bytes() == on_disk
