"""Finding (#22, critical), through a real server: a bundle that climbs out through a chain
of links is refused at upload (400), and a recipient refuses it on its own when the library
was bypassed (a bundle put there by hand), failing with the reason; nothing outside the
recipient's folder changes either way."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from tests.harness.server import CastRayServer
from tests.harness.transfers import send
from tests.security.conftest import library_leftovers, storage_of

pytestmark = pytest.mark.ray

PLANTED = "castray-containment-test-PLANTED"


def _climbing_bundle() -> bytes:
    """``a -> .``, ``l0 -> a/..``, ``l1 -> l0/..`` ... then ``l7/NAME``: each link's own text
    stays inside, together they reach the root of the file system."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        links = [("a", "."), ("l0", "a/.."), *[(f"l{i}", f"l{i - 1}/..") for i in range(1, 8)]]
        for name, target in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
        data = b"planted by a bundle"
        info = tarfile.TarInfo(f"l7/{PLANTED}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _planted_anywhere(root: Path) -> list[str]:
    return [str(p) for p in (Path("/") / PLANTED, root / PLANTED) if p.exists()] + [
        str(p) for p in root.rglob(PLANTED)
    ]


def test_a_bundle_that_climbs_out_through_links_is_refused_at_upload(
    server: CastRayServer,
) -> None:
    with server.client() as client:
        answer = client.post(
            "/api/upload-folder", params={"name": "climb"}, content=_climbing_bundle()
        )
        listed = [f["name"] for f in client.get("/api/files").json()]
    assert answer.status_code == 400, answer.text
    assert "l7" in answer.json()["detail"]
    assert "climb/" not in listed
    assert library_leftovers(server) == []
    assert _planted_anywhere(server.data_dir) == []


def test_a_recipient_refuses_such_a_bundle_even_when_the_library_let_it_in(
    server: CastRayServer,
) -> None:
    kept = server.data_dir / "library" / ".folders"
    kept.mkdir(parents=True, exist_ok=True)
    bundle = _climbing_bundle()
    (kept / "planted.tar").write_bytes(bundle)
    (kept / "planted.json").write_text(json.dumps({"files": 1, "bytes": 19, "ends": [len(bundle)]}))
    recipient = storage_of(server, "node_2")
    try:
        done = send(server, source_node="node_1", file="planted/", recipients=["node_2"])
    finally:
        (kept / "planted.tar").unlink()
        (kept / "planted.json").unlink()

    assert done["status"] == "failed"
    error = done["recipients"]["node_2"]["error"]
    assert "could not unpack" in error and "lies under 'l7'" in error, error
    assert "RayTaskError" not in error
    assert not (recipient / "planted").exists()
    assert not [p.name for p in recipient.iterdir() if p.name.startswith(".planted")]
    assert _planted_anywhere(server.data_dir) == []
