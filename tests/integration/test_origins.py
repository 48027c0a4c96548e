"""Transfers whose source is a URL, against a real server over embedded Ray with two demo
nodes, and real origins on loopback ports (an HTTP server with Range support, moto's S3
server): the object is read from its origin once, every node gets a verified copy, failures
say why and leave nothing, and a presigned URL's query is never shown."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from tests.harness import transfers as tx
from tests.harness.origins import RangeServer, S3Server
from tests.harness.server import CastRayServer, serving

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SIZE = 24 * 1024 * 1024 + 777
BUCKET = "castray-origins"
SIGNATURE = "X-Amz-Signature=0123456789abcdefSECRET"


@pytest.fixture(scope="module")
def origin_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="castray-origin-"))
    (root / "weights.bin").write_bytes(os.urandom(SIZE))
    yield root
    for child in root.iterdir():
        child.unlink()
    root.rmdir()


@pytest.fixture(scope="module")
def http(origin_root: Path) -> Iterator[RangeServer]:
    with RangeServer(origin_root) as server:
        yield server


@pytest.fixture(scope="module")
def s3(origin_root: Path) -> Iterator[S3Server]:
    with S3Server() as server:
        client = server.client()
        client.create_bucket(Bucket=BUCKET)
        client.upload_file(str(origin_root / "weights.bin"), BUCKET, "models/weights.bin")
        yield server


@pytest.fixture(scope="module")
def server(s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CastRayServer]:
    """The S3 server's endpoint and credentials reach the nodes through the standard chain
    (the embedded Ray's workers inherit the server's environment)."""
    root = tmp_path_factory.mktemp("origins")
    env = {
        "HOME": str(root),
        **s3.env(),
        "CASTRAY_ORIGIN_ALLOWED_HOSTS": json.dumps(["127.0.0.1"]),
        "CASTRAY_ENABLE_FAULT_INJECTION": "1",
    }
    with serving(root / "data", "--demo-nodes", "2", alive=3, env=env) as started:
        yield started


def _copies(server: CastRayServer, name: str) -> dict[str, str]:
    """Each node's copy of ``name``, by its BLAKE3."""
    found = {}
    for node, info in server.nodes().items():
        path = Path(info["storage_dir"]) / name
        if path.exists():
            found[node] = blake3.blake3(path.read_bytes()).hexdigest()
    return found


def _no_partials(server: CastRayServer) -> None:
    for info in server.nodes().values():
        assert tx.leftovers(Path(info["storage_dir"])) == []


def test_an_http_object_reaches_every_node_read_once_with_its_query_hidden(
    server: CastRayServer, http: RangeServer, origin_root: Path
) -> None:
    http.log.ranges.clear()
    http.faults.require_query = SIGNATURE
    url = http.url("weights.bin", SIGNATURE)
    done = tx.send(server, source_url=url, file="from-http.bin", mode="broadcast")
    http.faults.require_query = None
    assert done["status"] == "completed", done
    expected = blake3.blake3((origin_root / "weights.bin").read_bytes()).hexdigest()
    assert done["file"]["blake3"] == expected and done["file"]["size"] == SIZE
    assert done["origin"] == f"http://127.0.0.1:{http.port}/weights.bin?<hidden>"
    copies = _copies(server, "from-http.bin")
    assert len(copies) == 3 and set(copies.values()) == {expected}, copies
    assert http.log.overlaps(probe=True) == [] and http.log.bytes_served() == SIZE + 1
    with server.client() as client:
        history = client.get("/api/transfers").text
    assert "SECRET" not in history and "SECRET" not in server.log.read_text()
    _no_partials(server)


def test_cli_sends_an_s3_object_to_all_nodes_read_once(
    server: CastRayServer, s3: S3Server, origin_root: Path
) -> None:
    s3.log.ranges.clear()
    run = server.cli("send", f"s3://{BUCKET}/models/weights.bin", "--all", "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    done = json.loads(run.stdout)
    assert done["status"] == "completed" and done["origin"] == f"s3://{BUCKET}/models/weights.bin"
    expected = blake3.blake3((origin_root / "weights.bin").read_bytes()).hexdigest()
    copies = _copies(server, "weights.bin")
    assert len(copies) == 3 and set(copies.values()) == {expected}, copies
    assert s3.log.overlaps() == [] and s3.log.bytes_served() == SIZE
    _no_partials(server)


def test_origin_failures_are_clear_and_leave_nothing(
    server: CastRayServer, http: RangeServer
) -> None:
    cases = [
        ({"source_url": f"s3://{BUCKET}/absent.bin"}, 404, "no such object"),
        ({"source_url": http.url("absent.bin")}, 404, "no such object"),
        ({"source_url": "file:///etc/passwd"}, 422, "is not allowed"),
        ({"source_url": "https://169.254.169.254/latest/"}, 403, "metadata"),
        ({"source_url": "http://10.255.255.1/x.bin"}, 403, "plain http"),
        ({"source_url": "http://localhost:1/x.bin"}, 502, "cannot reach the origin"),
        (
            {"source_url": f"s3://{BUCKET}/models/weights.bin", "group": "nobody"},
            404,
            "no group 'nobody'",
        ),
    ]
    for body, status, words in cases:
        mode = "multicast" if "group" in body else "broadcast"
        answer = tx.post(server, "/api/transfers", {"mode": mode, **body})
        assert answer.status_code == status, (body, answer.text)
        assert words in answer.json()["detail"], answer.text
        assert "Traceback" not in answer.text
    http.faults.require_query = "X-Amz-Signature=right"
    answer = tx.post(
        server, "/api/transfers", {"source_url": http.url("weights.bin"), "mode": "broadcast"}
    )
    http.faults.require_query = None
    assert answer.status_code == 502 and "refused access" in answer.json()["detail"]
    _no_partials(server)


def test_a_url_transfer_resumes_from_the_fetched_copy_not_the_origin(
    server: CastRayServer, s3: S3Server, origin_root: Path
) -> None:
    with server.client() as client:
        broken = client.post("/api/nodes/node_2/faults", json={"fail_syncs": 1})
    assert broken.status_code == 204, broken.text
    s3.log.ranges.clear()
    first = tx.send(
        server,
        source_url=f"s3://{BUCKET}/models/weights.bin",
        file="resumed.bin",
        source_node="node_1",
        mode="multicast",
        recipients=["node_2", "home-127.0.0.1"],
    )
    assert first["status"] == "partially_failed", first
    assert first["recipients"]["node_2"]["status"] == "failed"
    read = s3.log.bytes_served()
    assert read == SIZE
    with server.client() as client:
        resumed = client.post(f"/api/transfers/{first['id']}/resume")
    assert resumed.status_code == 202, resumed.text
    done = tx.wait_finished(server, first["id"])
    assert done["status"] == "completed", done
    assert done["origin"] == f"s3://{BUCKET}/models/weights.bin"
    expected = blake3.blake3((origin_root / "weights.bin").read_bytes()).hexdigest()
    copies = _copies(server, "resumed.bin")
    assert len(copies) == 3 and set(copies.values()) == {expected}, copies
    assert s3.log.bytes_served() == read  # the origin was not read again
    _no_partials(server)
